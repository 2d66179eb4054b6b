"""What each method would train on a backbone, before any run: ``forgetlab anatomy``.

The backbone is built with random weights (no download, no weights file needed): its family, what
the methods find in it (LoRA's targets, top-k's groups, block expansion's block sequences), then for
every method the trainable backbone parameters after :meth:`~forgetlab.methods.base.Method.prepare`
and their share of the backbone (the numbers a run records in ``tasks.json``), or the one-line
reason the method does not apply. The configured method keeps its options; the others take their
defaults.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections import Counter

from forgetlab.config import method_config_from_dict
from forgetlab.errors import ConfigError
from forgetlab.methods import build_method, method_names
from forgetlab.models import families
from forgetlab.models.backbones import load_backbone
from forgetlab.models.multihead import MultiHeadModel
from forgetlab.train import backbone_parameters


@dataclasses.dataclass
class MethodAnatomy:
    method: str  # its description, options included
    trainable: int | None  # trainable backbone parameters; None when the method does not apply
    fraction: float | None  # of the backbone's parameters
    note: str  # what trains, or why the method does not apply


@dataclasses.dataclass
class Anatomy:
    backbone: str
    model_class: str
    family: str | None
    parameters: int
    lora_targets: list[str]  # the configured (or default) LoRA targets, or [] with the reason in lora_note
    lora_note: str
    methods: list[MethodAnatomy]
    lora_variants: list[MethodAnatomy] = dataclasses.field(default_factory=list)  # LoRA with each other variant

    def format(self) -> str:
        width = max(len("method"), *(len(row.method) for row in self.methods))
        lines = [
            f"{self.backbone}: {self.model_class}, {self.family or 'no named'} "
            f"family, {self.parameters:,} backbone parameters",
            f"LoRA targets: {self.lora_note}",
            "",
            f"| {'method':<{width}} | {'trainable':>12} | {'of backbone':>11} | what trains",
            f"|{'-' * (width + 2)}|{'-' * 14}|{'-' * 13}|------",
        ]
        for row in self.methods:
            trainable = f"{row.trainable:,}" if row.trainable is not None else "-"
            fraction = f"{100 * row.fraction:.3f}%" if row.fraction is not None else "-"
            lines.append(f"| {row.method:<{width}} | {trainable:>12} | {fraction:>11} | {row.note}")
        if self.lora_variants:
            lines += ["", "LoRA's variants (method.scaling, method.dora, method.init), the other options as above:"]
            lines += [
                f"| {row.method} | {'-' if row.trainable is None else f'{row.trainable:,}'} | "
                f"{'-' if row.fraction is None else f'{100 * row.fraction:.3f}%'} | {row.note}"
                for row in self.lora_variants
            ]
        return "\n".join(lines)


def _summary(names: list[str]) -> str:
    """``blocks.*.attn.qkv (12)``: the names with their indices starred, most common first."""
    shapes = Counter(re.sub(r"\.\d+(?=\.|$)", ".*", name) for name in names)
    return ", ".join(f"{shape} ({count})" if count > 1 else shape for shape, count in shapes.most_common())


def _units(parameter_names: list[str]) -> str:
    """Where trainable parameters lie, by unit: ``blocks.9, blocks.10, blocks.11, norm``, or starred
    when there are many (``stages.*.blocks.* (18), head.norm``)."""
    units = list(dict.fromkeys(_unit(name) for name in parameter_names))
    return ", ".join(units) if len(units) <= 4 else _summary(units)


def _unit(parameter_name: str) -> str:
    """The block a parameter belongs to (its name up to the last index: ``stages.3.blocks.2``), else its module."""
    match = re.match(r"^(.*\.\d+)(?=\.)", parameter_name)
    return match.group(1) if match else parameter_name.rsplit(".", 1)[0] if "." in parameter_name else parameter_name


def anatomy(config) -> Anatomy:
    backbone_config = dataclasses.replace(config.backbone, random_init=True, weights=None)
    backbone = load_backbone(backbone_config).model
    family = families.family_of(backbone)
    size = backbone_parameters(MultiHeadModel(backbone))[1]  # without the upstream classifier, as every row counts
    configured = dataclasses.asdict(config.method)
    lora_options = configured if configured["name"] == "lora" else {"name": "lora"}
    try:
        lora = build_method(method_config_from_dict(lora_options))
        targets = list(lora.target_modules(backbone))
        lora_note = f"{lora.config.targets}: {len(targets)} layers, {_summary(targets)}"
    except ConfigError as error:
        targets, lora_note = [], str(error)
    rows = []
    for name in method_names():
        options = configured if configured["name"] == name else {"name": name}
        method = build_method(method_config_from_dict(options))
        model = MultiHeadModel(copy.deepcopy(backbone))
        model.add_head("task", 10)
        try:
            method.check(model.backbone)
            method.prepare(model, "task")
        except ConfigError as error:
            rows.append(MethodAnatomy(method.describe(), None, None, str(error)))
            continue
        model.upstream_head.requires_grad_(False)  # as a run does: evaluated, never trained
        trainable, grown = backbone_parameters(model)  # block expansion adds blocks: a run's denominator is after it
        names = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
        where = (
            f"adapters on {len(targets)} layers" if name == "lora" else _units(names) if names else "the task head only"
        )
        if name == "lora" and method.config.dora:
            where += f" + a magnitude per output row or channel ({_magnitudes(model):,} values)"
        rows.append(MethodAnatomy(method.describe(), trainable, trainable / grown, where))
    variants = _lora_variants(backbone, lora_options, len(targets)) if targets else []
    return Anatomy(
        config.backbone.name,
        type(backbone).__name__,
        family.name if family else None,
        size,
        targets,
        lora_note,
        rows,
        variants,
    )


VARIANTS = ({"scaling": "rslora"}, {"dora": True}, {"init": "pissa"})
VARIANT_NOTES = {
    "scaling": "the same adapters, scaled alpha / sqrt(r) instead of alpha / r",
    "dora": "adapters on {layers} layers + a magnitude per output row or channel ({extra:,} values)",
    "init": "the same adapters, started from the weights' top-r singular vectors (gaussian and olora count the same)",
}


def _magnitudes(model) -> int:
    """DoRA's trainable magnitude values in ``model``'s backbone."""
    return sum(p.numel() for n, p in model.backbone.named_parameters() if p.requires_grad and "lora_magnitude" in n)


def _lora_variants(backbone, options: dict, layers: int) -> list[MethodAnatomy]:
    """LoRA with the configured options and each variant it does not already use: trainable backbone
    parameters as :meth:`Method.prepare` leaves them (DoRA adds one magnitude value per adapted output row)."""
    rows = []
    for variant in VARIANTS:
        ((key, value),) = variant.items()
        if options.get(key) == value:
            continue
        method = build_method(method_config_from_dict({**options, **variant}))
        model = MultiHeadModel(copy.deepcopy(backbone))
        try:
            method.prepare(model, "task")
        except ConfigError as error:  # e.g. PiSSA with a rank above a matrix's
            rows.append(MethodAnatomy(method.describe(), None, None, str(error)))
            continue
        trainable, grown = backbone_parameters(model)
        note = VARIANT_NOTES[key].format(layers=layers, extra=_magnitudes(model))
        rows.append(MethodAnatomy(method.describe(), trainable, trainable / grown, note))
    return rows
