"""Model selection within a task: paper 2's code scores the task's test set every 500 steps (250 for
linear probing) and keeps the checkpoint with the best accuracy (Lightning's ``ModelCheckpoint`` on
``val_acc``, with the test set as the validation set), then reports every number from it.

That is optimistic (the test set chooses the weights), which is why forgetlab's default is the last
weights (``train.select=last``); the paper-2 presets use ``best`` to reproduce its numbers.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class BestCheckpoint:
    """Score with ``score(model) -> accuracy`` every ``every`` steps and at the last step; keep a copy
    of the trainable parameters of the best-scoring step (the first of equal ones)."""

    def __init__(self, every: int, score: Callable[[nn.Module], float]):
        if every < 1:
            raise ValueError("eval_every must be at least 1")
        self.every, self._score = every, score
        self.history: list[tuple[int, float]] = []  # (step, accuracy)
        self.best_step: int | None = None
        self.best_accuracy = float("-inf")
        self._best: dict[str, torch.Tensor] = {}

    def due(self, step: int, total_steps: int) -> bool:
        return step % self.every == 0 or step == total_steps

    @torch.no_grad()
    def score(self, model: nn.Module, step: int) -> float:
        accuracy = float(self._score(model))
        self.history.append((step, accuracy))
        if accuracy > self.best_accuracy:
            self.best_step, self.best_accuracy = step, accuracy
            self._best = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        return accuracy

    @torch.no_grad()
    def restore_best(self, model: nn.Module) -> None:
        """Put the best step's trainable parameters back (nothing if the last step was the best)."""
        if not self._best or self.best_step == (self.history[-1][0] if self.history else None):
            return
        parameters = dict(model.named_parameters())
        for name, value in self._best.items():
            parameters[name].copy_(value)

    def record(self) -> dict:
        return {
            "selected_step": self.best_step,
            "selected_accuracy": self.best_accuracy,
            "scored": [{"step": step, "accuracy": accuracy} for step, accuracy in self.history],
        }
