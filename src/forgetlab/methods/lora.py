"""LoRA (Hu et al., 2021) as paper 1 uses it: a fresh adapter per task, merged into the backbone when
the task ends (Soutif--Cormerais et al., 2025), so every task leaves a low-rank update of at most
``rank`` per adapted matrix behind in the weights.

Targets (``targets``), for any timm backbone (:mod:`forgetlab.models.families`):

=================== ========================================================= =====================
``default``         the family's: ``attn.qkv`` (ViT, DeiT, DINOv2, EVA, BEiT,   paper 1 (ViT, ResNet),
                    Swin), ``mlp.fc1,mlp.fc2`` (ConvNeXt), ``conv3`` (ResNet)  paper 2, common practice
``qkv``             the fused ``attn.qkv`` of every block; one rank for q,k,v  paper 1 (ViT)
``q,v``             only the query and value rows of ``attn.qkv``             paper 2
``attn``            ``attn.qkv`` and ``attn.proj``
``all_linear``      every linear layer of the backbone (not the heads)
``conv3``           the 1x1 ``conv3`` of every bottleneck                      paper 1 (ResNet)
``all_conv``        every ungrouped convolution of the backbone
``a.b,c``           PEFT-style module-name suffixes (``mlp.fc1,mlp.fc2``)
``re:REGEX``        module names matching REGEX in full (PEFT's string form)
=================== ========================================================= =====================

Before anything is written, one forward pass proves every chosen layer is really used through its
adapter (:func:`~forgetlab.models.families.check_adaptable`).

End-of-task policies (``policy``):

* ``merge`` (paper 1): the adapter is folded into the weights, so later tasks build on it and the
  upstream head sees the drifted features: this is what forgetting is measured on.
* ``keep``: the backbone never changes; each task's adapter is stored (in PEFT's format, under the
  run's ``adapters/<task>/``) and hot-swapped in when that task is scored; the upstream task is scored
  with no adapter, so its accuracy cannot move. Comparing the two on one sequence separates what
  merging costs from what the adapters learn.

Either way each task's adapter is written to ``adapters/<task>/`` and loads into ``peft``.

Variants (forgetlab's extension of paper 1; each combines with every target form, both policies, LwF
and replay, and merges exactly; :mod:`forgetlab.models.lora_layers` gives the maths):

* ``scaling``: ``standard`` (``alpha / r``, paper 1) or ``rslora`` (``alpha / sqrt(r)``, Kalajdzievski
  2023). Paper 1 fixes ``alpha = 2r``, so its scale is 2 at every rank; under rsLoRA it grows as
  ``2 sqrt(r)``, which is what the rank-forgetting question needs to separate.
* ``dora``: DoRA (Liu et al., 2024): a trainable magnitude per output row / channel on top of the
  low-rank direction update; ``rank x (in + out) + out`` parameters per adapted matrix.
* ``init``: ``kaiming`` (PEFT's default), ``gaussian``, ``pissa`` (Meng et al., 2024) or ``olora``
  (Buyukakyuz, 2024); the last two start from the weight's principal part and the merge still
  leaves the task's starting weight plus the learned update.

The update of one ``in x out`` matrix costs ``rank * (in + out)`` parameters: on ViT-B/16's qkv
(768 -> 2304) that is 3,072 per unit of rank per block, about 0.042 % of the model (paper 1).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from torch import nn

from forgetlab.methods.base import Checked, Method
from forgetlab.methods.registry import register_method
from forgetlab.models import families
from forgetlab.models import lora_layers
from forgetlab.models.adapter_files import load_adapter, save_adapter

POLICIES = ("merge", "keep")
SCALINGS, INITS = (
    lora_layers.SCALINGS,
    lora_layers.INITS,
)  # the Literal types below name the same (a test keeps them equal)
TARGETS = ("default", "qkv", "q,v", "attn", "all_linear", "conv3", "all_conv")  # named sets; patterns too


@dataclass
class LoRAConfig(Checked):
    KEY = "method."
    name: str = field(default="lora", metadata={"help": "the method"})
    rank: int = field(default=4, metadata={"help": "rank r of every adapter"})
    alpha: float | None = field(default=None, metadata={"help": "LoRA alpha; default 2 x rank (paper 1)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the adapter's input (paper 1: 0.1)"})
    targets: str = field(
        default="default",
        metadata={
            "help": f"modules to adapt: {', '.join(TARGETS)}, "
            "module-name suffixes (a.b,c, or PEFT's list form [q, v]) or re:REGEX",
            "comma_list": True,
        },
    )
    policy: Literal["merge", "keep"] = field(
        default="merge",
        metadata={"help": "end of a task: 'merge' into the weights (paper 1) or 'keep' per-task adapters"},
    )
    scaling: Literal["standard", "rslora"] = field(
        default="standard",
        metadata={"help": "adapter scale: 'standard' alpha / r (paper 1) or 'rslora' alpha / sqrt(r)"},
    )
    dora: bool = field(
        default=False, metadata={"help": "DoRA: a trainable magnitude per output row on top of the low-rank update"}
    )
    init: Literal["kaiming", "gaussian", "pissa", "olora"] = field(
        default="kaiming",
        metadata={
            "help": (
                "adapter init: 'kaiming' (paper 1, PEFT's default), 'gaussian', "
                "'pissa' or 'olora' (from the weight's principal part)"
            )
        },
    )

    def rules(self) -> list[tuple[bool, str]]:
        return [
            (self.rank >= 1, f"method.rank must be at least 1, got {self.rank}"),
            (0 <= self.dropout < 1, f"method.dropout must be in [0, 1), got {self.dropout}"),
            # alpha 0 scales every update to nothing: a run that trains only its heads, reported as LoRA's
            (
                self.alpha is None or self.alpha > 0,
                f"method.alpha must be positive, got {self.alpha}; leave it unset for 2 x method.rank",
            ),
            (
                bool(self.targets.strip()),
                f"method.targets is empty; choose one of: {', '.join(TARGETS)}, suffixes or re:REGEX",
            ),
            (
                not self.targets.strip() or bool(families.target_matcher(self.targets)),
                "",
            ),  # a bad pattern raises its own message
            (isinstance(self.dora, bool), f"method.dora must be true or false, got {self.dora!r}"),
        ]


@register_method
class LoRA(Method):
    name = "lora"
    Config = LoRAConfig
    keeps_updates = True  # adapters/<phase>/ hold every phase's update (save.updates adds nothing)

    def __init__(self, config: LoRAConfig):
        super().__init__(config)  # its options were checked when the config was built (LoRAConfig.rules)
        self.isolates_tasks = config.policy == "keep"
        self.adapters: dict[str, dict[str, lora_layers.LoRALayer]] = {}  # task -> module name -> its adapter
        self._base_model = ""  # the backbone's timm architecture, once prepared: PEFT's base_model_name_or_path

    @classmethod
    def label(cls, options: dict) -> str:
        return f"lora r={options['rank']}" + (" keep" if options.get("policy") == "keep" else "")

    @classmethod
    def focus_rank(cls, options: dict) -> int | None:
        # merged LoRA is what paper 1 drew; kept adapters leave the upstream features as they were
        return None if options.get("policy") == "keep" else options["rank"]

    @property
    def alpha(self) -> float:
        return self.config.alpha if self.config.alpha is not None else 2.0 * self.config.rank

    @property
    def variant(self) -> dict:
        """The variant's options, as :class:`~forgetlab.models.lora_layers.LoRALayer` takes them."""
        return {"scaling": self.config.scaling, "dora": self.config.dora, "init": self.config.init}

    def target_modules(self, backbone: nn.Module) -> dict[str, dict | None]:
        """``module name -> out_slices`` (None: the whole layer) of the layers to adapt."""
        return target_modules(backbone, self.config.targets)

    def check_loaded(self, backbone: nn.Module) -> None:
        chosen = self.target_modules(backbone)
        wrap = lambda name, module: lora_layers.wrap(
            module, self.config.rank, self.alpha, 0.0, chosen[name], name=name, **self.variant
        )  # noqa: E731
        families.check_adaptable(backbone, list(chosen), wrap)

    def prepare(self, model, task: str) -> None:
        super().prepare(model, task)  # freeze the backbone; the adapters are the only new parameters
        self._base_model = (getattr(model.backbone, "pretrained_cfg", None) or {}).get("architecture", "")
        for name, out_slices in self.target_modules(model.backbone).items():
            module = model.backbone.get_submodule(name)
            adapter = lora_layers.wrap(
                module, self.config.rank, self.alpha, self.config.dropout, out_slices, name=name, **self.variant
            )
            model.backbone.set_submodule(name, adapter)

    def finish(self, model, task: str) -> None:
        adapters = dict(lora_layers.lora_layers(model.backbone))
        for layer in adapters.values():
            layer.requires_grad_(False)
        if self.config.policy == "merge":
            # The merge unwraps the layers but leaves their factors intact: kept for the adapter file.
            self.adapters = {task: adapters}
            lora_layers.merge_lora(model.backbone)
        else:
            self.adapters[task] = adapters
            lora_layers.unwrap_lora(model.backbone)

    @contextlib.contextmanager
    def evaluating(self, model, head: str):
        if self.config.policy == "merge" or head not in self.adapters:
            yield  # merged: the backbone is what every head sees; the upstream head sees the bare one
            return
        for name, layer in self.adapters[head].items():
            model.backbone.set_submodule(name, layer)
        try:
            yield
        finally:
            lora_layers.unwrap_lora(model.backbone)

    def save_task(self, task: str, folder: Path, phase: str | None = None) -> None:
        save_adapter(
            folder / "adapters" / (phase or task),
            self.adapters[task],
            task=task,
            base_model=self._base_model,
            dropout=self.config.dropout,
        )
        if self.config.policy == "merge":
            self.adapters.clear()

    def restore(self, model, phases, folder: Path) -> None:
        if self.config.policy == "keep":
            for task, phase in phases:  # a task trained twice is scored with its latest adapter
                self.adapters[task] = load_adapter(folder / "adapters" / phase, model.backbone, self.config.dropout)


def target_modules(backbone: nn.Module, targets: str) -> dict[str, dict | None]:
    """``module name -> out_slices`` (None: the whole layer) of the layers ``targets`` names."""
    if targets == "q,v":
        return {
            name: _qv_slices(backbone.get_submodule(name))
            for name in families.select_modules(backbone, "qkv", kinds=(nn.Linear,))
        }
    return dict.fromkeys(families.select_modules(backbone, targets))


def _qv_slices(qkv: nn.Linear) -> dict[str, tuple[int, int]]:
    dim = qkv.out_features // 3
    return {"q": (0, dim), "v": (2 * dim, 3 * dim)}
