"""Loading a pretrained backbone together with its upstream head and label space.

* ``offline_vit`` / ``offline_resnet``: pretrained on the offline upstream task by
  ``forgetlab pretrain`` and cached in ``$FORGETLAB_HOME/backbones``; built on first use.
* any timm model name with ``backbone.weights``: a local ``.safetensors`` or timm/torch checkpoint,
  loaded with ``weights_only=True``.
* a timm name with a pretrained tag (``vit_base_patch16_224.augreg_in1k``) and no ``weights``: timm's
  own weights from the Hugging Face cache, or downloaded when online. The upstream head comes with them
  (ImageNet-1k: 1000 classes in sorted-wnid order); DINO has no head (use the k-NN evaluator).
* ``random_init``: the architecture with random weights, for smoke tests of the real pipeline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from torch import nn

from forgetlab import paths
from forgetlab.errors import ConfigError, DataError
from forgetlab.models import offline as _offline  # noqa: F401  (registers the offline models with timm)
from forgetlab.models.offline import OFFLINE_BACKBONES

BACKBONE_VERSION = 1


@dataclass
class Backbone:
    model: nn.Module  # a timm model; its classifier is the upstream head
    name: str
    classes: list[str] = field(default_factory=list)  # the upstream label space, in head order
    recipe: dict = field(default_factory=dict)  # how it was pretrained


def offline_backbone_dir(name: str) -> Path:
    return paths.home() / "backbones" / f"{name}-v{BACKBONE_VERSION}"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file or a torch checkpoint (``weights_only=True``)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"weights file {path} not found; check backbone.weights")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:
            raise DataError(f"{path} is not a readable .safetensors file ({error})") from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise DataError(f"{path} is not a readable checkpoint ({type(error).__name__}); give .safetensors or a state dict") from error
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path} holds no state dict of tensors")
    return state


def _timm_model(name: str, **kwargs) -> nn.Module:
    """``timm.create_model``, without ``img_size`` for architectures that take any input size and no
    such argument (ResNet, ConvNeXt); any other keyword the architecture refuses is a ConfigError."""
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as error:
        if "img_size" in str(error) and "img_size" in kwargs:
            return _timm_model(name, **{k: v for k, v in kwargs.items() if k != "img_size"})
        raise ConfigError(f"timm's {name} refuses its arguments ({error}); check backbone.kwargs and backbone.image_size") from error


def create(name: str, num_classes: int, **kwargs) -> nn.Module:
    if not timm.is_model(name.split(".")[0]):
        raise ConfigError(f"unknown backbone '{name}'; use offline_vit, offline_resnet or a timm model name")
    try:
        return _timm_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - a value the architecture cannot be built with (sizes, depths)
        if not kwargs:
            raise
        raise ConfigError(f"timm cannot build {name} with {kwargs} ({type(error).__name__}: {str(error)[:100]}); "
                          "check backbone.kwargs and backbone.image_size") from error  # fmt: skip


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise DataError(
            f"{source} does not fit this architecture (missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}); check backbone.name"
        )


def _create_kwargs(config) -> dict:
    """``backbone.kwargs``, and ``img_size`` when ``backbone.image_size`` is set (:func:`create` drops it
    for architectures that take any size and no such argument, as convolutional networks)."""
    kwargs = dict(getattr(config, "kwargs", None) or {})
    if getattr(config, "image_size", None):
        kwargs.setdefault("img_size", config.image_size)
    return kwargs


def _from_hub(config) -> Backbone:
    try:
        model = _timm_model(config.name, pretrained=True, **_create_kwargs(config))
    except ConfigError:
        raise
    except Exception as error:  # no cache and no network, or a name without weights
        architecture, _, tag = config.name.partition(".")
        raise DataError(
            f"no weights for {config.name} (not in the Hugging Face cache, and no download: {type(error).__name__}); "
            f"download model.safetensors from https://huggingface.co/timm/{config.name} and set backbone.weights=/path/to/model.safetensors"
        ) from error
    return Backbone(model=model.eval(), name=config.name, recipe={"source": "timm pretrained", "tag": config.name.partition(".")[2]})


def load_backbone(config, *, pretrain_if_missing: bool = True, device=None) -> Backbone:
    if getattr(config, "random_init", False):
        num_classes = 1000 if config.num_classes is None else config.num_classes
        with torch.random.fork_rng(devices=[]):  # the same random weights every time: smoke runs resume and caches hit
            torch.manual_seed(0)
            model = create(config.name, num_classes=num_classes, **_create_kwargs(config))
        return Backbone(model=model.eval(), name=config.name, recipe={"source": "random init (smoke test)"})
    if config.name in OFFLINE_BACKBONES and config.weights is None:
        folder = offline_backbone_dir(config.name)
        if not (folder / "model.safetensors").exists():
            if not pretrain_if_missing:
                raise DataError(f"backbone {config.name} is not built; run: forgetlab pretrain --backbone {config.name}")
            from forgetlab.pretrain import pretrain

            print(f"forgetlab: {config.name} is not in the cache yet; pretraining it once into {folder}", flush=True)
            pretrain(config.name, device=device)
        return _load_folder(config.name, folder)
    if config.weights is None:
        if "." in config.name:
            return _from_hub(config)
        raise DataError(
            f"no weights for backbone '{config.name}': set backbone.weights=/path/to/model.safetensors "
            "(or a timm/torch checkpoint), or name timm's pretrained weights, e.g. vit_base_patch16_224.augreg_in1k"
        )
    weights = Path(config.weights)
    recipe_file = weights.with_name("recipe.json")
    recipe = json.loads(recipe_file.read_text()) if recipe_file.exists() else {}
    state = read_state_dict(weights)
    head_weight = _head_weight(state)
    model = create(config.name, num_classes=head_weight.shape[0] if head_weight is not None else 0, **_create_kwargs(config))
    load_weights(model, state, str(weights))
    return Backbone(model=model.eval(), name=config.name, classes=recipe.get("classes", []), recipe=recipe)


def _head_weight(state: dict[str, torch.Tensor]) -> torch.Tensor | None:
    for key in ("head.weight", "fc.weight", "head.fc.weight", "classifier.weight"):
        if key in state:
            return state[key]
    return None


def _load_folder(name: str, folder: Path) -> Backbone:
    recipe = json.loads((folder / "recipe.json").read_text())
    model = create(name, num_classes=len(recipe["classes"]))
    load_weights(model, read_state_dict(folder / "model.safetensors"), str(folder))
    return Backbone(model=model.eval(), name=name, classes=recipe["classes"], recipe=recipe)
