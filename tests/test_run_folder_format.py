"""A run folder's format: progress.json records it, and a folder of an earlier format (written before
the format was recorded, or before the commit held its matrix and records) resumes to the same numbers
through the one migration function."""

from __future__ import annotations

import json
import shutil

import pytest

from forgetlab import config as config_module
from forgetlab.errors import DataError
from forgetlab.results import FORMAT_VERSION, RunFolder, migrate
from forgetlab.runner import run
from tests.conftest import tiny_overrides

QUIET = {"log": lambda message: None}


@pytest.fixture(scope="module")
def runs(random_backbones, tmp_path_factory):
    """A finished two-task run, and a run of the same config stopped after its first task."""
    out = tmp_path_factory.mktemp("format")
    finished = run(
        config_module.resolve({}, tiny_overrides(random_backbones["offline_vit"], out, name="finished")), **QUIET
    )
    half = config_module.resolve({}, tiny_overrides(random_backbones["offline_vit"], out, name="half"))

    def stop_after_task_1(message: str) -> None:
        if message.startswith("task 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(half, log=stop_after_task_1)
    return finished, half, random_backbones["offline_vit"]


def _copy(runs, tmp_path, name: str):
    """The config of a copy of the stopped run's folder, under ``tmp_path / name``."""
    _, half, backbone = runs
    shutil.copytree(half.run_dir, tmp_path / name)
    return config_module.resolve({}, tiny_overrides(backbone, tmp_path, name=name))


def _rewrite(folder: RunFolder, change) -> None:
    state = json.loads(folder.progress.read_text())
    folder.progress.write_text(json.dumps(change(state), indent=2))


def test_a_commit_records_the_folder_format(runs):
    finished, _, _ = runs
    state = json.loads(finished.progress.read_text())
    assert state["format_version"] == FORMAT_VERSION == 1 and list(state)[0] == "format_version"


def test_a_folder_of_the_format_before_resumes_to_the_same_numbers(runs, tmp_path):
    """As the version before this one wrote it: the same files, progress.json without format_version."""
    finished, half, _ = runs
    config = _copy(runs, tmp_path, "older")
    folder = RunFolder(config.run_dir)
    _rewrite(folder, lambda state: {key: value for key, value in state.items() if key != "format_version"})
    assert folder.state() == json.loads(RunFolder(half.run_dir).progress.read_text())  # read as the current format
    resumed = run(config, **QUIET)
    assert resumed.read_matrix().values == finished.read_matrix().values
    assert json.loads(resumed.progress.read_text())["format_version"] == FORMAT_VERSION  # the next commit wrote it


def test_a_folder_whose_commit_held_only_its_counts_resumes_to_the_same_numbers(runs, tmp_path):
    """The oldest format: progress.json held the counts; the matrix, the records and the single
    checkpoint/model.safetensors were read from their files."""
    finished, _, _ = runs
    config = _copy(runs, tmp_path, "oldest")
    folder = RunFolder(config.run_dir)
    current = folder.state()
    folder.checkpoint.rename(folder.path / "checkpoint" / "model.safetensors")
    tasks = json.loads(folder.tasks.read_text())
    folder.tasks.write_text(
        json.dumps([{key: value for key, value in record.items() if key != "column"} for record in tasks])
    )
    matrix = json.loads(folder.matrix.read_text())
    folder.matrix.write_text(json.dumps({key: matrix[key] for key in ("columns", "values")}))
    _rewrite(folder, lambda state: {"completed_tasks": state["completed_tasks"], "total_tasks": state["total_tasks"]})

    migrated = folder.state()
    assert (migrated["matrix"]["values"], migrated["tasks"], migrated["upstream_eval"]) == (
        current["matrix"]["values"],
        current["tasks"],
        current["upstream_eval"],
    )
    assert migrated["checkpoint"] == "checkpoint/model.safetensors" and migrated["files"] == {}
    assert folder.read_matrix().phases == ["fontfamily", "digits"] and folder.read_tasks()[0]["column"] == "fontfamily"
    resumed = run(config, **QUIET)
    assert resumed.read_matrix().values == finished.read_matrix().values


def test_a_newer_format_is_a_one_line_error(runs, tmp_path):
    folder = RunFolder(_copy(runs, tmp_path, "newer").run_dir)
    _rewrite(folder, lambda state: {**state, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(DataError, match=f"format_version {FORMAT_VERSION + 1}, newer than this forgetlab reads"):
        folder.state()
    state = {"completed_tasks": 0, "total_tasks": 2, "format_version": FORMAT_VERSION}
    assert migrate(folder, state) is state  # the current format is read as it is
