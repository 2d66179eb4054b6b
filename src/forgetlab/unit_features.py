"""Features at the output of every unit of a backbone, read with forward hooks: what the representation
drift (:mod:`forgetlab.run_drift`) compares between the pretrained and the current model.

The units, found through timm's own structure (never by forking the model):

* ResNets (``layer1`` .. ``layer4``): every block of every stage (``layer3.2``: a bottleneck), its
  output globally average-pooled to ``[N, C]``;
* models with ``blocks`` (ViT, DeiT, DINOv2, EVA, BEiT) or one sequence per stage (Swin's
  ``layers.i.blocks``, ConvNeXt's ``stages.i.blocks``): every block; token outputs ``[N, T, D]`` are
  pooled as the model pools (``global_pool='token'``: the class token; otherwise the mean of the tokens
  after the ``num_prefix_tokens`` prefix tokens), feature maps as their mean over space (``NHWC`` for a
  model whose ``output_fmt`` says so, else ``NCHW``);
* ``features``: the pooled features every head reads (timm's ``pre_logits``).

The probe is a fixed, class-balanced, seeded subset of a dataset (:func:`probe_subset`), so every
phase of a run, and a resumed run, reads the same images.

Imports data (the loader) and models below it; the run's drift step imports this.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from forgetlab.data.base import DeviceBatched, IndexView, dataset_labels
from forgetlab.data.eval_cache import open_crops
from forgetlab.data.loader import batches, make_loader
from forgetlab.errors import ConfigError
from forgetlab.runtime import Runtime

FEATURES = "features"  # the unit name of the pooled features every head reads


def balanced_indices(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Sorted indices of ``count`` examples drawn round-robin over the classes, each class in a seeded
    order (so class counts differ by at most one while a class has examples left); all when fewer.

    The classes are visited in label order, so the remainder of ``count`` over the number of classes goes
    to the lowest labels (and, below one example per class, only the lowest labels are drawn). The drift
    probe (``eval.probe_images``), the linear probe's fit images and ``forgetlab explain --images`` all draw
    their subsets here: the same dataset, ``count`` and ``seed`` give the same images in each."""
    labels = np.asarray(labels)
    if count >= len(labels):
        return np.arange(len(labels))
    generator = np.random.default_rng(seed)
    per_class = [generator.permutation(np.flatnonzero(labels == label)) for label in np.unique(labels)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < count:
        for members in per_class:
            if depth < len(members) and len(chosen) < count:
                chosen.append(int(members[depth]))
        depth += 1
    return np.sort(np.asarray(chosen, dtype=np.int64))


class ProbeSubset(IndexView):
    """The examples of ``dataset`` at ``indices``; cached evaluation crops are mapped on first use, not
    when the run is resolved."""

    def __init__(self, dataset: Dataset, indices: np.ndarray):
        self.dataset, self.indices = dataset, np.asarray(indices, dtype=np.int64)
        self._opened = False
        self.labels = dataset_labels(dataset)[self.indices]

    def __getitem__(self, index: int):
        if not self._opened:
            self.dataset, self._opened = open_crops(self.dataset), True
        return self.dataset[int(self.indices[index])]


class DeviceBatchedProbe(ProbeSubset):
    """A :class:`ProbeSubset` of a :class:`~forgetlab.data.base.DeviceBatched` dataset, batched as that
    dataset batches (the device pipeline's datasets keep working)."""

    def collate(self, items):
        return self.dataset.collate(items)

    def to_batch(self, payloads, positions, device: torch.device, generator=None) -> torch.Tensor:
        return self.dataset.to_batch(payloads, positions, device, generator)


def probe_view(dataset: Dataset, indices: np.ndarray) -> ProbeSubset:
    """The examples of ``dataset`` at ``indices``, batched as ``dataset`` batches."""
    return (DeviceBatchedProbe if isinstance(dataset, DeviceBatched) else ProbeSubset)(dataset, indices)


def probe_subset(dataset: Dataset, count: int, seed: int) -> Dataset:
    """A fixed, class-balanced subset of ``count`` examples of ``dataset`` (all when fewer), seeded."""
    indices = balanced_indices(dataset_labels(dataset), count, seed)
    return dataset if len(indices) == len(dataset) else probe_view(dataset, indices)


def feature_units(backbone: nn.Module) -> list[str]:
    """Module paths (in ``backbone``) of the units whose outputs are compared, in forward order; the
    pooled ``features`` are not listed (they are always compared)."""
    stages = [
        name
        for name in ("layer1", "layer2", "layer3", "layer4")
        if isinstance(getattr(backbone, name, None), nn.Sequential)
    ]
    if stages:  # timm's ResNet family: one unit per block (a bottleneck or a basic block)
        return [f"{stage}.{index}" for stage in stages for index in range(len(getattr(backbone, stage)))]
    from forgetlab.models.families import block_sequences

    try:
        sequences = block_sequences(backbone)
    except ConfigError:
        return []
    return [f"{name}.{index}" for name, sequence in sequences for index in range(len(sequence))]


def _pool(output, backbone: nn.Module) -> torch.Tensor:
    """A unit's output ``[N, ...]`` as ``[N, D]`` (see the module docstring)."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if output.ndim == 2:
        return output
    if output.ndim == 3:  # tokens
        if getattr(backbone, "global_pool", "token") == "token":
            return output[:, 0]
        return output[:, getattr(backbone, "num_prefix_tokens", 0) :].mean(dim=1)
    if output.ndim == 4:
        return (
            output.mean(dim=(1, 2))
            if str(getattr(backbone, "output_fmt", "NCHW")) == "NHWC"
            else output.mean(dim=(2, 3))
        )
    raise ValueError(f"cannot pool a unit output of shape {tuple(output.shape)}")


@torch.no_grad()
def unit_features(
    model, dataset: Dataset, units: list[str], runtime: Runtime, *, description: str = "drift features"
) -> dict[str, torch.Tensor]:
    """``unit -> features [N, D]`` (fp32, on the CPU) of every example of ``dataset`` at every module
    path of ``units`` (in ``model.backbone``) and at ``features`` (``model.features``), from one
    forward pass per batch of ``runtime.eval_batch_size`` on ``runtime.device`` with forward hooks."""
    backbone = model.backbone
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in [*units, FEATURES]}

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            captured[name].append(_pool(output, backbone).float().cpu())

        return hook

    handles = [backbone.get_submodule(name).register_forward_hook(hook_for(name)) for name in units]
    try:
        model.eval()
        device = runtime.device
        loader = make_loader(dataset, runtime.eval_batch_size, shuffle=False, device=device, workers=runtime.workers)
        for images, _ in runtime.progress(
            batches(loader, dataset, device), total=len(loader), desc=description, unit="batch"
        ):
            with runtime.autocast():
                captured[FEATURES].append(model.features(images).float().cpu())
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(chunks) for name, chunks in captured.items()}
