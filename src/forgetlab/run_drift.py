"""Representation drift in a run: after every phase, the linear CKA (Kornblith et al., 2019;
:mod:`forgetlab.analysis.cka`) between the pretrained model's and the current model's features at the
output of every unit (:mod:`forgetlab.unit_features`), on a fixed class-balanced probe subset of the
upstream test images (``eval.probe_images``; 0 turns it off). Ramasesh et al. (ICLR 2021) located
forgetting in the later layers this way.

Files: ``drift/phase-<i>.csv`` is written with phase ``i``'s commit (a new name per phase, hashed in
``progress.json``, so a kill before the commit leaves nothing committed half-written), and ``drift.csv``
(columns ``phase``, ``unit``, ``cka``; phase 0 is the pretrained model, else the matrix row) is the view
of the committed phases, rewritten after each commit and on resume.

The pretrained features are computed once per process: from the model before its first phase, or, when
a run resumes, from a freshly loaded pretrained backbone (the same weights, so the same numbers). They
are held in memory (ViT-B/16 with 2,000 probe images: 13 units x 2,000 x 768 floats, 80 MB).
Bitwise-identical features give exactly 1 (a frozen backbone, ``method.name=linear``). Units the
current model does not share with the pretrained one by path and width (block expansion inserts
blocks, so ``blocks.i`` names another block) are left out, and said once in the log.

Imports the learning floor (:mod:`forgetlab.unit_features`), analysis (CKA), models and results; the
runner imports this; :mod:`forgetlab.stored_drift` computes the same rows afterwards.
"""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path
from typing import Callable

import torch

from forgetlab.analysis.cka import linear_cka
from forgetlab.errors import ConfigError, DataError
from forgetlab.models.multihead import UPSTREAM, MultiHeadModel
from forgetlab.results import RunFolder, atomic_write_text
from forgetlab.runtime import Runtime
from forgetlab.unit_features import FEATURES, feature_units, probe_subset, unit_features

DRIFT_FILE = "drift.csv"
COLUMNS = ("phase", "unit", "cka")


def phase_file(folder: RunFolder, index: int) -> Path:
    """The committed drift rows of matrix row ``index`` (0: the pretrained model)."""
    return folder.path / "drift" / f"phase-{index}.csv"


def format_rows(rows: list[dict]) -> str:
    """``phase,unit,cka`` CSV text (CKA with 17 significant digits: read back as the same float)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([row["phase"], row["unit"], repr(float(row["cka"]))])
    return buffer.getvalue()


def read_rows(path: Path) -> list[dict]:
    """The rows of a drift CSV (``phase`` int, ``unit`` str, ``cka`` float)."""
    with open(path, newline="") as handle:
        return [
            {"phase": int(row["phase"]), "unit": row["unit"], "cka": float(row["cka"])}
            for row in csv.DictReader(handle)
        ]


def write_phase(folder: RunFolder, index: int, rows: list[dict]) -> list[Path]:
    """Write the drift rows of matrix row ``index`` to their own file (atomically) before the phase's
    commit; returns ``[path]`` for the commit to hash."""
    path = phase_file(folder, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, format_rows(rows))
    return [path]


def write_view(folder: RunFolder, completed: int) -> None:
    """Rewrite ``drift.csv`` from the committed phase files 0..``completed`` (those that exist: a run
    started with drift off has none), where it differs."""
    rows = [
        row
        for index in range(completed + 1)
        if phase_file(folder, index).exists()
        for row in read_rows(phase_file(folder, index))
    ]
    target = folder.path / DRIFT_FILE
    if not rows:
        return
    text = format_rows(rows)
    if not target.exists() or target.read_text() != text:
        atomic_write_text(target, text)


class DriftProbe:
    """The drift step of one run: the probe images, the units, and the pretrained features (computed
    from the model of row 0, or, in a process that starts later, from ``pretrained_model()``, a callable
    returning the pretrained ``MultiHeadModel``), on ``runtime``'s device in its evaluation batches."""

    def __init__(self, probe, runtime: Runtime, pretrained_model: Callable[[], MultiHeadModel], log=print):
        self.probe, self.runtime, self.log = probe, runtime, log
        self._pretrained_model = pretrained_model
        self.pretrained: dict[str, torch.Tensor] | None = None
        self._warned = False

    def features(self, model: MultiHeadModel, description: str) -> dict[str, torch.Tensor]:
        return unit_features(model, self.probe, feature_units(model.backbone), self.runtime, description=description)

    def rows(self, model: MultiHeadModel, index: int, method=None) -> list[dict]:
        """The drift rows of matrix row ``index`` for ``model`` as the upstream task sees it (through
        ``method.evaluating``): one per unit shared with the pretrained model, then ``features``."""
        if index == 0:  # the model of row 0 is the pretrained one
            self.pretrained = self.features(model, "drift: pretrained features")
            return [{"phase": 0, "unit": unit, "cka": 1.0} for unit in self.pretrained]
        if self.pretrained is None:  # a resumed run
            self.pretrained = self.features(self._pretrained_model(), "drift: pretrained features")
        context = method.evaluating(model, UPSTREAM) if method is not None else contextlib.nullcontext()
        with context:
            current = self.features(model, f"drift after phase {index}")
        rows, skipped = [], []
        for unit, before in self.pretrained.items():
            after = current.get(unit)
            if after is None or after.shape != before.shape:
                skipped.append(unit)
                continue
            rows.append(
                {"phase": index, "unit": unit, "cka": 1.0 if torch.equal(before, after) else linear_cka(before, after)}
            )
        if skipped and not self._warned:
            self.log(
                f"drift: {len(skipped)} units of the pretrained model have no counterpart of the same path and width "
                f"now ({', '.join(skipped[:3])}{', ...' if len(skipped) > 3 else ''}); they are left out of drift.csv"
            )
            self._warned = True
        return rows


def build_drift(
    config, upstream_test, runtime: Runtime, pretrained_model: Callable[[], MultiHeadModel], log=print
) -> DriftProbe | None:
    """The run's :class:`DriftProbe`, or None when ``eval.probe_images`` is 0. The probe: the first
    ``eval.probe_images`` of a class-balanced order of the upstream test set, seeded by ``seed``."""
    count = config.eval.probe_images
    if not count:
        return None
    if count < 0:
        raise ConfigError(f"eval.probe_images must be 0 (off) or positive, got {count}")
    probe = probe_subset(upstream_test, count, seed=config.seed)
    if len(probe) < 2:
        raise ConfigError(
            f"eval.probe_images needs at least 2 upstream test images and has {len(probe)}; set eval.probe_images=0"
        )
    return DriftProbe(probe, runtime, pretrained_model, log)


def fresh_pretrained(config, device) -> Callable[[], MultiHeadModel]:
    """A callable loading the run's pretrained backbone anew (what a resumed run compares against)."""

    def load() -> MultiHeadModel:
        from forgetlab.models.backbones import load_backbone

        model = MultiHeadModel(load_backbone(config.backbone).model).to(device)
        model.requires_grad_(False)
        return model

    return load
