"""What a task is: train and test splits, class names and, where known, each class's WordNet synset.

A task is a plain record. Upstream tasks carry a WordNet synset per class (ImageNet classes carry their
wnid), which the contextual-forgetting analysis uses; downstream tasks carry the WordNet concept of
their domain (``car.n.01`` for Stanford Cars).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Every example's label, from the dataset's ``labels`` when it has them (no image is loaded)."""
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return np.asarray(labels)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))])


def subset_indices(length: int, count: int, seed: int) -> np.ndarray | None:
    """Sorted indices of a fixed, seeded subset of ``count`` of ``length`` examples; None for all."""
    if count >= length:
        return None
    order = torch.randperm(length, generator=torch.Generator().manual_seed(seed))[:count]
    return order.sort().values.numpy()


class ArrayDataset(Dataset):
    """In-memory uint8 images ``[N, H, W]`` or ``[N, H, W, C]`` with integer labels.

    Items are ``(float image [C, H, W] normalised by mean/std, label)``. Used for the offline world,
    where every task fits in memory.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: float = 0.5, std: float = 0.5):
        if images.ndim == 3:
            images = images[..., None]
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        image = (self.images[index].float() / 255.0 - self.mean) / self.std
        return image, self.labels[index]

    def subset(self, count: int, seed: int) -> "ArrayDataset":
        """A fixed, seeded subset of ``count`` examples (all of them if fewer)."""
        order = subset_indices(len(self), count, seed)
        if order is None:
            return self
        order = torch.from_numpy(order)
        subset = ArrayDataset.__new__(ArrayDataset)
        subset.images, subset.labels = self.images[order], self.labels[order]
        subset.mean, subset.std = self.mean, self.std
        return subset


@dataclass
class TaskData:
    """One task: its splits and what its classes mean."""

    name: str
    classes: list[str]
    train: Dataset
    test: Dataset
    description: str = ""
    class_synsets: list[str] | None = None  # one WordNet synset name per class (upstream tasks)
    class_groups: list[str] | None = None  # a semantic group per class, e.g. 'clothing', 'letters'
    domain_synset: str | None = None  # the WordNet concept of the task's domain (downstream tasks)
    domain_word: str | None = None  # the word paper 1 matched class names against ('car', 'plane')
    column: str = ""  # the task this data trains: its head and matrix column (the name less any sample split)
    stands_in_for: str = ""  # which real dataset this offline task plays the role of
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.column = self.column or self.name

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class LabelSubset(Dataset):
    """The examples of ``dataset`` whose label is a key of ``relabel``, with labels mapped through it."""

    def __init__(self, dataset: Dataset, relabel: dict[int, int]):
        labels = dataset_labels(dataset)
        self.dataset = dataset
        self.indices = np.flatnonzero(np.isin(labels, list(relabel)))
        mapping = np.full(max(list(relabel) + [int(labels.max()) if len(labels) else 0]) + 1, -1, dtype=np.int64)
        for old, new in relabel.items():
            mapping[old] = new
        self.labels = mapping[labels[self.indices]]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        image, _ = self.dataset[int(self.indices[index])]
        return image, int(self.labels[index])

    def evaluation_view(self) -> "LabelSubset":
        view = copy.copy(self)
        view.dataset = evaluation_view(self.dataset)
        return view


class SampleSubset(Dataset):
    """The examples of ``dataset`` at ``indices`` (a sample split: paper 1's long setting)."""

    def __init__(self, dataset: Dataset, indices):
        self.dataset, self.indices = dataset, np.asarray(indices, dtype=np.int64)
        self.labels = dataset_labels(dataset)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[int(self.indices[index])]

    def evaluation_view(self) -> "SampleSubset":
        view = copy.copy(self)
        view.dataset = evaluation_view(self.dataset)
        return view


def evaluation_view(dataset: Dataset) -> Dataset:
    """``dataset`` under its deterministic evaluation transform (as it is when it has no other)."""
    view = getattr(dataset, "evaluation_view", None)
    return view() if view else dataset


def dataset_fingerprint(dataset: Dataset) -> str | None:
    """A SHA-256 of what a dataset yields (files by path, size and modification time; in-memory images
    by their bytes; subsets by their indices; the transform by its description; the device
    pipeline's :class:`~forgetlab.data.device_pipeline.EncodedDataset` by the files or arrays it reads, its positions
    and its batch transform), or None for a type it does not know. Caches of pure functions of a
    dataset key on it (the k-NN banks of :class:`forgetlab.evaluate.KNNEvaluator`)."""
    import copy
    import hashlib

    digest = hashlib.sha256(type(dataset).__name__.encode())
    inner = getattr(dataset, "dataset", None)
    if inner is not None and hasattr(dataset, "positions") and hasattr(dataset, "batch_transform"):
        # EncodedDataset (data.pipeline=device): the files or arrays it reads (not the PIL transform of
        # the dataset holding them, which it never applies), the positions and labels it reads them as,
        # and the batch transform its images get on the device.
        source = copy.copy(inner)
        source.transform = source.mean = source.std = None
        inner_print = dataset_fingerprint(source)
        if inner_print is None:
            return None
        digest.update(inner_print.encode())
        digest.update(np.asarray(dataset.positions).tobytes())
        digest.update(np.asarray(dataset_labels(dataset)).tobytes())
        digest.update(repr(dataset.batch_transform).encode())
        return digest.hexdigest()
    if inner is not None and hasattr(dataset, "indices"):  # LabelSubset, SampleSubset
        inner_print = dataset_fingerprint(inner)
        if inner_print is None:
            return None
        digest.update(inner_print.encode())
        digest.update(np.asarray(dataset.indices).tobytes())
        digest.update(np.asarray(dataset_labels(dataset)).tobytes())
        return digest.hexdigest()
    if hasattr(dataset, "paths"):  # FileDataset
        for path in dataset.paths:
            stat = path.stat()
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        if getattr(dataset, "boxes", None) is not None:
            digest.update(dataset.boxes.tobytes())
    elif hasattr(dataset, "images"):  # ArrayImageDataset, ArrayDataset
        images = dataset.images
        digest.update(np.ascontiguousarray(images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)).tobytes())
    else:
        return None
    digest.update(np.asarray(dataset_labels(dataset)).tobytes())
    digest.update(repr(getattr(dataset, "transform", None)).encode())
    digest.update(repr((getattr(dataset, "mean", None), getattr(dataset, "std", None))).encode())
    return digest.hexdigest()
