"""Sweeps beyond one process: local worker processes with their own GPUs, a local Ray
instance, failures that stop nothing else, dead workers retried, and a folder run by one process."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import threading
import time

import pytest
import yaml

from forgetlab.cli import main
from forgetlab.errors import ConfigError
from forgetlab.results import RunFolder, lock_holder
from forgetlab.sweep import load_sweep, make_backend, run_sweep, sweep_status
from forgetlab import sweep_backends
from tests.test_sweep_report import _sweep_file


def _table(path) -> list[dict]:
    """sweep.csv less what differs between two sweeps (their paths, and their W&B group: the sweep's name)."""
    rows = list(csv.DictReader(path.open()))
    named = ("config.out_dir", "config.track.wandb_group")
    return sorted(({k: v for k, v in row.items() if k not in named} for row in rows), key=lambda row: row["run"])


# ----------------------------------------------------------------------------- devices
def test_jobs_auto_gives_each_cell_its_own_gpu(monkeypatch, tmp_path):
    sweep = load_sweep(_sweep_file(tmp_path, tmp_path / "offline_vit.safetensors", {"seed": [0, 1, 2, 3]}))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert make_backend(sweep, "auto").slots == ["0", "1", "2", "3"]
    assert make_backend(sweep, "auto", gpus_per_cell=0.5).slots == ["0", "0", "1", "1", "2", "2", "3", "3"]
    assert make_backend(sweep, "auto", gpus_per_cell=2).slots == ["0,1", "2,3"]
    assert make_backend(sweep, 6).slots == ["0", "1", "2", "3", "0", "1"]
    with pytest.raises(ConfigError, match="whole number"):
        make_backend(sweep, "auto", gpus_per_cell=1.5)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert isinstance(
        make_backend(sweep, "auto"), sweep_backends.InProcessBackend
    )  # a CPU machine: one cell at a time here
    assert make_backend(sweep, 2).slots == [None, None]

    # The processes started really see only their slot's GPU, and concurrent cells never share one.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    seen, live = [], set()

    class FakeProcess:
        def __init__(self, args, env, **kwargs):
            self.device, self.polls, self.returncode, self.stderr = (
                env["CUDA_VISIBLE_DEVICES"],
                0,
                None,
                io.StringIO(""),
            )
            assert self.device not in live, "two running cells share a GPU"
            live.add(self.device)
            seen.append(self.device)

        def poll(self):
            self.polls += 1
            if self.polls > 2:
                live.discard(self.device)
                self.returncode = 0
            return self.returncode

    monkeypatch.setattr(sweep_backends.subprocess, "Popen", FakeProcess)
    outcomes = []
    backend = make_backend(sweep, "auto")
    backend.poll = 0
    backend.run(sweep.cells, True, lambda cell: None, outcomes.append)
    assert sorted(seen) == ["0", "0", "1", "1"] and [o.status for o in outcomes] == ["ran"] * 4


# ----------------------------------------------------------------------------- failures
def test_a_failing_cell_is_recorded_and_the_others_finish(random_backbones, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FORGETLAB_DATA", raising=False)
    path = _sweep_file(
        tmp_path,
        random_backbones["offline_vit"],
        {"data.tasks": [["fontfamily"], ["digits"], ["cub200"], ["fontstyle"]]},
    )
    assert main(["sweep", str(path), "--quiet"]) == 1  # non-zero: a cell failed
    out = capsys.readouterr().out
    assert (
        "3 ran now, 0 already done, 1 failed" in out and "failed: taskscub200: the real datasets need a folder" in out
    )
    folder = tmp_path / "runs" / "tiny"
    status = json.loads((folder / "status.json").read_text())
    assert status["taskscub200"]["status"] == "failed" and "data.root" in status["taskscub200"]["message"]
    assert all(status[name]["status"] == "ran" for name in ("tasksfontfamily", "tasksdigits", "tasksfontstyle"))
    assert sorted(row["run"] for row in _table(folder / "sweep.csv")) == [
        "tasksdigits",
        "tasksfontfamily",
        "tasksfontstyle",
    ]
    states = {name: state for name, state, _ in sweep_status(load_sweep(path))}
    assert states == {
        "tasksfontfamily": "done",
        "tasksdigits": "done",
        "taskscub200": "failed",
        "tasksfontstyle": "done",
    }
    assert main(["sweep", str(path), "--status"]) == 0 and "3 done, 1 failed" in capsys.readouterr().out


def test_a_sweep_waits_for_a_cell_another_process_runs(random_backbones, tmp_path):
    path = _sweep_file(tmp_path, random_backbones["offline_vit"], {"seed": [0, 1]})
    sweep = load_sweep(path)
    held = RunFolder(sweep.folder / "seed1")
    messages = []
    with held.lock():
        worker = threading.Thread(
            target=lambda: messages.append(run_sweep(load_sweep(path), quiet=True, log=messages.append, wait=0.1))
        )
        worker.start()
        deadline = time.time() + 120
        while not any("is being run by pid" in str(m) for m in messages) and time.time() < deadline:
            time.sleep(0.1)
        assert worker.is_alive() and any(f"pid {os.getpid()}" in str(m) for m in messages)
    worker.join(timeout=120)
    assert messages[-1] == {"seed0": "ran", "seed1": "ran"}
    assert lock_holder(held) is None


def test_local_worker_processes_retry_a_killed_cell_and_it_resumes(random_backbones, tmp_path):
    grid = {"seed": [0, 1]}
    steps = {"train": {"batch_size": 16, "max_steps": 12, "lr": 0.05}}
    path = _sweep_file(tmp_path, random_backbones["offline_vit"], grid, name="killed")
    definition = yaml.safe_load(path.read_text())
    definition["base"].update(steps)
    path.write_text(yaml.safe_dump(definition))
    clean = _sweep_file(tmp_path, random_backbones["offline_vit"], grid, name="clean")
    definition["name"] = "clean"
    clean.write_text(yaml.safe_dump(definition))
    assert main(["sweep", str(clean), "--quiet", "--jobs", "2"]) == 0  # the same thread count per cell: the same floats
    target = RunFolder(tmp_path / "runs" / "killed" / "seed0")
    KILLED.clear()
    killer = threading.Thread(target=_kill_after_first_task, args=(target,))
    killer.start()
    assert main(["sweep", str(path), "--quiet", "--jobs", "2"]) == 0
    killer.join()
    assert len(KILLED) == 1
    status = json.loads((tmp_path / "runs" / "killed" / "status.json").read_text())
    assert status["seed0"]["attempts"] == 2 and status["seed1"]["attempts"] == 1
    for cell in ("seed0", "seed1"):
        assert (
            RunFolder(tmp_path / "runs" / "killed" / cell).read_matrix().values
            == RunFolder(tmp_path / "runs" / "clean" / cell).read_matrix().values
        )


KILLED: list[int] = []


def _kill_after_first_task(folder: RunFolder, timeout: float = 180) -> None:
    """SIGKILL the process running ``folder`` once its first task is committed (a worker dying mid-cell);
    the pid goes to ``KILLED``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        holder = lock_holder(folder) if folder.lock_file.exists() else None
        try:
            committed = folder.completed_tasks()
        except Exception:  # noqa: BLE001 - a commit being written
            committed = -1
        if holder and committed >= 1:
            pid = int(holder.split()[1])
            os.kill(pid, signal.SIGKILL)
            KILLED.append(pid)
            return
        time.sleep(0.02)
    raise AssertionError(f"{folder.path} never committed a task under a running process")


# ----------------------------------------------------------------------------- Ray
def test_ray_runs_the_sweep_like_the_local_backend_and_survives_a_killed_worker(
    random_backbones, tmp_path, monkeypatch
):
    import torch

    ray = pytest.importorskip("ray")
    grid = {"method.rank": [1, 2], "seed": [0, 1]}
    local = _sweep_file(tmp_path, random_backbones["offline_vit"], grid, name="local")
    remote = _sweep_file(tmp_path, random_backbones["offline_vit"], grid, name="ray")
    for path in (local, remote):
        definition = yaml.safe_load(path.read_text())
        definition["base"]["train"]["max_steps"] = 12
        path.write_text(yaml.safe_dump(definition))
    threads = torch.get_num_threads()
    monkeypatch.setenv("FORGETLAB_THREADS", "1")  # as in a Ray task of one CPU: the same floats
    try:
        assert main(["sweep", str(local), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    monkeypatch.delenv("FORGETLAB_THREADS")
    target = RunFolder(tmp_path / "runs" / "ray" / "rank2-seed0")
    KILLED.clear()
    killer = threading.Thread(target=_kill_after_first_task, args=(target,))
    killer.start()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert main(["sweep", str(remote), "--quiet", "--backend", "ray"]) == 0
    finally:
        ray.shutdown()
    killer.join()
    assert len(KILLED) == 1  # a Ray worker died mid-cell, and Ray ran the cell again
    assert _table(tmp_path / "runs" / "ray" / "sweep.csv") == _table(tmp_path / "runs" / "local" / "sweep.csv")
    for cell in ("rank1-seed0", "rank2-seed0", "rank2-seed1"):
        ray_run, local_run = RunFolder(tmp_path / "runs" / "ray" / cell), RunFolder(tmp_path / "runs" / "local" / cell)
        assert ray_run.read_matrix().values == local_run.read_matrix().values
        assert (ray_run.read_predictions(2)["predictions"] == local_run.read_predictions(2)["predictions"]).all()


def test_ray_backend_refuses_a_folder_a_node_cannot_see(monkeypatch, tmp_path):
    pytest.importorskip("ray")
    backend = sweep_backends.RayBackend(tmp_path)

    class FakeRay:
        @staticmethod
        def remote(**kwargs):
            class Remote:
                def options(self, **kwargs):
                    return self

                def remote(self, marker):
                    return ("node-b", False)

            return lambda function: Remote()

        @staticmethod
        def nodes():
            return [{"NodeID": "a" * 56, "Alive": True}]

        @staticmethod
        def get(values):
            return values

    with pytest.raises(ConfigError, match="node node-b cannot see .* every node mounts"):
        backend.check_shared_folder(FakeRay)
    assert not list(tmp_path.glob(".ray-visible-*"))


def test_ray_missing_is_a_one_line_error_naming_the_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ConfigError, match=r"pip install ray \(or pip install -e '\.\[ray\]' in forgetlab's clone\)"):
        sweep_backends._ray()
