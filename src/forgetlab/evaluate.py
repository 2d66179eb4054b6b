"""Evaluation: per-example predictions through a head, and named upstream evaluators.

An evaluator is a small named unit (big_vision's style): it takes the model and a dataset and returns
``(accuracy, predictions)``, where ``predictions`` are the per-example predicted labels kept for the
per-class forgetting analysis.
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from forgetlab.data.base import dataset_labels
from forgetlab.errors import ConfigError
from forgetlab.models.multihead import UPSTREAM
from forgetlab.runtime import autocast, progress
from forgetlab.train import make_loader


@torch.no_grad()
def predict(model, head: str, dataset: Dataset, *, batch_size: int, device, amp_dtype, workers: int = 0, description="eval") -> np.ndarray:
    """Predicted labels of ``head`` for every example of ``dataset``, in order."""
    model.eval()
    loader = make_loader(dataset, batch_size, shuffle=False, device=device, workers=workers)
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


def head_evaluator(model, dataset: Dataset, *, batch_size, device, amp_dtype, workers: int = 0, description="upstream"):
    """Paper 1: the upstream task scored by its original, frozen classifier."""
    predictions = predict(model, UPSTREAM, dataset, batch_size=batch_size, device=device, amp_dtype=amp_dtype,
                          workers=workers, description=description)  # fmt: skip
    return accuracy(predictions, dataset_labels(dataset)), predictions


def confidence_interval(accuracy_value: float, count: int) -> float:
    """Half-width of the 95 % normal-approximation interval of an accuracy over ``count`` images."""
    return 1.96 * math.sqrt(max(accuracy_value * (1 - accuracy_value), 0.0) / count) if count else math.nan


@torch.no_grad()
def extract_features(model, dataset: Dataset, *, batch_size, device, amp_dtype, workers: int = 0, description="features",
                     head: str | None = None) -> torch.Tensor:  # fmt: skip
    """L2-normalised pooled backbone features of every example, fp32 on the CPU; with ``head``, that
    head's outputs instead (paper 2's LoRA bug, see :class:`KNNEvaluator`)."""
    model.eval()
    chunks = []
    loader = make_loader(dataset, batch_size, shuffle=False, device=device, workers=workers)
    for images, _ in progress(loader, desc=description, unit="batch"):
        with autocast(device, amp_dtype):
            images = images.to(device, non_blocking=True)
            features = model.features(images) if head is None else model(images, [head])[head]
        chunks.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu())
    return torch.cat(chunks) if chunks else torch.zeros(0, model.num_features)


def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, *, k: int, temperature: float,
                num_classes: int, chunk: int = 1024) -> torch.Tensor:  # fmt: skip
    """DINO's weighted k-NN: the ``k`` most cosine-similar bank features vote for their label with
    weight ``exp(similarity / temperature)``; the class with the largest total wins (ties: lowest id)."""
    k = min(k, len(bank))
    predictions = []
    for start in range(0, len(queries), chunk):
        similarity = queries[start : start + chunk] @ bank.T
        top, index = similarity.topk(k, dim=-1)
        votes = torch.zeros(len(top), num_classes, dtype=torch.float64)
        votes.scatter_add_(1, bank_labels[index], (top.double() / temperature).exp())
        predictions.append(votes.argmax(dim=-1))
    return torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)


class KNNEvaluator:
    """Paper 2: the upstream task scored by weighted k-NN on backbone features against a bank of the
    upstream train set. The bank is cached per backbone state (a hash of its weights), so it is
    recomputed exactly when the backbone changed and reused otherwise (e.g. by linear probing).

    Bank and queries are both read with the deterministic evaluation transform: the bank dataset is
    taken through :func:`forgetlab.data.base.evaluation_view`, whatever transform it trains with.

    ``features='task_logits'`` reproduces a bug of paper 2's code for its LoRA rows: the k-NN ran on the
    outputs of the downstream classifier (100-d for CIFAR-100), not on backbone features. It applies to
    rows after a task (the pretrained row has no task head and uses backbone features)."""

    def __init__(self, bank: Dataset, num_classes: int, *, k: int = 20, ks=(10, 20, 100, 200), temperature: float = 0.07,
                 features: str = "backbone"):  # fmt: skip
        if len(bank) == 0:
            raise ConfigError("the k-NN evaluator needs the upstream train split as its bank; add it or use eval.upstream_evaluator=head")
        from forgetlab.data.base import evaluation_view

        self.bank, self.num_classes, self.k, self.temperature = evaluation_view(bank), num_classes, k, temperature
        self.features = features
        self.ks = sorted(set(ks) | {k})
        self.bank_labels = torch.as_tensor(dataset_labels(bank), dtype=torch.long)
        self._cache: dict[str, torch.Tensor] = {}
        self.last: dict[int, float] = {}  # accuracy at every k of the last call

    @staticmethod
    def fingerprint(model, head: str | None = None) -> str:
        digest = hashlib.sha256()
        state = dict(model.backbone.state_dict())
        if head is not None:
            state.update({f"head:{head}.{k}": v for k, v in model.head(head).state_dict().items()})
        for name, tensor in sorted(state.items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def __call__(self, model, dataset: Dataset, *, batch_size, device, amp_dtype, workers: int = 0, description="upstream k-NN"):
        head = None
        if self.features == "task_logits" and len(getattr(model, "heads", ())):
            head = list(model.heads)[-1]  # the latest task's classifier
        key = self.fingerprint(model, head)
        options = {"batch_size": batch_size, "device": device, "amp_dtype": amp_dtype, "workers": workers, "head": head}
        if key not in self._cache:
            self._cache = {key: extract_features(model, self.bank, **options, description="k-NN bank")}
        bank = self._cache[key]
        queries = extract_features(model, dataset, **options, description=description)
        labels = dataset_labels(dataset)
        results = {}
        for k in self.ks:
            predicted = knn_predict(bank, self.bank_labels, queries, k=k, temperature=self.temperature, num_classes=self.num_classes)
            results[k] = predicted.numpy()
        self.last = {k: accuracy(p, labels) for k, p in results.items()}
        return self.last[self.k], results[self.k].astype(np.int64)


UPSTREAM_EVALUATORS = ("head", "knn")


def build_upstream_evaluator(eval_config, upstream) -> Callable:
    """The named evaluator of the upstream task: ``head`` (paper 1) or ``knn`` (paper 2)."""
    if eval_config.upstream_evaluator == "head":
        return head_evaluator
    if eval_config.upstream_evaluator == "knn":
        return KNNEvaluator(upstream.train, upstream.num_classes, k=eval_config.knn_k, temperature=eval_config.knn_temperature,
                            features=eval_config.knn_features)  # fmt: skip
    raise ConfigError(f"unknown eval.upstream_evaluator '{eval_config.upstream_evaluator}'; choose one of: {', '.join(UPSTREAM_EVALUATORS)}")
