"""Loading a pretrained backbone together with its upstream head and label space.

* ``offline_vit`` / ``offline_resnet``: pretrained on the offline upstream task by
  ``forgetlab pretrain`` and cached in ``$FORGETLAB_HOME/backbones``; built on first use.
* any timm model name with ``backbone.weights``: a local ``.safetensors`` or timm/torch checkpoint,
  loaded with ``weights_only=True``.
* a timm name with a pretrained tag (``vit_base_patch16_224.augreg_in1k``) and no ``weights``: timm's
  own weights from the Hugging Face cache (no network access then), or downloaded when online; an
  untagged name takes timm's default tag, as ``timm.create_model`` does. ``HF_HUB_OFFLINE=1`` or an
  unreachable hub is a one-line error at once, not after huggingface_hub's retries. A name timm does
  not know is refused with the closest timm names. The upstream head comes with them
  (ImageNet-1k: 1000 classes in sorted-wnid order); DINO has no head (use the k-NN evaluator).
* ``random_init``: the architecture with random weights, for smoke tests of the real pipeline.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from torch import nn

from forgetlab import caches, paths
from forgetlab.errors import ConfigError, DataError
from forgetlab.models import offline as _offline  # noqa: F401  (registers the offline models with timm)
from forgetlab.models.offline import OFFLINE_ARGS, OFFLINE_BACKBONES, PRETRAIN_RECIPES, PRETRAIN_SEED

BACKBONE_VERSION = caches.FORMATS["backbones"]


@dataclass
class Backbone:
    model: nn.Module  # a timm model; its classifier is the upstream head
    name: str
    classes: list[str] = field(default_factory=list)  # the upstream label space, in head order
    recipe: dict = field(default_factory=dict)  # how it was pretrained


def offline_backbone_dir(name: str, recipe: dict | None = None) -> Path:
    """Where the offline backbone ``name`` pretrained with ``recipe`` (default: its own) is cached:
    ``$FORGETLAB_HOME/backbones/<name>-v<format>-<key>`` (:func:`forgetlab.caches.offline_backbone_key`)."""
    recipe = PRETRAIN_RECIPES[name] if recipe is None else recipe
    key = caches.offline_backbone_key(name, OFFLINE_ARGS[name], recipe, PRETRAIN_SEED, caches.FORMATS["offline-world"])
    return paths.home() / "backbones" / f"{name}-v{BACKBONE_VERSION}-{key}"


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
        raise DataError(
            f"{path} is not a readable checkpoint ({type(error).__name__}); give .safetensors or a state dict"
        ) from error
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path} holds no state dict of tensors")
    return state


def _timm_model(name: str, **kwargs) -> nn.Module:
    """``timm.create_model``, without ``img_size`` for architectures that take any input size and no
    such argument (ResNet, ConvNeXt); any other keyword the architecture refuses is a ConfigError.
    The model keeps the arguments it was built with (``forgetlab_model_args``, read by
    :func:`forgetlab.caches.model_arguments`: part of the k-NN bank's key)."""
    try:
        model = timm.create_model(name, **kwargs)
        where = ("pretrained", "pretrained_cfg_overlay")  # where the weights come from: their digest covers them
        model.forgetlab_model_args = {"model_name": name, **{k: v for k, v in kwargs.items() if k not in where}}
        return model
    except TypeError as error:
        if "img_size" in str(error) and "img_size" in kwargs:
            return _timm_model(name, **{k: v for k, v in kwargs.items() if k != "img_size"})
        raise ConfigError(
            f"timm's {name} refuses its arguments ({error}); check backbone.kwargs and backbone.image_size"
        ) from error


def closest_names(typed: str, names: list[str], n: int = 3) -> list[str]:
    """The ``n`` names closest to ``typed``: ``difflib``'s similarity ratio, raised for a name that starts
    with what was typed (+0.5) and for one of the same family, its first ``_``-separated word (+0.25),
    then by the length of the shared prefix (+0.01 a character); so ``vit_tiny`` suggests
    ``vit_tiny_patch16_224`` before ``gcvit_tiny``."""
    import difflib
    import os

    family = typed.split("_")[0]

    def score(name: str) -> float:
        ratio = difflib.SequenceMatcher(None, typed, name).ratio()
        prefix = len(os.path.commonprefix([typed, name]))
        return ratio + 0.5 * name.startswith(typed) + 0.25 * (name.split("_")[0] == family) + 0.01 * prefix

    scored = sorted(((score(name), name) for name in names), key=lambda item: (-item[0], item[1]))
    return [name for value, name in scored[:n] if value >= 0.6]


def check_backbone_name(name: str) -> None:
    """Refuse a name timm does not know, naming the closest timm names (:func:`closest_names` over
    ``timm.list_models()``), and a pretrained tag timm does not have for that architecture, naming its
    closest tags (``timm.list_pretrained``)."""
    import difflib

    architecture, _, tag = name.partition(".")
    if not timm.is_model(architecture):
        closest = closest_names(architecture, timm.list_models())
        if closest:
            raise ConfigError(
                f"unknown backbone '{name}'; closest timm names: {', '.join(closest)} (or offline_vit, offline_resnet)"
            )
        raise ConfigError(
            f"unknown backbone '{name}'; use offline_vit, offline_resnet "
            f"or a timm model name (timm.list_models() lists them)"
        )
    if tag:
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{architecture}.*")]
        if tag not in tags:
            closest = difflib.get_close_matches(tag, tags, n=3, cutoff=0.4) or tags[:3]
            hint = (
                f"closest of its {len(tags)} tags: {', '.join(f'{architecture}.{t}' for t in closest)}"
                if tags
                else "it has none"
            )
            raise ConfigError(
                f"unknown backbone '{name}': timm has no pretrained tag '{tag}' for {architecture}; {hint}"
            )


def create(name: str, num_classes: int, **kwargs) -> nn.Module:
    check_backbone_name(name)
    try:
        return _timm_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - a value the architecture cannot be built with (sizes, depths)
        if not kwargs:
            raise
        raise ConfigError(
            f"timm cannot build {name} with {kwargs} ({type(error).__name__}: {str(error)[:100]}); "
            "check backbone.kwargs and backbone.image_size"
        ) from error


def _create_kwargs(config) -> dict:
    """``backbone.kwargs``, and ``img_size`` when ``backbone.image_size`` is set (:func:`create` drops it
    for architectures that take any size and no such argument, as convolutional networks)."""
    kwargs = dict(config.kwargs or {})
    if config.image_size:
        kwargs.setdefault("img_size", config.image_size)
    return kwargs


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` set to a true value (as huggingface_hub reads it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``, default huggingface.co) answers a TCP connection
    within ``timeout`` seconds: without one, huggingface_hub retries for about 50 s before failing."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout
        ):
            return True
    except OSError:
        return False


def cached_hub_file(pretrained_cfg) -> Path | None:
    """The weights of a timm pretrained config in the Hugging Face cache (``model.safetensors``, or
    ``pytorch_model.bin``), or None when they are not there."""
    from huggingface_hub import constants, try_to_load_from_cache

    repo = pretrained_cfg.hf_hub_id
    if not repo:
        return None
    for filename in (
        [pretrained_cfg.hf_hub_filename]
        if pretrained_cfg.hf_hub_filename
        else ["model.safetensors", "pytorch_model.bin"]
    ):
        found = try_to_load_from_cache(repo, filename, cache_dir=constants.HF_HUB_CACHE)
        if isinstance(found, str):
            return Path(found)
    return None


def _from_hub(config) -> Backbone:
    """timm's pretrained weights: from the Hugging Face cache without any network access, else
    downloaded by timm; refused at once (no retries) when ``HF_HUB_OFFLINE`` is set or the hub is
    unreachable. An untagged name takes timm's default tag, as ``timm.create_model`` does."""
    from timm.models import get_pretrained_cfg

    architecture, _, tag = config.name.partition(".")
    pretrained_cfg = get_pretrained_cfg(config.name)
    if pretrained_cfg is None:
        raise DataError(
            f"timm has no pretrained weights for {config.name}; set backbone.weights=/path/to/model.safetensors "
            "(or backbone.random_init=true for a smoke run)"
        )
    full_name = f"{architecture}.{pretrained_cfg.tag}" if pretrained_cfg.tag else architecture
    named = config.name if tag else f"{config.name} (timm's default tag: {full_name})"
    cached = cached_hub_file(pretrained_cfg)
    overlay = {"pretrained_cfg_overlay": {"file": str(cached)}} if cached else {}
    if cached is None and pretrained_cfg.hf_hub_id:
        where = f"https://huggingface.co/{pretrained_cfg.hf_hub_id}"
        fix = (
            f"download model.safetensors from {where} and set backbone.weights=/path/to/model.safetensors, "
            "or run once with network access to fill the cache"
        )
        if hub_offline():
            raise DataError(
                f"the weights of {named} are not in the Hugging Face "
                f"cache and HF_HUB_OFFLINE=1 forbids the download; {fix}"
            )
        if not hub_reachable():
            raise DataError(
                f"the weights of {named} are not in the Hugging Face cache and the hub is unreachable "
                f"(set HF_HUB_OFFLINE=1 on a machine without network to skip this check); {fix}"
            )
        print(f"forgetlab: downloading {full_name} from {where} into the Hugging Face cache", flush=True)
    try:
        model = _timm_model(full_name, pretrained=True, **overlay, **_create_kwargs(config))
    except ConfigError:
        raise
    except Exception as error:  # a failed download, or a damaged cached file
        source = str(cached) if cached else f"https://huggingface.co/{pretrained_cfg.hf_hub_id or 'timm/' + full_name}"
        raise DataError(
            f"could not load the weights of {named} from {source} ({type(error).__name__}: {str(error)[:120]}); "
            "download model.safetensors there and set backbone.weights=/path/to/model.safetensors"
        ) from error
    return Backbone(
        model=model.eval(), name=config.name, recipe={"source": "timm pretrained", "tag": pretrained_cfg.tag or ""}
    )


def load_backbone(config) -> Backbone:
    """The backbone ``config`` names (a :class:`~forgetlab.config.BackboneConfig`), in eval mode on the
    CPU: random weights (``random_init``), a weights file, an offline backbone from ``FORGETLAB_HOME``,
    or timm's pretrained weights from the local Hugging Face cache or the hub.

    Raises ConfigError for an unknown name and DataError for missing or unreadable weights; an offline
    backbone not built yet is a DataError too: building it is the caller's explicit step
    (:func:`forgetlab.pretrain.ensure_pretrained`), never a side effect of loading."""
    check_backbone_name(config.name)
    if config.random_init:
        num_classes = 1000 if config.num_classes is None else config.num_classes
        with torch.random.fork_rng(devices=[]):  # the same random weights every time: smoke runs resume and caches hit
            torch.manual_seed(0)
            model = create(config.name, num_classes=num_classes, **_create_kwargs(config))
        return Backbone(model=model.eval(), name=config.name, recipe={"source": "random init (smoke test)"})
    if config.name in OFFLINE_BACKBONES and config.weights is None:
        folder = offline_backbone_dir(config.name)
        if not (folder / "model.safetensors").exists():
            raise DataError(f"backbone {config.name} is not built; run: forgetlab pretrain --backbone {config.name}")
        return _from_file(config, folder / "model.safetensors", json.loads((folder / "recipe.json").read_text()))
    if config.weights is None:
        return _from_hub(config)
    weights = Path(config.weights)
    recipe_file = weights.with_name("recipe.json")
    return _from_file(config, weights, json.loads(recipe_file.read_text()) if recipe_file.exists() else {})


def _from_file(config, weights: Path, recipe: dict) -> Backbone:
    """A weights file loaded as timm loads its pretrained weights (see :mod:`forgetlab.models.weights`)."""
    from forgetlab.models.weights import classifier_size, load_adapted

    state = read_state_dict(weights)
    file_classes = classifier_size(config.name, state)
    num_classes = file_classes if config.num_classes is None else config.num_classes
    if num_classes not in (0, file_classes):
        raise ConfigError(
            f"{weights} holds a classifier of {file_classes} classes and backbone.num_classes={num_classes} would "
            f"replace it with a random one; set backbone.num_classes={file_classes} to keep it, or 0 for no head"
        )
    model = create(config.name, num_classes=num_classes, **_create_kwargs(config))
    load_adapted(model, config.name, state, str(weights))
    classes = recipe.get("classes", []) if num_classes else []
    return Backbone(model=model.eval(), name=config.name, classes=classes, recipe=recipe)
