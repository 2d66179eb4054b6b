"""``forgetlab report PATH...``: one self-contained HTML page (figures embedded as data URIs) and a
Markdown summary, with every figure also written as PNG and SVG next to them.

:func:`write_report` collects the runs (``analysis.collect``), runs the contextual-forgetting tests,
draws the figures (``reporting.figures``), derives the tables and findings (``analysis``) and writes the
pages (``results``' atomic writes). It imports ``analysis``, ``reporting.figures`` and ``results``;
single-adapter predictions are read through ``results``, never the run code that writes them."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from forgetlab.analysis.cells import unfinished_cells
from forgetlab.analysis.collect import RunResult, find_runs, focus_rank
from forgetlab.analysis.contextual import ContextualTest, class_similarities, contextual_forgetting
from forgetlab.analysis.findings import MIN_FORGOTTEN_IMAGES, findings
from forgetlab.analysis.groups import duplicates, rank_groups
from forgetlab.analysis.labels import class_labels, file_keys, run_labels
from forgetlab.analysis.metrics import first_accuracies, report_metrics
from forgetlab.analysis.perclass import ClassChanges, class_changes, most_forgotten
from forgetlab.analysis.tables import nearest_probes, paper2_table, rows_to_csv, run_rows, seed_groups
from forgetlab.errors import ForgetlabError, command
from forgetlab.reporting import figures
from forgetlab.reporting.explanation import where_forgetting_happens
from forgetlab.reporting.sections import (
    Figure,
    FigureSection,
    ReportInputs,
    TableSection,
    glossary,
    register_report_section,
    report_sections,
)
from forgetlab.results import atomic_write_bytes, atomic_write_text, read_single_predictions
from forgetlab.runtime import progress

MAX_HEATMAPS = 12


@dataclass
class ContextualRow:
    run: RunResult
    task: str
    domain: str
    test: ContextualTest


def _save(figure, key: str, caption: str, folder: Path) -> Figure:
    import matplotlib.pyplot as plt

    buffers = {}
    for extension in ("png", "svg"):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=extension, dpi=110)
        buffers[extension] = buffer.getvalue()
        atomic_write_bytes(folder / f"{key}.{extension}", buffers[extension])
    plt.close(figure)
    return Figure(key, caption, buffers["png"])


AFTER_MODES = {
    "sequence": "each task's upstream predictions are compared with those of the model right before it in the sequence",
    "single": "each task's upstream predictions are those of the pretrained backbone plus only that task's adapter, "
    "compared with the pretrained model's (paper 1's figures 3-5)",
}
SIMILARITY_MODES = {
    "synset": "Wu-Palmer similarity of each class's WordNet synset to the task's domain concept",
    "tokens": "paper 1's token matching: every word of every class name against every sense of the domain word "
    "(best Wu-Palmer match per word, averaged)",
}


def mode_line(after: str, similarity: str) -> str:
    """What produced the contextual-forgetting numbers, for the report's headings and captions."""
    return f"--after {after}: {AFTER_MODES[after]}; --similarity {similarity}: {SIMILARITY_MODES[similarity]}"


# The report's own terms, by glossary position (every metric's entry comes from the metric registry,
# at positions 10-80): each registered with the section that shows it.
FWT_REFERENCE_TERM = (
    41,
    "FWT reference",
    "the linear-probe run FWT vs linear was computed against; 'none: ambiguous "
    "between A, B' when two probes match (neither is used)",
)
CHANCE_TERM = (
    50,
    "chance",
    "the accuracy of uniform guessing on a task, 100 / its number of classes, in percent; a task "
    "learned to within 5 points of it was not learned",
)
DOWNSTREAM_TERM = (
    90,
    "downstream (mean of tasks)",
    "methods table: mean final accuracy over the downstream tasks; mean: the average of downstream and upstream",
)
CONTEXTUAL_TERMS = (
    (
        100,
        "mean sim. forgotten / all, difference",
        "mean similarity to the task's domain of the forgotten upstream test images "
        "(right before the task, wrong after) and of all of them; difference = "
        "forgotten minus all, positive means forgetting is closer to the task's domain",
    ),
    (
        110,
        "p (permutation)",
        "one-sided: how often a random set of as many images, drawn from those right before the task, is at "
        "least as similar; only with at least 20 forgotten images",
    ),
)
OTHER_ACCURACIES = ["chance", "downstream"]  # accuracies of the report that are no metric of a run


def units_note() -> str:
    """The note under the glossary: which of the report's numbers are percent and which percentage
    points, each metric by its name in prose (:attr:`forgetlab.analysis.metrics.Metric.prose`)."""
    metrics = report_metrics()
    percent = [m.prose or m.header for m in metrics if m.unit == "pct"] + OTHER_ACCURACIES
    points = [m.prose or m.header for m in metrics if m.unit == "pp"]
    listed = ", ".join(points[:-1]) + f" and {points[-1]}" if len(points) > 1 else "".join(points)
    return (
        f"Units: accuracies ({', '.join(percent)}) are in percent; "
        f"{listed} are differences of accuracies in percentage "
        "points. The same numbers, with the same units, are in sweep.csv and forgetlab.load_sweep (columns ending _pct "
        "and _pp) and in 'forgetlab show'."
    )


def contextual_rows(
    runs: list[RunResult], permutations: int, after: str = "sequence", similarity: str = "synset"
) -> list[ContextualRow]:
    """The contextual-forgetting test after every finished phase of every run with WordNet metadata.

    ``after='sequence'`` compares the model before and after each phase of the sequence;
    ``after='single'`` (paper 1's figures 3-5) compares the pretrained model with the pretrained model
    plus only that phase's adapter (``forgetlab single-adapter`` writes those predictions).
    ``similarity`` is the class-to-domain similarity: the class ``synset`` or paper 1's ``tokens``."""
    rows = []
    similarities = {}  # (domain, class synsets) -> per-class similarity: runs of a sweep share them
    for run in progress(runs, desc="contextual forgetting", unit="run"):
        synsets = run.upstream.get("synsets")
        if not synsets:
            continue
        stored = run.predictions(0)
        labels, pretrained = stored["labels"], stored["predictions"]
        after_predictions = pretrained
        for index in range(1, run.completed + 1):
            if after == "single":
                before, after_predictions = pretrained, read_single_predictions(run.folder, index)["predictions"]
            else:
                before, after_predictions = after_predictions, run.predictions(index)["predictions"]
            domain = run.domain(index)
            if not domain:
                continue
            key = (domain, tuple(synsets), similarity)
            if key not in similarities:
                similarities[key] = class_similarities(
                    domain, synsets=synsets, mode=similarity, domain_word=run.domain_word(index)
                )
            test = contextual_forgetting(
                before, after_predictions, labels, similarities[key], permutations=permutations, seed=index
            )
            rows.append(ContextualRow(run, run.matrix.phases[index - 1], domain, test))
    return rows


def focus_runs(runs: list[RunResult]) -> list[RunResult]:
    """Per backbone, the run whose per-class forgetting is drawn: the highest LoRA rank (paper 1 used
    its largest), lowest seed; without LoRA runs, the one whose upstream accuracy fell most in its first task."""
    chosen = []
    for backbone in dict.fromkeys(run.backbone for run in runs):
        candidates = [r for r in runs if r.backbone == backbone and r.completed >= 1]
        ranked = [r for r in candidates if focus_rank(r.config["method"]) is not None]  # merged LoRA: its rank
        if ranked:
            chosen.append(max(ranked, key=lambda r: (focus_rank(r.config["method"]), -r.seed)))
        elif candidates:
            chosen.append(min(candidates, key=lambda r: r.matrix.as_array()[1, 0] - r.matrix.as_array()[0, 0]))
    return chosen


FIGURE_RUNS = {
    "highest-rank": "per backbone, the LoRA run of the highest rank (lowest seed), as paper 1 drew its largest rank; "
    "without LoRA runs, the run whose upstream accuracy fell most in its first task",
    "per-method": "per row of the methods table (backbone, method and setting), its lowest seed",
    "all": "every run",
}


def choose_figure_runs(
    runs: list[RunResult], names: RunNames, choice: str | list[str] | None
) -> tuple[list[RunResult], str]:
    """The runs whose per-run figures (forgotten classes, similarity, accuracy matrix) are drawn, and why:
    ``choice`` is a key of :data:`FIGURE_RUNS` or run labels (a list, or one string separated by commas).
    Raises :class:`~forgetlab.errors.ForgetlabError` for a label that is not among the runs."""
    if choice is None or choice == "highest-rank":
        return focus_runs(runs), FIGURE_RUNS["highest-rank"]
    if choice == "all":
        return list(runs), FIGURE_RUNS["all"]
    if choice == "per-method":
        return [members[0] for members in seed_groups(runs).values()], FIGURE_RUNS["per-method"]
    wanted = [part.strip() for part in (choice.split(",") if isinstance(choice, str) else choice) if part.strip()]
    by_label = {names.label[id(run)]: run for run in runs}
    by_label.update({run.name: run for run in runs if [r.name for r in runs].count(run.name) == 1})
    unknown = [label for label in wanted if label not in by_label]
    if unknown or not wanted:
        raise ForgetlabError(
            f"--figure-runs: no run labelled {', '.join(map(repr, unknown)) or 'at all'}; give "
            f"{', '.join(FIGURE_RUNS)} or run labels separated by commas: {_names(list(names.label.values()))}"
        )
    chosen = {id(by_label[label]): by_label[label] for label in wanted}
    return list(chosen.values()), "the runs chosen with --figure-runs"


def _drawn_note(drawn: list[RunResult], runs: list[RunResult], names: RunNames, why: str, figures_of: str) -> str:
    """Which runs a per-run figure section shows, why, and which it leaves out."""
    left_out = [names.label[id(run)] for run in runs if all(run is not other for other in drawn)]
    note = (
        f"{figures_of} drawn for {len(drawn)} of {len(runs)} runs "
        f"({_names([names.label[id(run)] for run in drawn]) or 'none'}): {why}."
    )
    if left_out:
        note += f" Not drawn: {_names(left_out)}. Choose with --figure-runs {'|'.join(FIGURE_RUNS)}|LABEL,LABEL..."
    return note


def _points(value) -> str:
    """A value already in percent or percentage points, to two decimals; empty where undefined."""
    return "" if value is None or value == "" or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def _names(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 3 else f"{names[0]} ... {names[-1]} ({len(names)})"


def _number(value: float, form: str) -> str:
    return "" if math.isnan(value) else form.format(value)


def _mean_std(cell) -> str:
    mean, std, seeds = cell
    if math.isnan(mean):
        return ""
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if seeds > 1 else f"{100 * mean:.2f}"


def forgotten_classes_rows(changes: ClassChanges, labels: list[str], upstream: dict, k: int = 20) -> list[list[str]]:
    """The rows behind the most-forgotten-classes figure: unique class label, id (synset or index),
    forgotten, right before, test images."""
    ids = upstream.get("synsets") or [str(c) for c in range(len(labels))]
    right_before = changes.forgotten + changes.retained
    return [
        [labels[c], str(ids[c]), str(count), str(int(right_before[c])), str(int(changes.total[c]))]
        for c, count in most_forgotten(changes, k)
    ]


FORGOTTEN_HEADER = ["class", "id", "forgotten", "right before", "test images"]


def _contextual_p(test: ContextualTest) -> str:
    """The p-value, or why there is none (fewer forgotten images than a test needs)."""
    if test.forgotten < MIN_FORGOTTEN_IMAGES:
        return f"no test (< {MIN_FORGOTTEN_IMAGES} forgotten)"
    return _number(test.p_value, "{:.2g}")


def _without_empty(header: list[str], rows: list[list[str]], column: str) -> tuple[list[str], list[list[str]]]:
    """The table without ``column`` when no row has a value there (e.g. no two settings to tell apart)."""
    index = header.index(column)
    if any(row[index] for row in rows):
        return header, rows
    return header[:index] + header[index + 1 :], [row[:index] + row[index + 1 :] for row in rows]


def _dropped_groups(groups) -> str:
    """The caption's note on groups with a single rank, which have no curve."""
    single = [
        f"{group.label} (rank {group.ranks[0]}, {len(group.runs)} run{'s' if len(group.runs) > 1 else ''})"
        for group in groups
        if len(group.ranks) < 2
    ]
    return f" Not drawn, one rank only: {'; '.join(single)}." if single else ""


# ------------------------------------------------------------------------------------ the tables
METHODS_HEADING = (
    "Methods (paper 2's table: final accuracies, mean ± std over seeds; rows of different settings are not comparable)"
)
METRICS_HEADING = "Forgetting metrics per run (accuracies in percent, differences in percentage points)"


@register_report_section("methods table", position=60, glossary=(DOWNSTREAM_TERM,))
def methods_table(inputs: ReportInputs) -> list[TableSection]:
    """Paper 2's table (:func:`~forgetlab.analysis.tables.paper2_table`): a row per backbone, setting and method."""
    header, rows = _without_empty(
        [
            "backbone",
            "setting",
            "method",
            "trainable params",
            "tasks",
            "seeds",
            "downstream (mean of tasks)",
            "upstream",
            "mean",
            "runs",
        ],
        [
            [
                r["backbone"],
                r["setting"],
                r["method"],
                f"{r['trainable_parameters']:,}" if r["trainable_parameters"] else "",
                f"{r['completed']}/{r['total']}",
                str(len(r["runs"])),
                _mean_std(r["downstream"]),
                _mean_std(r["upstream"]),
                _mean_std(r["mean"]),
                _names(r["runs"]),
            ]
            for r in inputs.paper2
        ],
        "setting",
    )
    return [TableSection(METHODS_HEADING, header, rows, [])]


@register_report_section("metrics per run", position=70, glossary=(FWT_REFERENCE_TERM,))
def metrics_table(inputs: ReportInputs) -> list[TableSection]:
    """A row per run: its identity, then every metric of the report (:func:`~forgetlab.analysis.metrics.report_metrics`,
    each under its header), then FWT's reference; notes say why a metric column is empty."""
    rows, metrics = run_rows(inputs.runs), report_metrics()
    header = ["run", "backbone", "method", "seed", "tasks", *(m.header for m in metrics), "FWT reference"]
    cells = [
        [
            r["run"],
            r["backbone"],
            r["method"],
            str(r["seed"]),
            f"{r['completed_tasks']}/{r['total_tasks']}",
            *(_points(r.get(m.column)) for m in metrics),
            r["forward_transfer_reference"],
        ]
        for r in rows
    ]
    return [TableSection(METRICS_HEADING, header, cells, _empty_metric_notes(rows, inputs.runs))]


@register_report_section("chance levels", position=80, glossary=(CHANCE_TERM,))
def chance_section(inputs: ReportInputs) -> list[TableSection]:
    """:func:`chance_table` of the runs."""
    return [
        TableSection("Chance level per task (percent: 100 / classes)", *chance_table(inputs.runs, inputs.names.label))
    ]


@register_report_section("contextual forgetting", position=90, glossary=CONTEXTUAL_TERMS)
def contextual_table(inputs: ReportInputs) -> list[TableSection]:
    """The contextual-forgetting test of every run after every phase (:func:`contextual_rows`), with its mode."""
    after, similarity, label = inputs.after, inputs.similarity, inputs.names.label
    rows = [
        [
            label[id(c.run)],
            c.task,
            c.domain,
            str(c.test.forgotten),
            _number(c.test.mean_forgotten, "{:.3f}"),
            _number(c.test.mean_all, "{:.3f}"),
            _number(c.test.difference, "{:+.3f}"),
            _contextual_p(c.test),
        ]
        for c in inputs.contextual
    ]
    return [
        TableSection(
            f"Contextual forgetting (--after {after}, --similarity {similarity})",
            [
                "run",
                "after task",
                "domain",
                "forgotten images",
                "mean sim. forgotten",
                "mean sim. all",
                "difference",
                "p (permutation)",
            ],
            rows,
            [f"Mode: {mode_line(after, similarity)}."] if inputs.contextual else [],
        )
    ]


def chance_table(runs: list[RunResult], label: dict[int, str]) -> tuple[list[str], list[list[str]], list[str]]:
    """Per task (and class count): its chance level and the runs whose accuracy right after first
    training it (upstream: the pretrained accuracy) is within :data:`NEAR_CHANCE_PP` points of chance
    or below: numbers of a task not learned, which measure no forgetting. Returns header, rows and notes."""
    levels: dict[tuple[str, float], list[str]] = {}
    for run in runs:
        chance, matrix = run.chance, run.matrix
        firsts = first_accuracies(matrix.as_array(), matrix.trained())
        firsts[0] = float(matrix.as_array()[0, 0])
        for column, accuracy in sorted(firsts.items()):
            name = matrix.columns[column]
            if name in chance and not math.isnan(accuracy):
                flagged = levels.setdefault((name, chance[name]), [])
                if 100 * (accuracy - chance[name]) < NEAR_CHANCE_PP:
                    flagged.append(f"{label[id(run)]} ({100 * accuracy:.2f})")
    rows = [
        [name, str(round(1 / level)), f"{100 * level:.2f}", _names(flagged) if flagged else ""]
        for (name, level), flagged in levels.items()
    ]
    notes = (
        [
            f"Runs at chance on a task (within {NEAR_CHANCE_PP:g} points "
            f"of it, or below, right after training it; upstream: "
            "the pretrained model) learned nothing measurable there: "
            "their forgetting and transfer on it are not results."
        ]
        if any(row[-1] for row in rows)
        else []
    )
    return (
        ["task", "classes", "chance", "runs at chance (accuracy right after training; upstream: pretrained)"],
        rows,
        notes,
    )


NEAR_CHANCE_PP = 5.0


def _empty_metric_notes(rows: list[dict], runs: list[RunResult]) -> list[str]:
    """Why a metric column is empty for some runs, naming the run that would fill it or the probes that
    came close and what differs in them."""
    notes = []
    ambiguous = [r for r in rows if r["forward_transfer_reference"].startswith("none:")]
    for row in ambiguous:
        notes.append(
            f"FWT vs linear is empty for {row['run']}: "
            f"{row['forward_transfer_reference'].removeprefix('none: ambiguous between ')} "
            "match it equally (same config but for the method, same seed); neither is used. Report one of them."
        )
    label = {id(run): row["run"] for run, row in zip(runs, rows)}
    missing = []
    for run, row in zip(runs, rows):
        if row["forward_transfer_reference"]:
            continue
        nearest = nearest_probes(run, runs)
        if nearest:
            other, differs = nearest[0]
            notes.append(
                f"FWT vs linear is empty for {row['run']}: the nearest linear probe of its backbone and seed, "
                f"{label[id(other)]}, differs in {differs}; it is not used."
            )
        else:
            missing.append(row)
    if missing:
        notes.append(
            f"FWT vs linear is empty for {_names([r['run'] for r in missing])}: "
            f"no linear-probe run (method.name=linear) "
            f"of the same backbone and seed is among the runs given; run one with all its other settings "
            f"and report both, e.g. for {missing[0]['run']}: {probe_command(missing[0])}"
        )
    single = [r["run"] for r in rows if _points(r["average_forgetting_pp"]) == "" and r["completed_tasks"] < 2]
    if single:
        notes.append(f"avg forgetting and BWT are empty for {_names(single)}: they need two tasks done.")
    return notes


def probe_command(row: dict) -> str:
    """The command of the linear probe a run's forward transfer needs (its backbone, tasks and seed),
    quoted to paste into a shell (:func:`forgetlab.errors.command`)."""
    tasks = ", ".join(row["config.data.tasks"])
    return command(
        "run", "method.name=linear", f"backbone.name={row['backbone']}", f"data.tasks=[{tasks}]", f"seed={row['seed']}"
    )


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)

    def cell(value) -> str:
        text = str(value)
        numeric = re.fullmatch(r"[+-]?[\d,.]*(e-?\d+)?( ± [\d.]+)?", text) is not None
        return f"<td>{html.escape(text)}</td>" if numeric else f"<td class='text'>{html.escape(text)}</td>"

    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured Markdown table: the ``header`` cells, then one line per row (cells as ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; } td.text, th { text-align: left; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figcaption { font-size: 0.8em; color: #555; max-width: 600px; }
img { max-width: 100%; }
ul.findings li { margin: 0.4em 0; line-height: 1.4; }
p.note { font-size: 0.85em; color: #555; max-width: 1000px; }
dl.glossary dt { font-weight: bold; margin-top: 0.4em; } dl.glossary dd { margin-left: 1.5em; font-size: 0.9em; }
"""
# Marks the page once every figure has decoded, so a headless browser can check the page.
_CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.from(document.querySelectorAll('figure img'));
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-figures-loaded', loaded + '/' + images.length);
});
"""


def write_report(
    paths: list[str | Path],
    out_dir: str | Path,
    *,
    permutations: int = 10_000,
    after: str = "sequence",
    similarity: str = "synset",
    figure_runs: str | list[str] | None = None,
    log=print,
) -> Path:
    """Write ``report.html``, ``report.md`` and ``figures/*.png|svg`` for the runs under ``paths``
    (``after`` and ``similarity``: see :func:`contextual_rows`; the report names them where they
    change a number; ``figure_runs``: which runs get per-run figures, see :func:`choose_figure_runs`).
    Raises :class:`~forgetlab.errors.ForgetlabError` for an unknown mode or figure run and
    :class:`~forgetlab.errors.DataError` for a folder without runs, before anything is written.

    The steps: collect the runs, run the contextual-forgetting tests, build every registered section in
    order (:mod:`forgetlab.reporting.sections`: the figures, then the tables), derive the findings, write
    the pages."""
    if after not in AFTER_MODES or similarity not in SIMILARITY_MODES:
        raise ForgetlabError(
            f"unknown report mode --after {after} --similarity {similarity}; use --after "
            f"{'|'.join(AFTER_MODES)} and --similarity {'|'.join(SIMILARITY_MODES)}"
        )
    runs = find_runs(paths)
    names = RunNames.of(runs)
    drawn = choose_figure_runs(runs, names, figure_runs)  # (runs, why); refuses a bad choice before writing
    contextual = contextual_rows(runs, permutations, after, similarity)  # before anything is written: it may refuse
    out_dir = Path(out_dir)
    figure_dir = out_dir / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)

    paper2 = paper2_table(runs)
    inputs = ReportInputs(runs, names, drawn, figure_runs, contextual, paper2, after, similarity, figure_dir)
    parts = [part for section in report_sections() for part in section.build(inputs)]  # figures and tables, in order
    unfinished = unfinished_cells(paths)
    page = ReportPage(
        title=f"forgetlab report: {len(runs)} run{'s' if len(runs) != 1 else ''}",
        sources=", ".join(map(str, paths)),
        mode=mode_line(after, similarity),
        parts=parts,
        findings=findings(runs, contextual, paper2, mode=f"--after {after}, --similarity {similarity}"),
        coverage=coverage_notes(runs, names, unfinished),
    )
    atomic_write_text(out_dir / "report.html", _html_page(page))
    atomic_write_text(out_dir / "report.md", _markdown_page(page))
    missing = (
        f"; {len(unfinished)} cell{'s' if len(unfinished) != 1 else ''} not done, listed in it" if unfinished else ""
    )
    log(
        f"report of {len(runs)} run{'s' if len(runs) != 1 else ''}{missing}: "
        f"{out_dir / 'report.html'} and {out_dir / 'report.md'}, figures in {figure_dir}"
    )
    return out_dir / "report.html"


def coverage_notes(runs: list[RunResult], names: RunNames, unfinished: list[tuple[str, str, str]]) -> list[str]:
    """What the report leaves out of its comparisons and why: copies of one run (same config and seed;
    none of them is pooled, paired or ranked) and every sweep cell that is not done, with its state and reason."""
    notes = [
        f"Same config and seed, so no comparison uses them (they are listed per run only): "
        f"{', '.join(names.label[id(run)] for run in members)}. Keep one of them in the folders reported."
        for members in duplicates(runs)
    ]
    for cell, state, detail in unfinished:
        notes.append(
            f"Cell {cell}: {state} ({detail})"
            + (": its finished tasks are reported, in rows of their own." if state == "partial" else ".")
        )
    return notes


# ------------------------------------------------------------------------------------ the figures
@dataclass
class RunNames:
    """Each run's unique label (figures, tables) and file key (figure and CSV names), by ``id(run)``."""

    label: dict[int, str]
    key: dict[int, str]

    @classmethod
    def of(cls, runs: list[RunResult]) -> RunNames:
        label = dict(zip(map(id, runs), run_labels(runs)))
        return cls(label, dict(zip(map(id, runs), file_keys(list(label.values())))))


@register_report_section("rank curves", position=10)
def rank_section(inputs: ReportInputs) -> list[FigureSection]:
    """Paper 1's figures 1-2 (accuracy against LoRA rank), or nothing when no group has two ranks."""
    groups, figure_dir = rank_groups(inputs.runs), inputs.figure_dir
    curves = figures.rank_curves(groups)
    if curves is None:
        return []
    return [
        FigureSection(
            "Accuracy against LoRA rank (paper 1, figures 1-2)",
            [
                _save(
                    curves,
                    "rank_curves",
                    "Final upstream accuracy (left) and first-task accuracy (right) against LoRA rank, "
                    "one curve per group of runs that differ only in rank and seed, labelled by what else differs; "
                    "bars: standard deviation over seeds." + _dropped_groups(groups),
                    figure_dir,
                )
            ],
            [],
        )
    ]


def _upstream_after_first_phase(run: RunResult, after: str) -> np.ndarray:
    """The upstream predictions after the run's first phase: the sequence's, or (``after='single'``) those
    of the pretrained backbone plus only that phase's adapter."""
    if after == "single":
        return read_single_predictions(run.folder, 1)["predictions"]
    return run.predictions(1)["predictions"]


def _first_phase_changes(run: RunResult, after: str) -> tuple[list[str], ClassChanges, str]:
    """The run's unique upstream class labels, each class's changes over its first phase and that phase's task."""
    classes = class_labels(run.upstream)  # unique: ImageNet's two cranes are two rows
    before = run.predictions(0)
    changes = class_changes(
        before["predictions"], _upstream_after_first_phase(run, after), before["labels"], len(classes)
    )
    return classes, changes, run.matrix.phases[0]


@register_report_section("forgotten classes", position=20)
def forgotten_classes_section(inputs: ReportInputs) -> list[FigureSection]:
    """Paper 1's figures 3-4 for every run of ``inputs.drawn`` (:func:`choose_figure_runs`: the runs and why):
    its most forgotten upstream classes after its first phase and the similarity of the forgotten images to
    the phase's domain; a note instead for a run that forgot nothing. The section's first note says which
    runs are drawn, why, and which are not. Their tables are :func:`forgotten_classes_tables`."""
    after, similarity, names, figure_dir = inputs.after, inputs.similarity, inputs.names, inputs.figure_dir
    mode = f"--after {after}, --similarity {similarity}"
    per_class, empty = [], []
    chosen, why = inputs.drawn
    for run in chosen:
        if run.completed < 1:
            empty.append(f"{names.label[id(run)]} has no finished task: nothing to draw.")
            continue
        label, key = names.label[id(run)], names.key[id(run)]
        classes, changes, task = _first_phase_changes(run, after)
        if changes.forgotten.sum() == 0:  # a figure of nothing, titled 'nan', misleads: say it instead
            right = int((changes.forgotten + changes.retained).sum())
            empty.append(
                f"{label} forgot no upstream test image after {task} (0 of the {right} right before; "
                f"{mode}): no forgotten-classes or similarity figure is drawn for it."
            )
            continue
        per_class.append(
            _save(
                figures.most_forgotten_figure(changes, classes, f"{label}: most forgotten after {task}"),
                f"forgotten_{key}",
                f"The 20 upstream classes with most test images forgotten by "
                f"{label} after {task} (right before, wrong after; --after {after}).",
                figure_dir,
            )
        )
        for row in inputs.contextual:
            if row.run is run and row.task == task:
                per_class.append(
                    _save(
                        figures.similarity_figure(
                            row.test,
                            row.domain,
                            f"{label} after {task} ({mode})",
                            min_forgotten=MIN_FORGOTTEN_IMAGES,
                            similarity=similarity,
                        ),
                        f"similarity_{key}",
                        f"Similarity to the task's domain of forgotten vs all "
                        f"upstream test images; one-sided permutation test of the forgotten images' mean. "
                        f"Mode: {mode_line(after, similarity)}.",
                        figure_dir,
                    )
                )
    if not (per_class or empty):
        return []
    note = _drawn_note(chosen, inputs.runs, names, why, "Forgotten classes and similarity are")
    return [
        FigureSection(f"Which upstream classes are forgotten (paper 1, figures 3-4; {mode})", per_class, [note, *empty])
    ]


@register_report_section("forgotten classes tables", position=100)
def forgotten_classes_tables(inputs: ReportInputs) -> list[TableSection]:
    """The rows behind each figure of :func:`forgotten_classes_section`, as a table and as
    ``figures/forgotten_<key>.csv``."""
    tables = []
    for run in inputs.drawn[0]:
        if run.completed < 1:
            continue
        classes, changes, task = _first_phase_changes(run, inputs.after)
        if changes.forgotten.sum() == 0:
            continue
        class_rows = forgotten_classes_rows(changes, classes, run.upstream)
        label, key = inputs.names.label[id(run)], inputs.names.key[id(run)]
        tables.append(
            TableSection(
                f"Most forgotten upstream classes: {label} after {task} (--after {inputs.after})",
                FORGOTTEN_HEADER,
                class_rows,
                [],
            )
        )
        atomic_write_text(
            inputs.figure_dir / f"forgotten_{key}.csv",
            rows_to_csv([dict(zip(FORGOTTEN_HEADER, r)) for r in class_rows]),
        )
    return tables


@register_report_section("accuracy matrices", position=30)
def heatmap_section(inputs: ReportInputs) -> list[FigureSection]:
    """:func:`_heatmap_section` of the runs chosen with ``--figure-runs``, by default of the first ones."""
    return [
        _heatmap_section(
            inputs.runs, None if inputs.figure_runs is None else inputs.drawn, inputs.names, inputs.figure_dir
        )
    ]


@register_report_section("explanations", position=40)
def explanation_section(inputs: ReportInputs) -> list[FigureSection]:
    """Where forgetting happens, for the runs with ``explain/``
    (:func:`~forgetlab.reporting.explanation.where_forgetting_happens`)."""
    return [
        FigureSection(
            heading, [_save(figure, key, caption, inputs.figure_dir) for figure, key, caption in explained], notes
        )
        for heading, explained, notes in where_forgetting_happens(inputs.runs, inputs.names.label, inputs.names.key)
    ]


@register_report_section("drift", position=50)
def drift_section(inputs: ReportInputs) -> list[FigureSection]:
    """:func:`_drift_section` of the runs."""
    return _drift_section(inputs.runs, inputs.names, inputs.figure_dir)


def _heatmap_section(
    runs: list[RunResult], drawn: tuple[list[RunResult], str] | None, names: RunNames, figure_dir: Path
) -> FigureSection:
    """The accuracy matrices of the ``drawn`` runs (:func:`choose_figure_runs`), by default of the first
    :data:`MAX_HEATMAPS` runs in the order given; a note says which and why when that is not every run."""
    chosen, why = drawn or (
        runs[:MAX_HEATMAPS],
        f"by default the first {MAX_HEATMAPS} runs in the order of the paths given and their folders' names",
    )
    heatmaps = [
        _save(
            figures.matrix_heatmap(run, names.label[id(run)]),
            f"matrix_{names.key[id(run)]}",
            f"Accuracy matrix of {names.label[id(run)]}.",
            figure_dir,
        )
        for run in chosen
    ]
    notes = [] if len(chosen) == len(runs) else [_drawn_note(chosen, runs, names, why, "Accuracy matrices are")]
    return FigureSection(f"Accuracy matrices ({len(heatmaps)} of {len(runs)} runs)", heatmaps, notes)


def _drift_section(runs: list[RunResult], names: RunNames, figure_dir: Path) -> list[FigureSection]:
    """Where forgetting happens in the features, for the first :data:`MAX_HEATMAPS` runs with
    ``drift.csv`` or several upstream evaluators: the drift heat map and the final features' CKA on the
    classes near to and far from each phase's domain (the outer quartiles of similarity), each evaluator per
    phase, and the head's drop split into lost (the probe's drop where the run scored with it, else the
    k-NN's) and misaligned (the rest), 95 % bootstrap intervals, overall and for the near and far classes."""
    from forgetlab.analysis.drift import drift_table

    from forgetlab.reporting.drift_figures import drift_heatmap

    items, notes = [], []
    for run in runs[:MAX_HEATMAPS]:
        label, key, path = names.label[id(run)], names.key[id(run)], run.folder.path
        drift = drift_table(path)
        if len(drift):
            items.append(
                _save(
                    drift_heatmap(drift, f"{label}: drift per unit"),
                    f"drift_{key}",
                    f"Linear CKA between the pretrained and "
                    f"the current features of {label} at every unit after every phase (1: unchanged).",
                    figure_dir,
                )
            )
            notes += _drift_group_notes(label, path)
        evaluators = str(run.config.get("eval", {}).get("upstream_evaluator", "head")).split(",")
        if len(evaluators) > 1:
            item, split_notes = _evaluators_part(label, key, path, evaluators, figure_dir)
            items.append(item)
            notes += split_notes
    return (
        [FigureSection("Where forgetting happens in the features: drift, lost and misaligned", items, notes)]
        if items
        else []
    )


def _group_phrase(group: str, domain: str) -> str:
    """``near to DOMAIN (top similarity quartile, ties included)``, or the same for ``far``."""
    where, quartile = ("near to", "top") if group == "near" else ("far from", "bottom")
    return f"{where} {domain} ({quartile} similarity quartile, ties included)"


def _drift_group_notes(label: str, path: Path) -> list[str]:
    """One note per phase and group of classes: the final features' CKA on that group's probe images, or
    why there is none (``drift_groups.csv``)."""
    from forgetlab.analysis.drift import drift_groups_table

    table = drift_groups_table(path)
    rows = table[table["unit"] == "features"]
    return [
        f"{label} after phase {r.phase}, the {r.classes} classes {_group_phrase(r.group, r.domain)} "
        f"({r.images} probe images): final features' CKA "
        + (f"{r.cka:.3f}." if not r.missing else f"missing ({r.missing}).")
        for r in rows.itertuples()
    ]


def _evaluators_part(label: str, key: str, path: Path, evaluators: list[str], figure_dir: Path):
    """The evaluators figure of one run and the notes of its lost/misaligned split, overall and by group."""
    from forgetlab.analysis.drift import (
        lost_misaligned_by_group_table,
        lost_misaligned_table,
        upstream_evaluators_table,
    )
    from forgetlab.reporting.drift_figures import evaluators_figure

    split = lost_misaligned_table(path)
    by = {"probe": "the linear probe's drop", "knn": "the k-NN's drop"}
    measure = by[split["lost_by"].iloc[0]] if len(split) else "the probe's or the k-NN's drop"
    item = _save(
        evaluators_figure(upstream_evaluators_table(path, evaluators), split, f"{label}: upstream evaluators"),
        f"evaluators_{key}",
        f"Upstream accuracy of each evaluator of {label} per phase; the head's drop "
        f"split into lost ({measure}) and misaligned (the rest), 95 % paired bootstrap intervals.",
        figure_dir,
    )
    notes = [
        f"{label} after phase {r.phase}: head drop {r.head_drop_pp:.1f} points = lost {r.lost_pp:.1f} "
        f"[{r.lost_ci_pp[0]:.1f}, {r.lost_ci_pp[1]:.1f}] + misaligned {r.misaligned_pp:.1f} "
        f"[{r.misaligned_ci_pp[0]:.1f}, {r.misaligned_ci_pp[1]:.1f}] (lost: {by[r.lost_by]})."
        for r in split.itertuples()
    ]
    notes += [
        (
            f"{label} after phase {r.phase}, the {r.classes} classes {_group_phrase(r.group, r.domain)} "
            f"({r.images} images): head drop {r.head_drop_pp:.1f} = lost {r.lost_pp:.1f} "
            f"[{r.lost_ci_pp[0]:.1f}, {r.lost_ci_pp[1]:.1f}] + misaligned "
            f"{r.misaligned_pp:.1f} [{r.misaligned_ci_pp[0]:.1f}, {r.misaligned_ci_pp[1]:.1f}] "
            f"(lost: {by[r.lost_by]})."
        )
        for r in lost_misaligned_by_group_table(path).itertuples()
    ]
    return item, notes


@register_report_section("where across runs", position=55)
def where_across_section(inputs: ReportInputs) -> list[FigureSection]:
    """Where forgetting happens across runs, per group of merged-LoRA runs that differ only in rank and
    seed (:mod:`forgetlab.reporting.where_figures`): the last phase's intruder dimensions and relative norm
    against the rank, and the drift per unit at the last phase, one curve per rank. Nothing without a
    group of two ranks or more that was explained or scored drift."""
    from forgetlab.analysis.where import drift_table_across, settings
    from forgetlab.reporting.where_figures import drift_rank_figure, rank_points, rank_spectra_figure

    items, notes = [], []
    groups = rank_groups(inputs.runs)
    spectra = [(group.label, rank_points(group)) for group in groups]
    spectra = [(label, points) for label, points in spectra if len({point[0] for point in points}) > 1]
    if spectra:
        items.append(
            _save(
                rank_spectra_figure(spectra),
                "where_rank_spectra",
                "Intruder dimensions (sum over adapted matrices) and mean ||dW||_F / ||W0||_F of the cumulative "
                "update after the last phase, against the LoRA rank; mean and standard deviation over seeds.",
                inputs.figure_dir,
            )
        )
        notes += [f"{label}: {len(points)} explained runs." for label, points in spectra]
    for group in groups:
        drift = drift_table_across(group.runs)
        if drift.empty:
            continue
        ranks = {label: int(members[0].config["method"]["rank"]) for label, members in settings(group.runs)}
        curves = [
            (ranks[label], list(rows["unit"]), rows["cka"].to_numpy(float), int(rows["runs"].iloc[0]))
            for label, rows in drift.groupby("setting", sort=False)
        ]
        if len(curves) < 2:
            continue
        curves.sort(key=lambda curve: curve[0])
        items.append(
            _save(
                drift_rank_figure(group.label, curves),
                f"where_drift_{file_keys([group.label])[0]}",
                f"{group.label}: linear CKA between the pretrained and the final features at every unit after "
                "the last phase, one curve per LoRA rank (mean over seeds; n runs in the legend).",
                inputs.figure_dir,
            )
        )
    return [FigureSection("Where forgetting happens, across runs", items, notes)] if items else []


@register_report_section("where across runs tables", position=105)
def where_across_tables(inputs: ReportInputs) -> list[TableSection]:
    """Across explained runs (:mod:`forgetlab.analysis.where`; finished runs, each once): the upstream drop
    against the last phase's intruder count and relative norm (Spearman, permutation p), per backbone and
    method family, with three runs or more; the units whose update costs points, per backbone and method
    family, in rows of two runs or more."""
    from forgetlab.analysis.findings import MIN_RUNS_FOR_TEST
    from forgetlab.analysis.where import predictors_table, unit_loss_table

    parts = []
    predictors = predictors_table(inputs.runs)
    predictors = predictors[predictors["runs"] >= 3]
    if len(predictors):
        rows = [
            [r.backbone, r.family, r.predictor, str(r.runs), _points(r.spearman), _number(r.p, "{:.3g}")]
            for r in predictors.itertuples()
        ]
        notes = [
            "Upstream drop: the pretrained row's upstream accuracy minus the last row's (points). Spearman's rho "
            "across the runs of one backbone and method family; p: two-sided permutation test. A direction is "
            "a finding only where p < 0.05. rho is left blank with fewer than 3 runs or a predictor equal in "
            f"every run, p with fewer than {MIN_RUNS_FOR_TEST} runs. Only finished runs count, each once, "
            "explained to their last phase; runs trained otherwise are a family of their own (in parentheses)."
        ]
        parts.append(
            TableSection(
                "Does the update predict the upstream drop? (across runs)",
                ["backbone", "method family", "predictor (last phase)", "runs", "Spearman rho", "p"],
                rows,
                notes,
            )
        )
    units = unit_loss_table(inputs.runs, by="family")
    units = units[units["runs"] >= 2]
    if len(units):
        rows = [
            [
                r.setting,
                r.unit,
                str(r.runs),
                _points(r.recovered_pp),
                _points(r.recovered_sd_pp),
                f"{r.costs_runs}/{r.runs}",
                _points(r.damage_pp),
            ]
            for r in units.itertuples()
        ]
        parts.append(
            TableSection(
                "Which units carry the upstream loss (last phase, across runs)",
                [
                    "backbone and method",
                    "unit",
                    "runs",
                    "recovered (points)",
                    "sd",
                    "interval above 0",
                    "alone (points)",
                ],
                rows,
                [
                    "recovered: upstream points that reverting the unit's update recovers (leave-one-out), mean "
                    "over the runs of the method on the backbone (every rank and variant; "
                    "forgetlab.analysis.where.unit_loss_table gives them per setting); "
                    "interval above 0: runs whose paired 95 % interval lies above 0 (the update costs points); "
                    "alone: points the update alone costs the pretrained model (leave-one-in)."
                ],
            )
        )
    return parts


# ------------------------------------------------------------------------------------ the pages
@dataclass
class ReportPage:
    """What both pages show, in order: the title, the sources and the contextual-forgetting mode, the
    findings, the registered sections' parts (figure sections and tables, in their order), the glossary."""

    title: str
    sources: str  # the paths given, comma-separated
    mode: str  # mode_line(after, similarity)
    findings: list[str]
    parts: list[FigureSection | TableSection]
    coverage: list[str] = dataclasses.field(default_factory=list)  # runs and cells left out of the comparisons, and why


def _html_page(page: ReportPage) -> str:
    """The self-contained ``report.html``: figures embedded as PNG data URIs."""
    body = [
        f"<h1>{html.escape(page.title)}</h1>",
        f"<p>From: {html.escape(page.sources)}</p>",
        f"<p>Contextual forgetting: {html.escape(page.mode)}.</p>",
    ]
    if page.coverage:
        body += [
            "<h2>Left out of the comparisons</h2>",
            "<ul>",
            *[f"<li>{html.escape(note)}</li>" for note in page.coverage],
            "</ul>",
        ]
    if page.findings:  # the first screen: what the runs show, then the figures, then the tables
        body += [
            "<h2>Findings</h2>",
            "<ul class='findings'>",
            *[f"<li>{html.escape(s)}</li>" for s in page.findings],
            "</ul>",
        ]
    for part in page.parts:
        body.append(f"<h2>{html.escape(part.heading)}</h2>")
        if isinstance(part, TableSection):
            body += [
                _html_table(part.header, part.rows),
                *[f"<p class='note'>{html.escape(n)}</p>" for n in part.notes],
            ]
            continue
        body += [f"<p class='note'>{html.escape(note)}</p>" for note in part.notes]
        for item in part.figures:
            data = base64.b64encode(item.png).decode()
            body.append(
                f'<figure><img alt="{html.escape(item.key)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(item.caption)}</figcaption></figure>"
            )
    body += [
        "<h2>Glossary</h2>",
        "<dl class='glossary'>",
        *[f"<dt>{html.escape(term)}</dt><dd>{html.escape(text)}</dd>" for term, text in glossary()],
        "</dl>",
        f"<p class='note'>{html.escape(units_note())}</p>",
    ]
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(page.title)}</title>"
        f"<style>{_STYLE}</style><script>{_CHECK_SCRIPT}</script></head><body>{''.join(body)}</body></html>"
    )


def _markdown_page(page: ReportPage) -> str:
    """``report.md``: the same content, figures linked as ``figures/<key>.png``."""
    markdown = [f"# {page.title}", "", f"From: {page.sources}", "", f"Contextual forgetting: {page.mode}.", ""]
    if page.coverage:
        markdown += ["## Left out of the comparisons", "", *[f"- {note}" for note in page.coverage], ""]
    if page.findings:
        markdown += ["## Findings", "", *[f"- {s}" for s in page.findings], ""]
    for part in page.parts:
        if isinstance(part, TableSection):
            markdown += [
                f"## {part.heading}",
                "",
                markdown_table(part.header, part.rows),
                "",
                *[line for note in part.notes for line in (note, "")],
            ]
            continue
        markdown += [f"## {part.heading}", ""]
        for note in part.notes:
            markdown += [note, ""]
        for item in part.figures:
            markdown += [f"![{item.caption}](figures/{item.key}.png)", ""]
    markdown += ["## Glossary", "", *[f"- **{term}**: {text}." for term, text in glossary()], "", units_note(), ""]
    return "\n".join(markdown)
