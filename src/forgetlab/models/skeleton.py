"""A backbone's architecture without its weights, for checks that depend only on its shape.

:func:`backbone_skeleton` builds the timm model a :class:`~forgetlab.config.BackboneConfig` names with
``pretrained=False`` on PyTorch's ``meta`` device: every module and parameter shape is there, no
memory is allocated, nothing is read from disk or the network, and no offline backbone has to be
pretrained first. A config's method limits that depend on the architecture (top-k's ``k`` against the
number of blocks, block expansion's positions) are checked on it when the config is resolved, so a
sweep refuses a bad cell before any cell runs. One skeleton is kept per architecture and arguments.
"""

from __future__ import annotations

import torch
from torch import nn

from forgetlab.models.backbones import _create_kwargs, create

_SKELETONS: dict[tuple, nn.Module] = {}  # (name, num_classes, arguments) -> its skeleton
_KEPT = 16


def backbone_skeleton(config) -> nn.Module:
    """The architecture ``config`` (a ``BackboneConfig``) names, with meta tensors for weights (no
    values): the same constructor and arguments as :func:`~forgetlab.models.backbones.load_backbone`
    (``backbone.kwargs``, ``image_size``; a head of ``num_classes``, 1000 where unset, since only a
    headless model differs in shape). Raises :class:`~forgetlab.errors.ConfigError` for a name timm does
    not know or arguments the architecture refuses, as loading it would. Cached per architecture and
    arguments: treat it as read-only."""
    num_classes = 1000 if config.num_classes is None else config.num_classes
    kwargs = _create_kwargs(config)
    key = (config.name, num_classes, repr(sorted(kwargs.items())))
    if key not in _SKELETONS:
        if len(_SKELETONS) >= _KEPT:
            _SKELETONS.clear()
        with torch.device("meta"):
            _SKELETONS[key] = create(config.name, num_classes=num_classes, **kwargs)
    return _SKELETONS[key]
