"""Tiled prediction of images of any size, blended without seams, and reductions to labels.

Why tiles overlap by what they do: a U-Net's output near a tile edge is computed from the
zero padding of its convolutions, not from the image, up to the network's *reach* (half its
receptive field) from the edge. Tiles therefore overlap, and each tile's probabilities are
weighted by a window that is 0 on a margin of up to ``reach`` voxels at every edge shared
with a neighbour, rises smoothly (raised cosine) and is 1 in the middle; the summed
contributions are divided by the summed weights. When the overlap covers twice the reach
(plus the ramp), every voxel is taken only from tiles that saw its whole receptive field, so
the tiled result equals a whole-image prediction. Tile origins are multiples of the model's
pooling factor, so that every tile pools the same voxels together as a whole-image
prediction would; where the image is not a multiple, the last tile (flush with the far
border) reads < pooling factor voxels of reflected image. Images smaller than a tile are
reflect-padded to the tile and cropped back.

Memory: tiles are visited row by row along one axis (z or y); probabilities are summed in
a buffer one tile deep along that axis, and every finished row is divided, reduced and
handed to a sink (an array, or a file written piece by piece, see ``unetsl.lazy_io``), so
memory follows the tile and batch size, not the image.

Axes: arrays are (t, c, z, y, x) as everywhere in unetsl; models are channels-last.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from unetsl.errors import UnetslError

log = logging.getLogger("unetsl")

__all__ = [
    "REDUCTIONS",
    "ArraySink",
    "ArraySource",
    "KerasTiles",
    "Reach",
    "TilePlan",
    "label_dtype",
    "choose_tile",
    "measure_reach",
    "model_for_tiles",
    "plan_tiles",
    "predict",
    "predict_outputs",
    "predict_to_sinks",
    "receptive_reach",
    "reduce",
    "reduction_for_activation",
    "reduction_name",
    "window_1d",
]

REDUCTIONS = {0: "categorical", 1: "multiclass", 2: "linear"}
ACTIVATION_REDUCTION = {"softmax": "categorical", "sigmoid": "multiclass"}
MAX_OVERLAP_FRACTION = 0.25  # default overlap never exceeds a quarter of the patch (speed)
EXACT_PREFERENCE = 1.25  # choose_tile: an exact tiling may cost this much more than a blended one

# --------------------------------------------------------------------------------------------
# Reductions
# --------------------------------------------------------------------------------------------


def reduction_name(value: int | str) -> str:
    """Accept the original's numbers (0, 1, 2) or names; one-line error otherwise."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value in REDUCTIONS:
        return REDUCTIONS[value]
    if isinstance(value, str) and value in REDUCTIONS.values():
        return value
    raise UnetslError(
        f'"reduction type" must be 0 (categorical), 1 (multiclass) or 2 (linear), got {value!r}'
    )


def reduction_for_activation(activation: str) -> str:
    """sigmoid -> multiclass, softmax -> categorical, anything else (relu, linear) -> linear."""
    return ACTIVATION_REDUCTION.get(activation, "linear")


def label_dtype(reduction: str, n_channels: int) -> np.dtype:
    """The dtype ``reduce`` gives: uint8 up to 8 label bits, uint16 up to 16, else float32.

    float32 beyond 16 bits because ImageJ cannot store 32-bit integers (float32 holds every
    bit mask up to 2^24 exactly).
    """
    if reduction == "linear":
        return np.dtype(np.float32)
    bits = n_channels if reduction == "multiclass" else max(n_channels - 1, 1)
    if bits <= 8:
        return np.dtype(np.uint8)
    if bits <= 16:
        return np.dtype(np.uint16)
    return np.dtype(np.float32)


def reduce(probabilities: np.ndarray, reduction: str, *, channel_axis: int = -4) -> np.ndarray:
    """Turn probabilities into the label image the labeller would have produced.

    probabilities : (..., n, z, y, x) float array (the channel axis is ``channel_axis``).
    Returns the same shape with the channel axis of size 1 (n for linear):

    - multiclass: channel k above 0.5 adds 2^k (the original's bit masks);
    - categorical: arg-max channel k gives 2^k, the last channel (background) gives 0;
    - linear: the values themselves, float32.

    dtype from ``label_dtype``.
    """
    p = np.moveaxis(np.asarray(probabilities), channel_axis, 0)
    n = p.shape[0]
    dtype = label_dtype(reduction, n)
    if reduction == "linear":
        out = p.astype(np.float32)
    elif reduction == "multiclass":
        acc = np.zeros(p.shape[1:], dtype=np.uint32)
        for k in range(n):
            acc |= (p[k] > 0.5).astype(np.uint32) << np.uint32(k)
        out = acc.astype(dtype)[None]
    elif reduction == "categorical":
        values = np.array([1 << k for k in range(n - 1)] + [0], dtype=np.uint32)
        out = values[np.argmax(p, axis=0)].astype(dtype)[None]
    else:
        raise UnetslError(f"unknown reduction {reduction!r}")
    return np.moveaxis(out, 0, channel_axis)


# --------------------------------------------------------------------------------------------
# Receptive field: how far from a tile edge the zero padding reaches into the output
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reach:
    """What the tiling needs to know about a network, per axis (z, y, x).

    reach : an output voxel depends on input voxels at most this far away.
    align : the network's total pooling factor; tile origins are multiples of it.
    source : "layers" (computed from the layer graph) or "impulse" (measured).
    """

    reach: tuple[int, int, int]
    align: tuple[int, int, int]
    source: str = "layers"


class _UnknownLayer(Exception):
    pass


_IDENTITY_LAYERS = {
    "InputLayer", "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "Dropout",
    "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "BatchNormalization", "Identity", "Rescaling",
    "ActivityRegularization",
}
_MERGE_LAYERS = {"Concatenate", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}
_AXES = ("z", "y", "x")


def _as_tuple(value: Any, n: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    return tuple(int(v) for v in value)


def _spatial_axes(rank: int) -> tuple[str, ...]:
    # (batch, [z,] [y,] x, c): the last rank - 2 spatial axes of (z, y, x)
    return _AXES[3 - (rank - 2):]


def _layer_reach(layer, inputs: list[dict], rank: int) -> dict:
    """(L, R, jump) per axis after ``layer``: output unit u covers input [u*j + L, u*j + R]."""
    kind = type(layer).__name__
    if kind in _IDENTITY_LAYERS or (kind == "LayerNormalization"
                                    and tuple(np.atleast_1d(layer.axis)) in ((-1,), (rank - 1,))):
        return inputs[0]
    if kind in _MERGE_LAYERS:
        merged = {}
        for axis in _AXES:
            ls, rs, js = zip(*(state[axis] for state in inputs))
            merged[axis] = (min(ls), max(rs), min(js))
        return merged
    if kind == "Reshape":  # the 2-D <-> 3-D wrappers only drop or add a z of size 1
        return inputs[0]
    state = dict(inputs[0])
    axes = _spatial_axes(rank)
    n = len(axes)
    if kind in ("Conv1D", "Conv2D", "Conv3D", "SeparableConv1D", "SeparableConv2D",
                "DepthwiseConv1D", "DepthwiseConv2D"):
        kernel = _as_tuple(layer.kernel_size, n)
        strides = _as_tuple(layer.strides, n)
        dilation = _as_tuple(layer.dilation_rate, n)
        if layer.padding != "same" and any(k > 1 for k in kernel):
            raise _UnknownLayer(f"{layer.name}: padding {layer.padding!r}")
        for axis, k, s, d in zip(axes, kernel, strides, dilation):
            lo, hi, j = state[axis]
            span = d * (k - 1)
            state[axis] = (lo - (span // 2) * j, hi + (span - span // 2) * j, j * s)
        return state
    if kind in ("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D",
                "AveragePooling2D", "AveragePooling3D"):
        pool = _as_tuple(layer.pool_size, n)
        strides = _as_tuple(layer.strides if layer.strides is not None else pool, n)
        for axis, p, s in zip(axes, pool, strides):
            lo, hi, j = state[axis]
            state[axis] = (lo, hi + (p - 1) * j, j * s)
        return state
    if kind in ("UpSampling1D", "UpSampling2D", "UpSampling3D"):
        size = _as_tuple(getattr(layer, "size", getattr(layer, "length", 2)), n)
        for axis, f in zip(axes, size):
            lo, hi, j = state[axis]
            if j % f:
                raise _UnknownLayer(f"{layer.name}: upsampling below the input grid")
            j2 = j // f
            state[axis] = (lo - (f - 1) * j2, hi, j2)
        return state
    raise _UnknownLayer(f"{layer.name} ({kind})")


def _tensor_reach(tensor, memo: dict, align: dict) -> dict:
    key = id(tensor)
    if key in memo:
        return memo[key]
    layer, node_index, _ = tensor._keras_history
    node = layer._inbound_nodes[node_index]
    parents = list(node.input_tensors)
    if not parents:
        state = {axis: (0, 0, 1) for axis in _AXES}
    else:
        inputs = [_tensor_reach(p, memo, align) for p in parents]
        state = _layer_reach(layer, inputs, len(parents[0].shape))
    for axis in _AXES:
        align[axis] = max(align[axis], state[axis][2])
    memo[key] = state
    return state


def receptive_reach(model) -> Reach:
    """Reach and pooling factor per axis (z, y, x), computed from the layer graph.

    Conv/pooling/upsampling/merge layers are followed exactly; a layer this does not know
    (custom layers, transposed convolutions, nested models) makes it fall back to
    ``measure_reach``, which probes the model with an impulse.
    """
    cached = _REACH_CACHE.get(model)
    if cached is not None:
        return cached
    try:
        memo: dict = {}
        align = dict.fromkeys(_AXES, 1)
        reach = [0, 0, 0]
        for tensor in model.outputs:
            state = _tensor_reach(tensor, memo, align)
            for i, axis in enumerate(_AXES):
                lo, hi, jump = state[axis]
                # a low-resolution output is repeated over ``jump`` voxels (upsample shaper)
                reach[i] = max(reach[i], -lo + jump - 1, hi)
        result = Reach(tuple(reach), tuple(align[a] for a in _AXES), "layers")
    except (_UnknownLayer, AttributeError, IndexError, TypeError) as exc:
        log.info("receptive field not computable from the layers (%s); measuring it", exc)
        result = measure_reach(model)
    _REACH_CACHE[model] = result
    return result


_REACH_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def measure_reach(model, *, seed: int = 0) -> Reach:
    """Reach per axis measured by probing the model with impulses on a noise background.

    An impulse changes exactly the outputs whose receptive field contains it; the farthest
    changed voxel from the impulse is the reach (at most half the patch can be seen). The
    pooling factor cannot be seen this way: the largest power of two (<= 16) dividing the
    patch is used, which is safe (only tile positions are rounded to it).
    """
    from unetsl.model import model_patch_shape

    c, *patch = model_patch_shape(model)
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 1.0, size=(1, c, *patch)).astype(np.float32)
    phases = 4
    batch = np.repeat(base, phases + 1, axis=0)
    centres = []
    for k in range(phases):
        centre = tuple(min(p - 1, p // 2 + k) for p in patch)
        batch[(k + 1, slice(None), *centre)] += 10.0
        centres.append(centre)
    outs = KerasTiles(model, output_indices=list(range(len(model.outputs))))(batch)
    reach = [0, 0, 0]
    for out in outs:
        for k, centre in enumerate(centres):
            diff = np.abs(out[k + 1] - out[0]).max(axis=0)
            changed = np.argwhere(diff > 1e-6 * max(float(diff.max()), 1e-12))
            for i in range(3):
                if len(changed):
                    reach[i] = max(reach[i], int(np.abs(changed[:, i] - centre[i]).max()))
    align = []
    for p in patch:
        a = 1
        while a < 16 and p % (a * 2) == 0:
            a *= 2
        align.append(a)
    return Reach(tuple(reach), tuple(align), "impulse")


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
    from unetsl.model import model_patch_shape, with_input_patch

    _, *patch = model_patch_shape(model)
    reach = reach or receptive_reach(model)
    budget = int(batch_size) * math.prod(patch)
    if tile is None:
        # An axis along which the training patch is narrower than the receptive field never
        # grows: every voxel the network learned from saw the zero padding along it, and a
        # larger tile would show it more context than it was trained with (and change the
        # result). 2-D models stay 2-D.
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


# --------------------------------------------------------------------------------------------
# Models, sources and sinks
# --------------------------------------------------------------------------------------------


class TileModel(Protocol):
    """What the tiling engine needs of a network (a Keras model through ``KerasTiles``,
    or any function, e.g. in tests)."""

    patch: tuple[int, int, int, int]  # (c, z, y, x)
    channels: list[int]  # output channels of each selected output

    def __call__(self, tiles: np.ndarray) -> list[np.ndarray]:
        """tiles (b, c, z, y, x) float32 -> one (b, n, z, y, x) float32 per output."""


class KerasTiles:
    """A Keras model as a ``TileModel``: channels-last at the boundary, selected outputs.

    With a ``tf.distribute`` strategy of several replicas (the model built in its scope),
    batches go through ``model.predict`` so that they are split over the devices;
    otherwise ``predict_on_batch`` (least overhead per batch).
    """

    def __init__(self, model, output_indices: Sequence[int] = (-1,), distributed: bool = False):
        from unetsl.model import model_patch_shape

        self.model = model
        self.patch = model_patch_shape(model)
        n_outputs = len(model.outputs)
        self.indices = []
        for index in output_indices:
            if not -n_outputs <= index < n_outputs:
                raise UnetslError(f'"output index" {index} is out of range: the model has '
                                  f"{n_outputs} output(s)")
            self.indices.append(index % n_outputs)
        self.channels = []
        self.upsample = []  # the original's "upsample" shaper for low-resolution heads
        for index in self.indices:
            shape = tuple(model.outputs[index].shape)
            factors = None
            if len(shape) == 5 and all(s and p % s == 0 for s, p in
                                       zip(shape[1:4], self.patch[1:])):
                factors = tuple(p // s for s, p in zip(shape[1:4], self.patch[1:]))
            if factors is None:
                raise UnetslError(
                    f"model output {index} ({_output_name(model, index)}) has shape {shape}; "
                    f"only outputs the size of the input patch {self.patch[1:]} (or a whole "
                    "fraction of it) can be tiled"
                )
            if any(f > 1 for f in factors) and "crop" in _output_name(model, index):
                # the original's "crop" shaper: such a head sees only the tile centre
                raise UnetslError(
                    f"model output {index} ({_output_name(model, index)}) is a crop head "
                    f"below full resolution {shape[1:4]}; only its upsampled (non-crop) or "
                    "full-resolution heads can be tiled"
                )
            self.upsample.append(factors)
            self.channels.append(int(shape[-1]))
        self.distributed = distributed

    def __call__(self, tiles: np.ndarray) -> list[np.ndarray]:
        from unetsl.model import from_model_layout, to_model_layout

        x = np.ascontiguousarray(to_model_layout(tiles), dtype=np.float32)
        n = len(x)
        if self.distributed:
            # every replica must get at least one tile: pad a short batch with copies
            replicas = self.model.distribute_strategy.num_replicas_in_sync
            short = -n % replicas
            if short:
                x = np.concatenate([x, np.repeat(x[-1:], short, axis=0)])
            out = self.model.predict(x, batch_size=len(x), verbose=0)
        else:
            out = self.model.predict_on_batch(x)
        if isinstance(out, dict):
            out = [out[name] for name in self.model.output_names]
        if not isinstance(out, (list, tuple)):
            out = [out]
        result = []
        for i, factors in zip(self.indices, self.upsample):
            y = from_model_layout(np.asarray(out[i], dtype=np.float32)[:n])
            for axis, f in enumerate(factors):
                if f > 1:  # nearest neighbour, as the original's "upsample" shaper
                    y = np.repeat(y, f, axis=axis + 2)
            result.append(np.ascontiguousarray(y))
        return result


def _output_name(model, index: int) -> str:
    try:
        return str(model.output_names[index])
    except (AttributeError, IndexError):
        return f"output {index}"


class ArraySource:
    """An in-memory (t, c, z, y, x) array (or anything sliceable, e.g. a memory map)."""

    def __init__(self, array):
        if len(array.shape) != 5:
            raise UnetslError(f"expected a (t, c, z, y, x) image, got shape {array.shape}")
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)

    def read(self, t: int, zs: slice, ys: slice, xs: slice) -> np.ndarray:
        """(c, z, y, x) block of time point ``t``."""
        return np.asarray(self.array[t, :, zs, ys, xs])


class ArraySink:
    """Collects one output's probabilities into a float32 (t, n, z, y, x) array."""

    def __init__(self, shape: Sequence[int]):
        self.array = np.zeros(tuple(shape), dtype=np.float32)

    def write(self, t: int, region: tuple[slice, slice, slice], block: np.ndarray) -> None:
        self.array[(t, slice(None), *region)] = block


Sink = Any  # anything with write(t, (zs, ys, xs), block (n, z, y, x) float32)


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


def normalize_patches(batch: np.ndarray) -> np.ndarray:
    """Z-score every sample and channel over its voxels (the original's "normalize samples")."""
    axes = tuple(range(2, batch.ndim))
    mean = batch.mean(axis=axes, keepdims=True)
    std = batch.std(axis=axes, keepdims=True)
    return (batch - mean) / np.where(std < 1e-6, 1.0, std)


def read_padded(source, t: int, regions: Sequence[tuple[int, int]]) -> np.ndarray:
    """(c, z, y, x) float32 block of the image over ``regions`` (start, stop) per axis,
    reflecting the image where a region reaches outside it."""
    sizes = source.shape[2:]
    inner, pads = [], [(0, 0)]
    for (start, stop), size in zip(regions, sizes):
        lo, hi = max(start, 0), min(stop, size)
        inner.append(slice(lo, hi))
        pads.append((lo - start, stop - hi))
    block = np.asarray(source.read(t, *inner), dtype=np.float32)
    if any(p != (0, 0) for p in pads):
        block = np.pad(block, pads, mode="reflect")
    return block


@dataclass
class _Tile:
    t: int
    row: int  # index along the stream axis
    index: tuple[int, int, int]  # tile index per axis
    data: np.ndarray  # (c, z, y, x)


def _tiles(source, plan: TilePlan) -> Iterator[_Tile]:
    """Tiles of every time point, row by row along the stream axis; one slab read per row."""
    s = plan.stream_axis
    others = [a for a in range(3) if a != s]
    for t in range(source.shape[0]):
        for row, origin in enumerate(plan.axes[s].origins):
            regions = [plan.axes[a].extent for a in range(3)]
            regions[s] = (origin, origin + plan.axes[s].patch)
            slab = read_padded(source, t, regions)
            base = [r[0] for r in regions]
            a0, a1 = others
            for i0, o0 in enumerate(plan.axes[a0].origins):
                for i1, o1 in enumerate(plan.axes[a1].origins):
                    index = [0, 0, 0]
                    index[s], index[a0], index[a1] = row, i0, i1
                    origin_zyx = [0, 0, 0]
                    origin_zyx[s], origin_zyx[a0], origin_zyx[a1] = origin, o0, o1
                    cut = tuple(slice(o - b, o - b + p) for o, b, p in
                                zip(origin_zyx, base, plan.patch))
                    yield _Tile(t, row, tuple(index), slab[(slice(None), *cut)])


class _RowBuffer:
    """Weighted sums of one time point over a window one tile deep along the stream axis."""

    def __init__(self, plan: TilePlan, channels: Sequence[int], sinks: Sequence[Sink]):
        self.plan = plan
        self.s = plan.stream_axis
        self.sinks = sinks
        shape = list(plan.shape)
        shape[self.s] = min(plan.patch[self.s], plan.shape[self.s])
        self.acc = [np.zeros((n, *shape), dtype=np.float32) for n in channels]
        self.wsum = np.zeros(shape, dtype=np.float32)
        self.windows = [a.windows() for a in plan.axes]
        self.t = -1
        self.lo = 0  # image coordinate of buffer index 0 along the stream axis

    def start(self, t: int) -> None:
        self.t, self.lo = t, 0
        for a in self.acc:
            a.fill(0)
        self.wsum.fill(0)

    def add(self, tile: _Tile, outputs: Sequence[np.ndarray]) -> None:
        buf, src = [], []
        for axis, (plan, i) in enumerate(zip(self.plan.axes, tile.index)):
            origin = plan.origins[i]
            lo, hi = max(origin, 0), min(origin + plan.patch, plan.size)
            offset = self.lo if axis == self.s else 0
            buf.append(slice(lo - offset, hi - offset))
            src.append(slice(lo - origin, hi - origin))
        w = (self.windows[0][tile.index[0]][src[0], None, None]
             * self.windows[1][tile.index[1]][None, src[1], None]
             * self.windows[2][tile.index[2]][None, None, src[2]])
        self.wsum[tuple(buf)] += w
        for acc, out in zip(self.acc, outputs):
            acc[(slice(None), *buf)] += out[(slice(None), *src)] * w

    def flush(self, until: int) -> None:
        """Hand every voxel below ``until`` (stream axis) to the sinks and slide the window."""
        until = min(until, self.plan.shape[self.s])
        depth = until - self.lo
        if depth <= 0:
            return
        cut = [slice(None)] * 3
        cut[self.s] = slice(0, depth)
        weights = self.wsum[tuple(cut)]
        region = [slice(0, n) for n in self.plan.shape]
        region[self.s] = slice(self.lo, until)
        for acc, sink in zip(self.acc, self.sinks):
            block = acc[(slice(None), *cut)] / np.maximum(weights, 1e-12)
            sink.write(self.t, tuple(region), block)
        for arr, lead in [(a, 1) for a in self.acc] + [(self.wsum, 0)]:
            axis = self.s + lead
            keep = arr.shape[axis] - depth
            src = [slice(None)] * arr.ndim
            dst = [slice(None)] * arr.ndim
            src[axis], dst[axis] = slice(depth, None), slice(0, keep)
            if keep > 0:
                arr[tuple(dst)] = arr[tuple(src)]
            tail = [slice(None)] * arr.ndim
            tail[axis] = slice(max(keep, 0), None)
            arr[tuple(tail)] = 0
        self.lo = until


Progress = Callable[[int, int, int, int], None]
"""progress(tiles done, tiles total, time points done, time points total)."""


def predict_to_sinks(tile_model: TileModel, source, sinks: Sequence[Sink], *,
                     reach: Reach, batch_size: int = 16,
                     overlap: Sequence[int] | None = None, normalize: bool = False,
                     progress: Progress | None = None) -> TilePlan:
    """The engine: predict every time point of ``source`` and hand finished rows to ``sinks``.

    source : ``.shape`` (t, c, z, y, x) and ``.read(t, zs, ys, xs) -> (c, z, y, x)``.
    sinks : one per output of ``tile_model``, each with ``write(t, (zs, ys, xs), block)``,
        block float32 (n, z, y, x) probabilities; every voxel is written exactly once.
    The model runs in a worker thread while the previous batch is blended, so reading,
    blending and writing overlap the network's compute.
    """
    c, *patch = tile_model.patch
    if len(sinks) != len(tile_model.channels):
        raise ValueError("one sink per model output is needed")
    if source.shape[1] != c:
        raise UnetslError(f"image has {source.shape[1]} channel(s), the model expects {c}")
    if batch_size < 1:
        raise UnetslError(f'"batch size" must be >= 1, got {batch_size}')
    plan = plan_tiles(source.shape[2:], patch, reach, overlap)
    frames = source.shape[0]
    total = plan.count() * frames
    buffer = _RowBuffer(plan, tile_model.channels, sinks)
    state = {"row": None, "done": 0, "frames": 0}

    def blend(batch: list[_Tile], outputs: list[np.ndarray]) -> None:
        for k, tile in enumerate(batch):
            if state["row"] is None or state["row"][0] != tile.t:
                if state["row"] is not None:
                    buffer.flush(plan.shape[plan.stream_axis])
                    state["frames"] += 1
                    if progress:
                        progress(state["done"], total, state["frames"], frames)
                buffer.start(tile.t)
            elif state["row"][1] != tile.row:
                buffer.flush(plan.axes[plan.stream_axis].origins[tile.row])
            state["row"] = (tile.t, tile.row)
            buffer.add(tile, [out[k] for out in outputs])
        state["done"] += len(batch)
        if progress:
            progress(state["done"], total, state["frames"], frames)

    def run(batch: list[_Tile]) -> list[np.ndarray]:
        tiles = np.stack([tile.data for tile in batch])
        if normalize:
            tiles = normalize_patches(tiles)
        outputs = tile_model(tiles)
        for out, n in zip(outputs, tile_model.channels):
            if out.shape != (len(batch), n, *patch):
                raise UnetslError(f"model returned shape {out.shape} for {len(batch)} tiles "
                                  f"of {tuple(patch)}; expected {(len(batch), n, *patch)}")
        return outputs

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="unetsl-predict") as pool:
        pending = None
        batch: list[_Tile] = []
        for tile in _tiles(source, plan):
            batch.append(tile)
            if len(batch) == batch_size:
                future = pool.submit(run, batch)
                if pending is not None:
                    blend(pending[0], pending[1].result())
                pending, batch = (batch, future), []
        if batch:
            future = pool.submit(run, batch)
            if pending is not None:
                blend(pending[0], pending[1].result())
            pending = (batch, future)
        if pending is not None:
            blend(pending[0], pending[1].result())
    if state["row"] is not None:
        buffer.flush(plan.shape[plan.stream_axis])
        state["frames"] += 1
        if progress:
            progress(state["done"], total, state["frames"], frames)
    return plan


# --------------------------------------------------------------------------------------------
# The Python API
# --------------------------------------------------------------------------------------------


def predict_outputs(model, image: np.ndarray, *, output_indices: Sequence[int] | None = None,
                    batch_size: int = 16, overlap: Sequence[int] | None = None,
                    tile: Sequence[int] | None = None, normalize: bool = False,
                    progress: Progress | None = None) -> list[np.ndarray]:
    """Like ``predict`` for several outputs of a multi-output (cascade) model at once.

    output_indices : which outputs (default: all). Returns one float32 array per output.
    """
    if output_indices is None:
        output_indices = list(range(len(model.outputs)))
    array = np.asarray(image) if not hasattr(image, "shape") else image
    squeeze = len(array.shape) == 4
    if squeeze:
        array = array[None]
    source = ArraySource(array)
    t, _, z, y, x = source.shape
    reach = receptive_reach(model)
    model, per_batch = model_for_tiles(model, (z, y, x), batch_size=batch_size,
                                       overlap=overlap, tile=tile, reach=reach)
    tile_model = KerasTiles(model, output_indices)
    sinks = [ArraySink((t, n, z, y, x)) for n in tile_model.channels]
    predict_to_sinks(tile_model, source, sinks, reach=reach, batch_size=per_batch,
                     overlap=overlap, normalize=normalize, progress=progress)
    return [s.array[0] if squeeze else s.array for s in sinks]


def predict(model, image: np.ndarray, *, output_index: int = -1, batch_size: int = 16,
            overlap: Sequence[int] | None = None, tile: Sequence[int] | None = None,
            normalize: bool = False, progress: Progress | None = None) -> np.ndarray:
    """Predict every time point of an image of any size with a Keras model, tile by tile.

    image : (t, c, z, y, x) or (c, z, y, x) array (any dtype; predicted as float32 of the
        values), c = the model's input channels. z, y, x may be smaller or larger than the
        model's patch.
    output_index : which output of a multi-output model (default the last).
    batch_size : how many training-patch-sized tiles fit in memory at once; larger tiles
        count as several.
    overlap : tile overlap (z, y, x) in voxels; default from the network's receptive field
        (``default_overlap``).
    tile : tile size (z, y, x); default ``choose_tile`` (often larger than the training
        patch: fewer tiles, less overlap computed twice).
    normalize : z-score every tile per channel (the "normalize samples" setting).
    progress : called as progress(tiles done, tiles total, time points done, total).
    Returns float32 probabilities (t, n, z, y, x) (or (n, z, y, x) for a 4-D input); use
    ``reduce`` to get labels.
    """
    return predict_outputs(model, image, output_indices=[output_index], batch_size=batch_size,
                           overlap=overlap, tile=tile, normalize=normalize,
                           progress=progress)[0]
