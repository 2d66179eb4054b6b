"""Per-unit causal attribution of the upstream loss: which block's update costs the points.

For phase ``t`` and unit ``l`` (a block: ``blocks.3``, ``layer2.0``, ``stages.1.blocks.2``; or one adapted
module with ``unit=module``), with ``W0`` the pretrained weights and ``W_t`` the weights after phase ``t``:

* **leave-one-out** (``reverted_*``): ``W_t`` everywhere but ``W0`` in unit ``l``: the upstream
  accuracy with unit ``l``'s update of phases ``1..t`` reverted; ``recovered_pp`` is that minus the
  phase-``t`` accuracy (positive: the unit's update costs that many points in context);
* **leave-one-in** (``applied_*``): ``W0`` everywhere but ``W_t`` in unit ``l``: the pretrained model
  with only unit ``l``'s update; ``damage_pp`` is that minus the pretrained accuracy (negative:
  the update alone costs points);
* the row ``all`` reverts / applies every unit: exactly the pretrained and the phase-``t`` model, so
  its accuracies must equal the run's (``agreement_pct``: the percent of images whose prediction equals
  the run's stored one; 100 when the updates were rebuilt right).

On the images forgotten at ``t`` (right before any update, wrong after phase ``t``),
``recovered_share_pct`` is the percent of them the leave-one-out model gets right again.

Intervals are paired over the same images: a bootstrap over images (the image-level outcomes of the two
models being compared resampled together, which depends only on the counts of the four agreement cells,
so it is drawn from their multinomial exactly), percentile 95 %; ``*_p`` is McNemar's exact test of the
difference (two-sided binomial on the discordant images). Accuracies and shares are in percent (columns
``*_pct``), their differences in percentage points (``*_pp``).
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
from scipy.stats import binomtest

from forgetlab.evaluate import predict
from forgetlab.models.multihead import UPSTREAM
from forgetlab.runtime import Runtime

BLOCK = re.compile(r"^(.*?(?:^|\.)(?:blocks|layer\d+)\.\d+)(?:\.|$)")
RESAMPLES = 10_000
LEVEL = 0.95


def unit_of(module: str, unit: str = "block") -> str:
    """The unit a module belongs to: its block (``blocks.3`` of ``blocks.3.attn.qkv``, ``layer1.0`` of
    ``layer1.0.conv3``; the module itself when it is in no block), or the module with ``unit="module"``."""
    if unit == "module":
        return module
    match = BLOCK.match(module)
    return match.group(1) if match else module


def tensor_unit(parameter: str, unit: str = "block") -> str:
    """The unit a backbone parameter belongs to (stored updates are per parameter): its module's block
    (``blocks.3`` of ``blocks.3.attn.qkv.weight``), a module outside the blocks (``norm`` of ``norm.weight``,
    ``pos_embed`` itself), or its module with ``unit="module"`` (``blocks.3.attn.qkv``)."""
    module = parameter.rpartition(".")[0] or parameter
    return unit_of(module, unit)


def units(modules, unit: str = "block", grouping=unit_of) -> dict[str, list[str]]:
    """``unit -> its modules`` (or parameters, with ``grouping=tensor_unit``), in the order they come."""
    grouped: dict[str, list[str]] = {}
    for module in modules:
        grouped.setdefault(grouping(module, unit), []).append(module)
    return grouped


def paired(first: np.ndarray, second: np.ndarray, *, seed: int = 0) -> dict:
    """Accuracy of ``second`` and its difference from ``first`` (boolean per-image outcomes, same images),
    in percent, with paired 95 % bootstrap intervals and McNemar's exact p of the difference."""
    n = len(first)
    both, only_second = int(np.sum(first & second)), int(np.sum(~first & second))
    only_first, neither = int(np.sum(first & ~second)), int(np.sum(~first & ~second))
    counts = np.random.default_rng(seed).multinomial(
        n, np.array([both, only_second, only_first, neither]) / n, size=RESAMPLES
    )
    accuracy = 100 * (counts[:, 0] + counts[:, 1]) / n
    difference = 100 * (counts[:, 1] - counts[:, 2]) / n
    tails = [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2]
    discordant = only_first + only_second
    return {
        "accuracy": 100 * (both + only_second) / n,
        "accuracy_interval": tuple(float(v) for v in np.percentile(accuracy, tails)),
        "difference": 100 * (only_second - only_first) / n,
        "difference_interval": tuple(float(v) for v in np.percentile(difference, tails)),
        "p": float(binomtest(only_second, discordant, 0.5).pvalue) if discordant else 1.0,
    }


class Scorer:
    """Upstream predictions of ``model`` (a :class:`MultiHeadModel`) with some adapted matrices swapped
    (``by_parameter``: the names are backbone parameters, ``pos_embed``, ``blocks.0.norm1.bias``, not modules)."""

    def __init__(self, model, dataset, runtime: Runtime, by_parameter: bool = False):
        self.model, self.dataset, self.runtime, self.by_parameter = model, dataset, runtime, by_parameter

    def tensor(self, name: str) -> torch.Tensor:
        backbone = self.model.backbone
        return backbone.get_parameter(name) if self.by_parameter else backbone.get_submodule(name).weight

    def predictions(self, weights: dict[str, torch.Tensor], description: str) -> np.ndarray:
        """Predicted labels with every module of ``weights`` holding that weight (kept after the call)."""
        with torch.no_grad():
            for name, weight in weights.items():
                self.tensor(name).copy_(weight)
        return predict(self.model, UPSTREAM, self.dataset, self.runtime, description=description)


def attribution_rows(
    scorer: Scorer,
    labels: np.ndarray,
    pretrained: dict,
    after: dict,
    *,
    phase: int,
    unit: str,
    stored: dict[str, np.ndarray | None],
) -> list[dict]:
    """The rows of ``explain/attribution.csv`` for one phase: ``all`` first, then every unit.
    ``pretrained`` / ``after``: module -> weight before any update / after the phase; ``stored``: the run's
    own predictions of the pretrained (``"pretrained"``) and phase model (``"after"``), or None.
    The scorer's model holds ``after`` when this returns."""
    before_predicted = scorer.predictions(pretrained, f"phase {phase}: pretrained")
    now_predicted = scorer.predictions(after, f"phase {phase}: after")
    before, now = before_predicted == labels, now_predicted == labels
    forgotten = before & ~now
    rows = [_row(phase, "all", before, now, before, now, forgotten)]
    shares = [
        float(np.mean(stored[key] == predicted))
        for key, predicted in (("pretrained", before_predicted), ("after", now_predicted))
        if stored.get(key) is not None
    ]
    rows[0]["agreement_pct"] = 100 * min(shares) if shares else math.nan
    for name, modules in units(after, unit, tensor_unit if scorer.by_parameter else unit_of).items():
        reverted = (
            scorer.predictions({**after, **{m: pretrained[m] for m in modules}}, f"phase {phase}: revert {name}")
            == labels
        )
        applied = (
            scorer.predictions({**pretrained, **{m: after[m] for m in modules}}, f"phase {phase}: apply {name}")
            == labels
        )
        rows.append(_row(phase, name, before, now, reverted, applied, forgotten))
    with torch.no_grad():
        for name, weight in after.items():
            scorer.tensor(name).copy_(weight)
    return rows


def _row(phase: int, unit: str, before, now, reverted, applied, forgotten) -> dict:
    out = paired(now, reverted)  # reverted against the phase model: the points the unit recovers
    inn = paired(before, applied)  # applied against the pretrained model: the points the unit costs
    return {
        "phase": phase,
        "unit": unit,
        "images": len(before),
        "pretrained_accuracy_pct": 100 * float(np.mean(before)),
        "phase_accuracy_pct": 100 * float(np.mean(now)),
        "reverted_accuracy_pct": out["accuracy"],
        "reverted_low_pct": out["accuracy_interval"][0],
        "reverted_high_pct": out["accuracy_interval"][1],
        "recovered_pp": out["difference"],
        "recovered_low_pp": out["difference_interval"][0],
        "recovered_high_pp": out["difference_interval"][1],
        "recovered_p": out["p"],
        "applied_accuracy_pct": inn["accuracy"],
        "applied_low_pct": inn["accuracy_interval"][0],
        "applied_high_pct": inn["accuracy_interval"][1],
        "damage_pp": inn["difference"],
        "damage_low_pp": inn["difference_interval"][0],
        "damage_high_pp": inn["difference_interval"][1],
        "damage_p": inn["p"],
        "forgotten_images": int(np.sum(forgotten)),
        "recovered_share_pct": 100 * float(np.mean(reverted[forgotten])) if forgotten.any() else math.nan,
        "agreement_pct": math.nan,
    }
