"""Sweeps: a grid over any config keys, each cell an ordinary run folder under the sweep's folder.

A sweep file (YAML)::

    name: rank-sweep              # the sweep's folder, under out_dir
    out_dir: runs
    base: {data: {tasks: [fontfamily, digits]}}   # a run config (same keys as 'forgetlab run'), or
    base_config: my-run.yaml                      # a run config file (relative to the sweep file), or
    base_preset: paper1-vit                       # a preset ('forgetlab presets'); base keys go on top
    grid:                         # every combination of these values
      backbone.name: [offline_vit, offline_resnet]
      method.rank: [1, 4, 16]
      seed: [0, 1]

Every cell's config is resolved and validated before the first cell runs. A finished cell is skipped
(its run folder says so), an unfinished one resumes, so rerunning an interrupted sweep finishes it;
``jobs > 1`` runs cells in that many processes, sharing the CPU threads between them. The sweep's
table (``sweep.csv``: every cell's grid values and metrics) is rewritten after every cell.
"""

from __future__ import annotations

import copy
import itertools
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from forgetlab import config as config_module
from forgetlab.errors import ConfigError
from forgetlab.results import RunFolder, atomic_write_text

SWEEP_FILE = "sweep.yaml"
TABLE_FILE = "sweep.csv"


@dataclass
class Cell:
    name: str
    values: dict  # grid key -> value
    tree: dict  # the cell's run config tree, as given to a worker process
    config: config_module.RunConfig  # the same, resolved and validated


@dataclass
class Sweep:
    name: str
    folder: Path
    grid: dict
    base: dict
    cells: list[Cell]

    def definition(self) -> dict:
        return {"name": self.name, "grid": self.grid, "base": self.base}


def _slug(key: str, value) -> str:
    text = "+".join(map(str, value)) if isinstance(value, list) else str(value)
    text = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in text)
    last = key.split(".")[-1]
    return text if last == "name" else f"{last}{text}"


def _flat_assignments(tree: dict, prefix: str = "") -> list[str]:
    """``key=value`` overrides equivalent to a (nested) config tree."""
    assignments = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            assignments += _flat_assignments(value, f"{prefix}{key}.")
        else:
            assignments.append(f"{prefix}{key}={yaml.safe_dump(value, default_flow_style=True).strip()}")
    return assignments


def load_sweep(path: str | Path, overrides: list[str] = ()) -> Sweep:
    path = Path(path)
    data = config_module.load_yaml(path)
    unknown = sorted(set(data) - {"name", "out_dir", "base", "base_config", "base_preset", "grid"})
    if unknown:
        raise ConfigError(f"unknown sweep key '{unknown[0]}' in {path}; valid keys: name, out_dir, base, base_config, base_preset, grid")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{path}: 'grid' must map config keys to non-empty lists of values, e.g. method.rank: [1, 4]")
    base = dict(data.get("base") or {})
    if data.get("base_config") and data.get("base_preset"):
        raise ConfigError(f"{path}: give base_config or base_preset, not both")
    if data.get("base_config"):
        base = {**config_module.load_yaml(path.parent / data["base_config"]), **base}
    if data.get("base_preset"):
        from forgetlab.presets import preset_tree

        preset = preset_tree(str(data["base_preset"]))
        preset.pop("name", None)
        for assignment in _flat_assignments(base):
            config_module.apply_override(preset, assignment)
        base = preset
    for assignment in overrides:
        config_module.apply_override(base, assignment)
    for key in ("name", "out_dir"):
        if key in grid or key in base:
            raise ConfigError(f"'{key}' is set by the sweep itself; remove it from the grid and base")
    name = str(data.get("name") or path.stem)
    folder = Path(data.get("out_dir", "runs")) / name
    cells = []
    for combination in itertools.product(*grid.values()):
        values = dict(zip(grid, combination))
        cell_name = "-".join(_slug(key, value) for key, value in values.items())
        tree = copy.deepcopy(base)
        for key, value in values.items():
            config_module.apply_override(tree, f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}")
        tree["name"], tree["out_dir"] = cell_name, str(folder)
        try:  # every cell is valid before anything runs
            resolved = config_module.resolve(copy.deepcopy(tree))
        except ConfigError as error:
            raise ConfigError(f"sweep cell {cell_name}: {error}") from error
        cells.append(Cell(cell_name, values, tree, resolved))
    if len({cell.name for cell in cells}) != len(cells):
        raise ConfigError(f"{path}: two grid cells get the same folder name; make the grid values distinct")
    return Sweep(name=name, folder=folder, grid=grid, base=base, cells=cells)


def _run_cell(tree: dict, threads: int | None, quiet: bool) -> str:
    if threads:
        import torch

        torch.set_num_threads(threads)
    from forgetlab.run import run

    config = config_module.resolve(copy.deepcopy(tree))
    run(config, log=(lambda message: None) if quiet else (lambda message: print(f"[{config.name}] {message}", flush=True)))
    return config.name


def cell_done(sweep: Sweep, cell: Cell) -> bool:
    folder = RunFolder(sweep.folder / cell.name)
    return folder.completed_tasks() == len(cell.config.data.tasks)


def run_sweep(
    sweep: Sweep, *, jobs: int = 1, quiet: bool = False, log: Callable[[str], None] = print, on_cell_done: Callable[[Cell], None] | None = None
) -> dict[str, str]:
    """Run every unfinished cell; return ``cell name -> 'skipped' | 'ran'``."""
    from forgetlab.analysis.tables import write_sweep_table

    sweep.folder.mkdir(parents=True, exist_ok=True)
    stored = sweep.folder / SWEEP_FILE
    definition = sweep.definition()
    if stored.exists() and yaml.safe_load(stored.read_text()) != yaml.safe_load(yaml.safe_dump(definition)):
        raise ConfigError(f"{sweep.folder} holds a different sweep; give the sweep another name or delete that folder")
    atomic_write_text(stored, yaml.safe_dump(definition, sort_keys=False))
    status = {cell.name: "skipped" for cell in sweep.cells if cell_done(sweep, cell)}
    todo = [cell for cell in sweep.cells if cell.name not in status]
    log(f"sweep {sweep.name}: {len(sweep.cells)} cells, {len(status)} done, {len(todo)} to run, {jobs} at a time")

    def finished(cell: Cell) -> None:
        status[cell.name] = "ran"
        write_sweep_table(sweep.folder)
        log(f"sweep {sweep.name}: cell {cell.name} done ({sum(v == 'ran' for v in status.values())}/{len(todo)})")
        if on_cell_done:
            on_cell_done(cell)

    if jobs <= 1:
        for cell in todo:
            _run_cell(cell.tree, None, quiet=quiet)
            finished(cell)
    else:
        import multiprocessing

        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_run_cell, cell.tree, threads, quiet): cell for cell in todo}
            for future in as_completed(futures):
                future.result()
                finished(futures[future])
    write_sweep_table(sweep.folder)
    return status
