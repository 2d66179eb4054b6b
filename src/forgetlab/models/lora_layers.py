"""LoRA layers, parameterised as in PEFT so that adapters are interchangeable with PEFT's.

For a frozen linear layer ``y = W x + b``, LoRA (Hu et al., 2021) learns a low-rank update::

    y = W x + b + s * B A dropout(x),    A: r x in,  B: out x r,  s = alpha / r

``A`` starts Kaiming-uniform (a = sqrt(5)) and ``B`` at zero, so a fresh adapter leaves the layer's
output unchanged. Merging folds the update into the weights: ``W <- W + s B A``. After the merge the
layer computes exactly what it computed with the live adapter (up to fp32 rounding), and the adapter
is gone: this is paper 1's incremental update.

Two generalisations the papers need:

* ``out_slices``: an adapter per named row range of ``W``. On timm's fused ``attn.qkv`` (rows
  ``[q; k; v]``) the slices ``q`` and ``v`` give paper 2's LoRA on the query and value projections
  while the key rows never change. With a single slice ``all`` the layer is PEFT's ``lora.Linear``.
* :class:`LoRAConv2d`: ``A`` is a convolution with the base layer's kernel, stride, padding, dilation
  and padding mode into ``r`` channels, ``B`` a 1x1 convolution back to ``out`` channels (PEFT's
  ``lora.Conv2d``, which does not carry dilation or the padding mode); the merged kernel is
  ``W[o, i] += s sum_r B[o, r] A[r, i]``. Paper 1 adapts ResNet-50's 1x1 ``conv3``.

The merge is exact only if the adapter path sees the input exactly as the base layer does: every
attribute of the wrapped layer that shapes its output is either carried into the adapter (kernel,
stride, padding, dilation, padding mode; the bias stays in the base layer) or refused in one line by
:func:`refusal` (grouped convolutions, subclasses with their own ``forward`` such as timm's
``StdConv2d`` or ``Conv2dSame``, parametrised weights, forward hooks).

Variants (PEFT's ``use_rslora``, ``use_dora`` and ``init_lora_weights``), each merged exactly:

* ``scaling="rslora"`` (Kalajdzievski, 2023): ``s = alpha / sqrt(r)`` instead of ``alpha / r``.
* ``dora=True`` (Liu et al., 2024, DoRA): a trainable magnitude ``m`` per output row (per output
  channel of a convolution) rescales the updated weight to ``m * (W + dW) / ||W + dW||``, the norm
  taken over each row (over ``in x kh x kw`` for a convolution) and detached from the gradient, as
  the paper's section 4.3 and PEFT's ``DoraLinearLayer`` do (so forgetlab's gradients equal PEFT's).
  ``m`` starts at ``||W||``, so a fresh adapter is still a no-op. With dropout active in training the
  rescaled base term sees ``W dropout(x)`` (PEFT's choice); the merge gives ``m * (W + dW) / ||W + dW||``.
* ``init="gaussian"``: ``A ~ N(0, 1/r^2)`` (PEFT's ``init_lora_weights="gaussian"``), ``B = 0``.
* ``init="pissa"`` (Meng et al., 2024) / ``"olora"`` (Buyukakyuz, 2024): ``A0, B0`` from the top-``r``
  SVD of ``W`` (``B0 = U_r sqrt(S_r / s)``, ``A0 = sqrt(S_r / s) V_r^T``) or its QR factorisation
  (``B0 = Q_r``, ``A0 = R_r``), as PEFT's ``pissa_init`` / ``olora_init``. PEFT moves ``s B0 A0`` out
  of the base weight; forgetlab leaves ``W`` untouched and keeps ``A0, B0`` as frozen buffers that the
  adapter path subtracts: ``dW = s (B A - B0 A0)``, which is PEFT's residual base plus ``s B A`` up to
  fp32 rounding. The invariant this buys: at every moment, merged included, the weight is the task's
  starting weight plus the learned update ``s (B A - B0 A0)`` (zero at init, so a fresh adapter is
  a no-op, and the backbone is never modified in place, which ``policy=keep`` needs). A convolution
  is factorised as its ``out x (in kh kw)`` matrix (PEFT has no PiSSA/OLoRA for convolutions).
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
        return (
            f"{kind} computes its own forward (e.g. standardised weights or dynamic padding), so a merged update "
            "would not equal the live one"
        )
    if parametrize.is_parametrized(module):
        return f"its weight is parametrised ({kind}); remove the parametrisation first"
    if module._forward_hooks or module._forward_pre_hooks:
        return f"the {kind} has forward hooks (e.g. torch.nn.utils.weight_norm) that change its output"
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return (
            f"it is a grouped convolution (groups={module.groups}); LoRA adapts ungrouped ones "
            "(PEFT cannot merge grouped ones either)"
        )
    return None


SCALINGS = ("standard", "rslora")
INITS = ("kaiming", "gaussian", "pissa", "olora")
PRINCIPAL_INITS = ("pissa", "olora")  # initialisations that take a part of W (kept as frozen A0, B0)


def scaling_factor(alpha: float, rank: int, scaling: str = "standard") -> float:
    """``alpha / r`` (LoRA) or ``alpha / sqrt(r)`` (rsLoRA): the factor ``s`` of the update ``s B A``."""
    return alpha / math.sqrt(rank) if scaling == "rslora" else alpha / rank


def principal_factors(weight: torch.Tensor, rank: int, scaling: float, init: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A0, B0)``, ``r x in`` and ``out x r``, of PiSSA (top-``r`` SVD, ``s B0 A0 = U_r S_r V_r^T``) or
    OLoRA (``B0 A0 = Q_r R_r`` of ``W = Q R``) for a 2-D fp32 ``weight`` (``out x in``), as PEFT's
    ``LoraLayer.pissa_init`` / ``olora_init`` (``peft/tuners/lora/layer.py``) compute them."""
    if rank > min(weight.shape):
        raise ConfigError(
            f"method.init={init} needs rank <= min(out, in) = {min(weight.shape)} of every adapted matrix; "
            f"got rank {rank}: lower method.rank"
        )
    if init == "pissa":
        u, singular, vh = torch.linalg.svd(weight, full_matrices=False)
        root = torch.sqrt(singular[:rank] / scaling)
        return torch.diag(root) @ vh[:rank], u[:, :rank] @ torch.diag(root)
    q, r = torch.linalg.qr(weight)
    return r[:rank].contiguous(), q[:, :rank].contiguous()


def _record_use(layer: "LoRALayer", args, output) -> None:
    """The forward hook of :meth:`LoRALayer.watch_use`."""
    layer.used = True


class LoRALayer(nn.Module, abc.ABC):
    """Base of the LoRA wrappers: the frozen ``base_layer``, one (A, B) pair per slice of its output rows
    (``out_slices``: name -> (start, end)), and the variant's extras (DoRA's ``lora_magnitude``, one
    vector per slice; PiSSA/OLoRA's frozen ``A0, B0`` buffers).

    Use watching (:meth:`watch_use`): a model may skip a wrapper or read other weights than the
    wrapper's; after ``watch_use()``, ``used`` turns True when the layer is called or its effective
    ``weight`` is read (:func:`forgetlab.models.families.check_adaptable` asks it)."""

    base_layer: nn.Module
    out_slices: dict[str, tuple[int, int]]

    def __init__(
        self,
        base_layer: nn.Module,
        rank: int,
        alpha: float,
        dropout: float,
        *,
        scaling: str = "standard",
        dora: bool = False,
        init: str = "kaiming",
    ):
        reason = refusal(base_layer)
        if reason:
            raise ConfigError(f"LoRA cannot adapt this layer: {reason}; choose other method.targets")
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        if scaling not in SCALINGS or init not in INITS:
            raise ValueError(f"scaling must be one of {SCALINGS} and init one of {INITS}, got {scaling!r}, {init!r}")
        self.base_layer = base_layer
        self.rank, self.alpha = rank, alpha
        self.scaling_kind, self.dora, self.init = scaling, bool(dora), init
        self.scaling = scaling_factor(alpha, rank, scaling)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_magnitude = nn.ParameterDict()
        self.watching_use = False  # see watch_use
        self.used = False
        for parameter in base_layer.parameters():
            parameter.requires_grad_(False)

    def watch_use(self) -> None:
        """From now on, record in ``used`` whether the layer is called or its effective ``weight`` read."""
        self.watching_use, self.used = True, False
        self.register_forward_hook(_record_use)

    # ------------------------------------------------------------------ initialisation
    def reset_lora_parameters(self) -> None:
        for name in self.lora_A:
            a, b = self.lora_A[name].weight, self.lora_B[name].weight
            if self.init in PRINCIPAL_INITS:
                start, end = self.out_slices[name]
                rows = self.base_layer.weight.detach().float()[start:end].reshape(end - start, -1)
                a0, b0 = principal_factors(rows, self.rank, self.scaling, self.init)
                with torch.no_grad():
                    a.copy_(a0.reshape(a.shape))
                    b.copy_(b0.reshape(b.shape))
                self.register_buffer(f"lora_A0_{name}", a.detach().clone())
                self.register_buffer(f"lora_B0_{name}", b.detach().clone())
                continue
            if self.init == "gaussian":
                nn.init.normal_(a, std=1 / self.rank)
            else:
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            nn.init.zeros_(b)
        if self.dora:  # m = ||W + dW|| (dW = 0 here): the rescaling starts at exactly 1
            weight = self.base_layer.weight.detach().float() + self.delta_weight()
            for name, (start, end) in self.out_slices.items():
                norm = weight[start:end].flatten(1).norm(dim=1).to(self.base_layer.weight.dtype)
                self.lora_magnitude[name] = nn.Parameter(norm)

    def initial_factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """PiSSA's / OLoRA's frozen ``(A0, B0)`` of slice ``name``; None for the other initialisations."""
        if self.init not in PRINCIPAL_INITS:
            return None
        return getattr(self, f"lora_A0_{name}"), getattr(self, f"lora_B0_{name}")

    # ------------------------------------------------------------------ the update
    @abc.abstractmethod
    def _path(self, name: str, hidden: torch.Tensor) -> torch.Tensor:
        """``B A hidden`` (minus ``B0 A0 hidden``) of slice ``name``, before the scaling."""

    @abc.abstractmethod
    def _rescale(self, scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A per-row ``scale`` shaped to broadcast over an output (``like``) of this layer."""

    def _slice_product(self, name: str) -> torch.Tensor:
        """``B A - B0 A0`` of slice ``name`` shaped like its rows of the base weight, differentiable."""
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        product = b.flatten(1) @ a.flatten(1)
        initial = self.initial_factors(name)
        if initial is not None:
            product = product - initial[1].flatten(1) @ initial[0].flatten(1)
        start, end = self.out_slices[name]
        return product.reshape(end - start, *self.base_layer.weight.shape[1:])

    def delta_weight(self) -> torch.Tensor:
        """``s (B A - B0 A0)`` in fp32, shaped like the base weight (before DoRA's rescaling)."""
        delta = torch.zeros_like(self.base_layer.weight, dtype=torch.float32)
        for name, (start, end) in self.out_slices.items():
            a, b = self.lora_A[name].weight.detach().float(), self.lora_B[name].weight.detach().float()
            product = b.flatten(1) @ a.flatten(1)
            initial = self.initial_factors(name)
            if initial is not None:
                product = product - initial[1].float().flatten(1) @ initial[0].float().flatten(1)
            delta[start:end] = product.reshape(end - start, *delta.shape[1:])
        return delta * self.scaling

    def merged_weight(self) -> torch.Tensor:
        """The base weight with the update folded in, in fp32: ``W + dW``, or DoRA's
        ``m * (W + dW) / ||W + dW||`` on the adapted rows. Pure: changes nothing."""
        merged = self.base_layer.weight.detach().float() + self.delta_weight()
        if self.dora:
            for name, (start, end) in self.out_slices.items():
                rows = merged[start:end]
                scale = self.lora_magnitude[name].detach().float() / rows.flatten(1).norm(dim=1)
                merged[start:end] = rows * scale.view(-1, *[1] * (rows.dim() - 1))
        return merged

    def _dora_scale(self, name: str) -> torch.Tensor:
        """``m / ||W + dW||`` of slice ``name``, the norm detached (DoRA section 4.3, as PEFT)."""
        start, end = self.out_slices[name]
        weight = self.base_layer.weight[start:end]
        updated = weight + self.scaling * self._slice_product(name).detach().to(weight.dtype)
        return self.lora_magnitude[name] / updated.flatten(1).norm(dim=1).detach()

    def _adapted(self, name: str, result: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """What slice ``name`` adds to its rows of the base output ``result``: ``s * path`` (LoRA), or
        DoRA's ``(scale - 1) * W x + scale * s * path`` (PEFT's ``DoraLinearLayer.forward``)."""
        update = self._path(name, hidden) * self.scaling
        if not self.dora:
            return update
        scale = self._rescale(self._dora_scale(name), result)
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            base = result - self._rescale(self._bias(name), result) if self.base_layer.bias is not None else result
        else:  # dropout changes the input: the rescaled base term sees the dropped-out input, as in PEFT
            base = self._base_without_bias(name, hidden)
        return ((scale - 1) * base + scale * update).to(result.dtype)  # the fp32 magnitude must not widen a bf16 output

    @abc.abstractmethod
    def _bias(self, name: str) -> torch.Tensor:
        """The base bias of slice ``name``'s rows."""

    @abc.abstractmethod
    def _base_without_bias(self, name: str, hidden: torch.Tensor) -> torch.Tensor:
        """The base layer's rows of slice ``name`` applied to ``hidden``, without bias."""


class LoRALinear(LoRALayer):
    def __init__(
        self,
        base_layer: nn.Linear,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        out_slices: dict[str, tuple[int, int]] | None = None,
        **variant,
    ):
        super().__init__(base_layer, rank, alpha, dropout, **variant)
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

    def _path(self, name: str, hidden: torch.Tensor) -> torch.Tensor:
        path = self.lora_B[name](self.lora_A[name](hidden))
        initial = self.initial_factors(name)
        if initial is not None:
            path = path - nn.functional.linear(nn.functional.linear(hidden, initial[0]), initial[1])
        return path

    def _rescale(self, scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return scale

    def _bias(self, name: str) -> torch.Tensor:
        start, end = self.out_slices[name]
        return self.base_layer.bias[start:end]

    def _base_without_bias(self, name: str, hidden: torch.Tensor) -> torch.Tensor:
        start, end = self.out_slices[name]
        return nn.functional.linear(hidden, self.base_layer.weight[start:end])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        hidden = self.lora_dropout(x)
        if list(self.out_slices) == ["all"]:
            return result + self._adapted("all", result, hidden)
        # Rows outside every slice get no update: assemble [0 | delta_q | 0 | delta_v] along the features.
        pieces, cursor = [], 0
        for name, (start, end) in sorted(self.out_slices.items(), key=lambda item: item[1]):
            if start > cursor:
                pieces.append(result.new_zeros(*result.shape[:-1], start - cursor))
            pieces.append(self._adapted(name, result[..., start:end], hidden))
            cursor = end
        if cursor < result.shape[-1]:
            pieces.append(result.new_zeros(*result.shape[:-1], result.shape[-1] - cursor))
        return result + torch.cat(pieces, dim=-1)

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight ``W + dW`` (DoRA: rescaled per row), for owners that read ``.weight``
        instead of calling the layer (timm's BEiT and EVA, for ``qkv`` with separate q/v biases). On that
        path no dropout applies to the adapter's input. Differentiable: the factors train through it."""
        if self.watching_use:
            self.used = True
        weight = self.base_layer.weight
        if not self.dora and self.init not in PRINCIPAL_INITS:  # plain LoRA: the arithmetic of before, bit for bit
            delta = torch.zeros_like(weight)
            for name, (start, end) in self.out_slices.items():
                delta = delta.index_add(
                    0,
                    torch.arange(start, end, device=delta.device),
                    (self.lora_B[name].weight @ self.lora_A[name].weight).to(delta.dtype),
                )
            return weight + delta * self.scaling
        pieces, cursor = [], 0
        for name, (start, end) in sorted(self.out_slices.items(), key=lambda item: item[1]):
            updated = weight[start:end] + self._slice_product(name).to(weight.dtype) * self.scaling
            if self.dora:
                updated = updated * self._dora_scale(name).view(-1, 1)
            pieces += [weight[cursor:start], updated]
            cursor = end
        return torch.cat([*pieces, weight[cursor:]])

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias


class LoRAConv2d(LoRALayer):
    def __init__(self, base_layer: nn.Conv2d, rank: int, alpha: float, dropout: float = 0.0, **variant):
        super().__init__(base_layer, rank, alpha, dropout, **variant)
        self.out_slices = {"all": (0, base_layer.out_channels)}
        device = base_layer.weight.device
        # Everything that decides which input pixels meet which kernel tap is copied, the padding mode
        # included: with 'reflect' the adapter must see the same reflected border as the base layer.
        self.lora_A["all"] = nn.Conv2d(
            base_layer.in_channels,
            rank,
            base_layer.kernel_size,
            base_layer.stride,
            base_layer.padding,
            base_layer.dilation,
            bias=False,
            padding_mode=base_layer.padding_mode,
            device=device,
        )
        self.lora_B["all"] = nn.Conv2d(rank, base_layer.out_channels, 1, bias=False, device=device)
        self.reset_lora_parameters()

    def _path(self, name: str, hidden: torch.Tensor) -> torch.Tensor:
        path = self.lora_B[name](self.lora_A[name](hidden))
        initial = self.initial_factors(name)
        if initial is not None:  # A0 through lora_A's own padding, stride and dilation
            path = path - nn.functional.conv2d(self.lora_A[name]._conv_forward(hidden, initial[0], None), initial[1])
        return path

    def _rescale(self, scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return scale.view(1, -1, *[1] * (like.dim() - 2))

    def _bias(self, name: str) -> torch.Tensor:
        return self.base_layer.bias

    def _base_without_bias(self, name: str, hidden: torch.Tensor) -> torch.Tensor:
        return self.base_layer._conv_forward(hidden, self.base_layer.weight, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        return result + self._adapted("all", result, self.lora_dropout(x))


def wrap(
    module: nn.Module, rank: int, alpha: float, dropout: float, out_slices=None, name: str = "", **variant
) -> LoRALayer:
    """``module`` wrapped in its LoRA layer (``variant``: ``scaling``, ``dora``, ``init``, see
    :class:`LoRALayer`). Raises :class:`ConfigError` naming ``name`` when LoRA cannot adapt it exactly
    (:func:`refusal`) or the variant does not fit it (PiSSA/OLoRA with a rank above the matrix's)."""
    reason = refusal(module)
    if reason:
        raise ConfigError(f"LoRA cannot adapt {name or 'this layer'}: {reason}; choose other method.targets")
    try:
        if isinstance(module, nn.Linear):
            return LoRALinear(module, rank, alpha, dropout, out_slices, **variant)
        if out_slices:
            raise ValueError("out_slices apply to linear layers only")
        return LoRAConv2d(module, rank, alpha, dropout, **variant)
    except ConfigError as error:
        raise ConfigError(f"{name or 'this layer'}: {error}") from None


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
