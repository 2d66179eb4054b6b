"""Evaluation at compute speed: the deterministic evaluation crops of a test set or
k-NN bank, computed once per machine and key into a memory-mapped uint8 array, then read by every
later evaluation, run and sweep cell instead of decoding and resizing the files again.

``$FORGETLAB_HOME/eval-crops/<key>/crops.npy`` holds uint8 ``[N, 3, S, S]`` (S: the crop size). The key
(:func:`forgetlab.caches.eval_crops_key`) covers the images (files by path, size and modification time, their boxes;
in-memory images by their bytes), which of them (a split's or subset's positions), the preprocessing up to the crop
(timm's PIL transforms, or the device pipeline's :class:`~forgetlab.data.device_pipeline.BatchTransform` and the device
type it runs on) and the code's format version, so a changed dataset or recipe gets another folder. The array is written
under a temporary name and renamed when complete (:func:`forgetlab.caches.write_memmap_atomically`, which
:func:`forgetlab.data.files.decoded_cache` uses too), so an interrupted write leaves no cache, and concurrent writers of
one key each rename a complete file. Normalisation (mean, std) is applied on the device per batch.

``data.eval_cache``: ``auto`` caches datasets of image files on CUDA (CPU runs stay as they were), ``on``
also in-memory arrays and on any device, ``off`` nothing; ``data.eval_cache_gb`` bounds one cache (a
1.28 M-image k-NN bank is 193 GB at 224 px: opt-in), and a cache larger than it, or than the free disk,
is not written (one log line says so). On the PIL path the cached crops are the PIL transform's own
uint8 pixels, so predictions are unchanged; on the device path they are its float crops rounded to
uint8 (at most half a level of 255).

Imports: ``data.base``, ``data.files``, ``data.device_pipeline`` (the kinds of dataset it caches) and
``data.loader`` (the device path computes its crops through the batches training and evaluation read);
``evaluate``, ``unit_features`` and the runner import this.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from forgetlab import caches
from forgetlab.data.base import ArrayDataset, IndexView, base_positions, dataset_labels
from forgetlab.data.device_pipeline import EncodedDataset
from forgetlab.data.files import ArrayImageDataset, FileDataset
from forgetlab.data.loader import batches, device_constant, make_loader

CROPS_FILE = "crops.npy"


def _source(dataset: Dataset):
    """``(the dataset holding the images, positions)`` under class and sample splits (index views): a file or
    array dataset, or the device pipeline's :class:`EncodedDataset`; None for another kind (not cached)."""
    base, positions = base_positions(dataset)
    if isinstance(base, (FileDataset, ArrayImageDataset, ArrayDataset, EncodedDataset)):
        return base, positions
    return None


def _pil_recipe(transform):
    """``(crop steps, size, mean, std)`` of a timm evaluation transform (steps before ``ToTensor``), or None."""
    steps = list(getattr(transform, "transforms", []))
    kinds = [type(step).__name__ for step in steps]
    if "Normalize" not in kinds or not any("ToTensor" in kind for kind in kinds) or "CenterCrop" not in kinds:
        return None
    cut = next(i for i, kind in enumerate(kinds) if "ToTensor" in kind)
    normalize = steps[kinds.index("Normalize")]
    size = steps[kinds.index("CenterCrop")].size
    as_tuple = lambda v: tuple(float(x) for x in (v.tolist() if hasattr(v, "tolist") else v))  # noqa: E731
    return steps[:cut], int(size[0]), as_tuple(normalize.mean), as_tuple(normalize.std)


class EvalCrops(Dataset):
    """A test set (or k-NN bank) read from its cached evaluation crops. Batches are uint8 crops read from
    the memory map in one slice (``__getitems__``), normalised on the device by :meth:`to_batch`, as the
    device pipeline's datasets are (:func:`forgetlab.data.loader.batches`)."""

    def __init__(
        self,
        path: Path,
        source: Dataset,
        size: int,
        mean,
        std,
        build: Callable[[np.ndarray], None],
        key: str,
        produce: Callable | None = None,
    ):
        self.path, self.source, self.size, self.key = Path(path), source, size, key
        self.mean, self.std, self._build = tuple(mean), tuple(std), build
        self._produce = produce  # (batch_size, workers) -> uint8 crops [B, 3, S, S] on the device, batch by batch
        self.labels = dataset_labels(source)
        self.computed = False  # written by this object (not read from an earlier run's cache)
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def open(self) -> "EvalCrops":
        """Compute the cache if it is missing (atomically), then memory-map it."""
        if self._array is None:
            target = self.path / CROPS_FILE
            if not target.exists():
                caches.write_memmap_atomically(target, (len(self), 3, self.size, self.size), self._build)
                self.computed = True
            array = np.load(target, mmap_mode="r")
            if array.shape != (len(self), 3, self.size, self.size):  # never trust a file of another shape
                raise ValueError(f"{target} holds {array.shape}; delete it")
            self._array = array
        return self

    def __getstate__(self):  # loader workers re-open the map instead of pickling its contents
        state = dict(self.__dict__)
        state["_array"] = None
        return state

    def __getitems__(self, indices):
        self.open()
        order = np.asarray(indices)
        return (
            torch.from_numpy(np.ascontiguousarray(self._array[order])),
            torch.as_tensor(self.labels[order]),
            list(indices),
        )

    def __getitem__(self, index: int):
        crops, labels, _ = self.__getitems__([index])
        return crops[0], int(labels[0])

    @staticmethod
    def collate(batch):
        return batch  # __getitems__ made the batch

    def to_batch(self, crops: torch.Tensor, indices, device: torch.device, generator=None) -> torch.Tensor:
        mean = device_constant(self.mean, device).view(1, -1, 1, 1)
        std = device_constant(self.std, device).view(1, -1, 1, 1)
        return (crops.to(device, non_blocking=True).float() / 255.0 - mean) / std

    def evaluation_view(self) -> "EvalCrops":
        return self

    def fingerprint(self) -> None:
        """None (see :class:`~forgetlab.data.base.TaskDataset`): the crops are a cache themselves, keyed
        by ``key``; nothing is cached on top of them."""
        return None

    def streams(self) -> bool:
        """Whether a first pass can evaluate the crops while it writes them (the device path, cache missing)."""
        return self._array is None and self._produce is not None and not (self.path / CROPS_FILE).exists()

    def stream(self, batch_size: int, device: torch.device, workers: int):
        """``(normalised images, labels)`` on ``device`` of every batch, in order, while the cache is written:
        each batch's uint8 crops (what later passes read) are evaluated and copied to the memory map; on
        CUDA through a pinned buffer, written one batch later, so the copy overlaps the next batch."""
        pending = None
        with caches.atomic_memmap(self.path / CROPS_FILE, (len(self), 3, self.size, self.size)) as array:
            row = 0
            for crops, labels in self._produce(batch_size, workers):
                if pending is not None:
                    pending()
                pending = _writer(array, row, crops)
                row += len(crops)
                yield self.to_batch(crops, None, device), labels
            if pending is not None:
                pending()
        self.computed = True


@dataclasses.dataclass
class EvalCropCache:
    """Turns evaluation datasets into :class:`EvalCrops` per ``data.eval_cache`` (see the module docstring)."""

    mode: str = "auto"
    limit_gb: float = 16.0
    device: torch.device = torch.device("cpu")
    folder: Path | None = None  # default: $FORGETLAB_HOME/eval-crops
    log: Callable[[str], None] = print
    batch_size: int = 64
    workers: int = 0  # loader workers that read the files while the crops are computed

    @classmethod
    def from_config(cls, data_config, device: torch.device, log: Callable[[str], None] = print) -> "EvalCropCache":
        return cls(
            mode=data_config.eval_cache,
            limit_gb=data_config.eval_cache_gb,
            device=device,
            log=log,
            workers=data_config.workers,
        )

    def __call__(self, dataset: Dataset, what: str = "evaluation") -> Dataset:
        """``dataset`` read from its cached crops, or ``dataset`` itself when the cache is off, the
        dataset's kind is not cached, or the cache would pass the size limit or the free disk."""
        if self.mode == "off" or isinstance(dataset, EvalCrops) or len(dataset) == 0:
            return dataset
        found = _source(dataset)
        if found is None:
            return dataset
        base, positions = found
        if isinstance(base, EncodedDataset):  # its own index map into the files or arrays
            positions = np.asarray(base.positions)[positions]
        on_files = isinstance(base.dataset if isinstance(base, EncodedDataset) else base, FileDataset)
        if self.mode == "auto" and not (on_files and self.device.type == "cuda"):
            return dataset
        if isinstance(base, EncodedDataset):  # the device pipeline
            transform = (dataset if isinstance(dataset, EncodedDataset) else base).batch_transform
            if transform.training:
                return dataset
            size, mean, std = transform.size, transform.mean, transform.std
            recipe = f"{self.device.type}|{dataclasses.replace(transform, mean=(0.0,) * 3, std=(1.0,) * 3)!r}"
            images_of = base.dataset
            produce = self._device_crops(dataset, transform)
            build = self._device_builder(produce)
        else:
            pil = _pil_recipe(base.transform if isinstance(base, (FileDataset, ArrayImageDataset)) else None)
            if pil is None:
                return dataset
            steps, size, mean, std = pil
            recipe, images_of = repr(steps), base
            build, produce = self._pil_builder(base, positions, steps), None
        bytes_needed = len(dataset) * 3 * size * size
        folder = Path(self.folder) if self.folder is not None else caches.folder("eval-crops")
        if bytes_needed > self.limit_gb * 1e9:
            self.log(
                f"forgetlab: {what} crops not cached: {len(dataset):,} images at {size} px need "
                f"{bytes_needed / 1e9:.3g} GB, over data.eval_cache_gb={self.limit_gb:g}; raise it to cache them"
            )
            return dataset
        key = _key(images_of, positions, recipe, size)
        target = folder / key / CROPS_FILE
        if not target.exists():
            folder.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(folder).free
            if bytes_needed > 0.9 * free:
                self.log(
                    f"forgetlab: {what} crops not cached: they need {bytes_needed / 1e9:.3g} GB and {folder} has "
                    f"{free / 1e9:.1f} GB free"
                )
                return dataset
        return EvalCrops(folder / key, dataset, size, mean, std, build, key, produce)

    def _pil_builder(self, base, positions, steps) -> Callable[[np.ndarray], None]:
        """Crops through timm's PIL steps (threads: PIL releases the GIL while decoding and resizing)."""
        from concurrent.futures import ThreadPoolExecutor

        from forgetlab.runtime import progress

        def image(position: int):
            return base.open_image(position)

        def fill(array: np.ndarray) -> None:
            def crop(row: int) -> None:
                picture = image(int(positions[row]))
                for step in steps:
                    picture = step(picture)
                array[row] = np.asarray(picture.convert("RGB")).transpose(2, 0, 1)

            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                for _ in progress(
                    pool.map(crop, range(len(positions))), total=len(positions), desc="evaluation crops", unit="img"
                ):
                    pass

        return fill

    def _device_crops(self, dataset, transform) -> Callable:
        """``(batch_size, workers) -> iterator of (uint8 crops on the device, labels)``: the device pipeline's
        batches with mean 0 and std 1/255, i.e. in [0, 255], read by ``workers`` loader workers."""

        def produce(batch_size: int, workers: int):
            view = copy.copy(dataset)
            view.batch_transform = dataclasses.replace(transform, mean=(0.0,) * 3, std=(1 / 255,) * 3)
            loader = make_loader(view, batch_size, shuffle=False, device=self.device, workers=workers)
            for images, labels in batches(loader, view, self.device):
                yield images.round().clamp(0, 255).to(torch.uint8), labels

        return produce

    def _device_builder(self, produce: Callable) -> Callable[[np.ndarray], None]:
        """Crops through the device pipeline (:meth:`_device_crops`), written to ``array`` batch by batch."""
        from forgetlab.runtime import progress

        def fill(array: np.ndarray) -> None:
            row = 0
            for crops, _ in progress(produce(self.batch_size, self.workers), desc="evaluation crops", unit="batch"):
                array[row : row + len(crops)] = crops.cpu().numpy()
                row += len(crops)

        return fill


def _writer(array: np.ndarray, row: int, crops: torch.Tensor) -> Callable[[], None]:
    """Start copying ``crops`` to the host (non-blocking into pinned memory on CUDA); the returned call
    waits for the copy and writes it to ``array`` from ``row``."""
    if crops.device.type != "cuda":
        return lambda: array.__setitem__(slice(row, row + len(crops)), crops.numpy())
    host = torch.empty(crops.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(crops, non_blocking=True)
    done = torch.cuda.Event()
    done.record()

    def write() -> None:
        done.synchronize()
        array[row : row + len(host)] = host.numpy()

    return write


def evaluation_batches(dataset: Dataset, batch_size: int, device: torch.device, workers: int = 0):
    """``(iterator of (images, labels) on the device, number of batches)`` of ``dataset`` in order. Cached
    evaluation crops still missing on the device path are computed while they are evaluated
    (:meth:`EvalCrops.stream`); others are opened (computed first on the PIL path), then read."""
    total = -(-len(dataset) // batch_size)
    if isinstance(dataset, EvalCrops) and dataset.streams():
        return dataset.stream(batch_size, device, workers), total
    dataset = open_crops(dataset)
    loader = make_loader(dataset, batch_size, shuffle=False, device=device, workers=workers)
    return batches(loader, dataset, device), total


def _key(images_of: Dataset, positions: np.ndarray, recipe: str, size: int) -> str:
    """:func:`forgetlab.caches.eval_crops_key` of the images ``images_of`` holds (files or an array)."""
    if isinstance(images_of, FileDataset):
        boxes = images_of.boxes
        images = caches.digest(
            caches.files_digest(images_of.paths), None if boxes is None else np.asarray(boxes).tobytes()
        )
    else:
        images = hashlib.sha256(np.ascontiguousarray(np.asarray(images_of.images)).tobytes()).hexdigest()
    return caches.eval_crops_key(images, np.asarray(positions, dtype=np.int64).tobytes(), recipe, size)


def open_crops(dataset: Dataset) -> Dataset:
    """Compute or map an :class:`EvalCrops` before its loader starts (others: unchanged)."""
    return dataset.open() if isinstance(dataset, EvalCrops) else dataset


def cache_keys_under(dataset: Dataset) -> list[tuple[str, str]]:
    """``(cache, key)`` of every cache under ``$FORGETLAB_HOME`` that ``dataset`` reads
    (:mod:`forgetlab.caches`): its evaluation crops and the decoded images under its views. Nothing is
    computed or written."""
    found = []
    while dataset is not None:
        if isinstance(dataset, EvalCrops):
            found.append(("eval-crops", dataset.key))
            dataset = dataset.source
        elif isinstance(dataset, (IndexView, EncodedDataset)):
            dataset = dataset.dataset
        else:
            if isinstance(dataset, ArrayImageDataset) and dataset.cache_key:
                found.append(("decoded", dataset.cache_key))
            dataset = None
    return found
