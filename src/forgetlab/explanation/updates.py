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

The other methods store each phase's update when the run was asked to (``save.updates=true``:
``updates/<phase>.safetensors``, :mod:`forgetlab.run_updates`). :func:`stored_updates` replays the run
on the pretrained backbone: per phase the method prepares the backbone as the run did (block expansion
inserts its identity copies there) and each stored delta is added with its exact values, so the
weights after phase ``t`` are the run's, bit for bit. Its views are per backbone *parameter*
(``blocks.3.attn.qkv.weight``, ``pos_embed``): ``weights`` and ``pretrained`` hold every parameter some
phase up to ``t`` changed; ``update`` the float64 ``W_after - W_before`` of each linear or convolution
weight the phase changed, keyed by its module as for LoRA. A tensor's reference (``pretrained``) is its
value before the first phase that changed it: the pretrained weight, or for a block that block expansion
inserted, the identity copy it was inserted as (its own output projections zero). Such a block is new in
its phase, so its spectra compare it with what it was inserted as, never with a pretrained matrix
(``PhaseUpdate.fresh``). A run without stored updates is refused in one line naming ``save.updates=true``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from forgetlab import run_updates
from forgetlab.errors import ConfigError, DataError
from forgetlab.models import lora_layers
from forgetlab.models.adapter_files import load_adapter
from forgetlab.results import RunFolder


@dataclass
class PhaseUpdate:
    """What phase ``index`` (1-based, the matrix row) did to the adapted matrices."""

    index: int
    name: str
    weights: dict[str, torch.Tensor]  # module name -> fp32 weight after the phase (the run's)
    update: dict[str, np.ndarray]  # module name -> float64 ``out x (in kh kw)`` update of this phase alone
    ranks: dict[str, int]  # module name -> the adapter's rank (slices x rank, PEFT's ``r``)
    pretrained: dict[str, torch.Tensor]  # module name -> fp32 pretrained weight (shared by every phase)
    # Stored updates (methods other than LoRA): weights and pretrained are keyed by backbone parameter, the
    # spectra's reference matrices by module (``references``), and ``structure`` is the backbone after the
    # phase when the method changed its architecture (block expansion), for the scorer to copy.
    by_parameter: bool = False
    references: dict[str, torch.Tensor] = field(default_factory=dict)
    structure: torch.nn.Module | None = None
    fresh: bool = False  # every matrix the phase changed is new (an inserted block): no cumulative, no overlap

    def reference(self, module: str) -> torch.Tensor:
        """The matrix ``module``'s update is compared with (``||dW|| / ||W0||``, intruders)."""
        return self.references[module] if self.by_parameter else self.pretrained[module]


def check_explainable(config, folder: Path) -> None:
    """Refuse a run whose updates cannot be rebuilt: one line naming what is needed."""
    if config.method.name != "lora" and not config.save.updates:
        raise ConfigError(
            f"{folder} is a {config.method.name} run that stored no per-phase updates; 'forgetlab explain' rebuilds "
            "them from a LoRA run's adapters (method.name=lora) or from the updates/ a run of any other method "
            "writes with save.updates=true: run it again with save.updates=true"
        )


def rebuild(config, model: torch.nn.Module, folder: Path, phases: list[str]) -> Iterator[PhaseUpdate]:
    """Every phase's :class:`PhaseUpdate` of the run in ``folder`` on ``model`` (its pretrained backbone):
    from the adapters of a LoRA run (:func:`phase_updates`), from ``updates/`` otherwise (:func:`stored_updates`)."""
    if config.method.name == "lora":
        return phase_updates(model, folder, phases, policy=config.method.policy)
    return stored_updates(model, folder, phases, config)


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


def stored_updates(model: torch.nn.Module, folder: Path, phases: list[str], config) -> Iterator[PhaseUpdate]:
    """Replay a run that stored its updates (``save.updates=true``) on ``model`` (the pretrained
    backbone, changed in place: it ends as the run's last backbone). Per phase: the method's own
    ``prepare`` (block expansion inserts its blocks), then every tensor of ``updates/<phase>.safetensors``
    added exactly (:func:`forgetlab.run_updates.apply`). A missing file is a :class:`DataError` naming it."""
    from forgetlab.methods import build_method
    from forgetlab.models.multihead import MultiHeadModel

    method, wrapper = build_method(config.method), MultiHeadModel(model)
    references: dict[torch.nn.Parameter, torch.Tensor] = {}  # parameter -> its value before its first update
    for index, phase in enumerate(phases, start=1):
        existing = set(model.parameters())
        method.prepare(wrapper, phase)
        model.requires_grad_(False)
        changed = set(model.parameters()) != existing  # the method changed the architecture (inserted blocks)
        update, updated = {}, []
        modules = dict(model.named_modules())
        for name, (delta, exact) in run_updates.read(run_updates.updates_path(RunFolder(folder), phase)).items():
            parameter = model.get_parameter(name)
            updated.append(parameter)
            start = parameter.detach().to("cpu", torch.float32).clone()
            references.setdefault(parameter, start)
            with torch.no_grad():
                parameter.copy_(run_updates.apply(start, delta, exact))
            module, _, leaf = name.rpartition(".")
            if leaf == "weight" and isinstance(modules.get(module), (torch.nn.Linear, torch.nn.Conv2d)):
                update[module] = (parameter.detach().double() - start.double()).flatten(1).numpy()
        fresh = bool(updated) and not existing.intersection(updated)  # only tensors new in this phase trained
        yield _stored_phase(model, references, index, phase, update, changed=changed, fresh=fresh)


def _stored_phase(
    model, references: dict, index: int, phase: str, update: dict, *, changed: bool, fresh: bool
) -> PhaseUpdate:
    """The :class:`PhaseUpdate` of a replayed phase: every parameter changed so far, under its name now."""
    names = {parameter: name for name, parameter in model.named_parameters()}
    weights = {names[p]: p.detach().to("cpu", torch.float32).clone() for p in references}
    pretrained = {names[p]: reference for p, reference in references.items()}
    return PhaseUpdate(
        index,
        phase,
        weights,
        update,
        {},
        pretrained,
        by_parameter=True,
        references={module: pretrained[f"{module}.weight"] for module in update},
        structure=model if changed else None,
        fresh=fresh,
    )
