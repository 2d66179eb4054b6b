"""The cost of each experiment tracker per training step, on the offline default (issue 13).

    .venv/bin/python benchmarks/trackers.py [--epochs 2] [--repeats 2]

Runs the default experiment (offline_vit, LoRA r=4, three tasks) with ``train.epochs`` lowered, once
per tracker setting, each in its own process and run folder: no tracker, TensorBoard, W&B offline
(``WANDB_MODE=offline``), and both; at ``train.log_every`` 25 (the default: the loss is read every 25
steps) and 1 (every step logged). The time per step is the training time the run records in
``tasks.json`` over its steps, the best of ``--repeats``; the ratio is to no tracker at the same
``log_every``. The wall time also holds the start-up and per-phase logging (the matrix image/table).
Prints a Markdown table for the README.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
SETTINGS = {
    "none": [],
    "tensorboard": ["track.tensorboard=true"],
    "wandb (offline)": ["track.wandb=true"],
    "both": ["track.tensorboard=true", "track.wandb=true"],
}


def one_run(out: Path, name: str, overrides: list[str], env: dict) -> tuple[float, float]:
    start = time.perf_counter()
    subprocess.run([str(BIN / "forgetlab"), "run", f"out_dir={out}", f"name={name}", *overrides], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wall = time.perf_counter() - start
    tasks = json.loads((out / name / "tasks.json").read_text())
    return sum(t["train_seconds"] for t in tasks) / sum(t["steps"] for t in tasks), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "FORGETLAB_PROGRESS": "0"}
    subprocess.run([str(BIN / "forgetlab"), "pretrain", "--backbone", "offline_vit"], env=env, check=True, stdout=subprocess.DEVNULL)
    out = Path(tempfile.mkdtemp(prefix="forgetlab-bench-trackers-"))
    rows = []
    for log_every in (25, 1):
        baseline = None
        for label, overrides in SETTINGS.items():
            best = None
            for repeat in range(args.repeats):
                name = f"{label.split()[0]}-{log_every}-{repeat}"
                result = one_run(out, name, [f"train.epochs={args.epochs}", f"train.log_every={log_every}", *overrides], env)
                best = result if best is None or result[0] < best[0] else best
            baseline = baseline or best
            rows.append((log_every, label, 1000 * best[0], best[0] / baseline[0], best[1], best[1] / baseline[1]))
    print(f"offline default, train.epochs={args.epochs}, {os.cpu_count()} CPUs, best of {args.repeats}\n")
    print("| train.log_every | tracker | ms per step | ratio | run wall (s) | ratio |")
    print("|---:|---|---:|---:|---:|---:|")
    for log_every, label, ms, ratio, wall, wall_ratio in rows:
        print(f"| {log_every} | {label} | {ms:.1f} | {ratio:.3f} | {wall:.1f} | {wall_ratio:.2f} |")


if __name__ == "__main__":
    main()
