"""What the methods need to know of a timm architecture, found through timm's own interface.

No method asks "is this a ViT or a ResNet". Each asks one of three questions, answered here:

* **Which layers does LoRA adapt?** :func:`select_modules` matches module names the way PEFT's
  ``target_modules`` does: a list of name suffixes (``attn.qkv,attn.proj``) or a full-match regular
  expression (``re:blocks\\.(10|11)\\.attn\\.qkv``). ``default`` is the family's named default
  (:data:`FAMILIES`). :func:`check_adaptable` then proves on one forward pass that every chosen layer
  is really used through the wrapper (timm's BEiT and EVA read ``qkv.weight`` directly instead of
  calling ``qkv``; :class:`~forgetlab.models.lora_layers.LoRALinear` serves that read too).
* **What are the last k blocks?** :func:`top_groups` asks timm's ``group_matcher``, the grouping timm
  itself uses for layer-wise learning-rate decay: transformer blocks, or ResNet stages.
* **Where are the blocks a copy can be inserted into?** :func:`block_sequences`: the model's
  ``blocks`` (ViT, DeiT, DINOv2, EVA, BEiT), or every stage's ``blocks`` (Swin, ConvNeXt).

Anything else is a one-line :class:`ConfigError` naming what is missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from forgetlab.errors import ConfigError


@dataclass(frozen=True)
class Family:
    name: str
    classes: tuple[str, ...]  # timm model classes (the class or one of its bases)
    lora_targets: tuple[str, ...]  # module-name suffixes LoRA adapts by default
    source: str  # why that default
    topk_unit: str  # what top-k counts: 'block' (timm's fine groups) or 'stage' (coarse)


FAMILIES = (
    Family(
        "vit",
        ("VisionTransformer", "Eva", "Beit"),
        ("attn.qkv",),
        "paper 1 (ViT-B/16) and paper 2 (DINO ViT-B/16): the fused query-key-value projection of every block",
        "block",
    ),
    Family(
        "swin",
        ("SwinTransformer", "SwinTransformerV2"),
        ("attn.qkv",),
        "common practice (LoRA on attention), as for the ViT family",
        "block",
    ),
    Family(
        "convnext",
        ("ConvNeXt",),
        ("mlp.fc1", "mlp.fc2"),
        "common practice: ConvNeXt has no attention, and its blocks' MLP linears hold most of its weights",
        "block",
    ),
    Family(
        "resnet", ("ResNet",), ("conv3",), "paper 1 (ResNet-50): the last 1x1 convolution of every bottleneck", "stage"
    ),
)

# Named target sets, kept from before patterns existed (and the config files that use them).
NAMED_TARGETS = {
    "qkv": ("attn.qkv",),
    "attn": ("attn.qkv", "attn.proj"),
    "conv3": ("conv3",),
}


def family_of(model: nn.Module) -> Family | None:
    names = {cls.__name__ for cls in type(model).__mro__}
    return next((family for family in FAMILIES if names & set(family.classes)), None)


def describe(model: nn.Module) -> str:
    family = family_of(model)
    return f"{type(model).__name__}" + (f" ({family.name} family)" if family else " (no named family)")


def _classifier_names(model: nn.Module) -> set[str]:
    heads = model.get_classifier() if hasattr(model, "get_classifier") else None
    heads = heads if isinstance(heads, (tuple, list)) else [heads]
    return {name for name, module in model.named_modules() for head in heads if head is not None and module is head}


def _inside(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def target_matcher(spec: str):
    """``name -> bool`` for a PEFT-style target: ``re:REGEX`` (full match) or comma-separated suffixes."""
    if spec.startswith("re:"):
        try:
            pattern = re.compile(spec[3:])
        except re.error as error:
            raise ConfigError(f"method.targets '{spec}' is not a valid regular expression ({error})") from error
        return lambda name: pattern.fullmatch(name) is not None
    suffixes = tuple(part.strip() for part in spec.split(",") if part.strip())
    if not suffixes:
        raise ConfigError("method.targets is empty; give 'default', a named set or module-name suffixes")
    return lambda name: any(name == s or name.endswith("." + s) for s in suffixes)


def default_targets(model: nn.Module) -> tuple[str, ...]:
    family = family_of(model)
    if family is None:
        linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)][:3]
        raise ConfigError(
            f"{type(model).__name__} has no default LoRA targets; set method.targets to module-name suffixes "
            f"or re:REGEX (its linear layers include: {', '.join(linear) or 'none'})"
        )
    return family.lora_targets


def select_modules(model: nn.Module, targets: str, *, kinds: tuple[type, ...] = (nn.Linear, nn.Conv2d)) -> list[str]:
    """Names of the layers ``targets`` picks in ``model`` (never its classifier), in module order.

    ``targets``: ``default`` (the family's), ``qkv``, ``attn``, ``conv3``, ``all_linear``, ``all_conv``,
    comma-separated module-name suffixes, or ``re:REGEX``. Every match must be one of ``kinds``.
    """
    head = _classifier_names(model)
    if targets in ("all_linear", "all_conv"):
        from forgetlab.models.lora_layers import refusal  # every layer LoRA can adapt exactly: no grouped conv,
        # no layer with its own forward (timm's StdConv2d, Conv2dSame), hooks or parametrisations

        kind = nn.Linear if targets == "all_linear" else nn.Conv2d
        chosen = [
            name
            for name, module in model.named_modules()
            if isinstance(module, kind) and refusal(module) is None and not _inside(name, head)
        ]
    else:
        spec = (
            ",".join(default_targets(model))
            if targets == "default"
            else ",".join(NAMED_TARGETS.get(targets, (targets,)))
        )
        matches = target_matcher(spec)
        chosen = [name for name, module in model.named_modules() if name and matches(name) and not _inside(name, head)]
        for name in chosen:
            module = model.get_submodule(name)
            if not isinstance(module, kinds) or (isinstance(module, nn.Conv2d) and module.groups != 1):
                raise ConfigError(
                    f"method.targets '{targets}' matches {name} ({type(module).__name__}); only "
                    f"{' and '.join(k.__name__ for k in kinds)} layers (ungrouped) can be targets: narrow the pattern"
                )
    if not chosen:
        raise ConfigError(
            f"method.targets '{targets}' matches no layer of {describe(model)}; "
            f"its default is {','.join(default_targets(model)) if family_of(model) else 'none'}"
        )
    return chosen


def example_input(model: nn.Module) -> torch.Tensor:
    """One input image the model accepts: the patch embedding's size where there is one (it may differ
    from the pretrained_cfg when ``img_size`` was overridden), else the pretrained_cfg's; the first
    convolution's channels."""
    parameter = next(model.parameters())
    _, height, width = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first_conv.in_channels if first_conv is not None else 3
    size = next(
        (m.img_size for m in model.modules() if m is not model and getattr(m, "img_size", None) is not None), None
    )
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, channels, height, width, generator=generator).to(parameter.device, parameter.dtype)


@torch.no_grad()
def example_forward(model: nn.Module) -> None:
    """One forward pass of ``model`` in eval mode on :func:`example_input` (for the hooks watching it);
    the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        model(example_input(model))
    finally:
        model.train(was_training)


@torch.no_grad()
def check_adaptable(model: nn.Module, names: list[str], wrap) -> None:
    """Wrap each named layer with ``wrap(name, module)`` (a LoRA layer), run one forward pass and unwrap:
    every wrapper must have been used (called, or its ``weight`` read). Raises :class:`ConfigError`
    naming the first unused layer, or the error a wrapper caused."""
    from forgetlab.models.lora_layers import unwrap_lora

    wrappers = {}
    try:
        for name in names:
            wrappers[name] = layer = wrap(name, model.get_submodule(name))
            layer.watch_use()
            model.set_submodule(name, layer)
        try:
            example_forward(model)
        except Exception as error:  # noqa: BLE001 - any failure here is the wrapper's
            raise ConfigError(
                f"LoRA on {names[0]}... breaks the forward pass of {describe(model)} ({type(error).__name__}: "
                f"{str(error)[:100]}); choose other method.targets"
            ) from error
        unused = [name for name, layer in wrappers.items() if not layer.used]
        if unused:
            raise ConfigError(
                f"{describe(model)} never uses {unused[0]} through the module (it reads other weights or "
                f"skips it); LoRA cannot adapt it: choose other method.targets"
            )
    finally:
        unwrap_lora(model)


def top_groups(model: nn.Module, k: int) -> list[str]:
    """Names of the parameters top-k trains: the last ``k`` groups of timm's ``group_matcher`` (blocks,
    or ResNet stages), what the matcher puts with them (the final norm), and the parameters no group
    claims except the classifier (e.g. ``fc_norm``, ConvNeXt's ``head.norm``)."""
    from timm.models import group_parameters

    if not hasattr(model, "group_matcher"):
        raise ConfigError(
            f"top-k needs timm's group_matcher and {type(model).__name__} "
            f"has none; use method.name=lora, full or linear"
        )
    family = family_of(model)
    matcher = model.group_matcher(coarse=family is not None and family.topk_unit == "stage")
    groups = [names for _, names in sorted(group_parameters(model, matcher).items())]
    stem = matcher.get("stem")
    stem = (
        re.compile(stem if isinstance(stem, str) else "|".join(s if isinstance(s, str) else s[0] for s in stem))
        if stem
        else None
    )
    head = _classifier_names(model)
    if stem is not None and groups and all(stem.match(name) for name in groups[0]):
        groups = groups[1:]
    tail = []
    if groups and any(_inside(name, head) for name in groups[-1]):  # the unclaimed parameters, with the classifier
        tail = [name for name in groups.pop() if not _inside(name, head)]
    unit = "stages" if family is not None and family.topk_unit == "stage" else "blocks"
    if not 1 <= k <= len(groups):
        raise ConfigError(
            f"method.k={k} but {describe(model)} has {len(groups)} "
            f"{unit} (timm's group_matcher); pick k in 1..{len(groups)}"
        )
    return [name for group in groups[len(groups) - k :] for name in group] + tail


def block_sequences(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, container)`` of the sequences of blocks a block copy can join: the model's own
    ``blocks``, or each stage's ``blocks`` (Swin's ``layers.i.blocks``, ConvNeXt's ``stages.i.blocks``)."""
    containers = (nn.Sequential, nn.ModuleList)
    if isinstance(getattr(model, "blocks", None), containers):
        return [("blocks", model.blocks)]
    found = [
        (name, module)
        for name, module in model.named_modules()
        if name.endswith(".blocks") and isinstance(module, containers) and len(module)
    ]
    if not found:
        raise ConfigError(
            f"block_expansion needs a sequence of blocks ('blocks', or one per stage) and {describe(model)} "
            "has none; use method.name=topk, lora or full"
        )
    return found
