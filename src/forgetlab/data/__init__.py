"""Datasets: one file per source, one registry (:mod:`forgetlab.data.registry`), one path from a
dataset to batches on the device (:mod:`forgetlab.data.loader`).

Importing the package registers the built-in datasets: it imports :mod:`~forgetlab.data.offline` and
:mod:`~forgetlab.data.real`, whose builders register themselves; the registry imports none of its
members (as timm's ``_registry.py``). Any ``import forgetlab.data.X`` runs this file first, so the
registry is complete whenever it is asked.
"""

from forgetlab.data import offline, real  # noqa: F401 - importing them registers their datasets
from forgetlab.data.base import ArrayDataset, TaskData
from forgetlab.data.registry import build_task, dataset_names, register_dataset

__all__ = ["ArrayDataset", "TaskData", "build_task", "dataset_names", "register_dataset"]
