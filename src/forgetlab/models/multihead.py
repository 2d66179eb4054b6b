"""One backbone, many heads: the upstream head is the backbone's own classifier (frozen, evaluated,
never trained), and every downstream task gets a linear head on the backbone's pooled features.

One forward pass of the backbone serves every head asked for, which is what LwF needs (the outputs
of all earlier heads on the current batch).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

UPSTREAM = "upstream"


class MultiHeadModel(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict()

    @property
    def upstream_head(self) -> nn.Module:
        return self.backbone.get_classifier()

    @property
    def num_features(self) -> int:
        return self.backbone.num_features

    def add_head(self, name: str, num_classes: int) -> nn.Linear:
        if name == UPSTREAM or name in self.heads:
            raise ValueError(f"head '{name}' exists already")
        head = nn.Linear(self.num_features, num_classes)
        self.heads[name] = head
        return head

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features, the input of every head (timm's ``pre_logits``)."""
        return self.backbone.forward_head(self.backbone.forward_features(images), pre_logits=True)

    def forward(self, images: torch.Tensor, heads: Iterable[str]) -> dict[str, torch.Tensor]:
        features = self.features(images)
        return {name: self.head(name)(features) for name in heads}

    def head(self, name: str) -> nn.Module:
        return self.upstream_head if name == UPSTREAM else self.heads[name]
