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
(its run folder says so), an unfinished one resumes, so rerunning an interrupted sweep finishes it.
Where the cells run is a backend (:mod:`forgetlab.sweep_backends`): this process (``--jobs 1``),
local worker processes (``--jobs N``; ``--jobs auto`` runs one cell per visible GPU, each process
seeing only its GPU, or ``--gpus-per-cell F`` for several or a share), or a Ray cluster
(``--backend ray``). A failing cell is recorded in ``status.json`` with its one-line error and the
others go on; a worker that dies is retried and resumes. The sweep's table (``sweep.csv``: every
cell's grid values and metrics) is rewritten after every cell.
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from forgetlab import config as config_module
from forgetlab.errors import ConfigError, ForgetlabError
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
    if "/" in name or "\\" in name or name in ("", ".", ".."):
        raise ConfigError(f"{path}: the sweep name '{name}' must be a plain folder name (it becomes out_dir/NAME)")
    folder = Path(data.get("out_dir", "runs")) / name
    cells = []
    for combination in itertools.product(*grid.values()):
        values = dict(zip(grid, combination))
        cell_name = "-".join(_slug(key, value) for key, value in values.items())
        tree = copy.deepcopy(base)
        for key, value in values.items():
            config_module.apply_override(tree, f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}")
        tree["name"], tree["out_dir"] = cell_name, str(folder)
        track = tree.setdefault("track", {})
        if isinstance(track, dict) and track.get("wandb_group") is None:
            track["wandb_group"] = name  # the sweep's W&B runs share a group
        try:  # every cell is valid before anything runs
            resolved = config_module.resolve(copy.deepcopy(tree))
        except ConfigError as error:
            raise ConfigError(f"sweep cell {cell_name}: {error}") from error
        cells.append(Cell(cell_name, values, tree, resolved))
    if len({cell.name for cell in cells}) != len(cells):
        raise ConfigError(f"{path}: two grid cells get the same folder name; make the grid values distinct")
    return Sweep(name=name, folder=folder, grid=grid, base=base, cells=cells)


def cell_done(sweep: Sweep, cell: Cell) -> bool:
    try:
        return RunFolder(sweep.folder / cell.name).completed_tasks() == len(cell.config.data.tasks)
    except ForgetlabError:  # an unreadable commit record: not done (the run itself will say what is wrong)
        return False


def make_backend(sweep: Sweep, jobs: int | str = 1, backend: str = "local", address: str | None = None,
                 gpus_per_cell: float | None = None, retries: int = 2):  # fmt: skip
    """The backend that runs ``sweep``'s cells (see :mod:`forgetlab.sweep_backends`)."""
    from forgetlab import sweep_backends as backends

    if backend == "ray":
        return backends.RayBackend(sweep.folder, address=address, gpus_per_cell=gpus_per_cell, retries=retries)
    if backend != "local":
        raise ConfigError(f"unknown sweep backend '{backend}'; use local or ray")
    if address:
        raise ConfigError("--address is for --backend ray")
    gpus = backends.visible_gpus()
    if jobs == "auto":
        slots = backends.slot_devices(gpus, gpus_per_cell or 1) if gpus else [None]
    else:
        jobs = int(jobs)
        if jobs < 1:
            raise ConfigError("--jobs must be at least 1 (or auto)")
        if gpus:  # N jobs on G GPUs: slot i uses GPU i mod G, so each process sees only its GPU
            devices = backends.slot_devices(gpus, gpus_per_cell or 1)
            slots = [devices[i % len(devices)] for i in range(jobs)]
        else:
            slots = [None] * jobs
    if len(slots) == 1 and slots[0] is None:
        return backends.InProcessBackend()
    return backends.ProcessBackend(slots, sweep.folder, retries=retries)


def run_sweep(sweep: Sweep, *, jobs: int | str = 1, quiet: bool = False, log: Callable[[str], None] = print,
              on_cell_done: Callable[[Cell], None] | None = None, backend: str = "local", address: str | None = None,
              gpus_per_cell: float | None = None, retries: int = 2, wait: float = 2.0) -> dict[str, str]:  # fmt: skip
    """Run every unfinished cell; return ``cell name -> 'skipped' | 'ran' | 'failed'``.

    A failing cell is recorded (``status.json``, with its one-line error) and the others go on; a
    cell another process is running is waited for, then skipped if that finished it."""
    from forgetlab.analysis.tables import write_sweep_table
    from forgetlab.results import lock_holder, write_json
    from forgetlab.runtime import progress

    runner = make_backend(sweep, jobs, backend, address, gpus_per_cell, retries)  # refuses bad options before writing
    sweep.folder.mkdir(parents=True, exist_ok=True)
    stored = sweep.folder / SWEEP_FILE
    definition = sweep.definition()
    if stored.exists() and config_module.parse_yaml(stored.read_text()) != config_module.parse_yaml(yaml.safe_dump(definition)):
        raise ConfigError(f"{sweep.folder} holds a different sweep; give the sweep another name or delete that folder")
    atomic_write_text(stored, yaml.safe_dump(definition, sort_keys=False))
    status = {cell.name: "skipped" for cell in sweep.cells if cell_done(sweep, cell)}
    records = read_status(sweep)
    todo = [cell for cell in sweep.cells if cell.name not in status]
    busy = [cell for cell in todo if lock_holder(RunFolder(sweep.folder / cell.name))]
    todo = [cell for cell in todo if cell not in busy]
    log(f"sweep {sweep.name}: {len(sweep.cells)} cells, {len(status)} done, {len(todo) + len(busy)} to run on {runner.name}")
    bar = progress(total=len(todo) + len(busy), desc=f"sweep {sweep.name}", unit="cell")
    running: set[str] = set()

    def started(cell: Cell) -> None:
        running.add(cell.name)
        records[cell.name] = {"status": "running"}
        bar.set_postfix(running=len(running), failed=sum(v == "failed" for v in status.values()), refresh=True)

    def finished(outcome) -> None:
        running.discard(outcome.cell)
        status[outcome.cell] = outcome.status
        records[outcome.cell] = {"status": outcome.status, "message": outcome.message, "attempts": outcome.attempts}
        write_json(sweep.folder / STATUS_FILE, records)
        write_sweep_table(sweep.folder)
        bar.update(1)
        bar.set_postfix(running=len(running), failed=sum(v == "failed" for v in status.values()), refresh=True)
        if outcome.status == "failed":
            log(f"sweep {sweep.name}: cell {outcome.cell} FAILED: {outcome.message}")
        else:
            log(f"sweep {sweep.name}: cell {outcome.cell} done ({sum(v == 'ran' for v in status.values())}/{len(todo) + len(busy)})")
        if on_cell_done:
            on_cell_done(next(cell for cell in sweep.cells if cell.name == outcome.cell))

    try:
        runner.run(todo, quiet, started, finished)
        while busy:  # cells another process holds: wait for it, then run what it left unfinished
            for cell in list(busy):
                holder = lock_holder(RunFolder(sweep.folder / cell.name))
                if holder:
                    log(f"sweep {sweep.name}: cell {cell.name} is being run by {holder}; waiting")
                    continue
                busy.remove(cell)
                if cell_done(sweep, cell):
                    status[cell.name] = "skipped"
                    bar.update(1)
                else:
                    runner.run([cell], quiet, started, finished)
            if busy:
                time.sleep(wait)
    finally:
        bar.close()
    write_sweep_table(sweep.folder)
    return status


STATUS_FILE = "status.json"


def read_status(sweep: Sweep) -> dict:
    from forgetlab.results import read_json

    path = sweep.folder / STATUS_FILE
    return read_json(path) if path.exists() else {}


def sweep_status(sweep: Sweep) -> list[tuple[str, str, str]]:
    """``(cell, state, detail)`` of every cell, read from the folder without running anything."""
    from forgetlab.results import lock_holder

    records = read_status(sweep) if sweep.folder.exists() else {}
    rows = []
    for cell in sweep.cells:
        folder = RunFolder(sweep.folder / cell.name)
        total = len(cell.config.data.tasks)
        try:
            completed = folder.completed_tasks()
        except ForgetlabError as error:
            rows.append((cell.name, "broken", str(error)))
            continue
        done = f"task {max(completed, 0)}/{total}"
        holder = lock_holder(folder) if folder.path.exists() else None
        if completed == total:
            rows.append((cell.name, "done", done))
        elif holder:
            rows.append((cell.name, "running", f"{done}, {holder}"))
        elif records.get(cell.name, {}).get("status") == "failed":
            rows.append((cell.name, "failed", f"{done}: {records[cell.name].get('message', '')}"))
        elif completed >= 0:
            rows.append((cell.name, "partial", done))
        else:
            rows.append((cell.name, "not started", done))
    return rows
