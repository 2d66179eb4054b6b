"""The interface every fine-tuning method keeps (the name -> method table is :mod:`forgetlab.methods.registry`).

A method decides what happens to the backbone (the task heads are the runner's business):

* :meth:`Method.check` - before anything is written: refuse a backbone the method does not apply to.
* :meth:`Method.prepare` - before a task: which backbone parameters train (``requires_grad``), and
  any modules it adds (LoRA adapters, expanded blocks).
* :meth:`Method.finish` - when the task ends: merge, store, or nothing.
* :meth:`Method.evaluating` - the state the backbone is in while a given head is scored (only LoRA's
  ``keep`` policy, which hot-swaps per-task adapters, needs more than the backbone as it is).
* :meth:`Method.save_task` / :meth:`Method.restore` - what a method keeps outside the backbone's
  weights (stored adapters) and the structure it added (expanded blocks), so that runs resume.

Everything else (the loop, the losses, evaluation) is shared, so LwF or replay combine with any
method through the config alone.

Imports: every method module imports this one; this one imports nothing of forgetlab (the lookup,
``build_method`` and ``method_names``, is :mod:`forgetlab.methods`, from the registry).
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import ClassVar

from torch import nn


@dataclasses.dataclass
class MethodConfig:
    name: str = dataclasses.field(default="", metadata={"help": "the method"})


class Method:
    name: ClassVar[str]
    Config: ClassVar[type] = MethodConfig
    # True when learning a task cannot change what earlier tasks' heads see (per-task adapters):
    # then only the upstream head has anything to distil.
    isolates_tasks: ClassVar[bool] = False

    def __init__(self, config):
        self.config = config

    def check(self, backbone: nn.Module) -> None:
        """Raise :class:`ConfigError` if the method does not apply to ``backbone``."""

    def prepare(self, model: "MultiHeadModel", task: str) -> None:  # noqa: F821
        """Make the backbone ready to learn ``task``: set ``requires_grad``, add modules."""
        for parameter in model.backbone.parameters():
            parameter.requires_grad_(False)

    def finish(self, model: "MultiHeadModel", task: str) -> None:  # noqa: F821
        """End of ``task``: fold, store or drop what :meth:`prepare` added."""

    def evaluating(self, model: "MultiHeadModel", head: str) -> contextlib.AbstractContextManager:  # noqa: F821
        """A context in which ``model`` scores ``head`` (the upstream head or a finished task's)."""
        return contextlib.nullcontext()

    def save_task(self, task: str, folder: Path, phase: str | None = None) -> None:
        """Write what the method keeps of the training phase ``phase`` (of ``task``; by default the
        phase is the task itself) outside the model's state dict into ``folder``."""

    def restore(self, model: "MultiHeadModel", phases: list[tuple[str, str]], folder: Path) -> None:  # noqa: F821
        """Before a resumed run loads its checkpoint: rebuild the structure the finished ``phases``
        (``(task, phase)`` pairs, in order) left behind and reload what :meth:`save_task` wrote."""

    def describe(self) -> str:
        fields = {k: v for k, v in dataclasses.asdict(self.config).items() if k != "name"}
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in fields.items())})"
