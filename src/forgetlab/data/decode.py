"""How an image file becomes uint8 RGB pixels, and how a box crops it: one rule for both pipelines.

``data.pipeline=pil`` (:meth:`forgetlab.data.files.FileDataset.open_image`) and ``data.pipeline=device``
(:func:`forgetlab.data.device_pipeline.decode_batch`) both follow this module, and the tests
(``tests/test_image_modes.py``) check that they give the same pixels for every mode a dataset folder
can hold. The rule, for any file PIL can open (whatever its name's suffix says):

* **8-bit colour, grey and palette** (PIL modes ``RGB``, ``L``, ``P``, ``CMYK`` and YCCK JPEGs, ...):
  PIL's ``convert("RGB")``: grey is repeated into three channels, a palette is looked up, CMYK becomes
  ``(255 - C) * (255 - K) / 255`` per channel (YCCK is first decoded to CMYK by libjpeg).
* **1-bit**: 0 and 255.
* **16 bits per channel** (PNG and TIFF; PIL modes ``I;16*``, and 16-bit RGB/RGBA which PIL itself
  reads at 8 bits): the high byte (``value >> 8``), so 65,535 is 255 and nothing is clipped.
* **32-bit integer or float pixels** (PIL modes ``I`` and ``F``: TIFFs from scientific tools) have no
  defined scale to 8 bits: a one-line :class:`~forgetlab.errors.DataError` naming the file.
* **Alpha is dropped**, not composited (as PIL's ``convert("RGB")``; a palette's transparency too):
  the colour under a transparent pixel is kept.
* **EXIF orientation is ignored**: pixels are used in the order they are stored, as PIL's
  ``Image.open`` and torchvision's decoders give them by default and as the papers' code (torchvision
  ``ImageFolder`` / timm loaders) saw them.
* Multi-frame files (GIF, TIFF): the first frame.

On the device path JPEG and PNG bytes go through torchvision's decoders (libjpeg-turbo and libpng on
the CPU, nvJPEG on CUDA), which give the same pixels as PIL on the CPU (16-bit PNGs are scaled by
:func:`to_uint8`); any other format goes through :func:`decode_bytes`, i.e. PIL and the rule above.
nvJPEG's IDCT is not libjpeg's: on CUDA, JPEG pixels may differ from the PIL path by a level or two.

A box (CUB's ``bounding_boxes.txt``: ``x, y, width, height`` in pixels) is clipped to the image
(:func:`box_pixels`); a box that leaves no pixel inside the image is a one-line error.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from forgetlab.data.validate import InvalidDataError  # a box that cannot be right: data check says INVALID
from forgetlab.errors import DataError

JPEG_MAGIC = b"\xff\xd8"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def rgb_image(image, name: str):
    """An open PIL image as an RGB PIL image by the module's rule; a DataError naming ``name`` (the
    file) for 32-bit integer or float pixels or a mode PIL cannot convert."""
    from PIL import Image

    if image.mode in SIXTEEN_BIT_MODES:
        gray = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=-1), "RGB")
    if image.mode in ("I", "F"):
        raise DataError(
            f"{name} holds 32-bit {'integer' if image.mode == 'I' else 'float'} pixels, which have no defined "
            "8-bit scale; convert it to an 8- or 16-bit PNG or JPEG"
        )
    if image.mode in ("P", "PA"):
        image.info.pop("transparency", None)  # alpha is dropped: PIL would only warn that it is
    try:
        return image.convert("RGB")
    except ValueError as error:  # a mode with no RGB conversion (e.g. LAB TIFF)
        raise DataError(
            f"cannot convert {name} (PIL mode {image.mode}) to RGB ({error}); save it as an RGB PNG or JPEG"
        ) from error


def open_rgb(source, name: str | None = None):
    """A file (path or file object) decoded to an RGB PIL image by the module's rule; a DataError
    naming the file when it is damaged or not an image."""
    from PIL import Image, UnidentifiedImageError

    name = name or str(source)
    try:
        with Image.open(source) as image:
            image.seek(0)
            return rgb_image(image, name)
    except UnidentifiedImageError as error:  # its message holds the path or a BytesIO's repr: say it plainly
        raise DataError(f"cannot decode {name} (not an image format PIL reads); re-extract the dataset") from error
    except (OSError, ValueError, SyntaxError) as error:  # SyntaxError: PIL's word for some malformed headers
        reason = (str(error).splitlines() or [type(error).__name__])[0][:80]
        raise DataError(f"cannot decode {name} ({reason}); re-extract the dataset") from error


def decode_bytes(data: torch.Tensor | bytes, name: str) -> torch.Tensor:
    """Encoded bytes (a 1-D uint8 tensor or ``bytes``) -> uint8 RGB ``[3, H, W]`` on the CPU, by PIL and
    the module's rule (the device path's decoder for everything but JPEG and PNG)."""
    raw = data.numpy().tobytes() if isinstance(data, torch.Tensor) else bytes(data)
    pixels = np.asarray(open_rgb(io.BytesIO(raw), name))
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def jpeg_components(data: torch.Tensor | bytes) -> int | None:
    """The number of colour components a JPEG's frame header declares (1 grey, 3 YCbCr/RGB, 4 CMYK or
    YCCK), read from the markers before the first scan; None if ``data`` is not a readable JPEG.
    nvJPEG is only given 1- and 3-component JPEGs: it refuses or mis-converts 4-component ones."""
    raw = memoryview(data.numpy() if isinstance(data, torch.Tensor) else data).cast("B")
    if bytes(raw[:2]) != JPEG_MAGIC:
        return None
    offset = 2
    while offset + 4 <= len(raw):
        if raw[offset] != 0xFF:
            return None
        marker = raw[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            offset += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header: malformed
            return None
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):  # SOFn
            return raw[offset + 9] if offset + 9 < len(raw) else None
        offset += 2 + (raw[offset + 2] << 8 | raw[offset + 3])
    return None


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A torchvision-decoded image as uint8: 16-bit values are scaled by ``>> 8`` (never clipped)."""
    if image.dtype == torch.uint8:
        return image
    if image.dtype == torch.uint16:
        return (image.to(torch.int32) >> 8).to(torch.uint8)
    raise DataError(f"unexpected decoded pixel type {image.dtype}")


def box_pixels(
    box, width: int | None, height: int | None, name: str, box_file: str | Path | None = None
) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` in whole pixels of ``box`` (``x, y, box width, box height``) clipped
    to a ``width`` x ``height`` image: edges are truncated to integers (``int(x)``, ``int(x + w)``, as
    paper 1's code cropped with PIL) and then clipped to the image (``None``: size unknown, only the
    origin is clipped; a box that fails then fails for every image). A box with no pixel inside the
    image (outside it, zero or negative size, not finite) is a one-line DataError naming the image and
    the box file (default ``bounding_boxes.txt``)."""
    x, y, box_width, box_height = (float(v) for v in box)
    if all(math.isfinite(v) for v in (x, y, box_width, box_height)):
        left, top, right, bottom = max(0, int(x)), max(0, int(y)), int(x + box_width), int(y + box_height)
        right, bottom = (
            min(width, right) if width is not None else right,
            min(height, bottom) if height is not None else bottom,
        )
        if right > left and bottom > top:
            return left, top, right, bottom
    box_file = box_file or "bounding_boxes.txt"
    image = f"the {width} x {height} image" if width is not None and height is not None else "any image"
    raise InvalidDataError(
        f"{name}: its box (x={x:g}, y={y:g}, w={box_width:g}, h={box_height:g}) in {box_file} has no pixel inside "
        f"{image}; correct that line of {box_file} (or use cub200:nocrop)"
    )
