"""Tiled prediction of images of any size, blended without seams, and reductions to labels.

Tiles have the model's patch shape and overlap by a margin; each tile's probabilities
are weighted by a window that is 1 in the middle and tapers over the margin, summed,
and divided by the summed weights. Voxels near a tile edge (where zero padding inside
the network distorts the output) therefore count little wherever another tile sees
them better, and no seam appears.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from unetsl.errors import UnetslError

REDUCTIONS = {0: "categorical", 1: "multiclass", 2: "linear"}
ACTIVATION_REDUCTION = {"softmax": "categorical", "sigmoid": "multiclass"}


def reduction_name(value: int | str) -> str:
    """Accept the original's numbers (0, 1, 2) or names; one-line error otherwise."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and value in REDUCTIONS:
        return REDUCTIONS[value]
    if isinstance(value, str) and value in REDUCTIONS.values():
        return value
    raise UnetslError(
        f'"reduction type" must be 0 (categorical), 1 (multiclass) or 2 (linear), got {value!r}'
    )


def reduction_for_activation(activation: str) -> str:
    """sigmoid -> multiclass, softmax -> categorical, anything else (relu, linear) -> linear."""
    return ACTIVATION_REDUCTION.get(activation, "linear")


def default_overlap(patch: tuple[int, ...]) -> tuple[int, ...]:
    """A quarter of the patch per axis (none for a single slice), at least 1 where possible."""
    return tuple(0 if p == 1 else max(1, p // 4) for p in patch)


def tile_origins(size: int, patch: int, overlap: int) -> list[int]:
    """Origins along one axis: step patch - overlap, the last tile flush with the far edge."""
    if size <= patch:
        return [0]
    step = max(1, patch - overlap)
    origins = list(range(0, size - patch, step))
    origins.append(size - patch)
    return origins


def window(patch: tuple[int, ...], overlap: tuple[int, ...]) -> np.ndarray:
    """Blending weights: 1 inside, a raised-cosine ramp over each margin, never 0."""
    axes = []
    for p, o in zip(patch, overlap):
        w = np.ones(p, dtype=np.float32)
        if o > 0:
            ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(o, dtype=np.float32) + 0.5) / o)
            w[:o] = np.minimum(w[:o], ramp)
            w[p - o:] = np.minimum(w[p - o:], ramp[::-1])
        axes.append(w)
    grid = np.ix_(*axes)
    result = np.ones(patch, dtype=np.float32)
    for g in grid:
        result = result * g
    return np.maximum(result, 1e-3)


@dataclass(frozen=True)
class Tiling:
    """Where the tiles of one volume go."""

    shape: tuple[int, int, int]  # padded volume (z, y, x)
    patch: tuple[int, int, int]
    overlap: tuple[int, int, int]

    def origins(self) -> Iterator[tuple[int, int, int]]:
        zs, ys, xs = (tile_origins(s, p, o) for s, p, o in zip(self.shape, self.patch, self.overlap))
        for z in zs:
            for y in ys:
                for x in xs:
                    yield (z, y, x)

    def count(self) -> int:
        return math.prod(len(tile_origins(s, p, o))
                         for s, p, o in zip(self.shape, self.patch, self.overlap))


def _pad_to_patch(volume: np.ndarray, patch: tuple[int, ...]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Reflect-pad (c, z, y, x) up to the patch where smaller; slices that crop back."""
    pads = [(0, 0)]
    crop = [slice(None)]
    for size, p in zip(volume.shape[1:], patch):
        extra = max(0, p - size)
        before = extra // 2
        pads.append((before, extra - before))
        crop.append(slice(before, before + size))
    if any(sum(p) for p in pads):
        mode = "reflect" if all(s > 1 for s, p in zip(volume.shape[1:], pads[1:]) if sum(p)) else "edge"
        volume = np.pad(volume, pads, mode=mode)
    return volume, tuple(crop)


def normalize_patches(batch: np.ndarray) -> np.ndarray:
    """Z-score every sample and channel over its voxels (the original's "normalize samples")."""
    axes = tuple(range(2, batch.ndim))
    mean = batch.mean(axis=axes, keepdims=True)
    std = batch.std(axis=axes, keepdims=True)
    return (batch - mean) / np.where(std < 1e-3, 1.0, std)


def predict_volume(model, volume: np.ndarray, *, batch_size: int = 16,
                   overlap: tuple[int, int, int] | None = None, normalize: bool = False,
                   output_index: int = -1, progress=None) -> np.ndarray:
    """Predict one (c, z, y, x) volume; returns float32 probabilities (n, z, y, x).

    ``model`` is a channels-last Keras model with input (z, y, x, c). ``progress`` is
    called with the number of tiles done after each batch.
    """
    from unetsl.model import from_model_layout, model_patch_shape, to_model_layout

    c, *patch = model_patch_shape(model)
    patch = tuple(patch)
    if volume.ndim != 4:
        raise UnetslError(f"expected a (c, z, y, x) volume, got shape {volume.shape}")
    if volume.shape[0] != c:
        raise UnetslError(f"image has {volume.shape[0]} channels, the model expects {c}")
    overlap = tuple(overlap) if overlap is not None else default_overlap(patch)
    padded, crop = _pad_to_patch(volume.astype(np.float32, copy=False), patch)
    tiling = Tiling(padded.shape[1:], patch, overlap)
    weights = window(patch, overlap)
    accum: np.ndarray | None = None
    wsum = np.zeros(padded.shape[1:], dtype=np.float32)
    origins = list(tiling.origins())
    for start in range(0, len(origins), batch_size):
        chunk = origins[start:start + batch_size]
        tiles = np.stack([padded[:, z:z + patch[0], y:y + patch[1], x:x + patch[2]]
                          for z, y, x in chunk])
        if normalize:
            tiles = normalize_patches(tiles)
        out = model.predict_on_batch(to_model_layout(tiles))
        if isinstance(out, (list, tuple)):
            out = out[output_index]
        out = from_model_layout(np.asarray(out, dtype=np.float32))
        if accum is None:
            accum = np.zeros((out.shape[1], *padded.shape[1:]), dtype=np.float32)
        for tile, (z, y, x) in zip(out, chunk):
            region = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
            accum[(slice(None), *region)] += tile * weights
            wsum[region] += weights
        if progress is not None:
            progress(len(chunk))
    assert accum is not None
    result = accum / wsum
    return result[(slice(None), *crop[1:])]


def predict(model, image: np.ndarray, *, batch_size: int = 16,
            overlap: tuple[int, int, int] | None = None, normalize: bool = False,
            output_index: int = -1, progress=None) -> np.ndarray:
    """Predict every time point of a (t, c, z, y, x) (or (c, z, y, x)) image.

    Returns float32 probabilities (t, n, z, y, x) (or (n, z, y, x) for 4-D input).
    """
    if image.ndim == 4:
        return predict_volume(model, image, batch_size=batch_size, overlap=overlap,
                              normalize=normalize, output_index=output_index, progress=progress)
    if image.ndim != 5:
        raise UnetslError(f"expected a (t, c, z, y, x) image, got shape {image.shape}")
    return np.stack([
        predict_volume(model, frame, batch_size=batch_size, overlap=overlap, normalize=normalize,
                       output_index=output_index, progress=progress)
        for frame in image
    ])


def reduce(probabilities: np.ndarray, reduction: str, *, channel_axis: int = -4) -> np.ndarray:
    """Turn probabilities into the label image the labeller would have produced.

    multiclass: channel k above 0.5 adds 2^k (uint8, uint16 past 8 channels);
    categorical: arg-max channel k gives 2^k, the last channel (background) gives 0;
    linear: the values themselves as float32.
    """
    p = np.moveaxis(probabilities, channel_axis, 0)
    n = p.shape[0]
    if reduction == "linear":
        if n != 1:
            p = p[:1]
        return p[0].astype(np.float32)
    if reduction == "multiclass":
        dtype = np.uint8 if n <= 8 else np.uint16 if n <= 16 else np.uint32
        bits = (1 << np.arange(n, dtype=np.uint64)).astype(dtype)
        out = np.zeros(p.shape[1:], dtype=dtype)
        for k in range(n):
            out |= np.where(p[k] > 0.5, bits[k], 0).astype(dtype)
        return out
    if reduction == "categorical":
        winner = np.argmax(p, axis=0)
        dtype = np.uint8 if n <= 9 else np.uint16 if n <= 17 else np.uint32
        values = np.array([1 << k for k in range(n - 1)] + [0], dtype=dtype)
        return values[winner]
    raise UnetslError(f"unknown reduction {reduction!r}")
