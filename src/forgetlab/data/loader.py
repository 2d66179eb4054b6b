"""From a dataset to normalised batches on the device, for training and evaluation alike.

:func:`make_loader` wraps a dataset in a seeded ``DataLoader``; :func:`batches` turns its batches into
``(images, labels)`` on the device: the device pipeline's datasets (and the cached evaluation crops)
are decoded and preprocessed there by their ``to_batch`` (:mod:`forgetlab.data.device_pipeline`,
:mod:`forgetlab.data.eval_cache`), others copied. On CUDA the next batch is prepared on a side stream
while the current one trains (:func:`prefetched`).

Imports run one way: ``train``, ``evaluate`` and ``data.eval_cache`` import this module; it imports
only torch and ``data.base`` (the :class:`~forgetlab.data.base.DeviceBatched` protocol).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from forgetlab.data.base import DeviceBatched


_CONSTANTS: dict[tuple, torch.Tensor] = {}


def device_constant(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """float32 ``values`` (a normalisation's mean or std) on ``device``, copied there once per process:
    a fresh ``torch.tensor(..., device=cuda)`` per batch is a blocking copy from unpinned memory."""
    key = (tuple(float(v) for v in values), str(device))
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.tensor(key[0], dtype=torch.float32, device=device)
    return _CONSTANTS[key]


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    workers: int = 0,
    device=None,
    drop_last: bool = False,
):
    """A ``DataLoader`` over ``dataset``: shuffled by a generator seeded with ``seed`` (unshuffled: in
    order), batches collated by the dataset's own ``collate`` when it has one, memory pinned for CUDA.
    ``drop_last`` drops a last partial batch only when there is a full one."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last and len(dataset) >= batch_size,
        collate_fn=dataset.collate if isinstance(dataset, DeviceBatched) else None,  # encoded images
        generator=generator if shuffle else None,
        num_workers=workers,
        pin_memory=device is not None and device.type == "cuda",
        persistent_workers=workers > 0,
    )


def batches(loader, dataset, device: torch.device, generator: torch.Generator | None = None):
    """``(images on the device, labels on the device)`` of every batch: the device pipeline's datasets
    are decoded and preprocessed there (:mod:`forgetlab.data.device_pipeline`), others copied.

    On CUDA the batches come one ahead (:func:`prefetched`): the next batch's copy, decoding and
    preprocessing are queued on a side stream before the current one is handed over, so they overlap
    the current step instead of preceding the next."""
    produced = _on_device(loader, dataset, device, generator)
    if device.type != "cuda":
        yield from produced
        return
    stream = torch.cuda.Stream(device=device)
    yield from prefetched(produced, lambda: torch.cuda.stream(stream), lambda: _hand_over(stream, device))


def _on_device(loader, dataset, device: torch.device, generator: torch.Generator | None):
    to_batch = dataset.to_batch if isinstance(dataset, DeviceBatched) else None
    for batch in loader:
        if to_batch is not None:
            payloads, labels, positions = batch
            yield to_batch(payloads, positions, device, generator), labels.to(device, non_blocking=True)
        else:
            images, labels = batch
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def _hand_over(stream, device):
    """Make the compute stream wait for ``stream``'s work; returns how to mark a tensor as used there."""
    current = torch.cuda.current_stream(device)
    current.wait_stream(stream)
    return lambda tensor: tensor.record_stream(current)  # its memory is not reused before the step is done


def prefetched(produced, side_stream, hand_over):
    """Yield from ``produced`` one item ahead: item ``i + 1`` is made inside ``side_stream()`` (a context)
    before item ``i`` is handed over; ``hand_over()`` orders the streams and returns a function that
    marks each tensor of an item as used by the consumer's stream."""

    def make():
        with side_stream():
            return next(produced, None)

    upcoming = make()
    while upcoming is not None:
        mark = hand_over()
        for tensor in upcoming:
            mark(tensor)
        ready, upcoming = upcoming, make()
        yield ready
