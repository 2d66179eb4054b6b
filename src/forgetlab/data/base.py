"""What a task is: train and test splits, class names and, where known, each class's WordNet synset.

A task is a plain record. Upstream tasks carry a WordNet synset per class (ImageNet classes carry their
wnid), which the contextual-forgetting analysis uses; downstream tasks carry the WordNet concept of
their domain (``car.n.01`` for Stanford Cars).

Every dataset class of forgetlab keeps one small interface, :class:`TaskDataset` (as every timm model
keeps ``forward_features`` and ``reset_classifier``): its labels without loading an image, its
evaluation view, and a fingerprint of what it yields, which the caches of pure functions of a dataset
key on. A dataset of another library (a torchvision dataset handed to the API) works too: its labels
are read item by item, it is its own evaluation view, and it has no fingerprint (nothing is cached).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import Dataset


@runtime_checkable
class TaskDataset(Protocol):
    """The interface of every forgetlab dataset class (``ArrayDataset``, ``FileDataset``,
    ``ArrayImageDataset``, ``LabelSubset``, ``SampleSubset``, the device pipeline's ``EncodedDataset``
    and the evaluation crops' ``EvalCrops``); a dataset of your own keeps it too (docs/extending.md).

    * ``labels``: every example's label, int64 ``[N]``, read without loading an image;
    * ``__len__`` and ``__getitem__`` (an ``(image, label)`` pair, as torch's ``Dataset``);
    * ``evaluation_view()``: the same examples under the deterministic evaluation transform (a k-NN
      bank of the training split); itself when it has only one transform;
    * ``fingerprint()``: a SHA-256 hex string of everything its items depend on (files by path, size
      and modification time, in-memory images by their bytes, positions, labels and transforms), stable
      across processes; None when it cannot say (the caches keyed by it are then not read)."""

    labels: np.ndarray

    def __len__(self) -> int: ...

    def __getitem__(self, index: int): ...

    def evaluation_view(self) -> "TaskDataset": ...

    def fingerprint(self) -> str | None: ...


@runtime_checkable
class DeviceBatched(Protocol):
    """A dataset whose batches are finished on the device (the device pipeline's ``EncodedDataset``, the
    evaluation crops' ``EvalCrops``): its loader collates with ``collate`` (in a loader worker), and
    :func:`forgetlab.data.loader.batches` turns each ``(payloads, labels, positions)`` batch into float
    images ``[B, 3, H, W]`` on the device with ``to_batch``. Datasets without it are collated by torch
    and copied."""

    def collate(self, items): ...

    def to_batch(self, payloads, positions, device: torch.device, generator=None) -> torch.Tensor: ...


class IndexView(Dataset):
    """A dataset that reads the examples of another, ``dataset``, at ``indices`` (int64 ``[N]``): the
    class and sample splits (:class:`LabelSubset`, :class:`SampleSubset`) and the drift probe. Caches
    and the device pipeline read through it to the dataset that holds the images
    (:func:`base_positions`)."""

    dataset: Dataset
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def evaluation_view(self) -> "IndexView":
        view = copy.copy(self)
        view.dataset = evaluation_view(self.dataset)
        return view

    def fingerprint(self) -> str | None:
        return index_fingerprint(self, dataset_fingerprint(self.dataset), self.indices)


def base_positions(dataset: Dataset) -> tuple[Dataset, np.ndarray]:
    """``(the dataset under every :class:`IndexView` of dataset, the positions there of dataset's examples)``
    (int64 ``[N]``, in dataset's order); ``(dataset, 0..N-1)`` for a dataset that is no view."""
    positions = np.arange(len(dataset))
    while isinstance(dataset, IndexView):
        positions, dataset = np.asarray(dataset.indices)[positions], dataset.dataset
    return dataset, positions


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Every example's label ``[N]``: a :class:`TaskDataset`'s ``labels`` (no image is loaded), any other
    dataset's read item by item."""
    if isinstance(dataset, TaskDataset):
        return np.asarray(dataset.labels)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))])


def content_fingerprint(dataset, contents: list[bytes], transform, mean=None, std=None) -> str:
    """The fingerprint of a dataset that holds its examples (files or arrays): a SHA-256 of its class
    name, ``contents`` (what identifies its images), its labels, and the ``repr`` of its ``transform``
    and normalisation ``(mean, std)`` (None for those it does not apply)."""
    digest = hashlib.sha256(type(dataset).__name__.encode())
    for content in contents:
        digest.update(content)
    digest.update(np.asarray(dataset.labels).tobytes())
    digest.update(repr(transform).encode())
    digest.update(repr((mean, std)).encode())
    return digest.hexdigest()


def index_fingerprint(dataset, inner_print: str | None, indices) -> str | None:
    """The fingerprint of a dataset that reads ``indices`` of another (whose fingerprint is
    ``inner_print``; None: this one has none either): its class name, the inner print, the indices and its labels."""
    if inner_print is None:
        return None
    digest = hashlib.sha256(type(dataset).__name__.encode())
    digest.update(inner_print.encode())
    digest.update(np.asarray(indices).tobytes())
    digest.update(np.asarray(dataset.labels).tobytes())
    return digest.hexdigest()


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

    def evaluation_view(self) -> "ArrayDataset":
        return self  # one transform: the normalisation

    def fingerprint(self, with_transform: bool = True) -> str:
        """See :class:`TaskDataset`: the image bytes, labels and normalisation (``with_transform=False``:
        the images alone, as the device pipeline reads them)."""
        mean, std = (self.mean, self.std) if with_transform else (None, None)
        return content_fingerprint(self, [np.ascontiguousarray(self.images.numpy()).tobytes()], None, mean, std)


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


class LabelSubset(IndexView):
    """The examples of ``dataset`` whose label is a key of ``relabel``, with labels mapped through it."""

    def __init__(self, dataset: Dataset, relabel: dict[int, int]):
        labels = dataset_labels(dataset)
        self.dataset = dataset
        self.indices = np.flatnonzero(np.isin(labels, list(relabel)))
        mapping = np.full(max(list(relabel) + [int(labels.max()) if len(labels) else 0]) + 1, -1, dtype=np.int64)
        for old, new in relabel.items():
            mapping[old] = new
        self.labels = mapping[labels[self.indices]]

    def __getitem__(self, index: int):
        image, _ = self.dataset[int(self.indices[index])]
        return image, int(self.labels[index])


class SampleSubset(IndexView):
    """The examples of ``dataset`` at ``indices`` (a sample split: paper 1's long setting)."""

    def __init__(self, dataset: Dataset, indices):
        self.dataset, self.indices = dataset, np.asarray(indices, dtype=np.int64)
        self.labels = dataset_labels(dataset)[self.indices]

    def __getitem__(self, index: int):
        return self.dataset[int(self.indices[index])]


def evaluation_view(dataset: Dataset) -> Dataset:
    """``dataset`` under its deterministic evaluation transform: a :class:`TaskDataset`'s
    ``evaluation_view()``; any other dataset as it is."""
    return dataset.evaluation_view() if isinstance(dataset, TaskDataset) else dataset


def dataset_fingerprint(dataset: Dataset) -> str | None:
    """A :class:`TaskDataset`'s ``fingerprint()`` (a SHA-256 hex string of what it yields), or None for
    a dataset of another kind. Caches of pure functions of a dataset key on it (the k-NN banks of
    :class:`forgetlab.evaluate.KNNEvaluator`)."""
    return dataset.fingerprint() if isinstance(dataset, TaskDataset) else None
