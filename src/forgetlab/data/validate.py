"""One check for every loader: each label lies in its class range, each file has the fields it needs.

Dataset folders are assembled from mirrors, old archives and conversions, so a file can read without
error and still be wrong: Stanford Cars' label-less ``cars_test_annos.mat`` where
``cars_test_annos_withlabels.mat`` belongs, a label 197 among 196 classes, a CUB line with a field
missing. Left alone, a training label out of range fails deep in the loss (``IndexError: Target 196
is out of bounds``) and a test label out of range scores silently (its examples count as wrong).

Every loader (``real.py`` and ``offline.py``) passes what it read through these functions when the
task is built, which is before a run writes anything. Each problem is one :class:`DataError` line
naming the file and how to get the right one, so ``forgetlab run`` exits with code 2 and
``forgetlab data check`` prints the same line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from forgetlab.errors import DataError


class InvalidDataError(DataError):
    """A dataset file that reads but cannot be right: a label outside its class range, a field or a
    line missing. ``forgetlab data check`` marks its dataset INVALID (MISSING is for absent files)."""


def fields_of(record) -> list[str]:
    """The field names of ``record``: a mapping's keys (a ``loadmat`` or ``np.load`` result, a dict;
    MATLAB's ``__header__``-style entries left out), a numpy structured array's or record's field
    names, or a sequence of names (``csv.DictReader.fieldnames``). Anything else has none."""
    if isinstance(record, Mapping) or hasattr(record, "files"):  # np.load's NpzFile is not a Mapping
        keys = record.files if hasattr(record, "files") else record.keys()
        return [str(key) for key in keys if not (str(key).startswith("__") and str(key).endswith("__"))]
    names = getattr(getattr(record, "dtype", None), "names", None)
    if names is not None:
        return list(names)
    if isinstance(record, Sequence) and not isinstance(record, (str, bytes)):
        return [str(name) for name in record]
    return []


def require_fields(record, fields: Sequence[str], file, how_to_fix: str, *, hint: str = "") -> None:
    """Refuse ``record`` (read from ``file``; see :func:`fields_of`) unless it has every name of
    ``fields``.

    Errors: :class:`InvalidDataError`, one line: ``FILE lacks the field(s) 'x' (it has: a, b)[: HINT];
    HOW_TO_FIX``."""
    have = fields_of(record)
    missing = [name for name in fields if name not in have]
    if missing:
        shown = ", ".join(have[:8]) + (f" and {len(have) - 8} more" if len(have) > 8 else "") if have else "none"
        which = ", ".join(f"'{name}'" for name in missing)
        raise InvalidDataError(
            f"{file} lacks the field{'s' if len(missing) > 1 else ''} {which} (it has: {shown})"
            f"{': ' + hint if hint else ''}; {how_to_fix}"
        )


def check_labels(
    labels, num_classes: int, file, how_to_fix: str, *, first: int = 0, what: str = "label", range_of: str = "classes"
) -> np.ndarray:
    """``labels`` as ``file`` numbers them, from ``first`` (0, or 1 for MATLAB and CUB files), checked
    and returned as int64 class indices in ``0..num_classes - 1`` (shape ``[N]``). ``what`` names one
    label and ``range_of`` what the range counts in the message (an index into another list, e.g.
    Flowers102's image ids, is checked the same way).

    Errors: :class:`InvalidDataError`, one line naming ``file`` and ``how_to_fix``, when a label is not a
    whole number or lies outside ``first..first + num_classes - 1`` (e.g. 197 with 196 classes, or 0
    in a 1-based file), or when there are no classes at all."""
    try:
        values = np.asarray(labels, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise InvalidDataError(f"{file}: its {what}s are not numbers ({error}); {how_to_fix}") from error
    last = first + num_classes - 1
    if num_classes < 1 and len(values):
        raise InvalidDataError(f"{file} has {what}s but there are no classes to give them; {how_to_fix}")
    whole = np.isfinite(values) & (values == np.round(values))
    bad = ~whole | (values < first) | (values > last)
    if bad.any():
        where = np.flatnonzero(bad)
        example = values[where[0]]
        shown = f"{int(example)}" if whole[where[0]] else f"{example:g}"
        kind = (
            "is not a whole number"
            if not whole[where[0]]
            else f"lies outside {first}..{last} ({num_classes} {range_of})"
        )
        more = f" (and {len(where) - 1} more of {len(values)})" if len(where) > 1 else ""
        raise InvalidDataError(f"{file}: {what} {shown} at entry {where[0] + 1} {kind}{more}; {how_to_fix}")
    return values.astype(np.int64) - first


def check_classes(names: Sequence[str], file, how_to_fix: str, *, unique: bool = False) -> list[str]:
    """The class names ``file`` lists, as strings; refused (one line) when there are none, or when
    ``unique`` and one repeats (labels looked up by name would then merge two classes)."""
    names = [str(name) for name in names]
    if not names:
        raise InvalidDataError(f"{file} lists no classes; {how_to_fix}")
    if unique:
        seen: set[str] = set()
        repeated = next((name for name in names if name in seen or seen.add(name)), None)
        if repeated is not None:
            raise InvalidDataError(f"{file} lists the class '{repeated}' twice; {how_to_fix}")
    return names


def labels_by_name(
    names: Sequence[str], classes: Sequence[str], file, how_to_fix: str, *, classes_file=None, what: str = "class"
) -> np.ndarray:
    """The int64 index in ``classes`` of each name in ``names`` (shape ``[N]``), for files that give
    labels by name (FGVC-Aircraft's variants, ImageNet's wnids).

    Errors: :class:`InvalidDataError`, one line naming ``file``, when a name is not one of ``classes``
    (listed in ``classes_file``, when given)."""
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({name for name in names if name not in index})
    if unknown:
        listed = f"in {Path(classes_file).name}" if classes_file is not None else f"among the {len(classes)} classes"
        shown = ", ".join(f"'{name}'" for name in unknown[:3]) + (
            f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        )
        plural = what + ("es" if what.endswith("s") else "s")
        raise InvalidDataError(
            f"{file}: {plural} {shown} are not {listed}; {how_to_fix}"
            if len(unknown) > 1
            else f"{file}: {what} {shown} is not {listed}; {how_to_fix}"
        )
    return np.asarray([index[name] for name in names], dtype=np.int64)


def read_rows(path: Path, columns: Sequence[str], how_to_fix: str) -> list[list[str]]:
    """The non-blank lines of a whitespace-separated text file, each split into ``columns`` (the last
    column takes the rest of the line, so it may hold spaces: CUB's image paths, Aircraft's variants).

    Errors: :class:`InvalidDataError`, one line naming ``path`` and its line number, for a line with fewer
    fields than ``columns``, or a file that is not text."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        raise InvalidDataError(f"{path} is not a text file ({error.reason}); {how_to_fix}") from error
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(None, len(columns) - 1)
        if len(parts) < len(columns):
            missing = ", ".join(columns[len(parts) :])
            raise InvalidDataError(
                f"{path}, line {number} ('{line.strip()[:60]}') lacks the field(s) {missing} "
                f"(each line is: {' '.join(columns)}); {how_to_fix}"
            )
        rows.append([part.strip() for part in parts])
    return rows
