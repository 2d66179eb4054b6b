"""LoRA adapters on disk, in PEFT's format, so that a task's adapter loads into ``peft`` unchanged.

A folder holds ``adapter_model.safetensors`` (keys ``base_model.model.<module>.lora_A.weight`` /
``lora_B.weight``) and PEFT's ``adapter_config.json``, plus ``forgetlab_adapter.json`` with what PEFT
has no field for (the task, and the row slices of sliced adapters).

PEFT adapts whole layers, while paper 2's LoRA on timm's fused ``qkv`` adapts only the query and
value rows. Such an adapter is written exactly as a whole-layer adapter of rank ``n x r`` (``n``
slices): ``A`` stacks the slices' ``A`` s, ``B`` is block-diagonal with each slice's ``B`` in its own
rows and zeros elsewhere (so the key rows get no update), and ``lora_alpha`` is ``n x alpha`` so the
scaling ``alpha / r`` is unchanged. Reading it back recovers the slices exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from forgetlab.errors import DataError
from forgetlab.models.lora_layers import LoRAConv2d, LoRALayer, LoRALinear
from forgetlab.results import atomic_write_text, save_safetensors

PREFIX = "base_model.model."
WEIGHTS, PEFT_CONFIG, OWN_CONFIG = "adapter_model.safetensors", "adapter_config.json", "forgetlab_adapter.json"


def _whole_layer_factors(layer: LoRALayer) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` of the equivalent whole-layer adapter (rank ``n x r`` for ``n`` slices)."""
    if isinstance(layer, LoRAConv2d) or list(layer.out_slices) == ["all"]:
        return layer.lora_A["all"].weight.detach(), layer.lora_B["all"].weight.detach()
    slices = sorted(layer.out_slices.items(), key=lambda item: item[1])
    a = torch.cat([layer.lora_A[name].weight.detach() for name, _ in slices])
    b = a.new_zeros(layer.base_layer.out_features, a.shape[0])
    for i, (name, (start, end)) in enumerate(slices):
        b[start:end, i * layer.rank : (i + 1) * layer.rank] = layer.lora_B[name].weight.detach()
    return a, b


def save_adapter(folder: Path, layers: dict[str, LoRALayer], *, task: str, base_model: str, dropout: float) -> None:
    """Write ``layers`` (module name -> LoRA layer, names relative to the timm model) to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors, ranks, alphas, own = {}, {}, {}, {}
    for name, layer in layers.items():
        a, b = _whole_layer_factors(layer)
        tensors[f"{PREFIX}{name}.lora_A.weight"] = a.contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = b.contiguous()
        n = 1 if isinstance(layer, LoRAConv2d) else len(layer.out_slices)
        ranks[name], alphas[name] = layer.rank * n, layer.alpha * n
        own[name] = {
            "kind": "conv" if isinstance(layer, LoRAConv2d) else "linear",
            "rank": layer.rank,
            "alpha": layer.alpha,
            "out_slices": None if isinstance(layer, LoRAConv2d) else {k: list(v) for k, v in layer.out_slices.items()},
        }
    rank = max(ranks.values(), key=list(ranks.values()).count)  # the most common one; others by pattern
    alpha = max(alphas.values(), key=list(alphas.values()).count)
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
        "init_lora_weights": True,
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
        raise DataError(f"{folder} holds no forgetlab adapter ({WEIGHTS} and {OWN_CONFIG}); give a task's adapter folder")
    tensors = load_file(str(folder / WEIGHTS))
    layers = {}
    for name, spec in json.loads((folder / OWN_CONFIG).read_text())["layers"].items():
        base = model.get_submodule(name)
        base = base.base_layer if isinstance(base, LoRALayer) else base
        a, b = tensors[f"{PREFIX}{name}.lora_A.weight"], tensors[f"{PREFIX}{name}.lora_B.weight"]
        rank = spec["rank"]
        if spec["kind"] == "conv":
            layer = LoRAConv2d(base, rank, spec["alpha"], dropout)
            pairs = {"all": (a, b)}
        else:
            slices = {k: tuple(v) for k, v in spec["out_slices"].items()}
            layer = LoRALinear(base, rank, spec["alpha"], dropout, slices)
            ordered = sorted(slices.items(), key=lambda item: item[1])
            pairs = {
                slice_name: (a[i * rank : (i + 1) * rank], b[start:end, i * rank : (i + 1) * rank])
                for i, (slice_name, (start, end)) in enumerate(ordered)
            }
        with torch.no_grad():
            for slice_name, (slice_a, slice_b) in pairs.items():
                layer.lora_A[slice_name].weight.copy_(slice_a)
                layer.lora_B[slice_name].weight.copy_(slice_b)
        layers[name] = layer
    return layers
