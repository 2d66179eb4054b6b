"""Every cache forgetlab keeps under ``$FORGETLAB_HOME``, and how each one's key is derived: in one place.

A cache is reused exactly when its key matches, so a key covers everything that determines the cached
content, read from the resolved computation (the model as built, its weights, the transforms as timm
built them, the device and precision as resolved), never from a hand-kept list of config keys:

============== ====================== ======================================================================
cache          folder                 key (``FORMATS`` adds the code's own format version to each)
============== ====================== ======================================================================
knn-banks      ``knn-banks/``         the backbone's constructor arguments and module tree, its weights
                                      (:class:`WeightsDigest`), the bank's images, positions, labels and
                                      evaluation transform, its evaluation crops' key, the feature mode,
                                      the device type and precision
probe-features ``probe-features/``   the backbone's constructor arguments and module tree, its weights, the
                                      linear probe's fit images (data, positions, evaluation transform,
                                      crops' key), the device type and precision
eval-crops     ``eval-crops/``        the images (files by path, size and modification time; arrays by
                                      their bytes), which of them, the crop steps and the crop size
decoded        ``decoded/``           the files (path, size, modification time), their boxes, the size
offline-world  ``offline-v<N>-<key>`` its source files (Fashion-MNIST, fonts) by path, size and time
backbones      ``backbones/``         the offline backbone's name, constructor arguments, pretraining
                                      recipe and seed, and the offline world's format version
============== ====================== ======================================================================

:data:`IGNORED` lists, per cache, the config keys that cannot change its content, each with the reason;
``tests/test_caches.py`` walks every config key and checks that changing it changes each cache's key
unless the key is listed there. docs/caches.md is the user's page.

Imports: :mod:`forgetlab.paths` only (every floor above uses this module).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import weakref
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from forgetlab import paths
from forgetlab.errors import FULL_DISK, DiskFullError

# The code's own format version of each cache: bump it when the code that fills a cache changes what it
# writes (eval-crops 2: the device path's crops are rounded and clamped as PIL does).
FORMATS = {"knn-banks": 2, "probe-features": 1, "eval-crops": 2, "decoded": 2, "offline-world": 1, "backbones": 1}

# Reasons shared by several caches.
_WHERE = "where results go and which trackers watch: not what is computed"
_STORED = "which weight updates a run also writes into its folder: not what is computed"
_WEIGHTS = "acts only through the backbone's weights, which the key covers by their digest"
_TRAINING = "training only: the cache holds evaluation-time content"
_DOWNSTREAM = "the downstream tasks: the cache holds the upstream task's content"
_VOTE = "the k-NN vote over the bank, not the bank's features"
_SAME = (
    "the same values whatever it is: an evaluation in eval mode "
    "gives each image the same result in any batch or process"
)
_FIXED = "fixed by the code (its own seeds and source files): no run setting reaches it"
_NOT_PREPROCESSING = (
    "not the preprocessing: timm resolves the transform from the architecture's pretrained config alone"
)
_PROBE_ONLY = "the linear probe's fit images and fit, not the k-NN bank"
_PROBE_FIT = "the linear probe's fit on the features, not the features or the images"
_KNN_ONLY = "the k-NN evaluator's setting, not the linear probe's"
_BUILT_ONCE = "the pretraining recipe is fixed by the code: a run's settings apply to the runs that use the backbone"

IGNORED: dict[str, dict[str, str]] = {
    "knn-banks": {
        "name": _WHERE,
        "out_dir": _WHERE,
        "track": _WHERE,
        "save": _STORED,
        "seed": _WEIGHTS + " (the upstream bank takes no seeded split)",
        "method": _WEIGHTS,
        "train": _WEIGHTS,
        "lwf": _WEIGHTS,
        "replay.batch_size": _WEIGHTS,
        "data.tasks": _DOWNSTREAM,
        "data.split_seed": _DOWNSTREAM,
        "data.max_test": "the test images (queries), not the bank",
        "data.workers": _SAME,
        "data.eval_cache_gb": "a limit on writing crops: crops that are cached change the key through their own key",
        "preprocess.train_scale": _TRAINING,
        "preprocess.train_ratio": _TRAINING,
        "preprocess.train_interpolation": _TRAINING,
        "preprocess.hflip": _TRAINING,
        "preprocess.color_jitter": _TRAINING,
        "eval.batch_size": _SAME,
        "eval.upstream_subset": "the test images (queries), not the bank",
        "eval.knn_k": _VOTE,
        "eval.knn_temperature": _VOTE,
        "eval.knn_bank_dtype": "the bank's storage on the device after it is read: the file holds fp32 features",
        "replay.size": (
            "replay reads the upstream train split through the same encoded dataset as the bank; "
            "the buffer's size changes the trained weights (their digest), not the bank's images"
        ),
        "eval.probe_images": "the drift probe is a subset of the upstream test images, not of the bank",
        "eval.linear_probe_images": _PROBE_ONLY,
        "eval.linear_probe_seed": _PROBE_ONLY,
        "eval.linear_probe_c": _PROBE_ONLY,
        "eval.linear_probe_max_iter": _PROBE_ONLY,
    },
    "probe-features": {
        "name": _WHERE,
        "out_dir": _WHERE,
        "track": _WHERE,
        "save": _STORED,
        "seed": _WEIGHTS + " (the fit images are drawn with eval.linear_probe_seed)",
        "method": _WEIGHTS,
        "train": _WEIGHTS,
        "lwf": _WEIGHTS,
        "replay": _WEIGHTS,
        "data.tasks": _DOWNSTREAM,
        "data.split_seed": _DOWNSTREAM,
        "data.max_test": "the test images, not the fit images",
        "data.workers": _SAME,
        "data.eval_cache_gb": "a limit on writing crops: crops that are cached change the key through their own key",
        "preprocess.train_scale": _TRAINING,
        "preprocess.train_ratio": _TRAINING,
        "preprocess.train_interpolation": _TRAINING,
        "preprocess.hflip": _TRAINING,
        "preprocess.color_jitter": _TRAINING,
        "eval.batch_size": _SAME,
        "eval.upstream_subset": "the test images, not the fit images",
        "eval.knn_k": _KNN_ONLY,
        "eval.knn_temperature": _KNN_ONLY,
        "eval.knn_bank_dtype": _KNN_ONLY,
        "eval.knn_cache": _KNN_ONLY,
        "eval.knn_features": _KNN_ONLY + " (the probe always reads the pooled backbone features)",
        "eval.probe_images": "the drift probe is a subset of the upstream test images, not of the fit images",
        "eval.linear_probe_c": _PROBE_FIT,
        "eval.linear_probe_max_iter": _PROBE_FIT,
    },
    "eval-crops": {
        "name": _WHERE,
        "out_dir": _WHERE,
        "track": _WHERE,
        "save": _STORED,
        "backbone.weights": _NOT_PREPROCESSING,
        "backbone.random_init": _NOT_PREPROCESSING,
        "backbone.num_classes": _NOT_PREPROCESSING,
        "backbone.kwargs": _NOT_PREPROCESSING,
        "method": _TRAINING,
        "train": _TRAINING,
        "lwf": _TRAINING,
        "replay.batch_size": _TRAINING,
        "precision": "the crops are uint8 pixels, computed before any autocast",
        "data.workers": _SAME,
        "data.eval_cache_gb": "a limit on writing crops, not what they hold",
        "data.split_seed": "splits training samples; the test images are whole",
        "preprocess.train_scale": _TRAINING,
        "preprocess.train_ratio": _TRAINING,
        "preprocess.train_interpolation": _TRAINING,
        "preprocess.hflip": _TRAINING,
        "preprocess.color_jitter": _TRAINING,
        "preprocess.mean": "normalisation is applied per batch on the device, after the cached uint8 crop",
        "preprocess.std": "normalisation is applied per batch on the device, after the cached uint8 crop",
        "eval.batch_size": _SAME,
        "eval.knn_k": _VOTE,
        "eval.knn_temperature": _VOTE,
        "eval.knn_bank_dtype": _VOTE,
        "eval.knn_features": "what the model computes from the crops, not the crops",
        "eval.knn_cache": "the k-NN banks' disk cache, not the crops",
        "replay.size": "replay draws training images, which are not cropped for evaluation",
        "eval.probe_images": "the drift probe reads a subset of the upstream test images through their existing crops",
        "eval.linear_probe_c": _PROBE_FIT,
        "eval.linear_probe_max_iter": _PROBE_FIT,
    },
    "decoded": {
        "name": _WHERE,
        "out_dir": _WHERE,
        "track": _WHERE,
        "save": _STORED,
        "seed": "decoding is deterministic and takes no seed",
        "device": "decoded on the CPU by PIL",
        "precision": "uint8 pixels",
        "backbone.kwargs": _NOT_PREPROCESSING,
        "backbone.random_init": _NOT_PREPROCESSING,
        "backbone.num_classes": _NOT_PREPROCESSING,
        "backbone.weights": _NOT_PREPROCESSING,
        "method": _TRAINING,
        "train": _TRAINING,
        "lwf": _TRAINING,
        "replay": _TRAINING,
        "eval": "scoring, after decoding",
        "data.workers": _SAME,
        "data.pipeline": "both pipelines read the same decoded array",
        "data.eval_cache": "later crops of it",
        "data.eval_cache_gb": "later crops of it",
        "data.split_seed": "splits are positions in the decoded array",
        "data.max_train": "a subset is positions in the decoded array",
        "data.max_test": "a subset is positions in the decoded array",
        "preprocess.train_scale": _TRAINING,
        "preprocess.train_ratio": _TRAINING,
        "preprocess.train_interpolation": _TRAINING,
        "preprocess.hflip": _TRAINING,
        "preprocess.color_jitter": _TRAINING,
        "preprocess.eval_crop": "the transforms run on the decoded image afterwards",
        "preprocess.eval_interpolation": "the transforms run on the decoded image afterwards",
        "preprocess.mean": "the transforms run on the decoded image afterwards",
        "preprocess.std": "the transforms run on the decoded image afterwards",
        "preprocess.upstream_eval": "the transforms run on the decoded image afterwards",
        "preprocess.upstream_crop_pct": "the transforms run on the decoded image afterwards",
    },
    "offline-world": {
        section: _FIXED
        for section in (
            "name",
            "out_dir",
            "seed",
            "device",
            "precision",
            "backbone",
            "data",
            "preprocess",
            "method",
            "train",
            "lwf",
            "replay",
            "eval",
            "track",
            "save",
        )
    },
    "backbones": {
        section: _BUILT_ONCE
        for section in (
            "name",
            "out_dir",
            "seed",
            "device",
            "precision",
            "data",
            "preprocess",
            "method",
            "train",
            "lwf",
            "replay",
            "eval",
            "track",
            "save",
            "backbone.image_size",
            "backbone.kwargs",
            "backbone.num_classes",
        )
    },
}


def ignored(cache: str, key: str) -> str | None:
    """The reason ``cache`` ignores the dotted config ``key`` (its own entry or its section's), or None."""
    entries = IGNORED[cache]
    return entries.get(key) or entries.get(key.split(".")[0])


def folder(cache: str) -> Path:
    """The cache's folder under ``$FORGETLAB_HOME`` (not created)."""
    return paths.home() / cache


def digest(*parts) -> str:
    """SHA-256 (hex) of ``parts``: bytes as they are, anything else by its ``repr``."""
    hasher = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else repr(part).encode()
        hasher.update(len(data).to_bytes(8, "little"))
        hasher.update(data)
    return hasher.hexdigest()


def files_digest(files) -> str:
    """SHA-256 of files by path, size and modification time (a missing file: by its path alone)."""
    hasher = hashlib.sha256()
    for path in files:
        path = Path(path)
        stat = path.stat() if path.exists() else None
        hasher.update(f"{path}|{stat.st_size if stat else -1}|{stat.st_mtime_ns if stat else -1}\n".encode())
    return hasher.hexdigest()


# ------------------------------------------------------------------------------------------ the keys
def model_arguments(model) -> dict:
    """The arguments ``model`` was built with (recorded by :func:`forgetlab.models.backbones.create`):
    ``{'model_name': ..., 'num_classes': ..., **kwargs}``; its class name when they were not recorded."""
    return dict(getattr(model, "forgetlab_model_args", None) or {"class": type(model).__qualname__})


def knn_bank_key(*, model_args: dict, model_tree: str, weights: str, bank: str, features: str, precision: str) -> str:
    """The k-NN bank's key (hex, 40 characters): the backbone as built (``model_args``, ``model_tree``:
    its module ``repr``), its weights (``weights``: a :class:`WeightsDigest`), the bank's data and
    evaluation transform (``bank``: :func:`forgetlab.data.base.dataset_fingerprint` and its crops' key),
    the feature mode (``eval.knn_features``, with the head it reads) and ``precision`` (device type,
    autocast dtype, TF32)."""
    return digest(
        "knn-banks", FORMATS["knn-banks"], sorted(model_args.items()), model_tree, weights, bank, features, precision
    )[:40]


def probe_features_key(*, model_args: dict, model_tree: str, weights: str, images: str, precision: str) -> str:
    """The linear probe's fit features' key (hex, 40 characters): the backbone as built (``model_args``,
    ``model_tree``), its weights (a :class:`WeightsDigest`), the fit images (``images``: their
    :func:`forgetlab.data.base.dataset_fingerprint`, positions included, and their crops' key) and
    ``precision`` (device type, autocast dtype, TF32)."""
    return digest(
        "probe-features", FORMATS["probe-features"], sorted(model_args.items()), model_tree, weights, images, precision
    )[:40]


def eval_crops_key(images: str, positions: bytes, recipe: str, size: int) -> str:
    """The evaluation crops' key (hex, 32 characters): the images (``images``: a digest of the files or
    array), which of them (``positions``: int64 bytes), the crop steps (``recipe``) and the crop size."""
    return digest("eval-crops", FORMATS["eval-crops"], images, positions, recipe, size)[:32]


def decoded_key(files: str, boxes: bytes | None, size: int) -> str:
    """The decoded images' key (hex, 24 characters): the files (:func:`files_digest`), their boxes and
    the decoded size in pixels (shorter side resized, then centre-cropped square)."""
    return digest("decoded", FORMATS["decoded"], files, boxes, size)[:24]


def offline_world_key(sources) -> str:
    """The offline world's key (hex, 12 characters): its format version and its source files."""
    return digest("offline-world", FORMATS["offline-world"], files_digest(sorted(map(str, sources))))[:12]


def offline_backbone_key(name: str, model_args: dict, recipe: dict, seed: int, world_format: int) -> str:
    """A pretrained offline backbone's key (hex, 12 characters)."""
    return digest(
        "backbones", FORMATS["backbones"], name, sorted(model_args.items()), sorted(recipe.items()), seed, world_format
    )[:12]


class WeightsDigest:
    """The SHA-256 of a module's state dict (names, dtypes, shapes, bytes), computed from what changed.

    Each parameter's own digest is kept with the parameter object's in-place version counter (which
    optimiser steps, ``copy_`` merges and ``load_state_dict`` advance) and its storage address, and is
    recomputed (copied to the host) only when either moved; buffers (BatchNorm statistics, which the
    kernels update without advancing the counter) are small and hashed every time. So scoring a
    merged LoRA phase copies the merged layers and the buffers, not the whole backbone; two different
    states never share a digest (a new parameter object, name, shape or dtype is hashed afresh).
    """

    def __init__(self):
        self._known: dict[int, tuple] = {}  # id(parameter) -> (weak reference, mark, digest)
        self.hashed = 0  # tensors copied to the host and hashed so far (for tests and timing)

    def __call__(self, modules: dict) -> str:
        """The digest of ``{prefix: module}``'s state dicts together (e.g. the backbone and a head)."""
        hasher = hashlib.sha256()
        for prefix, module in sorted(modules.items()):
            parameters = {id(p) for p in module.parameters()}
            for name, tensor in sorted(module.state_dict(keep_vars=True).items()):
                hasher.update(f"{prefix}.{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
                hasher.update(self._tensor(tensor, id(tensor) in parameters))
        return hasher.hexdigest()

    def _tensor(self, tensor, memo: bool) -> bytes:
        mark = (tensor._version, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.device)
        known = self._known.get(id(tensor)) if memo else None
        if known is not None and known[0]() is tensor and known[1] == mark:
            return known[2]
        self.hashed += 1
        data = tensor.detach().cpu().contiguous().reshape(-1)
        value = hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).digest()
        if memo:  # the entry goes when the parameter does (its id may then name another object)
            forget = weakref.ref(tensor, lambda _, key=id(tensor), known=self._known: known.pop(key, None))
            self._known[id(tensor)] = (forget, mark, value)
        return value


def write_memmap_atomically(target: Path, shape: tuple[int, ...], fill: Callable[[np.ndarray], None]) -> None:
    """Create the uint8 ``.npy`` ``target`` of ``shape``: ``fill(array)`` writes a memory-mapped array under
    a temporary name in the same folder, which is renamed to ``target`` only when ``fill`` returned. On
    any error (an interrupt included) the temporary file is removed; a full disk is a
    :class:`~forgetlab.errors.DiskFullError`."""
    with atomic_memmap(target, shape) as array:
        fill(array)


@contextlib.contextmanager
def atomic_memmap(target: Path, shape: tuple[int, ...]):
    """The memory-mapped uint8 array of :func:`write_memmap_atomically`, for a writer that is not one call
    (a generator): renamed to ``target`` when the block ends normally, removed on any error or when the
    generator holding it is closed early."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
        yield array
        array.flush()
        del array
        os.replace(partial, target)
    except BaseException as error:
        partial.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in FULL_DISK:
            raise DiskFullError.writing(target, error.strerror) from error
        raise


def read_features(path: Path, count: int) -> torch.Tensor | None:
    """The ``features`` tensor ``[count, D]`` of the cached safetensors file ``path`` (a k-NN bank, a
    probe's fit features); None when there is none, it holds another number of rows, or it cannot be
    read: a damaged cache file is recomputed, never trusted."""
    if not Path(path).exists():
        return None
    from safetensors.torch import load_file

    try:
        features = load_file(str(path))["features"]
    except Exception:  # noqa: BLE001 - a damaged cache file is recomputed, never trusted
        return None
    return features if len(features) == count else None
