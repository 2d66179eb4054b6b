"""The interface every fine-tuning method keeps (the name -> method table is :mod:`forgetlab.methods.registry`).

A method decides what happens to the backbone (the task heads are the runner's business):

* its ``Config`` - a :class:`Checked` dataclass that refuses its own bad options when it is built
  (``method.rank=0``), so a config file, a preset, a sweep cell or the API all meet the same refusal.
* :meth:`Method.check_backbone` - the options whose limits depend on the backbone's architecture
  (top-k's ``k``, block expansion's positions), checked with the config on the architecture built
  without weights, so a sweep refuses such a cell before any cell runs.
* :meth:`Method.check_loaded` - before anything is written: refuse a backbone the method does not
  apply to where that needs the loaded backbone (LoRA's forward pass through every adapted layer).
  :meth:`Method.check` runs both checks on a loaded backbone, for callers outside the config path.
* :meth:`Method.prepare` - before a task: which backbone parameters train (``requires_grad``), and
  any modules it adds (LoRA adapters, expanded blocks).
* :meth:`Method.finish` - when the task ends: merge, store, or nothing.
* :meth:`Method.evaluating` - the state the backbone is in while a given head is scored (only LoRA's
  ``keep`` policy, which hot-swaps per-task adapters, needs more than the backbone as it is).
* :meth:`Method.save_task` / :meth:`Method.restore` - what a method keeps outside the backbone's
  weights (stored adapters) and the structure it added (expanded blocks), so that runs resume.

What the analysis and the report say about a run comes from its method's class too: :meth:`Method.label` (``lora r=4``,
``top-3``: how tables, figures and the report name its runs) and :meth:`Method.focus_rank`, so a new method needs no
edit outside its own file.

Everything else (the loop, the losses, evaluation) is shared, so LwF or replay combine with any
method through the config alone.

Imports: every method module imports this one; this one imports only :mod:`forgetlab.errors` (the
lookup, ``build_method`` and ``method_names``, is :mod:`forgetlab.methods`, from the registry).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import ClassVar, Literal, Union

from torch import nn

from forgetlab.errors import ConfigError


def literal_choices(tp) -> tuple[str, ...]:
    """The names a ``Literal[...]`` type allows (also inside ``Literal[...] | None``); ``()`` for any other type."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return next((choices for arg in typing.get_args(tp) if (choices := literal_choices(arg))), ())
    return tuple(typing.get_args(tp)) if typing.get_origin(tp) is Literal else ()


def choices_of(cls: type) -> dict[str, tuple[tuple[str, ...], bool]]:
    """``{field: (choices, comma_list)}`` of the fields of dataclass ``cls`` that take one of a few
    names: typed ``Literal[...]``, or a string holding a comma-joined list of them (metadata
    ``comma_list`` and ``choices``, e.g. ``eval.upstream_evaluator: head,knn``). Choices given as a
    function (a registry's names) are read at every call, so a name registered later counts."""
    return {
        name: (tuple(choices() if callable(choices) else choices), comma_list)
        for name, (choices, comma_list) in _declared_choices(cls).items()
    }


@functools.cache
def _declared_choices(cls: type) -> dict:
    hints = typing.get_type_hints(cls)
    found = {}
    for f in dataclasses.fields(cls):
        if choices := literal_choices(hints[f.name]):
            found[f.name] = (choices, False)
        elif "choices" in f.metadata:  # a tuple, or a function giving the names a registry holds now
            found[f.name] = (f.metadata["choices"], bool(f.metadata.get("comma_list")))
    return found


class Checked:
    """A config section that checks itself when it is built, as PEFT's ``LoraConfig.__post_init__``:
    every key typed ``Literal[...]`` holds one of its names, then every rule of :meth:`rules` holds.
    The run config's sections and every method's ``Config`` are ``Checked`` dataclasses, so a config
    read from a file, a preset, a sweep cell or built from Python meets the same one check.

    ``KEY`` is the section's dotted prefix in messages (``train.``, ``method.``). Raises
    :class:`~forgetlab.errors.ConfigError` with the first broken rule's one-line message."""

    KEY: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name, (choices, comma_list) in choices_of(type(self)).items():
            value, key = getattr(self, name), f"{self.KEY}{name}"
            items = value.split(",") if comma_list and isinstance(value, str) else [value]  # [head, knn] is "head,knn"
            bad = [item for item in items if item not in choices] if value is not None else []  # None: Optional
            if bad:
                within = f" (in {value!r})" if len(items) > 1 else ""
                raise ConfigError(f"{key} must be one of: {', '.join(choices)}; got {bad[0]!r}{within}")
            if len(set(items)) < len(items):
                raise ConfigError(f"{key} names one of its choices twice ({value}); give each once")
        for ok, message in self.rules():
            if not ok:
                raise ConfigError(message)

    def rules(self) -> list[tuple[bool, str]]:
        """``(holds, message)`` of every rule of this section's own keys, in the order they are checked."""
        return []


@dataclasses.dataclass
class MethodConfig(Checked):
    KEY: ClassVar[str] = "method."
    name: str = dataclasses.field(default="", metadata={"help": "the method"})


class Method:
    name: ClassVar[str]
    Config: ClassVar[type] = MethodConfig
    # True when learning a task cannot change what earlier tasks' heads see (per-task adapters):
    # then only the upstream head has anything to distil.
    isolates_tasks: ClassVar[bool] = False
    # True when the folder already holds every phase's update in a form of the method's own (LoRA's
    # adapters, which ``forgetlab explain`` rebuilds exactly): ``save.updates`` then writes nothing more.
    keeps_updates: ClassVar[bool] = False

    def __init__(self, config):
        self.config = config

    @classmethod
    def label(cls, options: dict) -> str:
        """The run's short method label from its stored ``method`` section (a dict, read through the
        current schema): ``lora r=4``, ``top-3``; the analysis adds ``+lwf`` and ``+replay``. Labels
        key tables and figures, so a method's label rule must tell its settings apart."""
        return options["name"]

    @classmethod
    def focus_rank(cls, options: dict) -> int | None:
        """Where the report draws one run per backbone (per-class forgetting), the run of the highest
        focus rank is drawn (paper 1 drew its largest LoRA rank); None: the method's runs are drawn
        only where no run of a ranked method exists."""
        return None

    @classmethod
    def reads_backbone(cls) -> bool:
        """Whether :meth:`check_backbone` checks anything (only then is the architecture built)."""
        return cls.check_backbone.__func__ is not Method.check_backbone.__func__

    @classmethod
    def check_backbone(cls, config, skeleton: nn.Module) -> None:
        """Raise :class:`ConfigError` if an option of ``config`` (the method's ``Config``) is out of the
        range ``skeleton`` allows: the backbone's architecture with no weights (meta tensors), built once
        per architecture when the config is resolved (:func:`forgetlab.config.validate`)."""

    def check_loaded(self, backbone: nn.Module) -> None:
        """Raise :class:`ConfigError` if the method does not apply to ``backbone`` (loaded, weights and
        all): only what needs the weights or a forward pass, as the run calls it after its config was
        resolved (which ran :meth:`check_backbone`)."""

    def check(self, backbone: nn.Module) -> None:
        """Every refusal of the method on ``backbone``: :meth:`check_backbone`, then :meth:`check_loaded`
        (``forgetlab anatomy``, tests; a run has checked the first with its config)."""
        self.check_backbone(self.config, backbone)
        self.check_loaded(backbone)

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
