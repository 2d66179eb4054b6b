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

A grid value may be a whole section (merged onto the base's; a ``method`` that names another method
starts from that method's defaults) or a named variant (``grid.variant``: any keys, or a ``preset``
that replaces the base, whose keys then go on top)::

    grid:
      method: [{name: lora, rank: 4}, {name: linear}, {label: kept, name: lora, policy: keep}]
      variant: [{label: full, preset: paper2-full}, {label: short, train.epochs: 2}]

Cells are named by their values, short (``lora-r4``, ``linear``, ``rank4-seed0``), or by a ``label``;
a folder written before sections had short names keeps its old cell names (``method__name____lora...``).
Every cell's config is resolved and checked (the method's options and its limits on the backbone
included) before the first cell runs, and every bad cell is named in one error. A finished cell is
skipped (its run folder says so), an unfinished one resumes, so rerunning an interrupted sweep finishes
it; a cell another process is running is waited for.
Where the cells run is a backend (:mod:`forgetlab.sweep_backends`): this process (``--jobs 1``),
local worker processes (``--jobs N``; ``--jobs auto`` runs one cell per visible GPU, each process
seeing only its GPU, or ``--gpus-per-cell F`` for several or a share), or a Ray cluster
(``--backend ray``). A failing cell is recorded in ``status.json`` with its one-line error and the
others go on; a worker that dies is retried and resumes. The sweep's table (``sweep.csv``: every
cell's grid values and metrics) is rewritten after every cell.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from forgetlab import config as config_module
from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.analysis.cells import STATUS_FILE, cell_state, folder_status  # noqa: F401 (folder_status: the CLI's)
from forgetlab.results import RunFolder, atomic_write_text

SWEEP_FILE = "sweep.yaml"


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


VARIANT = "variant"  # the grid key of named variants (it is no config key)
ABBREVIATIONS = config_module.ABBREVIATIONS  # in cell names: lora-r4, block_expansion-p2


_text = config_module.name_part


def _slug(key: str, value, flags: bool = True) -> str:
    """A plain grid value's part of a cell name: ``rank4``, ``seed0``, ``offline_vit`` (for ``*.name``);
    None, booleans and empty values by :func:`forgetlab.config.flag_token` (``no_split``,
    ``random_init``; ``flags=False``: as forgetlab named them before, ``splitNone``)."""
    text = _text(value)
    last = key.split(".")[-1]
    flag = config_module.flag_token(key, value) if flags and last != "name" else None
    return text if last == "name" else flag or f"{last}{text}"


def _mapping_slug(mapping: dict, flags: bool = True) -> str:
    """A section's or variant's part of a cell name: its ``name`` first, then each other value, short
    (``{name: lora, rank: 4}`` -> ``lora-r4``; ``{epochs: 2}`` -> ``epochs2``; strings as they are;
    ``{split: null}`` -> ``no_split``)."""
    flat = config_module.leaves(mapping)
    parts = [_text(flat.pop(key)) for key in [k for k in flat if k.split(".")[-1] == "name"]]
    for key, value in flat.items():
        last = key.split(".")[-1]
        flag = config_module.flag_token(key, value) if flags else None
        short = f"{ABBREVIATIONS.get(last, last)}{_text(value)}"
        parts.append(flag or (_text(value) if isinstance(value, str) else short))
    return "-".join(parts) or "base"


def _cell_part(key: str, value, flags: bool = True) -> str:
    if isinstance(value, dict):
        if value.get("label") is not None:
            return _text(value["label"])
        rest = {k: v for k, v in value.items() if k != "label"}
        if key == VARIANT and "preset" in rest and len(rest) == 1:
            return _text(rest["preset"])
        return _mapping_slug(rest, flags)
    return _slug(key, value, flags)


def _earlier_cell_names(values: dict) -> list[str]:
    """The folder names earlier forgetlabs gave a cell: before sections had short names
    (``method__name____lora____rank___4_``), and before None and booleans had words (``splitNone``)."""
    return [
        "-".join(
            f"{key.split('.')[-1]}{_text(value)}" if isinstance(value, dict) else _slug(key, value, flags=False)
            for key, value in values.items()
        ),
        "-".join(_cell_part(key, value, flags=False) for key, value in values.items()),
    ]


def _grid_layer(key: str, value, path: Path) -> config_module.Layer:
    """A grid value as a config layer: ``{key: value}`` (a section's ``label`` names the cell only)."""
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k != "label"}
    return config_module.Layer(f"grid.{key}", {key: value}, str(path))


def _variant_layers(
    variant: dict, start: config_module.Layer, path: Path
) -> tuple[config_module.Layer, config_module.Layer]:
    """A named variant: its ``preset`` (optional) takes the place of the sweep's starting layer (its
    ``base_preset`` or ``base_config``), and its other keys are a layer above the base."""
    variant = dict(variant)
    label = variant.pop("label", None)
    preset = variant.pop("preset", None)
    if preset is not None:
        from forgetlab.presets import preset_layer

        start = preset_layer(str(preset), run_name=False)
    name = f"grid.{VARIANT} '{label}'" if label is not None else f"grid.{VARIANT}"
    return start, config_module.Layer(name, variant, str(path))


def _check_grid(grid, path: Path) -> None:
    example = "e.g. method.rank: [1, 4], or whole sections: method: [{name: lora, rank: 4}, {name: linear}]"
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{path}: 'grid' must map config keys to non-empty lists of values, {example}")
    if VARIANT in grid and not all(isinstance(v, dict) for v in grid[VARIANT]):
        raise ConfigError(
            f"{path}: every item of grid.{VARIANT} must be a mapping, e.g. {{label: r4, preset: paper2-lora-r4}} "
            "or {label: lin, method: {name: linear}}"
        )
    for key, values in grid.items():
        if key != VARIANT and any(isinstance(v, dict) and "preset" in v for v in values):
            raise ConfigError(
                f"{path}: grid.{key} gives a preset; presets go in named "
                f"variants: grid.{VARIANT}: [{{label: ..., preset: ...}}]"
            )


def _mixed_method_hint(grid: dict) -> str:
    """For a grid that varies ``method.name`` and keys only some methods have: the whole-section form
    that says what it means, e.g. ``method: [{name: lora, rank: 1}, {name: lora, rank: 8}, {name: linear}]``."""
    from forgetlab.methods import method_class

    keys = [key for key in grid if key.startswith("method.") and key != "method.name"]
    sections = []
    for name in grid.get("method.name", []):
        try:
            fields = {f.name for f in dataclasses.fields(method_class(str(name)).Config)}
        except ConfigError:
            continue
        own = [key for key in keys if key.split(".", 1)[1] in fields]
        for combination in itertools.product(*(grid[key] for key in own)):
            section = {"name": name, **{key.split(".", 1)[1]: value for key, value in zip(own, combination)}}
            if section not in sections:
                sections.append(section)
    text = yaml.safe_dump(sections, default_flow_style=True, width=10**6).strip()
    return (
        f"; a grid over methods with different keys gives whole method sections instead of method.name and "
        f"{', '.join(keys)}: 'method: {text}' (README, Sweeps)"
    )


def _starting_layer(data: dict, path: Path) -> config_module.Layer:
    """The layer a sweep's cells start from: its ``base_preset`` or its ``base_config`` file (a run
    config whose ``name`` the cells replace with their own); none: forgetlab's defaults."""
    if data.get("base_config") and data.get("base_preset"):
        raise ConfigError(f"{path}: give base_config or base_preset, not both")
    if data.get("base_preset"):
        from forgetlab.presets import preset_layer

        return preset_layer(str(data["base_preset"]), run_name=False)
    if data.get("base_config"):
        layer = config_module.file_layer(path.parent / str(data["base_config"]), "base_config")
        if "out_dir" in layer.tree:
            raise ConfigError(
                f"'out_dir' in base_config {layer.file}: a sweep writes its cells under its own out_dir; "
                f"remove it from {layer.file} and set 'out_dir' at the top of {path}"
            )
        return config_module.Layer(layer.name, {k: v for k, v in layer.tree.items() if k != "name"}, layer.file)
    return config_module.Layer("defaults", {})


def _cell(name: str, values: dict, layers: list, folder: Path) -> Cell:
    """One cell: its layers merged, its folder and W&B group set, resolved and validated."""
    tree, origins = config_module.merge_layers(layers)
    tree["name"], tree["out_dir"] = name, str(folder)
    track = tree.setdefault("track", {})
    if isinstance(track, dict) and track.get("wandb_group") is None:
        track["wandb_group"] = folder.name  # the sweep's W&B runs share a group
    try:  # every cell is valid before anything runs
        resolved = config_module.resolve_layers(
            [*layers, config_module.Layer("sweep", {k: tree[k] for k in ("name", "out_dir", "track")})]
        )
    except ConfigError as error:
        raise ConfigError(f"sweep cell {name}: {error}") from error
    return Cell(name, values, tree, resolved)


def bad_cells_message(path: Path, problems: list[str], total: int) -> str:
    """One line naming every bad cell of the sweep file ``path`` with its error (``sweep cell NAME: KEY
    must be ...; got VALUE``)."""
    return f"{len(problems)} of the {total} cells of {path} are invalid, so none runs: " + "; ".join(
        f"({number}) {problem}" for number, problem in enumerate(problems, start=1)
    )


def load_sweep(path: str | Path, overrides: list[str] = ()) -> Sweep:
    """A sweep file's cells, each resolved from its layers by :func:`forgetlab.config.merge`: the
    starting layer (``base_preset``, ``base_config`` or a variant's ``preset``), ``base``, the command
    line's ``key=value`` overrides, the variant's keys, then the grid keys in the file's order.

    Every cell is checked as a run's config is (:func:`forgetlab.config.resolve_layers`: each section,
    the method's options, its limits on the backbone); a :class:`ConfigError` names every bad cell
    (its name, the key, the value and what is allowed), so nothing runs and nothing is written."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"sweep file {path} not found; give a sweep file such as sweeps/demo.yaml")
    data = config_module.load_yaml(path)
    unknown = sorted(set(data) - {"name", "out_dir", "base", "base_config", "base_preset", "grid"})
    if unknown:
        raise ConfigError(
            f"unknown sweep key '{unknown[0]}' in {path}; valid keys: "
            f"name, out_dir, base, base_config, base_preset, grid"
        )
    grid = data.get("grid") or {}
    _check_grid(grid, path)
    start = _starting_layer(data, path)
    base = config_module.Layer("base", config_module.expand(data.get("base") or {}, f"base in {path}"), str(path))
    command_line = config_module.override_layer(overrides)
    for key in ("name", "out_dir"):
        holder = next((f"grid of {path}" for k in grid if k == key or k.startswith(f"{key}.")), None)
        holder = holder or next((layer.where for layer in (base, command_line) if key in layer.tree), None)
        if holder:
            raise ConfigError(f"'{key}' is set by the sweep itself; remove it from the {holder}")
    name = str(data.get("name") or path.stem)
    if "/" in name or "\\" in name or name in ("", ".", ".."):
        raise ConfigError(f"{path}: the sweep name '{name}' must be a plain folder name (it becomes out_dir/NAME)")
    folder = Path(data.get("out_dir", "runs")) / name
    cells, bad = [], []
    for combination in itertools.product(*grid.values()):
        values = dict(zip(grid, combination))
        cell_name = "-".join(_cell_part(key, value) for key, value in values.items())
        for earlier in _earlier_cell_names(values):
            if earlier != cell_name and (folder / earlier).is_dir() and not (folder / cell_name).exists():
                cell_name = earlier  # a folder written by an earlier forgetlab: resume it where it is
                break
        cell_start, variant = _variant_layers(values[VARIANT], start, path) if VARIANT in values else (start, None)
        layers = [
            cell_start,
            base,
            command_line,
            *([variant] if variant else []),
            *(_grid_layer(key, value, path) for key, value in values.items() if key != VARIANT),
        ]
        try:
            cells.append(_cell(cell_name, values, layers, folder))
        except ConfigError as error:  # go on: every bad cell is named at once
            bad.append(str(error))
    if bad:
        hint = (
            _mixed_method_hint(grid)
            if "method.name" in grid and any("unknown config key 'method." in p for p in bad)
            else ""
        )
        raise ConfigError((bad[0] if len(bad) == 1 else bad_cells_message(path, bad, len(bad) + len(cells))) + hint)
    names = [cell.name for cell in cells]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"{path}: several grid cells get the folder name '{repeated[0]}'; make the grid values distinct "
            f"or give each section or variant a distinct 'label'"
        )
    merged_base, _ = config_module.merge_layers([start, base, command_line])
    return Sweep(name=name, folder=folder, grid=grid, base=merged_base, cells=cells)


def _show(value) -> str:
    return (
        "(none)"
        if value is _ABSENT
        else yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
    )


_ABSENT = object()


def definition_differences(stored: dict, current: dict) -> list[str]:
    """``key: old -> new`` for every key in which two sweep definitions differ (grid values whole)."""

    def flat(definition: dict) -> dict:
        definition = definition if isinstance(definition, dict) else {}
        return {
            "name": definition.get("name"),
            **{f"grid.{k}": v for k, v in (definition.get("grid") or {}).items()},
            **{f"base.{k}": v for k, v in config_module.leaves(definition.get("base") or {}).items()},
        }

    old, new = flat(stored), flat(current)
    return [
        f"{key}: {_show(old.get(key, _ABSENT))} -> {_show(new.get(key, _ABSENT))}"
        for key in dict.fromkeys([*old, *new])
        if old.get(key, _ABSENT) != new.get(key, _ABSENT)
    ]


def stored_differences(sweep: Sweep) -> list[str]:
    """How the sweep that ``sweep.folder`` holds differs from ``sweep`` (empty: the same, or none yet)."""
    stored = sweep.folder / SWEEP_FILE
    if not stored.exists():
        return []
    try:
        old = config_module.parse_yaml(stored.read_text())
    except (yaml.YAMLError, ConfigError) as error:
        raise ConfigError(
            f"{stored} is not readable YAML; delete it (the cells' run folders are checked on their own)"
        ) from error
    return definition_differences(old, config_module.parse_yaml(config_module.dump_yaml(sweep.definition())))


def different_sweep_message(sweep: Sweep, differences: list[str]) -> str:
    shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
    return f"{sweep.folder} holds a different sweep ({shown})"


def cell_done(sweep: Sweep, cell: Cell) -> bool:
    try:
        return RunFolder(sweep.folder / cell.name).completed_tasks() == len(cell.config.data.tasks)
    except ForgetlabError:  # an unreadable commit record: not done (the run itself will say what is wrong)
        return False


def make_backend(
    sweep: Sweep,
    jobs: int | str = 1,
    backend: str = "local",
    address: str | None = None,
    gpus_per_cell: float | None = None,
    retries: int = 2,
):
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


def run_sweep(
    sweep: Sweep,
    backend=None,
    *,
    quiet: bool = False,
    log: Callable[[str], None] = print,
    on_cell_done: Callable[[Cell], None] | None = None,
    wait: float = 2.0,
) -> dict[str, str]:
    """Run every unfinished cell on ``backend`` (:func:`make_backend`'s; default: this process); return
    ``cell name -> 'skipped' | 'ran' | 'failed'``.

    A failing cell is recorded (``status.json``, with its one-line error) and the others go on. A cell
    another process is running (a second ``forgetlab sweep`` on the same folder) is waited for, with
    one line naming that process, then skipped if it finished it, else run (it resumes)."""
    from forgetlab.analysis.tables import write_sweep_table
    from forgetlab.runtime import progress

    runner = backend if backend is not None else make_backend(sweep)
    sweep.folder.mkdir(parents=True, exist_ok=True)
    differences = stored_differences(sweep)
    if differences:
        raise ConfigError(
            f"{different_sweep_message(sweep, differences)}; give the sweep another name or delete that folder"
        )
    atomic_write_text(sweep.folder / SWEEP_FILE, config_module.dump_yaml(sweep.definition(), sort_keys=False))
    status = {cell.name: "skipped" for cell in sweep.cells if cell_done(sweep, cell)}
    todo = [cell for cell in sweep.cells if cell.name not in status]
    waiting = _Waiting(sweep, log)
    holders = {cell.name: holder for cell in todo if (holder := waiting.holder(cell))}
    log(f"sweep {sweep.name}: {len(sweep.cells)} cells, {len(status)} done, {len(todo)} to run on {runner.name}")
    for cell in [cell for cell in todo if cell.name in holders]:
        waiting.add(cell, holder=holders[cell.name])
    total, todo = len(todo), [cell for cell in todo if cell.name not in holders]
    bar = progress(total=total, desc=f"sweep {sweep.name}", unit="cell")
    book = _Book(sweep, status, bar, log, total)

    def finished(outcome) -> None:
        if outcome.status == "locked":  # taken by another process after this one looked: wait for it
            book.release(outcome.cell)
            waiting.add(next(cell for cell in sweep.cells if cell.name == outcome.cell), outcome.message)
            return
        book.finished(outcome)
        if on_cell_done and outcome.status != "skipped":
            on_cell_done(next(cell for cell in sweep.cells if cell.name == outcome.cell))

    def done(cell: Cell) -> bool:
        return cell_done(sweep, cell)

    try:
        runner.run(todo, quiet, book.started, finished, done)
        while waiting.cells:  # cells another process holds: wait for it, then run what it left unfinished
            for cell in waiting.free():
                runner.run([cell], quiet, book.started, finished, done)
            if waiting.cells:
                time.sleep(wait)
    finally:
        bar.close()
    write_sweep_table(sweep.folder)
    return status


class _Waiting:
    """The cells another process holds, each announced once (``cell C is being run by pid N; waiting``)."""

    def __init__(self, sweep: Sweep, log: Callable[[str], None]):
        self.sweep, self.log, self.cells = sweep, log, []

    def holder(self, cell: Cell) -> str | None:
        """Who holds ``cell``'s run folder now (``pid N``), or None."""
        from forgetlab.results import lock_holder

        return lock_holder(RunFolder(self.sweep.folder / cell.name))

    def add(self, cell: Cell, message: str = "", holder: str | None = None) -> None:
        holder = (
            holder
            or self.holder(cell)
            or message.partition(" is being run by ")[2].partition(";")[0]
            or "another process"
        )
        self.log(f"sweep {self.sweep.name}: cell {cell.name} is being run by {holder}; waiting")
        self.cells.append(cell)

    def free(self) -> list[Cell]:
        """The waited-for cells no process holds any more (taken off the list)."""
        free = [cell for cell in self.cells if not self.holder(cell)]
        self.cells = [cell for cell in self.cells if cell not in free]
        return free


class _Book:
    """What this process tells of its cells: ``status.json`` (merged with what another process on the
    same folder wrote meanwhile), ``sweep.csv``, the progress bar and one line per finished cell."""

    def __init__(self, sweep: Sweep, status: dict, bar, log: Callable[[str], None], total: int):
        self.sweep, self.status, self.bar, self.log, self.total = sweep, status, bar, log, total
        self.records = read_status(sweep)  # this process's view: the file's, then its own cells
        self.own: dict[str, dict] = {}  # the records this process set
        self.running: set[str] = set()

    def _postfix(self) -> None:
        self.bar.set_postfix(
            running=len(self.running), failed=sum(v == "failed" for v in self.status.values()), refresh=True
        )

    def started(self, cell: Cell) -> None:
        self.running.add(cell.name)
        self.own[cell.name] = {"status": "running"}
        self._postfix()

    def release(self, name: str) -> None:
        """A cell this process started but another one holds: not this process's to record."""
        self.running.discard(name)
        self.own.pop(name, None)

    def finished(self, outcome) -> None:
        from forgetlab.analysis.tables import write_sweep_table
        from forgetlab.results import write_json

        self.running.discard(outcome.cell)
        self.status[outcome.cell] = outcome.status
        self.bar.update(1)
        if outcome.status == "skipped":  # another process finished it
            self._postfix()
            return
        self.own[outcome.cell] = {"status": outcome.status, "message": outcome.message, "attempts": outcome.attempts}
        self.records = {**self.records, **read_status(self.sweep), **self.own}
        write_json(self.sweep.folder / STATUS_FILE, self.records)
        write_sweep_table(self.sweep.folder)
        self._postfix()
        if outcome.status == "failed":
            self.log(f"sweep {self.sweep.name}: cell {outcome.cell} FAILED: {outcome.message}")
        else:
            self.log(
                f"sweep {self.sweep.name}: cell {outcome.cell} done "
                f"({sum(v == 'ran' for v in self.status.values())}/{self.total})"
            )


def read_status(sweep: Sweep) -> dict:
    from forgetlab.results import read_json

    path = sweep.folder / STATUS_FILE
    return read_json(path) if path.exists() else {}


def sweep_status(sweep: Sweep) -> list[tuple[str, str, str]]:
    """``(cell, state, detail)`` of every cell, read from the folder without running anything."""
    records = read_status(sweep) if sweep.folder.exists() else {}
    return [
        (
            cell.name,
            *cell_state(RunFolder(sweep.folder / cell.name), len(cell.config.data.tasks), records.get(cell.name, {})),
        )
        for cell in sweep.cells
    ]
