"""Representation drift in a run: after every phase, the linear CKA (Kornblith et al., 2019;
:mod:`forgetlab.analysis.cka`) between the pretrained model's and the current model's features at the
output of every unit (:mod:`forgetlab.unit_features`), on a fixed class-balanced probe subset of the
upstream test images (``eval.probe_images``; 0 turns it off). Ramasesh et al. (ICLR 2021) located
forgetting in the later layers this way.

Files: ``drift/phase-<i>.csv`` is written with phase ``i``'s commit (a new name per phase, hashed in
``progress.json``, so a kill before the commit leaves nothing committed half-written), and ``drift.csv``
(columns ``phase``, ``unit``, ``cka``; phase 0 is the pretrained model, else the matrix row) is the view
of the committed phases, rewritten after each commit and on resume. With the upstream classes' WordNet
synsets and the phase's domain, the same CKA on the probe images of the classes near to and far from that
domain goes to ``drift/groups-<i>.csv``, committed the same way, and ``drift_groups.csv`` (columns
``phase``, ``group``, ``domain``, ``unit``, ``classes``, ``images``, ``cka``, ``missing``: a group with fewer
than 2 probe images has an empty ``cka`` and the reason under ``missing``).

The pretrained features are computed once per process: from the model before its first phase, or, when
a run resumes, from a freshly loaded pretrained backbone (the same weights, so the same numbers). They
are held in memory (ViT-B/16 with 2,000 probe images: 13 units x 2,000 x 768 floats, 80 MB).
Bitwise-identical features give exactly 1 (a frozen backbone, ``method.name=linear``). Units the
current model does not share with the pretrained one by path and width (block expansion inserts
blocks, so ``blocks.i`` names another block) are left out, and said once in the log.

Imports the learning floor (:mod:`forgetlab.unit_features`), analysis (CKA), models and results; the
runner imports this; :mod:`forgetlab.explanation.drift` computes the same rows afterwards.
"""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from forgetlab.analysis.cka import linear_cka
from forgetlab.data.base import dataset_labels
from forgetlab.errors import ConfigError, DataError
from forgetlab.models.multihead import UPSTREAM, MultiHeadModel
from forgetlab.results import RunFolder, atomic_write_text
from forgetlab.runtime import Runtime
from forgetlab.unit_features import FEATURES, feature_units, probe_subset, unit_features

DRIFT_FILE = "drift.csv"
COLUMNS = ("phase", "unit", "cka")
GROUPS_FILE = "drift_groups.csv"
GROUP_COLUMNS = ("phase", "group", "domain", "unit", "classes", "images", "cka", "missing")
TOO_FEW = "fewer than 2 probe images"  # the ``missing`` of a group whose CKA is undefined (it needs 2 rows)


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


def groups_file(folder: RunFolder, index: int) -> Path:
    """The committed drift rows by group of upstream classes (near, far) of matrix row ``index``."""
    return folder.path / "drift" / f"groups-{index}.csv"


def format_group_rows(rows: list[dict]) -> str:
    """CSV text of :data:`GROUP_COLUMNS`; a missing CKA is an empty field, its reason under ``missing``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(GROUP_COLUMNS)
    for row in rows:
        cka = "" if row["missing"] else repr(float(row["cka"]))
        writer.writerow([*(row[column] for column in GROUP_COLUMNS[:-2]), cka, row["missing"]])
    return buffer.getvalue()


def read_group_rows(path: Path) -> list[dict]:
    """The rows of a by-group drift CSV (``cka`` NaN where ``missing`` gives the reason)."""
    with open(path, newline="") as handle:
        return [
            {
                **row,
                "phase": int(row["phase"]),
                "classes": int(row["classes"]),
                "images": int(row["images"]),
                "cka": float(row["cka"]) if row["cka"] else float("nan"),
            }
            for row in csv.DictReader(handle)
        ]


def write_phase(folder: RunFolder, index: int, rows: list[dict]) -> list[Path]:
    """Write the drift rows of matrix row ``index`` to their own files (atomically) before the phase's
    commit: the rows per unit to ``drift/phase-<i>.csv``, those by group of classes (rows with a ``group``)
    to ``drift/groups-<i>.csv`` when there are any; returns the paths for the commit to hash."""
    path = phase_file(folder, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, format_rows([row for row in rows if "group" not in row]))
    grouped = [row for row in rows if "group" in row]
    if not grouped:
        return [path]
    atomic_write_text(groups_file(folder, index), format_group_rows(grouped))
    return [path, groups_file(folder, index)]


def write_view(folder: RunFolder, completed: int) -> None:
    """Rewrite ``drift.csv`` and ``drift_groups.csv`` from the committed phase files 0..``completed``
    (those that exist: a run started with drift off has none), where they differ."""
    for file_of, read, write, name in (
        (phase_file, read_rows, format_rows, DRIFT_FILE),
        (groups_file, read_group_rows, format_group_rows, GROUPS_FILE),
    ):
        rows = [
            row
            for index in range(completed + 1)
            if file_of(folder, index).exists()
            for row in read(file_of(folder, index))
        ]
        target = folder.path / name
        if not rows:
            continue
        text = write(rows)
        if not target.exists() or target.read_text() != text:
            atomic_write_text(target, text)


class DriftProbe:
    """The drift step of one run: the probe images, the units, and the pretrained features (computed
    from the model of row 0, or, in a process that starts later, from ``pretrained_model()``, a callable
    returning the pretrained ``MultiHeadModel``), on ``runtime``'s device in its evaluation batches."""

    def __init__(
        self, probe, runtime: Runtime, pretrained_model: Callable[[], MultiHeadModel], log=print, class_synsets=None
    ):
        self.probe, self.runtime, self.log = probe, runtime, log
        self._pretrained_model = pretrained_model
        self.pretrained: dict[str, torch.Tensor] | None = None
        self._warned = False
        self.class_synsets = class_synsets  # the upstream classes' WordNet synsets (None: no drift by group)
        self._labels: np.ndarray | None = None  # the probe images' labels, read on first use

    @property
    def labels(self) -> np.ndarray:
        """The probe images' upstream labels ``[n]``."""
        if self._labels is None:
            held = getattr(self.probe, "labels", None)
            self._labels = np.asarray(held) if held is not None else dataset_labels(self.probe)
        return self._labels

    def group_rows(self, index: int, domain: str, pairs: dict[str, tuple]) -> list[dict]:
        """The drift rows by group of matrix row ``index``: for the upstream classes near to and far from
        ``domain`` (the outer quartiles of their Wu-Palmer similarity to it,
        :func:`forgetlab.analysis.drift.near_far_classes`, the split of the lost/misaligned-by-group table),
        the linear CKA of each unit's ``pairs[unit] = (pretrained, current)`` features on the probe images
        of those classes alone. A group with fewer than 2 probe images has no CKA: its rows say so under
        ``missing``. None when every class is as similar to the domain (no split)."""
        from forgetlab.analysis.contextual import class_similarities
        from forgetlab.analysis.drift import near_far_classes

        groups = near_far_classes(class_similarities(domain, synsets=self.class_synsets))
        rows = []
        for group, classes in (groups or {}).items():
            chosen = torch.as_tensor(classes[self.labels])
            count = int(chosen.sum())
            for unit, (before, after) in pairs.items():
                cka, missing = float("nan"), TOO_FEW if count < 2 else ""
                if not missing:
                    mine = chosen.to(before.device)
                    before, after = before[mine], after[mine]
                    cka = 1.0 if torch.equal(before, after) else linear_cka(before, after)
                rows.append(
                    {"phase": index, "group": group, "domain": domain, "unit": unit, "classes": int(classes.sum())}
                    | {"images": count, "cka": cka, "missing": missing}
                )
        return rows

    def features(self, model: MultiHeadModel, description: str) -> dict[str, torch.Tensor]:
        return unit_features(model, self.probe, feature_units(model.backbone), self.runtime, description=description)

    def rows(self, model: MultiHeadModel, index: int, method=None, domain: str | None = None) -> list[dict]:
        """The drift rows of matrix row ``index`` for ``model`` as the upstream task sees it (through
        ``method.evaluating``): one per unit shared with the pretrained model, then ``features``; with the
        phase's ``domain`` (a WordNet synset) and the upstream classes' synsets, then the rows of
        :meth:`group_rows` (those with a ``group``)."""
        if index == 0:  # the model of row 0 is the pretrained one
            self.pretrained = self.features(model, "drift: pretrained features")
            return [{"phase": 0, "unit": unit, "cka": 1.0} for unit in self.pretrained]
        if self.pretrained is None:  # a resumed run
            self.pretrained = self.features(self._pretrained_model(), "drift: pretrained features")
        context = method.evaluating(model, UPSTREAM) if method is not None else contextlib.nullcontext()
        with context:
            current = self.features(model, f"drift after phase {index}")
        rows, skipped, pairs = [], [], {}
        for unit, before in self.pretrained.items():
            after = current.get(unit)
            if after is None or after.shape != before.shape:
                skipped.append(unit)
                continue
            pairs[unit] = (before, after)
            rows.append(
                {"phase": index, "unit": unit, "cka": 1.0 if torch.equal(before, after) else linear_cka(before, after)}
            )
        if domain and self.class_synsets:
            rows += self.group_rows(index, domain, pairs)
        if skipped and not self._warned:
            self.log(
                f"drift: {len(skipped)} units of the pretrained model have no counterpart of the same path and width "
                f"now ({', '.join(skipped[:3])}{', ...' if len(skipped) > 3 else ''}); they are left out of drift.csv"
            )
            self._warned = True
        return rows


def build_drift(
    config,
    upstream_test,
    runtime: Runtime,
    pretrained_model: Callable[[], MultiHeadModel],
    log=print,
    class_synsets: list[str] | None = None,
) -> DriftProbe | None:
    """The run's :class:`DriftProbe`, or None when ``eval.probe_images`` is 0. The probe: the first
    ``eval.probe_images`` of a class-balanced order of the upstream test set, seeded by ``seed``;
    ``class_synsets``: the upstream classes' WordNet synsets, for the drift by group (None: none)."""
    count = config.eval.probe_images
    if not count:
        return None
    if count < 0:
        raise ConfigError(f"eval.probe_images must be 0 (off) or positive, got {count}")
    probe = probe_subset(upstream_test, count, seed=config.seed)
    if len(probe) < 2:
        raise ConfigError(
            f"eval.probe_images: the upstream test set has {len(probe)} image, and CKA compares at least 2; "
            f"use more upstream test images or set eval.probe_images=0"
        )
    return DriftProbe(probe, runtime, pretrained_model, log, class_synsets)


def fresh_pretrained(config, device) -> Callable[[], MultiHeadModel]:
    """A callable loading the run's pretrained backbone anew (what a resumed run compares against)."""

    def load() -> MultiHeadModel:
        from forgetlab.models.backbones import load_backbone

        model = MultiHeadModel(load_backbone(config.backbone).model).to(device)
        model.requires_grad_(False)
        return model

    return load
