"""Reductions of probabilities to labels (multiclass bits, categorical argmax, linear)."""

from __future__ import annotations

import logging

import numpy as np

from unetsl.errors import UnetslError

log = logging.getLogger("unetsl")

REDUCTIONS = {0: "categorical", 1: "multiclass", 2: "linear"}
ACTIVATION_REDUCTION = {"softmax": "categorical", "sigmoid": "multiclass"}



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

