"""Measure the set-up budgets: pretraining both offline backbones, the default run, and peak memory.

    make benchmark            # or: .venv/bin/python benchmarks/budgets.py [--fresh]

``--fresh`` uses an empty FORGETLAB_HOME, so the offline world and the backbones are built from
scratch as on a fresh machine. Each step runs as its own process; peak memory is the maximum
resident set size of that process (getrusage). Prints a Markdown table for the README.
"""

from __future__ import annotations

import argparse
import atexit
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def measure(label: str, command: list[str], env: dict) -> tuple[str, float, float]:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    # ru_maxrss of the children so far is a maximum; each step's own peak is at most this.
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return label, seconds, peak_gib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="build the world and backbones from scratch")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.fresh:
        env["FORGETLAB_HOME"] = tempfile.mkdtemp(prefix="forgetlab-bench-")
        atexit.register(shutil.rmtree, env["FORGETLAB_HOME"], ignore_errors=True)
    out = tempfile.mkdtemp(prefix="forgetlab-bench-runs-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    forgetlab = str(BIN / "forgetlab")
    rows = [
        measure("forgetlab pretrain (world + both backbones)", [forgetlab, "pretrain"], env),
        measure("forgetlab run (default: offline_vit, LoRA r=4)", [forgetlab, "run", f"out_dir={out}"], env),
        measure(
            "forgetlab run backbone.name=offline_resnet",
            [forgetlab, "run", f"out_dir={out}", "name=resnet", "backbone.name=offline_resnet"],
            env,
        ),
    ]
    print("| step | wall time | peak memory (max RSS so far) |\n|---|---|---|")
    for label, seconds, peak in rows:
        print(f"| `{label}` | {seconds:.0f} s | {peak:.2f} GiB |")


if __name__ == "__main__":
    main()
