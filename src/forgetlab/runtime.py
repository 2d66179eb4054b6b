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


def precision_warning(device: torch.device, precision: str) -> str | None:
    """One line when the precision asked for is slow where the run goes: bf16 autocast on a CPU."""
    if device.type == "cpu" and precision == "bf16":
        return ("precision=bf16 on a CPU: bf16 autocast trains several times slower than fp32 here (2.5x to 20x measured "
                "on this project's CPUs); precision=auto uses fp32 on a CPU")  # fmt: skip
    return None


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


PLAIN_EVERY = 60.0  # seconds between plain progress lines outside a terminal


def progress(iterable=None, **kwargs):
    """Progress of a loop, by ``FORGETLAB_PROGRESS``: unset, a tqdm bar on stderr when stderr is a
    terminal, else a plain line every 60 s (a log file, SLURM, nohup); ``1`` or ``bar``, always the bar;
    ``lines`` or ``lines:SECONDS``, plain lines at that interval; ``0`` or ``off``, nothing."""
    from tqdm.auto import tqdm

    mode = os.environ.get("FORGETLAB_PROGRESS", "").strip().lower()
    if mode in ("0", "off"):
        return tqdm(iterable, disable=True, **kwargs)
    if mode in ("1", "bar") or (not mode and sys.stderr.isatty()):
        return tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs)
    every = PLAIN_EVERY
    if mode.startswith("lines:"):
        try:
            every = float(mode.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"FORGETLAB_PROGRESS={mode!r}: give 0, 1, lines or lines:SECONDS") from None
    elif mode not in ("", "lines"):
        raise ConfigError(f"FORGETLAB_PROGRESS={mode!r}: give 0, 1, lines or lines:SECONDS")
    return PlainProgress(iterable, every=every, **kwargs)


class PlainProgress:
    """tqdm's interface as plain log lines on stderr, at most one every ``every`` seconds, e.g.
    ``forgetlab: task 1/3 fontfamily: 120/400 steps (30%), 4.1 steps/s, about 68 s left, loss=1.234``."""

    def __init__(self, iterable=None, *, total=None, desc="", unit="it", every=PLAIN_EVERY, clock=None, **_):
        import time

        self.iterable, self.total, self.desc, self.unit, self.every = iterable, total, desc, unit, every
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            self.total = len(iterable)
        self.clock = clock or time.monotonic
        self.n, self.postfix = 0, {}
        self.start = self.last = self.clock()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            print(self.line(now), file=sys.stderr, flush=True)

    def set_postfix(self, ordered_dict=None, refresh=True, **values) -> None:
        self.postfix.update(ordered_dict or {}, **values)

    def close(self) -> None:
        pass

    def line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.n / elapsed
        units = self.unit + ("es" if self.unit.endswith(("ch", "sh", "s", "x")) else "s")
        done = f"{self.n}/{self.total} {units} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n} {units}"
        left = f", about {(self.total - self.n) / rate:.0f} s left" if self.total and rate > 0 else ""
        extra = "".join(f", {key}={value}" for key, value in self.postfix.items())
        return f"forgetlab: {self.desc}: {done}, {rate:.1f} {units}/s{left}{extra}"
