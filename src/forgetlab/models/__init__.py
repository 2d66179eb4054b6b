"""Backbones (timm models) and the multi-head model that carries the upstream and task heads."""

from forgetlab.models.backbones import Backbone, load_backbone
from forgetlab.models.multihead import UPSTREAM, MultiHeadModel

__all__ = ["Backbone", "load_backbone", "MultiHeadModel", "UPSTREAM"]
