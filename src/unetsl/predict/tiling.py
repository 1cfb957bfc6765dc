"""Tiling plans: which tiles, how large, overlapping how much, blended by which window."""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from unetsl.errors import UnetslError
from unetsl.predict.reach import _REACH_CACHE, Reach, receptive_reach

log = logging.getLogger("unetsl")


EXACT_PREFERENCE = 1.25  # choose_tile: an exact tiling may cost this much more than a blended one
MAX_OVERLAP_FRACTION = 0.25  # default overlap never exceeds a quarter of the patch (speed)

# --------------------------------------------------------------------------------------------
# Tiling plan and windows
# --------------------------------------------------------------------------------------------


def window_1d(patch: int, border: int, taper: int, first: bool, last: bool) -> np.ndarray:
    """Weights along one axis of a tile: 0 on ``border`` voxels at each edge shared with a
    neighbour tile, a raised-cosine ramp over ``taper`` voxels, 1 in the middle. Edges that
    are the image border (``first``/``last``) keep weight 1: no other tile sees them."""
    w = np.ones(patch, dtype=np.float32)
    ramp = np.sin(0.5 * np.pi * (np.arange(taper, dtype=np.float64) + 0.5) / max(taper, 1)) ** 2
    ramp = np.concatenate([np.zeros(border), ramp]).astype(np.float32)
    ramp = ramp[:patch]
    if not first and len(ramp):
        w[:len(ramp)] = np.minimum(w[:len(ramp)], ramp)
    if not last and len(ramp):
        w[patch - len(ramp):] = np.minimum(w[patch - len(ramp):], ramp[::-1])
    return w


@dataclass(frozen=True)
class AxisPlan:
    """Tiles along one axis: origins (image coordinates; negative = reflected padding)."""

    size: int
    patch: int
    origins: tuple[int, ...]
    border: int
    taper: int

    def windows(self) -> list[np.ndarray]:
        n = len(self.origins)
        return [window_1d(self.patch, self.border, self.taper, i == 0, i == n - 1)
                for i in range(n)]

    @property
    def extent(self) -> tuple[int, int]:
        """The (start, stop) of the image region the tiles read, padding included."""
        return self.origins[0], self.origins[-1] + self.patch


def _axis_plan(size: int, patch: int, overlap: int, align: int, reach: int) -> AxisPlan:
    if size <= patch:
        return AxisPlan(size, patch, (-((patch - size) // 2),), 0, 0)
    overlap = min(max(overlap, 0), patch - 1)
    step = max(align, (patch - overlap) // align * align)
    last = -(-(size - patch) // align) * align  # flush with the far border (rounded to align)
    origins = tuple(range(0, last, step)) + (last,)
    used = patch - step  # the overlap actually obtained
    if used >= 2 * reach + 1:
        border = reach
    else:
        border = used // 4
    return AxisPlan(size, patch, origins, border, max(used - 2 * border, 0))


def default_overlap(patch: Sequence[int], reach: Reach) -> tuple[int, int, int]:
    """Twice the reach plus a ramp, at most a quarter of the patch, a multiple of the pooling.

    Twice the reach makes the result equal to a whole-image prediction; the cap keeps the
    number of tiles (and time) within about (4/3)^3 = 2.4x of non-overlapping tiles in 3D.
    Beyond the cap the seams are still hidden by the blending, but are not exact.
    """
    result = []
    for p, r, a in zip(patch, reach.reach, reach.align):
        want = 2 * r + max(2, p // 16)
        want = -(-want // a) * a
        cap = int(p * MAX_OVERLAP_FRACTION) // a * a
        result.append(max(0, min(want, cap)))
    return tuple(result)


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one (z, y, x) volume go and how they are weighted."""

    axes: tuple[AxisPlan, AxisPlan, AxisPlan]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(a.size for a in self.axes)

    @property
    def patch(self) -> tuple[int, int, int]:
        return tuple(a.patch for a in self.axes)

    @property
    def overlap(self) -> tuple[int, int, int]:
        return tuple(a.border * 2 + a.taper for a in self.axes)

    def count(self) -> int:
        return math.prod(len(a.origins) for a in self.axes)

    @property
    def stream_axis(self) -> int:
        """0 (z) or 1 (y): the axis visited row by row; the one with more tiles, so that
        the accumulation buffer (one tile deep along it) is the smaller."""
        return 0 if len(self.axes[0].origins) >= len(self.axes[1].origins) else 1


def plan_tiles(shape: Sequence[int], patch: Sequence[int], reach: Reach,
               overlap: Sequence[int] | None = None) -> TilePlan:
    """Plan the tiles of a (z, y, x) volume for a (z, y, x) patch."""
    if overlap is None:
        overlap = default_overlap(patch, reach)
    if len(overlap) != 3 or any(int(o) < 0 for o in overlap):
        raise UnetslError(f'"overlap" must be 3 integers >= 0 (z, y, x), got {list(overlap)}')
    return TilePlan(tuple(_axis_plan(int(s), int(p), int(o), a, r)
                          for s, p, o, a, r in zip(shape, patch, overlap, reach.align,
                                                   reach.reach)))


def _axis_candidates(size: int, patch: int, align: int, limit: int = 48) -> list[int]:
    """Tile sizes worth trying along one axis: the patch, then multiples of the pooling
    factor up to the (aligned) image size, at most ``limit`` of them."""
    top = -(-size // align) * align
    if top <= patch:
        return [patch]
    step = align * max(1, -(-(top - patch) // (align * limit)))
    sizes = list(range(patch, top, step)) + [top]
    return sizes


def choose_tile(shape: Sequence[int], patch: Sequence[int], reach: Reach, *,
                budget: int, overlap: Sequence[int] | None = None,
                fixed: Sequence[bool] = (False, False, False)) -> tuple[int, int, int]:
    """The (z, y, x) tile that predicts a volume with the fewest voxels computed in total
    (tiles x tile size: overlap is computed twice), no larger than ``budget`` voxels.

    Tiles larger than the training patch need relatively less overlap: for a 64x256x256
    stack and a 16x64x64 patch, 125 patch tiles compute 8.2 M voxels, 5 tiles of
    16x256x256 compute 5.2 M. The cheapest tiling whose overlap makes the result exact
    (equal to a whole-image prediction) is taken when it costs at most ``EXACT_PREFERENCE``
    times the cheapest blended one. ``fixed`` axes keep the patch size (2-D models: z).
    """
    per_axis = []
    for size, p, a, r, keep, i in zip(shape, patch, reach.align, reach.reach, fixed, range(3)):
        sizes = [p] if keep else _axis_candidates(int(size), int(p), int(a))
        costs, exact = [], []
        for t in sizes:
            o = (overlap[i] if overlap is not None
                 else default_overlap((t, t, t), Reach((r,) * 3, (a,) * 3))[0])
            plan = _axis_plan(int(size), t, int(o), int(a), int(r))
            costs.append(len(plan.origins) * t)
            exact.append(len(plan.origins) == 1 or plan.border >= r)
        per_axis.append((np.array(sizes, dtype=np.int64), np.array(costs, dtype=np.float64),
                         np.array(exact)))
    (sz, cz, ez), (sy, cy, ey), (sx, cx, ex) = per_axis
    voxels = sz[:, None, None] * sy[None, :, None] * sx[None, None, :]
    cost = cz[:, None, None] * cy[None, :, None] * cx[None, None, :]
    exact = ez[:, None, None] & ey[None, :, None] & ex[None, None, :]
    base = math.prod(int(p) for p in patch)
    cost = np.where((voxels <= max(budget, base)) | (voxels == base), cost, np.inf)

    def cheapest(c: np.ndarray) -> tuple[int, ...]:  # equal cost: the smaller tile (memory)
        return np.unravel_index(np.lexsort((voxels.ravel(), c.ravel()))[0], c.shape)

    best = cheapest(cost)
    best_exact = cheapest(np.where(exact, cost, np.inf))
    if cost[best_exact] <= EXACT_PREFERENCE * cost[best]:
        best = best_exact
    return int(sz[best[0]]), int(sy[best[1]]), int(sx[best[2]])


_RESIZED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_for_tiles(model, shape: Sequence[int], *, batch_size: int,
                    overlap: Sequence[int] | None = None,
                    tile: Sequence[int] | None = None, reach: Reach | None = None):
    """The model to tile a (z, y, x) volume with, and how many of its tiles go in a batch.

    tile : (z, y, x) tile size; default ``choose_tile`` within the memory of ``batch_size``
        training patches, growing only along axes where the training patch covers the
        receptive field (so that the result is what the trained network gives). The model
        is rebuilt for that size (``model.with_input_patch``, shared weights); a model that
        cannot be resized keeps its training patch (default) or raises UnetslError (a tile
        was asked for).
    Returns (model, tiles per batch).
    """
    from unetsl.nets.model_files import with_input_patch
    from unetsl.nets.shapes import model_patch_shape

    _, *patch = model_patch_shape(model)
    reach = reach or receptive_reach(model)
    budget = int(batch_size) * math.prod(patch)
    if tile is None:
        # An axis along which the training patch is narrower than the receptive field never
        # grows: every voxel the network learned from saw the zero padding along it, and a
        # larger tile would show it more context than it was trained with (and change the
        # result; benchmarks/z_tiles.py measured lower F1 with deeper or abutting z tiles on
        # the 3D example and the demo model). 2-D models stay 2-D.
        fixed = tuple(p == 1 or p < 2 * r + 1 for p, r in zip(patch, reach.reach))
        chosen = choose_tile(shape, patch, reach, budget=budget, overlap=overlap, fixed=fixed)
    else:
        chosen = tuple(int(t) for t in tile)
        bad = [t for t, a in zip(chosen, reach.align) if t < 1 or t % a]
        if len(chosen) != 3 or bad:
            raise UnetslError(f'"tile shape" must be 3 integers (z, y, x), multiples of the '
                              f"model's pooling factor {list(reach.align)}, got {list(chosen)}")
    if chosen != tuple(patch):
        resized = _RESIZED.setdefault(model, {}).get(chosen)
        try:
            if resized is None:
                resized = with_input_patch(model, chosen)
        except UnetslError as exc:
            if tile is not None:
                raise UnetslError(f'"tile shape" {list(chosen)}: {exc}') from None
            log.info("tiles of the training patch %s: %s", tuple(patch), exc)
        else:
            # kept per model: a new model would trace its predict function again
            _RESIZED[model][chosen] = resized
            _REACH_CACHE[resized] = reach
            model = resized
    per_batch = max(1, budget // math.prod(model_patch_shape(model)[1:]))
    return model, per_batch

