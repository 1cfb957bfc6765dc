"""U-Net and cascade models built from the config (losses: nets.losses, files: nets.model_files).

The topology follows the original ActiveUnetSegmentation (ellisdg 3DUnetCNN design) so that
layer names, and therefore weight transfer by name, stay compatible. Models are channels-last
(set per layer, never globally) because channels-first 3D convolutions have no CPU kernels.

Axis conventions: config shapes are (c, z, y, x); model tensors are (batch, z, y, x, c).
Every model takes and returns 5-D tensors, also when it is built from 2-D layers (z == 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from unetsl.errors import UnetslError
from unetsl.nets.shapes import _int_tuple, _positive_int, check_patch_divisible

__all__ = [
    "build_cascade",
    "build_unet",
    "check_patch_divisible",
]

_DATA_FORMAT = "channels_last"


# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------


# Builders
# --------------------------------------------------------------------------------------------


class _Ops:
    """The layer family for one dimensionality: 3-D, or 2-D when the patch has z == 1."""

    def __init__(self, two_d: bool, kernel_shape: tuple[int, ...], pooling: tuple[int, ...]):
        self.two_d = two_d
        if two_d:
            self.conv, self.pool, self.up = layers.Conv2D, layers.MaxPooling2D, layers.UpSampling2D
            self.dropout = layers.SpatialDropout2D
            self.kernel, self.pooling, self.head = kernel_shape[1:], pooling[1:], (1, 1)
        else:
            self.conv, self.pool, self.up = layers.Conv3D, layers.MaxPooling3D, layers.UpSampling3D
            self.dropout = layers.SpatialDropout3D
            self.kernel, self.pooling, self.head = kernel_shape, pooling, (1, 1, 1)


def _check_args(
    input_shape: Sequence[int],
    n_labels: int,
    depth: int,
    n_filters: int,
    kernel_shape: Sequence[int],
    pooling: Sequence[int],
    activation: str,
    spatial_dropout_rate: float,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    shape = _int_tuple(input_shape, 4, "input shape")
    kernel = _int_tuple(kernel_shape, 3, "kernel shape")
    pool = _int_tuple(pooling, 3, "pooling")
    _positive_int(n_labels, "n labels")
    _positive_int(n_filters, "n filters")
    check_patch_divisible(shape, pool, depth)
    if not isinstance(activation, str):
        raise UnetslError(f'"activation" must be a Keras activation name, got {activation!r}')
    try:
        keras.activations.get(activation)
    except ValueError:
        raise UnetslError(
            f'"activation" {activation!r} is not a Keras activation (sigmoid, softmax, relu, '
            "linear, ...)"
        ) from None
    try:
        rate = float(spatial_dropout_rate)
    except (TypeError, ValueError):
        rate = -1.0
    if not 0.0 <= rate < 1.0:
        raise UnetslError(f'"spatial dropout rate" must be in [0, 1), got {spatial_dropout_rate!r}')
    return shape, kernel, pool


def _hidden_conv(x, lo: _Ops, filters: int, name: str, batch_normalization: bool):
    """kernel-shaped, same-padded ReLU conv; with BN the ReLU moves after the normalisation."""
    if not batch_normalization:
        return lo.conv(
            filters,
            lo.kernel,
            padding="same",
            activation="relu",
            data_format=_DATA_FORMAT,
            name=name,
        )(x)
    x = lo.conv(filters, lo.kernel, padding="same", data_format=_DATA_FORMAT, name=name)(x)
    x = layers.BatchNormalization(axis=-1, name=f"{name}-bn")(x)
    return layers.Activation("relu", name=f"{name}-relu")(x)


def _unet_stage(
    x,
    *,
    prefix: str,
    head_name: str,
    output_name: str,
    n_labels: int,
    depth: int,
    n_filters: int,
    kernel: tuple[int, ...],
    pooling: tuple[int, ...],
    activation: str,
    rate: float,
    batch_normalization: bool,
):
    """One U-Net from a 5-D (batch, z, y, x, c) tensor to its 5-D activated output."""
    _, z, y, xs, _ = tuple(x.shape)
    lo = _Ops(z == 1, kernel, pooling)
    if lo.two_d:
        x = layers.Reshape((y, xs, int(x.shape[-1])), name=f"{prefix}to-2d")(x)

    skips = []
    for d in range(depth):
        x = _hidden_conv(x, lo, n_filters * 2**d, f"{prefix}contraction-a-{d}", batch_normalization)
        if rate > 0:
            x = lo.dropout(rate, data_format=_DATA_FORMAT, name=f"{prefix}unetsl-do-ca-{d}")(x)
        x = _hidden_conv(
            x, lo, n_filters * 2 ** (d + 1), f"{prefix}contraction-b-{d}", batch_normalization
        )
        if rate > 0:
            x = lo.dropout(rate, data_format=_DATA_FORMAT, name=f"{prefix}unetsl-do-cb-{d}")(x)
        skips.append(x)
        if d < depth - 1:
            x = lo.pool(pool_size=lo.pooling, data_format=_DATA_FORMAT, name=f"{prefix}pool-{d}")(x)

    for d in range(depth - 2, -1, -1):
        x = lo.up(size=lo.pooling, data_format=_DATA_FORMAT, name=f"{prefix}up-{d}")(x)
        x = layers.Concatenate(axis=-1, name=f"{prefix}concat-{d}")([x, skips[d]])
        x = _hidden_conv(
            x, lo, n_filters * 2 ** (d + 1), f"{prefix}expansion-a-{d}", batch_normalization
        )
        x = _hidden_conv(
            x, lo, n_filters * 2 ** (d + 1), f"{prefix}expansion-b-{d}", batch_normalization
        )

    x = lo.conv(n_labels, lo.head, activation="linear", data_format=_DATA_FORMAT, name=head_name)(x)
    if lo.two_d:
        x = layers.Reshape((1, y, xs, n_labels), name=f"{prefix}to-3d")(x)
    # Activation("softmax") normalises over the last (channel) axis.
    return layers.Activation(activation, name=output_name)(x)


def build_unet(
    input_shape: Sequence[int],
    n_labels: int = 1,
    depth: int = 3,
    n_filters: int = 32,
    kernel_shape: Sequence[int] = (3, 3, 3),
    pooling: Sequence[int] = (1, 2, 2),
    activation: str = "sigmoid",
    spatial_dropout_rate: float = 0.0625,
    batch_normalization: bool = False,
    name: str = "unet",
) -> keras.Model:
    """Build the original's U-Net, channels-last.

    input_shape : (c, z, y, x) patch, as the config's "input shape"; z == 1 builds 2-D layers
        (kernel_shape[1:], pooling[1:]) wrapped in Reshape layers so the model stays 5-D.
    Returns a model (batch, z, y, x, c) -> (batch, z, y, x, n_labels). The head conv is
    ``output-conv`` and the activation layer (the model output) is ``output``.
    """
    inputs, outputs = _chain(
        input_shape, [("output-conv", "output")], n_labels, depth, n_filters, kernel_shape,
        pooling, activation, spatial_dropout_rate, batch_normalization)
    return keras.Model(inputs, outputs[0], name=name)


def build_cascade(
    input_shape: Sequence[int],
    n_stages: int,
    n_labels: int = 1,
    depth: int = 3,
    n_filters: int = 32,
    kernel_shape: Sequence[int] = (3, 3, 3),
    pooling: Sequence[int] = (1, 2, 2),
    activation: str = "sigmoid",
    spatial_dropout_rate: float = 0.0625,
    batch_normalization: bool = False,
    name: str = "cascade",
) -> keras.Model:
    """Build ``n_stages`` full-resolution U-Nets in a chain, each refining the previous one.

    Stage 0 sees the input; stage k > 0 sees concat(input, output of stage k-1). Every stage
    ends in ``n_labels`` channels with the same activation; outputs are the activation layers
    ``cascade_0`` .. ``cascade_<N-1>``, all meant to be trained on the same target.
    Stage 0 keeps the plain U-Net layer names (so a trained U-Net's weights load into it by
    name); stage k > 0 prefixes them with ``cascade<k>-``. The head conv of stage k is
    ``cascade_<k>-conv``.
    """
    n_stages = _positive_int(n_stages, "n stages")
    heads = [(f"cascade_{k}-conv", f"cascade_{k}") for k in range(n_stages)]
    inputs, outputs = _chain(input_shape, heads, n_labels, depth, n_filters, kernel_shape,
                             pooling, activation, spatial_dropout_rate, batch_normalization)
    return keras.Model(inputs, outputs, name=name)


def _chain(input_shape: Sequence[int], heads: Sequence[tuple[str, str]], n_labels: int,
           depth: int, n_filters: int, kernel_shape: Sequence[int], pooling: Sequence[int],
           activation: str, spatial_dropout_rate: float, batch_normalization: bool):
    """The input and one U-Net stage per (head conv name, output name): stage 0 sees the
    input, stage k > 0 concat(input, output of stage k-1), with layer names prefixed
    ``cascade<k>-``. A plain U-Net is the one-stage chain."""
    shape, kernel, pool = _check_args(input_shape, n_labels, depth, n_filters, kernel_shape,
                                      pooling, activation, spatial_dropout_rate)
    c, z, y, x = shape
    inputs = keras.Input(shape=(z, y, x, c), name="input")
    outputs: list = []
    stage_input = inputs
    for k, (head_name, output_name) in enumerate(heads):
        prefix = "" if k == 0 else f"cascade{k}-"
        if k > 0:
            stage_input = layers.Concatenate(axis=-1, name=f"{prefix}input")([inputs, outputs[-1]])
        outputs.append(_unet_stage(
            stage_input, prefix=prefix, head_name=head_name, output_name=output_name,
            n_labels=n_labels, depth=depth, n_filters=n_filters, kernel=kernel, pooling=pool,
            activation=activation, rate=float(spatial_dropout_rate),
            batch_normalization=batch_normalization))
    return inputs, outputs


# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
