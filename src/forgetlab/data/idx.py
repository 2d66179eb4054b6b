"""The IDX format of (Fashion-)MNIST: big-endian magic ``0 0 dtype ndim``, the dimensions, the data."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from forgetlab.errors import DataError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file into an array."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} not found")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_DTYPES[raw[2]])
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: {data.size} values for shape {shape}")
    return data.reshape(shape).astype(dtype.newbyteorder("="))
