"""Name -> dataset builder. A builder takes the data config and the backbone's preprocessing (real
datasets use it; the offline ones have their own) and returns a :class:`TaskData`.

A task is named ``NAME[:PART]...``, with at most one part of each kind:

* a **variant** the dataset declares (``flowers102:trainval``, ``fgvc_aircraft:trainval``,
  ``cub200:nocrop``): another split or reading of the same files;
* a **class split** (``half1`` / ``half2``: the first / second half of the classes in class order;
  ``first80`` / ``last20``): only those classes, relabelled from 0, in train and test. A class split
  is a different task, with its own head and column;
* a **sample split**, paper 1's long setting (``samples_half1`` / ``samples_half2``, and the 80/20
  variant ``samples_first80`` / ``samples_last20``): a seeded random part of the *training samples*.
  It trains the **same task** as the name without it (same head, same column, the full test set), so
  ``stanford_cars:samples_half1`` and ``stanford_cars:samples_half2`` are two phases of one task.

The halves follow paper 1's code (``benchmark_factory.py``): ``perm = torch.randperm(N)`` under the
split seed, ``s1 = perm[:N // 2]``, ``s2 = perm[N // 2:]``, and the stream pops ``s2`` first, so
``samples_half1`` (trained first) is ``perm[N // 2:]``. The 80/20 parts are forgetlab's own
(``perm[:floor(0.8 N)]`` first), as the paper's code has no such split.

A dataset is one registration (as timm's ``register_model``): :func:`register_dataset` on its loader
records everything forgetlab knows about it (:class:`DatasetInfo`: its folder under the data root and
how to get it, or where a built-in one comes from; its variants, image channels, splits and the
WordNet concept of its domain), and ``forgetlab data check``, the run's input check and the task
builder read it from there. The registry imports none of its members: a dataset module registers
its loaders when it is imported, and the package (``forgetlab/data/__init__.py``) imports the built-in
ones, :mod:`~forgetlab.data.offline` and :mod:`~forgetlab.data.real`; importing this module runs the
package first, so the names are complete whenever they are asked for (``config`` asks).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from forgetlab.errors import ConfigError
from forgetlab.plugins import load_plugins


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset as registered. ``loader(data_config, preprocess[, variant=...])`` returns its
    :class:`~forgetlab.data.base.TaskData`; ``folder``: its folder under the data root (``data.root``
    or ``$FORGETLAB_DATA``), ``how``: how to get its files there; or ``builtin``: where a dataset
    without a folder comes from (the offline world builds its own). ``variants``: name -> help, the
    first the default; ``channels``: of its images as a model reads them (3: decoded to RGB);
    ``splits``: what its train and test splits are, in words; ``domain_synset`` / ``domain_word``:
    the WordNet concept of its domain and the word paper 1 matched class names against (downstream
    datasets; the contextual-forgetting analysis reads them)."""

    name: str
    loader: Callable
    folder: str | None = None
    how: str = ""
    builtin: str = ""
    variants: dict[str, str] = field(default_factory=dict)
    channels: int = 3
    splits: str = ""
    domain_synset: str | None = None
    domain_word: str | None = None

    def where(self) -> str:
        """Where the dataset comes from, for a report line: its folder, or the built-in source."""
        return self.folder if self.folder is not None else f"built-in ({self.builtin})"


_DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(
    name: str,
    variants: dict[str, str] | None = None,
    *,
    folder: str | None = None,
    how: str = "",
    builtin: str = "",
    channels: int = 3,
    splits: str = "",
    domain: tuple[str, str] | None = None,
) -> Callable:
    """Decorator registering a dataset's loader under ``name`` with the facts of :class:`DatasetInfo`. Give ``folder``
    (and ``how``) for a dataset read from the data root, or ``builtin`` for one that brings its own images; ``domain``
    is the pair ``(domain_synset, domain_word)``; ``ValueError`` for a name registered twice, for neither or both of
    them, and for a folder without ``how``."""

    def decorator(loader: Callable) -> Callable:
        if name in _DATASETS:
            raise ValueError(f"dataset '{name}' registered twice")
        if (folder is None) == (not builtin):
            raise ValueError(
                f"dataset '{name}': give folder= (its folder under the "
                f"data root) or builtin= (where it comes from), one of them"
            )
        if folder is not None and not how:
            raise ValueError(f"dataset '{name}': give how= (how to get the files of its folder '{folder}')")
        synset, word = domain or (None, None)
        _DATASETS[name] = DatasetInfo(
            name, loader, folder, how, builtin, dict(variants or {}), channels, splits, synset, word
        )
        return loader

    return decorator


def dataset_names() -> list[str]:
    load_plugins()
    return sorted(_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """The registration of the dataset ``name`` (a dataset, not a task name); ``ConfigError`` for an unknown one."""
    load_plugins()
    if name not in _DATASETS:
        raise ConfigError(f"unknown dataset '{name}'; choose one of: {', '.join(sorted(_DATASETS))}")
    return _DATASETS[name]


def image_channels(task_name: str) -> int:
    """Channels of a task's images as a model reads them: 1 for the offline world (28 x 28 grayscale
    arrays), 3 for every real dataset (decoded to RGB)."""
    return _DATASETS[parse_task_name(task_name)[0]].channels


CLASS_PARTS = {"half1": (0.0, 0.5), "half2": (0.5, 1.0), "first80": (0.0, 0.8), "last20": (0.8, 1.0)}
SAMPLE_PARTS = ("samples_half1", "samples_half2", "samples_first80", "samples_last20")


def parse_task_name(name: str) -> tuple[str, str | None, str | None, str | None]:
    """``(dataset, variant, class part, sample part)`` of a task name; a one-line error for a bad one."""
    base, *parts = name.split(":")
    if base not in _DATASETS:
        raise ConfigError(f"unknown dataset '{base}' in task '{name}'; choose one of: {', '.join(sorted(_DATASETS))}")
    kinds = {"variant": None, "class split": None, "sample split": None}
    for part in parts:
        kind = (
            "variant"
            if part in _DATASETS[base].variants
            else "class split"
            if part in CLASS_PARTS
            else "sample split"
            if part in SAMPLE_PARTS
            else None
        )
        if kind is None:
            options = [*_DATASETS[base].variants, *CLASS_PARTS, *SAMPLE_PARTS]
            raise ConfigError(f"unknown part '{part}' in task '{name}'; {base} takes: {', '.join(options)}")
        if kinds[kind] is not None:
            raise ConfigError(
                f"task '{name}' has two parts of one kind ({kind}: '{kinds[kind]}' and '{part}'); keep one"
            )
        kinds[kind] = part
    return base, kinds["variant"], kinds["class split"], kinds["sample split"]


def task_column(name: str) -> str:
    """The task a name trains (its head and matrix column): the name less any sample split."""
    return ":".join(part for part in name.split(":") if part not in SAMPLE_PARTS)


def sample_split_indices(count: int, part: str, seed: int) -> np.ndarray:
    """Sorted indices of the training samples a sample split keeps (see the module docstring)."""
    perm = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).numpy()
    cut = {"samples_half1": count // 2, "samples_half2": count // 2}.get(part, int(0.8 * count))
    chosen = {
        "samples_half1": perm[cut:],
        "samples_half2": perm[:cut],
        "samples_first80": perm[:cut],
        "samples_last20": perm[cut:],
    }[part]
    return np.sort(chosen)


def build_task(name: str, data_config=None, preprocess=None, *, seed: int = 0) -> "TaskData":  # noqa: F821
    """The task ``name`` (see the module docstring); ``seed`` draws sample splits unless
    ``data_config.split_seed`` is set. The task carries its dataset's domain concept (its registration)."""
    from forgetlab.data.base import SampleSubset

    base, variant, class_part, sample_part = parse_task_name(name)
    info = _DATASETS[base]
    task = info.loader(data_config, preprocess, variant=variant) if variant else info.loader(data_config, preprocess)
    if info.domain_synset is not None or info.domain_word is not None:
        task = dataclasses.replace(task, domain_synset=info.domain_synset, domain_word=info.domain_word)
    if class_part:
        task = class_split(task, task_column(name), *CLASS_PARTS[class_part])
    split_seed = data_config.split_seed if data_config is not None else None
    if sample_part:
        indices = sample_split_indices(len(task.train), sample_part, seed if split_seed is None else split_seed)
        task = dataclasses.replace(task, train=SampleSubset(task.train, indices))
    return dataclasses.replace(task, name=name, column=task_column(name))


def class_split(task, name: str, start: float, end: float):
    """The classes ``[start, end)`` (fractions of the class list) of ``task``, relabelled from 0."""
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
        extra={
            **task.extra,
            "class_split": [kept[0], kept[-1] + 1] if kept else [],
            "labels_kept": np.asarray(kept).tolist(),
        },
    )
