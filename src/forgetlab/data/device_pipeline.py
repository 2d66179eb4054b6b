"""Decoding and preprocessing on the device, a whole batch at a time (``data.pipeline=device``).

Loader workers only read: a file's bytes, or an in-memory uint8 image; images stay uint8 until the
device. There, grey and YCbCr JPEGs are decoded in one batched ``torchvision.io.decode_jpeg`` call
(nvjpeg on CUDA; libjpeg on the CPU); CMYK/YCCK JPEGs, PNGs and other formats one by one on the CPU,
by the rule of :mod:`forgetlab.data.decode` that the PIL path follows too (the same uint8 RGB
pixels; 16-bit scaled by ``>> 8``); a file nothing can decode is a one-line error naming it. The
preprocessing is the one :func:`forgetlab.data.files.preprocess_for` builds with timm, done on
tensors with the same parameters:

* evaluation: resize (the shorter side to ``floor(size / crop_pct)``, or both sides for ``squash``;
  antialiased, the configured interpolation), centre crop, normalise;
* training: random-resized crop (timm's ``RandomResizedCropAndInterpolation.get_params``: area
  fraction uniform in ``scale``, log aspect ratio uniform in ``log(ratio)``, the first of ten tries
  that fits, else the centre fallback), horizontal flip, colour jitter (brightness, contrast,
  saturation factors in ``[max(0, 1 - j), 1 + j]``, hue in ``[-h, h]``, in a random order per image,
  as ``torchvision.transforms.ColorJitter``), normalise.

Training batches are augmented whole: :meth:`BatchTransform.draw` draws every image's
parameters as tensors in a few calls on a CPU generator (no per-image host read; the same numbers on
any device), and :meth:`BatchTransform.apply` resizes every crop at once as two batched matmuls,
``W_rows @ image @ W_columns^T``, whose per-image weight matrices are PIL's antialiased filters (the
ones ``F.interpolate(antialias=True)`` implements) restricted to the crop box, with the flip folded
into the column weights; the jitter is four batched blends. Evaluation uses the same resampling.

Why not kornia's ``augmentation`` module (0.9.0 read for this): its ``RandomResizedCrop`` samples one
box per image of a same-sized batch tensor (decoded files differ in size; padding would change the
sampled areas) and resizes without antialiasing (``crop_by_indices``/``warp_affine``), where timm's
PIL resize antialiases every downscale; its ``ColorJitter`` draws one order of the four steps per
batch, where torchvision draws one per image, and reads factors on the host to skip steps. Matching
timm would mean wrapping around both; the resampling and the blends are ~150 lines here, tested
against torchvision's own functions and timm's PIL path.

Each resampling pass is rounded half up and clamped to 0..255, as PIL stores it in uint8 (bicubic
weights are partly negative: unclamped, a checkerboard's crop reached -41 and 296), so evaluation and
training crops and the evaluation-crop cache hold the same pixels (docs/pipelines.md).

The same code runs on the CPU (``device=cpu``), where the tests compare it with the PIL path on
smooth real-layout JPEGs and on checkerboards, stripes and noise: the evaluation tensors agree within
one level of 255 per pixel (PIL's fixed-point weights against float ones), i.e. within 0.01 on
average and 0.05 at most in normalised units, training crops likewise, and with the jitter
within 0.035 on average (PIL's ``Image.blend`` truncates each jitter step to uint8, half a level
darker per step); the drawn parameters have timm's distributions (two-sample tests over 3,000 draws).
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from forgetlab.data.base import ArrayDataset, base_positions, dataset_labels
from forgetlab.data.decode import JPEG_MAGIC, PNG_MAGIC, box_pixels, decode_bytes, jpeg_components, to_uint8
from forgetlab.data.files import ArrayImageDataset, FileDataset
from forgetlab.data.loader import device_constant
from forgetlab.errors import ConfigError, DataError

# Columns of the packed per-image parameters (:func:`_pack`): the row and column resampling specs
# (start, length, virtual size, offset), the flip, the jitter factors and order, the size order.
ROWS, COLUMNS, FLIP, FACTORS, ORDER, SORTED, UNSORTED = slice(0, 4), slice(4, 8), 8, slice(9, 13), slice(13, 17), 17, 18


class Packed(NamedTuple):
    """A batch's per-image parameters on the device (:func:`_pack`) and whether the size order is the batch order."""

    values: torch.Tensor
    identity: bool


class EncodedBatch(NamedTuple):
    """A batch of file payloads as one tensor, as a loader worker hands it over (one shared-memory
    block, pinned once): ``data`` the bytes of every file end to end (uint8 ``[total]``), ``offsets``
    ``N + 1`` ints where file ``i`` is ``data[offsets[i]:offsets[i + 1]]`` (plain ints: pickled with the
    batch, not a second shared-memory block)."""

    data: torch.Tensor
    offsets: tuple[int, ...]

    def payloads(self) -> list[torch.Tensor]:
        """The files' bytes, views of ``data`` (one split)."""
        return list(torch.split(self.data, np.diff(self.offsets).tolist()))


@dataclass
class BatchTransform:
    """The tensor form of one timm transform (see the module docstring)."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    training: bool = False
    crop_pct: float = 1.0
    crop_mode: str = "center"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    color_jitter: float = 0.0  # brightness, contrast and saturation factors in [max(0, 1 - j), 1 + j]
    hue: float = 0.0  # hue shift in [-hue, hue] (timm's scalar color_jitter leaves it off)
    scale_size: int | None = None  # evaluation: the resize target timm computed (default floor(size / crop_pct))
    max_elements: int = 1 << 26  # the padded stack of one resampling pass, in pixels x channels (bounds its memory)

    def __call__(self, images, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 ``[3, H, W]`` images (a list, any sizes; or one ``[N, 3, H, W]`` tensor) -> one normalised
        float batch ``[N, 3, size, size]``. Training draws its random parameters from ``generator`` (a CPU
        generator; seeded: a resumed task augments alike, on any device)."""
        if self.training:
            return self.apply(images, self.draw(_shapes(images), generator), device)
        return self.normalise(self.crops(images, device) / 255.0)

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` in [0, 1] -> ``(batch - mean) / std`` (mean and std copied to the device once)."""
        mean = device_constant(self.mean, batch.device).view(1, -1, 1, 1)
        std = device_constant(self.std, batch.device).view(1, -1, 1, 1)
        return (batch - mean) / std

    # ------------------------------------------------------------------------------------ evaluation
    def crops(self, images, device: torch.device) -> torch.Tensor:
        """The deterministic evaluation crops, float ``[N, 3, size, size]`` in [0, 255] (not normalised):
        resize (shorter side to ``scale_size``, or both sides for ``squash``), centre crop."""
        heights, widths = _sizes(images)
        scale_size = self.scale_size or math.floor(self.size / self.crop_pct)
        if self.crop_mode == "squash":
            new_h, new_w = torch.full_like(heights, scale_size), torch.full_like(widths, scale_size)
        else:  # torchvision's Resize(int): the longer side to int(scale_size * long / short)
            short, long_ = torch.minimum(heights, widths), torch.maximum(heights, widths)
            longer = (scale_size * long_ / short).floor().clamp(min=1)
            new_h = torch.where(heights <= widths, torch.full_like(heights, scale_size), longer)
            new_w = torch.where(heights <= widths, longer, torch.full_like(widths, scale_size))
        top, left = ((new_h - self.size) / 2).round(), ((new_w - self.size) / 2).round()  # torchvision's CenterCrop
        zero = torch.zeros_like(heights)
        packed = _pack([zero, heights, new_h, top, zero, widths, new_w, left], images, device)
        return _unsort(self._resample(images, packed, device), packed)

    # -------------------------------------------------------------------------------------- training
    def draw(self, sizes: list[tuple[int, int]], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Random parameters of a batch of images of ``sizes`` (``(height, width)`` each), as CPU tensors:
        ``box`` ``[N, 4]`` (top, left, height, width: timm's ``RandomResizedCropAndInterpolation.get_params``,
        i.e. area fraction uniform in ``scale``, log aspect ratio uniform in ``log(ratio)``, the first of ten
        tries that fits, else the centre fallback clipped to the ratio range), ``flip`` ``[N]``, ``factors``
        ``[N, 4]`` (brightness, contrast, saturation factors; hue shift) and ``order`` ``[N, 4]`` (a uniformly
        random permutation of the four jitter steps per image, as ``torchvision.transforms.ColorJitter``)."""
        count = len(sizes)
        shape = torch.tensor(sizes, dtype=torch.float64).reshape(count, 2)
        heights, widths = shape[:, :1], shape[:, 1:]
        options = {"dtype": torch.float64, "generator": generator}
        fraction = torch.empty(count, 10, dtype=torch.float64).uniform_(
            self.scale[0], self.scale[1], generator=generator
        )
        log_ratio = torch.empty(count, 10, dtype=torch.float64).uniform_(
            math.log(self.ratio[0]), math.log(self.ratio[1]), generator=generator
        )
        target, aspect = heights * widths * fraction, log_ratio.exp()
        w, h = (target * aspect).sqrt().round(), (target / aspect).sqrt().round()  # round half to even, as Python
        fits = (w > 0) & (w <= widths) & (h > 0) & (h <= heights)
        first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first try that fits
        found = fits.any(dim=1, keepdim=True)
        in_ratio, low, high = widths / heights, min(self.ratio), max(self.ratio)
        fallback_w = torch.where(in_ratio > high, (heights * high).round(), widths)
        fallback_h = torch.where(in_ratio < low, (widths / low).round(), heights)
        h = torch.where(found, h.gather(1, first), fallback_h)
        w = torch.where(found, w.gather(1, first), fallback_w)
        position = torch.rand(count, 2, **options)
        top = torch.where(found, (position[:, :1] * (heights - h + 1)).floor(), ((heights - h) / 2).floor())
        left = torch.where(found, (position[:, 1:] * (widths - w + 1)).floor(), ((widths - w) / 2).floor())
        flip = torch.rand(count, **options) < self.hflip
        low_factor, high_factor = max(0.0, 1 - self.color_jitter), 1 + self.color_jitter
        factors = torch.cat(
            [
                torch.empty(count, 3, dtype=torch.float64).uniform_(low_factor, high_factor, generator=generator),
                torch.empty(count, 1, dtype=torch.float64).uniform_(-self.hue, self.hue, generator=generator),
            ],
            1,
        )
        order = torch.rand(count, 4, **options).argsort(dim=1)
        return {"box": torch.cat([top, left, h, w], 1).long(), "flip": flip, "factors": factors.float(), "order": order}

    def crop_box(self, height: int, width: int, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` of one random-resized crop (see :meth:`draw`)."""
        return tuple(int(v) for v in self.draw([(height, width)], generator)["box"][0])

    def apply(self, images, params: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """The training transform with the parameters of :meth:`draw`: crop each ``box`` and resize it to
        ``size`` x ``size`` (antialiased, as PIL), flip, jitter, normalise; a handful of batched kernels.
        Every per-image parameter goes to the device in one copy (:func:`_pack`)."""
        box = params["box"].double()
        size, zero = torch.full_like(box[:, 0], self.size), torch.zeros_like(box[:, 0])
        packed = _pack(
            [
                box[:, 0],
                box[:, 2],
                size,
                zero,
                box[:, 1],
                box[:, 3],
                size,
                zero,
                params["flip"].double(),
                *params["factors"].double().unbind(1),
                *params["order"].double().unbind(1),
            ],
            images,
            device,
        )
        batch = self._resample(images, packed, device) / 255.0
        if self.color_jitter or self.hue:  # in the size order of the rows: images and parameters alike
            batch = self.jitter(batch, _sorted(packed)[:, FACTORS].float(), _sorted(packed)[:, ORDER].long())
        return _unsort(self.normalise(batch), packed)

    def jitter(self, batch: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """torchvision's ``ColorJitter`` on tensors, per image with its own factors and order, batched.

        Each step blends the image with a target: black (brightness), the mean of its grayscale
        (contrast) or its grayscale (saturation; ITU-R 601-2 luma, as torchvision), then clamps to
        [0, 1]; the hue step shifts the hue in HSV (torchvision's own conversion). At step ``k`` image
        ``n`` takes the operation ``order[n, k]``, so the four steps cost four batched blends."""
        from torchvision.transforms._functional_tensor import _hsv2rgb, _rgb2hsv

        view = (-1, 1, 1, 1)
        for step in range(4):
            operation = order[:, step]
            factor = torch.where(operation == 3, 1.0, factors.gather(1, operation[:, None])[:, 0]).view(view)
            gray = (0.2989 * batch[:, 0] + 0.587 * batch[:, 1] + 0.114 * batch[:, 2]).unsqueeze(1)
            target = torch.where(
                (operation == 1).view(view),
                gray.mean(dim=(-3, -2, -1), keepdim=True),
                torch.where((operation == 2).view(view), gray, 0.0),
            )
            batch = (factor * batch + (1 - factor) * target).clamp(0, 1)
            if self.hue:
                hsv = _rgb2hsv(batch)
                shifted = torch.cat([(hsv[:, :1] + factors[:, 3].view(view)) % 1.0, hsv[:, 1:]], 1)
                batch = torch.where((operation == 3).view(view), _hsv2rgb(shifted), batch)
        return batch

    # ---------------------------------------------------------------------------------- resampling
    def _resample(self, images, packed: Packed, device) -> torch.Tensor:
        """float ``[N, 3, size, size]``, rows in the size order of ``packed`` (:func:`_unsort` restores the
        batch order): each image's rows and columns resampled by its own weight matrices
        (:func:`_resample_weights`): ``W_rows @ image @ W_columns^T``, two batched matmuls over a
        zero-padded stack. Images are stacked in groups of at most ``max_elements`` padded values (sorted
        by size), so a batch with one huge image does not pad every other to its size. The groups are
        found from the images' shapes on the host (:func:`_groups`): no tensor op, no device read per image."""
        heights, widths = (np.asarray(side, dtype=np.int64) for side in zip(*_shapes(images)))
        order = np.argsort(heights * widths, kind="stable")
        params = _sorted(packed)
        parts = []
        for start, stop in _groups(heights[order], widths[order], self.max_elements):
            if isinstance(images, torch.Tensor):  # one size: the order is the identity
                group = images[start:stop]
            else:
                group = [images[i] for i in (range(start, stop) if packed.identity else order[start:stop].tolist())]
            stack = _padded_stack(group, device).float()
            spec = params[start:stop]
            row_weights = _resample_weights(*spec[:, ROWS].unbind(1), self.size, stack.shape[-2], self.interpolation)
            column_weights = _resample_weights(
                *spec[:, COLUMNS].unbind(1), self.size, stack.shape[-1], self.interpolation
            )
            column_weights = torch.where(spec[:, FLIP].view(-1, 1, 1) > 0, column_weights.flip(1), column_weights)
            across = _to_levels(stack @ column_weights.transpose(1, 2).unsqueeze(1))  # PIL's horizontal pass, then
            parts.append(_to_levels(row_weights.unsqueeze(1) @ across))  # its vertical one, each to uint8 levels
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def _shapes(images) -> list[tuple[int, int]]:
    """``(height, width)`` of every image of a list, or of a ``[N, 3, H, W]`` tensor (metadata only)."""
    if isinstance(images, torch.Tensor):
        return [tuple(images.shape[-2:])] * len(images)
    return [tuple(image.shape[-2:]) for image in images]


def _groups(heights: np.ndarray, widths: np.ndarray, max_elements: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive images (sorted by area) whose padded stack holds at most
    ``max_elements`` values (at least one image each): a few array operations per group, none per image."""
    bounds, start, count = [], 0, len(heights)
    while start < count:
        tallest, widest = np.maximum.accumulate(heights[start:]), np.maximum.accumulate(widths[start:])
        cost = (
            np.arange(1, count - start + 1) * 3 * tallest * widest
        )  # non-decreasing: the first that passes ends the group
        stop = start + max(1, int(np.searchsorted(cost, max_elements, side="right")))
        bounds.append((start, stop))
        start = stop
    return bounds


def _pack(columns: list[torch.Tensor], images, device: torch.device) -> Packed:
    """Every per-image parameter of a batch in one float64 ``[N, 19]`` tensor (the columns named at the
    top of this module, then the size order and its inverse), built on the host, pinned on CUDA and
    copied to ``device`` in one non-blocking copy."""
    heights, widths = (np.asarray(side, dtype=np.int64) for side in zip(*_shapes(images)))
    order = np.argsort(heights * widths, kind="stable")
    ranks = torch.from_numpy(np.stack([order, np.argsort(order)], 1).astype(np.float64))
    flip = torch.zeros_like(columns[0]) if len(columns) == 8 else None
    columns = [*columns, flip] if flip is not None else columns
    jitter = [torch.zeros_like(columns[0])] * (SORTED - len(columns))
    host = torch.empty(len(order), UNSORTED + 1, dtype=torch.float64, pin_memory=device.type == "cuda")
    torch.cat([torch.stack([*columns, *jitter], 1), ranks], 1, out=host)
    return Packed(host.to(device, non_blocking=True), bool((order == np.arange(len(order))).all()))


def _sorted(packed: Packed) -> torch.Tensor:
    """The parameters' rows in the size order the resampling groups follow."""
    return packed.values if packed.identity else packed.values.index_select(0, packed.values[:, SORTED].long())


def _unsort(batch: torch.Tensor, packed: Packed) -> torch.Tensor:
    """``batch`` (rows in the size order) back in the batch order."""
    return batch if packed.identity else batch.index_select(0, packed.values[:, UNSORTED].long())


def _sizes(images) -> tuple[torch.Tensor, torch.Tensor]:
    """``(heights, widths)`` of ``images`` as float64 CPU tensors (tensor metadata: no device read)."""
    shape = torch.from_numpy(np.asarray(_shapes(images), dtype=np.float64).reshape(-1, 2))
    return shape[:, 0], shape[:, 1]


def _padded_stack(images, device: torch.device) -> torch.Tensor:
    """uint8 ``[N, 3, H_max, W_max]``, each image top-left, zeros elsewhere: a ``[N, 3, H, W]`` tensor
    (stacked by a loader worker, pinned) copied in one non-blocking copy; ``torch.stack`` when the sizes
    agree, else one concatenation and one gather (no per-image kernel)."""
    if isinstance(images, torch.Tensor):
        return images.to(device, non_blocking=True)
    if len({image.device for image in images}) > 1:
        images = [image.to(device) for image in images]
    if len({tuple(image.shape) for image in images}) == 1:  # arrays, or files of one size: stacked where they are
        return torch.stack(images).to(device, non_blocking=True)
    device = images[0].device  # padded where they are (the CPU for arrays), then moved in one copy
    heights, widths = (
        torch.tensor([image.shape[d] for image in images], device=device).view(-1, 1, 1, 1) for d in (-2, -1)
    )
    sizes = [image.numel() for image in images]
    starts = torch.tensor([0, *sizes[:-1]], device=device).cumsum(0).view(-1, 1, 1, 1)
    flat = torch.cat([image.reshape(-1) for image in images])
    channel = torch.arange(3, device=device).view(1, 3, 1, 1)
    y = torch.arange(int(max(image.shape[-2] for image in images)), device=device).view(1, 1, -1, 1)
    x = torch.arange(int(max(image.shape[-1] for image in images)), device=device).view(1, 1, 1, -1)
    inside = (y < heights) & (x < widths)
    index = torch.where(inside, starts + channel * heights * widths + y * widths + x, 0)
    return torch.where(inside, flat.take(index), 0).to(torch.uint8)


def _to_levels(values: torch.Tensor) -> torch.Tensor:
    """``values`` as PIL stores a resampling pass's result in a uint8 image: rounded half up and clamped
    to [0, 255] (``clip8`` in ``Resample.c``), kept as floats. Bicubic weights are partly negative, so
    an edge overshoots (a checkerboard reaches -41 and 296 unclamped); PIL clamps after each pass."""
    return values.add_(0.5).floor_().clamp_(0, 255)


def _cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """PIL's bicubic kernel (``a = -0.5``; torch's antialiased bicubic uses the same)."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _nearest_sources(scale: torch.Tensor, offset: torch.Tensor, out_size: int) -> torch.Tensor:
    """``[N, out_size, 1]``: the input pixel of output pixels ``offset .. offset + out_size - 1`` when
    resizing with ``nearest`` at ``scale`` (``[N, 1, 1]``, input per output pixel), as PIL's
    ``ImagingScaleAffine`` (``Geometry.c``) finds it: a float64 coordinate started at ``scale / 2`` and
    advanced by ``scale`` per pixel, truncated. Summed step by step, as there: ``floor((i + 0.5) * scale)``
    differs where that lands on a whole number (40 -> 47 px: output 23)."""
    steps = int(offset.max()) + out_size
    coordinate, coordinates = scale * 0.5, []
    for _ in range(steps):
        coordinates.append(coordinate)
        coordinate = coordinate + scale
    table = torch.cat(coordinates, dim=1).floor()  # [N, steps, 1]
    wanted = offset.long() + torch.arange(out_size, device=offset.device).view(1, -1, 1)
    return table.gather(1, wanted)


def _resample_weights(start, length, virtual, offset, out_size: int, extent: int, interpolation: str) -> torch.Tensor:
    """``[N, out_size, extent]``: row ``i`` of image ``n`` holds the weights over input pixels
    ``0 .. extent - 1`` of output pixel ``offset + i`` when input pixels ``start .. start + length - 1`` are
    resized to ``virtual`` pixels. The filters are PIL's ``ImagingResample`` (``precompute_coeffs`` in
    ``Resample.c``), which ``F.interpolate(antialias=True)`` also implements: centre ``(i + 0.5) * scale``,
    kernel stretched by ``max(scale, 1)`` when shrinking (antialiasing), weights normalised over the pixels
    inside the input; ``nearest`` takes PIL's pixel (:func:`_nearest_sources`)."""
    kernels = {"bicubic": _cubic, "bilinear": lambda x: (1 - x.abs()).clamp(min=0)}
    if interpolation not in (*kernels, "nearest"):
        raise ValueError(
            f"the device pipeline cannot resample with '{interpolation}'; use bicubic, bilinear or nearest"
        )
    dtype = torch.float64 if start.device.type == "cpu" else torch.float32
    start, length, virtual, offset = (part.to(dtype).view(-1, 1, 1) for part in (start, length, virtual, offset))
    scale = length / virtual
    centre = (
        torch.arange(out_size, device=start.device, dtype=dtype).view(1, -1, 1) + offset + 0.5
    ) * scale  # [N, out, 1]
    x = torch.arange(extent, device=start.device, dtype=dtype).view(1, 1, -1) - start  # crop coordinates [N, 1, extent]
    inside = (x >= 0) & (x < length)
    if interpolation == "nearest":
        source = torch.minimum(_nearest_sources(scale.double(), offset.double(), out_size).to(dtype), length - 1)
        return ((x == source) & inside).float()
    kernel = kernels[interpolation]
    stretch = scale.clamp(min=1.0)
    weights = torch.where(inside, kernel((x - centre + 0.5) / stretch), 0.0)
    return (weights / weights.sum(dim=-1, keepdim=True).clamp(min=1e-12)).float()


_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")  # the filters of _resample_weights


def _unsupported(role: str, step, why: str) -> ConfigError:
    inner = [
        type(part).__name__ for part in getattr(step, "transforms", [])
    ]  # RandomApply([GaussianBlur]): name what it applies
    name = f"{type(step).__name__}({', '.join(inner)})" if inner else type(step).__name__
    return ConfigError(
        f"the device pipeline cannot reproduce the {role} transform's {name} step ({why}); set data.pipeline=pil"
    )


def _interpolation(role: str, step) -> str:
    name = getattr(step.interpolation, "value", step.interpolation)
    name = name if isinstance(name, str) else "random"  # timm's RandomResizedCropAndInterpolation draws from a tuple
    if name not in _INTERPOLATIONS:
        raise _unsupported(
            role, step, f"interpolation {name}; the device pipeline resamples with {', '.join(_INTERPOLATIONS)}"
        )
    return name


def _square(role: str, step, size) -> int:
    sizes = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    if len(set(sizes)) != 1:
        raise _unsupported(role, step, f"size {list(sizes)}; the device pipeline makes square images")
    return int(sizes[0])


def _transform_parts(role: str, transform) -> dict:
    """The :class:`BatchTransform` fields of one timm transform (a ``Compose``), read off its steps. A step
    the device pipeline has no tensor form for (vertical flip, grayscale, blur, RandAugment, random erasing,
    a random interpolation, ...) is a :class:`ConfigError` naming it, never dropped; a training transform
    without a flip or jitter step has none (``hflip=0``: timm builds no flip step)."""
    found: dict = {"hflip": 0.0, "color_jitter": 0.0, "hue": 0.0}
    for step in getattr(transform, "transforms", [transform]):
        kind = type(step).__name__
        if kind == "RandomResizedCropAndInterpolation":
            found.update(
                size=_square(role, step, step.size),
                scale=tuple(step.scale),
                ratio=tuple(step.ratio),
                training=True,
                interpolation=_interpolation(role, step),
            )
        elif kind == "RandomHorizontalFlip":
            found["hflip"] = float(step.p)
        elif kind == "ColorJitter":
            if not step.brightness or step.contrast != step.brightness or step.saturation != step.brightness:
                raise _unsupported(
                    role, step, "brightness, contrast and saturation differ; the device pipeline jitters them alike"
                )
            found["color_jitter"] = float(step.brightness[1] - 1)
            found["hue"] = float(step.hue[1]) if step.hue else 0.0
        elif kind == "Resize":
            if step.max_size is not None:
                raise _unsupported(role, step, f"max_size {step.max_size}")
            found.update(
                interpolation=_interpolation(role, step),
                scale_size=_square(role, step, step.size),
                crop_mode="squash" if isinstance(step.size, (list, tuple)) and len(step.size) == 2 else "center",
            )
        elif kind == "CenterCrop":
            found["size"] = _square(role, step, step.size)
        elif kind == "Normalize":
            found.update(mean=tuple(float(v) for v in step.mean), std=tuple(float(v) for v in step.std))
        elif kind not in ("ToTensor", "MaybeToTensor"):
            raise _unsupported(role, step, "it has no tensor form here")
    needed = ("size", "mean") if found.get("training") else ("size", "scale_size", "mean")
    if any(key not in found for key in needed):
        raise ConfigError(
            f"the device pipeline cannot reproduce the {role} transform {transform} (it needs a resize, a crop and "
            f"a Normalize step); set data.pipeline=pil"
        )
    if "scale_size" in found:
        found["crop_pct"] = found["size"] / found["scale_size"]
    return found


def batch_transforms(preprocess) -> dict[str, BatchTransform]:
    """The ``train``, ``eval`` and ``upstream_eval`` batch transforms equal to a
    :class:`forgetlab.data.files.Preprocess` (read off its timm transforms, so they cannot drift).
    Raises :class:`~forgetlab.errors.ConfigError` (one line, naming the step and ``data.pipeline=pil``)
    for a step the device pipeline cannot reproduce; the runner builds these before any data is read."""
    return {
        role: BatchTransform(**_transform_parts(role, getattr(preprocess, role)))
        for role in ("train", "eval", "upstream_eval")
        if getattr(preprocess, role) is not None
    }


# ---------------------------------------------------------------------------------------------- datasets
def _decode_one(data: torch.Tensor, name: str, device: torch.device) -> torch.Tensor:
    """One file's bytes -> uint8 RGB ``[3, H, W]`` on ``device`` by :mod:`forgetlab.data.decode`'s rule:
    JPEG and PNG by torchvision on the CPU (the same pixels as PIL; 16-bit scaled by ``>> 8``), any
    other format, or bytes torchvision refuses, by PIL, which decodes them or names the file."""
    from torchvision.io import ImageReadMode, decode_jpeg, decode_png

    head = data[:8].numpy().tobytes()
    try:
        if head[:2] == JPEG_MAGIC:
            return decode_jpeg(data, mode=ImageReadMode.RGB).to(device)
        if head == PNG_MAGIC:
            return to_uint8(decode_png(data, mode=ImageReadMode.RGB)).to(device)
    except (RuntimeError, ValueError):
        pass  # PIL gives the verdict, with the same message as the PIL path
    return decode_bytes(data, name).to(device)


def decode_batch(
    payloads: list[torch.Tensor] | EncodedBatch, names: list[str], device: torch.device
) -> list[torch.Tensor]:
    """uint8 RGB ``[3, H, W]`` images from encoded bytes (a list of payloads, or a worker's
    :class:`EncodedBatch`; see :mod:`forgetlab.data.decode` for the rule): grey and YCbCr JPEGs in one
    batched ``decode_jpeg`` call on ``device`` (nvJPEG on CUDA); if that call refuses the batch, each of
    them alone on ``device``; CMYK/YCCK JPEGs, other formats and whatever the device refused by
    :func:`_decode_one` on the CPU."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if isinstance(payloads, EncodedBatch):
        payloads = payloads.payloads()
    images: list[torch.Tensor | None] = [None] * len(payloads)
    jpegs = [i for i, data in enumerate(payloads) if jpeg_components(data) in (1, 3)]
    if jpegs:
        try:
            decoded = decode_jpeg([payloads[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
            for i, image in zip(jpegs, decoded):
                images[i] = image
        except (RuntimeError, ValueError):  # a damaged JPEG among them: the others still decode on the device
            for i in jpegs:
                try:
                    images[i] = decode_jpeg(payloads[i], mode=ImageReadMode.RGB, device=device)
                except (RuntimeError, ValueError):
                    pass
    return [
        image if image is not None else _decode_one(payloads[i], names[i], device) for i, image in enumerate(images)
    ]


class EncodedDataset(Dataset):
    """A file or in-memory dataset whose items are what the device pipeline takes: ``(payload, label,
    index)``, the payload being a file's bytes (uint8, 1-D) or an in-memory ``[3, H, W]`` uint8 image.
    ``transform`` is the :class:`BatchTransform` its batches get on the device."""

    def __init__(self, dataset: Dataset, transform: BatchTransform, eval_transform: BatchTransform | None = None):
        self.batch_transform, self.eval_batch_transform = transform, eval_transform or transform
        self.labels = dataset_labels(dataset)  # class splits relabel: the outer labels are the task's
        # Class and sample splits are index maps over a file or array dataset: read through them.
        dataset, positions = base_positions(dataset)
        if not isinstance(dataset, (FileDataset, ArrayImageDataset, ArrayDataset)):
            raise ValueError(f"the device pipeline cannot read a {type(dataset).__name__}")
        self.dataset, self.positions = dataset, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int):
        dataset, position = self.dataset, int(self.positions[index])
        if isinstance(dataset, FileDataset):
            path = dataset.paths[position]
            try:
                payload = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
            except OSError as error:
                raise DataError(f"cannot read {path} ({error.strerror}); re-extract the dataset") from error
        else:
            payload = torch.from_numpy(np.ascontiguousarray(np.asarray(dataset.images[position]).transpose(2, 0, 1)))
        return payload, int(self.labels[index]), position

    def _crop(self, image: torch.Tensor, position: int) -> torch.Tensor:
        """``image`` ``[3, H, W]`` cropped to its box by :func:`forgetlab.data.decode.box_pixels`."""
        left, top, right, bottom = box_pixels(
            self.dataset.boxes[position], image.shape[-1], image.shape[-2], self.name(position), self.dataset.box_file
        )
        return image[:, top:bottom, left:right]

    def name(self, position: int) -> str:
        return str(self.dataset.paths[position]) if isinstance(self.dataset, FileDataset) else f"image {position}"

    def subset(self, count: int, seed: int) -> "EncodedDataset":
        from forgetlab.data.base import subset_indices

        order = subset_indices(len(self), count, seed)
        if order is None:
            return self
        view = copy.copy(self)
        view.positions, view.labels = self.positions[order], self.labels[order]
        return view

    def evaluation_view(self) -> "EncodedDataset":
        view = copy.copy(self)
        view.batch_transform = self.eval_batch_transform
        return view

    def fingerprint(self) -> str:
        """See :class:`~forgetlab.data.base.TaskDataset`: the files or arrays it reads (not the PIL
        transform of the dataset holding them, which it never applies), the positions and labels it
        reads them as, and the batch transform its images get on the device."""
        digest = hashlib.sha256(type(self).__name__.encode())
        digest.update(self.dataset.fingerprint(with_transform=False).encode())
        digest.update(np.asarray(self.positions).tobytes())
        digest.update(np.asarray(self.labels).tobytes())
        digest.update(repr(self.batch_transform).encode())
        return digest.hexdigest()

    @staticmethod
    def collate(items):
        """``(payloads, labels, positions)`` of a batch, stacked where it was read (a loader worker), so the
        main process receives, and the loader pins, one tensor: same-sized arrays as one uint8
        ``[N, 3, H, W]``, files as one :class:`EncodedBatch`; arrays of several sizes stay a list."""
        payloads, labels, indices = zip(*items)
        if all(payload.dim() == 1 for payload in payloads):
            offsets = tuple(np.cumsum([0, *(len(payload) for payload in payloads)]).tolist())
            stacked = EncodedBatch(torch.cat(payloads), offsets)
        elif len({payload.shape for payload in payloads}) == 1:
            stacked = torch.stack(payloads)
        else:
            stacked = list(payloads)
        return stacked, torch.tensor(labels), list(indices)

    def to_batch(self, payloads, indices: list[int], device: torch.device, generator=None) -> torch.Tensor:
        """Decode (files) and preprocess one batch on ``device`` (``indices``: positions in the file dataset);
        ``payloads`` as :meth:`collate` makes them, or a list of single payloads."""
        if isinstance(payloads, EncodedBatch):
            payloads = payloads.payloads()
        if isinstance(self.dataset, FileDataset):
            images = decode_batch(payloads, [self.name(i) for i in indices], device)
            if self.dataset.boxes is not None:  # CUB's bounding boxes, clipped to the image as on the PIL path
                images = [self._crop(image, position) for image, position in zip(images, indices)]
        else:
            images = payloads
        return self.batch_transform(images, device, generator)


def encoded(task, preprocess, train: bool = True):
    """``task`` with its splits read by the device pipeline; ``train=False`` leaves the train split on
    the PIL path (the replay buffer stacks its items)."""
    import dataclasses

    transforms = batch_transforms(preprocess)
    train_split = (
        EncodedDataset(task.train, transforms["train"], transforms["eval"]) if train and len(task.train) else task.train
    )
    return dataclasses.replace(task, train=train_split, test=EncodedDataset(task.test, transforms["eval"]))
