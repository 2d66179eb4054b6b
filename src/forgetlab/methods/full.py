"""Full fine-tuning: every backbone parameter trains (paper 2's first row, the forgetting upper bound).

The upstream classifier is part of the timm model but not of the backbone being tuned: it stays frozen
(the runner freezes it), because it is only ever evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from forgetlab.methods.base import Checked, Method
from forgetlab.methods.registry import register_method


@dataclass
class FullConfig(Checked):
    KEY = "method."
    name: str = field(default="full", metadata={"help": "the method"})


@register_method
class Full(Method):
    name = "full"
    Config = FullConfig

    def prepare(self, model, task: str) -> None:
        model.backbone.requires_grad_(True)
