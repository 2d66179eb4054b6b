"""Unique labels for everything a figure, table or CSV is keyed by: classes, tasks, runs.

A name is not an identity: ImageNet has two classes named "crane" (n02012849, the bird, and
n03126707, the machine) and two named "maillot" (n03710637, n03710721); two sweeps both have a cell
``rank8-seed0``. Keyed by name, a bar chart draws both cranes on one row and hides the shorter bar, a
dict keeps one of them, and one figure file overwrites the other. Every label the analysis and the
report build goes through :func:`unique_labels`, which leaves a unique name as it is and adds the id
to a name that repeats: ``crane (n02012849)``, ``crane (n03126707)``.

Pure functions of names and ids; imports nothing of forgetlab.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence


def unique_labels(names: Sequence[str], ids: Sequence[object]) -> list[str]:
    """``names[i]`` where it is unique, ``f"{names[i]} ({ids[i]})"`` where the name repeats.

    ``names`` and ``ids`` have one entry per item (same length, else ``ValueError``). Should a label
    still repeat (two items with the same name and id, or a name that reads like another's label),
    the later ones get ``#2``, ``#3``... in order: the result never has two equal labels."""
    names, ids = [str(name) for name in names], list(ids)
    if len(names) != len(ids):
        raise ValueError(f"{len(names)} names but {len(ids)} ids")
    repeated = {name for name, count in Counter(names).items() if count > 1}
    labels = [f"{name} ({item})" if name in repeated else name for name, item in zip(names, ids)]
    seen: Counter = Counter()
    taken = set(labels)
    result = []
    for label in labels:
        seen[label] += 1
        if seen[label] > 1:
            number = seen[label]
            while f"{label} #{number}" in taken:
                number += 1
            label = f"{label} #{number}"
            taken.add(label)
        result.append(label)
    return result


def class_labels(upstream: dict) -> list[str]:
    """One label per upstream class from a run's ``upstream.json`` (``classes`` and, if stored,
    ``synsets``: ImageNet wnids or synset names; else the class index is the id)."""
    names = upstream["classes"]
    ids = upstream.get("synsets") or range(len(names))
    return unique_labels(names, ids)


def run_labels(runs) -> list[str]:
    """One label per run: its folder name, with the folder above it where two runs share a name
    (``rank8-seed0 (sweep-a)``)."""
    return unique_labels(
        [run.name for run in runs], [run.folder.path.parent.name or str(run.folder.path.parent) for run in runs]
    )


def file_keys(labels: Sequence[str]) -> list[str]:
    """File-name-safe keys for unique ``labels`` (characters other than letters, digits, ``.``,
    ``_`` and ``-`` become ``_``), themselves unique."""
    slugs = [re.sub(r"[^\w.-]+", "_", label).strip("_") or "_" for label in labels]
    return [re.sub(r"[^\w.-]+", "_", key).strip("_") for key in unique_labels(slugs, range(len(slugs)))]
