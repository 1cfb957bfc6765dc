"""Multiscale levels of an OME-Zarr image: 2x downsampling in y/x, region by region."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from unetsl.io.omezarr import _zarr

# ------------------------------------------------------------------------- multiscale levels


def downsample_2x(block: np.ndarray, axes: str, *, nearest: bool) -> np.ndarray:
    """Halve y and x of a block with file ``axes``: every other voxel (labels) or the mean
    of 2 x 2 voxels (odd edges: the mean of what is there)."""
    iy, ix = axes.index("y"), axes.index("x")
    if nearest:
        key = [slice(None)] * block.ndim
        key[iy] = slice(0, None, 2)
        key[ix] = slice(0, None, 2)
        return np.ascontiguousarray(block[tuple(key)])
    data = block.astype(np.float64)
    pads = [(0, 0)] * block.ndim
    pads[iy] = (0, block.shape[iy] % 2)
    pads[ix] = (0, block.shape[ix] % 2)
    if any(p != (0, 0) for p in pads):
        data = np.pad(data, pads, mode="edge")
    shape = list(data.shape)
    new = []
    for i, n in enumerate(shape):
        new += [n // 2, 2] if i in (iy, ix) else [n]
    data = data.reshape(new)
    offset_y = iy + (1 if ix < iy else 0)
    data = data.mean(axis=(offset_y + 1, ix + (1 if iy < ix else 0) + 1))
    if np.dtype(block.dtype).kind in "iu":
        data = np.rint(data)
    return data.astype(block.dtype)


def _downsample_region(src_path: str, src_name: str, dst_name: str, axes: str,
                       nearest: bool, key: tuple) -> None:
    """One chunk row of a lower level (a Dask task): read 2x, downsample, write."""
    zarr = _zarr()
    group = zarr.open_group(src_path, mode="r+")
    src, dst = group[src_name], group[dst_name]
    _downsample_key(src, dst, axes, nearest, key)


def _downsample_key(src, dst, axes: str, nearest: bool, key: tuple) -> None:
    iy, ix = axes.index("y"), axes.index("x")
    src_key = list(key)
    for i in (iy, ix):
        src_key[i] = slice(key[i].start * 2, min(key[i].stop * 2, src.shape[i]))
    dst[key] = downsample_2x(np.asarray(src[tuple(src_key)]), axes, nearest=nearest)


def _downsample_into(src, dst, axes: str, *, nearest: bool, client: Any, path: str,
                     level: int) -> None:
    iy = axes.index("y")
    keys = []
    # one task per row of chunks along y (whole x), and per chunk of the axes before y
    lead = [range(0, n, c) for n, c in zip(dst.shape[:iy], dst.chunks[:iy])]
    for origin in _product(lead):
        for y0 in range(0, dst.shape[iy], dst.chunks[iy]):
            key = [slice(o, min(o + c, n)) for o, c, n in zip(origin, dst.chunks, dst.shape)]
            key.append(slice(y0, min(y0 + dst.chunks[iy], dst.shape[iy])))
            key += [slice(0, n) for n in dst.shape[iy + 1:]]
            keys.append(tuple(key))
    if client is None:
        for key in keys:
            _downsample_key(src, dst, axes, nearest, key)
        return
    futures = client.map(_downsample_region, [path] * len(keys), [str(level - 1)] * len(keys),
                         [str(level)] * len(keys), [axes] * len(keys), [nearest] * len(keys),
                         keys, pure=False)
    client.gather(futures)


def _product(ranges: list[range]) -> Iterator[tuple[int, ...]]:
    if not ranges:
        yield ()
        return
    for head in ranges[0]:
        for rest in _product(ranges[1:]):
            yield (head, *rest)


