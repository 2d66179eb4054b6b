"""``forgetlab explain RUN``: where in the weights a run's forgetting happens.

Two parts, each a set of files under the run folder's ``explain/`` (docs/explain.md gives every column):

* ``spectra`` (:mod:`forgetlab.explanation.spectra`): per adapted matrix and phase, the spectrum of the
  phase's own update and of the cumulative one (``spectra.csv``, ``singular_values.csv``), and the
  subspace overlap of every two phases' updates (``overlap.csv``).
* ``attribution`` (:mod:`forgetlab.explanation.attribution`): per phase and unit, the upstream accuracy
  with the unit's update reverted and with only the unit's update applied (``attribution.csv``).

Resumable and atomic like a run: each phase's part is written to ``explain/phases/`` (the spectra's
three files, the spectra file last; the attribution file), each file atomically, then its SHA-256 to
``explain/phases/digests.json``; a phase whose files match their digests is not computed again, and one
whose file is missing, damaged or unrecorded (a kill between the two writes) is computed again. The
combined CSVs are rebuilt from the phase files at the end. (A folder of an earlier version, without
``digests.json``, counts a phase as done when its files exist.) The
attribution's options (``images``, ``unit``) are kept in ``explain/settings.json``; other options on an
existing folder are refused in one line. The run folder's lock is held throughout, so a run and an
explanation never write one folder at once.

Floor: run (it rebuilds the backbone and scores it as the run does); the report reads the CSVs alone.
"""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import numpy as np

from forgetlab import config as config_module
from forgetlab.errors import ConfigError, DataError
from forgetlab.explanation import spectra
from forgetlab.analysis.units import upgrade_attribution_columns
from forgetlab.explanation.attribution import Scorer, attribution_rows, unit_of
from forgetlab.explanation.updates import PhaseUpdate, check_explainable, rebuild
from forgetlab.results import (
    RunFolder,
    atomic_write_text,
    file_sha256,
    read_json,
    single_prediction_path,
    write_json,
)

PARTS = ("attribution", "spectra", "drift")
DEFAULT_PARTS = ("attribution", "spectra")  # drift needs a forward pass per phase over the probe: asked for by name
UNITS = ("block", "module")
TOP_SINGULAR_VALUES = 32  # kept per matrix, phase and scope in singular_values.csv
# Overlap of updates without an adapter rank (stored updates, full rank): the top 8 left singular vectors at
# most, the dimensions Hu et al. (2021, section 7.2) compare; a full-rank basis would always overlap fully.
OVERLAP_RANK = 8
FILES = {"attribution": ["attribution"], "spectra": ["singular_values", "overlap", "spectra"]}  # the last one commits


def parse_parts(parts) -> tuple[str, ...]:
    """``"attribution,spectra"`` or a sequence of part names, checked: a :class:`ConfigError` naming the choices."""
    names = [p.strip() for p in (parts.split(",") if isinstance(parts, str) else parts) if p.strip()]
    unknown = [name for name in names if name not in PARTS]
    if unknown or not names:
        raise ConfigError(f"--parts {','.join(names) or '(empty)'}: choose from {', '.join(PARTS)} (comma-separated)")
    return tuple(dict.fromkeys(names))


def explain(
    run_dir: str | Path,
    *,
    parts=DEFAULT_PARTS,
    images: int | None = None,
    unit: str = "block",
    device: str = "auto",
    batch_size: int | None = None,
    log=print,
) -> dict:
    """Write (or complete) ``explain/`` of a LoRA run, or of a run that stored its updates (``save.updates=true``),
    and return its tables as DataFrames: ``{"attribution": ...,
    "spectra": ..., "overlap": ..., "singular_values": ..., "drift": ...}`` (those of the parts asked for; ``drift`` is
    :func:`forgetlab.explanation.drift.drift_of_run`'s ``explain/drift.csv``, the linear CKA per unit and phase
    against the pretrained features). ``images``: a class-balanced subset of the upstream test images the run
    scored (default: all of them, so the ``all`` rows reproduce the matrix). Errors: :class:`ConfigError` for
    bad options or a method whose updates the folder does not hold, :class:`DataError` for an incomplete folder."""
    parts = parse_parts(parts)
    if unit not in UNITS:
        raise ConfigError(f"--unit {unit}: choose {' or '.join(UNITS)}")
    if images is not None and images < 1:
        raise ConfigError(f"--images {images}: give a positive number of upstream test images")
    folder = RunFolder(run_dir)
    if not folder.config.exists() or not folder.progress.exists():
        raise DataError(
            f"{folder.path} is not a run folder with a commit (config.yaml "
            f"and progress.json); give a folder 'forgetlab run' wrote"
        )
    config = config_module.load_stored(folder.config)
    check_explainable(config, folder.path)
    if "attribution" in parts and config.eval.evaluators[0] != "head":
        raise ConfigError(
            f"{folder.path} scores the upstream task by k-NN; attribution "
            f"scores the upstream head (eval.upstream_evaluator=head)"
        )
    phases = folder.read_matrix().phases[: max(folder.completed_tasks(), 0)]
    if not phases:
        raise DataError(f"{folder.path} has no finished phase yet; explain it after 'forgetlab run' has finished one")
    out = folder.path / "explain"
    scored = next((record["images"] for record in folder.read_upstream_eval() if record.get("images")), None)
    settings = {"images": _as_subset(images, scored), "unit": unit}
    if "attribution" in parts:
        check_settings(out, settings, scored)
    weight_parts = tuple(part for part in parts if part in FILES)
    with folder.lock():
        if "attribution" in parts:
            write_json(out / "settings.json", settings)
        tables = {}
        if weight_parts:
            _explain_phases(
                folder, config, phases, weight_parts, settings, device=device, batch_size=batch_size, log=log
            )
            tables = combine(out, weight_parts)
        if "drift" in parts:
            import pandas as pd

            from forgetlab.explanation.drift import drift_of_run

            tables["drift"] = pd.read_csv(drift_of_run(folder.path, device=device, log=log))
        return tables


def _as_subset(images: int | None, scored: int | None) -> int | None:
    """``--images`` as stored: None (every image the run scored) also when it asks for all of them or more."""
    return None if images is not None and scored is not None and images >= scored else images


def check_settings(out: Path, settings: dict, scored: int | None = None) -> None:
    """Refuse attribution options other than those of the attribution files already in ``out`` (``scored``:
    the number of upstream test images the run scored, so that ``--images`` at or above it equals all)."""
    path = out / "settings.json"
    if path.exists() and any((out / "phases").glob("attribution_*.csv")):
        try:
            stored = read_json(path)
        except DataError as error:
            raise DataError(
                f"{path} is unreadable or not JSON; delete {out} and explain again (the run itself is untouched)"
            ) from error
        if isinstance(stored, dict) and "images" in stored:
            stored = {**stored, "images": _as_subset(stored["images"], scored)}
        if stored != settings:
            images = stored.get("images") if isinstance(stored, dict) else None
            raise ConfigError(
                f"{out} holds attribution with --images {images or 'all'} "
                f"--unit {stored.get('unit') if isinstance(stored, dict) else None}; "
                f"pass the same options or delete {out / 'phases'}/attribution_*.csv"
            )


def part_path(out: Path, name: str, phase: int) -> Path:
    return out / "phases" / f"{name}_{phase}.csv"


DIGESTS = "digests.json"  # in explain/phases/: the SHA-256 of every part file written, by file name


def _digests(out: Path) -> dict | None:
    """The recorded digests of ``out``'s part files; None for a folder of an earlier version (none kept)
    and for an unreadable file (every part is then computed again)."""
    path = out / "phases" / DIGESTS
    if not path.exists():
        return None
    try:
        stored = read_json(path)
    except DataError:
        return {}
    return stored if isinstance(stored, dict) else {}


def write_part(out: Path, name: str, phase: int, text: str) -> Path:
    """Write one part file atomically, then record its SHA-256 (so a damaged file is found and redone)."""
    path = part_path(out, name, phase)
    atomic_write_text(path, text)
    digests = _digests(out) or {}
    write_json(out / "phases" / DIGESTS, {**digests, path.name: file_sha256(path)})
    return path


def part_undone(out: Path, part: str, phase: int, digests: dict | None) -> list[Path]:
    """The files of ``part`` for ``phase`` that are missing or do not match their recorded digest (each file
    hashed once); empty when the phase's part is done. ``digests`` None: a folder of an earlier version,
    whose part counts as done when its last file exists."""
    paths = [part_path(out, name, phase) for name in FILES[part]]
    if digests is None:
        return [] if paths[-1].exists() else [paths[-1]]
    return [path for path in paths if not path.exists() or digests.get(path.name) != file_sha256(path)]


def _explain_phases(
    folder: RunFolder, config, phases: list[str], parts, settings: dict, *, device, batch_size, log
) -> None:
    """Rebuild every phase's update in order and write each missing part of each phase."""
    from forgetlab.models.backbones import load_backbone
    from forgetlab.pretrain import ensure_pretrained
    from forgetlab.runtime import Runtime, configure_threads

    out = folder.path / "explain"
    digests = _digests(out)
    undone = {(part, t): part_undone(out, part, t, digests) for part in parts for t in range(1, len(phases) + 1)}
    pending = {part: [t for t in range(1, len(phases) + 1) if undone[part, t]] for part in parts}
    if not any(pending.values()):
        log(f"{out} is complete for {', '.join(parts)}; nothing to do")
        return
    damaged = [path.name for paths in undone.values() for path in paths if path.exists()]  # a missing file is not
    if damaged:
        log(f"{out / 'phases'}: {', '.join(damaged)} do not match their recorded digests; computing them again")
    configure_threads()
    runtime = Runtime.from_config(config, device=device)
    runtime = dataclasses.replace(runtime, eval_batch_size=batch_size or runtime.eval_batch_size)
    ensure_pretrained(config.backbone, device=runtime.device)
    backbone = load_backbone(config.backbone)
    scoring = _scoring(folder, config, backbone, settings, runtime) if pending.get("attribution") else None
    tracker = SpectraTracker(getattr(config.method, "policy", "merge"))
    for update in rebuild(config, backbone.model, folder.path, phases):
        if scoring is not None and update.structure is not None:  # inserted blocks: score the phase's architecture
            scoring["scorer"].model = _upstream_model(update.structure, runtime)
        if "spectra" in parts:
            tables = tracker.add(update, unit_of)
            if update.index in pending["spectra"]:
                for name in FILES["spectra"]:
                    write_part(out, name, update.index, _csv(tables[name]))
                log(
                    f"phase {update.index} {update.name}: spectra of {len(update.update)} "
                    f"matrices -> {part_path(out, 'spectra', update.index)}"
                )
        if scoring is not None and update.index in pending["attribution"]:
            rows = _attribute(scoring, update, folder, config, settings)
            write_part(out, "attribution", update.index, _csv(rows))
            log(_attribution_line(update, rows, part_path(out, "attribution", update.index)))


def _scoring(folder: RunFolder, config, backbone, settings: dict, runtime) -> dict:
    """The scorer (a device copy of the pretrained backbone with its upstream head) and the images."""
    import copy

    from forgetlab.data.base import SampleSubset, dataset_labels
    from forgetlab.models.multihead import MultiHeadModel
    from forgetlab.runner import upstream_task
    from forgetlab.unit_features import balanced_indices

    _, upstream = upstream_task(config, backbone)  # the upstream test set exactly as the run scored it
    labels = dataset_labels(upstream.test)
    indices = (
        balanced_indices(labels, settings["images"], config.seed) if settings["images"] else np.arange(len(labels))
    )
    dataset = upstream.test if len(indices) == len(labels) else SampleSubset(upstream.test, indices)
    model = MultiHeadModel(copy.deepcopy(backbone.model)).to(runtime.device)
    scorer = Scorer(model, dataset, runtime, by_parameter=config.method.name != "lora")
    return {"scorer": scorer, "labels": labels[indices], "indices": indices, "pretrained": None}


def _attribute(scoring: dict, update: PhaseUpdate, folder: RunFolder, config, settings: dict) -> list[dict]:
    indices = scoring["indices"]
    stored = {"pretrained": folder.read_predictions(0)["predictions"][indices]}
    if getattr(config.method, "policy", "merge") == "merge":  # every method but LoRA's keep accumulates
        stored["after"] = folder.read_predictions(update.index)["predictions"][indices]
    elif single_prediction_path(folder, update.index).exists():  # keep: the phase model is pretrained + its adapter
        with np.load(single_prediction_path(folder, update.index)) as data:
            stored["after"] = data["predictions"][indices]
    return attribution_rows(
        scoring["scorer"],
        scoring["labels"],
        update.pretrained,
        update.weights,
        phase=update.index,
        unit=settings["unit"],
        stored=stored,
    )


def _upstream_model(backbone, runtime):
    """A device copy of ``backbone`` (a phase's architecture) with its upstream head, to score."""
    import copy

    from forgetlab.models.multihead import MultiHeadModel

    return MultiHeadModel(copy.deepcopy(backbone)).to(runtime.device)


def _attribution_line(update: PhaseUpdate, rows: list[dict], path: Path) -> str:
    first = rows[0]
    if len(rows) == 1:  # a method that trains no backbone tensor (linear): only the rows 'all'
        return (
            f"phase {update.index} {update.name}: the run trained no backbone tensor, so there is nothing to "
            f"attribute (upstream {first['pretrained_accuracy_pct']:.2f}% -> "
            f"{first['phase_accuracy_pct']:.2f}%) -> {path}"
        )
    worst = max(rows[1:], key=lambda row: row["recovered_pp"], default=None)
    line = (
        (
            f"phase {update.index} {update.name}: upstream "
            f"{first['pretrained_accuracy_pct']:.2f}% -> {first['phase_accuracy_pct']:.2f}%; "
            + (
                f"reverting {worst['unit']} recovers {worst['recovered_pp']:+.2f} points"
                if worst["recovered_pp"] > 0
                else "reverting no single unit recovers points"
            )
        )
        if worst
        else ""
    )
    if not math.isnan(first["agreement_pct"]) and first["agreement_pct"] < 100:
        line += (
            f"; WARNING: the rebuilt models predict what the run stored "
            f"on only {first['agreement_pct']:.2f}% of the images "
            "(another device or precision than the run's?)"
        )
    return f"{line} -> {path}"


class SpectraTracker:
    """The spectra of every phase in order: keeps the cumulative updates, the pretrained matrices' left
    singular vectors (for the intruders) and every phase's top singular vectors (for the overlaps)."""

    def __init__(self, policy: str):
        self.policy = policy
        self.cumulative: dict[str, np.ndarray] = {}
        self.base: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # module -> (W0 matrix, its left singular vectors)
        self.tops: dict[str, list[tuple[int, np.ndarray]]] = {}  # module -> [(phase, top vectors)]

    def add(self, update: PhaseUpdate, unit_of) -> dict[str, list[dict]]:
        """The phase's rows of ``spectra``, ``singular_values`` and ``overlap``."""
        tables: dict[str, list[dict]] = {"spectra": [], "singular_values": [], "overlap": []}
        if update.fresh:  # new matrices under names an earlier phase's may have had: nothing carries over
            self.base, self.cumulative, self.tops = {}, {}, {}
        for name, delta in update.update.items():
            if name not in self.base:
                pretrained = spectra.as_matrix(update.reference(name).cpu().numpy())
                self.base[name] = (pretrained, spectra.left_vectors(pretrained))
            pretrained, base = self.base[name]
            # keep: the backbone never accumulates, so the phase's own update is the whole of it
            self.cumulative[name] = delta if self.policy == "keep" else self.cumulative.get(name, 0) + delta
            for scope, matrix in (("phase", delta), ("cumulative", self.cumulative[name])):
                described = spectra.describe_update(matrix, pretrained, base)
                values = described.pop("singular_values")
                tables["spectra"].append(
                    {
                        "phase": update.index,
                        "layer": name,
                        "unit": unit_of(name),
                        "scope": scope,
                        "rows": matrix.shape[0],
                        "cols": matrix.shape[1],
                        "adapter_rank": update.ranks.get(name),
                        **described,
                    }
                )
                tables["singular_values"] += [
                    {"phase": update.index, "layer": name, "scope": scope, "index": i + 1, "value": float(v)}
                    for i, v in enumerate(values[:TOP_SINGULAR_VALUES])
                ]
                if scope == "phase":
                    rank = min(described["numerical_rank"], update.ranks.get(name, OVERLAP_RANK))
                    top = spectra.top_left_vectors(matrix, rank)
            for earlier, vectors in self.tops.get(name, []):
                tables["overlap"].append(
                    {
                        "phase": update.index,
                        "other_phase": earlier,
                        "layer": name,
                        "rank": top.shape[1],
                        "other_rank": vectors.shape[1],
                        "overlap": spectra.subspace_overlap(top, vectors),
                    }
                )
            self.tops.setdefault(name, []).append((update.index, top))
        return tables


def _csv(rows: list[dict]) -> str:
    """CSV text of ``rows`` (empty text for no rows: phase 1 has no earlier phase to overlap with)."""
    import pandas as pd

    if not rows:
        return ""
    buffer = io.StringIO()
    pd.DataFrame(rows).to_csv(buffer, index=False)
    return buffer.getvalue()


def combine(out: Path, parts) -> dict:
    """The combined CSVs of ``out`` rebuilt from its phase files (atomically), as DataFrames; attribution
    files of an earlier version are read in today's columns and units
    (:func:`forgetlab.analysis.units.upgrade_attribution_columns`)."""
    import pandas as pd

    tables = {}
    for part in parts:
        for name in FILES[part]:
            files = sorted((out / "phases").glob(f"{name}_*.csv"), key=lambda path: int(path.stem.rsplit("_", 1)[1]))
            frames = [pd.read_csv(path) for path in files if path.read_text().strip()]
            frames = [upgrade_attribution_columns(frame) for frame in frames] if name == "attribution" else frames
            table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
            atomic_write_text(out / f"{name}.csv", table.to_csv(index=False))
            tables[name] = table
    return tables
