"""Device, precision, seeding and progress bars: one rule each, and :class:`Runtime`, where a run's
device-side settings are resolved once."""

from __future__ import annotations

import contextlib
import dataclasses
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
        return (
            "precision=bf16 on a CPU: bf16 autocast trains several times slower than fp32 here (2.5x to 20x measured "
            "on this project's CPUs); precision=auto uses fp32 on a CPU"
        )
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


def resolve_pipeline(choice: str, device: torch.device) -> str:
    """Where ``data.pipeline`` decodes real images: ``auto`` is ``device`` on CUDA and, on the CPU,
    ``pil``, which measured faster there (see the README); ``device`` and ``pil`` are themselves."""
    if choice == "auto":
        return "device" if device.type == "cuda" else "pil"
    return choice


PLAIN_EVERY = 60.0  # seconds between plain progress lines outside a terminal


def progress_mode() -> str:
    """``FORGETLAB_PROGRESS`` as :func:`progress` reads it (stripped, lower case), checked: a value it
    cannot read is a :class:`~forgetlab.errors.ConfigError` naming the values it takes."""
    mode = os.environ.get("FORGETLAB_PROGRESS", "").strip().lower()
    _plain_every(mode)
    return mode


def _plain_every(mode: str) -> float:
    """Seconds between plain lines for ``mode`` (:data:`PLAIN_EVERY` unless ``lines:SECONDS``)."""
    if mode.startswith("lines:"):
        try:
            return float(mode.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"FORGETLAB_PROGRESS={mode!r}: give 0, 1, lines or lines:SECONDS") from None
    if mode not in ("", "lines", "0", "off", "1", "bar"):
        raise ConfigError(f"FORGETLAB_PROGRESS={mode!r}: give 0, 1, lines or lines:SECONDS")
    return PLAIN_EVERY


def progress(iterable=None, *, mode: str | None = None, **kwargs):
    """Progress of a loop, by ``mode`` (default: ``FORGETLAB_PROGRESS``, read now): empty, a tqdm bar on
    stderr when stderr is a terminal, else a plain line every 60 s (a log file, SLURM, nohup); ``1`` or
    ``bar``, always the bar; ``lines`` or ``lines:SECONDS``, plain lines at that interval; ``0`` or
    ``off``, nothing. ``kwargs`` go to tqdm (``total``, ``desc``, ``unit``)."""
    from tqdm.auto import tqdm

    mode = progress_mode() if mode is None else mode
    every = _plain_every(mode)
    if mode in ("0", "off"):
        return tqdm(iterable, disable=True, **kwargs)
    if mode in ("1", "bar") or (not mode and sys.stderr.isatty()):
        return tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs)
    return PlainProgress(iterable, every=every, **kwargs)


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where and how a run computes, resolved once (:meth:`from_config`) and handed to training,
    evaluation, the drift probe and the explanations, as torchtune's recipes keep ``self._device`` and
    ``self._dtype``. None of it changes what is learned: the training batch size, which sets the
    schedule's length and the compile mode, stays with the recipe (``TrainConfig``).

    ``device``: where the model and batches live; ``precision``: ``config.precision`` as asked
    (``auto``, ``fp32``, ``tf32``, ``bf16``); ``amp_dtype``: autocast's dtype (:func:`autocast_dtype`;
    None: fp32); ``eval_batch_size``: images per evaluation batch (``eval.batch_size``); ``workers``:
    loader worker processes (``data.workers``); ``pipeline``: ``data.pipeline`` resolved
    (:func:`resolve_pipeline`: ``device`` or ``pil``); ``progress_mode``: ``FORGETLAB_PROGRESS``
    (:func:`progress_mode`)."""

    device: torch.device = torch.device("cpu")
    precision: str = "auto"
    amp_dtype: torch.dtype | None = None
    eval_batch_size: int = 256
    workers: int = 0
    pipeline: str = "pil"
    progress_mode: str = dataclasses.field(default_factory=progress_mode)

    @classmethod
    def from_config(cls, config, *, device: str | None = None) -> Runtime:
        """The runtime of a :class:`~forgetlab.config.RunConfig`: ``config.device`` (or ``device``, a
        command's own ``--device``), ``config.precision``, ``eval.batch_size``, ``data.workers``,
        ``data.pipeline`` and ``FORGETLAB_PROGRESS``. Raises :class:`~forgetlab.errors.ConfigError` for
        ``device=cuda`` without CUDA and for a ``FORGETLAB_PROGRESS`` it cannot read."""
        torch_device = resolve_device(config.device if device is None else device)
        return cls(
            device=torch_device,
            precision=config.precision,
            amp_dtype=autocast_dtype(torch_device, config.precision),
            eval_batch_size=config.eval.batch_size,
            workers=config.data.workers,
            pipeline=resolve_pipeline(config.data.pipeline, torch_device),
        )

    def autocast(self):
        """Autocast to :attr:`amp_dtype` on :attr:`device` (nothing when it is None)."""
        return autocast(self.device, self.amp_dtype)

    def progress(self, iterable=None, **kwargs):
        """:func:`progress` with this runtime's :attr:`progress_mode`."""
        return progress(iterable, mode=self.progress_mode, **kwargs)


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
        done = (
            f"{self.n}/{self.total} {units} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n} {units}"
        )
        left = f", about {(self.total - self.n) / rate:.0f} s left" if self.total and rate > 0 else ""
        extra = "".join(f", {key}={value}" for key, value in self.postfix.items())
        return f"forgetlab: {self.desc}: {done}, {rate:.1f} {units}/s{left}{extra}"
