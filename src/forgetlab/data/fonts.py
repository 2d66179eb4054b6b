"""Letters rendered from the fonts that Debian's font packages install (a notMNIST-style source).

The catalogue names each family's four styles by file, so the rendered data is the same on every
machine with the same packages. Rendering is seeded per image: position, size and a small rotation
jitter, white glyph on black, downsampled to the task's image size.
"""

from __future__ import annotations

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
    "DejaVu Sans": ("fonts-dejavu-core", tuple(f"{_DEJAVU}/DejaVuSans{s}.ttf" for s in ("", "-Bold", "-Oblique", "-BoldOblique"))),
    "DejaVu Serif": ("fonts-dejavu-core", tuple(f"{_DEJAVU}/DejaVuSerif{s}.ttf" for s in ("", "-Bold", "-Italic", "-BoldItalic"))),
    "DejaVu Sans Mono": ("fonts-dejavu-core", tuple(f"{_DEJAVU}/DejaVuSansMono{s}.ttf" for s in ("", "-Bold", "-Oblique", "-BoldOblique"))),
    "DejaVu Sans Condensed": ("fonts-dejavu-extra", tuple(f"{_DEJAVU}/DejaVuSansCondensed{s}.ttf" for s in ("", "-Bold", "-Oblique", "-BoldOblique"))),
    "DejaVu Serif Condensed": ("fonts-dejavu-extra", tuple(f"{_DEJAVU}/DejaVuSerifCondensed{s}.ttf" for s in ("", "-Bold", "-Italic", "-BoldItalic"))),
    **{
        f"Liberation {name}": ("fonts-liberation", tuple(f"{_LIBERATION}/Liberation{name.replace(' ', '')}-{s}.ttf" for s in ("Regular", "Bold", "Italic", "BoldItalic")))
        for name in ("Sans", "Serif", "Mono", "Sans Narrow")
    },
    "FreeSans": ("fonts-freefont-ttf", tuple(f"{_FREE}/FreeSans{s}.ttf" for s in ("", "Bold", "Oblique", "BoldOblique"))),
    "FreeSerif": ("fonts-freefont-ttf", tuple(f"{_FREE}/FreeSerif{s}.ttf" for s in ("", "Bold", "Italic", "BoldItalic"))),
    "FreeMono": ("fonts-freefont-ttf", tuple(f"{_FREE}/FreeMono{s}.ttf" for s in ("", "Bold", "Oblique", "BoldOblique"))),
    "Nimbus Sans": ("fonts-urw-base35", tuple(f"{_URW}/NimbusSans-{s}.otf" for s in ("Regular", "Bold", "Italic", "BoldItalic"))),
    "Nimbus Roman": ("fonts-urw-base35", tuple(f"{_URW}/NimbusRoman-{s}.otf" for s in ("Regular", "Bold", "Italic", "BoldItalic"))),
    "Nimbus Mono PS": ("fonts-urw-base35", tuple(f"{_URW}/NimbusMonoPS-{s}.otf" for s in ("Regular", "Bold", "Italic", "BoldItalic"))),
    "Nimbus Sans Narrow": ("fonts-urw-base35", tuple(f"{_URW}/NimbusSansNarrow-{s}.otf" for s in ("Regular", "Bold", "Oblique", "BoldOblique"))),
    "C059": ("fonts-urw-base35", tuple(f"{_URW}/C059-{s}.otf" for s in ("Roman", "Bold", "Italic", "BdIta"))),
    "P052": ("fonts-urw-base35", tuple(f"{_URW}/P052-{s}.otf" for s in ("Roman", "Bold", "Italic", "BoldItalic"))),
    "URW Bookman": ("fonts-urw-base35", tuple(f"{_URW}/URWBookman-{s}.otf" for s in ("Light", "Demi", "LightItalic", "DemiItalic"))),
    "URW Gothic": ("fonts-urw-base35", tuple(f"{_URW}/URWGothic-{s}.otf" for s in ("Book", "Demi", "BookOblique", "DemiOblique"))),
}


def font_files(families) -> list[tuple[str, str, str]]:
    """``(family, style, path)`` for every style of the given families; a one-line error if missing."""
    missing_packages = set()
    files = []
    for family in families:
        package, paths = CATALOGUE[family]
        for style, path in zip(STYLES, paths):
            if not Path(path).exists():
                missing_packages.add(package)
            files.append((family, style, path))
    if missing_packages:
        raise DataError(
            f"font files missing; install them with: sudo apt-get install {' '.join(sorted(missing_packages))} "
            "(or run 'make demo')"
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
