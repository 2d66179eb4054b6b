"""Replay of upstream examples (the next step both papers name): a fixed, bounded buffer drawn from
the upstream *train* split, class-balanced and seeded, whose examples are mixed into every batch of
every task and learned through the upstream head.

It is a data source, nothing more: the loop asks it for a batch and concatenates it with the task's
batch; no method or loss knows it exists.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from forgetlab.data.base import DeviceBatched, dataset_labels
from forgetlab.errors import ConfigError


class ReplayBuffer:
    def __init__(self, dataset: Dataset, size: int, *, seed: int):
        if size < 1:
            raise ConfigError("replay.size must be at least 1 to replay")
        labels = dataset_labels(dataset)
        rng = np.random.default_rng(seed)
        # Round-robin over shuffled classes: as balanced as the size allows.
        per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in rng.permutation(np.unique(labels))]
        chosen, depth = [], 0
        while len(chosen) < min(size, len(labels)):
            for indices in per_class:
                if depth < len(indices) and len(chosen) < size:
                    chosen.append(int(indices[depth]))
            depth += 1
        self.dataset = dataset
        self.indices = np.asarray(sorted(chosen), dtype=np.int64)
        self.labels = labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def batches(self, batch_size: int, seed: int, device: torch.device | None = None):
        """Endless random batches ``(images, labels)`` of the buffer, in a seeded order. A dataset of the
        device pipeline (:class:`~forgetlab.data.base.DeviceBatched`)
        gives its batches as training batches are made: collated as a loader worker would, decoded and
        augmented on ``device`` (its random parameters from a generator seeded with ``seed + 1``)."""
        generator = torch.Generator().manual_seed(seed)
        augment = torch.Generator().manual_seed(seed + 1)
        batch_size = min(batch_size, len(self.indices))
        to_batch = self.dataset.to_batch if device is not None and isinstance(self.dataset, DeviceBatched) else None
        while True:
            order = torch.randperm(len(self.indices), generator=generator)
            for start in range(0, len(order) - batch_size + 1, batch_size):
                picked = self.indices[order[start : start + batch_size].numpy()]
                items = [self.dataset[int(i)] for i in picked]
                if to_batch is not None:
                    payloads, labels, positions = self.dataset.collate(items)
                    yield to_batch(payloads, positions, device, augment), labels.to(device, non_blocking=True)
                else:
                    yield (
                        torch.stack([image for image, _ in items]),
                        torch.as_tensor([int(label) for _, label in items]),
                    )
