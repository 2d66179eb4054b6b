"""The runner's refusals that need no run folder: local inputs and image channels before anything is
written (:func:`check_local_inputs`, :func:`check_image_channels`), and weights left non-finite by a
phase before it is committed (:func:`check_finite`). Each raises a one-line error naming the fix.

Imports data, models and errors (below it); the runner imports it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from forgetlab.data import build_task
from forgetlab.data.registry import image_channels
from forgetlab.errors import ConfigError, DataError, TrainingError


def check_local_inputs(config) -> None:
    """Every local input a run reads, before the backbone's weights (which may mean a download or a
    pretraining): the weights file, each real dataset's folder under ``data.root`` and the offline
    world's source files; each a one-line error naming the fix."""
    from forgetlab.data.real import SOURCES, dataset_folder
    from forgetlab.data.registry import parse_task_name
    from forgetlab.models.backbones import check_backbone_name

    check_backbone_name(config.backbone.name)  # a typo first: the closest timm names
    if config.backbone.weights and not Path(config.backbone.weights).exists():
        raise DataError(f"weights file {config.backbone.weights} not found; check backbone.weights")
    for name in dict.fromkeys([config.data.upstream, *config.data.tasks]):
        dataset = parse_task_name(name)[0]
        if dataset in SOURCES:
            dataset_folder(dataset, config.data)
        else:  # the offline world: built once from Debian's files (seconds), then read from the cache
            build_task(name, config.data)


def check_image_channels(config, backbone) -> None:
    """Refuse, before anything is written, a backbone whose first convolution reads other images than
    the run's datasets hold (an RGB timm model on the offline world's grayscale, or the reverse)."""
    conv = next((m for m in backbone.model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if conv is None:
        return
    for name in [config.data.upstream, *config.data.tasks]:
        if (channels := image_channels(name)) != conv.in_channels:
            offline = "the offline world's 28 x 28 grayscale" if channels == 1 else "RGB"
            fix = ("set data.upstream and data.tasks to real datasets (e.g. data.upstream=imagenet) or use an offline "
                   "backbone (offline_vit, offline_resnet)") if channels == 1 else "use a timm backbone for real datasets"  # fmt: skip
            raise ConfigError(f"backbone {config.backbone.name} reads {conv.in_channels}-channel images but {name} holds "
                              f"{offline} images ({channels} channel{'s' if channels > 1 else ''}); {fix}")  # fmt: skip


def check_finite(model, task: str, config) -> None:
    """Refuse a task whose training left non-finite weights (any method), before it is committed."""
    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter).all():
            raise TrainingError(f"task {task}: training left non-finite weights in {name} (train.lr={config.train.lr:g}); "
                                "lower train.lr and run again (earlier tasks are kept)")  # fmt: skip
