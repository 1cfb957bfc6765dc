"""Receptive field: how far from a tile edge the zero padding reaches into the output."""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from unetsl.predict.adapter import KerasTiles

log = logging.getLogger("unetsl")




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
    from unetsl.nets.shapes import model_patch_shape

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
# Models, sources and sinks
# --------------------------------------------------------------------------------------------
