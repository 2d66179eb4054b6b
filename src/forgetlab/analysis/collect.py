"""Reading finished (or partly finished) run folders for analysis: a run, a sweep, or a tree of them.

:class:`RunResult` is the one door from a run folder to the analysis: it reads the files through
``results`` (:class:`~forgetlab.results.RunFolder`), the stored config through ``config``, and a task's
class names and domain through ``data`` only for runs that did not store them."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from forgetlab.errors import DataError
from forgetlab.results import AccuracyMatrix, RunFolder, read_json


@dataclass
class RunResult:
    folder: RunFolder

    @cached_property
    def config(self) -> dict:
        """The stored config read through the current schema: options added since it was written
        take their defaults, so runs from before and after an option existed compare equal."""
        from forgetlab import config as config_module

        return config_module.normalise(config_module.parse_yaml(self.folder.config.read_text()))

    @cached_property
    def matrix(self) -> AccuracyMatrix:
        return self.folder.read_matrix()

    @cached_property
    def tasks(self) -> list[dict]:
        return self.folder.read_tasks()

    @cached_property
    def upstream(self) -> dict:
        """Upstream class names and synsets: stored with the run, or rebuilt from the dataset registry."""
        if self.folder.upstream.exists():
            return read_json(self.folder.upstream)
        from forgetlab.data import build_task
        from forgetlab.results import task_metadata

        return task_metadata(build_task(self.config["data"]["upstream"]))

    @property
    def name(self) -> str:
        return self.folder.path.name

    @property
    def backbone(self) -> str:
        return self.config["backbone"]["name"]

    @property
    def method(self) -> str:
        """A short label: the method's own (:meth:`forgetlab.methods.base.Method.label`: 'lora r=4',
        'top-3', 'block p=2', 'linear'), then '+lwf', '+replay'."""
        label = method_label(self.config["method"])
        if self.config.get("lwf", {}).get("alpha", 0) > 0:
            label += " +lwf"
        if self.config.get("replay", {}).get("size", 0) > 0:
            label += " +replay"
        return label

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def completed(self) -> int:
        return self.folder.completed_tasks()

    @property
    def chance(self) -> dict[str, float]:
        """Column -> the accuracy of uniform guessing, as a fraction: 1 / its number of classes (the
        upstream task's from ``upstream.json``, a downstream task's from its record, so only for tasks
        the run has trained). An accuracy near it means the model learned nothing of that task."""
        levels = {}
        classes = self.upstream.get("classes") or []
        if classes:
            levels[self.matrix.columns[0]] = 1 / len(classes)
        for record in self.tasks:
            if record.get("num_classes"):
                levels[record["column"]] = 1 / record["num_classes"]
        return levels

    def config_key(self, *ignored: str) -> str:
        """The run's identity without its seed and the ``ignored`` dotted keys, as a canonical string
        (:func:`forgetlab.analysis.groups.identity_key`, the one rule of every pairing): runs with
        equal keys differ only there (e.g. seeds of one setting, one of them watched in TensorBoard)."""
        from forgetlab.analysis.groups import identity_key

        return identity_key(self, *ignored)

    def domain(self, task_index: int) -> str | None:
        """The WordNet concept of phase ``task_index`` (1-based), stored with the run or from the registry."""
        return self._domain(task_index, "domain_synset")

    def domain_word(self, task_index: int) -> str | None:
        """The word paper 1 matched class names against after phase ``task_index`` ('car', 'plane')."""
        return self._domain(task_index, "domain_word")

    def _domain(self, task_index: int, key: str) -> str | None:
        if task_index - 1 < len(self.tasks) and self.tasks[task_index - 1].get(key):
            return self.tasks[task_index - 1][key]
        from forgetlab.data import build_task

        return getattr(build_task(self.matrix.phases[task_index - 1]), key)

    def predictions(self, after_task: int) -> dict[str, np.ndarray]:
        return self.folder.read_predictions(after_task)


def method_label(options: dict) -> str:
    """The label a stored ``method`` section gets from its method's class; a method no longer
    registered is labelled by its name."""
    from forgetlab.errors import ConfigError
    from forgetlab.methods import method_class

    try:
        return method_class(options["name"]).label(options)
    except ConfigError:  # unknown method: a folder written by another forgetlab
        return options["name"]


def focus_rank(options: dict) -> int | None:
    """The rank by which the report picks a backbone's drawn run (:meth:`forgetlab.methods.base.Method.focus_rank`)."""
    from forgetlab.errors import ConfigError
    from forgetlab.methods import method_class

    try:
        return method_class(options["name"]).focus_rank(options)
    except ConfigError:
        return None


def _is_run(path: Path) -> bool:
    return (path / "config.yaml").exists() and (path / "progress.json").exists()  # one commit at least


def find_runs(paths: list[str | Path]) -> list[RunResult]:
    """Run folders at, or below, each path (a run, a sweep, or a folder of either), in a stable order."""
    runs = []
    for path in map(Path, paths):
        if not path.exists():
            raise DataError(f"{path} does not exist; give a run folder or a sweep folder")
        if _is_run(path):
            runs.append(RunResult(RunFolder(path)))
            continue
        found = sorted(p.parent for p in path.rglob("accuracy_matrix.json") if _is_run(p.parent))
        if not found:
            raise DataError(
                f"no run folders under {path}; give a folder that 'forgetlab run' or 'forgetlab sweep' wrote"
            )
        runs += [RunResult(RunFolder(p)) for p in found]
    return runs
