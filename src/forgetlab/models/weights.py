"""A weights file loaded as timm loads its own pretrained weights.

timm's pretrained path (``timm.models.load_pretrained``, called by ``timm.create_model(pretrained=True)``)
adapts a checkpoint to the model it builds: the model family's ``checkpoint_filter_fn`` (for a ViT,
``timm.models.vision_transformer.checkpoint_filter_fn``: position embeddings resampled to the model's
grid by ``resample_abs_pos_embed``, patch embeddings by ``resample_patch_embed``, other checkpoint
layouts converted), then the input convolution adapted to the model's channels
(``timm.models.adapt_input_conv``). A local file (``.safetensors``, a torch state dict or a timm
training checkpoint) goes through the same function, ``load_pretrained``, with the tensors passed in
through the pretrained config's ``state_dict``; so a file and the same bytes in the Hugging Face cache
load alike. The classifier is forgetlab's decision, made before (``backbone.num_classes``: keep the
file's, or 0 to drop it); the load is strict, and what no adaptation fits is a one-line
:class:`~forgetlab.errors.ConfigError` naming the tensor, both shapes and the key to change.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from forgetlab.errors import ConfigError

# Classifier names of timm families whose pretrained config does not give one (forgetlab's offline models).
CLASSIFIERS = ("head", "fc", "head.fc", "classifier")


def classifier_name(name: str, state: dict[str, torch.Tensor]) -> str | None:
    """The key prefix of the classifier in ``state`` for timm model ``name`` (its pretrained config's
    ``classifier``, else the first of :data:`CLASSIFIERS` the file holds), or None (a headless file)."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except (RuntimeError, KeyError, ValueError):  # a name with no pretrained config (forgetlab's offline models)
        cfg = None
    named = getattr(cfg, "classifier", None)
    candidates = (named,) if isinstance(named, str) else tuple(named or ())
    return next((key for key in (*candidates, *CLASSIFIERS) if f"{key}.weight" in state), None)


def classifier_size(name: str, state: dict[str, torch.Tensor]) -> int:
    """The number of classes of the file's classifier (0 without one)."""
    key = classifier_name(name, state)
    return int(state[f"{key}.weight"].shape[0]) if key else 0


def _filter_fn(model: nn.Module):
    """The ``checkpoint_filter_fn`` of the timm module that defines the model's class (the function
    timm's pretrained path gives ``load_pretrained`` for that family), or None where it has none."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The input convolution: the pretrained config's ``first_conv``, else the model's first Conv2d."""
    named = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    modules = dict(model.named_modules())
    if isinstance(named, str) and isinstance(modules.get(named), nn.Conv2d):
        return named, modules[named]
    return next(((key, module) for key, module in modules.items() if isinstance(module, nn.Conv2d)), None)


def load_adapted(model: nn.Module, name: str, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` (a file's tensors) into ``model`` (timm model ``name``) through timm's ``load_pretrained``: the
    family's checkpoint filter, input-channel adaptation, then a strict load. The model's classifier must already have
    the file's size or none (``num_classes=0``): a file's classifier is dropped only then.

    Raises ConfigError naming the first tensor that does not fit, with both shapes and the key to change."""
    from timm.models import load_pretrained

    state = dict(state)
    head = classifier_name(name, state)
    if head and getattr(model, "num_classes", None) == 0:
        state = {key: value for key, value in state.items() if not key.startswith(f"{head}.")}
    first = _first_conv(model)
    file_chans = model_chans = 3
    if first and f"{first[0]}.weight" in state and first[1].groups == 1 and state[f"{first[0]}.weight"].ndim == 4:
        file_chans, model_chans = int(state[f"{first[0]}.weight"].shape[1]), first[1].in_channels
    adapted: dict = {}
    family_filter = _filter_fn(model)

    def filter_fn(checkpoint, target):
        adapted.update(family_filter(checkpoint, target) if family_filter else checkpoint)
        return adapted  # timm adapts the input convolution in this dict

    cfg = {
        "state_dict": state,
        "num_classes": getattr(model, "num_classes", 0),
        "classifier": None,
        "first_conv": first[0] if first else None,
        "input_size": (file_chans, 224, 224),
    }
    try:
        load_pretrained(
            model,
            pretrained_cfg=cfg,
            num_classes=cfg["num_classes"],
            in_chans=model_chans,
            filter_fn=filter_fn,
            strict=True,
        )
    except RuntimeError as error:
        raise ConfigError(misfit(model, adapted or state, source, first[0] if first else None)) from error


def misfit(model: nn.Module, state: dict[str, torch.Tensor], source: str, first_conv: str | None) -> str:
    """The one-line message for a file that does not fit ``model`` after timm's adaptation."""
    expected = model.state_dict()
    for key in expected:
        value = state.get(key)
        if value is not None and tuple(value.shape) != tuple(expected[key].shape):
            fix = (
                "backbone.kwargs.in_chans"
                if first_conv and key.startswith(f"{first_conv}.")
                else "backbone.name or backbone.kwargs (to the architecture the file was saved from)"
            )
            return (
                f"{source}: tensor {key} has shape {tuple(value.shape)} in the file and "
                f"{tuple(expected[key].shape)} in the model as configured; change {fix}"
            )
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing:
        return (
            f"{source}: the model as configured needs tensor {missing[0]} "
            f"{tuple(expected[missing[0]].shape)} ({len(missing)} missing in all), "
            f"which the file lacks; change backbone.name or backbone.kwargs (e.g. depth)"
        )
    first = unexpected[0] if unexpected else "?"
    return (
        f"{source}: the file holds tensor {first} "
        f"{tuple(state[first].shape) if first in state else ''} that the model as configured has no "
        f"place for ({len(unexpected)} in all); change backbone.name or backbone.kwargs (e.g. depth)"
    )
