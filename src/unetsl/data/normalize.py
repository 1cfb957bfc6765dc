"""Intensity normalisation shared by training, inspection, prediction and export.

Two independent steps, both chosen in the config:

- ``"normalization percentiles"`` [low, high]: per image and channel, the low/high
  percentiles of the whole image (every time point) map to 0 and 1 (the usual choice in the
  field, e.g. [1, 99.8]); computed once per image, so training patches and prediction tiles
  of any size see the same scaling.
- ``"normalize samples"``: the original's per-patch z-score, per channel, over the patch's
  own (z, y, x) voxels.

:class:`InputNormalization` is the pair of settings a model was trained with. It travels
with the model: training stores it in every model file it writes
(:mod:`unetsl.nets.records`), loading attaches it to the model object
(:data:`MODEL_ATTRIBUTE`), and prediction, sample predictions during training, Dask workers
and the bioimage.io export apply it without being told.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unetsl.errors import UnetslError

__all__ = [
    "MODEL_ATTRIBUTE",
    "ChannelScaling",
    "InputNormalization",
    "ScaledSource",
    "attach_normalization",
    "choose_normalization",
    "image_scaling",
    "model_normalization",
    "percentile_normalize",
    "resolve_normalization",
    "zscore_patch",
]

#: The attribute of a loaded Keras model that holds its :class:`InputNormalization`.
MODEL_ATTRIBUTE = "unetsl_input_normalization"

#: Voxels per channel up to which percentiles are exact; larger images are subsampled
#: on a regular grid (prediction of images larger than anything trained on).
EXACT_PERCENTILE_VOXELS = 2**26


@dataclass(frozen=True)
class InputNormalization:
    """How a model's input images are normalised (the two config keys, as one record)."""

    percentiles: tuple[float, float] | None = None
    zscore_tiles: bool = False

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> InputNormalization:
        """From a config or prediction settings ("normalization percentiles", "normalize
        samples"); missing keys mean raw input, as in the original."""
        percentiles = settings.get("normalization percentiles")
        if percentiles is not None:
            if (not isinstance(percentiles, (list, tuple)) or len(percentiles) != 2
                    or not all(isinstance(p, (int, float)) and not isinstance(p, bool)
                               for p in percentiles)
                    or not 0 <= percentiles[0] < percentiles[1] <= 100):
                raise UnetslError('"normalization percentiles" must be null or [low, high] '
                                  f"with 0 <= low < high <= 100, got {percentiles!r}")
            percentiles = (float(percentiles[0]), float(percentiles[1]))
        return cls(percentiles, bool(settings.get("normalize samples", False)))

    def settings(self) -> dict[str, Any]:
        """The config keys: {"normalization percentiles": [lo, hi] | None, "normalize samples"}."""
        return {"normalization percentiles":
                list(self.percentiles) if self.percentiles is not None else None,
                "normalize samples": self.zscore_tiles}

    def to_json(self) -> str:
        return json.dumps(self.settings())

    @classmethod
    def from_json(cls, text: str) -> InputNormalization:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise UnetslError(f"input normalisation record is not a JSON object: {text!r}")
        return cls.from_settings(data)

    def scaled(self, source: Any) -> Any:
        """``source`` (``.shape`` (t, c, z, y, x), ``.read``) as the model sees it before
        tiling: percentile-scaled over the whole image when the model was trained so."""
        if self.percentiles is None:
            return source
        return ScaledSource(source, image_scaling(source, self.percentiles))

    def describe(self) -> str:
        """One phrase for info lines and reports."""
        steps = []
        if self.percentiles is not None:
            lo, hi = self.percentiles
            steps.append(f"percentiles {lo:g}-{hi:g} of each image -> 0-1")
        if self.zscore_tiles:
            steps.append("z-score per tile")
        return ", then ".join(steps) if steps else "raw intensities"


def model_normalization(model: Any) -> InputNormalization | None:
    """The normalisation recorded with a loaded model, or None (the original's models)."""
    value = getattr(model, MODEL_ATTRIBUTE, None)
    return value if isinstance(value, InputNormalization) else None


def resolve_normalization(model: Any, normalization: InputNormalization | None = None,
                          normalize: bool | None = None) -> InputNormalization:
    """What a prediction applies: ``normalization`` if given, else the model's record, else
    raw input; ``normalize`` (if not None) overrides the per-tile z-score."""
    return choose_normalization(model_normalization(model), normalization, normalize)


def choose_normalization(recorded: InputNormalization | None,
                         normalization: InputNormalization | None = None,
                         normalize: bool | None = None) -> InputNormalization:
    """:func:`resolve_normalization` with the model's record already read (``recorded``)."""
    chosen = normalization or recorded or InputNormalization()
    if normalize is not None and bool(normalize) != chosen.zscore_tiles:
        chosen = InputNormalization(chosen.percentiles, bool(normalize))
    return chosen


def attach_normalization(model: Any, normalization: InputNormalization | None) -> Any:
    """Record on ``model`` how its inputs are normalised (saved with it; returns ``model``)."""
    if normalization is not None:
        setattr(model, MODEL_ATTRIBUTE, normalization)
    return model


@dataclass(frozen=True)
class ChannelScaling:
    """Per-channel (value - low) / scale, the result of a percentile normalisation."""

    low: tuple[float, ...]
    scale: tuple[float, ...]

    def apply(self, block: np.ndarray, channel_axis: int = 0) -> np.ndarray:
        """float32 ``block`` with every channel (along ``channel_axis``) scaled."""
        out = np.array(block, dtype=np.float32)  # a copy: never scale the caller's array
        moved = np.moveaxis(out, channel_axis, 0)
        for c, (lo, scale) in enumerate(zip(self.low, self.scale)):
            moved[c] -= np.float32(lo)
            moved[c] /= np.float32(scale)
        return out


def _scaling(samples: Sequence[np.ndarray], percentiles: Sequence[float]) -> ChannelScaling:
    low, scale = [], []
    for values in samples:
        lo, hi = np.percentile(values, [float(percentiles[0]), float(percentiles[1])])
        low.append(float(lo))
        scale.append(float(hi - lo) if hi > lo else 1.0)  # a flat channel is shifted only
    return ChannelScaling(tuple(low), tuple(scale))


def image_scaling(source: Any, percentiles: Sequence[float]) -> ChannelScaling:
    """The scaling of an image source (``.shape`` (t, c, z, y, x), ``.read(t, zs, ys, xs)``):
    the percentiles of every channel over all time points, read slab by slab.

    Exact up to :data:`EXACT_PERCENTILE_VOXELS` voxels per channel (so prediction scales an
    image exactly as training did); beyond that, every k-th row and column count.
    """
    t, c, z, y, x = (int(s) for s in source.shape)
    step = max(1, math.ceil(math.sqrt(t * z * y * x / EXACT_PERCENTILE_VOXELS)))
    slab = max(1, (2**24) // max(1, y * x))
    parts: list[list[np.ndarray]] = [[] for _ in range(c)]
    for frame in range(t):
        for z0 in range(0, z, slab):
            block = np.asarray(source.read(frame, slice(z0, min(z, z0 + slab)),
                                           slice(None, None, step), slice(None, None, step)))
            for channel in range(c):
                parts[channel].append(block[channel].ravel())
    return _scaling([np.concatenate(p) for p in parts], percentiles)


class ScaledSource:
    """An image source whose blocks come out percentile-normalised (prediction's input)."""

    def __init__(self, source: Any, scaling: ChannelScaling):
        self.source, self.scaling = source, scaling
        self.shape = tuple(source.shape)

    def read(self, t: int, zs: slice, ys: slice, xs: slice) -> np.ndarray:
        return self.scaling.apply(self.source.read(t, zs, ys, xs))


def percentile_normalize(data: np.ndarray, percentiles: Sequence[float] | None,
                         channel_axis: int = -4) -> np.ndarray:
    """Map the ``percentiles`` (low, high) of every channel to 0 and 1, as float32.

    data : (..., c, z, y, x) ndarray (``channel_axis`` -4), e.g. (t, c, z, y, x) or
        (c, z, y, x); percentiles are taken per channel over everything else.
    percentiles : (low, high) in [0, 100], or None to only convert to float32.
    A channel whose two percentiles are equal (a flat image) is shifted to 0, not scaled.
    Gives the same values as :class:`ScaledSource` over the same image.
    """
    out = np.asarray(data, dtype=np.float32)
    if percentiles is None:
        return out
    moved = np.moveaxis(out, channel_axis, 0)
    return _scaling(list(moved), percentiles).apply(out, channel_axis)


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
