"""Every image mode a dataset folder can hold decodes to the same uint8 RGB pixels on both pipelines,
by the rule of ``forgetlab.data.decode``, or is a one-line error naming the file.

The zoo is made here with PIL (and, for what PIL cannot write, a PNG writer of a few lines); each file
has an expected array computed from the values written, not by either decoder."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from forgetlab.data.decode import jpeg_components
from forgetlab.data.device_pipeline import EncodedDataset, decode_batch
from forgetlab.data.files import FileDataset
from forgetlab.errors import DataError

CPU = torch.device("cpu")
HEIGHT, WIDTH = 9, 12


def _png(values: np.ndarray, depth: int, color_type: int, palette=None, transparency: bytes | None = None) -> bytes:
    """A PNG written by hand (PIL cannot write 16-bit colour or 2/4-bit grey): ``values`` ``[H, W, C]``."""
    height, width = values.shape[:2]
    values = values.reshape(height, width, -1)
    if depth == 16:
        rows = [values[y].astype(">u2").tobytes() for y in range(height)]
    elif depth == 8:
        rows = [values[y].astype(np.uint8).tobytes() for y in range(height)]
    else:  # one channel packed at 1, 2 or 4 bits a pixel
        bits = np.unpackbits(values[..., 0].astype(np.uint8)[..., None], axis=-1)[..., 8 - depth :]
        rows = [np.packbits(bits[y].reshape(-1)).tobytes() for y in range(height)]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0))
    if palette is not None:
        out += chunk(b"PLTE", np.asarray(palette, dtype=np.uint8).tobytes())
    if transparency is not None:
        out += chunk(b"tRNS", transparency)
    return out + chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + row for row in rows))) + chunk(b"IEND", b"")


def _encoded(image: Image.Image, kind: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **options)
    return buffer.getvalue()


def _grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(values.reshape(HEIGHT, WIDTH, 1), 3, axis=-1).astype(np.uint8)


def _cmyk_to_rgb(cmyk) -> np.ndarray:
    c, m, y, k = (np.float64(v) for v in cmyk)
    return np.array([(255 - c) * (255 - k), (255 - m) * (255 - k), (255 - y) * (255 - k)]) / 255


def _ycck_expected(cmyk) -> np.ndarray:
    """A PIL CMYK JPEG (stored inverted, Adobe's convention) whose Adobe marker is switched to YCCK: the
    decoder reads the stored C, M, Y as Y, Cb, Cr (JFIF's equations), so C becomes R and K stays."""
    luma, cb, cr, k = (255 - np.float64(v) for v in cmyk)
    red = luma + 1.402 * (cr - 128)
    green = luma - 0.344136 * (cb - 128) - 0.714136 * (cr - 128)
    blue = luma + 1.772 * (cb - 128)
    return _cmyk_to_rgb([*np.clip([red, green, blue], 0, 255), 255 - k])


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """``name -> (path, expected uint8 [H, W, 3], tolerance)``; tolerance 0 where the format is lossless."""
    folder = tmp_path_factory.mktemp("zoo")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    smooth = np.stack([100 + 8 * x, 60 + 10 * y, 180 - 5 * (x + y)], -1).astype(np.uint8)  # survives JPEG nearly intact
    grey16 = rng.integers(0, 65536, (HEIGHT, WIDTH), dtype=np.uint16)
    grey16[0, 0], grey16[0, 1] = 61166, 65535
    rgb16 = rng.integers(0, 65536, (HEIGHT, WIDTH, 4), dtype=np.uint16)
    palette = rng.integers(0, 256, (16, 3))
    index = rng.integers(0, 16, (HEIGHT, WIDTH))
    bits = rng.integers(0, 2, (HEIGHT, WIDTH)).astype(bool)
    nibbles = rng.integers(0, 16, (HEIGHT, WIDTH))
    flat_cmyk = (30, 100, 200, 60)

    paletted = Image.fromarray(index.astype(np.uint8), "P")
    paletted.putpalette(palette.astype(np.uint8).tobytes())
    with_alpha = Image.fromarray(np.dstack([rgb[..., 0], rgb[..., 1]]), "LA")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    cmyk_jpeg = _encoded(Image.fromarray(np.full((HEIGHT, WIDTH, 4), flat_cmyk, np.uint8), "CMYK"), "JPEG", quality=100)
    adobe = cmyk_jpeg.index(b"Adobe")
    ycck_jpeg = cmyk_jpeg[: adobe + 11] + b"\x02" + cmyk_jpeg[adobe + 12 :]  # Adobe transform 2: YCCK

    files = {
        "1-bit.png": (_encoded(Image.fromarray(bits), "PNG"), _grey(bits * 255), 0),
        "grey-4bit.png": (_png(nibbles, 4, 0), _grey(nibbles * 17), 0),
        "L.png": (_encoded(Image.fromarray(rgb[..., 0]), "PNG"), _grey(rgb[..., 0]), 0),
        "LA.png": (_encoded(with_alpha, "PNG"), _grey(rgb[..., 0]), 0),
        "P.png": (_encoded(paletted, "PNG"), palette[index], 0),
        "PA.png": (_encoded(paletted, "PNG", transparency=bytes(range(0, 256, 16))), palette[index], 0),
        "RGB.png": (_encoded(Image.fromarray(rgb), "PNG"), rgb, 0),
        "RGBA.png": (_encoded(Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA"), "PNG"), rgb, 0),
        "I16.png": (_encoded(Image.fromarray(grey16), "PNG"), _grey(grey16 >> 8), 0),
        "grey16-alpha.png": (_png(rgb16[..., :2], 16, 4), _grey(rgb16[..., 0] >> 8), 0),
        "RGB16.png": (_png(rgb16[..., :3], 16, 2), rgb16[..., :3] >> 8, 0),
        "RGBA16.png": (_png(rgb16, 16, 6), rgb16[..., :3] >> 8, 0),
        "I16.tiff": (_encoded(Image.fromarray(grey16), "TIFF"), _grey(grey16 >> 8), 0),
        "RGB.tiff": (_encoded(Image.fromarray(rgb), "TIFF"), rgb, 0),
        "RGB.bmp": (_encoded(Image.fromarray(rgb), "BMP"), rgb, 0),
        "P.gif": (_encoded(paletted, "GIF"), palette[index], 0),
        "RGB.webp": (_encoded(Image.fromarray(rgb), "WEBP", lossless=True), rgb, 0),
        "png-named.JPEG": (_encoded(Image.fromarray(rgb), "PNG"), rgb, 0),
        "RGB.jpg": (_encoded(Image.fromarray(smooth), "JPEG", quality=95, subsampling=0), smooth, 6),
        "progressive.jpg": (
            _encoded(Image.fromarray(smooth), "JPEG", quality=95, subsampling=0, progressive=True),
            smooth,
            6,
        ),
        "L.jpg": (
            _encoded(Image.fromarray(smooth[..., 0]), "JPEG", quality=95, subsampling=0),
            _grey(smooth[..., 0]),
            3,
        ),
        "CMYK.jpg": (cmyk_jpeg, np.broadcast_to(_cmyk_to_rgb(flat_cmyk), (HEIGHT, WIDTH, 3)), 2),
        "YCCK.jpg": (ycck_jpeg, np.broadcast_to(_ycck_expected(flat_cmyk), (HEIGHT, WIDTH, 3)), 2),
        # EXIF orientation is ignored: the stored 9 x 12 pixels, not the 12 x 9 a viewer shows.
        "exif-rotated.jpg": (
            _encoded(Image.fromarray(smooth), "JPEG", quality=95, subsampling=0, exif=exif),
            smooth,
            6,
        ),
    }
    out = {}
    for name, (data, expected, tolerance) in files.items():
        (folder / name).write_bytes(data)
        out[name] = (folder / name, np.round(np.asarray(expected, dtype=np.float64)).astype(np.uint8), tolerance)
    return out


def _pil_pixels(paths) -> list[np.ndarray]:
    files = FileDataset(paths, [0] * len(paths))
    return [np.asarray(files.open_image(i)) for i in range(len(files))]


def _device_pixels(paths) -> list[np.ndarray]:
    """One batch through the device pipeline's reader and decoder, as a training step gets it."""
    dataset = EncodedDataset(FileDataset(paths, [0] * len(paths)), transform=None)
    payloads, _, positions = EncodedDataset.collate([dataset[i] for i in range(len(dataset))])
    images = decode_batch(payloads, [dataset.name(i) for i in positions], CPU)
    return [image.permute(1, 2, 0).numpy() for image in images]


def test_every_mode_decodes_to_the_expected_pixels_on_both_pipelines(zoo):
    names = list(zoo)
    paths = [zoo[name][0] for name in names]
    # One mixed batch: a CMYK JPEG among the others must not change how they decode.
    for name, pil, device in zip(names, _pil_pixels(paths), _device_pixels(paths)):
        _, expected, tolerance = zoo[name]
        assert pil.dtype == device.dtype == np.uint8 and pil.shape == device.shape == (HEIGHT, WIDTH, 3), name
        assert np.array_equal(pil, device), f"{name}: the pipelines differ by {np.abs(pil.astype(int) - device).max()}"
        error = np.abs(pil.astype(int) - expected.astype(int)).max()
        assert error <= tolerance, f"{name}: {error} levels from the expected pixels"


def test_sixteen_bit_is_scaled_not_clipped(zoo):
    """The reported example: a 16-bit grey PNG with values up to 61,166 was all white on both pipelines."""
    pil, device = _pil_pixels([zoo["I16.png"][0]])[0], _device_pixels([zoo["I16.png"][0]])[0]
    assert pil[0, 0, 0] == device[0, 0, 0] == 61166 >> 8 == 238 and pil[0, 1, 0] == 255
    assert len(np.unique(pil)) > 50  # not a constant image (108 random pixels)


@pytest.mark.parametrize(
    "mode,values", [("I", np.arange(108, dtype=np.int32) * 40_000), ("F", np.linspace(0, 1, 108, dtype=np.float32))]
)
def test_32_bit_tiffs_are_a_one_line_error_naming_the_file(tmp_path, mode, values):
    path = tmp_path / f"deep-{mode}.tif"
    Image.fromarray(values.reshape(HEIGHT, WIDTH), mode).save(path)
    for decode in (_pil_pixels, _device_pixels):
        with pytest.raises(
            DataError, match=f"deep-{mode}.tif holds 32-bit .* convert it to an 8- or 16-bit PNG or JPEG"
        ) as error:
            decode([path])
        assert "\n" not in str(error.value)


def test_a_damaged_file_is_the_same_one_line_error_on_both_pipelines(tmp_path, zoo):
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(zoo["RGB.png"][0].read_bytes()[:60])
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_bytes(b"this is text")
    for path in (truncated, not_an_image):
        messages = []
        for decode in (_pil_pixels, _device_pixels):
            with pytest.raises(DataError, match=f"cannot decode .*{path.name} .*re-extract the dataset") as error:
                decode([path])
            messages.append(str(error.value))
        assert messages[0] == messages[1] and "\n" not in messages[0]


def test_jpeg_components_reads_the_frame_header(zoo):
    """Only grey and YCbCr JPEGs go to the batched (nvJPEG) decoder; CMYK and YCCK go to the CPU."""
    components = {name: jpeg_components(zoo[name][0].read_bytes()) for name in zoo}
    assert components["RGB.jpg"] == components["progressive.jpg"] == components["exif-rotated.jpg"] == 3
    assert components["L.jpg"] == 1 and components["CMYK.jpg"] == components["YCCK.jpg"] == 4
    assert components["png-named.JPEG"] is None and jpeg_components(b"\xff\xd8\xff") is None
