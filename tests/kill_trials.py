"""Kill a run at every write and rename point of its commit sequence (SIGKILL, a real child process),
resume it, and compare with an uninterrupted run, bit for bit.

    python tests/kill_trials.py OUT_DIR [--sample N] [key=value ...]

One process imports torch and forgetlab once and forks a child per attempt (a fork costs milliseconds,
a fresh interpreter seconds). It prints one JSON line: the number of kill points, how many trials
resumed to an identical folder, and the differences of any that did not. ``--sample N`` tries N of the
points, evenly spaced from the first to the last (every commit's points get some), instead of all of
them. ``tests/test_reliability.py`` runs a sample in the test suite and every point as a benchmark.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)  # no OpenMP pool in the parent: forked children start clean

from forgetlab import config as config_module  # noqa: E402
from forgetlab import results  # noqa: E402
from forgetlab.runner import run  # noqa: E402

TIMING = results.TIMING_KEYS


def _child(config, crash_at: int | None) -> int:
    """Run ``config`` in a forked child; its exit status (negative: killed by that signal)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            results._crash_points = 0
            if crash_at is None:
                os.environ.pop("FORGETLAB_CRASH_AT", None)
            else:
                os.environ["FORGETLAB_CRASH_AT"] = str(crash_at)
            run(config, log=lambda message: None)
        except BaseException as error:  # noqa: BLE001 - report and exit non-zero
            print(f"child error: {type(error).__name__}: {error}", file=sys.stderr)
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _without_timing(value):
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def snapshot(folder: Path) -> dict:
    """What must be identical: committed state (less timings), every result file's bytes or arrays."""
    state = json.loads((folder / "progress.json").read_text())
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = str(path.relative_to(folder))
        if not path.is_file() or relative in (
            "environment.json",
            ".lock",
            "progress.json",
            "tasks.json",
            "upstream_eval.json",
        ):
            continue
        if relative == "config.yaml":  # the same config but for the folder's name
            import yaml

            files[relative] = {k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "name"}
        elif path.suffix == ".npz":
            with np.load(path) as data:
                files[relative] = {key: data[key].tolist() for key in data.files}
        else:
            files[relative] = path.read_bytes()
    return {"state": _without_timing(state), "files": files}


def chosen_points(points: int, sample: int | None) -> list[int]:
    """All ``points`` kill points, or ``sample`` of them evenly spaced from the first to the last."""
    if sample is None or sample >= points:
        return list(range(points))
    return sorted({round(i * (points - 1) / max(sample - 1, 1)) for i in range(sample)})


def main() -> None:
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    sample = None
    if overrides[:1] == ["--sample"]:
        sample, overrides = int(overrides[1]), overrides[2:]
    clean = config_module.resolve({}, [*overrides, f"out_dir={out}", "name=clean"])
    count_file = out / "points"
    os.environ["FORGETLAB_CRASH_COUNT"] = str(count_file)
    assert _child(clean, None) == 0, "the uninterrupted run failed"
    os.environ.pop("FORGETLAB_CRASH_COUNT")
    points = int(count_file.read_text())
    reference = snapshot(out / "clean")
    identical, failures, killed = 0, [], 0
    tried = chosen_points(points, sample)
    for point in tried:
        config = config_module.resolve({}, [*overrides, f"out_dir={out}", f"name=kill{point}"])
        status = _child(config, point)
        killed += status == -signal.SIGKILL
        resumed = _child(config, None)
        folder = out / f"kill{point}"
        leftovers = [str(p) for p in folder.rglob(f"*{results.PARTIAL_SUFFIX}")]
        if resumed == 0 and not leftovers and snapshot(folder) == reference:
            identical += 1
        else:
            failures.append({"point": point, "kill_status": status, "resume_status": resumed, "leftovers": leftovers})
    print(
        json.dumps(
            {"points": points, "tried": len(tried), "killed": killed, "identical": identical, "failures": failures}
        )
    )


if __name__ == "__main__":
    main()
