"""The report's sections as a registered, ordered list: a section is a function of what the report has
collected (:class:`ReportInputs`) that returns its parts, figure sections and tables, and the page shows
every registered section's parts by ``position``, lowest first, then the glossary (every metric's entry
and every section's own terms, by position).

The built-in sections register themselves in :mod:`forgetlab.reporting.page` (figures at positions
10-50, tables at 60-100); a section of one's own registers with :func:`register_report_section`.

Imports only :mod:`forgetlab.analysis.metrics` (for the glossary): nothing here draws or writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

from forgetlab.plugins import load_plugins


@dataclass
class Figure:
    """A drawn figure: its file key (``figures/<key>.png``), its caption and its PNG bytes."""

    key: str
    caption: str
    png: bytes


class FigureSection(NamedTuple):
    """A heading, its notes and its figures."""

    heading: str
    figures: list[Figure]
    notes: list[str]


class TableSection(NamedTuple):
    """A heading, a table (``header``: column names, ``rows``: cells as strings) and notes under it."""

    heading: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str]


@dataclass
class ReportInputs:
    """What every section reads: ``runs`` (:class:`forgetlab.analysis.collect.RunResult`), ``names``
    (each run's label and file key by ``id``), ``drawn`` (the runs that get per-run figures, and why),
    ``figure_runs`` (the choice given, None for the default), ``contextual`` (the contextual-forgetting
    rows), ``paper2`` (:func:`forgetlab.analysis.tables.paper2_table`), ``after`` and ``similarity``
    (the contextual modes), ``figure_dir`` (where figures and their CSVs are written)."""

    runs: list
    names: object
    drawn: tuple[list, str]
    figure_runs: str | list[str] | None
    contextual: list
    paper2: list[dict]
    after: str
    similarity: str
    figure_dir: Path


@dataclass(frozen=True)
class ReportSection:
    """A registered section: ``build(inputs) -> [FigureSection | TableSection, ...]`` (empty: nothing to
    show), its ``position`` on the page and its ``glossary`` terms, each ``(position, term, definition)``."""

    name: str
    build: Callable[[ReportInputs], list]
    position: float
    glossary: tuple[tuple[float, str, str], ...] = ()


# name -> ReportSection
_SECTIONS: dict[str, ReportSection] = {}


def register_report_section(name: str, *, position: float = 1000.0, glossary=()) -> Callable:
    """Function decorator: enter ``build(inputs: ReportInputs) -> list[FigureSection | TableSection]`` as the
    report section ``name`` at ``position`` (built-ins: figures 10-50, tables 60-100; the default puts it
    last) with its ``glossary`` terms ``(position, term, definition)`` (metrics: 10-80, their own terms
    between), and return it unchanged. Raises ``ValueError`` for a name registered twice."""

    def register(build: Callable[[ReportInputs], list]) -> Callable[[ReportInputs], list]:
        if name in _SECTIONS:
            raise ValueError(f"report section '{name}' registered twice")
        _SECTIONS[name] = ReportSection(name, build, position, tuple(glossary))
        return build

    return register


def unregister_report_section(name: str) -> None:
    """Remove the report section ``name`` (a test's or a notebook's own); raises ``KeyError`` if there is none."""
    del _SECTIONS[name]


def report_sections() -> list[ReportSection]:
    """Every registered section by ``position`` (ties: registration order)."""
    load_plugins()
    return sorted(_SECTIONS.values(), key=lambda section: section.position)


def glossary() -> list[tuple[str, str]]:
    """``(term, definition)`` of every metric in the report (its header and glossary line) and every
    section's own terms, by position."""
    from forgetlab.analysis.metrics import report_metrics

    terms = [(metric.position, metric.header, metric.glossary) for metric in report_metrics()]
    terms += [term for section in _SECTIONS.values() for term in section.glossary]
    return [(term, text) for _, term, text in sorted(terms, key=lambda item: item[0])]
