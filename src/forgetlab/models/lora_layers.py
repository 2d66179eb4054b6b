"""LoRA layers, parameterised as in PEFT so that adapters are interchangeable with PEFT's.

For a frozen linear layer ``y = W x + b``, LoRA (Hu et al., 2021) learns a low-rank update::

    y = W x + b + (alpha / r) * B A dropout(x),    A: r x in,  B: out x r

``A`` starts Kaiming-uniform (a = sqrt(5)) and ``B`` at zero, so a fresh adapter leaves the layer's
output unchanged. Merging folds the update into the weights: ``W <- W + (alpha / r) B A``. After the
merge the layer computes exactly what it computed with the live adapter (up to fp32 rounding), and
the adapter is gone: this is paper 1's incremental update.

Two generalisations the papers need:

* ``out_slices``: an adapter per named row range of ``W``. On timm's fused ``attn.qkv`` (rows
  ``[q; k; v]``) the slices ``q`` and ``v`` give paper 2's LoRA on the query and value projections
  while the key rows never change. With a single slice ``all`` the layer is PEFT's ``lora.Linear``.
* :class:`LoRAConv2d`: ``A`` is a convolution with the base layer's kernel, stride, padding, dilation
  and padding mode into ``r`` channels, ``B`` a 1x1 convolution back to ``out`` channels (PEFT's
  ``lora.Conv2d``, which does not carry dilation or the padding mode); the merged kernel is
  ``W[o, i] += (alpha / r) sum_r B[o, r] A[r, i]``. Paper 1 adapts ResNet-50's 1x1 ``conv3``.

The merge is exact only if the adapter path sees the input exactly as the base layer does: every
attribute of the wrapped layer that shapes its output is either carried into the adapter (kernel,
stride, padding, dilation, padding mode; the bias stays in the base layer) or refused in one line by
:func:`refusal` (grouped convolutions, subclasses with their own ``forward`` such as timm's
``StdConv2d`` or ``Conv2dSame``, parametrised weights, forward hooks).
"""

from __future__ import annotations

import abc
import math

import torch
from torch import nn

from forgetlab.errors import ConfigError, MergeError


def _plain_forwards() -> set:
    """The ``forward`` functions whose output is ``F.linear(x, W, b)`` / ``F.conv2d(x, W, b, ...)`` and nothing else."""
    forwards = {nn.Linear.forward, nn.Conv2d.forward}
    try:  # timm's Linear only casts dtypes under TorchScript
        from timm.layers import Linear as TimmLinear

        forwards.add(TimmLinear.forward)
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    return forwards


def refusal(module: nn.Module) -> str | None:
    """Why LoRA cannot adapt ``module`` exactly (its output depends on more than its weight through
    ``F.linear`` / ``F.conv2d`` with attributes the adapter copies), or None when it can."""
    from torch.nn.utils import parametrize

    kind = type(module).__name__
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        return f"it is a {kind}; LoRA supports nn.Linear and nn.Conv2d"
    if type(module).forward not in _plain_forwards() or (
        isinstance(module, nn.Conv2d) and type(module)._conv_forward is not nn.Conv2d._conv_forward
    ):
        return f"{kind} computes its own forward (e.g. standardised weights or dynamic padding), so a merged update would not equal the live one"
    if parametrize.is_parametrized(module):
        return f"its weight is parametrised ({kind}); remove the parametrisation first"
    if module._forward_hooks or module._forward_pre_hooks:
        return f"the {kind} has forward hooks (e.g. torch.nn.utils.weight_norm) that change its output"
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return f"it is a grouped convolution (groups={module.groups}); LoRA adapts ungrouped ones (PEFT cannot merge grouped ones either)"
    return None


class LoRALayer(nn.Module, abc.ABC):
    """Base of the LoRA wrappers: holds the frozen ``base_layer`` and one (A, B) pair per slice."""

    base_layer: nn.Module

    def __init__(self, base_layer: nn.Module, rank: int, alpha: float, dropout: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.base_layer = base_layer
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        for parameter in base_layer.parameters():
            parameter.requires_grad_(False)

    def reset_lora_parameters(self) -> None:
        for name in self.lora_A:
            nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B[name].weight)

    @abc.abstractmethod
    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) B A`` in fp32, shaped like the base weight."""

    def merged_weight(self) -> torch.Tensor:
        """The base weight with the update folded in, in fp32. Pure: changes nothing."""
        return self.base_layer.weight.detach().float() + self.delta_weight()


class LoRALinear(LoRALayer):
    def __init__(
        self,
        base_layer: nn.Linear,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        out_slices: dict[str, tuple[int, int]] | None = None,
    ):
        reason = refusal(base_layer)
        if reason:
            raise ConfigError(f"LoRA cannot adapt this layer: {reason}; choose other method.targets")
        super().__init__(base_layer, rank, alpha, dropout)
        self.out_slices = dict(out_slices or {"all": (0, base_layer.out_features)})
        spans = sorted(self.out_slices.values())
        if any(a < 0 or b > base_layer.out_features or a >= b for a, b in spans) or any(
            spans[i][1] > spans[i + 1][0] for i in range(len(spans) - 1)
        ):
            raise ValueError(f"out_slices {self.out_slices} must be disjoint ranges of 0..{base_layer.out_features}")
        weight = base_layer.weight
        for name, (start, end) in self.out_slices.items():
            self.lora_A[name] = nn.Linear(base_layer.in_features, rank, bias=False, device=weight.device)
            self.lora_B[name] = nn.Linear(rank, end - start, bias=False, device=weight.device)
        self.reset_lora_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        hidden = self.lora_dropout(x)
        if list(self.out_slices) == ["all"]:
            return result + self.lora_B["all"](self.lora_A["all"](hidden)) * self.scaling
        # Rows outside every slice get no update: assemble [0 | delta_q | 0 | delta_v] along the features.
        pieces, cursor = [], 0
        for name, (start, end) in sorted(self.out_slices.items(), key=lambda item: item[1]):
            if start > cursor:
                pieces.append(result.new_zeros(*result.shape[:-1], start - cursor))
            pieces.append(self.lora_B[name](self.lora_A[name](hidden)) * self.scaling)
            cursor = end
        if cursor < result.shape[-1]:
            pieces.append(result.new_zeros(*result.shape[:-1], result.shape[-1] - cursor))
        return result + torch.cat(pieces, dim=-1)

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight ``W + (alpha / r) B A``, for owners that read ``.weight`` instead of calling
        the layer (timm's BEiT and EVA, for ``qkv`` with separate q/v biases). On that path no dropout
        applies to the adapter's input. Differentiable: the factors train through it."""
        if "used" in self.__dict__:  # forgetlab.models.families.check_adaptable is watching
            self.__dict__["used"] = True
        delta = torch.zeros_like(self.base_layer.weight)
        for name, (start, end) in self.out_slices.items():
            delta = delta.index_add(0, torch.arange(start, end, device=delta.device),
                                    (self.lora_B[name].weight @ self.lora_A[name].weight).to(delta.dtype))  # fmt: skip
        return self.base_layer.weight + delta * self.scaling

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def delta_weight(self) -> torch.Tensor:
        delta = torch.zeros_like(self.base_layer.weight, dtype=torch.float32)
        for name, (start, end) in self.out_slices.items():
            delta[start:end] = self.lora_B[name].weight.float() @ self.lora_A[name].weight.float()
        return delta * self.scaling


class LoRAConv2d(LoRALayer):
    def __init__(self, base_layer: nn.Conv2d, rank: int, alpha: float, dropout: float = 0.0):
        reason = refusal(base_layer)
        if reason:
            raise ConfigError(f"LoRA cannot adapt this layer: {reason}; choose other method.targets")
        super().__init__(base_layer, rank, alpha, dropout)
        device = base_layer.weight.device
        # Everything that decides which input pixels meet which kernel tap is copied, the padding mode
        # included: with 'reflect' the adapter must see the same reflected border as the base layer.
        self.lora_A["all"] = nn.Conv2d(
            base_layer.in_channels, rank, base_layer.kernel_size, base_layer.stride,
            base_layer.padding, base_layer.dilation, bias=False, padding_mode=base_layer.padding_mode, device=device,
        )  # fmt: skip
        self.lora_B["all"] = nn.Conv2d(rank, base_layer.out_channels, 1, bias=False, device=device)
        self.reset_lora_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.lora_B["all"](self.lora_A["all"](self.lora_dropout(x)))
        return self.base_layer(x) + update * self.scaling

    def delta_weight(self) -> torch.Tensor:
        a = self.lora_A["all"].weight.float()  # r, in, kh, kw
        b = self.lora_B["all"].weight.float()[:, :, 0, 0]  # out, r
        return torch.einsum("or,rikl->oikl", b, a) * self.scaling


def wrap(module: nn.Module, rank: int, alpha: float, dropout: float, out_slices=None, name: str = "") -> LoRALayer:
    """``module`` wrapped in its LoRA layer. Raises :class:`ConfigError` naming ``name`` when LoRA cannot
    adapt it exactly (:func:`refusal`)."""
    reason = refusal(module)
    if reason:
        raise ConfigError(f"LoRA cannot adapt {name or 'this layer'}: {reason}; choose other method.targets")
    if isinstance(module, nn.Linear):
        return LoRALinear(module, rank, alpha, dropout, out_slices)
    if isinstance(module, nn.Conv2d):
        if out_slices:
            raise ValueError("out_slices apply to linear layers only")
        return LoRAConv2d(module, rank, alpha, dropout)
    raise TypeError(f"LoRA supports nn.Linear and nn.Conv2d, not {type(module).__name__}")


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALayer]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, LoRALayer)]


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA adapter in ``model`` into its base layer, in fp32, and unwrap it.

    All merged weights are computed and checked first; if any is non-finite, :class:`MergeError` is
    raised and the model is left exactly as it was. Returns how many layers were merged.
    """
    layers = lora_layers(model)
    merged = {}
    for name, layer in layers:
        weight = layer.merged_weight()
        if not torch.isfinite(weight).all():
            raise MergeError(f"merging the LoRA adapter of '{name}' gives non-finite weights; lower train.lr")
        merged[name] = weight
    for name, layer in layers:
        base = layer.base_layer
        with torch.no_grad():
            base.weight.copy_(merged[name].to(base.weight.dtype))
        model.set_submodule(name, base)
    return len(layers)


def unwrap_lora(model: nn.Module) -> int:
    """Remove every adapter without merging: the base layers return, unchanged."""
    layers = lora_layers(model)
    for name, layer in layers:
        model.set_submodule(name, layer.base_layer)
    return len(layers)
