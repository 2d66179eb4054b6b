"""Evaluation: per-example predictions through a head, and named upstream evaluators.

An upstream evaluator is a small named unit (big_vision's style): registered by name with
:func:`register_evaluator` (``head``, ``knn``, ``probe``), it takes the model, a dataset and the run's
:class:`~forgetlab.runtime.Runtime` (device, autocast dtype, evaluation batch size, loader workers,
progress) and returns an :class:`UpstreamResult`: the accuracy, the per-example predicted labels kept for
the per-class forgetting analysis, and any further accuracies by name (the k-NN's at every k). Nothing
leaves through attributes.

Imports run down: datasets become batches on the device through :mod:`forgetlab.data.loader` (as in
training) and cached evaluation crops through :mod:`forgetlab.data.eval_cache`; the runner, pretraining and
single-adapter evaluation import this.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from forgetlab import caches
from forgetlab.data.base import dataset_fingerprint, dataset_labels
from forgetlab.data.eval_cache import EvalCrops, evaluation_batches
from forgetlab.errors import ConfigError
from forgetlab.evaluators import evaluator_factory, register_evaluator
from forgetlab.linear_probe import LinearProbe
from forgetlab.models.multihead import UPSTREAM
from forgetlab.runtime import Runtime


@torch.no_grad()
def predict(model, head: str, dataset: Dataset, runtime: Runtime, *, description="eval") -> np.ndarray:
    """Predicted labels ``[N]`` (int64, on the host) of ``head`` for every example of ``dataset``, in
    order, in batches of ``runtime.eval_batch_size`` on ``runtime.device``. The predictions stay on the
    device until the pass ends (one copy to the host); cached evaluation crops are computed while they
    are evaluated (:func:`forgetlab.data.eval_cache.evaluation_batches`)."""
    model.eval()
    predictions = []
    produced, total = evaluation_batches(dataset, runtime.eval_batch_size, runtime.device, runtime.workers)
    for images, _ in runtime.progress(produced, total=total, desc=description, unit="batch"):
        with runtime.autocast():
            logits = model(images, [head])[head]
        predictions.append(logits.argmax(dim=-1))
    return torch.cat(predictions).cpu().numpy().astype(np.int64) if predictions else np.zeros(0, np.int64)


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) == 0:
        return float("nan")
    return float((np.asarray(predictions) == np.asarray(labels)).mean())


@dataclasses.dataclass
class UpstreamResult:
    """What an upstream evaluator returns: ``accuracy`` (a fraction, NaN for an empty set), ``predictions``
    (``[N]`` int64 predicted labels, in the dataset's order), ``at_k`` (the k-NN's accuracy at every k; empty
    for other evaluators) and, for several evaluators at once, ``each`` evaluator's own result by name
    (then ``accuracy`` and ``predictions`` are the first one's)."""

    evaluator: str
    accuracy: float
    predictions: np.ndarray
    at_k: dict[int, float] = dataclasses.field(default_factory=dict)
    each: dict[str, UpstreamResult] = dataclasses.field(default_factory=dict)

    def record(self) -> dict:
        """The fields ``upstream_eval.json`` adds to a row for this result: with several evaluators each one's
        accuracy under its name and its accuracies at every k under ``<name>_at_k``; with one, its accuracies
        at every k under its name (``{"knn": {"10": 0.61, ...}}``); nothing for the head alone."""
        if self.each:
            fields: dict = {name: result.accuracy for name, result in self.each.items()}
            fields.update({f"{name}_at_k": _by_k(result.at_k) for name, result in self.each.items() if result.at_k})
            return fields
        return {self.evaluator: _by_k(self.at_k)} if self.at_k else {}

    def predictions_by_evaluator(self) -> dict[str, np.ndarray]:
        """``predictions_<name>`` of every evaluator when there are several (the lost/misaligned split
        bootstraps over them; written next to the predictions); empty with one."""
        return {f"predictions_{name}": result.predictions for name, result in self.each.items()}


def _by_k(values: dict[int, float]) -> dict[str, float]:
    return {str(k): value for k, value in values.items()}


def head_evaluator(model, dataset: Dataset, runtime: Runtime, *, description="upstream") -> UpstreamResult:
    """Paper 1: the upstream task scored by its original, frozen classifier."""
    predictions = predict(model, UPSTREAM, dataset, runtime, description=description)
    return UpstreamResult("head", accuracy(predictions, dataset_labels(dataset)), predictions)


@register_evaluator("head")
def build_head_evaluator(eval_config, upstream, crop_cache=None) -> Callable:
    """The frozen upstream head (:func:`head_evaluator`); it needs nothing from the config."""
    return head_evaluator


def confidence_interval(accuracy_value: float, count: int) -> float:
    """Half-width of the 95 % normal-approximation interval of an accuracy over ``count`` images."""
    return 1.96 * math.sqrt(max(accuracy_value * (1 - accuracy_value), 0.0) / count) if count else math.nan


@torch.no_grad()
def extract_features(
    model, dataset: Dataset, runtime: Runtime, *, description="features", head: str | None = None
) -> torch.Tensor:
    """L2-normalised pooled backbone features ``[N, D]`` of every example, fp32 on ``runtime.device``
    (they stay there for the k-NN vote; nothing is copied per batch); with ``head``, that head's outputs
    instead (paper 2's LoRA bug, see :class:`KNNEvaluator`)."""
    model.eval()
    chunks, device = [], runtime.device
    produced, total = evaluation_batches(dataset, runtime.eval_batch_size, device, runtime.workers)
    for images, _ in runtime.progress(produced, total=total, desc=description, unit="batch"):
        with runtime.autocast():
            features = model.features(images) if head is None else model(images, [head])[head]
        chunks.append(torch.nn.functional.normalize(features.float(), dim=-1))
    return torch.cat(chunks) if chunks else torch.zeros(0, model.num_features, device=device)


def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    *,
    k: int,
    temperature: float,
    num_classes: int,
    chunk: int = 1024,
) -> torch.Tensor:
    """DINO's weighted k-NN: the ``k`` most cosine-similar bank features vote for their label with
    weight ``exp(similarity / temperature)``; the class with the largest total wins (ties: lowest id)."""
    return knn_predict_many(
        bank, bank_labels, queries, ks=(k,), temperature=temperature, num_classes=num_classes, chunk=chunk
    )[k]


def knn_predict_many(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    *,
    ks,
    temperature: float,
    num_classes: int,
    chunk: int = 1024,
) -> dict[int, torch.Tensor]:
    """:func:`knn_predict` at every ``k`` of ``ks`` from one similarity and one top-k pass per chunk of
    queries, on the bank's device (a GPU: seconds for ImageNet's 1.28 M x 768 bank and 50,000 queries).

    The similarity is computed in the bank's dtype (fp16 storage halves its memory; the votes, in
    float64, then come from fp16 similarities) and the votes are summed in float64. Predictions stay on
    the device until the last chunk and come back on the CPU in one copy per ``k``."""
    device = bank.device
    labels = bank_labels.to(device)
    k_max = min(max(ks), len(bank))
    predictions = {k: [] for k in ks}
    for start in range(0, len(queries), chunk):
        similarity = queries[start : start + chunk].to(device=device, dtype=bank.dtype) @ bank.T
        top, index = similarity.float().topk(k_max, dim=-1)  # sorted, so the first k are the top k
        weights = (top.double() / temperature).exp()
        neighbour_labels = labels[index]
        for k in ks:
            k_used = min(k, k_max)
            votes = torch.zeros(len(top), num_classes, dtype=torch.float64, device=device)
            votes.scatter_add_(1, neighbour_labels[:, :k_used], weights[:, :k_used])
            predictions[k].append(votes.argmax(dim=-1))
    return {k: torch.cat(p).cpu() if p else torch.zeros(0, dtype=torch.long) for k, p in predictions.items()}


class KNNEvaluator:
    """Paper 2: the upstream task scored by weighted k-NN on backbone features against a bank of the
    upstream train set. The bank is cached per key (:meth:`bank_key`: the backbone as built, its
    weights, the bank's data and preprocessing, the feature mode and the precision), so it is
    recomputed exactly when one of them changed and reused otherwise (e.g. by linear probing).

    Bank and queries are both read with the deterministic evaluation transform: the bank dataset is
    taken through :func:`forgetlab.data.base.evaluation_view`, whatever transform it trains with.

    ``features='task_logits'`` reproduces a bug of paper 2's code for its LoRA rows: the k-NN ran on the
    outputs of the downstream classifier (100-d for CIFAR-100), not on backbone features. It applies to
    rows after a task (the pretrained row has no task head and uses backbone features).

    The votes span the bank's labels (``0 .. max label``): a class without a bank example gets no vote,
    so the predictions are those over the upstream task's whole label space."""

    def __init__(
        self,
        bank: Dataset,
        *,
        k: int = 20,
        ks=(10, 20, 100, 200),
        temperature: float = 0.07,
        features: str = "backbone",
        bank_dtype: str = "fp32",
        cache_dir: Path | None = None,
        crop_cache=None,
    ):
        if len(bank) == 0:
            raise ConfigError(
                "the k-NN evaluator (eval.upstream_evaluator=knn) needs the upstream "
                "task's train split as its bank, and it has none; for ImageNet place "
                "train/ as wnid folders under data.root/imagenet (forgetlab data check)"
            )
        from forgetlab.data.base import evaluation_view

        self.bank, self.k, self.temperature = evaluation_view(bank), k, temperature
        self.features, self.bank_dtype = features, {"fp32": torch.float32, "fp16": torch.float16}[bank_dtype]
        self.cache_dir = cache_dir  # banks on disk, shared by runs and sweep cells: $FORGETLAB_HOME/knn-banks
        self._bank_print = dataset_fingerprint(self.bank)  # None: a kind of dataset without one (never read from disk)
        if crop_cache is not None:  # the bank's evaluation crops from $FORGETLAB_HOME/eval-crops (data.eval_cache)
            self.bank = crop_cache(self.bank, what="k-NN bank")
            if self._bank_print is not None and isinstance(self.bank, EvalCrops) and self.bank.key:
                self._bank_print += f"|crops:{self.bank.key}"  # device-path crops are rounded to uint8
        self._weights = caches.WeightsDigest()
        self.computed = 0  # banks computed (not read from the disk cache) by this evaluator
        self.ks = sorted(set(ks) | {k})
        self.bank_labels = torch.as_tensor(dataset_labels(bank), dtype=torch.long)
        self.num_classes = int(self.bank_labels.max()) + 1  # the votes' width (see the class's docstring)
        self._cache: dict[str, torch.Tensor] = {}

    def bank_key(self, model, head: str | None, runtime: Runtime) -> str:
        """The bank's cache key (:func:`forgetlab.caches.knn_bank_key`): the backbone as built and its
        weights (with ``head``'s when the features are that head's outputs), the bank's data, crops and
        evaluation transform, the feature mode and the precision as resolved. The weights' digest is
        recomputed only for the tensors changed since the last call (:class:`forgetlab.caches.WeightsDigest`)."""
        modules = {"backbone": model.backbone, **({f"head:{head}": model.head(head)} if head is not None else {})}
        tree = "\n".join(f"{name}: {module!r}" for name, module in sorted(modules.items()))
        tf32 = runtime.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
        precision = f"{runtime.device.type}|autocast={runtime.amp_dtype}|tf32={tf32}"
        return caches.knn_bank_key(
            model_args=caches.model_arguments(model.backbone),
            model_tree=tree,
            weights=self._weights(modules),
            bank=self._bank_print,
            features=self.features,
            precision=precision,
        )

    def __call__(self, model, dataset: Dataset, runtime: Runtime, *, description="upstream k-NN") -> UpstreamResult:
        """The k-NN's result at ``self.k`` (accuracy, predictions), with its accuracy at every k of ``self.ks``."""
        head = None
        if self.features == "task_logits" and len(model.heads):
            head = list(model.heads)[-1]  # the latest task's classifier
        key = self.bank_key(model, head, runtime)
        if key not in self._cache:
            self._cache = {key: self._bank(model, key, runtime, head).to(device=runtime.device, dtype=self.bank_dtype)}
        bank = self._cache[key]
        queries = extract_features(model, dataset, runtime, description=description, head=head)
        labels = dataset_labels(dataset)
        predicted = knn_predict_many(
            bank, self.bank_labels, queries, ks=self.ks, temperature=self.temperature, num_classes=self.num_classes
        )
        results = {k: p.numpy() for k, p in predicted.items()}
        at_k = {k: accuracy(p, labels) for k, p in results.items()}
        return UpstreamResult("knn", at_k[self.k], results[self.k].astype(np.int64), at_k)

    def _bank(self, model, key: str, runtime: Runtime, head: str | None) -> torch.Tensor:
        """The bank's features: read from the disk cache when this backbone state, bank, preprocessing
        and precision were seen before (by any run), else computed and written there atomically, under
        the bank's lock (:func:`forgetlab.results.build_lock`): runs that need the same bank at once
        (a sweep's cells scoring the same pretrained backbone) compute it once, the others wait for it."""
        if self.cache_dir is None or self._bank_print is None:
            return self._computed_bank(model, runtime, head, None)
        path = Path(self.cache_dir) / f"{key}.safetensors"
        features = self._cached_bank(path)
        if features is not None:
            return features
        from forgetlab.results import build_lock

        with build_lock(path.with_name(f".{key}.lock"), f"computing the k-NN bank {path}"):
            features = self._cached_bank(path)  # written while this process waited
            return features if features is not None else self._computed_bank(model, runtime, head, path)

    def _cached_bank(self, path: Path) -> torch.Tensor | None:
        return caches.read_features(path, len(self.bank))

    def _computed_bank(self, model, runtime: Runtime, head: str | None, path: Path | None) -> torch.Tensor:
        features = extract_features(model, self.bank, runtime, description="k-NN bank", head=head)
        self.computed += 1
        if path is not None:
            from forgetlab.results import save_safetensors

            save_safetensors(path, {"features": features, "labels": self.bank_labels})
        return features


@register_evaluator("knn")
def build_knn_evaluator(eval_config, upstream, crop_cache=None) -> KNNEvaluator:
    """Paper 2's k-NN on backbone features against a bank of the upstream train set, set by ``eval.knn_*``."""
    return KNNEvaluator(
        upstream.train,
        k=eval_config.knn_k,
        temperature=eval_config.knn_temperature,
        features=eval_config.knn_features,
        bank_dtype=eval_config.knn_bank_dtype,
        cache_dir=caches.folder("knn-banks") if eval_config.knn_cache else None,
        crop_cache=crop_cache,
    )


class ProbeEvaluator(LinearProbe):
    """The upstream task scored by a linear probe refit on the current model's features of a fixed subset of
    the upstream train images (:class:`forgetlab.linear_probe.LinearProbe`; Davari et al., CVPR 2022): it
    drops where the features no longer hold the upstream classes, not where only the head is misaligned."""

    def __call__(self, model, dataset: Dataset, runtime: Runtime, *, description="upstream probe") -> UpstreamResult:
        predictions = self.predict(model, dataset, runtime, description=description)
        return UpstreamResult("probe", accuracy(predictions, dataset_labels(dataset)), predictions)


@register_evaluator("probe")
def build_probe_evaluator(eval_config, upstream, crop_cache=None) -> ProbeEvaluator:
    """The linear probe, set by ``eval.linear_probe_*``; its fit features cached under
    ``$FORGETLAB_HOME/probe-features`` (docs/caches.md)."""
    return ProbeEvaluator(
        upstream.train,
        images=eval_config.linear_probe_images,
        seed=eval_config.linear_probe_seed,
        c=eval_config.linear_probe_c,
        max_iter=eval_config.linear_probe_max_iter,
        cache_dir=caches.folder("probe-features"),
        crop_cache=crop_cache,
    )


class UpstreamEvaluators:
    """The run's named upstream evaluators on one model, ``evaluators`` by name in the config's order.
    With one, a call returns its result; with several (Davari et al., CVPR 2022, "Probing Representation
    Forgetting": a frozen head's drop is knowledge lost only where a k-NN on the features drops too), the
    first one's accuracy and predictions with every one's result under :attr:`UpstreamResult.each`."""

    def __init__(self, evaluators: dict[str, Callable]):
        self.evaluators = evaluators

    def __call__(self, model, dataset: Dataset, runtime: Runtime, **options) -> UpstreamResult:
        results = {name: evaluator(model, dataset, runtime, **options) for name, evaluator in self.evaluators.items()}
        first = next(iter(results.values()))
        if len(results) == 1:
            return first
        return UpstreamResult(first.evaluator, first.accuracy, first.predictions, each=results)


def build_upstream_evaluator(eval_config, upstream, crop_cache=None) -> UpstreamEvaluators:
    """The upstream evaluators ``eval_config.evaluators`` names (:func:`register_evaluator`: ``head``, paper
    1, ``knn``, paper 2, or ``probe``, a linear probe), each built by its factory; ``crop_cache`` (a
    :class:`forgetlab.data.eval_cache.EvalCropCache`) serves the k-NN bank's crops. Raises
    :class:`~forgetlab.errors.ConfigError` for a name no evaluator is registered under."""
    evaluators = {}
    for name in eval_config.evaluators:
        factory = evaluator_factory(name)
        evaluators[name] = factory(dataclasses.replace(eval_config, upstream_evaluator=name), upstream, crop_cache)
    return UpstreamEvaluators(evaluators)
