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
* training: random-resized crop (torchvision's sampling of area in ``scale`` and log-ratio in
  ``ratio``, ten tries then the centre fallback), horizontal flip, colour jitter (brightness, contrast,
  saturation factors in ``[1 - j, 1 + j]``, applied in a random order as torchvision does), normalise.

The same code runs on the CPU (``device=cpu``), where the tests compare it with the PIL path on
smooth real-layout JPEGs: the evaluation tensors agree within 0.01 on average and 0.05 at most in
normalised units (measured 0.002-0.005 and 0.008-0.019 for the papers' three backbones; PIL and
torch resample slightly differently), and every random crop lies in the configured scale and ratio
ranges.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from forgetlab.data.base import dataset_labels
from forgetlab.data.decode import JPEG_MAGIC, PNG_MAGIC, box_pixels, decode_bytes, jpeg_components, to_uint8
from forgetlab.errors import DataError


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
    color_jitter: float = 0.0
    scale_size: int | None = None  # evaluation: the resize target timm computed (default floor(size / crop_pct))

    def __call__(self, images: list[torch.Tensor], device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 ``[3, H, W]`` images (any sizes) -> one normalised float batch ``[N, 3, size, size]``."""
        out = [self._train_one(image.to(device), generator) if self.training else self._eval_one(image.to(device)) for image in images]
        batch = torch.stack(out).clamp_(0, 255) / 255.0
        if self.training and self.color_jitter:
            batch = torch.stack([self._jitter(image, generator) for image in batch])
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
        return (batch - mean) / std

    def _resize(self, image: torch.Tensor, height: int, width: int) -> torch.Tensor:
        mode = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}[self.interpolation]
        extra = {"antialias": True, "align_corners": False} if mode != "nearest" else {}
        return F.interpolate(image[None].float(), size=(height, width), mode=mode, **extra)[0]

    def _eval_one(self, image: torch.Tensor) -> torch.Tensor:
        scale_size = self.scale_size or math.floor(self.size / self.crop_pct)
        height, width = image.shape[-2:]
        if self.crop_mode == "squash":
            image = self._resize(image, scale_size, scale_size)
        elif height <= width:
            image = self._resize(image, scale_size, max(1, int(scale_size * width / height)))
        else:
            image = self._resize(image, max(1, int(scale_size * height / width)), scale_size)
        height, width = image.shape[-2:]
        top, left = int(round((height - self.size) / 2.0)), int(round((width - self.size) / 2.0))
        return image[:, top : top + self.size, left : left + self.size]

    def crop_box(self, height: int, width: int, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` of a random-resized crop: torchvision's ``RandomResizedCrop.get_params``."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * torch.empty(1).uniform_(self.scale[0], self.scale[1], generator=generator).item()
            aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
                return top, left, h, w
        in_ratio = width / height  # fallback: the whole image, clipped to the ratio range
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def _train_one(self, image: torch.Tensor, generator) -> torch.Tensor:
        top, left, h, w = self.crop_box(*image.shape[-2:], generator)
        image = self._resize(image[:, top : top + h, left : left + w], self.size, self.size)
        if torch.rand(1, generator=generator).item() < self.hflip:
            image = image.flip(-1)
        return image

    def _jitter(self, image: torch.Tensor, generator) -> torch.Tensor:
        """Brightness, contrast and saturation, each by a factor in [1 - j, 1 + j], in a random order."""
        low, high = max(0.0, 1 - self.color_jitter), 1 + self.color_jitter
        factors = [torch.empty(1).uniform_(low, high, generator=generator).item() for _ in range(3)]
        gray = lambda x: (0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]  # noqa: E731 - ITU-R 601-2, as torchvision
        for index in torch.randperm(3, generator=generator).tolist():
            factor = factors[index]
            if index == 0:
                image = (image * factor).clamp(0, 1)
            elif index == 1:
                image = (factor * image + (1 - factor) * gray(image).mean()).clamp(0, 1)
            else:
                image = (factor * image + (1 - factor) * gray(image)).clamp(0, 1)
        return image


def batch_transforms(preprocess) -> dict[str, BatchTransform]:
    """The ``train``, ``eval`` and ``upstream_eval`` batch transforms equal to a
    :class:`forgetlab.data.files.Preprocess` (read off its timm transforms, so they cannot drift)."""

    def parts(transform) -> dict:
        found = {}
        for step in transform.transforms:
            kind = type(step).__name__
            if kind == "RandomResizedCropAndInterpolation":
                found.update(size=step.size[0], scale=tuple(step.scale), ratio=tuple(step.ratio), training=True,
                             interpolation=str(getattr(step.interpolation, "value", step.interpolation)))  # fmt: skip
            elif kind == "RandomHorizontalFlip":
                found["hflip"] = step.p
            elif kind == "ColorJitter":
                found["color_jitter"] = float(step.brightness[1] - 1) if step.brightness else 0.0
            elif kind == "Resize":
                size = step.size
                found["interpolation"] = step.interpolation.value
                found["resize"] = tuple(size) if isinstance(size, (list, tuple)) else size
            elif kind == "CenterCrop":
                found["size"] = step.size[0]
            elif kind == "Normalize":
                found.update(mean=tuple(step.mean.tolist() if hasattr(step.mean, "tolist") else step.mean),
                             std=tuple(step.std.tolist() if hasattr(step.std, "tolist") else step.std))  # fmt: skip
        resize = found.pop("resize", None)
        if resize is not None:
            squash = isinstance(resize, tuple)
            scale_size = resize[0] if squash else resize
            found.update(crop_mode="squash" if squash else "center", scale_size=scale_size,
                         crop_pct=found["size"] / scale_size if scale_size else 1.0)  # fmt: skip
        return found

    out = {}
    for role in ("train", "eval", "upstream_eval"):
        transform = getattr(preprocess, role)
        if transform is not None:
            out[role] = BatchTransform(**parts(transform))
    return out


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


def decode_batch(payloads: list[torch.Tensor], names: list[str], device: torch.device) -> list[torch.Tensor]:
    """uint8 RGB ``[3, H, W]`` images from encoded bytes (see :mod:`forgetlab.data.decode` for the rule):
    grey and YCbCr JPEGs in one batched ``decode_jpeg`` call on ``device`` (nvJPEG on CUDA); if that
    call refuses the batch, each of them alone on ``device``; CMYK/YCCK JPEGs, other formats and
    whatever the device refused by :func:`_decode_one` on the CPU."""
    from torchvision.io import ImageReadMode, decode_jpeg

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
    return [image if image is not None else _decode_one(payloads[i], names[i], device) for i, image in enumerate(images)]


class EncodedDataset(Dataset):
    """A file or in-memory dataset whose items are what the device pipeline takes: ``(payload, label,
    index)``, the payload being a file's bytes (uint8, 1-D) or an in-memory ``[3, H, W]`` uint8 image.
    ``transform`` is the :class:`BatchTransform` its batches get on the device."""

    def __init__(self, dataset: Dataset, transform: BatchTransform, eval_transform: BatchTransform | None = None):
        self.batch_transform, self.eval_batch_transform = transform, eval_transform or transform
        self.labels = dataset_labels(dataset)  # class splits relabel: the outer labels are the task's
        # Class and sample splits are index maps over a file or array dataset: read through them.
        positions = np.arange(len(dataset))
        while not (hasattr(dataset, "paths") or hasattr(dataset, "images")):
            if not (hasattr(dataset, "dataset") and hasattr(dataset, "indices")):
                raise ValueError(f"the device pipeline cannot read a {type(dataset).__name__}")
            positions, dataset = np.asarray(dataset.indices)[positions], dataset.dataset
        self.dataset, self.positions = dataset, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int):
        dataset, position = self.dataset, int(self.positions[index])
        if hasattr(dataset, "paths"):
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
        left, top, right, bottom = box_pixels(self.dataset.boxes[position], image.shape[-1], image.shape[-2], self.name(position),
                                              getattr(self.dataset, "box_file", None))  # fmt: skip
        return image[:, top:bottom, left:right]

    def name(self, position: int) -> str:
        return str(self.dataset.paths[position]) if hasattr(self.dataset, "paths") else f"image {position}"

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

    @staticmethod
    def collate(items):
        payloads, labels, indices = zip(*items)
        return list(payloads), torch.tensor(labels), list(indices)

    def to_batch(self, payloads: list[torch.Tensor], indices: list[int], device: torch.device, generator=None) -> torch.Tensor:
        """Decode (files) and preprocess one batch on ``device`` (``indices``: positions in the file dataset)."""
        if hasattr(self.dataset, "paths"):
            images = decode_batch(payloads, [self.name(i) for i in indices], device)
            boxes = getattr(self.dataset, "boxes", None)
            if boxes is not None:  # CUB's bounding boxes, clipped to the image as on the PIL path
                images = [self._crop(image, position) for image, position in zip(images, indices)]
        else:
            images = payloads
        return self.batch_transform(images, device, generator)


def resolve_pipeline(choice: str, device: torch.device) -> str:
    """``auto``: ``device`` on CUDA; on the CPU, ``pil``, which measured faster there (see the README)."""
    if choice == "auto":
        return "device" if device.type == "cuda" else "pil"
    return choice


def encoded(task, preprocess, train: bool = True):
    """``task`` with its splits read by the device pipeline; ``train=False`` leaves the train split on
    the PIL path (the replay buffer stacks its items)."""
    import dataclasses

    transforms = batch_transforms(preprocess)
    train_split = EncodedDataset(task.train, transforms["train"], transforms["eval"]) if train and len(task.train) else task.train
    return dataclasses.replace(task, train=train_split, test=EncodedDataset(task.test, transforms["eval"]))
