"""Name -> dataset builder. A builder takes the data config and the backbone's preprocessing (real
datasets use it; the offline ones have their own) and returns a :class:`TaskData`.

A name may carry a class split, ``NAME:PART``, for paper 1's long setting: ``half1`` / ``half2`` (the
first / second half of the classes, in class order), ``first80`` / ``last20`` (the 80/20 variant).
The part keeps only its classes, relabelled from 0, in train and test.
"""

from __future__ import annotations

from typing import Callable

from forgetlab.errors import ConfigError

_BUILDERS: dict[str, Callable] = {}


def register_dataset(name: str):
    def decorator(builder: Callable) -> Callable:
        if name in _BUILDERS:
            raise ValueError(f"dataset '{name}' registered twice")
        _BUILDERS[name] = builder
        return builder

    return decorator


def _load_builtin() -> None:
    # Importing the modules registers their datasets.
    from forgetlab.data import offline, real  # noqa: F401


def dataset_names() -> list[str]:
    _load_builtin()
    return sorted(_BUILDERS)


CLASS_PARTS = {"half1": (0.0, 0.5), "half2": (0.5, 1.0), "first80": (0.0, 0.8), "last20": (0.8, 1.0)}


def build_task(name: str, data_config=None, preprocess=None) -> "TaskData":  # noqa: F821
    _load_builtin()
    base, _, part = name.partition(":")
    if base not in _BUILDERS:
        raise ConfigError(f"unknown dataset '{base}'; choose one of: {', '.join(sorted(_BUILDERS))}")
    if part and part not in CLASS_PARTS:
        raise ConfigError(f"unknown class split '{name}'; use {base}:half1, :half2, :first80 or :last20")
    task = _BUILDERS[base](data_config, preprocess)
    return class_split(task, name, *CLASS_PARTS[part]) if part else task


def class_split(task, name: str, start: float, end: float):
    """The classes ``[start, end)`` (fractions of the class list) of ``task``, relabelled from 0."""
    import dataclasses

    import numpy as np

    from forgetlab.data.base import LabelSubset

    count = len(task.classes)
    kept = list(range(round(start * count), round(end * count)))
    relabel = {old: new for new, old in enumerate(kept)}
    return dataclasses.replace(
        task,
        name=name,
        classes=[task.classes[i] for i in kept],
        train=LabelSubset(task.train, relabel),
        test=LabelSubset(task.test, relabel),
        class_synsets=[task.class_synsets[i] for i in kept] if task.class_synsets else None,
        class_groups=[task.class_groups[i] for i in kept] if task.class_groups else None,
        extra={**task.extra, "class_split": [kept[0], kept[-1] + 1] if kept else [], "labels_kept": np.asarray(kept).tolist()},
    )
