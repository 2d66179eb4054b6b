"""The state of a sweep's cells, read from its folder without running anything: ``done``, ``running``
(another process holds the cell's lock), ``failed`` (with the one-line error ``status.json`` recorded),
``partial``, ``not started`` or ``broken`` (an unreadable commit record), each with its detail.

Used by ``forgetlab sweep --status`` and ``forgetlab show SWEEP`` (through ``sweep``) and by the report,
which lists every cell that is not done with its reason. Imports ``config`` and ``results`` only.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from forgetlab import config as config_module
from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.results import RunFolder, lock_holder, read_json

STATUS_FILE = "status.json"  # cell -> {"status": "ran" | "failed" | "running", "message": ..., "attempts": ...}


def folder_status(folder: str | Path) -> list[tuple[str, str, str]]:
    """``(cell, state, detail)`` of every run folder in a sweep's folder, without its sweep file: the
    folders that hold a config, and the cells ``status.json`` records."""
    folder = Path(folder)
    records = read_json(folder / STATUS_FILE) if (folder / STATUS_FILE).exists() else {}
    names = sorted({p.name for p in folder.iterdir() if (p / "config.yaml").exists()} | set(records))
    rows = []
    for name in names:
        run = RunFolder(folder / name)
        try:
            total = len(config_module.parse_yaml(run.config.read_text())["data"]["tasks"])
        except (OSError, KeyError, TypeError, yaml.YAMLError, ConfigError):
            total = (run.state() or {}).get("total_tasks") if run.progress.exists() else None
        rows.append((name, *cell_state(run, total, records.get(name, {}))))
    return rows


def cell_state(folder: RunFolder, total: int | None, record: dict) -> tuple[str, str]:
    """``(state, detail)`` of one cell: its folder, its number of tasks (None: unknown) and its
    ``status.json`` record (``{}`` when none)."""
    try:
        completed = folder.completed_tasks()
    except ForgetlabError as error:
        return "broken", str(error)
    done = f"task {max(completed, 0)}/{total if total is not None else '?'}"
    holder = lock_holder(folder) if folder.path.exists() else None
    if completed == total:
        return "done", done
    if holder:
        return "running", f"{done}, {holder}"
    if record.get("status") == "failed":
        return "failed", f"{done}: {record.get('message', '')}"
    return ("partial" if completed >= 0 else "not started"), done


def unfinished_cells(paths: list[str | Path]) -> list[tuple[str, str, str]]:
    """``(cell folder, state, detail)`` of every cell that is not done in the sweep folders among
    ``paths`` and the folders below them (a folder with ``status.json`` or run folders beside one)."""
    rows = []
    for path in map(Path, paths):
        if not path.is_dir():
            continue
        sweeps = sorted(
            {p.parent for p in path.rglob(STATUS_FILE)} | ({path} if (path / STATUS_FILE).exists() else set())
        )
        for sweep in sweeps:
            rows += [
                (str(sweep / name), state, detail) for name, state, detail in folder_status(sweep) if state != "done"
            ]
    return list(dict.fromkeys(rows))
