"""A sweep checks every cell before the first runs and names every bad one in one error; a second
sweep process on the same folder waits for the cells the first one holds, and every cell runs once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from forgetlab.cli import main
from forgetlab.errors import ConfigError, RunLockedError
from forgetlab.results import RunFolder
from forgetlab.sweep import load_sweep
from forgetlab.sweep_backends import cell_error_line, locked_message

SOURCE = Path(__file__).resolve().parents[1] / "src"


def _sweep_file(tmp_path, backbone_file, grid: dict, name: str = "checks") -> Path:
    definition = {
        "name": name,
        "out_dir": str(tmp_path / "runs"),
        "base": {
            "backbone": {"name": backbone_file.stem, "weights": str(backbone_file)},
            "data": {"tasks": ["fontfamily"], "max_train": 32, "max_test": 24},
            "train": {"batch_size": 16, "max_steps": 2},
            "eval": {"batch_size": 64, "probe_images": 0},
        },
        "grid": grid,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(definition))
    return path


def test_every_bad_cell_is_named_before_any_cell_runs(random_backbones, tmp_path, capsys):
    grid = {
        "method": [
            {"name": "lora", "policy": "kep"},
            {"name": "lora", "rank": 0},
            {"name": "topk", "k": 9},
            {"name": "lora", "rank": 2},
        ]
    }
    path = _sweep_file(tmp_path, random_backbones["offline_vit"], grid)  # offline_vit: 6 blocks
    with pytest.raises(ConfigError) as refused:
        load_sweep(path)
    message = str(refused.value)
    assert message.startswith(f"3 of the 4 cells of {path} are invalid, so none runs: (1) sweep cell lora-kep: ")
    assert "method.policy must be one of: merge, keep; got 'kep'" in message
    assert "(2) sweep cell lora-r0: method.rank must be at least 1, got 0" in message
    assert (
        "(3) sweep cell topk-k9: method.k=9 but VisionTransformer (vit family) has 6 blocks" in message
        and "pick k in 1..6" in message
    )
    assert "lora-r2" not in message and "\n" not in message
    for command in (
        ["sweep", str(path)],
        ["sweep", str(path), "--status"],
    ):  # refused alike; nothing runs, nothing is written
        assert main(command) == 2
        captured = capsys.readouterr()
        assert captured.err.strip() == f"forgetlab: error: {message}" and "lora-r2" not in captured.out
    assert not (tmp_path / "runs").exists()


def test_a_single_bad_cell_keeps_its_one_cell_message(random_backbones, tmp_path):
    path = _sweep_file(tmp_path, random_backbones["offline_vit"], {"method.rank": [1, 0]})
    with pytest.raises(
        ConfigError, match=r"^sweep cell rank0: method.rank must be at least 1, got 0 \(set by grid.method.rank in "
    ):
        load_sweep(path)
    with pytest.raises(ConfigError, match="^sweep file .*missing.yaml not found"):
        load_sweep(tmp_path / "missing.yaml")


def test_a_child_processs_lock_refusal_is_read_as_locked_not_failed(tmp_path):
    folder = RunFolder(tmp_path / "cell")
    folder.path.mkdir()
    with folder.lock(), pytest.raises(RunLockedError) as refused:
        with RunFolder(folder.path).lock():
            pass
    printed = f"[cell] loading\nforgetlab: error: {refused.value}\n"
    assert locked_message(cell_error_line(printed))
    assert not locked_message(
        cell_error_line("forgetlab: error: task digits has no training images; check its dataset\n")
    )


def test_two_sweep_processes_on_one_folder_run_every_cell_once(random_backbones, tmp_path):
    path = _sweep_file(tmp_path, random_backbones["offline_vit"], {"seed": [0, 1]})
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(SOURCE), os.environ.get("PYTHONPATH", "")]), FORGETLAB_THREADS="1"
    )
    command = [sys.executable, "-m", "forgetlab", "sweep", str(path)]
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    printed = "".join(out + err for out, err in outputs)
    assert "FAILED" not in printed and "Traceback" not in printed
    for cell in ("seed0", "seed1"):  # scored and trained by one process only (the other waited, or found it finished)
        assert (
            printed.count(f"[{cell}] pretrained offline_vit") == 1
            and printed.count(f"[{cell}] task 1/1 fontfamily:") == 1
        ), printed
        assert RunFolder(tmp_path / "runs" / "checks" / cell).completed_tasks() == 1
    status = json.loads((tmp_path / "runs" / "checks" / "status.json").read_text())
    assert {cell: record["status"] for cell, record in status.items()} == {"seed0": "ran", "seed1": "ran"}
