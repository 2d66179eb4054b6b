"""LoRA (Hu et al., 2021) as paper 1 uses it: a fresh adapter per task, merged into the backbone when
the task ends (Soutif--Cormerais et al., 2025), so every task leaves a low-rank update of at most
``rank`` per adapted matrix behind in the weights.

Targets (``targets``):

=============== ============================================================= =====================
``default``     ``qkv`` for a ViT, ``conv3`` for a ResNet                       paper 1
``qkv``         the fused ``attn.qkv`` of every block; one rank shared by q,k,v paper 1 (ViT)
``q,v``         only the query and value rows of ``attn.qkv``                  paper 2
``attn``        ``attn.qkv`` and ``attn.proj``
``all_linear``  every linear layer of the backbone (not the heads)
``conv3``       the 1x1 ``conv3`` of every bottleneck                           paper 1 (ResNet)
``all_conv``    every convolution of the backbone
=============== ============================================================= =====================

The update of one ``in x out`` matrix costs ``rank * (in + out)`` parameters: on ViT-B/16's qkv
(768 -> 2304) that is 3,072 per unit of rank per block, about 0.042 % of the model (paper 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from forgetlab.errors import ConfigError
from forgetlab.methods.base import Method, backbone_kind, register_method
from forgetlab.models import lora_layers

TARGETS = ("default", "qkv", "q,v", "attn", "all_linear", "conv3", "all_conv")
_VIT_ONLY = ("qkv", "q,v", "attn")
_RESNET_ONLY = ("conv3",)


@dataclass
class LoRAConfig:
    name: str = field(default="lora", metadata={"help": "the method"})
    rank: int = field(default=4, metadata={"help": "rank r of every adapter"})
    alpha: float | None = field(default=None, metadata={"help": "LoRA alpha; default 2 x rank (paper 1)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the adapter's input (paper 1: 0.1)"})
    targets: str = field(default="default", metadata={"help": f"modules to adapt: {', '.join(TARGETS)}"})


@register_method
class LoRA(Method):
    name = "lora"
    Config = LoRAConfig

    def __init__(self, config: LoRAConfig):
        super().__init__(config)
        if config.rank < 1:
            raise ConfigError("method.rank must be at least 1")
        if not 0 <= config.dropout < 1:
            raise ConfigError("method.dropout must be in [0, 1)")
        if config.targets not in TARGETS:
            raise ConfigError(f"method.targets '{config.targets}' is unknown; choose one of: {', '.join(TARGETS)}")

    @property
    def alpha(self) -> float:
        return self.config.alpha if self.config.alpha is not None else 2.0 * self.config.rank

    def target_modules(self, backbone: nn.Module) -> dict[str, dict | None]:
        """``module name -> out_slices`` (None: the whole layer) of the layers to adapt."""
        kind = backbone_kind(backbone)
        targets = self.config.targets
        if targets == "default":
            targets = "qkv" if kind == "vit" else "conv3"
        if (kind == "resnet" and targets in _VIT_ONLY) or (kind == "vit" and targets in _RESNET_ONLY):
            raise ConfigError(f"method.targets '{targets}' does not apply to a {kind}; see 'forgetlab config --help'")
        head = backbone.get_classifier()
        head_names = {name for name, module in backbone.named_modules() if module is head}
        chosen = {}
        for name, module in backbone.named_modules():
            if name in head_names:
                continue
            if targets in ("qkv", "q,v", "attn") and name.endswith("attn.qkv"):
                chosen[name] = _qv_slices(module) if targets == "q,v" else None
            elif targets == "attn" and name.endswith("attn.proj"):
                chosen[name] = None
            elif targets == "all_linear" and isinstance(module, nn.Linear):
                chosen[name] = None
            elif targets == "conv3" and name.endswith(".conv3") and isinstance(module, nn.Conv2d):
                chosen[name] = None
            elif targets == "all_conv" and isinstance(module, nn.Conv2d):
                chosen[name] = None
        if not chosen:
            raise ConfigError(f"method.targets '{targets}' matched no module of this backbone")
        return chosen

    def prepare(self, model, task: str) -> None:
        super().prepare(model, task)  # freeze the backbone; the adapters are the only new parameters
        for name, out_slices in self.target_modules(model.backbone).items():
            module = model.backbone.get_submodule(name)
            adapter = lora_layers.wrap(module, self.config.rank, self.alpha, self.config.dropout, out_slices)
            model.backbone.set_submodule(name, adapter)

    def finish(self, model, task: str) -> None:
        lora_layers.merge_lora(model.backbone)


def _qv_slices(qkv: nn.Linear) -> dict[str, tuple[int, int]]:
    dim = qkv.out_features // 3
    return {"q": (0, dim), "v": (2 * dim, 3 * dim)}
