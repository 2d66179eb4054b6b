"""The CLI end to end, and every user error as one line with exit code 2 and no traceback."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from forgetlab.cli import main
from tests.conftest import tiny_overrides


def test_run_writes_every_documented_file(random_backbones, tmp_path, capsys):
    overrides = tiny_overrides(random_backbones["offline_resnet"], tmp_path, name="cli")
    assert main(["run", *overrides, "method.rank=2"]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "cli"
    assert "data.max_test=40 applies to the upstream test set too: 40 images (a seeded subset)" in out
    # the metrics under the matrix, from the matrix (run and show print the same line)
    values = json.loads((folder / "accuracy_matrix.json").read_text())["values"]
    final, first = values[2], values[1]
    line = (
        f"average accuracy {100 * (final[1] + final[2]) / 2:.2f}%, forgetting "
        f"{100 * (first[1] - final[1]):+.2f} points, BWT {100 * (final[1] - first[1]):+.2f} "
        f"points, upstream change {100 * (final[0] - values[0][0]):+.2f} points"
    )
    assert main(["show", str(folder)]) == 0
    assert line in out and line in capsys.readouterr().out
    # every file the runs guide's table of run files names is there
    # (single-adapter and explain files come from other commands; updates/ from other methods with
    # save.updates=true: tests/test_explain_updates.py)
    guide = Path(__file__).resolve().parent.parent / "docs" / "guides" / "runs.md"
    readme = guide.read_text().split("## What a run writes")[1].split("\n\n")[1]
    documented = [name for row in readme.splitlines()[2:] for name in re.findall(r"`([^`]+)`", row.split(" | ")[0])]
    assert (
        "checkpoint/model-<i>.safetensors" in documented
        and "adapters/<task>/" in documented
        and "drift.csv" in documented
    )
    for name in documented:
        if "upstream_single" not in name and not name.startswith("updates/") and name not in (".csv", "explain/"):
            assert list(folder.glob(re.sub(r"<[^>]+>", "*", name).rstrip("/"))), (
                f"the runs guide names {name}, which the run did not write"
            )
    assert f"results: {folder}" in out and "after digits" in out
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["method"] == {
        "name": "lora",
        "rank": 2,
        "alpha": None,
        "dropout": 0.1,
        "targets": "default",
        "policy": "merge",
        "scaling": "standard",
        "dora": False,
        "init": "kaiming",
    }
    assert config["lwf"] == {"alpha": 0.0, "temperature": 2.0, "train_earlier_heads": False} and config["replay"] == {
        "size": 0,
        "batch_size": 16,
    }
    environment = json.loads((folder / "environment.json").read_text())
    assert environment["packages"]["torch"] == importlib.metadata.version("torch") and environment["device"] == "cpu"
    matrix = json.loads((folder / "accuracy_matrix.json").read_text())
    assert matrix["row_labels"] == ["pretrained", "after fontfamily", "after digits"]
    assert matrix["values"][0][1:] == [None, None] and all(0 <= v <= 1 for v in matrix["values"][2])
    csv_lines = (folder / "accuracy_matrix.csv").read_text().splitlines()
    assert csv_lines[0] == "row (accuracy %),upstream,fontfamily,digits"  # cells in percent, the JSON's x 100
    assert [float(v) for v in csv_lines[3].split(",")[1:]] == pytest.approx([100 * v for v in matrix["values"][2]])
    for task in range(3):
        assert (folder / "predictions" / f"upstream_after_{task}.npz").exists()
    progress = json.loads((folder / "progress.json").read_text())
    assert (progress["completed_tasks"], progress["total_tasks"], progress["checkpoint"]) == (
        2,
        2,
        "checkpoint/model-2.safetensors",
    )
    assert progress["matrix"] == matrix and progress["tasks"] == json.loads((folder / "tasks.json").read_text())
    assert sorted(p.name for p in (folder / "checkpoint").iterdir()) == [
        "model-2.safetensors"
    ]  # superseded ones removed
    assert (
        "checkpoint/model-2.safetensors" in progress["files"]
        and "predictions/upstream_after_2.npz" in progress["files"]
    )
    for task in ("fontfamily", "digits"):  # every task's adapter, in PEFT's format
        assert json.loads((folder / "adapters" / task / "adapter_config.json").read_text())["r"] == 2
    assert not list(folder.rglob("*.partial")), "a temporary file was left behind"
    # 4 bottlenecks x rank 2 x (in + out channels of conv3): (32+128) (64+256) (128+512) (256+1024)
    tasks = json.loads((folder / "tasks.json").read_text())
    assert tasks[0]["trainable_backbone_parameters"] == 2 * (160 + 320 + 640 + 1280)

    assert main(["show", str(folder)]) == 0
    shown = capsys.readouterr().out
    assert "2/2 tasks done" in shown and "fontfamily" in shown


def test_metrics_line_and_show_of_a_sweep_folder_read_the_matrix(tmp_path, capsys):
    from forgetlab.results import AccuracyMatrix, write_json
    from forgetlab.summary import metrics_line

    matrix = AccuracyMatrix(
        columns=["upstream", "a", "b"], values=[[0.7, None, None], [0.65, 0.8, None], [0.6, 0.75, 0.9]]
    )
    assert metrics_line(matrix) == (
        "average accuracy 82.50%, forgetting +5.00 points, BWT -5.00 points, "
        "upstream change -10.00 points (70.00% -> 60.00%)"
    )
    matrix.values = matrix.values[:2]  # one phase: nothing can be forgotten yet
    assert metrics_line(matrix).startswith(
        "average accuracy 80.00%, forgetting n/a, BWT n/a, upstream change -5.00 points"
    )
    # a sweep folder without its sweep file: each cell with a config, and the failed ones status.json records
    cell = tmp_path / "lora-r4"
    cell.mkdir()
    (cell / "config.yaml").write_text("data: {tasks: [a, b]}\n")
    write_json(cell / "progress.json", {"completed_tasks": 1, "total_tasks": 2, "matrix": matrix.to_json()})
    write_json(tmp_path / "status.json", {"linear": {"status": "failed", "message": "no data"}})
    assert main(["show", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{tmp_path}: sweep of 2 cells"
    assert lines[1].split() == ["cell", "state", "avg", "acc", "forgetting", "BWT", "upstream", "detail"]
    assert lines[2].split()[:6] == ["linear", "failed", "task", "0/?:", "no", "data"]
    assert lines[3].split() == ["lora-r4", "partial", "80.00", "n/a", "n/a", "-5.00", "task", "1/2"]
    assert "forgetting: best earlier minus final" in lines[4]
    assert main(["show", str(tmp_path / "nowhere")]) == 2 and "does not exist" in capsys.readouterr().err


def _cli(*args, env=None, code="from forgetlab.cli import main; sys.exit(main(sys.argv[1:]))"):
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; {code}", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    return result.returncode, result.stderr.strip()


def _assert_one_line_error(code, stderr, *fragments):
    assert code == 2, stderr
    assert len(stderr.splitlines()) == 1 and "Traceback" not in stderr, stderr
    assert stderr.startswith("forgetlab: error: ")
    for fragment in fragments:
        assert fragment in stderr, stderr


def test_unknown_key_is_a_one_line_error():
    _assert_one_line_error(*_cli("run", "train.epoch=3"), "unknown config key 'train.epoch'", "epochs")


def test_unknown_method_key_names_the_method_keys():
    _assert_one_line_error(*_cli("run", "method.rnak=3"), "'method.rnak'", "rank")


def test_wrong_type_is_a_one_line_error():
    _assert_one_line_error(*_cli("run", "train.lr=fast"), "'train.lr' must be float", "'fast'")


def test_missing_config_file(tmp_path):
    _assert_one_line_error(*_cli("run", str(tmp_path / "nope.yaml")), "nope.yaml not found")


def test_missing_dataset_file(tmp_path):
    env = {"FORGETLAB_HOME": str(tmp_path / "home"), "FORGETLAB_FASHION_MNIST_DIR": str(tmp_path / "none")}
    _assert_one_line_error(*_cli("run", env=env), "Fashion-MNIST not found", "apt-get install dataset-fashion-mnist")


def test_missing_weights_file(tmp_path):
    _assert_one_line_error(
        *_cli("run", "backbone.name=offline_vit", f"backbone.weights={tmp_path}/w.safetensors"),
        "w.safetensors not found",
    )


def test_missing_package():
    code = "sys.modules['timm'] = None; from forgetlab.cli import main; sys.exit(main(sys.argv[1:]))"
    _assert_one_line_error(*_cli("run", code=code), "'timm' is missing", "make demo")


def test_other_config_in_existing_folder_is_refused_and_nothing_is_touched(random_backbones, tmp_path):
    overrides = tiny_overrides(random_backbones["offline_vit"], tmp_path, name="kept", **{"data.tasks": "[digits]"})
    assert main(["run", *overrides]) == 0
    folder = tmp_path / "kept"
    snapshot = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    _assert_one_line_error(*_cli("run", *overrides, "method.rank=8"), "different config", "method.rank")
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == snapshot


def test_method_that_does_not_apply_is_refused_before_anything_is_written(random_backbones, tmp_path):
    overrides = tiny_overrides(
        random_backbones["offline_resnet"], tmp_path, name="expanded", **{"method.name": "block_expansion"}
    )
    _assert_one_line_error(*_cli("run", *overrides), "block_expansion needs a sequence of blocks")
    assert not (tmp_path / "expanded").exists()


def test_new_commands_give_one_line_errors(random_backbones, tmp_path):
    weights = f"backbone.weights={random_backbones['offline_vit']}"
    _assert_one_line_error(*_cli("run", "--preset", "paper3"), "unknown preset 'paper3'", "forgetlab presets")
    _assert_one_line_error(
        *_cli("run", "--preset", "paper1-vit", str(tmp_path / "x.yaml")), "either --preset or a config file"
    )
    _assert_one_line_error(*_cli("report", str(tmp_path / "nowhere")), "does not exist")
    _assert_one_line_error(*_cli("report", str(tmp_path)), "no run folders under")
    _assert_one_line_error(*_cli("sweep", str(tmp_path / "missing.yaml")), "not found")
    _assert_one_line_error(
        *_cli("run", weights, "data.tasks=[stanford_cars]", env={"FORGETLAB_DATA": ""}), "set data.root="
    )
    _assert_one_line_error(*_cli("run", weights, "data.tasks=[cub200]", f"data.root={tmp_path}"), "CUB_200_2011.tgz")


def _commands(parser, prefix=()):
    """Every command path of the parser, read from argparse itself so a new command cannot be missed."""
    import argparse

    yield list(prefix)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*prefix, name))


def test_every_command_has_help():
    from forgetlab.cli import build_parser

    commands = list(_commands(build_parser()))
    assert ["explain"] in commands and ["data", "check"] in commands
    for command in commands:
        result = subprocess.run([sys.executable, "-m", "forgetlab", *command, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "usage: forgetlab" in result.stdout


def test_a_backbone_that_cannot_read_the_datasets_images_is_refused_before_anything_is_written(tmp_path, capsys):
    """An RGB timm model on the offline world's grayscale images (or an offline backbone on RGB files)
    was a traceback from the first upstream evaluation, after the folder had been written."""
    out = tmp_path / "runs"
    code = main(
        [
            "run",
            "backbone.name=resnet18",
            "backbone.random_init=true",
            "backbone.num_classes=36",
            "backbone.image_size=32",
            "method.targets=conv2",
            f"out_dir={out}",
            "train.max_steps=1",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith(
        "forgetlab: error: backbone resnet18 reads 3-channel images but offline_upstream holds "
        "the offline world's 28 x 28 grayscale images (1 channel)"
    )
    assert "data.upstream=imagenet" in err[0] and not out.exists()
