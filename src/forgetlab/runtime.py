"""Device, precision, seeding and progress bars: one rule each."""

from __future__ import annotations

import contextlib
import os
import random
import sys

import numpy as np
import torch

from forgetlab.errors import ConfigError

# timm's fused attention is slower on CPU here; the plain path is exact and quick.
os.environ.setdefault("TIMM_FUSED_ATTN", "0")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when present, else cpu. Asking for cuda without one is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible; use device=auto or device=cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32.

    ``auto`` is bf16 on CUDA and fp32 on CPU: measured on this project's 2-core Xeon, CPU bf16
    autocast ran the small ViT's blocks about 20x slower than fp32 (13 vs 290 img/s training).
    """
    if precision in ("fp32", "tf32") or (precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def configure_matmul_precision(device: torch.device, precision: str) -> None:
    """``tf32``: fp32 weights and activations, with TF32 tensor-core matmuls and convolutions on CUDA
    (paper 2's code); ``fp32``: full fp32 matmuls (paper 1's code). No effect on the CPU."""
    if device.type == "cuda":
        allow = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(*parts: int) -> int:
    """Seed Python, NumPy and torch from a tuple (e.g. run seed and task index); return the seed."""
    seed = int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed


def configure_threads() -> None:
    """Use every core the process may run on (cgroup-aware), unless a count was set: by a sweep that
    shares the cores between its cells (``FORGETLAB_THREADS``), or by the user (``OMP_NUM_THREADS``)."""
    if os.environ.get("FORGETLAB_THREADS"):
        torch.set_num_threads(max(1, int(os.environ["FORGETLAB_THREADS"])))
    elif "OMP_NUM_THREADS" not in os.environ:
        try:
            torch.set_num_threads(len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            pass


def progress(iterable=None, **kwargs):
    """A tqdm bar on stderr; shown when stderr is a terminal or FORGETLAB_PROGRESS=1."""
    from tqdm.auto import tqdm

    forced = os.environ.get("FORGETLAB_PROGRESS")
    disable = (forced == "0") or (forced != "1" and not sys.stderr.isatty())
    return tqdm(iterable, disable=disable, leave=False, dynamic_ncols=True, **kwargs)
