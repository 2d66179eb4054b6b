"""Block Expansion (LLaMA Pro, Wu et al., 2024), as paper 2 applies it to a ViT: weight surgery that
adds depth without changing the function.

The ``N`` blocks are split into ``p`` equal groups; after each group a copy of the group's last block
is inserted with its two output projections (``attn.proj`` and ``mlp.fc2``, weights and biases)
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


def expansion_positions(depth: int, copies: int) -> list[int]:
    """Indices (in the original blocks) after which a copy is inserted."""
    if copies < 1:
        raise ConfigError("method.copies must be at least 1")
    if depth % copies:
        raise ConfigError(f"block expansion needs the {depth} blocks to split into equal groups; pick method.copies dividing {depth}")
    group = depth // copies
    return [group * (i + 1) - 1 for i in range(copies)]


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


def expand_blocks(vit: nn.Module, copies: int) -> list[int]:
    """Insert ``copies`` identity blocks into ``vit.blocks`` in place; return the new blocks' indices.

    Each copy checks its own invariant (its output equals its input, exactly) before it is inserted.
    """
    blocks = list(vit.blocks)
    positions = expansion_positions(len(blocks), copies)
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
