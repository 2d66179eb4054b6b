"""LoRA adapters on disk, in PEFT's format, so that a task's adapter loads into ``peft`` unchanged.

A folder holds ``adapter_model.safetensors`` (keys ``base_model.model.<module>.lora_A.weight`` /
``lora_B.weight``) and PEFT's ``adapter_config.json``, plus ``forgetlab_adapter.json`` with what PEFT
has no field for (the task, and the row slices of sliced adapters).

PEFT adapts whole layers, while paper 2's LoRA on timm's fused ``qkv`` adapts only the query and
value rows. Such an adapter is written exactly as a whole-layer adapter of rank ``n x r`` (``n``
slices): ``A`` stacks the slices' ``A`` s, ``B`` is block-diagonal with each slice's ``B`` in its own
rows and zeros elsewhere (so the key rows get no update), and ``lora_alpha`` is ``n x alpha`` so the
scaling ``alpha / r`` is unchanged. Reading it back recovers the slices exactly.

The variants are written with the flags PEFT needs to rebuild them: ``use_rslora`` (rsLoRA; the alpha
of a packed adapter then grows as ``sqrt(n)`` so that ``alpha / sqrt(r)`` is unchanged), ``use_dora``
with DoRA's magnitude under ``<module>.lora_magnitude_vector`` (``out`` values, ``1 x out x 1 x 1`` for
a convolution; rows outside every slice hold their weight norm, i.e. a rescaling of exactly 1), and
``init_lora_weights`` (``"gaussian"`` for that init). A PiSSA / OLoRA adapter is written as PEFT's
own ``save_pretrained(path_initial_model_for_weight_conversion=...)`` writes one: as a plain LoRA of
twice the rank, ``A' = [A; A0]``, ``B' = [B, -B0]`` (so ``B' A' = B A - B0 A0``), with
``init_lora_weights: true``, so that it loads onto the unmodified base weight of its task.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from forgetlab.errors import DataError
from forgetlab.models.lora_layers import PRINCIPAL_INITS, LoRAConv2d, LoRALayer, LoRALinear
from forgetlab.results import atomic_write_text, save_safetensors

PREFIX = "base_model.model."
WEIGHTS, PEFT_CONFIG, OWN_CONFIG = "adapter_model.safetensors", "adapter_config.json", "forgetlab_adapter.json"


def _slice_factors(layer: LoRALayer, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` of slice ``name``; PiSSA / OLoRA: ``([A; A0], [B, -B0])`` (twice the rank)."""
    a, b = layer.lora_A[name].weight.detach(), layer.lora_B[name].weight.detach()
    initial = layer.initial_factors(name)
    if initial is not None:
        a, b = torch.cat([a, initial[0]]), torch.cat([b, -initial[1]], dim=1)
    return a, b


def _multiple(layer: LoRALayer) -> int:
    """How many times the layer's rank the written whole-layer adapter's rank is."""
    return len(layer.out_slices) * (2 if layer.init in PRINCIPAL_INITS else 1)


def _whole_layer_factors(layer: LoRALayer) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` of the equivalent whole-layer adapter (rank ``n x r`` for ``n`` slices, doubled for
    PiSSA / OLoRA)."""
    if list(layer.out_slices) == ["all"]:
        return _slice_factors(layer, "all")
    slices = sorted(layer.out_slices.items(), key=lambda item: item[1])
    pairs = [_slice_factors(layer, name) for name, _ in slices]
    a = torch.cat([pair[0] for pair in pairs])
    b = a.new_zeros(layer.base_layer.out_features, a.shape[0])
    cursor = 0
    for (start, end), (_, slice_b) in zip((span for _, span in slices), pairs):
        b[start:end, cursor : cursor + slice_b.shape[1]] = slice_b
        cursor += slice_b.shape[1]
    return a, b


def _whole_layer_magnitude(layer: LoRALayer) -> torch.Tensor:
    """DoRA's magnitude over every output row: the slices' own, the weight norm elsewhere (a rescaling of 1)."""
    weight = layer.base_layer.weight.detach().float()
    magnitude = weight.flatten(1).norm(dim=1)
    for name, (start, end) in layer.out_slices.items():
        magnitude[start:end] = layer.lora_magnitude[name].detach().float()
    magnitude = magnitude.to(layer.base_layer.weight.dtype)
    return magnitude.view(1, -1, 1, 1) if isinstance(layer, LoRAConv2d) else magnitude


def save_adapter(folder: Path, layers: dict[str, LoRALayer], *, task: str, base_model: str, dropout: float) -> None:
    """Write ``layers`` (module name -> LoRA layer, names relative to the timm model) to ``folder``.
    All layers share one variant (the method's)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors, ranks, alphas, own = {}, {}, {}, {}
    for name, layer in layers.items():
        a, b = _whole_layer_factors(layer)
        tensors[f"{PREFIX}{name}.lora_A.weight"] = a.contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = b.contiguous()
        if layer.dora:
            tensors[f"{PREFIX}{name}.lora_magnitude_vector"] = _whole_layer_magnitude(layer).contiguous()
        n = _multiple(layer)
        ranks[name] = layer.rank * n
        alphas[name] = layer.alpha * (math.sqrt(n) if layer.scaling_kind == "rslora" else n)  # the same s at rank n r
        own[name] = {
            "kind": "conv" if isinstance(layer, LoRAConv2d) else "linear",
            "rank": layer.rank,
            "alpha": layer.alpha,
            "out_slices": None if isinstance(layer, LoRAConv2d) else {k: list(v) for k, v in layer.out_slices.items()},
            "scaling": layer.scaling_kind,
            "dora": layer.dora,
            "init": layer.init,
        }
    rank = max(ranks.values(), key=list(ranks.values()).count)  # the most common one; others by pattern
    alpha = max(alphas.values(), key=list(alphas.values()).count)
    first = next(iter(layers.values()))
    peft_config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": sorted(layers),
        "rank_pattern": {name: r for name, r in ranks.items() if r != rank},
        "alpha_pattern": {name: a for name, a in alphas.items() if a != alpha},
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": first.scaling_kind == "rslora",
        "use_dora": first.dora,
        # PiSSA / OLoRA are written converted to plain LoRA (see above), as PEFT's conversion writes them.
        "init_lora_weights": "gaussian" if first.init == "gaussian" else True,
        "modules_to_save": None,
        "inference_mode": True,
    }
    save_safetensors(folder / WEIGHTS, tensors)
    atomic_write_text(folder / PEFT_CONFIG, json.dumps(peft_config, indent=2))
    atomic_write_text(folder / OWN_CONFIG, json.dumps({"task": task, "layers": own}, indent=2))


def load_adapter(folder: Path, model: nn.Module, dropout: float = 0.0) -> dict[str, LoRALayer]:
    """LoRA layers around ``model``'s modules with the weights stored in ``folder`` (not attached)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / WEIGHTS).exists() or not (folder / OWN_CONFIG).exists():
        raise DataError(
            f"{folder} holds no forgetlab adapter ({WEIGHTS} and {OWN_CONFIG}); give a task's adapter folder"
        )
    tensors = load_file(str(folder / WEIGHTS))
    layers = {}
    for name, spec in json.loads((folder / OWN_CONFIG).read_text())["layers"].items():
        base = model.get_submodule(name)
        base = base.base_layer if isinstance(base, LoRALayer) else base
        a, b = tensors[f"{PREFIX}{name}.lora_A.weight"], tensors[f"{PREFIX}{name}.lora_B.weight"]
        # Files written before the variants existed hold plain LoRA.
        variant = {
            "scaling": spec.get("scaling", "standard"),
            "dora": spec.get("dora", False),
            "init": spec.get("init", "kaiming"),
        }
        rank, width = spec["rank"], spec["rank"] * (2 if variant["init"] in PRINCIPAL_INITS else 1)
        if spec["kind"] == "conv":
            layer = LoRAConv2d(base, rank, spec["alpha"], dropout, **variant)
        else:
            layer = LoRALinear(
                base, rank, spec["alpha"], dropout, {k: tuple(v) for k, v in spec["out_slices"].items()}, **variant
            )
        with torch.no_grad():
            for i, (slice_name, (start, end)) in enumerate(sorted(layer.out_slices.items(), key=lambda item: item[1])):
                slice_a, slice_b = a[i * width : (i + 1) * width], b[start:end, i * width : (i + 1) * width]
                layer.lora_A[slice_name].weight.copy_(slice_a[:rank].reshape(layer.lora_A[slice_name].weight.shape))
                layer.lora_B[slice_name].weight.copy_(slice_b[:, :rank].reshape(layer.lora_B[slice_name].weight.shape))
                initial = layer.initial_factors(slice_name)
                if initial is not None:
                    initial[0].copy_(slice_a[rank:].reshape(initial[0].shape))
                    initial[1].copy_(-slice_b[:, rank:].reshape(initial[1].shape))
                if variant["dora"]:
                    magnitude = tensors[f"{PREFIX}{name}.lora_magnitude_vector"].flatten()
                    layer.lora_magnitude[slice_name].copy_(magnitude[start:end])
        layers[name] = layer
    return layers
