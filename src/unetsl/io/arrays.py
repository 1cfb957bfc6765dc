"""In-memory image sources and sinks of the prediction engine (arrays, memory maps)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from unetsl.errors import UnetslError

log = logging.getLogger("unetsl")


class ArraySource:
    """An in-memory (t, c, z, y, x) array (or anything sliceable, e.g. a memory map)."""

    def __init__(self, array):
        if len(array.shape) != 5:
            raise UnetslError(f"expected a (t, c, z, y, x) image, got shape {array.shape}")
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)

    def read(self, t: int, zs: slice, ys: slice, xs: slice) -> np.ndarray:
        """(c, z, y, x) block of time point ``t``."""
        return np.asarray(self.array[t, :, zs, ys, xs])


def check_finite(source, name: str, *, budget: int = 1 << 26) -> None:
    """Refuse an image with NaN or infinite pixels before any work, in one line naming it:
    a network gives nothing meaningful there, and normalisation would spread the NaN.

    source : ``shape`` (t, c, z, y, x) and ``read(t, zs, ys, xs) -> (c, z, y, x)``; read in
        blocks of about ``budget`` bytes, so memory does not follow the image size. Integer
        images are not read.
    """
    t, c, z, y, x = (int(s) for s in source.shape)
    if not t * c * z * y * x:
        return
    first = np.asarray(source.read(0, slice(0, 1), slice(0, 1), slice(0, 1)))
    if first.dtype.kind not in "fc":
        return
    rows = max(1, budget // max(1, c * x * first.dtype.itemsize))
    z_step, y_step = (max(1, rows // y), y) if rows >= y else (1, rows)
    bad = 0
    for ti in range(t):
        for z0 in range(0, z, z_step):
            for y0 in range(0, y, y_step):
                block = np.asarray(source.read(ti, slice(z0, z0 + z_step),
                                               slice(y0, y0 + y_step), slice(None)))
                bad += block.size - int(np.count_nonzero(np.isfinite(block)))
    total = t * c * z * y * x
    if bad == total:
        raise UnetslError(f"{name}: every pixel is NaN or infinite; nothing to predict")
    if bad:
        raise UnetslError(f"{name}: {bad} of {total} pixels are NaN or infinite; replace them "
                          "(e.g. by 0 or the background value) before predicting")


class ArraySink:
    """Collects one output's probabilities into a float32 (t, n, z, y, x) array."""

    def __init__(self, shape: Sequence[int]):
        self.array = np.zeros(tuple(shape), dtype=np.float32)

    def write(self, t: int, region: tuple[slice, slice, slice], block: np.ndarray) -> None:
        self.array[(t, slice(None), *region)] = block

