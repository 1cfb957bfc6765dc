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


class ArraySink:
    """Collects one output's probabilities into a float32 (t, n, z, y, x) array."""

    def __init__(self, shape: Sequence[int]):
        self.array = np.zeros(tuple(shape), dtype=np.float32)

    def write(self, t: int, region: tuple[slice, slice, slice], block: np.ndarray) -> None:
        self.array[(t, slice(None), *region)] = block

