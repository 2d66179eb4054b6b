#!/usr/bin/env bash
# Does forgetlab install and work at both ends of its supported ranges?
#
#   scripts/compat.sh [oldest|newest|all]      (make compat runs 'all')
#
# 1. Builds the sdist and, from it, the wheel (python -m build), as a release would.
# 2. For each set, in a fresh venv: installs the set's torch and torchvision first (the environment a
#    researcher already has), asks 'pip install --dry-run' of the wheel with the track and ray extras and
#    fails if it would replace torch or torchvision, then installs the wheel and runs a smoke subset of the
#    tests against it: a tiny run, a sweep of two cells with its report, the report's figures, the
#    TensorBoard tracker, WordNet, the offline world's build, and the offline world from copies.
#      oldest: Python 3.10 and every dependency at the lower bound pyproject.toml declares
#      newest: Python 3.12 and the newest release the index serves of every dependency
# 3. Deletes each venv after its set (KEEP=1 keeps them), and prints each set's versions and time.
#
# Settings (environment): PYTHON_OLDEST (python3.10), PYTHON_NEWEST (python3.12), COMPAT_DIR (a new folder
# under ${TMPDIR:-/tmp}), COMPAT_PIP_ARGS (extra pip arguments, e.g. a CPU-only torch index:
# "--index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple"; without one,
# Linux gets PyPI's CUDA wheels: about 3 GB a venv, installed one venv at a time).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
which_sets=${1:-all}
case "$which_sets" in
    all) sets=(oldest newest) ;;
    oldest | newest) sets=("$which_sets") ;;
    *) echo "usage: scripts/compat.sh [oldest|newest|all]" >&2; exit 2 ;;
esac
python_oldest=${PYTHON_OLDEST:-python3.10}
python_newest=${PYTHON_NEWEST:-python3.12}
work=${COMPAT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/forgetlab-compat.XXXXXX")}
mkdir -p "$work"
read -r -a pip_args <<<"${COMPAT_PIP_ARGS:-}"
pip_args+=(--disable-pip-version-check --no-cache-dir)

# The smoke subset: existing tests, run against the installed wheel (not src/).
smoke=(
    "tests/test_cli.py::test_run_writes_every_documented_file"
    "tests/test_api.py::test_load_sweep_is_one_dataframe_and_report_writes_the_page"
    "tests/test_sweep_report.py::test_report_writes_html_markdown_and_every_figure"
    "tests/test_trackers.py::test_tensorboard_events_hold_loss_lr_accuracies_matrix_and_config"
    "tests/test_wordnet.py::test_reference_values"
    "tests/test_data.py::test_world_sizes_and_labels"
    "tests/test_setup.py"
)

say() { echo "compat: $*"; }

build() {
    say "building the sdist and the wheel"
    "$python_newest" -m venv "$work/build-venv"
    "$work/build-venv/bin/python" -m pip install --quiet "${pip_args[@]}" build
    rm -rf "$work/dist"
    # Without --sdist/--wheel, build makes the sdist and then the wheel from the unpacked sdist, so a
    # file the sdist forgets fails here.
    (cd "$repo" && "$work/build-venv/bin/python" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1) \
        || { tail -20 "$work/build.log"; exit 1; }
    rm -rf "$work/build-venv"
    ls "$work/dist"
}

# 'name>=X' of every dependency and extra in pyproject.toml -> 'name==X': the oldest set.
lower_bounds() {
    "$python_newest" - "$repo/pyproject.toml" <<'EOF'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
requirements = project["dependencies"] + project["optional-dependencies"]["track"] + project["optional-dependencies"]["ray"]
requirements.append("pytest>=8.0.0")  # the smoke subset's runner (the test extra's lower bound)
for requirement in requirements:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)(,.*)?", requirement)
    if not match:
        sys.exit(f"compat: '{requirement}' in pyproject.toml has no '>=' lower bound")
    print(f"{match[1]}=={match[2]}")
EOF
}

check_keeps_torch() {  # $1: the venv's python; the wheel must not replace the torch it holds
    local python=$1 wheel=$2 report=$3
    "$python" -m pip install --quiet --dry-run --report "$report" "${pip_args[@]}" "${wheel}[track,ray]"
    "$python" - "$report" <<'EOF'
import json, sys
install = json.load(open(sys.argv[1]))["install"]
names = sorted(f"{item['metadata']['name']}=={item['metadata']['version']}" for item in install)
replaced = [name for name in names if name.split("==")[0].lower() in ("torch", "torchvision") or name.lower().startswith("nvidia-")]
print(f"compat: pip install --dry-run would add {len(names)} packages; torch/torchvision/CUDA among them: {replaced or 'none'}")
sys.exit(1 if replaced else 0)
EOF
}

run_set() {
    local set=$1 python venv constraints=() started=$SECONDS
    venv="$work/venv-$set"
    python=$([ "$set" = oldest ] && echo "$python_oldest" || echo "$python_newest")
    say "[$set] fresh venv with $($python --version)"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet "${pip_args[@]}" --upgrade pip
    if [ "$set" = oldest ]; then
        lower_bounds >"$work/oldest-constraints.txt"
        constraints=(-c "$work/oldest-constraints.txt")
    fi
    say "[$set] installing torch and torchvision alone (an environment that already has them)"
    "$venv/bin/python" -m pip install --quiet "${pip_args[@]}" "${constraints[@]}" torch torchvision
    local wheel
    wheel=$(ls "$work"/dist/forgetlab-*.whl)
    check_keeps_torch "$venv/bin/python" "$wheel" "$work/dry-run-$set.json"
    say "[$set] installing the wheel with the track and ray extras, and pytest"
    "$venv/bin/python" -m pip install --quiet "${pip_args[@]}" "${constraints[@]}" "${wheel}[track,ray]" pytest
    "$venv/bin/python" -m pip check
    "$venv/bin/python" - <<'EOF'
import importlib.metadata as metadata, platform
names = ["torch", "torchvision", "timm", "numpy", "pandas", "scipy", "scikit-learn", "matplotlib", "pillow",
         "nltk", "safetensors", "huggingface_hub", "pyyaml", "tqdm", "tensorboard", "wandb", "ray"]
print(f"compat: python {platform.python_version()}: " + ", ".join(f"{n} {metadata.version(n)}" for n in names))
EOF
    say "[$set] smoke subset"
    # From the repository root the tests import forgetlab from the venv: src/ is not on the path.
    (cd "$repo" && nice "$venv/bin/python" -c "import forgetlab, sys; sys.exit(0 if '$venv' in forgetlab.__file__ else 'compat: forgetlab imported from ' + forgetlab.__file__)")
    (cd "$repo" && nice "$venv/bin/python" -m pytest -q -p no:cacheprovider "${smoke[@]}")
    [ "${KEEP:-0}" = 1 ] || rm -rf "$venv"
    say "[$set] passed in $((SECONDS - started)) s"
}

started=$SECONDS
commit=$(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet HEAD || echo "+changes")
build
for set in "${sets[@]}"; do
    run_set "$set"
done
say "${sets[*]}: passed in $((SECONDS - started)) s ($(date -u +%Y-%m-%d), commit $commit, $(nproc) cores)"
[ "${KEEP:-0}" = 1 ] || [ -n "${COMPAT_DIR:-}" ] || rm -rf "$work"
