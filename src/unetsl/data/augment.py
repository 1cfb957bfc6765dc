"""Patch extraction with augmentation that keeps labels aligned with images.

Every spatial change (a source's rotation angles, elastic deformation, flips, 90-degree
rotations) is applied to the input, the label and the weights alike. Inputs and weights are
interpolated linearly; **labels are resampled with nearest neighbour, never interpolated**,
so label values stay valid bit masks / classes. Rotations and deformations are in the y-x
plane (each z slice moves the same way), about the patch centre; pixels needed from outside
the patch come from the surrounding region (mirrored at the region's border, so a training
patch never reads validation pixels).

All random choices come from the ``numpy.random.Generator`` passed in, so a seed fixes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["AugmentSettings", "Transform", "apply_intensity", "displacement_field",
           "draw_transform", "extract_patch"]

ELASTIC_SPACING = 16  # pixels between the control points of the elastic field


@dataclass(frozen=True)
class AugmentSettings:
    """The config's "augment ..." keys; everything off by default."""

    flips: bool = False
    rotate90: bool = False
    intensity_scale: float = 0.0
    intensity_shift: float = 0.0
    elastic: float = 0.0

    @classmethod
    def from_config(cls, get: Callable[[str], Any]) -> AugmentSettings:
        """Read from a key lookup (the config, or a source's own settings over it)."""
        return cls(flips=bool(get("augment flips")), rotate90=bool(get("augment rotate 90")),
                   intensity_scale=float(get("augment intensity scale")),
                   intensity_shift=float(get("augment intensity shift")),
                   elastic=float(get("augment elastic")))

    @property
    def active(self) -> bool:
        return bool(self.flips or self.rotate90 or self.intensity_scale
                    or self.intensity_shift or self.elastic)


@dataclass(frozen=True)
class Transform:
    """One patch's augmentation.

    angle : in-plane rotation in degrees (90 turns the patch like ``np.rot90(k=1)``).
    displacement : (2, py, px) elastic offsets in pixels (dy, dx), or None.
    """

    angle: float = 0.0
    displacement: np.ndarray | None = None
    flip_y: bool = False
    flip_x: bool = False
    k90: int = 0
    scale: float = 1.0
    shift: float = 0.0

    @property
    def warps(self) -> bool:
        return self.displacement is not None or self.angle % 360 != 0


IDENTITY = Transform()


def displacement_field(rng: np.random.Generator, shape_yx: Sequence[int], amplitude: float,
                       spacing: int = ELASTIC_SPACING) -> np.ndarray:
    """A smooth random (2, py, px) field: uniform values in [-amplitude, amplitude] at control
    points every ``spacing`` pixels, interpolated with cubic splines."""
    py, px = (int(s) for s in shape_yx)
    ny, nx = max(2, math.ceil(py / spacing) + 1), max(2, math.ceil(px / spacing) + 1)
    coarse = rng.uniform(-amplitude, amplitude, size=(2, ny, nx))
    gy, gx = np.meshgrid(np.linspace(0, ny - 1, py), np.linspace(0, nx - 1, px), indexing="ij")
    return np.stack([ndimage.map_coordinates(c, [gy, gx], order=3, mode="nearest")
                     for c in coarse]).astype(np.float32)


def draw_transform(rng: np.random.Generator, settings: AugmentSettings,
                   patch_yx: Sequence[int], angle: float = 0.0) -> Transform:
    """Draw one patch's augmentation; ``angle`` is the source rotation of this patch."""
    if not settings.active:
        return Transform(angle=angle) if angle else IDENTITY
    py, px = (int(s) for s in patch_yx)
    displacement = (displacement_field(rng, (py, px), settings.elastic)
                    if settings.elastic > 0 else None)
    flip_y = flip_x = False
    if settings.flips:
        flip_y, flip_x = (bool(b) for b in rng.integers(0, 2, size=2))
    k90 = 0
    if settings.rotate90:
        k90 = int(rng.integers(0, 4)) if py == px else 2 * int(rng.integers(0, 2))
    scale = 1.0
    if settings.intensity_scale:
        scale = float(rng.uniform(1 - settings.intensity_scale, 1 + settings.intensity_scale))
    shift = 0.0
    if settings.intensity_shift:
        shift = float(rng.uniform(-settings.intensity_shift, settings.intensity_shift))
    return Transform(angle=angle, displacement=displacement, flip_y=flip_y, flip_x=flip_x,
                     k90=k90, scale=scale, shift=shift)


def _source_coordinates(origin_yx: Sequence[int], patch_yx: Sequence[int],
                        transform: Transform) -> tuple[np.ndarray, np.ndarray]:
    """Where each output pixel (py, px) is read from, in the volume's (y, x)."""
    py, px = patch_yx
    cy, cx = origin_yx[0] + (py - 1) / 2, origin_yx[1] + (px - 1) / 2
    dy, dx = np.meshgrid(np.arange(py) - (py - 1) / 2, np.arange(px) - (px - 1) / 2,
                         indexing="ij")
    theta = math.radians(transform.angle)
    cos, sin = math.cos(theta), math.sin(theta)
    sy = cy + cos * dy + sin * dx
    sx = cx - sin * dy + cos * dx
    if transform.displacement is not None:
        sy = sy + transform.displacement[0]
        sx = sx + transform.displacement[1]
    return sy, sx


def extract_patch(image: np.ndarray, label: np.ndarray, weights: np.ndarray | None,
                  origin: Sequence[int], patch: Sequence[int],
                  bounds: tuple[Sequence[int], Sequence[int]] | None = None,
                  transform: Transform = IDENTITY
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Cut one patch (with its spatial augmentation) from a volume.

    image : (c, Z, Y, X); label : (Z, Y, X); weights : (Z, Y, X) or None.
    origin : (z, y, x) of the patch corner (before rotation / deformation).
    patch : (pz, py, px).
    bounds : (start, stop) (z, y, x) of the region pixels may be read from (default: the
        whole volume); coordinates outside are mirrored back inside.

    Returns x (c, pz, py, px) float32, label (pz, py, px) in the label's dtype, weights
    (pz, py, px) float32 or None. Intensity changes are not applied here (see
    :func:`apply_intensity`, used after normalisation).
    """
    oz, oy, ox = (int(o) for o in origin)
    pz, py, px = (int(p) for p in patch)
    if not transform.warps:
        x = image[:, oz:oz + pz, oy:oy + py, ox:ox + px].astype(np.float32)
        lab = label[oz:oz + pz, oy:oy + py, ox:ox + px]
        w = None if weights is None else weights[oz:oz + pz, oy:oy + py, ox:ox + px]
    else:
        x, lab, w = _warped(image, label, weights, (oz, oy, ox), (pz, py, px), bounds, transform)
    if transform.flip_y:
        x, lab = x[..., ::-1, :], lab[..., ::-1, :]
        w = None if w is None else w[..., ::-1, :]
    if transform.flip_x:
        x, lab = x[..., ::-1], lab[..., ::-1]
        w = None if w is None else w[..., ::-1]
    if transform.k90:
        x = np.rot90(x, transform.k90, axes=(-2, -1))
        lab = np.rot90(lab, transform.k90, axes=(-2, -1))
        w = None if w is None else np.rot90(w, transform.k90, axes=(-2, -1))
    x = np.ascontiguousarray(x, dtype=np.float32)
    lab = np.ascontiguousarray(lab)
    w = None if w is None else np.ascontiguousarray(w, dtype=np.float32)
    return x, lab, w


def _warped(image, label, weights, origin, patch, bounds, transform):
    oz, oy, ox = origin
    pz, py, px = patch
    if bounds is None:
        bounds = ((0, 0, 0), label.shape)
    (_, y_lo, x_lo), (_, y_hi, x_hi) = bounds
    sy, sx = _source_coordinates((oy, ox), (py, px), transform)
    # read only the window the coordinates need, clipped to the region: "mirror" then
    # reflects at the region's border exactly as it would on the whole region
    y0 = max(y_lo, math.floor(sy.min()) - 1)
    y1 = min(y_hi, math.ceil(sy.max()) + 2)
    x0 = max(x_lo, math.floor(sx.min()) - 1)
    x1 = min(x_hi, math.ceil(sx.max()) + 2)
    coords = np.stack([sy - y0, sx - x0])
    c = image.shape[0]
    x = np.empty((c, pz, py, px), dtype=np.float32)
    lab = np.empty((pz, py, px), dtype=label.dtype)
    w = None if weights is None else np.empty((pz, py, px), dtype=np.float32)
    for k in range(pz):
        z = oz + k
        for ch in range(c):
            window = np.asarray(image[ch, z, y0:y1, x0:x1], dtype=np.float32)
            ndimage.map_coordinates(window, coords, output=x[ch, k], order=1, mode="mirror")
        ndimage.map_coordinates(label[z, y0:y1, x0:x1], coords, output=lab[k], order=0,
                                mode="mirror")
        if w is not None:
            ndimage.map_coordinates(weights[z, y0:y1, x0:x1], coords, output=w[k], order=1,
                                    mode="mirror")
    return x, lab, w


def apply_intensity(x: np.ndarray, transform: Transform) -> np.ndarray:
    """Scale a (c, z, y, x) float32 patch and shift it by ``shift`` of its std, in place."""
    if transform.scale == 1.0 and transform.shift == 0.0:
        return x
    std = x.reshape(x.shape[0], -1).std(axis=1).reshape(-1, 1, 1, 1)
    x *= transform.scale
    x += transform.shift * std
    return x
