"""Per-phase updates of the trainable backbone tensors (``save.updates=true``): what ``forgetlab explain``
reads for the methods whose run folder holds no other record of them (full, top-k, full-rank, linear,
block expansion; LoRA's adapters hold them already, :attr:`forgetlab.methods.base.Method.keeps_updates`).

When a phase's backbone is ready to train (:func:`snapshot`, after ``method.prepare``), the runner
copies every backbone parameter that trains; at the phase's commit :func:`write` stores
``updates/<phase>.safetensors``: per tensor (its name in the backbone's ``named_parameters``) the fp32
``W_after - W_before``. For block expansion the inserted blocks' ``W_before`` is the identity copy they
were inserted as (:func:`forgetlab.models.expansion.identity_copy`).

Exact to the bit: fp32 cannot always give ``W_before + delta == W_after`` (an element that crosses
zero, or shrinks by more than half, loses low bits in the subtraction), so for the elements where the
sum differs the file also holds the exact value (``<tensor>@index``: flat int64 indices,
``<tensor>@value``: fp32). :func:`apply` adds the delta on the CPU exactly as :func:`write` checked it
and puts those values back, so a reader rebuilds the weights the run scored, bit for bit.

The file is written atomically before the phase's commit and hashed into it like every committed file:
a kill leaves either no file, or one that the resumed phase rewrites. Size: 4 bytes per trainable
parameter and phase (the offline ViT under full fine-tuning: 4.8 MB; ViT-B/16: 343 MB).
"""

from __future__ import annotations

from pathlib import Path

import torch

from forgetlab.errors import DataError
from forgetlab.results import RunFolder, save_safetensors

EXACT_INDEX = "@index"
EXACT_VALUE = "@value"


def updates_path(folder: RunFolder, phase: str) -> Path:
    """``updates/<phase>.safetensors`` of a run folder (``phase``: the phase's task name, as ``adapters/``)."""
    return folder.path / "updates" / f"{phase}.safetensors"


def snapshot(backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``name -> a CPU fp32 copy`` of every backbone parameter that trains (``requires_grad``) now."""
    return {
        name: parameter.detach().to("cpu", torch.float32, copy=True)
        for name, parameter in backbone.named_parameters()
        if parameter.requires_grad
    }


def write(folder: RunFolder, phase: str, before: dict[str, torch.Tensor], backbone: torch.nn.Module) -> Path:
    """Store the phase's update of the tensors ``before`` holds (their values when the phase began),
    atomically; return the file's path."""
    tensors = {}
    for name, start in before.items():
        end = backbone.get_parameter(name).detach().to("cpu", torch.float32)
        delta = end - start
        rebuilt = start + delta
        wrong = torch.nonzero((rebuilt.view(torch.int32) != end.view(torch.int32)).flatten()).flatten()
        tensors[name] = delta
        if len(wrong):
            tensors[name + EXACT_INDEX] = wrong.to(torch.int64)
            tensors[name + EXACT_VALUE] = end.flatten()[wrong].clone()
    path = updates_path(folder, phase)
    # one metadata key: safetensors writes its metadata map in no fixed order, and a resumed phase must
    # rewrite the same bytes
    save_safetensors(path, tensors, metadata={"content": f"phase {phase}: fp32 W_after - W_before per tensor"})
    return path


def read(path: Path) -> dict[str, tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]]:
    """``name -> (delta, exact)`` of an updates file (``exact``: ``(indices, values)`` or None); a
    :class:`DataError` naming the file when it is missing or unreadable."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises several types for a damaged or missing file
        raise DataError(
            f"{path} is missing or unreadable ({type(error).__name__}) but its phase committed; "
            "the run folder is incomplete: delete it and run again with save.updates=true"
        ) from error
    return {
        name: (
            delta,
            (tensors[name + EXACT_INDEX], tensors[name + EXACT_VALUE]) if name + EXACT_INDEX in tensors else None,
        )
        for name, delta in tensors.items()
        if not name.endswith((EXACT_INDEX, EXACT_VALUE))
    }


def apply(start: torch.Tensor, delta: torch.Tensor, exact) -> torch.Tensor:
    """``W_after`` from ``W_before`` (``start``, fp32 on the CPU) and one tensor's entry of :func:`read`."""
    end = start + delta
    if exact is not None:
        end.view(-1)[exact[0]] = exact[1]
    return end
