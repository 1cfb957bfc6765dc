"""Where patches come from: the strided grid, regions, and the train/validation split.

All shapes here are (z, y, x) (the channel element of the config's (c, z, y, x) "stride"
is dropped by the caller).

Grid (the "stride" key): origins at multiples of the stride along every axis, plus one
last origin flush with the far border, so every voxel is inside some patch (the original
left the remainder beyond the last full stride unseen). A stride of 0 means "one patch
size".

Validation split ("validation fraction", "validation split"): data are cut into units that
never share a voxel: whole volumes ("files") or blocks of at least one patch per axis
("regions"). A seeded shuffle puts ``round(fraction * units)`` of them (at least one) in
validation. A volume that gives a block to validation trains on the whole rest of it: a
training patch may lie anywhere that touches no validation block (``Region.held``), so no
validation pixel is ever in a training patch and a single image loses only the patches that
would overlap its validation blocks (earlier versions cut training patches inside single
blocks, which left a patch-sized image ~1 position per block).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from unetsl.errors import UnetslError

__all__ = ["Region", "axis_origins", "cut_blocks", "grid_origins", "split_regions"]

Shape3 = tuple[int, int, int]


def axis_origins(size: int, patch: int, stride: int) -> np.ndarray:
    """Origins along one axis: 0, stride, 2 stride, ... and the last one flush with the end.

    >>> axis_origins(100, 64, 32).tolist()
    [0, 32, 36]
    """
    if size < patch:
        raise UnetslError(f"axis of size {size} is smaller than the patch ({patch})")
    step = stride if stride > 0 else patch
    origins = list(range(0, size - patch + 1, step))
    if origins[-1] != size - patch:
        origins.append(size - patch)
    return np.asarray(origins, dtype=np.int64)


def grid_origins(shape: Sequence[int], patch: Sequence[int], stride: Sequence[int]) -> np.ndarray:
    """(n, 3) int64 array of (z, y, x) patch origins covering a (z, y, x) ``shape``."""
    axes = [axis_origins(s, p, st) for s, p, st in zip(shape, patch, stride, strict=True)]
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


@dataclass(frozen=True)
class Region:
    """A box of one volume from which patches are cut: ``start`` <= voxel < ``stop``,
    touching none of the ``held`` boxes ((start, stop) of validation blocks)."""

    volume: int
    start: Shape3
    stop: Shape3
    held: tuple[tuple[Shape3, Shape3], ...] = ()

    def allows(self, origin: Sequence[int], patch: Sequence[int]) -> bool:
        """True when a patch at ``origin`` shares no voxel with a held box."""
        return not any(all(o < b and o + p > a for o, p, a, b in zip(origin, patch, lo, hi))
                       for lo, hi in self.held)

    @property
    def shape(self) -> Shape3:
        return tuple(b - a for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    def grid(self, patch: Sequence[int], stride: Sequence[int]) -> np.ndarray:
        """Absolute (n, 3) patch origins of the strided grid inside this region (those
        that touch no held box)."""
        origins = grid_origins(self.shape, patch, stride) + np.asarray(self.start)
        if not self.held:
            return origins
        return origins[np.asarray([self.allows(o, patch) for o in origins], dtype=bool)]


def cut_blocks(shape: Sequence[int], patch: Sequence[int]) -> list[tuple[Shape3, Shape3]]:
    """Cut a (z, y, x) box into blocks, each at least one patch in every axis.

    Axis of size s is cut into ``s // p`` nearly equal pieces. Returns (start, stop) pairs.
    """
    bounds = []
    for s, p in zip(shape, patch, strict=True):
        k = max(1, s // p)
        bounds.append(np.linspace(0, s, k + 1).round().astype(int))
    blocks = []
    for iz in range(len(bounds[0]) - 1):
        for iy in range(len(bounds[1]) - 1):
            for ix in range(len(bounds[2]) - 1):
                start = (int(bounds[0][iz]), int(bounds[1][iy]), int(bounds[2][ix]))
                stop = (int(bounds[0][iz + 1]), int(bounds[1][iy + 1]), int(bounds[2][ix + 1]))
                blocks.append((start, stop))
    return blocks


def split_regions(shapes: Sequence[Sequence[int]], patch: Sequence[int], fraction: float,
                  mode: str = "regions", seed: int | None = 0
                  ) -> tuple[list[Region], list[Region]]:
    """Split volumes of (z, y, x) ``shapes`` into training and validation regions.

    fraction : "validation fraction"; 0 gives every volume whole to training.
    mode : "regions" (blocks of at least one patch) or "files" (whole volumes).
    seed : the split depends only on the shapes, ``fraction``, ``mode`` and ``seed``
        (None counts as 0), so it is the same in every run and every resumed training.

    A volume with no validation block is kept whole for training; one with validation
    blocks trains on the whole volume with those blocks ``held`` (no training patch touches
    them); one whose every block is in validation gives none to training.
    """
    whole = [Region(i, (0, 0, 0), tuple(int(s) for s in shape))  # type: ignore[arg-type]
             for i, shape in enumerate(shapes)]
    if fraction <= 0:
        return whole, []
    if mode == "files":
        units = whole
    elif mode == "regions":
        units = [Region(i, start, stop) for i, shape in enumerate(shapes)
                 for start, stop in cut_blocks(shape, patch)]
    else:
        raise UnetslError(f'"validation split" must be "regions" or "files", got {mode!r}')
    if len(units) < 2:
        what = "image (time frame)" if mode == "files" else "block of one patch"
        raise UnetslError(
            f'"validation fraction" {fraction} needs at least 2 units to hold one out, but the '
            f"data make only {len(units)} {what}; add data, use smaller patches, or set "
            '"validation fraction" to 0'
            + (' or "validation split" to "regions"' if mode == "files" else ""))
    rng = np.random.default_rng(0 if seed is None else seed)
    order = rng.permutation(len(units))
    n_val = min(len(units) - 1, max(1, int(round(fraction * len(units)))))
    chosen = set(order[:n_val].tolist())
    validation = [units[i] for i in sorted(chosen)]
    training = []
    for region in whole:
        boxes = tuple((v.start, v.stop) for v in validation if v.volume == region.volume)
        held = sum(int(np.prod(np.subtract(b, a))) for a, b in boxes)
        if held < int(np.prod(region.shape)):  # the blocks are disjoint
            training.append(Region(region.volume, region.start, region.stop, boxes))
    return training, validation
