"""Rows of blocks gathered until they fill whole zarr chunks, so each chunk is written once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from unetsl.io.omezarr import _BUFFER_LIMIT

if TYPE_CHECKING:
    from unetsl.io.omezarr_write import OutputOmeZarr


class ChunkRowBuffer:
    """One chunk row along the axis a predictor streams over (z or y), full in the others.

    The prediction engine hands over rows of tiles in order along one axis, each covering
    the whole extent of the others; rows rarely end on chunk borders. This gathers them
    until whole chunk rows are complete, so every chunk is written (and compressed) once.
    """

    def __init__(self, sink: OutputOmeZarr, t: int, axis: int, lo: int):
        self.sink, self.t, self.axis = sink, t, axis  # axis: 0 = z, 1 = y (of z, y, x)
        chunk = sink.chunks[2 + axis]
        self.chunk_lo = lo // chunk * chunk
        self.filled = lo  # everything in [chunk_lo, filled) has been given
        self.chunk = chunk
        shape = [sink.shape[1], *sink.shape[2:]]
        shape[1 + axis] = chunk
        self.data = np.zeros(shape, dtype=sink.dtype)

    @staticmethod
    def start(sink: OutputOmeZarr, t: int, spans: list[slice], block: np.ndarray
              ) -> ChunkRowBuffer | None:
        full = [s.start == 0 and s.stop == n for s, n in zip(spans, sink.shape[2:])]
        if block.shape[0] != sink.shape[1] or not full[2]:
            return None
        if not full[1]:
            axis = 1 if full[0] else None
        else:
            axis = 0 if not full[0] else None
        if axis is None:
            return None
        if spans[axis].start % sink.chunks[2 + axis] != 0:
            return None
        buffer = ChunkRowBuffer(sink, t, axis, spans[axis].start)
        if buffer.data.nbytes > _BUFFER_LIMIT:
            return None
        return buffer

    def accepts(self, t: int, spans: list[slice], block: np.ndarray) -> bool:
        if t != self.t or block.shape[0] != self.sink.shape[1]:
            return False
        for a, (s, n) in enumerate(zip(spans, self.sink.shape[2:])):
            if a == self.axis:
                if s.start != self.filled:
                    return False
            elif s.start != 0 or s.stop != n:
                return False
        return True

    def _key(self, lo: int, hi: int) -> tuple:
        key = [slice(self.t, self.t + 1), slice(None), slice(None), slice(None), slice(None)]
        key[2 + self.axis] = slice(lo, hi)
        return tuple(key)

    def add(self, spans: list[slice], block: np.ndarray) -> Iterator[tuple[tuple, np.ndarray]]:
        """Copy ``block`` in; yield (key, data) of every chunk row completed."""
        a = 1 + self.axis
        start, stop = spans[self.axis].start, spans[self.axis].stop
        size = self.sink.shape[2 + self.axis]
        pos = start
        while pos < stop:
            row_end = min(self.chunk_lo + self.chunk, size)
            take = min(stop, row_end) - pos
            dst = [slice(None)] * 4
            src = [slice(None)] * 4
            dst[a] = slice(pos - self.chunk_lo, pos - self.chunk_lo + take)
            src[a] = slice(pos - start, pos - start + take)
            self.data[tuple(dst)] = block[tuple(src)]
            pos += take
            self.filled = pos
            if pos == row_end:
                depth = row_end - self.chunk_lo
                cut = [slice(None)] * 4
                cut[a] = slice(0, depth)
                # a view: the caller writes it before this generator resumes
                yield self._key(self.chunk_lo, row_end), self.data[tuple(cut)][None]
                self.chunk_lo = row_end
                self.data.fill(0)

    def drain(self) -> Iterator[tuple[tuple, np.ndarray]]:
        """What is left (a partial chunk row): written as is, zarr merges it."""
        depth = self.filled - self.chunk_lo
        if depth > 0:
            cut = [slice(None)] * 4
            cut[1 + self.axis] = slice(0, depth)
            yield self._key(self.chunk_lo, self.filled), self.data[tuple(cut)][None]


