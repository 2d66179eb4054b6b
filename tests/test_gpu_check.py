"""The GPU check runs every part of its full mode on the CPU with a tiny model, so a broken part fails
here, not on a lent GPU; its rows say what they measure (ratio and target) and its invariants hold."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_part_on_the_cpu(tmp_path):
    out, rows_file = tmp_path / "check", tmp_path / "rows.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "FORGETLAB_PROGRESS": "0"}
    command = [
        sys.executable,
        str(ROOT / "benchmarks/gpu_check.py"),
        "--device",
        "cpu",
        "--model",
        "tiny",
        "--out",
        str(out),
        "--json",
        str(rows_file),
    ]
    finished = subprocess.run(["nice", "-n", "10", *command], env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    rows = {row["what"]: row for row in json.loads(rows_file.read_text())["rows"]}
    assert len(finished.stdout.splitlines()) >= len(rows) + 2  # the Markdown table printed row by row

    def row(prefix: str) -> dict:
        found = [value for what, value in rows.items() if what.strip().startswith(prefix)]
        assert len(found) == 1, (prefix, list(rows))
        return found[0]

    # Every part reported, every ratio against its reference with its target.
    for prefix in (
        "actual run, batch 16",
        "paper2-lora-r4",
        "upstream evaluation over 101 JPEGs of 4 sizes (last batch 5), first",
        "upstream evaluation over 101 JPEGs of 4 sizes (last batch 5), later",
        "paper1-vit over CUB",
    ):
        measured = row(prefix)
        assert measured["target"].startswith(">=") and measured["reference"] > 0, measured
        assert math.isfinite(measured["ratio"]) and measured["ratio"] > 0, measured
    assert row("row 0's k-NN bank computed (not read from disk) by the first run")["value"] == 1
    assert row("row 0's k-NN bank computed (not read from disk) by the second run")["value"] == 0
    assert row("evaluation-crop caches written by the first pass")["value"] >= 1  # the first pass ran in a fresh home
    assert row("a batch of 8 JPEGs holding one CMYK")["value"] == 1
    assert row("synthetic data written")["value"] < 30
    assert row("k-NN vote")["value"] > 0 and row("total")["value"] > 0
    # The data: four sizes, hard links to a few distinct JPEGs, counts that leave a partial last batch.
    sizes = {Path(p).stat().st_size for p in (out / "data/imagenet/val").rglob("*.JPEG")}
    assert len(list((out / "data/imagenet/val").rglob("*.JPEG"))) == 101 and len(sizes) == 8
