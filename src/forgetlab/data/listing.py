"""Listing a dataset's folder: the one place that reads a folder's entries, so that a run,
``forgetlab data check``, every cache and the font lookup see the same files.

Floor: methods and names (no forgetlab import), so the offline world's font lookup can use it too.
"""

from __future__ import annotations

import os
from pathlib import Path

# Files and folders an operating system or archiver writes beside a dataset's own: macOS's AppleDouble
# files (``._NAME``, the resource fork of NAME, written on non-Apple disks and into archives made on a
# Mac) and Finder's ``.DS_Store``, the ``__MACOSX`` folder of a zip made on a Mac, Windows Explorer's
# ``Thumbs.db``, ``ehthumbs.db`` and ``desktop.ini``. ``._n01440764_0.JPEG`` carries an image's suffix
# but holds no image.
OS_METADATA = frozenset({".ds_store", "__macosx", "thumbs.db", "ehthumbs.db", "desktop.ini"})


def is_os_metadata(name: str) -> bool:
    """Whether a file or folder name is an operating system's metadata (see :data:`OS_METADATA`) or
    hidden (a leading dot, which covers AppleDouble ``._*`` files): never part of a dataset."""
    return name.startswith(".") or name.lower() in OS_METADATA


def listed(folder: Path) -> list[Path]:
    """The entries of ``folder`` that belong to a dataset, sorted by name: every listing of dataset
    files goes through here, so a run, ``forgetlab data check`` and every cache see the same files.
    Hidden entries and OS metadata (:func:`is_os_metadata`) are left out."""
    with os.scandir(folder) as entries:
        return sorted(Path(entry.path) for entry in entries if not is_os_metadata(entry.name))
