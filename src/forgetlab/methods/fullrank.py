"""Full-rank training of LoRA's targets: paper 1's comparison point for the rank study
(``lora_forget.py``'s ``mode: full``). The weights a LoRA adapter would update (ViT: every block's
``attn.qkv.weight``; ResNet-50: every bottleneck's ``conv3.weight``) train directly, at full rank;
their biases and everything else stay frozen. Paper 1 trains them with AdamW at weight decay 0
(``config/optimizer/lora_full.yaml``), which the ``paper1-*-fullrank`` presets set.

Nothing is added or merged: the update is in the weights as it trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from forgetlab.methods.base import Checked, Method
from forgetlab.methods.registry import register_method
from forgetlab.methods.lora import TARGETS, target_modules


@dataclass
class FullRankConfig(Checked):
    KEY = "method."
    name: str = field(default="fullrank", metadata={"help": "the method"})
    targets: str = field(
        default="default",
        metadata={
            "help": "the weights that train, as LoRA's targets (all but q,v): "
            f"{', '.join(t for t in TARGETS if t != 'q,v')}, suffixes or re:REGEX"
        },
    )

    def rules(self) -> list[tuple[bool, str]]:
        available = ", ".join(t for t in TARGETS if t != "q,v")
        return [
            (
                bool(self.targets.strip()) and self.targets != "q,v",
                f"method.targets '{self.targets}' is not available at full rank; choose one of: {available}",
            )
        ]


@register_method
class FullRank(Method):
    name = "fullrank"
    Config = FullRankConfig

    def weights(self, backbone: nn.Module) -> list[nn.Parameter]:
        return [backbone.get_submodule(name).weight for name in target_modules(backbone, self.config.targets)]

    def check_loaded(self, backbone: nn.Module) -> None:
        self.weights(backbone)

    def prepare(self, model, task: str) -> None:
        super().prepare(model, task)  # everything frozen ...
        for weight in self.weights(model.backbone):
            weight.requires_grad_(True)  # ... but the target weights (no biases)
