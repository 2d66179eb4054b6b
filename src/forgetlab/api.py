"""forgetlab from Python: the functions the CLI calls, with results as pandas objects for notebooks.

    import forgetlab

    run = forgetlab.run(method__rank=16, name="r16")            # or a RunConfig, a YAML path, a dict
    run = forgetlab.run("my.yaml", train__epochs=2)
    run = forgetlab.run(preset="paper1-vit", data__root="/data")
    run.matrix                 # DataFrame: rows = training phases, columns = tasks (upstream first), percent
    run.metrics                # every registered metric: average accuracy, forgetting, BWT, ... (percent / points)
    run.predictions(1)         # upstream predictions and labels after phase 1
    table = forgetlab.load_sweep("runs/demo-rank-sweep")    # a row per cell: grid values, config, metrics
    forgetlab.report(["runs/demo-rank-sweep"], out="runs/report")

Overrides are keyword arguments with ``__`` for the dots of a config key (``method__rank=16`` is
``method.rank=16``); values are Python values. Errors are the CLI's: :class:`forgetlab.ForgetlabError`
with a one-line message naming the fix.
"""

from __future__ import annotations

import dataclasses
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from forgetlab import config as config_module
from forgetlab.analysis.units import PERCENT, percent
from forgetlab.results import RunFolder, read_single_predictions


def keyword_layer(overrides: dict[str, Any]) -> config_module.Layer:
    """``forgetlab.run(**kwargs)``'s overrides as a config layer (``method__rank=16`` is ``method.rank``)."""
    values = {
        key.replace("__", "."): os.fspath(value) if isinstance(value, os.PathLike) else value
        for key, value in overrides.items()
    }
    return config_module.Layer("keyword arguments", values)


def resolve(
    config: config_module.RunConfig | str | Path | dict | None = None, *, preset: str | None = None, **overrides
) -> config_module.RunConfig:
    """A validated config from a :class:`RunConfig`, a YAML file, a dict or a preset, with overrides on
    top (merged as every config layer is: :func:`forgetlab.config.merge`)."""
    if preset is not None:
        from forgetlab.presets import preset_layer

        if config is not None:
            raise config_module.ConfigError("give a config or a preset, not both")
        start = preset_layer(preset)
    elif isinstance(config, config_module.RunConfig):
        start = config_module.Layer("config", config_module.to_dict(config))
    elif isinstance(config, (str, Path)):
        start = config_module.file_layer(config)
    else:
        start = config_module.Layer("config", dict(config or {}))
    return config_module.resolve_layers([start, keyword_layer(overrides)])


def run(
    config: config_module.RunConfig | str | Path | dict | None = None,
    *,
    preset: str | None = None,
    log=print,
    **overrides,
) -> "Run":
    """Run (or resume) a sequence; returns its :class:`Run`. ``log=None`` silences it."""
    from forgetlab.runner import run as run_sequence

    resolved = resolve(config, preset=preset, **overrides)
    folder = run_sequence(resolved, log=log or (lambda message: None))
    return Run(folder.path)


def load_run(path: str | Path) -> "Run":
    """A finished (or partly finished) run folder."""
    from forgetlab.errors import DataError

    folder = RunFolder(path)
    if not folder.config.exists() or not folder.progress.exists():
        raise DataError(
            f"{folder.path} is not a run folder with a commit (config.yaml "
            f"and progress.json); give a folder 'forgetlab run' wrote"
        )
    return Run(folder.path)


@dataclasses.dataclass(frozen=True)
class Run:
    """One run folder, read through its commit record (never a half-written state)."""

    path: Path

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.path)

    @cached_property
    def config(self) -> config_module.RunConfig:
        """The resolved config the run was made with (read through the current schema)."""
        return config_module.load_stored(self.folder.config)

    @cached_property
    def accuracy_matrix(self):
        """The :class:`forgetlab.results.AccuracyMatrix` (phases, columns and values as stored)."""
        return self.folder.read_matrix()

    @property
    def matrix(self):
        """The accuracy matrix as a DataFrame: a row per training phase ('pretrained', 'after TASK'),
        a column per task (the upstream task first), accuracies in **percent** (88.36, as ``forgetlab show``,
        ``accuracy_matrix.csv`` and the report give them; ``attrs["unit"] == "percent"``; the JSON stores
        fractions: :attr:`accuracy_matrix`); NaN where a task was not yet seen."""
        import pandas as pd

        matrix = self.accuracy_matrix
        table = pd.DataFrame(matrix.as_percent(), index=matrix.row_labels(), columns=matrix.columns)
        table.attrs["unit"] = PERCENT
        return table

    @property
    def metrics(self) -> dict[str, float]:
        """Every registered metric (:func:`forgetlab.analysis.metrics.registered_metrics`: pretrained and
        final upstream accuracy, average accuracy, forgetting, BWT, plasticity, upstream change, and any
        registered with :func:`forgetlab.register_metric`), named with its unit as in ``sweep.csv`` and the
        report: accuracies in percent (``average_accuracy_pct``), differences of accuracies in percentage
        points (``average_forgetting_pp``); NaN where a metric needs more phases."""
        from forgetlab.analysis.metrics import in_points, summarise

        return in_points(summarise(self.accuracy_matrix.as_array(), trained=self.accuracy_matrix.trained()))

    @property
    def chance(self) -> dict[str, float]:
        """Task -> the accuracy of uniform guessing in percent (100 / its classes), for the upstream task
        and every task trained so far: an accuracy near it means the task was not learned."""
        from forgetlab.analysis.collect import RunResult

        return {column: 100 * level for column, level in RunResult(self.folder).chance.items()}

    @property
    def tasks(self):
        """Per phase (a DataFrame, a row per phase): ``tasks.json``'s records (task, column, trainable
        parameters, steps, speed, loss, domain) with every share in percent: ``trainable_backbone_pct``
        (of the backbone's parameters) and, with ``train.select=best``, ``selected_step``,
        ``selected_accuracy_pct`` and ``selection_scores_pct`` (step -> accuracy on the selection set)."""
        import pandas as pd

        return pd.DataFrame([_task_row(record) for record in self.folder.read_tasks()])

    @property
    def upstream(self) -> dict:
        """The upstream task's classes, their WordNet synsets and groups."""
        from forgetlab.results import read_json

        return read_json(self.folder.upstream)

    @property
    def drift(self):
        """Representation drift (``drift.csv``): a row per committed phase and unit, columns ``phase``
        (0: pretrained), ``unit`` (``blocks.3``, ``layer2.0``, ``features``), ``cka`` (linear CKA with the
        pretrained features, 1 = unchanged); empty with ``eval.probe_images=0``."""
        from forgetlab.analysis.drift import drift_table

        return drift_table(self.path)

    @property
    def drift_groups(self):
        """Representation drift by group of upstream classes (``drift_groups.csv``): per phase, group
        (``near``, ``far``: the outer quartiles of the classes' similarity to the phase's domain) and unit,
        the linear CKA on that group's probe images; columns ``phase``, ``group``, ``domain``, ``unit``,
        ``classes``, ``images``, ``cka``, ``missing`` (``cka`` NaN where ``missing`` gives why)."""
        from forgetlab.analysis.drift import drift_groups_table

        return drift_groups_table(self.path)

    @property
    def upstream_evaluators(self):
        """Each upstream evaluator's accuracy per matrix row (columns ``row``, ``evaluator``, ``accuracy_pct``
        in percent; ``eval.upstream_evaluator=[head, knn, probe]`` gives all three)."""
        from forgetlab.analysis.drift import upstream_evaluators_table

        return upstream_evaluators_table(self.path, self.config.eval.evaluators)

    @property
    def completed(self) -> int:
        return self.folder.completed_tasks()

    def predictions(self, row: int = 0, kind: str = "after") -> dict[str, np.ndarray]:
        """Upstream ``predictions`` and ``labels`` after phase ``row`` (0: the pretrained model);
        ``kind='single'``: the pretrained backbone plus only that phase's adapter (``forgetlab single-adapter``)."""
        if kind == "single":
            return read_single_predictions(self.folder, row)
        return self.folder.read_predictions(row)

    @property
    def adapters(self) -> dict[str, Path]:
        """Phase -> its stored LoRA adapter folder (PEFT's format: ``peft.PeftModel.from_pretrained``)."""
        root = self.path / "adapters"
        phases = self.accuracy_matrix.phases[: max(self.completed, 0)]
        return {phase: root / phase for phase in phases if (root / phase).is_dir()}

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, {max(self.completed, 0)}/{self.accuracy_matrix.num_tasks} phases)"


def _task_row(record: dict) -> dict:
    """One ``tasks.json`` record as :attr:`Run.tasks` shows it: its fractions (the stored form) in percent,
    named ``*_pct``; the model-selection record flattened into ``selected_step``, ``selected_accuracy_pct``
    and ``selection_scores_pct`` (step -> percent)."""
    row = {key: value for key, value in record.items() if key not in ("trainable_fraction_of_backbone", "selection")}
    if "trainable_fraction_of_backbone" in record:
        row["trainable_backbone_pct"] = percent(record["trainable_fraction_of_backbone"])
    selection = record.get("selection")
    if selection:
        row["selected_step"] = selection.get("selected_step")
        row["selected_accuracy_pct"] = percent(selection.get("selected_accuracy"))
        row["selection_scores_pct"] = {score["step"]: 100 * score["accuracy"] for score in selection.get("scored", [])}
    return row


def load_sweep(path: str | Path):
    """Every run under ``path`` (a sweep folder, or a folder of runs) as one DataFrame: a row per run
    with its name, backbone, method, seed, metrics (accuracies in percent, ``*_pct``; their differences
    in percentage points, ``*_pp``), FWT's reference run and every config key (``config.*`` columns)."""
    import pandas as pd

    from forgetlab.analysis.collect import find_runs
    from forgetlab.analysis.tables import run_rows

    runs = find_runs([path])  # two sweeps' cells may share a name: the index is each run's unique label
    return pd.DataFrame(run_rows(runs)).set_index("run")


def report(paths: list[str | Path] | str | Path, out: str | Path = "report", **options) -> Path:
    """Write the HTML and Markdown report of runs and sweeps; returns ``report.html``'s path.
    ``options``: ``permutations``, ``after`` ('sequence' | 'single'), ``similarity`` ('synset' | 'tokens'),
    ``figure_runs`` ('highest-rank' (default) | 'per-method' | 'all' | run labels: which runs get per-run figures)."""
    from forgetlab.reporting import write_report

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    return write_report(paths, out, log=options.pop("log", lambda message: None), **options)


def explain(
    run: "Run | str | Path",
    *,
    parts="attribution,spectra",
    images: int | None = None,
    unit: str = "block",
    device: str = "auto",
    log=print,
) -> dict:
    """Where a run's forgetting happens in the weights (``forgetlab explain``; a LoRA run, or a run of another
    method with ``save.updates=true``): writes (or completes)
    ``explain/`` in the run folder and returns its tables as DataFrames, keyed ``attribution``,
    ``spectra``, ``overlap`` and ``singular_values`` (those of ``parts``). docs/explain.md gives the columns."""
    from forgetlab.explanation import explain as explain_run

    path = run.path if isinstance(run, Run) else Path(run)
    return explain_run(path, parts=parts, images=images, unit=unit, device=device, log=log or (lambda message: None))


def anatomy(
    config: config_module.RunConfig | str | Path | dict | None = None, *, preset: str | None = None, **overrides
):
    """What every method would train on the configured backbone (random weights; nothing runs): a
    DataFrame with a row per method (``trainable``, ``trainable_pct``: percent of the backbone's parameters,
    ``note``) and, in ``.attrs``, the backbone's family, size and LoRA targets.
    ``forgetlab.anatomy(backbone__name="convnext_tiny")``."""
    import pandas as pd

    from forgetlab.method_anatomy import anatomy as build

    result = build(resolve(config, preset=preset, **overrides))
    rows = [
        {"method": row.method, "trainable": row.trainable, "trainable_pct": percent(row.fraction), "note": row.note}
        for row in result.methods
    ]
    table = pd.DataFrame(rows).set_index("method")
    table.attrs.update(
        backbone=result.backbone,
        model_class=result.model_class,
        family=result.family,
        parameters=result.parameters,
        lora_targets=result.lora_targets,
    )
    return table


def contextual(
    run: Run, phase: int = 1, *, after: str = "sequence", similarity: str = "synset", permutations: int = 10_000
):
    """Paper 1's contextual-forgetting test after ``phase`` of a run (see
    :func:`forgetlab.analysis.contextual.contextual_forgetting`), with the class similarities, the task's
    domain and the class names: printing it gives a summary, ``.to_frame()`` a DataFrame per class."""
    from forgetlab.analysis.collect import RunResult
    from forgetlab.analysis.contextual import class_similarities, contextual_forgetting

    result = RunResult(run.folder)
    stored = run.predictions(0)
    before = stored["predictions"] if after == "single" or phase == 1 else run.predictions(phase - 1)["predictions"]
    later = run.predictions(phase, kind=after if after == "single" else "after")["predictions"]
    domain = result.domain(phase)
    similarity_per_class = class_similarities(
        domain,
        synsets=run.upstream.get("synsets"),
        names=run.upstream.get("classes"),
        mode=similarity,
        domain_word=result.domain_word(phase),
    )
    test = contextual_forgetting(
        before, later, stored["labels"], similarity_per_class, permutations=permutations, seed=phase
    )
    return dataclasses.replace(
        test,
        domain=domain,
        task=result.matrix.phases[phase - 1],
        classes=list(run.upstream.get("classes") or []),
        synsets=list(run.upstream.get("synsets") or []),
    )
