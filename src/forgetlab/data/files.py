"""Datasets of image files on disk (the real datasets), decoded with PIL and preprocessed the way the
backbone was pretrained (its timm ``pretrained_cfg``: input size, interpolation, crop, mean and std)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from forgetlab.data.base import subset_indices
from forgetlab.errors import ConfigError, DataError

DATA_ENV = "FORGETLAB_DATA"


@dataclass
class Preprocess:
    """The train and eval transforms of one backbone (PIL image -> normalised tensor)."""

    train: Callable
    eval: Callable
    input_size: tuple[int, int, int]
    crop_pct: float = 1.0


def preprocess_for(model: torch.nn.Module, image_size: int | None = None) -> Preprocess:
    """timm's transforms for ``model``'s own data config; ``image_size`` overrides its input size."""
    import timm.data

    config = timm.data.resolve_model_data_config(model)
    if image_size:
        config["input_size"] = (config["input_size"][0], image_size, image_size)
    train = timm.data.create_transform(**config, is_training=True, scale=(0.25, 1.0), re_prob=0.0, auto_augment=None)
    evaluation = timm.data.create_transform(**config, is_training=False)
    return Preprocess(train=train, eval=evaluation, input_size=tuple(config["input_size"]), crop_pct=config.get("crop_pct") or 1.0)


class FileDataset(Dataset):
    """``(path, label)`` pairs; items are ``(transform(PIL image), label)``."""

    def __init__(self, paths: list[Path], labels: list[int], transform: Callable | None = None):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} files but {len(labels)} labels")
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from PIL import Image

        try:
            with Image.open(self.paths[index]) as image:
                image = image.convert("RGB")
        except (OSError, ValueError) as error:
            raise DataError(f"cannot decode {self.paths[index]} ({error}); re-extract the dataset") from error
        if self.transform is None:
            return image, int(self.labels[index])
        return self.transform(image), int(self.labels[index])

    def subset(self, count: int, seed: int) -> "FileDataset":
        order = subset_indices(len(self), count, seed)
        if order is None:
            return self
        return FileDataset([self.paths[i] for i in order], self.labels[order].tolist(), self.transform)


class ArrayImageDataset(Dataset):
    """In-memory uint8 RGB images ``[N, H, W, 3]`` (CIFAR), items preprocessed like files."""

    def __init__(self, images: np.ndarray, labels, transform: Callable | None = None):
        self.images, self.labels, self.transform = images, np.asarray(labels, dtype=np.int64), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        image = Image.fromarray(self.images[index])
        return (self.transform(image) if self.transform else image), int(self.labels[index])

    def subset(self, count: int, seed: int) -> "ArrayImageDataset":
        order = subset_indices(len(self), count, seed)
        if order is None:
            return self
        return ArrayImageDataset(self.images[order], self.labels[order], self.transform)


def decoded_cache(dataset: FileDataset, size: int, folder: Path) -> ArrayImageDataset:
    """``dataset``'s images decoded once, resized (shorter side) and centre-cropped to ``size`` x ``size``,
    kept as one uint8 array memory-mapped from ``folder``; later runs and tasks reuse the file.

    The key covers the files (paths, sizes, modification times) and the size, so a changed dataset
    gets a new cache. The file is written under a temporary name and renamed when complete.
    """
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from forgetlab.runtime import progress

    digest = hashlib.sha256(str(size).encode())
    for path in dataset.paths:
        stat = path.stat()
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    target = folder / f"{digest.hexdigest()[:24]}-{size}px.npy"
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(dataset), size, size, 3))

        def decode(index: int) -> None:
            with Image.open(dataset.paths[index]) as image:
                image = image.convert("RGB")
                scale = size / min(image.size)
                width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
                image = image.resize((width, height), Image.BICUBIC)
                left, top = (width - size) // 2, (height - size) // 2
                array[index] = np.asarray(image.crop((left, top, left + size, top + size)))

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for _ in progress(pool.map(decode, range(len(dataset))), total=len(dataset), desc="decoding once", unit="img"):
                pass
        array.flush()
        del array
        os.replace(partial, target)
    return ArrayImageDataset(np.load(target, mmap_mode="r"), dataset.labels, dataset.transform)


def data_root(data_config) -> Path:
    """``data.root``, else ``$FORGETLAB_DATA``; a one-line error naming both when neither is set."""
    root = getattr(data_config, "root", None) or os.environ.get(DATA_ENV)
    if not root:
        raise ConfigError(f"the real datasets need a folder: set data.root=/path/to/datasets or {DATA_ENV}=/path/to/datasets")
    return Path(root).expanduser()


def require(path: Path, what: str, how: str) -> Path:
    if not path.exists():
        raise DataError(f"{what} not found at {path}; {how}")
    return path
