"""Letters rendered from the fonts that Debian's font packages install (a notMNIST-style source).

The catalogue names each family's four styles by file, so the rendered data is the same on every
machine with the same font files. Rendering is seeded per image: position, size and a small rotation
jitter, white glyph on black, downsampled to the task's image size.

The files are read from Debian's install locations, or, on machines without apt or root, from
``$FORGETLAB_FONTS_DIR``: a folder searched by file name, so a flat copy of the files and the Debian
packages unpacked by hand (``dpkg -x``) both work (``forgetlab setup`` prints the commands).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from forgetlab.errors import DataError

STYLES = ("regular", "bold", "italic", "bold_italic")

_DEJAVU = "/usr/share/fonts/truetype/dejavu"
_LIBERATION = "/usr/share/fonts/truetype/liberation"
_FREE = "/usr/share/fonts/truetype/freefont"
_URW = "/usr/share/fonts/opentype/urw-base35"

# family -> files for STYLES, in order; and the Debian package that ships them.
CATALOGUE: dict[str, tuple[str, tuple[str, str, str, str]]] = {
    "DejaVu Sans": (
        "fonts-dejavu-core",
        tuple(f"{_DEJAVU}/DejaVuSans{s}.ttf" for s in ("", "-Bold", "-Oblique", "-BoldOblique")),
    ),
    "DejaVu Serif": (
        "fonts-dejavu-core",
        tuple(f"{_DEJAVU}/DejaVuSerif{s}.ttf" for s in ("", "-Bold", "-Italic", "-BoldItalic")),
    ),
    "DejaVu Sans Mono": (
        "fonts-dejavu-core",
        tuple(f"{_DEJAVU}/DejaVuSansMono{s}.ttf" for s in ("", "-Bold", "-Oblique", "-BoldOblique")),
    ),
    "DejaVu Sans Condensed": (
        "fonts-dejavu-extra",
        tuple(f"{_DEJAVU}/DejaVuSansCondensed{s}.ttf" for s in ("", "-Bold", "-Oblique", "-BoldOblique")),
    ),
    "DejaVu Serif Condensed": (
        "fonts-dejavu-extra",
        tuple(f"{_DEJAVU}/DejaVuSerifCondensed{s}.ttf" for s in ("", "-Bold", "-Italic", "-BoldItalic")),
    ),
    **{
        f"Liberation {name}": (
            "fonts-liberation",
            tuple(
                f"{_LIBERATION}/Liberation{name.replace(' ', '')}-{s}.ttf"
                for s in ("Regular", "Bold", "Italic", "BoldItalic")
            ),
        )
        for name in ("Sans", "Serif", "Mono", "Sans Narrow")
    },
    "FreeSans": (
        "fonts-freefont-ttf",
        tuple(f"{_FREE}/FreeSans{s}.ttf" for s in ("", "Bold", "Oblique", "BoldOblique")),
    ),
    "FreeSerif": (
        "fonts-freefont-ttf",
        tuple(f"{_FREE}/FreeSerif{s}.ttf" for s in ("", "Bold", "Italic", "BoldItalic")),
    ),
    "FreeMono": (
        "fonts-freefont-ttf",
        tuple(f"{_FREE}/FreeMono{s}.ttf" for s in ("", "Bold", "Oblique", "BoldOblique")),
    ),
    "Nimbus Sans": (
        "fonts-urw-base35",
        tuple(f"{_URW}/NimbusSans-{s}.otf" for s in ("Regular", "Bold", "Italic", "BoldItalic")),
    ),
    "Nimbus Roman": (
        "fonts-urw-base35",
        tuple(f"{_URW}/NimbusRoman-{s}.otf" for s in ("Regular", "Bold", "Italic", "BoldItalic")),
    ),
    "Nimbus Mono PS": (
        "fonts-urw-base35",
        tuple(f"{_URW}/NimbusMonoPS-{s}.otf" for s in ("Regular", "Bold", "Italic", "BoldItalic")),
    ),
    "Nimbus Sans Narrow": (
        "fonts-urw-base35",
        tuple(f"{_URW}/NimbusSansNarrow-{s}.otf" for s in ("Regular", "Bold", "Oblique", "BoldOblique")),
    ),
    "C059": ("fonts-urw-base35", tuple(f"{_URW}/C059-{s}.otf" for s in ("Roman", "Bold", "Italic", "BdIta"))),
    "P052": ("fonts-urw-base35", tuple(f"{_URW}/P052-{s}.otf" for s in ("Roman", "Bold", "Italic", "BoldItalic"))),
    "URW Bookman": (
        "fonts-urw-base35",
        tuple(f"{_URW}/URWBookman-{s}.otf" for s in ("Light", "Demi", "LightItalic", "DemiItalic")),
    ),
    "URW Gothic": (
        "fonts-urw-base35",
        tuple(f"{_URW}/URWGothic-{s}.otf" for s in ("Book", "Demi", "BookOblique", "DemiOblique")),
    ),
}


FONTS_DIR_SETTING = "FORGETLAB_FONTS_DIR"


def fonts_dir() -> Path | None:
    """``$FORGETLAB_FONTS_DIR``, or ``None`` (then the files are read from Debian's locations)."""
    configured = os.environ.get(FONTS_DIR_SETTING)
    return Path(configured).expanduser() if configured else None


@functools.lru_cache(maxsize=8)
def _files_by_name(folder: str) -> dict[str, str]:
    """Every file below ``folder`` by its name (the first one found in sorted order, for a fixed answer)."""
    from forgetlab.data.listing import listed  # OS metadata (a "._DejaVuSans.ttf" from a Mac copy) is no font

    found: dict[str, str] = {}
    pending = [Path(folder)] if Path(folder).is_dir() else []  # a setting naming no folder finds no font
    while pending:  # breadth-first over listed entries; sorted, so the answer is fixed
        for path in listed(pending.pop(0)):
            if path.is_dir():
                pending.append(path)
            elif path.suffix.lower() in (".ttf", ".otf") and path.is_file():
                found.setdefault(path.name, str(path))
    return found


def font_path(debian_path: str) -> str | None:
    """Where one catalogue file is on this machine: under ``$FORGETLAB_FONTS_DIR`` (by file name) when that
    is set, else at Debian's ``debian_path``; ``None`` when it is not there."""
    folder = fonts_dir()
    if folder is not None:
        return _files_by_name(str(folder)).get(Path(debian_path).name)
    return debian_path if Path(debian_path).exists() else None


def font_files(families) -> list[tuple[str, str, str]]:
    """``(family, style, path)`` for every style of the given families; a one-line :class:`DataError`
    naming the missing packages (and files) and how to get them, with or without root."""
    missing_packages, missing_files = set(), []
    files = []
    for family in families:
        package, paths = CATALOGUE[family]
        for style, path in zip(STYLES, paths):
            found = font_path(path)
            if found is None:
                missing_packages.add(package)
                missing_files.append(Path(path).name)
            files.append((family, style, found or path))
    if missing_packages:
        packages = " ".join(sorted(missing_packages))
        if fonts_dir() is not None:
            raise DataError(
                f"{len(missing_files)} font files missing in "
                f"{FONTS_DIR_SETTING}={fonts_dir()} (e.g. {missing_files[0]}, from the Debian "
                f"packages {packages}); 'forgetlab setup' says how to get them without root"
            )
        raise DataError(
            f"font files missing; install them with: sudo apt-get install {packages} (or run 'make demo'); "
            f"without root, set {FONTS_DIR_SETTING} ('forgetlab setup' says how)"
        )
    return files


def render_glyph(text: str, font_path: str, rng: np.random.Generator, size: int = 28, canvas: int = 64) -> np.ndarray:
    """One glyph as a ``size x size`` uint8 image, jittered in scale, position and rotation by ``rng``."""
    from PIL import Image, ImageDraw

    font = _font(font_path, int(rng.integers(36, 50)))
    image = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = (canvas - (right - left)) / 2 - left + rng.uniform(-4, 4)
    y = (canvas - (bottom - top)) / 2 - top + rng.uniform(-4, 4)
    draw.text((x, y), text, fill=255, font=font)
    image = image.rotate(float(rng.uniform(-10, 10)), resample=Image.BILINEAR)
    return np.asarray(image.resize((size, size), resample=Image.LANCZOS), dtype=np.uint8)


_FONT_CACHE: dict = {}


def _font(path: str, points: int):
    from PIL import ImageFont

    key = (path, points)
    if key not in _FONT_CACHE:
        _FONT_CACHE[key] = ImageFont.truetype(path, points)
    return _FONT_CACHE[key]
