"""Block Expansion (LLaMA Pro, Wu et al., 2024), as paper 2 applies it to a ViT: weight surgery that
adds depth without changing the function.

Where copies go: by default the ``N`` blocks are split into ``p`` equal groups and a copy of each group's last block
follows it; with ``split`` (LLaMA Pro's and paper 2's code) a copy of block ``i`` (0-based) follows block ``i`` for
every ``i`` with ``(i + 1) % split == 0`` (paper 2's configs: split 11, 6, 4, 3 for p = 1, 2, 3, 4, so p=1 copies block
10 *between* blocks 10 and 11); ``positions`` lists the blocks explicitly. Each copy is inserted with its two output
projections (``attn.proj`` and ``mlp.fc2``, weights and biases) zeroed. A pre-norm residual block then computes ``x + 0
+ 0 = x``: the expanded network is the original one at initialisation, and only the inserted blocks need to learn.

The result is still a plain timm ``VisionTransformer`` whose ``blocks`` is longer, so its state dict
loads into ``timm.create_model(name, depth=N + p)`` (:func:`expanded_architecture`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from forgetlab.errors import ConfigError
from forgetlab.models.families import block_sequences, example_forward


def expansion_positions(
    depth: int, copies: int, split: int | None = None, positions: list[int] | None = None
) -> list[int]:
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
            raise ConfigError(
                f"block expansion needs the {depth} blocks to split "
                f"into equal groups; pick method.copies dividing {depth}"
            )
        group = depth // copies
        chosen = [group * (i + 1) - 1 for i in range(copies)]
    if len(chosen) != copies:
        raise ConfigError(
            f"method.copies={copies} but the positions give {len(chosen)} "
            f"copies ({chosen}) of {depth} blocks; make them agree"
        )
    return chosen


OUTPUT_PROJECTIONS = ("attn.proj", "mlp.fc2")  # the last layer of each residual branch, in timm's blocks


def identity_copy(block: nn.Module) -> nn.Module:
    """A copy of ``block`` whose residual branches output zero: the identity on its input, for a
    pre-norm residual block (ViT, DeiT, DINOv2, EVA, BEiT and Swin: ``attn.proj`` and ``mlp.fc2``;
    ConvNeXt: ``mlp.fc2``). :func:`expand_blocks` checks the identity on a real input."""
    new = copy.deepcopy(block)
    found = []
    for path in OUTPUT_PROJECTIONS:
        try:
            layer = new.get_submodule(path)
        except AttributeError:
            continue
        found.append(path)
        with torch.no_grad():
            layer.weight.zero_()
            if getattr(layer, "bias", None) is not None:
                layer.bias.zero_()
    if not found:
        raise ConfigError(
            f"block expansion zeroes a block's output projections ({' / '.join(OUTPUT_PROJECTIONS)}) and "
            f"{type(block).__name__} has neither; it does not apply to this backbone"
        )
    return new


@torch.no_grad()
def _block_inputs(model: nn.Module, blocks: list[nn.Module]) -> dict[int, tuple[tuple, dict]]:
    """The ``(args, kwargs)`` each of ``blocks`` receives in one forward pass of ``model`` on an example
    image (so blocks that take more than a tensor, as BEiT's relative position bias or EVA's rotary
    embedding, are called as the model calls them)."""
    captured, hooks = {}, []
    for block in blocks:
        hooks.append(
            block.register_forward_pre_hook(
                lambda module, args, kwargs: captured.setdefault(id(module), (args, kwargs)), with_kwargs=True
            )
        )
    try:
        example_forward(model)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


@torch.no_grad()
def _check_identity(copy_: nn.Module, args: tuple, kwargs: dict) -> None:
    output = copy_.eval()(*args, **kwargs)
    if not torch.equal(output, args[0]):
        raise ConfigError(
            f"{type(copy_).__name__} is not the identity with zeroed output projections; block expansion does not apply"
        )


def expand_blocks(
    model: nn.Module, copies: int, split: int | None = None, positions: list[int] | None = None
) -> list[int]:
    """Insert ``copies`` identity blocks into ``model``'s block sequences in place; return the indices of
    the new blocks in :func:`all_blocks` order.

    Positions count the blocks of every sequence in order (for Swin and ConvNeXt, across stages); a copy
    joins its original's sequence right after it. Each copy is checked on the input its original
    receives in a forward pass: its output must equal that input, exactly.
    """
    sequences = block_sequences(model)
    flat = [(s, block) for s, (_, sequence) in enumerate(sequences) for block in sequence]
    chosen = expansion_positions(len(flat), copies, split, positions)
    inputs = _block_inputs(model, [flat[i][1] for i in chosen])
    rebuilt: list[list[nn.Module]] = [[] for _ in sequences]
    inserted = []
    for position, (s, block) in enumerate(flat):
        rebuilt[s].append(block)
        if position in chosen:
            new = identity_copy(block)
            if id(block) not in inputs:
                raise ConfigError(
                    f"block {position} of {type(model).__name__} is not "
                    f"called in a forward pass; block expansion does not apply"
                )
            _check_identity(new, *inputs[id(block)])
            new.train(block.training)
            rebuilt[s].append(new)
            inserted.append(position + len(inserted) + 1)  # after its original and the copies before it
    for (name, sequence), blocks in zip(sequences, rebuilt):
        model.set_submodule(
            name, nn.Sequential(*blocks) if isinstance(sequence, nn.Sequential) else nn.ModuleList(blocks)
        )
    return inserted


def all_blocks(model: nn.Module) -> list[nn.Module]:
    """Every block of every sequence, in order (the indices :func:`expand_blocks` returns)."""
    return [block for _, sequence in block_sequences(model) for block in sequence]


def expanded_architecture(name: str, depth: int, **kwargs) -> nn.Module:
    """An empty timm ViT of ``depth`` blocks, to load an expanded state dict into."""
    import timm

    return timm.create_model(name, pretrained=False, depth=depth, **kwargs)
