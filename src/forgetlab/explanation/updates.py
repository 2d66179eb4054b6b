"""Every phase's weight update of a run, rebuilt from what the run folder stores.

A LoRA run stores each phase's adapter (``adapters/<phase>/``, PEFT's format). Starting from the
pretrained backbone (rebuilt from the run's config), :func:`phase_updates` loads the adapters in order and
merges each one with the run's own checked merge (:func:`forgetlab.models.lora_layers.merge_lora`, fp32),
so the weights after phase ``t`` are exactly the ones the run scored (``policy=merge``; the variants
merge the same way: rsLoRA, DoRA's rescaling, PiSSA/OLoRA's ``- B0 A0``). Under ``policy=keep`` the
backbone never changes and the upstream head always sees the pretrained one, so the weights "after
phase ``t``" are the pretrained ones plus only phase ``t``'s adapter: what ``forgetlab single-adapter``
scores.

Two views of an update are given per adapted matrix:

* ``weights``: the fp32 weight after the phase, as the run had it; attribution swaps these in.
* ``update``: the phase's own update ``dW_t`` in float64, computed from the adapter's factors
  (``s (B A - B0 A0)``; DoRA: ``m (W + dW) / ||W + dW|| - W``) so that its spectrum is not buried under
  fp32 rounding of the weight it is added to; the spectra use it.

Other methods keep no per-phase update in the folder; :func:`phase_updates` refuses them in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from forgetlab.errors import ConfigError, DataError
from forgetlab.models import lora_layers
from forgetlab.models.adapter_files import load_adapter


@dataclass
class PhaseUpdate:
    """What phase ``index`` (1-based, the matrix row) did to the adapted matrices."""

    index: int
    name: str
    weights: dict[str, torch.Tensor]  # module name -> fp32 weight after the phase (the run's)
    update: dict[str, np.ndarray]  # module name -> float64 ``out x (in kh kw)`` update of this phase alone
    ranks: dict[str, int]  # module name -> the adapter's rank (slices x rank, PEFT's ``r``)
    pretrained: dict[str, torch.Tensor]  # module name -> fp32 pretrained weight (shared by every phase)


def check_explainable(config, folder: Path) -> None:
    """Refuse a run whose updates cannot be rebuilt: one line naming what is needed."""
    if config.method.name != "lora":
        raise ConfigError(
            f"{folder} is a {config.method.name} run; 'forgetlab explain' rebuilds each phase's update from the "
            "stored LoRA adapters, so it needs a LoRA run (method.name=lora)"
        )


def exact_update(layer: lora_layers.LoRALayer) -> np.ndarray:
    """The update a LoRA layer's merge adds to its base weight, in float64, as an ``out x (in kh kw)``
    matrix: ``s (B A - B0 A0)`` per slice (zero rows outside the slices); with DoRA the rescaled rows
    ``m (W + dW) / ||W + dW||`` minus ``W`` (:meth:`LoRALayer.merged_weight` in float64)."""
    base = layer.base_layer.weight.detach().double().flatten(1)
    delta = torch.zeros_like(base)
    for name, (start, end) in layer.out_slices.items():
        product = layer.lora_B[name].weight.detach().double().flatten(1) @ layer.lora_A[
            name
        ].weight.detach().double().flatten(1)
        initial = layer.initial_factors(name)
        if initial is not None:
            product = product - initial[1].double().flatten(1) @ initial[0].double().flatten(1)
        delta[start:end] = product
    delta = delta * layer.scaling
    if layer.dora:
        merged = base + delta
        for name, (start, end) in layer.out_slices.items():
            rows = merged[start:end]
            merged[start:end] = rows * (
                layer.lora_magnitude[name].detach().double().flatten() / rows.norm(dim=1)
            ).unsqueeze(1)
        delta = merged - base
    return delta.numpy()


def adapted_weights(model: torch.nn.Module, names) -> dict[str, torch.Tensor]:
    """``module name -> a copy of its weight`` (fp32) for ``names``."""
    return {name: model.get_submodule(name).weight.detach().clone() for name in names}


def phase_updates(model: torch.nn.Module, folder: Path, phases: list[str], *, policy: str) -> Iterator[PhaseUpdate]:
    """Rebuild phase after phase on ``model`` (the pretrained backbone, changed in place: after the last
    phase it holds the last weights). Yields one :class:`PhaseUpdate` per phase; a missing adapter folder
    is a :class:`DataError` naming it."""
    pretrained: dict[str, torch.Tensor] = {}
    for index, phase in enumerate(phases, start=1):
        adapter = Path(folder) / "adapters" / phase
        if not adapter.is_dir():
            raise DataError(
                f"{adapter} is missing but phase {index} committed; the "
                f"run folder is incomplete: rerun 'forgetlab run' on it"
            )
        layers = load_adapter(adapter, model)
        for name in layers:
            pretrained.setdefault(name, model.get_submodule(name).weight.detach().clone())
        if policy == "keep":  # every adapter applies to the pretrained backbone alone
            with torch.no_grad():
                for name in layers:
                    layers[name].base_layer.weight.copy_(pretrained[name])
        update = {name: exact_update(layer) for name, layer in layers.items()}
        ranks = {name: layer.rank * len(layer.out_slices) for name, layer in layers.items()}
        for name, layer in layers.items():
            model.set_submodule(name, layer)
        lora_layers.merge_lora(model)
        yield PhaseUpdate(index, phase, adapted_weights(model, pretrained), update, ranks, pretrained)
