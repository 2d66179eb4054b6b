"""Runs survive any kill, refuse bad input in one line, never run code from a data file."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
import pytest

from forgetlab import config as config_module
from forgetlab.config import DataConfig
from forgetlab.data import build_task
from forgetlab.errors import ConfigError, DataError, RunLockedError
from forgetlab.results import RunFolder
from forgetlab.runner import run
from tests.conftest import tiny_overrides

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def _cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "forgetlab", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def _one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("forgetlab: error: ") and "Traceback" not in result.stderr, (
        result.stderr
    )
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- kills
@pytest.mark.parametrize(
    "sample", [pytest.param(16, id="sampled"), pytest.param(None, id="every-point", marks=pytest.mark.benchmark)]
)
def test_a_kill_at_every_write_and_rename_point_resumes_bit_identically(random_backbones, tmp_path, sample):
    """SIGKILL a real child process at each of the commit sequence's points, resume, compare with an
    uninterrupted run: every committed file, the matrix and the predictions bit for bit. The test suite
    tries 16 points evenly spaced over the sequence (every commit gets some); ``make benchmark`` every one."""
    overrides = [
        "backbone.name=offline_vit",
        f"backbone.weights={random_backbones['offline_vit']}",
        "data.tasks=[fontfamily, digits]",
        "data.max_train=32",
        "data.max_test=24",
        "train.batch_size=16",
        "train.max_steps=2",
        "eval.batch_size=64",
        "method.rank=2",
    ]
    sampling = [] if sample is None else ["--sample", str(sample)]
    result = subprocess.run(
        [PYTHON, str(REPO / "tests" / "kill_trials.py"), str(tmp_path), *sampling, *overrides],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["points"] >= 50  # three commits (pretrained row, two tasks), every write and rename of each
    assert summary["tried"] == (summary["points"] if sample is None else sample)
    assert summary["killed"] == summary["tried"] and summary["identical"] == summary["tried"], summary["failures"][:3]


def test_a_kill_between_checkpoint_and_commit_resumes(random_backbones, tmp_path):
    """The case that could never resume before: the next task's checkpoint written, its commit not."""
    config = config_module.resolve({}, tiny_overrides(random_backbones["offline_vit"], tmp_path, name="window"))
    folder = run(config, log=lambda message: None)
    clean = folder.read_matrix().values
    # Forge the state of a kill after task 2's checkpoint and before its progress.json: task 1's commit
    # with task 2's checkpoint (and its head) on disk beside it.
    config_1 = config_module.resolve({}, tiny_overrides(random_backbones["offline_vit"], tmp_path, name="window2"))

    def stop_after_task_1(message: str) -> None:
        if message.startswith("task 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(config_1, log=stop_after_task_1)
    import shutil

    shutil.copy(folder.checkpoint, RunFolder(config_1.run_dir).checkpoint_for(2))
    assert run(config_1, log=lambda message: None).read_matrix().values == clean
    assert sorted(p.name for p in (config_1.run_dir / "checkpoint").iterdir()) == ["model-2.safetensors"]


# ----------------------------------------------------------------------------- one owner
def test_a_second_process_on_a_running_folder_is_refused_and_nothing_changes(random_backbones, tmp_path):
    overrides = tiny_overrides(random_backbones["offline_vit"], tmp_path, name="owned", **{"data.tasks": "[digits]"})
    folder = run(config_module.resolve({}, overrides), log=lambda message: None).path
    before = _snapshot(folder)
    with RunFolder(folder).lock():
        line = _one_line_error(_cli("run", *overrides), "is being run by pid", str(os.getpid()))
        with pytest.raises(RunLockedError):
            with RunFolder(folder).lock():
                pass
    assert "wait for it to finish" in line
    after = _snapshot(folder)
    assert {p: v for p, v in after.items() if p.name != ".lock"} == {
        p: v for p, v in before.items() if p.name != ".lock"
    }
    assert (
        run(config_module.resolve({}, overrides), log=lambda message: None).completed_tasks() == 1
    )  # the lock died with its holder


# ----------------------------------------------------------------------------- no code from data files
def test_a_crafted_cifar_pickle_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    cifar = tmp_path / "cifar-100-python"
    cifar.mkdir()
    (cifar / "meta").write_bytes(pickle.dumps({"fine_label_names": ["a", "b"]}, protocol=2))
    good = {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 1]}
    (cifar / "test").write_bytes(pickle.dumps(good, protocol=2))
    (cifar / "train").write_bytes(pickle.dumps({"data": Exploit(), "fine_labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="asks for posix.system"):
        build_task("cifar100", DataConfig(root=str(tmp_path)))
    assert not marker.exists()
    checked = _cli("data", "check", "--root", str(tmp_path))
    assert (
        "cifar100        MISSING" in checked.stdout
        and "asks for posix.system" in checked.stdout
        and not marker.exists()
    )
    for protocol in (2, 4, 5):  # the arrays of real pickles (Python 2's protocol 2) and of newer writers load
        (cifar / "train").write_bytes(pickle.dumps(good, protocol=protocol))
        assert build_task("cifar100", DataConfig(root=str(tmp_path))).train.labels.tolist() == [0, 1]


# ----------------------------------------------------------------------------- non-finite training
@pytest.mark.parametrize("method", ["full", "topk", "linear", "lora", "lora-keep", "block_expansion", "fullrank"])
def test_a_diverging_task_stops_in_one_line_before_it_commits(method, random_backbones, tmp_path):
    name, _, policy = method.partition("-")
    extra = {
        "method.name": name,
        **({"method.policy": policy} if policy else {}),
        **({"method.k": 2} if name == "topk" else {}),
        **({"method.copies": 2} if name == "block_expansion" else {}),
    }
    overrides = tiny_overrides(
        random_backbones["offline_vit"], tmp_path, name="diverge", **extra, **{"train.lr": "1e38"}
    )
    line = _one_line_error(_cli("run", *overrides), "lower train.lr", "train.lr=1e+38")
    assert "non-finite" in line or "overflowed" in line
    folder = RunFolder(tmp_path / "diverge")
    assert folder.completed_tasks() == 0  # the pretrained row only: nothing of the diverged task was committed
    assert (
        not list((folder.path / "checkpoint").glob("*.safetensors")) if (folder.path / "checkpoint").exists() else True
    )


# ----------------------------------------------------------------------------- corrupt folders
CORRUPTIONS = [
    ("progress.json", "truncate", "progress.json is unreadable or not JSON"),
    ("progress.json", "garble", "progress.json is unreadable or not JSON"),
    ("progress.json", "seven", "is not a valid commit record"),
    ("checkpoint/model-2.safetensors", "truncate", "does not match the SHA-256"),
    ("checkpoint/model-2.safetensors", "flip", "does not match the SHA-256"),
    ("checkpoint/model-2.safetensors", "delete", "is missing but the run committed it"),
    ("predictions/upstream_after_1.npz", "garble", "does not match the SHA-256"),
    ("adapters/fontfamily/adapter_model.safetensors", "flip", "does not match the SHA-256"),
    ("config.yaml", "delete", "holds results but no config.yaml"),
    ("config.yaml", "garble", "config.yaml is not readable YAML"),
]


@pytest.fixture(scope="module")
def finished_run(random_backbones, tmp_path_factory):
    out = tmp_path_factory.mktemp("corrupt")
    overrides = tiny_overrides(
        random_backbones["offline_vit"], out, name="base", **{"data.tasks": "[fontfamily, digits]"}
    )
    run(config_module.resolve({}, overrides), log=lambda message: None)
    return out, overrides


@pytest.mark.parametrize("relative,how,message", CORRUPTIONS, ids=[f"{r}-{h}" for r, h, _ in CORRUPTIONS])
def test_a_corrupt_run_folder_is_a_one_line_error_naming_the_file(finished_run, tmp_path, relative, how, message):
    import shutil

    out, overrides = finished_run
    folder = tmp_path / "base"
    shutil.copytree(out / "base", folder)
    import yaml

    stored = yaml.safe_load((folder / "config.yaml").read_text())
    (folder / "config.yaml").write_text(
        yaml.safe_dump({**stored, "out_dir": str(tmp_path)}, sort_keys=False)
    )  # the copy's new place
    target = folder / relative
    data = target.read_bytes()
    if how == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif how == "garble":
        target.write_bytes(b"\x00\xff{garbage: [" + data[10:40])
    elif how == "flip":
        target.write_bytes(data[:-9] + bytes([data[-9] ^ 1]) + data[-8:])
    elif how == "seven":
        target.write_text(json.dumps({**json.loads(data), "completed_tasks": 7}))
    else:
        target.unlink()
    before = _snapshot(folder)
    moved = [o if not o.startswith("out_dir=") else f"out_dir={tmp_path}" for o in overrides]
    line = _one_line_error(_cli("run", *moved), message)
    assert ("config.yaml" in relative) or relative.split("/")[-1] in line or "progress.json" in line
    assert _snapshot(folder) == before  # nothing changed


# ----------------------------------------------------------------------------- config values
BAD_VALUES = [
    ("train.lr=-1", "train.lr must be positive"),
    ("train.lr=.inf", "must be a finite number"),
    ("data.max_test=0", "data.max_test must be at least 1"),
    ("data.max_train=-5", "data.max_train must be at least 1"),
    ("train.label_smoothing=2", "label_smoothing must be in [0, 1)"),
    ("train.task_epochs={nope: 3}", "train.task_epochs names 'nope', which is no dataset"),
    ("backbone.image_size=-1", "backbone.image_size must be in 8..4096"),
    ("data.workers=-2", "data.workers must be in 0..256"),
    ("seed=-1", "seed must be in"),
    ("name=../x", "name must be a plain folder name"),
    ("preprocess.hflip=3", "hflip must be a probability"),
]


@pytest.mark.parametrize("override,message", BAD_VALUES)
def test_every_config_value_is_validated(override, message):
    with pytest.raises(ConfigError) as error:
        config_module.resolve({}, [override])
    assert message in str(error.value)


def test_scientific_notation_duplicate_keys_and_non_files(tmp_path):
    assert config_module.resolve({}, ["train.lr=1e-3"]).train.lr == 1e-3
    assert config_module.resolve({}, ["train.lr=5E-4"]).train.lr == 5e-4
    (tmp_path / "sci.yaml").write_text("train:\n  lr: 1e-4\n  weight_decay: 0\n")
    assert config_module.load(tmp_path / "sci.yaml").train.lr == 1e-4
    (tmp_path / "dup.yaml").write_text("train:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match="key 'lr' appears twice"):
        config_module.load(tmp_path / "dup.yaml")
    os.mkfifo(tmp_path / "fifo.yaml")
    with pytest.raises(ConfigError, match="not a regular file"):
        config_module.load(tmp_path / "fifo.yaml")
    result = _cli("config", "train.lr=1e-3", "--keys", "seed=2")  # an option after the first override
    assert result.returncode == 0 and "train.lr = 0.001" in result.stdout and "seed = 2" in result.stdout


# ----------------------------------------------------------------------------- fuzzing
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

KEYS = [key for key, _, _ in config_module.describe(config_module.resolve({})) if key not in ("name", "out_dir")]
KEYS += [
    "method.rank",
    "method.k",
    "method.copies",
    "method.split",
    "method.policy",
    "method.targets",
    "train.epoch",
    "nope",
    "data..x",
]
JUNK = [
    "[",
    "{a: 1",
    "1e-3",
    "-1e6",
    ".nan",
    "!!python/object/apply:os.system ['true']",
    "''",
    "~",
    "[1, [2]]",
    "{x: {y: z}}",
    "yes",
    "0x1F",
    "1_000",
    "'1e-3'",
    "\u00e9\u00e8",
    "../../x",
    "a,b,",
    "-0",
    "1e400",
]
VALUES = st.one_of(
    st.integers(-10, 10**10).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(JUNK),
    st.text(alphabet="abcxyz019_.,:-[]{} ", max_size=12),
    st.booleans().map(str),
)


@pytest.fixture(scope="module")
def guarded_run(random_backbones, tmp_path_factory):
    """An existing, finished run: every fuzzed command names it, and none may change it."""
    out = tmp_path_factory.mktemp("fuzz")
    overrides = tiny_overrides(random_backbones["offline_vit"], out, name="guarded", **{"data.tasks": "[digits]"})
    run(config_module.resolve({}, overrides), log=lambda message: None)
    return out, overrides


def _exit_code(argv, capsys) -> tuple[int, str]:
    from forgetlab.cli import main

    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    return code, capsys.readouterr().err


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=4))
@example([("method", "0")])  # these four were tracebacks, found by fuzzing
@example([("method", "[1, 2]")])
@example([("method.name", "[1]")])
@example([("train.task_epochs", "{[a]: 1}")])
@example([("seed", "._")])
def test_fuzzed_overrides_are_valid_or_one_line_errors_and_never_change_a_folder(guarded_run, capsys, pairs):
    out, overrides = guarded_run
    folder = out / "guarded"
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}
    fuzzed = [f"{key}={value}" for key, value in pairs]
    code, err = _exit_code(["run", "--quiet", *overrides, *fuzzed], capsys)
    assert code in (0, 2), err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("forgetlab: error: ") and "Traceback" not in err, err
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before
    assert {p.name for p in out.iterdir()} == {"guarded"}  # and nothing new was started beside it


YAML_TREES = st.recursive(
    st.one_of(st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=5), st.none(), st.booleans()),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(
            st.sampled_from(["train", "lr", "data", "tasks", "method", "rank", "x", "epochs", "eval"]),
            children,
            max_size=3,
        ),
    ),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        YAML_TREES.map(lambda tree: __import__("yaml").safe_dump(tree)), st.sampled_from(JUNK), st.text(max_size=40)
    )
)
@example("method: 0\n")  # found by this test in CI: a method section that is not a mapping was a traceback
@example("train: 5\n")
def test_fuzzed_yaml_files_are_valid_or_one_line_errors(guarded_run, capsys, tmp_path_factory, text):
    out, overrides = guarded_run
    path = tmp_path_factory.mktemp("yaml") / "fuzzed.yaml"
    path.write_text(text)
    before = {p: p.read_bytes() for p in (out / "guarded").rglob("*") if p.is_file() and p.name != ".lock"}
    code, err = _exit_code(["run", "--quiet", str(path), *overrides], capsys)
    assert code in (0, 2), err
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert {p: p.read_bytes() for p in (out / "guarded").rglob("*") if p.is_file() and p.name != ".lock"} == before


# ----------------------------------------------------------------------------- clean stops, permissions, names
def _wait_for(predicate, timeout: float = 120) -> None:
    import time

    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_sigterm_stops_a_run_within_seconds_and_it_resumes(random_backbones, tmp_path):
    import signal
    import time

    overrides = tiny_overrides(
        random_backbones["offline_vit"], tmp_path, name="term", **{"train.max_steps": 40, "data.max_train": 400}
    )
    process = subprocess.Popen(
        [PYTHON, "-m", "forgetlab", "run", "--quiet", *overrides], cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    folder = RunFolder(tmp_path / "term")
    _wait_for(lambda: folder.progress.exists() and folder.completed_tasks() >= 1)
    start = time.time()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143 and time.time() - start < 30  # 128 + SIGTERM, as a shell reports it
    assert "run the same command again to resume" in process.stderr.read()
    assert folder.completed_tasks() in (1, 2) and not list(folder.path.rglob("*.partial"))
    assert run(config_module.resolve({}, overrides), log=lambda message: None).completed_tasks() == 2


def test_killing_a_sweep_ends_its_workers(random_backbones, tmp_path):
    import signal

    from tests.test_sweep_report import _sweep_file

    path = _sweep_file(tmp_path, random_backbones["offline_vit"], {"seed": [0, 1]})
    definition = yaml.safe_load(path.read_text())
    definition["base"]["train"]["max_steps"] = 400
    path.write_text(yaml.safe_dump(definition))
    sweep = subprocess.Popen(
        [PYTHON, "-m", "forgetlab", "sweep", str(path), "--quiet", "--jobs", "2"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    folders = [RunFolder(tmp_path / "runs" / "tiny" / f"seed{s}") for s in (0, 1)]
    from forgetlab.results import lock_holder

    _wait_for(lambda: all(f.lock_file.exists() and lock_holder(f) for f in folders))
    workers = [int(lock_holder(f).split()[1]) for f in folders]
    sweep.send_signal(signal.SIGKILL)  # the sweep dies without cleaning up: its workers get SIGTERM from the kernel
    sweep.wait(timeout=30)

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as handle:  # a zombie waiting for its parent counts as gone
            return handle.read().split()[2] == "Z"

    _wait_for(lambda: all(gone(pid) for pid in workers), timeout=60)


def test_result_files_follow_the_umask_and_sweep_names_stay_inside_out_dir(random_backbones, tmp_path):
    from forgetlab.sweep import load_sweep

    old = os.umask(0o022)
    try:
        folder = run(
            config_module.resolve(
                {},
                tiny_overrides(random_backbones["offline_vit"], tmp_path, name="modes", **{"data.tasks": "[digits]"}),
            ),
            log=lambda message: None,
        )
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.path.rglob("*") if p.is_file() and p.name != ".lock"}
    assert modes and set(modes.values()) == {0o644}, modes
    (tmp_path / "escape.yaml").write_text(yaml.safe_dump({"name": "../../x", "grid": {"seed": [0]}}))
    with pytest.raises(ConfigError, match="must be a plain folder name"):
        load_sweep(tmp_path / "escape.yaml")


def _fill_the_disk(monkeypatch, *fragments: str) -> None:
    """Writes through forgetlab's atomic writer fail with ENOSPC (at their fsync, as a full disk can) when
    the file's path holds every one of ``fragments``; ``monkeypatch.undo()`` frees the space."""
    import errno

    from forgetlab import results

    real_fsync = os.fsync

    def full_disk(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if all(fragment in name for fragment in fragments):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(results.os, "fsync", full_disk)


def test_a_full_disk_is_a_one_line_error_and_the_run_resumes(random_backbones, tmp_path, monkeypatch, capsys):
    """The disk fills while the second task's checkpoint is written: one line naming the file and the fix,
    exit 2, no temporary file left, the first task still committed; once there is space, the same command
    finishes with the matrix of a run that never failed."""
    from forgetlab.cli import main

    overrides = tiny_overrides(random_backbones["offline_vit"], tmp_path, name="full")
    _fill_the_disk(monkeypatch, ".model-2.safetensors.")
    assert main(["run", *overrides]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "the disk is full writing" in lines[0] and "model-2.safetensors" in lines[0], lines
    assert "free space" in lines[0] and "resumes" in lines[0]
    folder = RunFolder(tmp_path / "full")
    assert folder.completed_tasks() == 1 and not list(folder.path.rglob("*.partial"))
    from forgetlab.errors import DiskFullError

    error = DiskFullError.writing(folder.path / "x", "No space left on device")  # crosses processes intact
    assert str(pickle.loads(pickle.dumps(error))) == str(error)

    monkeypatch.undo()
    assert main(["run", *overrides]) == 0
    assert main(["run", *tiny_overrides(random_backbones["offline_vit"], tmp_path, name="never-failed")]) == 0
    resumed, reference = folder.read_matrix().as_array(), RunFolder(tmp_path / "never-failed").read_matrix().as_array()
    assert folder.completed_tasks() == 2 and np.array_equal(resumed, reference, equal_nan=True)


def test_a_full_disk_in_a_sweep_fails_that_cell_in_one_line_and_the_sweep_resumes(
    random_backbones, tmp_path, monkeypatch, capsys
):
    """The disk fills while one cell commits: that cell is a failed cell with the disk's one-line reason,
    the other cell runs, and the same sweep command afterwards finishes the failed cell."""
    import errno

    from forgetlab import api
    from forgetlab.cli import main
    from tests.test_sweep_report import _sweep_file

    sweep = _sweep_file(tmp_path, random_backbones["offline_vit"], {"method.rank": [1, 2]})
    _fill_the_disk(monkeypatch, "/rank1/", ".model-2.safetensors.")
    assert main(["sweep", str(sweep), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "the disk is full writing" in out and "model-2.safetensors" in out, out
    runs = tmp_path / "runs" / "tiny"
    assert RunFolder(runs / "rank1").completed_tasks() == 1 and RunFolder(runs / "rank2").completed_tasks() == 2
    monkeypatch.undo()
    assert main(["sweep", str(sweep), "--quiet"]) == 0
    assert RunFolder(runs / "rank1").completed_tasks() == 2

    # A full disk met by a write that is not forgetlab's own (here the report's): the same one line.
    def report_on_a_full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "report" / "figure.png"))

    monkeypatch.setattr(api, "report", report_on_a_full_disk)
    assert main(["report", str(runs), "--out", str(tmp_path / "report")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "the disk is full writing" in lines[0] and "figure.png" in lines[0], lines
