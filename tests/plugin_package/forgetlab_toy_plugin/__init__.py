"""BitFit (Ben Zaken et al., 2022) as a forgetlab method from an installed package: only the backbone's
bias terms train. It exists to prove that a package of one's own extends forgetlab through the
``forgetlab.plugins`` entry-point group, with no edit of forgetlab's files."""

from __future__ import annotations

from dataclasses import dataclass, field

import forgetlab
from forgetlab.methods import Method


@dataclass
class BitFitConfig:
    name: str = field(default="bitfit", metadata={"help": "the method"})
    norms: bool = field(default=False, metadata={"help": "the normalisation layers' biases train too"})


@forgetlab.register_method
class BitFit(Method):
    name = "bitfit"
    Config = BitFitConfig

    def prepare(self, model, task: str) -> None:
        super().prepare(model, task)  # everything frozen, then the biases thaw
        for module_name, module in model.backbone.named_modules():
            is_norm = "norm" in type(module).__name__.lower() or module_name.endswith(("bn1", "bn2", "bn3"))
            bias = getattr(module, "bias", None)
            if bias is not None and (self.config.norms or not is_norm):
                bias.requires_grad_(True)
