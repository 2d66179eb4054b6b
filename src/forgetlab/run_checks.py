"""The runner's refusals that need no run folder: local inputs and image channels before anything is written
(:func:`check_local_inputs`, :func:`check_image_channels`, :func:`check_upstream_head`), and weights left non-finite by
a phase before it is committed (:func:`check_finite`). Each raises a one-line error naming the fix.

Imports data, models and errors (below it); the runner imports it.
"""

from __future__ import annotations

import torch

from forgetlab.data.registry import image_channels
from forgetlab.errors import ConfigError, TrainingError


def check_local_inputs(config) -> None:
    """Every local input a run reads, before the backbone's weights (which may mean a download or a
    pretraining): the weights, each dataset as the run loads it (the upstream train split where the
    k-NN bank or replay reads it), WordNet where ImageNet is used, and the offline world's source
    files. Every problem is found in one pass (:func:`forgetlab.data_check.require_inputs`): one is
    its one-line error, several are listed together, each with where it belongs and how to get it."""
    from forgetlab.data_check import require_inputs

    require_inputs(config)


def check_image_channels(config, backbone) -> None:
    """Refuse, before anything is written, a backbone whose first convolution reads other images than
    the run's datasets hold (an RGB timm model on the offline world's grayscale, or the reverse)."""
    conv = next((m for m in backbone.model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if conv is None:
        return
    for name in [config.data.upstream, *config.data.tasks]:
        if (channels := image_channels(name)) != conv.in_channels:
            offline = "the offline world's 28 x 28 grayscale" if channels == 1 else "RGB"
            fix = (
                (
                    "set data.upstream and data.tasks to real datasets (e.g. data.upstream=imagenet) or use an offline "
                    "backbone (offline_vit, offline_resnet)"
                )
                if channels == 1
                else "use a timm backbone for real datasets"
            )
            raise ConfigError(
                f"backbone {config.backbone.name} reads {conv.in_channels}-channel images but {name} holds "
                f"{offline} images ({channels} channel{'s' if channels > 1 else ''}); {fix}"
            )


def check_upstream_head(config, backbone, upstream) -> None:
    """Refuse ``eval.upstream_evaluator=head`` when the backbone's classifier cannot score the upstream
    task: no head at all (``backbone.num_classes=0``, a headless model such as DINO's), or one of
    another size. The fix offered is one that works for this config."""
    if "head" not in config.eval.evaluators:
        return
    head_classes = getattr(backbone.model.get_classifier(), "out_features", 0)
    if head_classes == upstream.num_classes:
        return
    if head_classes == 0:
        raise ConfigError(
            f"eval.upstream_evaluator=head scores {config.data.upstream} with the backbone's "
            f"classifier, and {config.backbone.name} has "
            f"none{' (backbone.num_classes=0)' if config.backbone.num_classes == 0 else ''}; "
            f"use eval.upstream_evaluator=knn or probe (both read {config.data.upstream}'s train split: "
            f"forgetlab data check), or a backbone with a {upstream.num_classes}-class head"
        )
    fixes = [] if config.backbone.random_init else ["set data.upstream to the dataset the backbone was trained on"]
    fixes.append(
        f"set backbone.num_classes={upstream.num_classes}"
        + ("" if config.backbone.random_init else " with backbone.random_init=true")
    )
    raise ConfigError(
        f"the backbone's head predicts {head_classes} classes but {config.data.upstream} has {upstream.num_classes}; "
        f"{', or '.join(fixes)}"
    )


def check_finite(model, task: str, config) -> None:
    """Refuse a task whose training left non-finite weights (any method), before it is committed."""
    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter).all():
            raise TrainingError(
                f"task {task}: training left non-finite weights in {name} (train.lr={config.train.lr:g}); "
                "lower train.lr and run again (earlier tasks are kept)"
            )
