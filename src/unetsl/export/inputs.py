"""What an export starts from: the config settings, the test tile and its preprocessing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from unetsl.config.model_config import Config
from unetsl.io.tiff import match_channels, read_image

log = logging.getLogger("unetsl")


def _config_settings(config_path: Path | None) -> dict[str, Any]:
    settings: dict[str, Any] = {"normalize samples": False, "normalization percentiles": None,
                                "labeller": None}
    if config_path is None:
        return settings
    cfg = Config.load(config_path)
    settings["normalize samples"] = bool(cfg.get("normalize samples", False))
    settings["normalization percentiles"] = cfg.get("normalization percentiles")
    labellers = {s.get("labeller") for s in cfg.get("data sources", []) or []
                 if isinstance(s, dict)} - {None}
    if len(labellers) == 1:
        settings["labeller"] = labellers.pop()
    return settings


def _synthetic_tile(shape: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    """(c, z, y, x) smooth random intensities in 0..1000 when no sample image is given."""

    rng = np.random.default_rng(seed)
    noise = rng.normal(size=shape).astype(np.float32)
    sigma = (0,) + tuple(0 if s == 1 else 2 for s in shape[1:])
    smooth = ndimage.gaussian_filter(noise, sigma)
    smooth -= smooth.min()
    return (1000.0 * smooth / max(float(smooth.max()), 1e-6)).astype(np.float32)


def _sample_tile(sample: Path, patch: tuple[int, int, int, int]):
    """The central (c, z, y, x) patch of the sample's first time point, and the image."""

    c, z, y, x = patch
    image = read_image(sample, depth_wanted=z)
    data = match_channels(image.data, c, source=str(sample))[0].astype(np.float32)
    pads = [(0, 0)]
    for size, p in zip(data.shape[1:], patch[1:]):
        extra = max(0, p - size)
        pads.append((extra // 2, extra - extra // 2))
    if any(sum(p) for p in pads):
        data = np.pad(data, pads, mode="edge")
    starts = [(size - p) // 2 for size, p in zip(data.shape[1:], patch[1:])]
    tile = data[:, starts[0]:starts[0] + z, starts[1]:starts[1] + y, starts[2]:starts[2] + x]
    return np.ascontiguousarray(tile), image


def _preprocess(tile: np.ndarray, settings: dict[str, Any]) -> np.ndarray:
    """(1, z, y, x, c) raw tile -> what the model sees, as bioimage.io tools will compute it."""
    x = tile.astype(np.float32)
    axes = (1, 2, 3)  # per sample and channel, over z, y, x
    percentiles = settings["normalization percentiles"]
    if percentiles is not None:
        lo = np.percentile(x, percentiles[0], axis=axes, keepdims=True)
        hi = np.percentile(x, percentiles[1], axis=axes, keepdims=True)
        x = (x - lo) / (hi - lo + 1e-6)
    if settings["normalize samples"]:
        mean = x.mean(axis=axes, keepdims=True)
        std = x.std(axis=axes, keepdims=True)
        x = (x - mean) / (std + 1e-6)
    return x.astype(np.float32)


def _preprocessing_descr(settings: dict[str, Any], space_ids: list[str]) -> list:
    """The input's bioimage.io preprocessing steps (bioimageio.spec descriptions): the same
    operations, in the same order, as :func:`_preprocess` applies to the test input."""
    from bioimageio.spec.model import v0_5

    axes = [v0_5.AxisId(a) for a in space_ids]
    steps: list = [v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32"))]
    percentiles = settings["normalization percentiles"]
    if percentiles is not None:
        steps.append(v0_5.ScaleRangeDescr(kwargs=v0_5.ScaleRangeKwargs(
            axes=axes, min_percentile=float(percentiles[0]),
            max_percentile=float(percentiles[1]), eps=1e-6)))
    if settings["normalize samples"]:
        steps.append(v0_5.ZeroMeanUnitVarianceDescr(
            kwargs=v0_5.ZeroMeanUnitVarianceKwargs(axes=axes, eps=1e-6)))
    return steps
