"""The host's work per training batch does not grow with the batch: the same aten ops at batch 32
and 128, no host read of a tensor value, every per-image parameter in one non-blocking copy, and
a loader worker's batch handed over as one tensor."""

from __future__ import annotations

import numpy as np
import torch

from forgetlab.data.device_pipeline import BatchTransform, EncodedBatch, EncodedDataset
from forgetlab.data.files import FileDataset
from tests.host_ops import training_batch_ops


def test_a_training_batch_issues_the_same_host_ops_at_batch_32_and_128():
    small, large = training_batch_ops(32), training_batch_ops(128)
    assert small.ops == large.ops, (small.ops - large.ops) + (large.ops - small.ops)
    assert small.reads == 0 and small.total < 400  # 599 at batch 32 and 1,367 at 128 with per-image grouping
    # Two copies to the device (the packed parameters, the images) plus the labels', none blocking.
    assert len(large.copies) == 3 and large.blocking_copies == 0


def test_the_same_host_ops_on_the_cpu():
    cpu = torch.device("cpu")
    assert training_batch_ops(32, cpu).ops == training_batch_ops(128, cpu).ops


def test_a_worker_hands_over_files_as_one_byte_tensor_with_offsets(tmp_path):
    paths = []
    for i, size in enumerate([(20, 30), (31, 17), (8, 8)]):
        paths.append(tmp_path / f"{i}.jpg")
        from PIL import Image

        Image.fromarray(np.full((*size, 3), 40 * i, np.uint8)).save(paths[-1])
    dataset = EncodedDataset(FileDataset(paths, [0, 1, 2]), BatchTransform(size=8, mean=(0.5,) * 3, std=(0.5,) * 3))
    items = [dataset[i] for i in range(3)]
    payloads, labels, positions = dataset.collate(items)
    assert isinstance(payloads, EncodedBatch) and payloads.data.dim() == 1 and payloads.offsets[0] == 0
    assert [p.tolist() for p in payloads.payloads()] == [item[0].tolist() for item in items]
    stacked = dataset.to_batch(payloads, positions, torch.device("cpu"))
    one_by_one = dataset.to_batch([item[0] for item in items], positions, torch.device("cpu"))
    assert torch.equal(stacked, one_by_one) and labels.tolist() == [0, 1, 2]


def test_same_sized_arrays_are_stacked_in_the_worker():
    from tests.host_ops import array_dataset

    dataset = array_dataset(5)
    payloads, _, _ = dataset.collate([dataset[i] for i in range(5)])
    assert isinstance(payloads, torch.Tensor) and payloads.shape == (5, 3, 32, 32) and payloads.dtype == torch.uint8
    generator = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    listed = dataset.to_batch(list(payloads), list(range(5)), torch.device("cpu"), generator())
    assert torch.equal(dataset.to_batch(payloads, list(range(5)), torch.device("cpu"), generator()), listed)


def test_replayed_batches_come_through_the_device_pipeline():
    """A replay buffer over the device pipeline's dataset gives training batches made as the loader's:
    collated, augmented on the device with a generator seeded from the phase's seed."""
    from forgetlab.regularisers import ReplayBuffer
    from tests.host_ops import TRAINING, array_dataset

    dataset = array_dataset(40)
    buffer = ReplayBuffer(dataset, 20, seed=0)
    images, labels = next(buffer.batches(8, seed=3, device=torch.device("cpu")))
    assert images.shape == (8, 3, TRAINING["size"], TRAINING["size"]) and images.dtype == torch.float32
    order = torch.randperm(20, generator=torch.Generator().manual_seed(3))[:8].numpy()
    picked = buffer.indices[order]
    payloads, expected_labels, positions = dataset.collate([dataset[int(i)] for i in picked])
    expected = dataset.to_batch(payloads, positions, torch.device("cpu"), torch.Generator().manual_seed(4))
    assert torch.equal(images, expected) and torch.equal(labels, expected_labels)
