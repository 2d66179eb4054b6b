"""Linear probing: only the task head trains; the backbone is bit-for-bit unchanged (paper 2).

It is the no-forgetting reference of both papers: upstream accuracy cannot move, and its downstream
accuracy is the reference for forward transfer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from forgetlab.methods.base import Checked, Method
from forgetlab.methods.registry import register_method


@dataclass
class LinearConfig(Checked):
    KEY = "method."
    name: str = field(default="linear", metadata={"help": "the method"})


@register_method
class Linear(Method):
    name = "linear"
    Config = LinearConfig
    # Method.prepare already freezes the whole backbone; the runner trains the task head.
