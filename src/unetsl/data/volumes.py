"""Volumes: the image, label and weights arrays of one source pair, loaded and checked."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unetsl.config.model_config import Config
from unetsl.data.normalize import percentile_normalize
from unetsl.data.partial import known_only
from unetsl.data.sources import FilePair, Source, parse_sources, shape_mismatch
from unetsl.errors import UnetslError
from unetsl.io.tiff import match_channels, read_image

log = logging.getLogger("unetsl")


# --- volumes ---------------------------------------------------------------------------

@dataclass
class Volume:
    """One time frame of one image pair, ready for patch sampling.

    image : (c, z, y, x) ndarray, the file's dtype, or float32 after percentile normalisation.
    label : (z, y, x) ndarray, channel 0 of the label image, the file's dtype.
    weights : (z, y, x) float32 per-pixel loss weights (weighted sources), else None.
    """

    image: np.ndarray
    label: np.ndarray
    weights: np.ndarray | None
    source: Source
    pair: FilePair
    frame: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """(z, y, x)."""
        return tuple(self.label.shape)  # type: ignore[return-value]

    @property
    def name(self) -> str:
        return f"{self.pair.image.name} frame {self.frame}"


def _pad_to_patch(arrays: list[np.ndarray | None], patch_zyx: Sequence[int], where: str
                  ) -> list[np.ndarray | None]:
    """Reflect-pad (z, y, x) trailing axes up to the patch size (centred), with a warning."""
    shape = next(a for a in arrays if a is not None).shape[-3:]
    pads = [(max(0, p - s) // 2, max(0, p - s) - max(0, p - s) // 2)
            for s, p in zip(shape, patch_zyx)]
    if not any(sum(p) for p in pads):
        return arrays
    log.warning(f"{where}(z, y, x) = {tuple(shape)} is smaller than the patch "
                f"{tuple(patch_zyx)}; padded by reflection")
    out = []
    for a in arrays:
        if a is None:
            out.append(None)
            continue
        lead = [(0, 0)] * (a.ndim - 3)
        out.append(np.pad(a, lead + pads, mode="reflect"))
    return out


def _target_channels(source: Source, n_labels: int) -> int:
    try:
        return source.labeller(np.zeros((1, 1, 1), dtype=np.uint8), n_labels).shape[0]
    except UnetslError as err:
        raise UnetslError(f"{source.where}{err}") from None


def check_source_labels(source: Source, n_labels: int) -> None:
    """The source's labeller must give the model's ``n_labels`` target channels."""
    if source.n_labels is not None and source.n_labels != n_labels:
        raise UnetslError(f'{source.where}"n labels" is {source.n_labels} but the model has '
                          f"{n_labels} outputs")
    channels = _target_channels(source, n_labels)
    if channels != n_labels:
        raise UnetslError(f"{source.where}labeller {source.labeller.name!r} gives {channels} "
                          f"target channel(s) but the model has {n_labels} (\"n labels\")")


def _label_values(label: np.ndarray) -> np.ndarray:
    """The distinct values of a label image (fast for 8/16-bit images)."""
    if label.dtype in (np.uint8, np.uint16):
        return np.flatnonzero(np.bincount(label.ravel(), minlength=1)).astype(label.dtype)
    return np.unique(label)


def check_label_values(source: Source, label: np.ndarray, path: Path, n_labels: int) -> None:
    """Run the labeller on the label's distinct values, so a bad file fails at load, named."""
    values = _label_values(label)
    try:
        source.labeller(values.reshape(1, 1, -1), n_labels)
    except UnetslError as err:
        raise UnetslError(f"{source.where}{path}: {err}") from None


def _check_finite(data: np.ndarray, where: str, what: str) -> None:
    """A float image with NaN or infinite pixels is refused by name: it would make the loss NaN."""
    if data.dtype.kind != "f":
        return
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise UnetslError(f"{where}: {bad} NaN or infinite pixel(s) of {data.size} in the "
                          f"{what}; replace them before training")


def load_source_volumes(source: Source, percentiles: Sequence[float] | None, *,
                        patch_shape: Sequence[int], n_labels: int,
                        unknown: Any = "max") -> list[Volume]:
    """Read every pair of ``source`` and split it into one :class:`Volume` per time frame.

    percentiles : the source's "normalization percentiles" (low, high), or None.
    unknown : its "unknown label" (:mod:`unetsl.data.partial`): voxels of that value get
        label 0 and weight 0.
    """
    check_source_labels(source, n_labels)
    c, pz, py, px = (int(v) for v in patch_shape)
    volumes = []
    for pair in source.pairs():
        image = read_image(pair.image, depth_wanted=pz)
        _check_finite(image.data, f"{source.where}{pair.image}", "image")
        data = match_channels(image.data, c, source=str(pair.image))
        label = read_image(pair.label, depth_wanted=pz).data
        _check_finite(label, f"{source.where}{pair.label}", "label image")
        weights = read_image(pair.weights, depth_wanted=pz).data if pair.weights else None
        for other, path in ((label, pair.label), (weights, pair.weights)):
            if other is None:
                continue
            a, b = data.shape, other.shape
            if (a[0], *a[2:]) != (b[0], *b[2:]):
                raise UnetslError(shape_mismatch(pair.image, image.data.shape, path, b,
                                                 source.where))
        if percentiles is not None:
            data = percentile_normalize(data, percentiles, channel_axis=1)
        label = label[:, 0]
        if label.dtype == np.bool_:
            label = label.astype(np.uint8)
        if weights is not None:
            weights = weights[:, 0].astype(np.float32)
            if (weights < 0).any() or not np.isfinite(weights).all():
                raise UnetslError(f"{source.where}{pair.weights}: weights must be finite "
                                  "and non-negative")
        label, weights = known_only(label, weights, unknown, f"{source.where}{pair.label}")
        check_label_values(source, label, pair.label, n_labels)
        where = f"{source.where}{pair.image.name}: "
        data, label, weights = _pad_to_patch([data, label, weights], (pz, py, px), where)
        for t in range(data.shape[0]):
            volumes.append(Volume(
                image=np.ascontiguousarray(data[t]),
                label=np.ascontiguousarray(label[t]),
                weights=None if weights is None else np.ascontiguousarray(weights[t]),
                source=source, pair=pair, frame=t))
    return volumes


def load_volumes(cfg: Config, *, patch_shape: Sequence[int], n_labels: int) -> list[Volume]:
    """Every volume (one per image pair and time frame) of every source of ``cfg``.

    patch_shape : (c, z, y, x) of the model input; z > 1 reads 2D time series with time
        as depth (the original's rule), c is matched with :func:`unetsl.io.tiff.match_channels`,
        images smaller than the patch are reflect-padded.
    """
    volumes: list[Volume] = []
    for source in parse_sources(cfg):
        percentiles = source.setting(cfg, "normalization percentiles")
        volumes += load_source_volumes(source, percentiles, patch_shape=patch_shape,
                                       n_labels=n_labels,
                                       unknown=source.setting(cfg, "unknown label"))
    return volumes
