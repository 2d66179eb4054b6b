"""Top-k fine-tuning: only the last ``k`` transformer blocks (ViT) or residual stages (ResNet) train,
plus the final norm where there is one (paper 2's "top-3 blocks").

Blocks and stages are found through timm's own structure (``blocks``; ``layer1..layer4``), so any timm
ViT or ResNet works.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from forgetlab.errors import ConfigError
from forgetlab.methods.base import Method, backbone_kind, register_method


@dataclass
class TopKConfig:
    name: str = field(default="topk", metadata={"help": "the method"})
    k: int = field(default=3, metadata={"help": "number of last blocks (ViT) or stages (ResNet) that train (paper 2: 3)"})


def trainable_groups(backbone: nn.Module, k: int) -> list[nn.Module]:
    """The modules top-k trains: the last ``k`` blocks or stages, and the final norm(s)."""
    if backbone_kind(backbone) == "vit":
        units = list(backbone.blocks)
        finals = [getattr(backbone, name, None) for name in ("norm", "fc_norm")]
    else:
        units = [getattr(backbone, f"layer{i}") for i in range(1, 5)]
        finals = []
    if not 1 <= k <= len(units):
        raise ConfigError(f"method.k={k} but this backbone has {len(units)} blocks/stages; pick k in 1..{len(units)}")
    return units[len(units) - k :] + [module for module in finals if module is not None and any(True for _ in module.parameters())]


@register_method
class TopK(Method):
    name = "topk"
    Config = TopKConfig

    def check(self, backbone: nn.Module) -> None:
        trainable_groups(backbone, self.config.k)

    def prepare(self, model, task: str) -> None:
        super().prepare(model, task)
        for module in trainable_groups(model.backbone, self.config.k):
            module.requires_grad_(True)
