"""Losses and optimisers by the names configs use (the original's names included)."""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import ops

from unetsl.errors import UnetslError

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


@keras.saving.register_keras_serializable(package="unetsl")
class ChannelDiceBceLoss(keras.losses.Loss):
    """Binary cross-entropy + (1 - soft Dice) averaged over channels, per sample.

    unetsl's default for new configs. Cross-entropy gives every voxel a gradient from the
    first step; the per-channel Dice weighs each channel equally whatever its size, so a
    sparse channel (vertices, a few nuclei) is learned too instead of being predicted empty.
    Empty target and empty prediction give Dice 1 (smooth ``s`` in numerator and denominator).
    """

    def __init__(self, smooth: float = 1.0, epsilon: float = 1e-6,
                 name: str = "channel_dice_bce_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smooth, self.epsilon = float(smooth), float(epsilon)

    def call(self, y_true, y_pred):
        y_true = _cast_like(y_true, y_pred)
        p = ops.clip(y_pred, self.epsilon, 1.0 - self.epsilon)
        bce = -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
        spatial = tuple(range(1, len(y_pred.shape) - 1))  # (z, y, x): one Dice per channel
        intersection = ops.sum(y_true * y_pred, axis=spatial)
        total = ops.sum(y_true, axis=spatial) + ops.sum(y_pred, axis=spatial)
        dice = (2.0 * intersection + self.smooth) / (total + self.smooth)
        return ops.mean(bce, axis=_non_batch_axes(bce)) + ops.mean(1.0 - dice, axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "smooth": self.smooth, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="unetsl")
class BatchDiceBceLoss(ChannelDiceBceLoss):
    """Binary cross-entropy + (1 - soft Dice), the Dice of each channel taken over the whole
    batch (nnU-Net's "batch Dice"), then averaged over channels.

    Why: with a Dice per patch, a patch without any object (most patches of an image with
    sparse nuclei) scores Dice ~0 for any output above 0 and pushes every output to 0; on
    a real time-lapse whose cells cover 2.7% of the pixels the model collapsed to 0
    everywhere in 5 of 6 runs (issue 27). Over the batch, an empty patch only adds its false
    positives to one shared Dice.
    """

    def __init__(self, smooth: float = 1.0, epsilon: float = 1e-6,
                 name: str = "batch_dice_bce_loss", **kwargs):
        super().__init__(smooth=smooth, epsilon=epsilon, name=name, **kwargs)

    def call(self, y_true, y_pred):
        y_true = _cast_like(y_true, y_pred)
        p = ops.clip(y_pred, self.epsilon, 1.0 - self.epsilon)
        bce = -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
        shared = tuple(range(len(y_pred.shape) - 1))  # batch, z, y, x: one Dice per channel
        intersection = ops.sum(y_true * y_pred, axis=shared)
        total = ops.sum(y_true, axis=shared) + ops.sum(y_pred, axis=shared)
        dice = (2.0 * intersection + self.smooth) / (total + self.smooth)
        return ops.mean(bce, axis=_non_batch_axes(bce)) + ops.mean(1.0 - dice)


LOSSES: dict[str, Callable[[], keras.losses.Loss]] = {
    "unetsl.batchDiceBceLoss": BatchDiceBceLoss,
    "unetsl.channelDiceBceLoss": ChannelDiceBceLoss,
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
