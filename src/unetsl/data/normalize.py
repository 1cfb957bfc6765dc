"""Intensity normalisation shared by training, inspection and prediction.

Two independent steps, both chosen in the config:

- ``"normalization percentiles"`` [low, high]: per image and channel, the low/high
  percentiles of the whole image map to 0 and 1 (the usual choice in the field,
  e.g. [1, 99.8]); done once when an image is loaded.
- ``"normalize samples"``: the original's per-patch z-score, per channel, over the patch's
  own (z, y, x) voxels; std below 1e-3 counts as 1.

Prediction must apply the same two steps to the image and its tiles as training did.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["percentile_normalize", "zscore_patch"]


def percentile_normalize(data: np.ndarray, percentiles: Sequence[float] | None,
                         channel_axis: int = -4) -> np.ndarray:
    """Map the ``percentiles`` (low, high) of every channel to 0 and 1, as float32.

    data : (..., c, z, y, x) ndarray (``channel_axis`` -4), e.g. (t, c, z, y, x) or
        (c, z, y, x); percentiles are taken per channel over everything else.
    percentiles : (low, high) in [0, 100], or None to only convert to float32.
    A channel whose two percentiles are equal (a flat image) is shifted to 0, not scaled.
    """
    out = np.asarray(data, dtype=np.float32)
    if percentiles is None:
        return out
    low, high = (float(p) for p in percentiles)
    moved = np.moveaxis(out, channel_axis, 0)
    result = np.empty_like(moved)
    for c, channel in enumerate(moved):
        lo, hi = np.percentile(channel, [low, high])
        scale = hi - lo
        result[c] = (channel - lo) / (scale if scale > 0 else 1.0)
    return np.moveaxis(result, 0, channel_axis)


def zscore_patch(patch: np.ndarray) -> np.ndarray:
    """(c, z, y, x) -> float32 with mean 0 and std 1 per channel (the original's rule).

    Works in place on a float32 array (and returns it); other dtypes are converted first.
    """
    patch = np.asarray(patch, dtype=np.float32)
    flat = patch.reshape(patch.shape[0], -1)
    mean = flat.mean(axis=1)
    std = flat.std(axis=1)
    std[std < 1e-3] = 1.0
    patch -= mean.reshape(-1, 1, 1, 1)
    patch /= std.reshape(-1, 1, 1, 1)
    return patch
