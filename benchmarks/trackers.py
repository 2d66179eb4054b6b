"""The cost of each experiment tracker per training step, on the offline default.

    .venv/bin/python benchmarks/trackers.py [--epochs 2] [--repeats 2]

Runs the default experiment (offline_vit, LoRA r=4, three tasks) with ``train.epochs`` lowered, once
per tracker setting, each in its own process and run folder: no tracker, TensorBoard, W&B offline
(``WANDB_MODE=offline``), and both; at ``train.log_every`` 25 (the default: the loss is read every 25
steps) and 1 (every step logged). The time per step is the training time the run records in
``tasks.json`` over its steps, the best of ``--repeats``; the ratio is to no tracker at the same
``log_every``. The wall time also holds the start-up and per-phase logging (the matrix image/table).
It also times each tracker's calls alone (``step()`` 2,000 times, ``phase()`` with the matrix image or
table three times), since on a shared 2-core machine the run times vary by more than a tracker costs.
Prints Markdown tables for the README.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
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
    subprocess.run(
        [str(BIN / "forgetlab"), "run", f"out_dir={out}", f"name={name}", *overrides],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    tasks = json.loads((out / name / "tasks.json").read_text())
    return sum(t["train_seconds"] for t in tasks) / sum(t["steps"] for t in tasks), wall


def direct_costs(calls: int = 2000) -> dict[str, tuple[float, float]]:
    """Milliseconds per ``step()`` call and per ``phase()`` call of each tracker, timed alone (the run
    times above are noisier than a tracker's cost on a shared 2-core machine)."""
    from forgetlab import config as config_module
    from forgetlab.results import AccuracyMatrix
    from forgetlab.runner import track_phase
    from forgetlab.trackers import open_trackers

    costs = {}
    for label, overrides in SETTINGS.items():
        folder = Path(tempfile.mkdtemp(prefix="forgetlab-bench-tracker-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        config = config_module.resolve({}, overrides)
        tracker = open_trackers(config, folder, config_module.to_dict(config))
        start = time.perf_counter()
        for step in range(1, calls + 1):
            tracker.step(step, {"loss": 1.0 / step, "lr": 1e-3})
        per_step = (time.perf_counter() - start) / calls
        matrix = AccuracyMatrix(columns=["upstream", "a", "b", "c"])
        matrix.add_row({"upstream": 0.9})
        start = time.perf_counter()
        for index, column in enumerate(["a", "b", "c"], 1):
            row = {"upstream": 0.9 - 0.1 * index, **{c: 0.5 for c in ["a", "b", "c"][:index]}}
            matrix.add_row(row)
            track_phase(tracker, index, row, matrix)  # the matrix image drawn as the run draws it
        per_phase = (time.perf_counter() - start) / 3
        tracker.close()
        costs[label] = (1000 * per_step, 1000 * per_phase)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--step-ms", type=float, default=95.0, help="the untracked step time for the ratio without --parts runs"
    )
    parser.add_argument(
        "--parts", default="runs,direct", help="runs (whole runs per tracker), direct (each tracker's calls alone)"
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "FORGETLAB_PROGRESS": "0"}
    rows = []
    if "runs" in parts:
        subprocess.run(
            [str(BIN / "forgetlab"), "pretrain", "--backbone", "offline_vit"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    out = Path(tempfile.mkdtemp(prefix="forgetlab-bench-trackers-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    for log_every in (25, 1) if "runs" in parts else ():
        baseline = None
        for label, overrides in SETTINGS.items():
            best = None
            for repeat in range(args.repeats):
                name = f"{label.split()[0]}-{log_every}-{repeat}"
                result = one_run(
                    out, name, [f"train.epochs={args.epochs}", f"train.log_every={log_every}", *overrides], env
                )
                best = result if best is None or result[0] < best[0] else best
            baseline = baseline or best
            rows.append((log_every, label, 1000 * best[0], best[0] / baseline[0], best[1], best[1] / baseline[1]))
    if "direct" in parts:
        os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")
        costs = direct_costs()
        step_ms = min((row[2] for row in rows if row[1] == "none"), default=args.step_ms)
        print(f"each tracker alone: {os.cpu_count()} CPUs; the ratio is to an untracked step of {step_ms:.1f} ms\n")
        print("| tracker | ms per step() call | step-time ratio when every step is logged | ms per phase() call |")
        print("|---|---:|---:|---:|")
        for label, (per_step, per_phase) in costs.items():
            print(f"| {label} | {per_step:.3f} | {(step_ms + per_step) / step_ms:.4f} | {per_phase:.1f} |")
    if not rows:
        return
    print(f"\noffline default, train.epochs={args.epochs}, {os.cpu_count()} CPUs, best of {args.repeats}\n")
    print("| train.log_every | tracker | ms per step | ratio | run wall (s) | ratio |")
    print("|---:|---|---:|---:|---:|---:|")
    for log_every, label, ms, ratio, wall, wall_ratio in rows:
        print(f"| {log_every} | {label} | {ms:.1f} | {ratio:.3f} | {wall:.1f} | {wall_ratio:.2f} |")


if __name__ == "__main__":
    main()
