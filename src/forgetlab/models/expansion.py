"""Block Expansion (LLaMA Pro, Wu et al., 2024), as paper 2 applies it to a ViT: weight surgery that
adds depth without changing the function.

Where copies go: by default the ``N`` blocks are split into ``p`` equal groups and a copy of each
group's last block follows it; with ``split`` (LLaMA Pro's and paper 2's code) a copy of block ``i``
(0-based) follows block ``i`` for every ``i`` with ``(i + 1) % split == 0`` (paper 2's configs: split
11, 6, 4, 3 for p = 1, 2, 3, 4, so p=1 copies block 10 *between* blocks 10 and 11); ``positions``
lists the blocks explicitly. Each copy is inserted with its two output projections (``attn.proj`` and ``mlp.fc2``, weights and biases)
zeroed. A pre-norm residual block then computes ``x + 0 + 0 = x``: the expanded network is the
original one at initialisation, and only the inserted blocks need to learn.

The result is still a plain timm ``VisionTransformer`` whose ``blocks`` is longer, so its state dict
loads into ``timm.create_model(name, depth=N + p)`` (:func:`expanded_architecture`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from forgetlab.errors import ConfigError


def expansion_positions(depth: int, copies: int, split: int | None = None, positions: list[int] | None = None) -> list[int]:
    """Indices (in the blocks before this expansion) after which a copy is inserted."""
    if copies < 1:
        raise ConfigError("method.copies must be at least 1")
    if positions is not None:
        chosen = sorted(set(positions))
        if len(chosen) != len(positions) or not all(0 <= i < depth for i in chosen):
            raise ConfigError(f"method.positions must be distinct block indices in 0..{depth - 1}, got {positions}")
    elif split is not None:
        if split < 1:
            raise ConfigError("method.split must be at least 1")
        chosen = [i for i in range(depth) if (i + 1) % split == 0]
    else:
        if depth % copies:
            raise ConfigError(f"block expansion needs the {depth} blocks to split into equal groups; pick method.copies dividing {depth}")
        group = depth // copies
        chosen = [group * (i + 1) - 1 for i in range(copies)]
    if len(chosen) != copies:
        raise ConfigError(f"method.copies={copies} but the positions give {len(chosen)} copies ({chosen}) of {depth} blocks; make them agree")
    return chosen


def identity_copy(block: nn.Module) -> nn.Module:
    """A copy of ``block`` whose residual branches output zero: the identity on its input."""
    new = copy.deepcopy(block)
    for path in ("attn.proj", "mlp.fc2"):
        try:
            layer = new.get_submodule(path)
        except AttributeError as error:
            raise ConfigError(f"block expansion needs '{path}' in every block; {type(block).__name__} has none") from error
        with torch.no_grad():
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()
    _check_identity(new)
    return new


@torch.no_grad()
def _check_identity(block: nn.Module) -> None:
    weight = block.get_submodule("attn.proj").weight
    tokens = torch.randn(2, 5, weight.shape[0], device=weight.device, dtype=weight.dtype)
    was_training = block.training
    block.eval()
    output = block(tokens)
    block.train(was_training)
    if not torch.equal(output, tokens):
        raise ConfigError(f"{type(block).__name__} is not the identity with zeroed output projections; block expansion does not apply")


def expand_blocks(vit: nn.Module, copies: int, split: int | None = None, positions: list[int] | None = None) -> list[int]:
    """Insert ``copies`` identity blocks into ``vit.blocks`` in place; return the new blocks' indices.

    Each copy checks its own invariant (its output equals its input, exactly) before it is inserted.
    """
    blocks = list(vit.blocks)
    positions = expansion_positions(len(blocks), copies, split, positions)
    expanded, inserted = [], []
    for index, block in enumerate(blocks):
        expanded.append(block)
        if index in positions:
            inserted.append(len(expanded))
            expanded.append(identity_copy(block))
    vit.blocks = nn.Sequential(*expanded)
    return inserted


def expanded_architecture(name: str, depth: int, **kwargs) -> nn.Module:
    """An empty timm ViT of ``depth`` blocks, to load an expanded state dict into."""
    import timm

    return timm.create_model(name, pretrained=False, depth=depth, **kwargs)
