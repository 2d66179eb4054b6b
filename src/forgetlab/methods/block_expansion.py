"""Block Expansion (LLaMA Pro; paper 2's best trade-off): ``copies`` identity-initialised copies of
blocks are inserted evenly into the blocks and only they (and the task head) train, so the original
blocks, and with them the pretrained features they compute, stay exactly as they were.

In a sequence every task inserts its own ``copies`` new blocks (earlier ones freeze with the rest),
which is LLaMA Pro's recipe applied per task. The surgery lives in :mod:`forgetlab.models.expansion`.
It applies to every timm model with a ``blocks`` sequence (ViT, DeiT, DINOv2, EVA, BEiT), or one per
stage (Swin, ConvNeXt: positions then count the blocks across stages, and a copy stays in its stage).
For ResNets the method is not defined (a bottleneck has no pre-norm residual form whose identity
copy is obvious; zeroing ``bn3``'s gain would be an analogue, but no paper defines it), so it is a
config error there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from forgetlab.methods.base import Checked, Method
from forgetlab.methods.registry import register_method
from forgetlab.models.expansion import all_blocks, expand_blocks, expansion_positions, identity_copy


@dataclass
class BlockExpansionConfig(Checked):
    KEY = "method."
    name: str = field(default="block_expansion", metadata={"help": "the method"})
    copies: int = field(default=1, metadata={"help": "p: identity blocks inserted per task (paper 2: 1..4)"})
    split: int | None = field(
        default=None,
        metadata={
            "help": "copy block i after itself for every i with (i + 1) % split == 0 (paper 2's code: 11, 6, 4, 3 "
            "for p = 1..4); default: after each of p equal groups"
        },
    )
    positions: list[int] | None = field(
        default=None, metadata={"help": "the blocks (0-based) to copy, each right after itself; overrides split"}
    )

    def rules(self) -> list[tuple[bool, str]]:
        # where the copies go, within the backbone's blocks: check_backbone
        return [
            (self.copies >= 1, f"method.copies must be at least 1, got {self.copies}"),
            (self.split is None or self.split >= 1, f"method.split must be at least 1, got {self.split}"),
        ]


@register_method
class BlockExpansion(Method):
    name = "block_expansion"
    Config = BlockExpansionConfig

    @classmethod
    def label(cls, options: dict) -> str:
        return f"block p={options['copies']}"

    @classmethod
    def check_backbone(cls, config: BlockExpansionConfig, skeleton: nn.Module) -> None:
        blocks = all_blocks(skeleton)  # a ResNet has no block sequence: refused here
        expansion_positions(len(blocks), config.copies, config.split, config.positions)
        identity_copy(blocks[-1])  # has output projections to zero

    def _expand(self, backbone) -> list[int]:
        return expand_blocks(backbone, self.config.copies, self.config.split, self.config.positions)

    def prepare(self, model, task: str) -> None:
        super().prepare(model, task)
        inserted = self._expand(model.backbone)
        blocks = all_blocks(model.backbone)
        for index in inserted:
            blocks[index].requires_grad_(True)

    def restore(self, model, phases, folder) -> None:
        # The checkpoint holds the expanded blocks' weights; rebuild the structure they belong to.
        for _ in phases:
            self._expand(model.backbone)
