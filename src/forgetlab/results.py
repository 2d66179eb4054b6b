"""A run's folder and its files. Every write is atomic (write a temporary file, then rename), so a
run killed at any point leaves only whole files behind.

=============================== ===============================================================
``config.yaml``                 the resolved config
``environment.json``            package versions, git commit, device, threads, and ``inputs``: the resolved
                                preprocessing and the weights file's SHA-256 (not part of the run's identity),
                                and a ``history`` of every start and resume (:mod:`forgetlab.provenance`)
``accuracy_matrix.json``/.csv   ``R[i][j]``: row 0 before any update, row i after phase i; column 0
                                the upstream task, then the distinct tasks; cells not yet seen are empty;
                                fractions in the JSON (the storage), percent in the CSV (for people)
``predictions/upstream_after_<i>.npz``  per-example upstream predictions (and labels) after phase i
``tasks.json``                  per phase: trainable parameters, fraction of the backbone, training stats
``checkpoint/model-<i>.safetensors`` the model after the last committed phase i (the resume point)
``progress.json``               the commit record, written last for every phase; its ``format_version``
                                is the folder's format (:data:`FORMAT_VERSION`)
=============================== ===============================================================

**One format version per folder.** ``progress.json`` records the format the folder was written in;
a folder of an earlier format is read through one function, :func:`migrate`, which brings its commit
record to the current format in memory (the next commit writes it so). Nothing else reads older formats.

**One atomic commit per phase.** A phase first writes the files only it has (its predictions, its
adapter, ``checkpoint/model-<i>.safetensors``: new names, so nothing committed is overwritten), then
``progress.json``, atomically: the commit. It holds the committed state itself (the matrix rows, the
per-phase records, the upstream records) and the SHA-256 of every file the commit refers to. The
matrix, ``tasks.json`` and ``upstream_eval.json`` are views of it, rewritten after the commit and
repaired from it on the next open; files of a phase that never committed (a kill before its
``progress.json``) are ignored and replaced when it runs again. So a kill at any instant leaves either
the old commit or the new one, and a resume reads exactly one of them. ``FORGETLAB_CRASH_AT=N`` kills
the process (SIGKILL) at the N-th write or rename point: the test of that claim uses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from forgetlab.errors import FULL_DISK, DataError, DiskFullError, RunLockedError, command

MATRIX_FILE = "accuracy_matrix.json"
CSV_UNIT_HEADER = "row (accuracy %)"  # accuracy_matrix.csv's first header cell: its cells are percent
FORMAT_VERSION = 1  # of a run folder, in its progress.json; a progress.json without one is format 0
PARTIAL_SUFFIX = ".partial"
# The wall-clock figures a run writes (task and upstream-evaluation records): never equal across two runs
# of one config, so comparisons of run folders (resumes, kill trials) leave them out.
TIMING_KEYS = frozenset(
    {
        "train_seconds",
        "images_per_second",
        "eval_seconds",
        "seconds",
        "warmup_seconds",
        "selection_seconds",
        "steady_seconds",
        "steady_images_per_second",
    }
)
_crash_points = 0


def crash_point() -> None:
    """A place where a kill must leave a resumable folder. With ``FORGETLAB_CRASH_AT=N`` the N-th point
    (0-based) kills this process with SIGKILL; ``FORGETLAB_CRASH_COUNT=FILE`` records how many there were."""
    global _crash_points
    target = os.environ.get("FORGETLAB_CRASH_AT")
    if target is not None and int(target) == _crash_points:
        os.kill(os.getpid(), signal.SIGKILL)
    _crash_points += 1
    count_file = os.environ.get("FORGETLAB_CRASH_COUNT")
    if count_file:
        Path(count_file).write_text(str(_crash_points))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), 0o666 & ~_umask())  # mkstemp's 0600 would ignore the user's umask
            os.fsync(handle.fileno())
        crash_point()
        os.replace(temporary, path)
        crash_point()
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in FULL_DISK:  # one line for the CLI, a failed cell for a sweep
            raise DiskFullError.writing(path, error.strerror) from error
        raise


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path):
    """A JSON file; a one-line error naming it when it is not readable JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(
            f"{path} is unreadable or not JSON ({type(error).__name__}); restore it or delete its run folder"
        ) from error


def task_metadata(task) -> dict:
    """What the analysis needs to know of the upstream task's classes (names, WordNet synsets, groups):
    ``upstream.json`` of a run folder, written by the runner and read (or rebuilt) by the analysis."""
    return {
        "name": task.name,
        "classes": list(task.classes),
        "synsets": list(task.class_synsets) if task.class_synsets else None,
        "groups": list(task.class_groups) if task.class_groups else None,
    }


def write_npz(path: Path, **arrays) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def save_safetensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    from safetensors.torch import save

    tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


@dataclass
class AccuracyMatrix:
    """``values[i][j]``: accuracy on column ``j`` after training phase ``i`` (row 0: before any).

    Columns are the distinct tasks (``upstream`` first); rows are training phases. Usually each phase
    trains its own task, so row ``i`` trains column ``i``. In paper 1's long setting a task is trained
    twice (``stanford_cars:samples_half1`` ... ``stanford_cars:samples_half2``): both phases train the
    column ``stanford_cars``, and ``phase_columns`` says which column each phase trained.
    """

    columns: list[str]  # ['upstream', task 1, ..., task C]
    values: list[list[float | None]] = field(default_factory=list)
    phases: list[str] | None = None  # the name of every training phase (default: columns[1:])
    phase_columns: list[str] | None = None  # the column each phase trains (default: the phase's own)

    def __post_init__(self):
        self.phases = list(self.phases if self.phases is not None else self.columns[1:])
        self.phase_columns = list(self.phase_columns if self.phase_columns is not None else self.phases)
        unknown = sorted(set(self.phase_columns) - set(self.columns[1:]))
        if unknown or len(self.phase_columns) != len(self.phases):
            raise ValueError(f"phases must train the matrix's columns; unknown: {unknown}")

    @property
    def num_tasks(self) -> int:
        """Training phases (rows after the pretrained one)."""
        return len(self.phases)

    def trained(self) -> list[int]:
        """The column index each phase (row 1, 2, ...) trained."""
        return [self.columns.index(column) for column in self.phase_columns]

    def row_labels(self) -> list[str]:
        return ["pretrained"] + [f"after {name}" for name in self.phases[: len(self.values) - 1]]

    def add_row(self, accuracies: dict[str, float]) -> None:
        """Append the row after the next phase; columns not in ``accuracies`` stay empty."""
        if len(self.values) > self.num_tasks:
            raise ValueError("the matrix already has a row for every phase")
        unknown = set(accuracies) - set(self.columns)
        if unknown:
            raise ValueError(f"unknown columns {sorted(unknown)}")
        self.values.append([accuracies.get(column) for column in self.columns])

    def to_json(self) -> dict:
        return {
            "columns": self.columns,
            "phases": self.phases,
            "phase_columns": self.phase_columns,
            "row_labels": self.row_labels(),
            "values": self.values,
        }

    @classmethod
    def from_json(cls, data: dict) -> "AccuracyMatrix":
        return cls(
            columns=list(data["columns"]),
            values=[list(row) for row in data["values"]],
            phases=data["phases"],
            phase_columns=data["phase_columns"],
        )

    def to_csv(self) -> str:
        """``accuracy_matrix.csv``: the matrix in **percent** (``88.3600``), its first header cell
        :data:`CSV_UNIT_HEADER` naming the unit (``row,upstream,...`` with fractions: a folder written
        before the CSV was in percent); empty cells blank. The JSON keeps fractions."""
        lines = [",".join([CSV_UNIT_HEADER] + self.columns)]
        for label, row in zip(self.row_labels(), self.values):
            lines.append(",".join([label] + ["" if v is None else f"{100 * v:.4f}" for v in row]))
        return "\n".join(lines) + "\n"

    def as_array(self) -> np.ndarray:
        """A float array with NaN for empty cells."""
        return np.array([[math.nan if v is None else v for v in row] for row in self.values], dtype=float)

    def as_percent(self) -> np.ndarray:
        """:meth:`as_array` in percent (``100 x`` the stored fraction), as every table a person reads shows it."""
        return 100 * self.as_array()

    def format_table(self) -> str:
        """The matrix as a fixed-width table of percentages (empty cells blank), its first header cell
        naming the unit as ``accuracy_matrix.csv``'s does (:data:`CSV_UNIT_HEADER`)."""
        labels = self.row_labels()
        first = max(len(CSV_UNIT_HEADER), *(len(label) for label in labels))
        widths = [max(7, len(column)) for column in self.columns]
        header = CSV_UNIT_HEADER.ljust(first) + "  " + "  ".join(c.rjust(w) for c, w in zip(self.columns, widths))
        lines = [header, "-" * len(header)]
        for label, row in zip(labels, self.values):
            cells = ["" if v is None else f"{100 * v:.2f}" for v in row]
            lines.append(label.ljust(first) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, widths)))
        return "\n".join(lines)


class RunFolder:
    """Paths of, and reads from, one run folder (see the module docstring for its commit protocol)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    environment = property(lambda self: self.path / "environment.json")
    matrix = property(lambda self: self.path / MATRIX_FILE)
    matrix_csv = property(lambda self: self.path / "accuracy_matrix.csv")
    tasks = property(lambda self: self.path / "tasks.json")
    progress = property(lambda self: self.path / "progress.json")
    upstream_eval = property(lambda self: self.path / "upstream_eval.json")  # per row: accuracy, CI, k-NN at every k
    upstream = property(lambda self: self.path / "upstream.json")  # the upstream label space and its synsets
    lock_file = property(lambda self: self.path / ".lock")

    def predictions(self, after_task: int) -> Path:
        return self.path / "predictions" / f"upstream_after_{after_task}.npz"

    def checkpoint_for(self, index: int) -> Path:
        return self.path / "checkpoint" / f"model-{index}.safetensors"

    @property
    def checkpoint(self) -> Path:
        """The committed resume point: the model after the last committed phase. A :class:`DataError`
        when no phase has been committed with one (only the pretrained row)."""
        state = self.state()
        if not state or not state["checkpoint"]:
            raise DataError(f"{self.path} has no committed checkpoint (no phase trained yet)")
        return self.path / state["checkpoint"]

    # ------------------------------------------------------------------------------------ the commit
    def state(self) -> dict | None:
        """The last commit (``progress.json``), checked and in the current format (:func:`migrate`);
        None before the first one."""
        if not self.progress.exists():
            return None
        state = read_json(self.progress)
        completed, total = (
            (state.get("completed_tasks"), state.get("total_tasks")) if isinstance(state, dict) else (None, None)
        )
        if not (isinstance(completed, int) and isinstance(total, int) and 0 <= completed <= total):
            raise DataError(
                f"{self.progress} is not a valid commit record (completed {completed!r} of {total!r} tasks); "
                "delete the run folder and run again"
            )
        if "matrix" in state:
            matrix = state["matrix"]
            if not isinstance(matrix, dict) or len(matrix.get("values", [])) != completed + 1:
                raise DataError(
                    f"{self.progress} does not hold {completed + 1} matrix rows; delete the run folder and run again"
                )
        return migrate(self, state)

    def completed_tasks(self) -> int:
        """Phases finished and committed (0: only the pretrained row, -1: nothing yet)."""
        state = self.state()
        return -1 if state is None else state["completed_tasks"]

    def commit(
        self,
        index: int,
        total: int,
        matrix: "AccuracyMatrix",
        task_records: list,
        upstream_records: list,
        files: list[Path],
    ) -> None:
        """Commit phase ``index`` (0: the pretrained row): ``files`` (already written) are hashed into
        ``progress.json``, written atomically; then the views are rewritten and what the commit
        superseded is removed."""
        hashes = {
            str(Path(f).relative_to(self.path)): file_sha256(f) for f in files
        }  # config.yaml: checked by meaning on open
        state = self.state() or {}
        kept = {name: digest for name, digest in state.get("files", {}).items() if not name.startswith("checkpoint/")}
        committed = {**kept, **hashes}  # the new checkpoint supersedes the old one
        checkpoint = self.checkpoint_for(index)
        write_json(
            self.progress,
            {
                "format_version": FORMAT_VERSION,
                "completed_tasks": index,
                "total_tasks": total,
                "checkpoint": str(checkpoint.relative_to(self.path)) if checkpoint.exists() else None,
                "matrix": matrix.to_json(),
                "tasks": task_records,
                "upstream_eval": upstream_records,
                "files": committed,
            },
        )
        self.write_views()
        self.clean()

    def write_views(self) -> None:
        """Rewrite the matrix, ``tasks.json`` and ``upstream_eval.json`` from the commit, where they differ."""
        state = self.state()
        if not state:
            return
        matrix = AccuracyMatrix.from_json(state["matrix"])
        views = {
            self.matrix: json.dumps(matrix.to_json(), indent=2) + "\n",
            self.matrix_csv: matrix.to_csv(),
            self.tasks: json.dumps(state["tasks"], indent=2) + "\n",
            self.upstream_eval: json.dumps(state["upstream_eval"], indent=2) + "\n",
        }
        for path, text in views.items():
            if not path.exists() or path.read_text(errors="replace") != text:
                atomic_write_text(path, text)

    def clean(self) -> None:
        """Remove temporary files of killed writes and checkpoints other than the committed one."""
        state = self.state()
        keep = self.path / state["checkpoint"] if state and state["checkpoint"] else None
        for path in self.path.rglob(f"*{PARTIAL_SUFFIX}"):
            path.unlink(missing_ok=True)
        for path in (self.path / "checkpoint").glob("model-*.safetensors"):
            if keep is None or path != keep:
                path.unlink(missing_ok=True)
                crash_point()

    def verify(self) -> None:
        """Check every file the commit names against its SHA-256: a one-line error naming the file."""
        state = self.state()
        for relative, digest in (state["files"] if state else {}).items():
            path = self.path / relative
            if not path.exists():
                raise DataError(
                    f"{path} is missing but the run committed it; delete the run folder {self.path} and run again"
                )
            if file_sha256(path) != digest:
                raise DataError(
                    f"{path} does not match the SHA-256 committed in progress.json (changed or corrupt); "
                    f"delete the run folder {self.path} and run again"
                )

    # ------------------------------------------------------------------------------------ reads
    def read_matrix(self) -> AccuracyMatrix:
        """The committed matrix; before the first commit, the matrix file's columns with no row."""
        state = self.state()
        if state:
            return AccuracyMatrix.from_json(state["matrix"])
        matrix = AccuracyMatrix.from_json(_current_matrix(read_json(self.matrix)))
        matrix.values = []  # rows of a phase that never committed (a kill mid-write) are not results
        return matrix

    def read_tasks(self) -> list[dict]:
        state = self.state()
        return state["tasks"] if state else []

    def read_upstream_eval(self) -> list[dict]:
        state = self.state()
        return state["upstream_eval"] if state else []

    def read_predictions(self, after_task: int) -> dict[str, np.ndarray]:
        path = self.predictions(after_task)
        try:
            with np.load(path) as data:
                return {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError) as error:
            raise DataError(
                f"{path} is missing or unreadable ({type(error).__name__}); delete the run folder and run again"
            ) from error

    # ------------------------------------------------------------------------------------ one owner
    @contextlib.contextmanager
    def lock(self):
        """Hold the folder's lock while running it; another process gets a one-line error naming the
        holder. The lock is the kernel's (``fcntl.flock``), so it dies with its process."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_file, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunLockedError(f"{self.path} is being run by {holder}; wait for it to finish or stop it") from None
        try:
            _write_holder(handle)
            yield
        finally:
            handle.close()  # releases the lock


def _write_holder(handle) -> None:
    """Name the lock's holder in its file, for whoever meets the lock taken."""
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
    handle.flush()


@contextlib.contextmanager
def build_lock(lock_file: Path, what: str, log=None):
    """Hold ``lock_file``'s lock while building a cache shared by runs (an offline backbone, the
    offline world, a k-NN bank): the same kernel lock as :meth:`RunFolder.lock` (``fcntl.flock``, so
    it dies with its process), but a second process or thread waits for it instead of failing, after
    one line naming the holder and ``what`` it builds (``forgetlab: waiting for pid 123 on node1 since
    2026-01-05 10:00:00, which is pretraining offline_vit``; ``log``, default stderr). The caller looks
    for the result again once it holds the lock, and builds only if the first holder left none."""
    import fcntl

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_file, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            message = f"forgetlab: waiting for {holder}, which is {what}"
            if log is None:
                print(message, file=sys.stderr, flush=True)
            else:
                log(message)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        _write_holder(handle)
        yield
    finally:
        handle.close()  # releases the lock


def migrate(folder: RunFolder, state: dict) -> dict:
    """``state`` (a folder's ``progress.json`` as read, its counts checked) in the current format
    (:data:`FORMAT_VERSION`); the folder's files are left as they are. The one reader of older formats.

    Format 0 (no ``format_version``; folders of earlier versions) may lack, each taken then from the
    folder as those versions wrote it: ``matrix`` (``accuracy_matrix.json``; its rows past the commit
    are not results), ``tasks`` and ``upstream_eval`` (``tasks.json`` and ``upstream_eval.json`` cut to
    the committed phases; none when absent), ``checkpoint`` (``checkpoint/model.safetensors`` when it
    exists), ``files`` (none hashed), the matrix's ``phases`` and ``phase_columns`` (its task columns)
    and a task record's ``column`` (its task). A :class:`DataError` for a format newer than this
    version reads, or an absent or unreadable ``accuracy_matrix.json`` where the commit holds no matrix."""
    version = state.get("format_version", 0)
    if version == FORMAT_VERSION:
        return state
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DataError(
            f"{folder.progress} has format_version {version!r}, newer than this forgetlab reads ({FORMAT_VERSION}); "
            "update forgetlab"
        )
    completed = state["completed_tasks"]
    state = dict(state, format_version=FORMAT_VERSION)
    if "matrix" not in state:
        matrix = read_json(folder.matrix)
        state["matrix"] = dict(matrix, values=matrix["values"][: completed + 1])
    state["matrix"] = _current_matrix(state["matrix"])
    if "tasks" not in state:
        state["tasks"] = read_json(folder.tasks)[: max(0, completed)] if folder.tasks.exists() else []
    state["tasks"] = [{**record, "column": record.get("column", record["task"])} for record in state["tasks"]]
    if "upstream_eval" not in state:
        state["upstream_eval"] = (
            read_json(folder.upstream_eval)[: completed + 1] if folder.upstream_eval.exists() else []
        )
    if "checkpoint" not in state:
        legacy = folder.path / "checkpoint" / "model.safetensors"
        state["checkpoint"] = str(legacy.relative_to(folder.path)) if legacy.exists() else None
    state.setdefault("files", {})
    return state


def _current_matrix(matrix: dict) -> dict:
    """A matrix record of format 0 with the phases and their columns of the current one (None: its task columns)."""
    return {"phases": None, "phase_columns": None, **matrix}


def lock_holder(folder: RunFolder) -> str | None:
    """Who holds ``folder``'s lock now, or None (a probe: takes and drops the lock if free)."""
    import fcntl

    if not folder.lock_file.exists():
        return None
    with open(folder.lock_file, "r") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return None


# ---------------------------------------------------------------------------- single-adapter predictions
# ``forgetlab single-adapter`` (single_adapter.py) writes them; the report and the Python API read them.
def single_prediction_path(folder: RunFolder, phase_index: int) -> Path:
    """Where the single-adapter upstream predictions after phase ``phase_index`` are stored:
    ``predictions/upstream_single_<i>.npz`` (the pretrained backbone plus only that phase's adapter)."""
    return folder.path / "predictions" / f"upstream_single_{phase_index}.npz"


def read_single_predictions(folder: RunFolder, phase_index: int) -> dict[str, np.ndarray]:
    """The single-adapter predictions after phase ``phase_index``; a one-line error naming the command
    that writes them when they are missing."""
    path = single_prediction_path(folder, phase_index)
    if not path.exists():
        raise DataError(
            f"{path} is missing; run {command('single-adapter', folder.path)} first (it reuses the stored adapters)"
        )
    with np.load(path) as data:
        return {key: data[key] for key in data.files}
