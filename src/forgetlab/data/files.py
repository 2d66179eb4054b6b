"""Datasets of image files on disk (the real datasets), decoded with PIL and preprocessed the way the
backbone was pretrained (its timm ``pretrained_cfg``: input size, interpolation, crop, mean and std)."""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from forgetlab.data.base import content_fingerprint, subset_indices
from forgetlab.data.decode import box_pixels, open_rgb
from forgetlab.data.listing import OS_METADATA, is_os_metadata, listed  # noqa: F401  (the data package lists through here)
from forgetlab.errors import ConfigError, DataError

DATA_ENV = "FORGETLAB_DATA"


@dataclass
class Preprocess:
    """The transforms of one backbone and preprocessing config (PIL image -> normalised tensor):
    ``train`` and ``eval`` for the downstream tasks, ``upstream_eval`` for the upstream test set and
    the k-NN bank. Evaluation transforms are deterministic. ``settings`` holds the resolved values
    (JSON: sizes, interpolations, crops, mean and std, and the timm ``pretrained_cfg`` they came from;
    see :func:`resolved_settings`), which a run records beside its results."""

    train: Callable
    eval: Callable
    input_size: tuple[int, int, int]
    crop_pct: float = 1.0
    upstream_eval: Callable | None = None
    settings: dict = dataclasses.field(default_factory=dict)

    def for_upstream(self) -> "Preprocess":
        """The same preprocessing with the upstream evaluation transform as ``eval``."""
        return dataclasses.replace(self, eval=self.upstream_eval or self.eval)


def preprocess_for(model: torch.nn.Module, image_size: int | None, config) -> Preprocess:
    """timm's transforms for ``model``'s own data config, with the choices of ``config`` (a
    :class:`forgetlab.config.PreprocessConfig`, the config's ``preprocess`` section) on top;
    ``image_size`` overrides the input size (smoke runs)."""
    import timm.data

    data = timm.data.resolve_model_data_config(model)
    if image_size:
        data["input_size"] = (data["input_size"][0], image_size, image_size)
    upstream_data = dict(data, crop_pct=config.upstream_crop_pct) if config.upstream_crop_pct is not None else data
    backbone_eval = timm.data.create_transform(**upstream_data, is_training=False)
    mean = tuple(config.mean) if config.mean is not None else data["mean"]
    std = tuple(config.std) if config.std is not None else data["std"]
    crop_pct = config.crop_pct if config.crop_pct is not None else (data.get("crop_pct") or 1.0)
    train = timm.data.create_transform(
        data["input_size"],
        is_training=True,
        scale=tuple(config.train_scale),
        ratio=tuple(config.train_ratio),
        hflip=config.hflip,
        color_jitter=config.color_jitter or None,
        interpolation=config.train_interpolation or data["interpolation"],
        mean=mean,
        std=std,
        re_prob=0.0,
        auto_augment=None,
    )
    evaluation = timm.data.create_transform(
        data["input_size"],
        is_training=False,
        interpolation=config.eval_interpolation or data["interpolation"],
        mean=mean,
        std=std,
        crop_pct=crop_pct,
        crop_mode=config.eval_crop,
    )
    upstream = backbone_eval if config.upstream_eval == "backbone" else evaluation
    preprocess = Preprocess(
        train=train, eval=evaluation, input_size=tuple(data["input_size"]), crop_pct=crop_pct, upstream_eval=upstream
    )
    preprocess.settings = resolved_settings(preprocess, model, data, config, mean=mean, std=std)
    return preprocess


def resolved_settings(preprocess: Preprocess, model: torch.nn.Module, data: dict, config, *, mean, std) -> dict:
    """What :func:`preprocess_for` resolved, as JSON: the ``mean`` and ``std`` of the task transforms and
    where they came from (``normalisation_from``: 'config', else inferred: 'pretrained_cfg' when the
    model's timm ``pretrained_cfg`` has them, 'timm default' otherwise), each transform's steps read off
    the timm transforms themselves (sizes in pixels, interpolations, crop fraction), timm's data config
    and the model's ``pretrained_cfg`` (its ``architecture`` and ``tag`` name the weights it describes)."""
    pretrained_cfg = {
        key: value
        for key, value in dict(getattr(model, "pretrained_cfg", None) or {}).items()
        if isinstance(value, (str, int, float, bool, tuple, list, type(None)))
    }
    inferred = "pretrained_cfg" if "mean" in pretrained_cfg and "std" in pretrained_cfg else "timm default"
    stated = [key for key in ("mean", "std") if getattr(config, key) is not None]
    return _json(
        {
            "input_size": data["input_size"],
            "mean": mean,
            "std": std,
            "normalisation_from": "config"
            if len(stated) == 2
            else f"config ({stated[0]}) and {inferred}"
            if stated
            else inferred,
            "train": _steps(preprocess.train),
            "eval": {"crop_mode": config.eval_crop, "crop_pct": preprocess.crop_pct, "steps": _steps(preprocess.eval)},
            "upstream_eval": {
                "transform": config.upstream_eval,
                "steps": _steps(preprocess.upstream_eval or preprocess.eval),
            },
            "data_config": data,
            "pretrained_cfg": pretrained_cfg,
        }
    )


_STEP_FIELDS = (
    "size",
    "max_size",
    "interpolation",
    "antialias",
    "scale",
    "ratio",
    "p",
    "brightness",
    "contrast",
    "saturation",
    "hue",
    "mean",
    "std",
)


def _steps(transform) -> list[dict]:
    """The steps of a torchvision ``Compose`` as dicts: the step's class and its set parameters."""
    steps = []
    for step in getattr(transform, "transforms", [transform]):
        fields = {name: getattr(step, name) for name in _STEP_FIELDS if getattr(step, name, None) is not None}
        steps.append({"step": type(step).__name__, **fields})
    return _json(steps)


def _json(value):
    """Tuples, tensors and enums (interpolation modes) as JSON values."""
    if isinstance(value, dict):
        return {str(key): _json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(item) for item in value]
    if isinstance(value, torch.Tensor):
        return _json(value.tolist())
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(getattr(value, "value", value))  # InterpolationMode.BICUBIC -> 'bicubic'


class FileDataset(Dataset):
    """``(path, label)`` pairs; items are ``(transform(PIL image), label)``. ``boxes`` (``x, y, width,
    height`` per image, read from ``box_file``, e.g. CUB's ``bounding_boxes.txt``) crop each image
    right after decoding, clipped to the image (:func:`forgetlab.data.decode.box_pixels`, the device
    pipeline's rule too). A box that can hold no pixel of any image (zero or negative size, not
    finite, ending left of or above the origin) is a one-line DataError here; one that misses its
    image, when the image is decoded."""

    def __init__(
        self,
        paths: list[Path],
        labels: list[int],
        transform: Callable | None = None,
        boxes=None,
        box_file: Path | str | None = None,
    ):
        if len(paths) != len(labels) or (boxes is not None and len(boxes) != len(paths)):
            raise ValueError(
                f"{len(paths)} files but {len(labels)} labels" + ("" if boxes is None else f" and {len(boxes)} boxes")
            )
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.boxes = None if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(len(self.paths), 4)
        self.box_file = box_file
        for path, box in zip(self.paths, self.boxes if self.boxes is not None else ()):
            box_pixels(box, None, None, str(path), box_file)
        self.transform = transform
        self.eval_transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def open_image(self, index: int):
        """The decoded RGB PIL image (cropped to its box, if any), by :mod:`forgetlab.data.decode`'s rule
        (the device pipeline's too); a DataError naming the file if it cannot be decoded or its box
        has no pixel inside it."""
        image = open_rgb(self.paths[index])
        if self.boxes is not None:
            image = image.crop(
                box_pixels(self.boxes[index], image.width, image.height, str(self.paths[index]), self.box_file)
            )
        return image

    def __getitem__(self, index: int):
        image = self.open_image(index)
        return (self.transform(image) if self.transform else image), int(self.labels[index])

    def select(self, order) -> "FileDataset":
        """The examples at ``order``, in that order, with the same transforms."""
        selected = FileDataset(
            [self.paths[i] for i in order],
            self.labels[order].tolist(),
            self.transform,
            None if self.boxes is None else self.boxes[order],
            self.box_file,
        )
        selected.eval_transform = self.eval_transform
        return selected

    def subset(self, count: int, seed: int) -> "FileDataset":
        order = subset_indices(len(self), count, seed)
        return self if order is None else self.select(order)

    def evaluation_view(self) -> "FileDataset":
        """The same examples under the deterministic evaluation transform (e.g. a k-NN bank)."""
        view = copy.copy(self)
        view.transform = self.eval_transform
        return view

    def fingerprint(self, with_transform: bool = True) -> str:
        """See :class:`~forgetlab.data.base.TaskDataset`: each file by path, size and modification time,
        the boxes, labels and transform (``with_transform=False``: the files alone, as the device
        pipeline reads them)."""
        contents = []
        for path in self.paths:
            stat = path.stat()
            contents.append(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        if self.boxes is not None:
            contents.append(self.boxes.tobytes())
        return content_fingerprint(self, contents, self.transform if with_transform else None)


class ArrayImageDataset(Dataset):
    """In-memory uint8 RGB images ``[N, H, W, 3]`` (CIFAR), items preprocessed like files. ``cache_key``:
    the key of the decoded cache the images were read from (:func:`decoded_cache`), None for others."""

    def __init__(self, images: np.ndarray, labels, transform: Callable | None = None, cache_key: str | None = None):
        self.images, self.labels, self.transform = images, np.asarray(labels, dtype=np.int64), transform
        self.eval_transform = transform
        self.cache_key = cache_key

    def __len__(self) -> int:
        return len(self.labels)

    def open_image(self, index: int):
        """The ``index``-th image as an RGB PIL image."""
        from PIL import Image

        return Image.fromarray(np.asarray(self.images[index]))

    def __getitem__(self, index: int):
        image = self.open_image(index)
        return (self.transform(image) if self.transform else image), int(self.labels[index])

    def select(self, order) -> "ArrayImageDataset":
        selected = ArrayImageDataset(self.images[order], self.labels[order], self.transform, self.cache_key)
        selected.eval_transform = self.eval_transform
        return selected

    def subset(self, count: int, seed: int) -> "ArrayImageDataset":
        order = subset_indices(len(self), count, seed)
        return self if order is None else self.select(order)

    def evaluation_view(self) -> "ArrayImageDataset":
        view = copy.copy(self)
        view.transform = self.eval_transform
        return view

    def fingerprint(self, with_transform: bool = True) -> str:
        """See :class:`~forgetlab.data.base.TaskDataset`: the image bytes, labels and transform
        (``with_transform=False``: the images alone, as the device pipeline reads them)."""
        images = self.images.numpy() if isinstance(self.images, torch.Tensor) else np.asarray(self.images)
        return content_fingerprint(
            self, [np.ascontiguousarray(images).tobytes()], self.transform if with_transform else None
        )


def decoded_cache(dataset: FileDataset, size: int, folder: Path) -> ArrayImageDataset:
    """``dataset``'s images decoded once, resized (shorter side) and centre-cropped to ``size`` x ``size``,
    kept as one uint8 array memory-mapped from ``folder``; later runs and tasks reuse the file.

    The key (:func:`forgetlab.caches.decoded_key`) covers the files (paths, sizes, modification times),
    their boxes, the size and the code's format version, so a changed dataset gets a new cache. The
    file is written under a temporary name and renamed when complete.
    """
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from forgetlab.runtime import progress

    from forgetlab import caches

    key = caches.decoded_key(
        caches.files_digest(dataset.paths), None if dataset.boxes is None else dataset.boxes.tobytes(), size
    )
    target = folder / f"{key}-{size}px.npy"
    if not target.exists():

        def fill(array: np.ndarray) -> None:
            def decode(index: int) -> None:
                with dataset.open_image(index) as image:
                    scale = size / min(image.size)
                    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
                    image = image.resize((width, height), Image.BICUBIC)
                    left, top = (width - size) // 2, (height - size) // 2
                    array[index] = np.asarray(image.crop((left, top, left + size, top + size)))

            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                for _ in progress(
                    pool.map(decode, range(len(dataset))), total=len(dataset), desc="decoding once", unit="img"
                ):
                    pass

        caches.write_memmap_atomically(
            target, (len(dataset), size, size, 3), fill
        )  # the evaluation-crop cache's writer
    cached = ArrayImageDataset(np.load(target, mmap_mode="r"), dataset.labels, dataset.transform, cache_key=key)
    cached.eval_transform = dataset.eval_transform
    return cached


def data_root(data_config) -> Path:
    """``data.root`` (``data_config``: a :class:`forgetlab.config.DataConfig` or None), else
    ``$FORGETLAB_DATA``; a one-line error naming both when neither is set."""
    root = (data_config.root if data_config is not None else None) or os.environ.get(DATA_ENV)
    if not root:
        raise ConfigError(
            f"the real datasets need a folder: set data.root=/path/to/datasets or {DATA_ENV}=/path/to/datasets"
        )
    return Path(root).expanduser()


def dataset_folder(name: str, data_config) -> Path:
    """The folder of the registered dataset ``name`` under the data root (see :func:`data_root`); a
    one-line :class:`DataError` saying how to get it when it is absent."""
    from forgetlab.data.registry import dataset_info

    info = dataset_info(name)
    return require(data_root(data_config) / info.folder, name, info.how)


def require(path: Path, what: str, how: str) -> Path:
    if not path.exists():
        raise DataError(f"{what} not found at {path}; {how}")
    return path
