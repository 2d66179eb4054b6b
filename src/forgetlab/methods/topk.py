"""Top-k fine-tuning: only the last ``k`` blocks train, plus the final norm (paper 2's "top-3 blocks").

The blocks are timm's own parameter groups (``group_matcher``, the grouping timm uses for layer-wise
learning-rate decay), so any timm model that has one works: transformer blocks for the ViT family,
Swin and ConvNeXt; residual stages (``layer1..layer4``) for a ResNet, where no paper defines top-k and
forgetlab keeps its stages as the unit. See :func:`forgetlab.models.families.top_groups`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from forgetlab.methods.base import Checked, Method
from forgetlab.methods.registry import register_method
from forgetlab.models.families import top_groups


@dataclass
class TopKConfig(Checked):
    KEY = "method."
    name: str = field(default="topk", metadata={"help": "the method"})
    k: int = field(
        default=3,
        metadata={
            "help": (
                "number of last blocks (ResNet: stages) that train, as timm's group_matcher groups them (paper 2: 3)"
            )
        },
    )

    def rules(self) -> list[tuple[bool, str]]:
        return [
            (self.k >= 1, f"method.k must be at least 1, got {self.k}")
        ]  # its upper limit is the backbone's: check_backbone


def trainable_parameters_of(backbone: nn.Module, k: int) -> list[nn.Parameter]:
    """The parameters top-k trains: the last ``k`` blocks or stages, and the final norm(s)."""
    named = dict(backbone.named_parameters())
    return [named[name] for name in top_groups(backbone, k)]


@register_method
class TopK(Method):
    name = "topk"
    Config = TopKConfig

    @classmethod
    def label(cls, options: dict) -> str:
        return f"top-{options['k']}"

    @classmethod
    def check_backbone(cls, config: TopKConfig, skeleton: nn.Module) -> None:
        top_groups(skeleton, config.k)  # k within the backbone's blocks (or stages)

    def prepare(self, model, task: str) -> None:
        super().prepare(model, task)
        for parameter in trainable_parameters_of(model.backbone, self.config.k):
            parameter.requires_grad_(True)
