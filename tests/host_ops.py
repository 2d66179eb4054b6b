"""Counting the host's work for one batch: every aten op the main thread dispatches (a
``TorchDispatchMode``), host reads of tensor values (``aten::item`` / ``_local_scalar_dense``) and the
copies from the host to another device, with their ``non_blocking`` flag.

On a machine without a GPU the target device is ``meta``: the pipeline's ops, copies included, are
dispatched exactly as for CUDA, while no kernel runs (shapes only)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from forgetlab.data.device_pipeline import BatchTransform, EncodedDataset
from forgetlab.data.files import ArrayImageDataset

aten = torch.ops.aten
READS = {aten.item.default, aten._local_scalar_dense.default}
TRAINING = {
    "size": 24,
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "training": True,
    "color_jitter": 0.4,
}


class HostOps(TorchDispatchMode):
    """``ops``: a Counter of op names; ``reads``: host reads of tensor values; ``copies``: the
    ``non_blocking`` flag of every copy from the CPU to another device."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.copies: list[bool] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops[str(func.overloadpacket.__name__)] += 1
        if (
            func is aten._to_copy.default
            and args[0].device.type == "cpu"
            and kwargs.get("device") not in (None, torch.device("cpu"))
        ):
            self.copies.append(bool(kwargs.get("non_blocking", False)))
        if func is aten.copy_.default and args[1].device.type == "cpu" and args[0].device.type != "cpu":
            self.copies.append(bool(args[2] if len(args) > 2 else kwargs.get("non_blocking", False)))
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def reads(self) -> int:
        return sum(count for name, count in self.ops.items() if name in ("item", "_local_scalar_dense"))

    @property
    def blocking_copies(self) -> int:
        return self.copies.count(False)


def array_dataset(count: int, size: int = 32, seed: int = 0, **transform) -> EncodedDataset:
    """``count`` random CIFAR-like uint8 images read by the device pipeline with a training transform."""
    rng = np.random.default_rng(seed)
    arrays = ArrayImageDataset(rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8), np.arange(count) % 10)
    return EncodedDataset(arrays, BatchTransform(**{**TRAINING, **transform}))


def training_batch_ops(batch_size: int, device: torch.device = torch.device("meta")) -> HostOps:
    """The host ops of making one training batch on ``device`` from what a loader worker hands over
    (its ``collate`` ran there): the device pipeline's ``to_batch`` and the labels' copy, after one
    batch of warm-up."""
    dataset = array_dataset(batch_size)
    payloads, labels, positions = dataset.collate([dataset[i] for i in range(batch_size)])
    generator = torch.Generator().manual_seed(0)
    dataset.to_batch(
        payloads, positions, device, generator
    )  # one-time work (lazy imports, version checks) out of the count
    with HostOps() as ops:
        images = dataset.to_batch(payloads, positions, device, generator)
        labels.to(device, non_blocking=True)
    assert images.shape == (batch_size, 3, TRAINING["size"], TRAINING["size"])
    return ops
