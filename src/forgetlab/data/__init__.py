"""Datasets: one file per source, one registry (:mod:`forgetlab.data.registry`)."""

from forgetlab.data.base import ArrayDataset, TaskData
from forgetlab.data.registry import build_task, dataset_names, register_dataset

__all__ = ["ArrayDataset", "TaskData", "build_task", "dataset_names", "register_dataset"]
