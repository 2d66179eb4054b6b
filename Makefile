# forgetlab: 'make demo' sets everything up and runs the offline default; 'make test' runs the tests.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The cache (offline world, pretrained offline backbones, NLTK data) is forgetlab's own default,
# $FORGETLAB_HOME or ~/.cache/forgetlab, so that 'forgetlab' typed in a shell after 'make demo' finds
# what the demo built instead of pretraining again.

.PHONY: demo test lint docs setup system-data test-tools benchmark compat clean

# The offline default run, then a small LoRA rank sweep on both backbones, then the report of both.
demo: setup
	$(BIN)/forgetlab pretrain
	$(BIN)/forgetlab run
	$(BIN)/forgetlab sweep sweeps/demo.yaml --quiet
	$(BIN)/forgetlab report runs/default runs/demo-rank-sweep --out runs/demo-report

test: setup $(VENV)/.installed-test test-tools lint docs
	$(BIN)/python -m pytest -q -m "not benchmark"

# The whole tree formatted by ruff, no line over 120 characters ('ruff format .' fixes the first).
lint: $(VENV)/.installed-test
	$(BIN)/ruff format --check --quiet .
	$(BIN)/ruff check --quiet --select E501 .

# The documentation site (MkDocs, Material, mkdocstrings) into site/, every warning an error (a few seconds).
docs: $(VENV)/.installed-test
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

benchmark: setup $(VENV)/.installed-test
	$(BIN)/python benchmarks/budgets.py
	$(BIN)/python -m pytest -q -s -m benchmark tests/test_gpu_proxies.py tests/test_reliability.py

setup: system-data $(VENV)/.installed

# The wheel and sdist, installed into fresh venvs at the oldest and the newest supported versions,
# each running a smoke subset of the tests (docs/install.md has the last result).
compat: system-data
	bash scripts/compat.sh all

system-data:
	@bash scripts/install-system-data.sh

test-tools:
	@bash scripts/install-system-data.sh --test

# The demo needs forgetlab alone; the tests add PEFT (parity), Hypothesis (fuzzing) and Ray (the Ray backend).
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) .cache runs site
