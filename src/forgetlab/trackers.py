"""Experiment trackers: TensorBoard and Weights & Biases, off by default, on by config (``track.*``).

One small interface, :class:`Tracker`, with three calls. The training loop calls :meth:`Tracker.step`
with the values it has already read on the host (the loss every ``train.log_every`` steps, and the
learning rate); the runner calls :meth:`Tracker.phase` after each committed phase with the accuracy
row, the matrix and, for a tracker that ``wants_figure``, the matrix drawn as a matplotlib figure, and
:meth:`Tracker.close` at the end. A tracker never reaches into the loop, and nothing in the run depends
on one: they are outside the run's identity (a run may be resumed with tracking switched on) and
outside its commit (a kill loses at most the tracker's unflushed tail).

Trackers receive what they log: this module imports nothing of forgetlab but its errors and the metric
registry (the runner draws the figure with :func:`forgetlab.reporting.figures.matrix_figure`). Accuracies
are logged in percent, named so: ``accuracy_pct/<task>`` by phase (the row it receives holds the stored
fractions). At the end both log every registered metric of the final matrix
(:func:`forgetlab.analysis.metrics.registered_metrics`) as ``final/<name>_<unit>`` (``final/upstream_final_pct``,
``final/average_forgetting_pp``), as ``sweep.csv`` names and scales them.

* **TensorBoard** writes event files into ``<run>/tensorboard``: ``train/loss`` and ``train/lr`` by
  global step (counted across tasks), ``accuracy_pct/<task>`` by phase, the matrix as an image per phase,
  and the resolved config as hyper-parameters (HParams tab, with the final accuracies as metrics:
  :data:`HPARAM_METRICS`).
* **Weights & Biases** logs the same into a W&B run in ``<run>/wandb``; ``WANDB_MODE=offline`` needs no
  network (``wandb sync`` uploads later). Runs of a sweep share a group (the sweep's name), and the
  matrix is a ``wandb.Table``. The W&B run id is derived from the run folder, so a resumed run
  continues the same W&B run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from forgetlab.errors import ConfigError


class Tracker:
    """What the run tells a tracker. Every method does nothing here."""

    wants_figure = False  # True: phase() receives the matrix as a figure (drawn only for such a tracker)

    def step(self, step: int, values: dict[str, float]) -> None:
        """``values`` (``loss``, ``lr``) at the global training step ``step``."""

    def phase(self, index: int, row: dict[str, float], matrix, figure=None) -> None:
        """Phase ``index`` is committed: its accuracy ``row`` (column -> accuracy), the matrix so far and,
        when :attr:`wants_figure`, the matrix as a matplotlib figure (the tracker closes it)."""

    def close(self) -> None:
        """The run ends (finished, or stopped)."""


class Trackers(Tracker):
    """Several trackers as one."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers
        self.wants_figure = any(tracker.wants_figure for tracker in trackers)

    def step(self, step, values):
        for tracker in self.trackers:
            tracker.step(step, values)

    def phase(self, index, row, matrix, figure=None):
        for tracker in self.trackers:
            tracker.phase(index, row, matrix, figure if tracker.wants_figure else None)

    def close(self):
        for tracker in self.trackers:
            tracker.close()


def flat_config(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"train.lr": 0.001, ...}`` with lists and None as strings (what both trackers accept)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


HPARAM_METRICS = ("final/upstream_final_pct", "final/average_accuracy_pct")  # TensorBoard's HParams metrics


def _final_metrics(matrix) -> dict[str, float]:
    """Every registered metric that is defined (:func:`forgetlab.analysis.metrics.summarise`), in percent or
    points and named with its unit: ``final/upstream_final_pct``, ``final/average_forgetting_pp``."""
    from forgetlab.analysis.metrics import in_points, summarise

    values = matrix.as_array()
    registered = in_points(summarise(values, trained=matrix.trained()[: len(values) - 1]))
    return {f"final/{column}": value for column, value in registered.items() if value == value}


def _percent_row(row: dict[str, float]) -> dict[str, float]:
    """``accuracy_pct/<task>`` -> percent, from a phase's row of stored fractions."""
    return {f"accuracy_pct/{column}": 100 * value for column, value in row.items()}


class TensorBoardTracker(Tracker):
    wants_figure = True  # the matrix as an image per phase

    def __init__(self, folder: Path, config_tree: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError as error:
            raise missing_package("tensorboard", "tensorboard") from error
        self.writer = SummaryWriter(log_dir=str(folder / "tensorboard"))
        # The HParams tab: the config, with the final accuracies as its metrics (written by close()).
        for summary in hparams(flat_config(config_tree), dict.fromkeys(HPARAM_METRICS, 0.0)):
            self.writer.file_writer.add_summary(summary)
        self.matrix = None

    def step(self, step, values):
        for key, value in values.items():
            self.writer.add_scalar(f"train/{key}", value, step)

    def phase(self, index, row, matrix, figure=None):
        for tag, value in _percent_row(row).items():
            self.writer.add_scalar(tag, value, index)
        if figure is not None:
            self.writer.add_figure("accuracy_matrix", figure, index)  # closes the figure
        self.matrix = matrix
        self.writer.flush()

    def close(self):
        if self.matrix is not None:
            for key, value in _final_metrics(self.matrix).items():
                self.writer.add_scalar(key, value, self.matrix.num_tasks)
        self.writer.close()


class WandbTracker(Tracker):
    def __init__(self, folder: Path, config_tree: dict, project: str, group: str | None):
        try:
            import wandb
        except ImportError as error:
            raise missing_package("wandb", "wandb") from error
        self.wandb = wandb
        run_id = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
        try:
            self.run = wandb.init(
                project=project,
                group=group,
                name=folder.name,
                id=run_id,
                resume="allow",
                dir=str(folder),
                config=flat_config(config_tree),
                reinit="create_new",
            )
        except Exception as error:  # noqa: BLE001 - no login, no network: say what to do
            raise ConfigError(
                f"Weights & Biases did not start ({type(error).__name__}: {str(error)[:120]}); "
                "run 'wandb login', or set WANDB_MODE=offline"
            ) from error
        self.run.define_metric("train/step")
        self.run.define_metric("train/*", step_metric="train/step")
        self.run.define_metric("phase")
        self.run.define_metric("accuracy_pct/*", step_metric="phase")
        self.matrix = None

    def step(self, step, values):
        self.run.log({"train/step": step, **{f"train/{key}": value for key, value in values.items()}})

    def phase(self, index, row, matrix, figure=None):
        table = self.wandb.Table(
            columns=["phase", *matrix.columns],
            data=[
                [label, *[None if v != v else v for v in values]]  # percent, as every table a person reads
                for label, values in zip(matrix.row_labels(), matrix.as_percent().tolist())
            ],
        )
        self.run.log({"phase": index, **_percent_row(row), "accuracy_matrix": table})
        self.matrix = matrix

    def close(self):
        if self.matrix is not None:
            self.run.summary.update(_final_metrics(self.matrix))
        self.run.finish()


def missing_package(key: str, package: str) -> ConfigError:
    """The error for ``track.<key>`` without its package: forgetlab is not on PyPI, so the extra installs
    from a clone (``pip install -e '.[track]'``), or the package alone (``pip install <package>``)."""
    return ConfigError(
        f"track.{key} needs the {package} package: pip install {package} "
        "(or pip install -e '.[track]' in forgetlab's clone)"
    )


def check_trackers(config) -> None:
    """Refuse tracking whose package is missing, before a run writes anything."""
    import importlib.util

    for key, package in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        if getattr(config.track, key) and importlib.util.find_spec(package) is None:
            raise missing_package(key, package)


def open_trackers(config, folder: Path, config_tree: dict) -> Tracker:
    """The trackers ``config.track`` asks for (none: a :class:`Tracker` that does nothing)."""
    trackers: list[Tracker] = []
    if config.track.tensorboard:
        trackers.append(TensorBoardTracker(folder, config_tree))
    if config.track.wandb:
        trackers.append(WandbTracker(folder, config_tree, config.track.wandb_project, config.track.wandb_group))
    return trackers[0] if len(trackers) == 1 else Trackers(trackers)
