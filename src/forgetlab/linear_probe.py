"""The linear probe: a classifier refit on the current model's features, scored on the upstream test set.

A frozen head's upstream drop is knowledge **lost** only where the features no longer separate the
classes; a linear probe refit on the current features tells the two apart (Davari et al., CVPR 2022,
"Probing Representation Forgetting": the accuracy of a probe refit after each task). The
``probe`` upstream evaluator (:mod:`forgetlab.evaluate`) is this probe:

1. the **fit images**: a fixed, class-balanced, seeded subset of the upstream *train* images
   (``eval.linear_probe_images``, ``eval.linear_probe_seed``; all when fewer), read with the deterministic
   evaluation transform, so every phase of every run with those settings fits on the same images;
2. their **features**: the pooled backbone features every head reads (``model.features``, timm's
   ``pre_logits``, fp32, not normalised), cached on disk per model state (:meth:`LinearProbe.features_key`),
   so the pretrained row, a frozen backbone (``method.name=linear``) and a repeated run read them back;
3. the **fit**: each feature standardised by its mean and standard deviation over the fit images
   (scikit-learn's ``StandardScaler``; forgetlab's own choice: it makes ``C`` mean the same whatever the
   scale of the features, which fine-tuning changes from phase to phase), then an L2-regularised
   multinomial logistic regression by L-BFGS (scikit-learn's ``LogisticRegression``, ``C =
   eval.linear_probe_c``, default 0.316, and ``max_iter = eval.linear_probe_max_iter``, default 1000: the
   values of CLIP's linear-probe example, Radford et al., 2021, github.com/openai/CLIP README). It is the
   standard probe on frozen features (CLIP, Kornblith et al., CVPR 2019), convex, so it has one optimum
   and no seed, and it needs no training loop;
4. the **score**: the probe's predicted labels on the upstream test images (their features from the same
   model).

Imports data, caches and results below it; :mod:`forgetlab.evaluate` registers the evaluator.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from forgetlab import caches
from forgetlab.data.base import dataset_fingerprint, dataset_labels, evaluation_view, index_fingerprint
from forgetlab.data.eval_cache import EvalCrops, evaluation_batches
from forgetlab.errors import ConfigError
from forgetlab.runtime import Runtime
from forgetlab.unit_features import balanced_indices, probe_view


@torch.no_grad()
def pooled_features(model, dataset: Dataset, runtime: Runtime, *, description="probe features") -> torch.Tensor:
    """The pooled backbone features ``[N, D]`` (``model.features``: what every head reads) of every example
    of ``dataset`` in order, fp32 on the host, not normalised; in batches of ``runtime.eval_batch_size``."""
    model.eval()
    chunks = []
    produced, total = evaluation_batches(dataset, runtime.eval_batch_size, runtime.device, runtime.workers)
    for images, _ in runtime.progress(produced, total=total, desc=description, unit="batch"):
        with runtime.autocast():
            chunks.append(model.features(images).float())
    return torch.cat(chunks).cpu() if chunks else torch.zeros(0, model.num_features)


def fit_and_predict(fit_features, fit_labels, queries, *, c: float, max_iter: int) -> np.ndarray:
    """Fit the probe on ``fit_features`` ``[n, D]`` with labels ``fit_labels`` ``[n]`` and return its
    predicted labels ``[m]`` (int64) for ``queries`` ``[m, D]``: features standardised with the fit
    features' mean and standard deviation, then scikit-learn's ``LogisticRegression(C=c, max_iter=max_iter)``
    (multinomial, L-BFGS), in float64. Raises :class:`ConfigError` when the fit images hold fewer than 2
    classes. A fit that stops at ``max_iter`` before converging keeps its last iterate (scikit-learn's
    ``ConvergenceWarning`` is not raised as an error)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    fit_labels = np.asarray(fit_labels)
    if len(np.unique(fit_labels)) < 2:
        raise ConfigError(
            f"the linear probe's fit images hold {len(np.unique(fit_labels))} class; it needs 2 or more: "
            "raise eval.linear_probe_images"
        )
    scaler = StandardScaler().fit(np.asarray(fit_features, np.float64))
    classifier = LogisticRegression(C=c, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # a few images per class (ImageNet at the default size) is a classification all the same
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        classifier.fit(scaler.transform(np.asarray(fit_features, np.float64)), fit_labels)
    if len(queries) == 0:
        return np.zeros(0, np.int64)
    return classifier.predict(scaler.transform(np.asarray(queries, np.float64))).astype(np.int64)


class LinearProbe:
    """The linear probe of a run (see the module docstring): ``train`` is the upstream train split,
    ``images`` / ``seed`` pick the fit images, ``c`` / ``max_iter`` set the fit, ``cache_dir`` holds the
    fit images' features per model state (None: not cached), ``crop_cache`` serves their evaluation crops.
    Calling it returns the probe's predicted labels ``[N]`` (int64) for a dataset."""

    def __init__(
        self, train: Dataset, *, images: int, seed: int, c: float, max_iter: int, cache_dir=None, crop_cache=None
    ):
        if len(train) == 0:
            raise ConfigError(
                "the linear probe (eval.upstream_evaluator=probe) fits on the upstream task's train split, and it "
                "has none; for ImageNet place train/ as wnid folders under data.root/imagenet (forgetlab data check)"
            )
        labels = dataset_labels(train)
        indices = balanced_indices(labels, images, seed)
        self.labels = labels[indices]
        # a subset batched as the train split batches (the device pipeline's encoded images too)
        self.images: Dataset = probe_view(evaluation_view(train), indices)
        self.c, self.max_iter, self.cache_dir = c, max_iter, cache_dir
        # None: a kind of dataset without a fingerprint (its features are never read from disk)
        self._print = index_fingerprint(self.images, dataset_fingerprint(self.images.dataset), indices)
        if crop_cache is not None:
            self.images = crop_cache(self.images, what="linear probe")
            if self._print is not None and isinstance(self.images, EvalCrops) and self.images.key:
                self._print += f"|crops:{self.images.key}"
        self._weights = caches.WeightsDigest()
        self.computed = 0  # fit features computed (not read from the disk cache) by this probe

    def features_key(self, model, runtime: Runtime) -> str:
        """The fit features' cache key (:func:`forgetlab.caches.probe_features_key`): the backbone as built
        and its weights, the fit images (data, positions, evaluation transform, crops) and the precision."""
        tf32 = runtime.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
        return caches.probe_features_key(
            model_args=caches.model_arguments(model.backbone),
            model_tree=repr(model.backbone),
            weights=self._weights({"backbone": model.backbone}),
            images=self._print,
            precision=f"{runtime.device.type}|autocast={runtime.amp_dtype}|tf32={tf32}",
        )

    def fit_features(self, model, runtime: Runtime) -> torch.Tensor:
        """The fit images' features ``[n, D]`` for ``model``: from the disk cache when this model state,
        these images and this precision were seen before (by any run), else computed and written there."""
        path = None
        if self.cache_dir is not None and self._print is not None:
            path = Path(self.cache_dir) / f"{self.features_key(model, runtime)}.safetensors"
            features = caches.read_features(path, len(self.labels))
            if features is not None:
                return features
        features = pooled_features(model, self.images, runtime, description="linear probe: fit features")
        self.computed += 1
        if path is not None:
            from forgetlab.results import save_safetensors

            save_safetensors(path, {"features": features, "labels": torch.as_tensor(self.labels)})
        return features

    def predict(self, model, dataset: Dataset, runtime: Runtime, *, description="upstream probe") -> np.ndarray:
        """The probe refit on ``model``'s features of the fit images, then its labels for ``dataset``."""
        fit = self.fit_features(model, runtime)
        queries = pooled_features(model, dataset, runtime, description=description)
        return fit_and_predict(fit.numpy(), self.labels, queries.numpy(), c=self.c, max_iter=self.max_iter)
