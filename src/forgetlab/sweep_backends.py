"""Where a sweep's cells run: this process, local worker processes (one per GPU, or sharing the CPU),
or a Ray cluster. Every backend runs a cell the same way (an ordinary ``forgetlab run`` of the cell's
config, which resumes from its last committed task) and reports one :class:`Outcome` per cell:

* ``ran`` - finished;
* ``failed`` - the cell's own error (bad data, non-finite training, out of memory): recorded with its
  one-line message; the other cells go on;
* ``locked`` - another process (a second ``forgetlab sweep`` on the same folder) is running the cell:
  not a cell error; the sweep waits for that process and then runs what it left unfinished;
* ``skipped`` - the cell was finished (by another process) by the time its turn came;
* a worker that *died* (killed, node lost) is not a cell error: the cell is run again, up to
  ``retries`` times, and resumes where its last commit left it.

No scheduler is written here: local processes are ``subprocess`` children (one per slot), Ray
schedules its tasks itself.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


from forgetlab.config import dump_yaml
from forgetlab.errors import ConfigError, ForgetlabError, RunLockedError

LOCKED, SKIPPED = "locked", "skipped"
# How a run refused for its folder's lock says so (forgetlab.results.RunFolder.lock), as a child prints it.
_LOCKED_WORDS = " is being run by "


@dataclass
class Outcome:
    cell: str
    status: str  # 'ran', 'failed', LOCKED or SKIPPED
    message: str = ""
    attempts: int = 1


def _never_done(cell) -> bool:
    return False


def locked_message(message: str) -> bool:
    """Whether a failed cell's one-line error is the lock refusal of a run another process holds."""
    return _LOCKED_WORDS in message and message.rstrip().endswith("wait for it to finish or stop it")


def cell_error_line(stderr: str) -> str:
    """The one-line error a failed ``forgetlab run`` printed (or the last line of whatever it printed)."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("forgetlab: error: ")]
    if errors:
        return errors[-1].removeprefix("forgetlab: error: ")
    return lines[-1] if lines else "no error message"


# ---------------------------------------------------------------------------------------------- devices
def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (none on a CPU machine)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA: a CPU machine
        return []


def slot_devices(gpus: list[str], gpus_per_cell: float) -> list[str | None]:
    """``CUDA_VISIBLE_DEVICES`` of every slot: one cell per GPU (``1``), ``k`` GPUs per cell (``k > 1``,
    whole numbers), or ``1/n`` of a GPU (``n`` cells share each GPU). None: a CPU slot."""
    if not gpus:
        return [None]
    if gpus_per_cell <= 0:
        raise ConfigError("--gpus-per-cell must be positive")
    if gpus_per_cell >= 1:
        if gpus_per_cell != int(gpus_per_cell):
            raise ConfigError("--gpus-per-cell above 1 must be a whole number of GPUs")
        size = int(gpus_per_cell)
        if size > len(gpus):
            raise ConfigError(f"--gpus-per-cell {size} but only {len(gpus)} GPUs are visible")
        return [",".join(gpus[i : i + size]) for i in range(0, len(gpus) - size + 1, size)]
    share = round(1 / gpus_per_cell)
    return [gpu for gpu in gpus for _ in range(share)]


# ---------------------------------------------------------------------------------------------- in process
class InProcessBackend:
    """One cell after another in this process (``--jobs 1``): no start-up cost per cell."""

    name = "this process"

    def run(
        self, cells: list, quiet: bool, on_start: Callable, on_done: Callable, done: Callable = _never_done
    ) -> None:
        from forgetlab.runner import run

        for cell in cells:
            if done(cell):  # finished by another process meanwhile
                on_done(Outcome(cell.name, SKIPPED))
                continue
            on_start(cell)
            try:  # cell.config: resolved and checked when the sweep was loaded
                run(
                    cell.config,
                    log=(lambda message: None)
                    if quiet
                    else (lambda message, n=cell.name: print(f"[{n}] {message}", flush=True)),
                )
                on_done(Outcome(cell.name, "ran"))
            except RunLockedError as error:
                on_done(Outcome(cell.name, LOCKED, str(error)))
            except ForgetlabError as error:
                on_done(Outcome(cell.name, "failed", str(error)))


# ---------------------------------------------------------------------------------------------- processes
def _die_with_parent() -> None:
    """In a child, before exec: get SIGTERM when the sweep's process dies (Linux), so no orphaned
    worker goes on running cells beside a rerun."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not glibc Linux: children are still stopped on Ctrl-C and normal exits
        pass


class ProcessBackend:
    """Cells in child processes, one per slot: each slot is a GPU (``CUDA_VISIBLE_DEVICES``), a share
    of one, or a share of the CPU cores (``FORGETLAB_THREADS``). A child killed by a signal is retried."""

    def __init__(self, slots: list[str | None], folder: Path, retries: int = 2, poll: float = 0.2):
        self.slots, self.folder, self.retries, self.poll = slots, folder, retries, poll
        self.name = f"{len(slots)} processes" + (f" on GPUs {', '.join(s for s in slots if s)}" if any(slots) else "")

    def _start(self, cell, slot: str | None, quiet: bool) -> subprocess.Popen:
        spec = self.folder / ".cells" / f"{cell.name}.yaml"
        spec.parent.mkdir(parents=True, exist_ok=True)
        spec.write_text(dump_yaml(cell.tree, sort_keys=False))  # read back by YAML 1.2's rules
        env = dict(os.environ, FORGETLAB_THREADS=str(max(1, (os.cpu_count() or 1) // len(self.slots))))
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        # stderr goes to a file, not a pipe: a chatty child can never fill a pipe nobody reads yet
        error_path = self.folder / ".cells" / f"{cell.name}.err"
        with (self.folder / ".cells" / f"{cell.name}.log").open("a") as log, error_path.open("w") as errors:
            process = subprocess.Popen(
                [sys.executable, "-m", "forgetlab", "run", str(spec), *(["--quiet"] if quiet else [])],
                env=env,
                stdout=log if quiet else None,
                stderr=errors,
                text=True,
                preexec_fn=_die_with_parent,
            )
        process.error_path = error_path  # the child holds its own copies of both files
        return process

    def run(
        self, cells: list, quiet: bool, on_start: Callable, on_done: Callable, done: Callable = _never_done
    ) -> None:
        queue = list(cells)
        attempts = {cell.name: 0 for cell in cells}
        running: dict[int, tuple] = {}  # slot index -> (cell, process)
        try:
            while queue or running:
                for index, slot in enumerate(self.slots):
                    if index not in running and queue:
                        cell = queue.pop(0)
                        if done(cell):  # finished by another process meanwhile
                            on_done(Outcome(cell.name, SKIPPED))
                            continue
                        attempts[cell.name] += 1
                        on_start(cell)
                        running[index] = (cell, self._start(cell, slot, quiet))
                for index, (cell, process) in list(running.items()):
                    if process.poll() is None:
                        continue
                    del running[index]
                    error_path = getattr(process, "error_path", None)
                    stderr = error_path.read_text(errors="replace") if error_path and error_path.exists() else ""
                    if process.returncode == 0:
                        on_done(Outcome(cell.name, "ran", attempts=attempts[cell.name]))
                    elif process.returncode < 0 and attempts[cell.name] <= self.retries:
                        queue.insert(0, cell)  # the worker died: run it again; it resumes from its last commit
                    elif process.returncode < 0:
                        on_done(
                            Outcome(
                                cell.name,
                                "failed",
                                f"its worker died {attempts[cell.name]} times (signal {-process.returncode})",
                                attempts[cell.name],
                            )
                        )
                    elif locked_message(message := cell_error_line(stderr)):
                        on_done(Outcome(cell.name, LOCKED, message, attempts[cell.name]))
                    else:
                        on_done(Outcome(cell.name, "failed", message, attempts[cell.name]))
                time.sleep(self.poll)
        finally:  # Ctrl-C, or an error of the sweep itself: stop every child, which commits what it finished
            for _, process in running.values():
                if process.poll() is None:
                    process.terminate()
            for _, process in running.values():
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()


# ---------------------------------------------------------------------------------------------- Ray
def _ray():
    try:
        import ray
    except ImportError as error:
        raise ConfigError(
            "--backend ray needs Ray: pip install ray (or pip install -e '.[ray]' in forgetlab's clone)"
        ) from error
    return ray


def _ray_cell(tree: dict, threads: int) -> tuple[str, str]:
    """One cell inside a Ray worker: ``('ran', '')`` or ``('failed', one-line error)``. A worker that
    dies raises in the driver instead, and Ray runs the task again (it resumes)."""
    os.environ["FORGETLAB_THREADS"] = str(threads)
    from forgetlab import config as config_module
    from forgetlab.runner import run

    try:
        run(config_module.resolve(tree), log=lambda message: None)
    except RunLockedError as error:
        return LOCKED, str(error)
    except ForgetlabError as error:
        return "failed", str(error)
    return "ran", ""


def _sees_marker(path: str) -> tuple[str, bool]:
    import socket

    return socket.gethostname(), os.path.exists(path)


class RayBackend:
    """Each cell a Ray task with its resources: 1 GPU by default where the cluster has GPUs, CPUs
    otherwise. ``address='auto'`` joins a running cluster; None starts a local one. Run folders live
    under the sweep's ``out_dir``, which every node must see (a shared filesystem): checked at start."""

    def __init__(
        self,
        folder: Path,
        address: str | None = None,
        gpus_per_cell: float | None = None,
        cpus_per_cell: float = 1,
        retries: int = 2,
        num_cpus: int | None = None,
    ):
        self.folder, self.address, self.gpus_per_cell, self.cpus_per_cell = (
            folder,
            address,
            gpus_per_cell,
            cpus_per_cell,
        )
        self.retries, self.num_cpus = retries, num_cpus
        self.name = f"Ray ({address or 'a local instance'})"

    def _init(self):
        ray = _ray()
        if not ray.is_initialized():
            options = {"address": self.address} if self.address else {"num_cpus": self.num_cpus or os.cpu_count()}
            try:
                ray.init(**options, include_dashboard=False, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise ConfigError(
                    f"cannot reach the Ray cluster at {self.address} ({error}); start it with 'ray start --head' "
                    "or pass --address of its head"
                ) from error
        return ray

    def check_shared_folder(self, ray) -> None:
        """Every alive node must see the sweep folder: a marker written here is looked for there."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        marker = self.folder / f".ray-visible-{os.getpid()}"
        marker.write_text("forgetlab")
        try:
            check = ray.remote(num_cpus=0)(_sees_marker)
            nodes = [node["NodeID"] for node in ray.nodes() if node.get("Alive")]
            answers = ray.get(
                [
                    check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
                        str(marker.resolve())
                    )
                    for node in nodes
                ]
            )
        finally:
            marker.unlink(missing_ok=True)
        blind = [host for host, seen in answers if not seen]
        if blind:
            raise ConfigError(
                f"node {blind[0]} cannot see {self.folder.resolve()}; "
                f"out_dir must be on a filesystem every node mounts "
                "(e.g. NFS) at the same path"
            )

    def run(
        self, cells: list, quiet: bool, on_start: Callable, on_done: Callable, done: Callable = _never_done
    ) -> None:
        ray = self._init()
        self.check_shared_folder(ray)
        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        gpus = self.gpus_per_cell if self.gpus_per_cell is not None else (1 if cluster_gpus else 0)
        task = ray.remote(_ray_cell).options(num_cpus=self.cpus_per_cell, num_gpus=gpus, max_retries=self.retries)
        pending = {}
        for cell in cells:
            if done(cell):
                on_done(Outcome(cell.name, SKIPPED))
                continue
            on_start(cell)
            pending[task.remote(cell.tree, max(1, int(self.cpus_per_cell)))] = cell
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(ready[0])
                try:
                    status, message = ray.get(ready[0])
                except ray.exceptions.RayError as error:  # retries exhausted, or an unexpected error in the cell
                    status, message = "failed", cell_error_line(str(error))
                on_done(Outcome(cell.name, status, message))
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
