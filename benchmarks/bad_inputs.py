"""Tally how forgetlab answers bad input: a finished run is guarded while N fuzzed override lists and
N fuzzed YAML files (the strategies of ``tests/test_reliability.py``) are given to ``forgetlab run``.

    FORGETLAB_HOME=... .venv/bin/python benchmarks/bad_inputs.py [N]

Each answer is counted as valid (exit 0: the same run, complete), a one-line error (exit 2, one line,
no traceback) or anything else (a traceback, a hang, several lines); the guarded folder is compared
byte for byte after every command. Prints the tally as one Markdown table.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import shutil
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import yaml  # noqa: E402
from hypothesis.errors import NonInteractiveExampleWarning  # noqa: E402

from forgetlab import config as config_module  # noqa: E402
from forgetlab.cli import main as cli  # noqa: E402
from forgetlab.results import save_safetensors  # noqa: E402
from forgetlab.runner import run  # noqa: E402
from tests.conftest import random_backbone, tiny_overrides  # noqa: E402
from tests.test_reliability import KEYS, VALUES, YAML_TREES  # noqa: E402


def answer(argv: list[str]) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli(argv)
        except SystemExit as exit_:
            code = exit_.code
        except Exception as error:  # noqa: BLE001 - what we count
            return f"traceback ({type(error).__name__})"
    lines = err.getvalue().strip().splitlines()
    if code == 0:
        return "valid"
    if code == 2 and len(lines) == 1 and lines[0].startswith("forgetlab: error: "):
        return "one-line error"
    return f"other (exit {code}, {len(lines)} lines)"


def main() -> None:
    import hypothesis.strategies as st

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    warnings.simplefilter("ignore", NonInteractiveExampleWarning)
    out = Path(tempfile.mkdtemp(prefix="forgetlab-bad-inputs-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    torch.manual_seed(0)
    weights = out / "offline_vit.safetensors"
    save_safetensors(weights, random_backbone("offline_vit").state_dict())
    overrides = tiny_overrides(weights, out, name="guarded", **{"data.tasks": "[digits]"})
    run(config_module.resolve({}, overrides), log=lambda message: None)
    folder = out / "guarded"
    guarded = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}
    tally, changed = Counter(), 0
    pairs = st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=4)
    texts = st.one_of(YAML_TREES.map(yaml.safe_dump), st.text(max_size=40))
    for i in range(count):
        fuzzed = [f"{key}={value}" for key, value in pairs.example()]
        tally[("overrides", answer(["run", "--quiet", *overrides, *fuzzed]))] += 1
        path = out / f"fuzzed-{i}.yaml"
        path.write_text(texts.example())
        tally[("YAML file", answer(["run", "--quiet", str(path), *overrides]))] += 1
        changed += {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"} != guarded
    print("| input | answer | count |\n|---|---|---:|")
    for (kind, result), number in sorted(tally.items()):
        print(f"| {kind} | {result} | {number} |")
    print(f"\n{2 * count} commands; the guarded run folder changed after {changed} of them.")


if __name__ == "__main__":
    main()
