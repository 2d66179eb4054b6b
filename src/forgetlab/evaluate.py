"""Evaluation: per-example predictions through a head, and named upstream evaluators.

An evaluator is a small named unit (big_vision's style): it takes the model and a dataset and returns
``(accuracy, predictions)``, where ``predictions`` are the per-example predicted labels kept for the
per-class forgetting analysis.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from forgetlab.errors import ConfigError
from forgetlab.models.multihead import UPSTREAM
from forgetlab.runtime import autocast, progress
from forgetlab.train import make_loader


def dataset_labels(dataset: Dataset) -> np.ndarray:
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return np.asarray(labels)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))])


@torch.no_grad()
def predict(model, head: str, dataset: Dataset, *, batch_size: int, device, amp_dtype, description="eval") -> np.ndarray:
    """Predicted labels of ``head`` for every example of ``dataset``, in order."""
    model.eval()
    loader = make_loader(dataset, batch_size, shuffle=False, device=device)
    predictions = []
    for images, _ in progress(loader, desc=description, unit="batch"):
        with autocast(device, amp_dtype):
            logits = model(images.to(device, non_blocking=True), [head])[head]
        predictions.append(logits.argmax(dim=-1).cpu())
    return torch.cat(predictions).numpy().astype(np.int64) if predictions else np.zeros(0, np.int64)


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) == 0:
        return float("nan")
    return float((np.asarray(predictions) == np.asarray(labels)).mean())


def head_evaluator(model, dataset: Dataset, *, batch_size, device, amp_dtype, description="upstream"):
    """Paper 1: the upstream task scored by its original, frozen classifier."""
    predictions = predict(model, UPSTREAM, dataset, batch_size=batch_size, device=device, amp_dtype=amp_dtype, description=description)
    return accuracy(predictions, dataset_labels(dataset)), predictions


UPSTREAM_EVALUATORS: dict[str, Callable] = {"head": head_evaluator}


def upstream_evaluator(name: str) -> Callable:
    if name not in UPSTREAM_EVALUATORS:
        raise ConfigError(f"unknown eval.upstream_evaluator '{name}'; choose one of: {', '.join(UPSTREAM_EVALUATORS)}")
    return UPSTREAM_EVALUATORS[name]
