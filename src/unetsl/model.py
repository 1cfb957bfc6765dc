"""U-Net and cascade models, their losses and optimisers, and model files.

The topology follows the original ActiveUnetSegmentation (ellisdg 3DUnetCNN design) so that
layer names, and therefore weight transfer by name, stay compatible. Models are channels-last
(set per layer, never globally) because channels-first 3D convolutions have no CPU kernels.

Axis conventions: config shapes are (c, z, y, x); model tensors are (batch, z, y, x, c).
Every model takes and returns 5-D tensors, also when it is built from 2-D layers (z == 1).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
from keras import layers, ops

from unetsl.atomic import atomic_path
from unetsl.config import Config
from unetsl.errors import UnetslError

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "CategoricalCrossEntropy",
    "JaccardIndexLoss",
    "LogMse",
    "SorensenDiceCoefLoss",
    "WeightedDiceLoss",
    "WeightedError",
    "build_cascade",
    "build_unet",
    "check_patch_divisible",
    "from_model_layout",
    "get_loss",
    "get_optimizer",
    "load_model",
    "model_patch_shape",
    "output_activations",
    "save_model",
    "to_model_layout",
]

_DATA_FORMAT = "channels_last"
_MODEL_SUFFIXES = (".h5", ".hdf5", ".keras")


# --------------------------------------------------------------------------------------------
# Shape checks and layout
# --------------------------------------------------------------------------------------------


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
    shape, kernel, pool = _check_args(
        input_shape,
        n_labels,
        depth,
        n_filters,
        kernel_shape,
        pooling,
        activation,
        spatial_dropout_rate,
    )
    c, z, y, x = shape
    inputs = keras.Input(shape=(z, y, x, c), name="input")
    outputs = _unet_stage(
        inputs,
        prefix="",
        head_name="output-conv",
        output_name="output",
        n_labels=n_labels,
        depth=depth,
        n_filters=n_filters,
        kernel=kernel,
        pooling=pool,
        activation=activation,
        rate=float(spatial_dropout_rate),
        batch_normalization=batch_normalization,
    )
    return keras.Model(inputs, outputs, name=name)


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
    shape, kernel, pool = _check_args(
        input_shape,
        n_labels,
        depth,
        n_filters,
        kernel_shape,
        pooling,
        activation,
        spatial_dropout_rate,
    )
    c, z, y, x = shape
    inputs = keras.Input(shape=(z, y, x, c), name="input")
    outputs = []
    stage_input = inputs
    for k in range(n_stages):
        prefix = "" if k == 0 else f"cascade{k}-"
        if k > 0:
            stage_input = layers.Concatenate(axis=-1, name=f"{prefix}input")([inputs, outputs[-1]])
        outputs.append(
            _unet_stage(
                stage_input,
                prefix=prefix,
                head_name=f"cascade_{k}-conv",
                output_name=f"cascade_{k}",
                n_labels=n_labels,
                depth=depth,
                n_filters=n_filters,
                kernel=kernel,
                pooling=pool,
                activation=activation,
                rate=float(spatial_dropout_rate),
                batch_normalization=batch_normalization,
            )
        )
    return keras.Model(inputs, outputs, name=name)


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------
# Every loss returns one value per sample (shape (batch,)) so that Keras sample weights apply;
# Keras then averages over the batch. T = target (cast to the prediction's dtype), P = prediction.


def _non_batch_axes(x) -> tuple[int, ...]:
    return tuple(range(1, len(x.shape)))


def _cast_like(y_true, y_pred):
    return ops.cast(y_true, y_pred.dtype)


@keras.saving.register_keras_serializable(package="unetsl")
class SorensenDiceCoefLoss(keras.losses.Loss):
    """-(2 sum T·P + s) / (sum T + sum P + s) per sample: -1 for a perfect or empty/empty match.

    The original smoothed only the numerator, so empty patches scored -2, better than a
    perfect match; here the smoothing is symmetric.
    """

    def __init__(self, smooth: float = 1.0, name: str = "sorensen_dice_coef_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        y_true = _cast_like(y_true, y_pred)
        axes = _non_batch_axes(y_pred)
        intersection = ops.sum(y_true * y_pred, axis=axes)
        total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
        return -(2.0 * intersection + self.smooth) / (total + self.smooth)

    def get_config(self) -> dict:
        return {**super().get_config(), "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="unetsl")
class JaccardIndexLoss(keras.losses.Loss):
    """-(I + s) / (sum |T| + sum |P| - I + s), I = sum |T|·|P|, per sample (-1 when perfect).

    The smoothing s keeps empty patches finite (the original returned NaN there).
    """

    def __init__(self, smooth: float = 1.0, name: str = "jaccard_index_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        y_true = ops.abs(_cast_like(y_true, y_pred))
        y_pred = ops.abs(y_pred)
        axes = _non_batch_axes(y_pred)
        intersection = ops.sum(y_true * y_pred, axis=axes)
        union = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes) - intersection
        return -(intersection + self.smooth) / (union + self.smooth)

    def get_config(self) -> dict:
        return {**super().get_config(), "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="unetsl")
class WeightedError(keras.losses.Loss):
    """sum ((P - T) w)^2 / sum w^2, w = 25 T + 1, per sample: foreground errors count more."""

    def __init__(self, foreground_weight: float = 25.0, name: str = "weighted_error", **kwargs):
        super().__init__(name=name, **kwargs)
        self.foreground_weight = float(foreground_weight)

    def call(self, y_true, y_pred):
        y_true = _cast_like(y_true, y_pred)
        axes = _non_batch_axes(y_pred)
        w = self.foreground_weight * y_true + 1.0
        return ops.sum(ops.square((y_pred - y_true) * w), axis=axes) / ops.sum(
            ops.square(w), axis=axes
        )

    def get_config(self) -> dict:
        return {**super().get_config(), "foreground_weight": self.foreground_weight}


@keras.saving.register_keras_serializable(package="unetsl")
class WeightedDiceLoss(keras.losses.Loss):
    """Generalised Dice per sample: channel weights w_c = 1/(sum T_c)^2, 0 for empty channels.

    -(2 sum_c w_c sum T_c·P_c + s) / (sum_c w_c (sum T_c + sum P_c) + s). The weights are
    rescaled to sum to 1 per sample (the ratio does not change) so that the smoothing s has
    the same small effect whatever the patch size; all-empty targets give -1.
    """

    def __init__(self, smooth: float = 0.01, name: str = "weighted_dice_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        y_true = _cast_like(y_true, y_pred)
        spatial = tuple(range(1, len(y_pred.shape) - 1))
        t_sum = ops.sum(y_true, axis=spatial)  # (batch, c)
        p_sum = ops.sum(y_pred, axis=spatial)
        tp_sum = ops.sum(y_true * y_pred, axis=spatial)
        w = ops.where(t_sum > 0, 1.0 / ops.square(ops.maximum(t_sum, 1e-12)), 0.0)
        w = w / ops.maximum(ops.sum(w, axis=-1, keepdims=True), 1e-12)
        numerator = 2.0 * ops.sum(w * tp_sum, axis=-1)
        denominator = ops.sum(w * (t_sum + p_sum), axis=-1)
        return -(numerator + self.smooth) / (denominator + self.smooth)

    def get_config(self) -> dict:
        return {**super().get_config(), "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="unetsl")
class LogMse(keras.losses.Loss):
    """log(1 + mean squared error) per sample: MSE with large errors compressed."""

    def __init__(self, name: str = "log_mse", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        y_true = _cast_like(y_true, y_pred)
        return ops.log1p(ops.mean(ops.square(y_pred - y_true), axis=_non_batch_axes(y_pred)))


@keras.saving.register_keras_serializable(package="unetsl")
class CategoricalCrossEntropy(keras.losses.Loss):
    """-sum_c T log P over the channel (last) axis, P normalised over channels and clipped.

    Averaged over voxels per sample. Works on softmax or unnormalised non-negative outputs.
    """

    def __init__(self, epsilon: float = 1e-6, name: str = "categorical_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.epsilon = float(epsilon)

    def call(self, y_true, y_pred):
        y_true = _cast_like(y_true, y_pred)
        p = y_pred / ops.maximum(ops.sum(y_pred, axis=-1, keepdims=True), self.epsilon)
        p = ops.clip(p, self.epsilon, 1.0 - self.epsilon)
        per_voxel = -ops.sum(y_true * ops.log(p), axis=-1)
        return ops.mean(per_voxel, axis=_non_batch_axes(per_voxel))

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon}


LOSSES: dict[str, Callable[[], keras.losses.Loss]] = {
    "unetsl.model.sorensenDiceCoefLoss": SorensenDiceCoefLoss,
    "unetsl.model.jaccardIndexLoss": JaccardIndexLoss,
    "unetsl.model.weightedError": WeightedError,
    "unetsl.model.weightedDiceLoss": WeightedDiceLoss,
    "unetsl.model.logMse": LogMse,
    "unetsl.model.categoricalCrossEntropy": CategoricalCrossEntropy,
    # aliases that old model files and configs use
    "dice_coefficient": WeightedError,
    "dice_coefficient_loss": SorensenDiceCoefLoss,
    # Keras built-ins (channels-last, so the last axis is the channel axis)
    "keras.losses.binary_crossentropy": keras.losses.BinaryCrossentropy,
    "keras.losses.mean_squared_error": keras.losses.MeanSquaredError,
    "keras.losses.categorical_crossentropy": keras.losses.CategoricalCrossentropy,
    "keras.losses.hinge": keras.losses.Hinge,
    "binary_crossentropy": keras.losses.BinaryCrossentropy,
    "mean_squared_error": keras.losses.MeanSquaredError,
    "mse": keras.losses.MeanSquaredError,
    "categorical_crossentropy": keras.losses.CategoricalCrossentropy,
    "hinge": keras.losses.Hinge,
}
"""Loss factories by their config name ("loss function")."""


def get_loss(name: str) -> keras.losses.Loss:
    """A fresh loss instance for the config's "loss function" name."""
    try:
        factory = LOSSES[name]
    except (KeyError, TypeError):
        raise UnetslError(
            f'"loss function" {name!r} is unknown; valid names: {", ".join(LOSSES)}'
        ) from None
    return factory()


OPTIMIZERS: dict[str, Callable[..., keras.optimizers.Optimizer]] = {
    "keras.optimizers.Adam": keras.optimizers.Adam,
    "keras.optimizers.SGD": keras.optimizers.SGD,
}
"""Optimiser classes by their config name ("optimizer"); Keras defaults besides the rate."""


def get_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    """A fresh optimiser for the config's "optimizer" name and "initial learning rate"."""
    try:
        factory = OPTIMIZERS[name]
    except (KeyError, TypeError):
        raise UnetslError(
            f'"optimizer" {name!r} is unknown; valid names: {", ".join(OPTIMIZERS)}'
        ) from None
    try:
        rate = float(learning_rate)
    except (TypeError, ValueError):
        rate = -1.0
    if not rate > 0:
        raise UnetslError(f'"initial learning rate" must be > 0, got {learning_rate!r}')
    return factory(learning_rate=rate)


# --------------------------------------------------------------------------------------------
# Model files
# --------------------------------------------------------------------------------------------


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in _MODEL_SUFFIXES:
        raise UnetslError(
            f"model file {str(path)!r}: suffix must be one of {', '.join(_MODEL_SUFFIXES)}"
        )


def save_model(model: keras.Model, path: str | os.PathLike) -> None:
    """Write ``model`` atomically; ``.h5``/``.hdf5`` gives legacy HDF5, ``.keras`` the zip format.

    A compiled model keeps its loss (registered classes reload without custom_objects).
    """
    path = Path(path)
    _check_suffix(path)
    # Keras' legacy HDF5 writer pops "optimizer" from the model's live compile config, so a
    # later .keras save would lose the optimiser: save from a copy and restore it.
    compile_config = getattr(model, "_compile_config", None)
    saved = dict(compile_config.config) if compile_config is not None else None
    try:
        with atomic_path(path) as tmp:
            model.save(tmp, overwrite=True)
    finally:
        if saved is not None:
            compile_config.config = saved


def load_model(path: str | os.PathLike, compile: bool = False) -> keras.Model:
    """Load a model written by :func:`save_model` (safe mode: no arbitrary code).

    The unetsl losses are registered on import of this module, so compiled models reload
    with their loss when ``compile`` is true.
    """
    path = Path(path)
    if not path.is_file():
        raise UnetslError(f"model file {str(path)!r} does not exist")
    _check_suffix(path)
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise UnetslError(f"model file {str(path)!r} cannot be loaded: not a .keras zip archive")
    if path.suffix.lower() != ".keras" and not h5py.is_hdf5(path):
        raise UnetslError(f"model file {str(path)!r} cannot be loaded: not an HDF5 file")
    from unetsl import legacy

    if legacy.is_legacy_model(path):  # written by the original (Keras 2, channels-first)
        return legacy.load_legacy_model(path, compile=compile)
    try:
        return keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as exc:  # h5py, zipfile and Keras raise many types for a bad file
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if len(reason) > 200:
            reason = reason[:200] + "..."
        raise UnetslError(f"model file {str(path)!r} cannot be loaded: {reason}") from exc


def build_model_from_config(config: Config) -> keras.Model:
    """The U-Net (or cascade, with "cascade stages" >= 1) that a config describes."""
    args = dict(
        input_shape=config["input shape"],
        n_labels=config["n labels"],
        depth=config["depth"],
        n_filters=config["n filters"],
        kernel_shape=config["kernel shape"],
        pooling=config["pooling"],
        activation=config["activation"],
        spatial_dropout_rate=config["spatial dropout rate"],
        batch_normalization=config["batch normalization"],
        name=config.name,
    )
    if config["cascade stages"] >= 1:
        return build_cascade(n_stages=config["cascade stages"], **args)
    return build_unet(**args)


def describe_model(model: keras.Model) -> str:
    """A one-screen summary: input, each output with its activation, parameter count."""
    c, z, y, x = model_patch_shape(model)
    lines = [f"input:  (c, z, y, x) = ({c}, {z}, {y}, {x})"]
    for name, tensor, activation in zip(model.output_names, model.outputs,
                                        output_activations(model)):
        _, oz, oy, ox, n = tensor.shape
        lines.append(f"output: {name} (n, z, y, x) = ({n}, {oz}, {oy}, {ox}), {activation}")
    lines.append(f"parameters: {model.count_params():,}")
    return "\n".join(lines)


def _resized_target(old_in: Sequence[int], old_target: Sequence[int],
                    new_in: Sequence[int]) -> tuple[int, ...]:
    """The target shape of a Reshape that only adds or drops unit axes, at a new input size."""
    kept = [i for i, s in enumerate(old_in) if s != 1]
    if [old_in[i] for i in kept] != [s for s in old_target if s != 1]:
        raise UnetslError(f"a Reshape from {tuple(old_in)} to {tuple(old_target)} does more "
                          "than add or drop unit axes")
    if any(new_in[i] == 1 for i in kept) or any(
            s != 1 for i, s in enumerate(new_in) if i not in kept):
        raise UnetslError(f"a Reshape from {tuple(old_in)} cannot take {tuple(new_in)}")
    sizes = iter(new_in[i] for i in kept)
    return tuple(next(sizes) if s != 1 else 1 for s in old_target)


def with_input_patch(model: keras.Model, patch: Sequence[int]) -> keras.Model:
    """The same fully convolutional network for a larger (z, y, x) input patch.

    Prediction with tiles larger than the training patch needs fewer tiles and less overlap.
    The new model shares the layers (and so the weights) of ``model``; the Reshape layers of
    2-D U-Nets get new target shapes. A network whose layers depend on the input size
    (Dense, Flatten, ...) raises UnetslError.
    """
    c, *old = model_patch_shape(model)
    patch = tuple(int(p) for p in patch)
    if patch == tuple(old):
        return model
    if not isinstance(model, keras.Model) or len(model.inputs) != 1:
        raise UnetslError(f"model {model.name!r}: only single-input models can be resized")

    def call(layer, *args, **kwargs):
        if isinstance(layer, layers.Reshape):
            x = args[0]
            target = _resized_target(tuple(layer.input.shape[1:]), layer.target_shape,
                                     tuple(x.shape[1:]))
            return layers.Reshape(target, name=layer.name)(x)
        if isinstance(layer, (layers.Dense, layers.Flatten)):
            raise UnetslError(f"layer {layer.name!r} ({type(layer).__name__}) depends on the "
                              "input size")
        return layer(*args, **kwargs)

    inputs = keras.Input(shape=(*patch, c), batch_size=model.inputs[0].shape[0],
                         dtype=model.inputs[0].dtype, name=model.inputs[0].name.split(":")[0])
    try:
        structure = model.input  # a single tensor, or a one-element list (cerberus models)
        if isinstance(structure, (list, tuple)):
            inputs = type(structure)([inputs])
        resized = keras.models.clone_model(model, input_tensors=inputs,
                                           clone_function=lambda layer: layer,
                                           call_function=call)
    except UnetslError:
        raise
    except (ValueError, TypeError) as exc:
        raise UnetslError(f"model {model.name!r} cannot take a {patch} patch: "
                          f"{str(exc).splitlines()[0]}") from None
    for out, new in zip(model.outputs, resized.outputs):
        factors = [p / o for p, o in zip(patch, old)]
        want = [round(s * f) for s, f in zip(out.shape[1:4], factors)]
        if list(new.shape[1:4]) != want:
            raise UnetslError(f"model {model.name!r}: an output of shape {tuple(out.shape)} "
                              f"becomes {tuple(new.shape)} for a {patch} patch")
    return resized
