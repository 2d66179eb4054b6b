"""Learning without Forgetting (Li & Hoiem, 2016) as paper 1 uses it: while task ``t`` trains, the
outputs of every earlier head (the upstream head included) are distilled from the model as it was
when task ``t`` started.

For each earlier head ``h`` with teacher logits ``z`` and student logits ``s`` on the current batch::

    L_h = - mean_batch sum_c softmax(z / T)_c log softmax(s / T)_c

and the term added to the task loss is ``alpha * sum_h L_h`` (paper 1: alpha 5, T 2). This is Li &
Hoiem's modified cross-entropy (FACIL's ``exp = 1/T``), without Hinton's ``T^2`` factor. The teacher
is a frozen deep copy made before the task, never the training model's own state.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft-target cross-entropy between temperature-scaled distributions, averaged over the batch."""
    targets = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return -(targets * F.log_softmax(student_logits.float() / temperature, dim=-1)).sum(dim=-1).mean()


class DistillationLoss:
    """``loss(images, outputs)`` for :func:`forgetlab.train.train_task`: LwF on ``heads``."""

    def __init__(self, model: nn.Module, heads: Sequence[str], alpha: float, temperature: float):
        if temperature <= 0:
            raise ValueError("LwF temperature must be positive")
        self.teacher = copy.deepcopy(model).eval().requires_grad_(False)
        self.heads = list(heads)
        self.alpha, self.temperature = alpha, temperature

    def __call__(self, images: torch.Tensor, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            targets = self.teacher(images, self.heads)
        return self.alpha * sum(distillation(outputs[h], targets[h], self.temperature) for h in self.heads)
