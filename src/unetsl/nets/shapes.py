"""Patch shapes and the channels-last layout at the model boundary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from unetsl.errors import UnetslError


def _int_tuple(value: Any, length: int, key: str, minimum: int = 1) -> tuple[int, ...]:
    """Validate a config shape: ``length`` integers, each at least ``minimum``."""
    try:
        values = tuple(int(v) for v in value)
        exact = all(float(v) == int(v) for v in value)
    except (TypeError, ValueError):
        raise UnetslError(f'"{key}" must be a list of {length} integers, got {value!r}') from None
    if len(values) != length or not exact or any(v < minimum for v in values):
        raise UnetslError(f'"{key}" must be {length} integers >= {minimum}, got {list(value)!r}')
    return values


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UnetslError(f'"{key}" must be a positive integer, got {value!r}')
    return int(value)


def check_patch_divisible(input_shape: Sequence[int], pooling: Sequence[int], depth: int) -> None:
    """Raise UnetslError unless every spatial size is a multiple of pooling^(depth-1).

    The U-Net max-pools ``depth - 1`` times and upsamples back; a size that does not
    divide evenly would make the skip connections mismatch (the original never checked).
    When z == 1 the model is built from 2-D layers and the z pooling is ignored.

    input_shape : (c, z, y, x) as in the config ("input shape")
    pooling : (z, y, x) pooling factors ("pooling")
    depth : number of resolution levels ("depth")
    """
    shape = _int_tuple(input_shape, 4, "input shape")
    pool = _int_tuple(pooling, 3, "pooling")
    depth = _positive_int(depth, "depth")
    for axis, size, factor in zip("zyx", shape[1:], pool, strict=True):
        if axis == "z" and size == 1:
            continue
        block = factor ** (depth - 1)
        if size < block or size % block:
            raise UnetslError(
                f'"input shape" {list(shape)}: {axis} size {size} must be a multiple of '
                f'"pooling" {list(pool)} ({factor}) to the power ("depth" {depth} - 1) = {block}'
            )


def to_model_layout(x: np.ndarray) -> np.ndarray:
    """(n, c, z, y, x) -> (n, z, y, x, c): the channels-last layout the models take."""
    x = np.asarray(x)
    if x.ndim != 5:
        raise UnetslError(f"expected a 5-D (n, c, z, y, x) array, got shape {x.shape}")
    return np.moveaxis(x, 1, -1)


def from_model_layout(y: Any) -> np.ndarray:
    """(n, z, y, x, c) -> (n, c, z, y, x): back to the library's layout (accepts tensors)."""
    y = np.asarray(keras.ops.convert_to_numpy(y)) if not isinstance(y, np.ndarray) else y
    if y.ndim != 5:
        raise UnetslError(f"expected a 5-D (n, z, y, x, c) array, got shape {y.shape}")
    return np.moveaxis(y, -1, 1)


def model_patch_shape(model: keras.Model) -> tuple[int, int, int, int]:
    """The (c, z, y, x) patch a model takes, read from its (batch, z, y, x, c) input."""
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 5 or any(s is None for s in shape[1:]):
        raise UnetslError(
            f"model {model.name!r}: input shape {shape} is not a fixed (batch, z, y, x, c) shape"
        )
    _, z, y, x, c = (int(s) if s is not None else None for s in shape)
    return (c, z, y, x)


def output_activations(model: keras.Model) -> list[str]:
    """The final activation name of each model output ("sigmoid", "softmax", ...).

    Read from the producing layer's config, because Keras 3 tensors carry no op names.
    Layers without an activation of their own (Reshape, ...) are looked through.
    """
    names = []
    for tensor in model.outputs:
        layer = tensor._keras_history[0]
        activation = None
        while activation is None:
            config = layer.get_config()
            if "activation" in config:
                activation = config["activation"]
                break
            parents = [t._keras_history[0] for t in _layer_inputs(layer)]
            if len(parents) != 1:
                activation = "linear"
                break
            layer = parents[0]
        if isinstance(activation, dict):  # a serialised activation object
            activation = activation.get("config", {}).get("name", activation.get("class_name"))
        names.append(str(activation))
    return names


def _layer_inputs(layer: keras.layers.Layer) -> list:
    if not layer._inbound_nodes:
        return []
    return list(layer._inbound_nodes[0].input_tensors)


# --------------------------------------------------------------------------------------------
