"""A run's folder and its files. Every write is atomic (write a temporary file, then rename), so a
run killed at any point leaves only whole files behind.

=============================== ===============================================================
``config.yaml``                 the resolved config
``environment.json``            package versions, git commit, device, threads
``accuracy_matrix.json``/.csv   ``R[i][j]``: row 0 before any update, row i after task i; column 0
                                the upstream task, column j task j; cells not yet seen are empty
``predictions/upstream_after_<i>.npz``  per-example upstream predictions (and labels) after task i
``tasks.json``                  per task: trainable parameters, fraction of the backbone, training stats
``checkpoint/model.safetensors`` the model after the last finished task (resume point)
``progress.json``               written last after each task: how many tasks are finished
=============================== ===============================================================
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MATRIX_FILE = "accuracy_matrix.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path):
    return json.loads(Path(path).read_text())


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
        return {"columns": self.columns, "phases": self.phases, "phase_columns": self.phase_columns,
                "row_labels": self.row_labels(), "values": self.values}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict) -> "AccuracyMatrix":
        return cls(columns=list(data["columns"]), values=[list(row) for row in data["values"]],
                   phases=data.get("phases"), phase_columns=data.get("phase_columns"))  # fmt: skip

    def to_csv(self) -> str:
        lines = [",".join(["row"] + self.columns)]
        for label, row in zip(self.row_labels(), self.values):
            lines.append(",".join([label] + ["" if v is None else f"{v:.6f}" for v in row]))
        return "\n".join(lines) + "\n"

    def as_array(self) -> np.ndarray:
        """A float array with NaN for empty cells."""
        return np.array([[math.nan if v is None else v for v in row] for row in self.values], dtype=float)

    def format_table(self) -> str:
        """The matrix as a fixed-width table of percentages (empty cells blank)."""
        labels = self.row_labels()
        first = max(len("row"), *(len(label) for label in labels))
        widths = [max(7, len(column)) for column in self.columns]
        header = "row".ljust(first) + "  " + "  ".join(c.rjust(w) for c, w in zip(self.columns, widths))
        lines = [header, "-" * len(header)]
        for label, row in zip(labels, self.values):
            cells = ["" if v is None else f"{100 * v:.2f}" for v in row]
            lines.append(label.ljust(first) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, widths)))
        return "\n".join(lines)


class RunFolder:
    """Paths of, and reads from, one run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    environment = property(lambda self: self.path / "environment.json")
    matrix = property(lambda self: self.path / MATRIX_FILE)
    matrix_csv = property(lambda self: self.path / "accuracy_matrix.csv")
    tasks = property(lambda self: self.path / "tasks.json")
    checkpoint = property(lambda self: self.path / "checkpoint" / "model.safetensors")
    progress = property(lambda self: self.path / "progress.json")
    upstream_eval = property(lambda self: self.path / "upstream_eval.json")  # per row: accuracy, CI, k-NN at every k
    upstream = property(lambda self: self.path / "upstream.json")  # the upstream label space and its synsets

    def predictions(self, after_task: int) -> Path:
        return self.path / "predictions" / f"upstream_after_{after_task}.npz"

    def completed_tasks(self) -> int:
        """Tasks finished and committed (0: only the pretrained row, -1: nothing yet)."""
        if not self.progress.exists():
            return -1
        return int(read_json(self.progress)["completed_tasks"])

    def read_matrix(self) -> AccuracyMatrix:
        matrix = AccuracyMatrix.from_json(read_json(self.matrix))
        # Rows past the last committed task (a run killed mid-write) are not results.
        matrix.values = matrix.values[: self.completed_tasks() + 1]
        return matrix

    def write_matrix(self, matrix: AccuracyMatrix) -> None:
        write_json(self.matrix, matrix.to_json())
        atomic_write_text(self.matrix_csv, matrix.to_csv())

    def read_predictions(self, after_task: int) -> dict[str, np.ndarray]:
        with np.load(self.predictions(after_task)) as data:
            return {key: data[key] for key in data.files}
