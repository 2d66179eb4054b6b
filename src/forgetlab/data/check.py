"""``forgetlab data check``: every dataset, where it was looked for, what was found, how to get the rest.

Each dataset is loaded exactly as a run loads it, so a file a run would refuse (a label outside its
class range, a field missing: :mod:`forgetlab.data.validate`) is reported here with the same line,
marked INVALID; a dataset whose files are absent or unreadable is MISSING."""

from __future__ import annotations

import os

from forgetlab import wordnet
from forgetlab.config import DataConfig
from forgetlab.data.files import DATA_ENV
from forgetlab.data.real import SOURCES
from forgetlab.data.registry import build_task, dataset_names
from forgetlab.data.validate import InvalidDataError
from forgetlab.errors import ForgetlabError


def check_datasets(root: str | None = None) -> tuple[list[str], list[str]]:
    """Report lines, and the names of the datasets that are missing or unreadable."""
    root = root or os.environ.get(DATA_ENV)
    lines = [f"real datasets root: {root or f'(not set: give --root or {DATA_ENV})'}"]
    missing = []
    data_config = DataConfig(root=root)
    for name in dataset_names():
        where = f"{root}/{SOURCES[name][0]}" if name in SOURCES and root else ("built-in (offline world)" if name not in SOURCES else "-")
        try:
            task = build_task(name, data_config)
        except ForgetlabError as error:
            missing.append(name)
            status = "INVALID" if isinstance(error, InvalidDataError) else "MISSING"
            lines.append(f"  {name:15s} {status}  looked in {where}: {error}")
            continue
        lines.append(f"  {name:15s} ok       {where}: {len(task.classes)} classes, train {len(task.train):,} / test {len(task.test):,} images")
    try:  # ImageNet's class names and contextual forgetting read it
        lines.append(f"  {'wordnet':15s} ok       {wordnet.setup()}: WordNet 3.0 (ImageNet's class names, contextual forgetting)")
    except ForgetlabError as error:
        missing.append("wordnet")
        lines.append(f"  {'wordnet':15s} MISSING  {error}")
    return lines, missing
