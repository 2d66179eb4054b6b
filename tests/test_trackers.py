"""The experiment trackers, read back with their own readers: TensorBoard's event accumulator, and
the records of a W&B offline run (its ``.wandb`` file, W&B's LevelDB-style log of protobuf records)."""

from __future__ import annotations

import json
import struct
import sys

import numpy as np
import pytest

from forgetlab import config as config_module
from forgetlab.errors import ConfigError
from forgetlab.runner import run
from tests.conftest import tiny_overrides


def _run(random_backbones, tmp_path, name="tracked", **extra):
    overrides = tiny_overrides(random_backbones["offline_vit"], tmp_path, name=name, **{"train.log_every": 1, **extra})
    return run(config_module.load(None, overrides), log=lambda message: None)


def _scalars(accumulator, tag):
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def test_tensorboard_events_hold_loss_lr_accuracies_matrix_and_config(random_backbones, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = _run(random_backbones, tmp_path, **{"track.tensorboard": "true"})
    accumulator = EventAccumulator(str(folder.path / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    tasks = json.loads(folder.tasks.read_text())
    total = sum(record["steps"] for record in tasks)
    loss = _scalars(accumulator, "train/loss")
    assert [step for step, _ in loss] == list(range(1, total + 1))  # global steps across both tasks, every step
    assert loss[tasks[0]["steps"] - 1][1] == pytest.approx(tasks[0]["final_loss"], rel=1e-6)
    assert loss[-1][1] == pytest.approx(tasks[-1]["final_loss"], rel=1e-6)
    lr = [value for _, value in _scalars(accumulator, "train/lr")]
    assert len(lr) == total and max(lr) <= 1e-3 * (1 + 1e-6) and lr[-1] == pytest.approx(0.0, abs=1e-9)  # cosine to 0
    matrix = folder.read_matrix().as_array()
    for j, column in enumerate(folder.read_matrix().columns):
        logged = _scalars(accumulator, f"accuracy_pct/{column}")  # percent: 100 x the stored fraction
        expected = [(i, 100 * matrix[i, j]) for i in range(1, matrix.shape[0]) if not np.isnan(matrix[i, j])]
        assert [step for step, _ in logged] == [i for i, _ in expected]
        assert [value for _, value in logged] == pytest.approx([value for _, value in expected], rel=1e-6)
    assert [image.step for image in accumulator.Images("accuracy_matrix")] == [1, 2]
    assert _scalars(accumulator, "final/upstream_final_pct") == [(2, pytest.approx(100 * matrix[-1, 0], rel=1e-6))]
    from forgetlab.analysis.metrics import registered_metrics

    for metric in registered_metrics():  # every metric of the final matrix, as sweep.csv names and scales it
        if not metric.reference:
            expected = 100 * metric.function(matrix, trained=None)
            assert _scalars(accumulator, f"final/{metric.column}") == [(2, pytest.approx(expected, rel=1e-5))], (
                metric.name
            )
    hparams = accumulator.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in hparams and b"train.lr" in hparams["_hparams_/session_start_info"]


def _wandb_records(run_folder):
    """Every protobuf record of the W&B offline run in ``run_folder`` (W&B's log format: a 7-byte
    header, then 32 KiB blocks of records, each with a 7-byte header: CRC, length, type)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_folder.glob("wandb/offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, position, pending, block = [], 7, b"", 32768
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        payload = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 0 and length == 0:
            continue
        pending += payload
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _finished_wandb_records(run_folder, timeout=60.0):
    """The records once W&B's service has written them all. ``run.finish()`` returns when the exit is
    handled, but W&B's writer may still hold records in its buffer (a CI run once read a file with its
    header only); ``wandb.teardown()`` stops the service, which closes the file, then the test waits
    for the ``exit`` record."""
    import time

    import wandb

    wandb.teardown()
    deadline = time.monotonic() + timeout
    while True:
        records = _wandb_records(run_folder)
        if any(record.WhichOneof("record_type") == "exit" for record in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def test_wandb_offline_run_holds_config_history_and_the_matrix_table(random_backbones, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    folder = _run(random_backbones, tmp_path, **{"track.wandb": "true", "track.wandb_group": "rank-study"})
    records = _finished_wandb_records(folder.path)
    kinds = [record.WhichOneof("record_type") for record in records]
    (run_record,) = [record.run for record in records if record.WhichOneof("record_type") == "run"]
    assert (run_record.run_group, run_record.display_name, run_record.project) == ("rank-study", "tracked", "forgetlab")
    config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    assert (
        config["train.lr"] == 0.001
        and config["method.rank"] == 4
        and config["data.tasks"] == "['fontfamily', 'digits']"
    )
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        for record in records
        if record.WhichOneof("record_type") == "history"
    ]
    tasks = json.loads(folder.tasks.read_text())
    losses = [row["train/loss"] for row in history if "train/loss" in row]
    assert len(losses) == sum(record["steps"] for record in tasks)
    assert losses[-1] == pytest.approx(tasks[-1]["final_loss"], rel=1e-6)
    phases = [row for row in history if "phase" in row]
    matrix = folder.read_matrix().as_array()
    assert [row["phase"] for row in phases] == [1, 2]
    assert phases[-1]["accuracy_pct/upstream"] == pytest.approx(100 * matrix[-1, 0])
    (table_file,) = sorted(folder.path.glob("wandb/offline-run-*/files/media/table/accuracy_matrix_*.table.json"))[-1:]
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["phase", *folder.read_matrix().columns]
    assert [row[1] for row in table["data"]] == pytest.approx((100 * matrix[:, 0]).tolist())
    assert "exit" in kinds  # the run was finished


def test_tracking_is_not_part_of_a_runs_identity(random_backbones, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = _run(random_backbones, tmp_path, name="resumed", **{"train.max_steps": 2})
    folder = _run(
        random_backbones, tmp_path, name="resumed", **{"train.max_steps": 2, "track.tensorboard": "true"}
    )  # not refused
    assert (
        folder.path == first.path and "tensorboard: false" in (folder.path / "config.yaml").read_text()
    )  # stored config untouched
    assert not (folder.path / "tensorboard").exists()  # complete: nothing to do, nothing written
    fresh = _run(random_backbones, tmp_path, name="fresh", **{"train.max_steps": 2, "track.tensorboard": "true"})
    accumulator = EventAccumulator(str(fresh.path / "tensorboard"))
    accumulator.Reload()
    assert len(accumulator.Scalars("train/loss")) == 4


@pytest.mark.parametrize("key,module", [("track.tensorboard", "tensorboard"), ("track.wandb", "wandb")])
def test_a_missing_tracker_package_is_refused_before_anything_is_written(
    random_backbones, tmp_path, monkeypatch, key, module
):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(
        ConfigError,
        match=(
            rf"{key} needs the {module} package: pip install {module} "
            rf"\(or pip install -e '\.\[track\]' in forgetlab's clone\)"
        ),
    ):
        _run(random_backbones, tmp_path, **{key: "true"})
    assert not (tmp_path / "tracked").exists()


def test_sweep_cells_share_a_wandb_group_named_after_the_sweep(tmp_path):
    from forgetlab.sweep import load_sweep

    path = tmp_path / "rank.yaml"
    path.write_text("name: rank-study\nbase: {train: {epochs: 1}}\ngrid: {method.rank: [1, 4]}\n")
    sweep = load_sweep(path)
    assert [cell.config.track.wandb_group for cell in sweep.cells] == ["rank-study", "rank-study"]
    path.write_text("name: rank-study\nbase: {track: {wandb_group: mine}}\ngrid: {method.rank: [1, 4]}\n")
    assert {cell.config.track.wandb_group for cell in load_sweep(path).cells} == {"mine"}


def test_a_resumed_run_continues_the_global_step(random_backbones, tmp_path):
    """Stopped after task 1 and resumed: the resumed process logs task 2 from the global step where
    task 1 ended, so the two processes' events form one curve."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    class Stop(Exception):
        pass

    def stop_after_task_1(message):
        if message.startswith("task 1/2"):
            raise Stop

    overrides = tiny_overrides(
        random_backbones["offline_vit"], tmp_path, name="stopped", **{"train.log_every": 1, "track.tensorboard": "true"}
    )
    with pytest.raises(Stop):
        run(config_module.load(None, overrides), log=stop_after_task_1)
    folder = run(config_module.load(None, overrides), log=lambda message: None)
    accumulator = EventAccumulator(str(folder.path / "tensorboard"))
    accumulator.Reload()
    steps = [event.step for event in accumulator.Scalars("train/loss")]
    tasks = json.loads(folder.tasks.read_text())
    assert steps == list(range(1, sum(record["steps"] for record in tasks) + 1))
    assert [event.step for event in accumulator.Scalars("accuracy_pct/upstream")] == [1, 2]
