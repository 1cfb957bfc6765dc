"""Training metrics that mean something for each kind of output, and voxel-weighted losses.

The original compiled ``accuracy`` and ``binary_accuracy``. Its ``accuracy`` resolved to a
categorical accuracy over the last axis, which in its channels-first tensors was x: a number
without meaning. Here both are computed per voxel over the channel (last) axis:

- ``accuracy``: the fraction of voxels whose label after the output's reduction is right,
  i.e. what ``predict_image`` would write: arg-max channel for softmax outputs, every channel
  on the right side of 0.5 for sigmoid outputs, value within 0.5 for relu/linear outputs.
- ``binary_accuracy``: the fraction of (voxel, channel) pairs on the right side of 0.5,
  target and prediction both thresholded (so soft or linear targets work too).

The metric names stay ``accuracy`` and ``binary_accuracy`` so that the log columns are the
original's. All classes are registered Keras objects, so compiled models save and reload.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from unetsl.errors import UnetslError
from unetsl.predict.reduce import reduction_for_activation

__all__ = [
    "BinaryAccuracy",
    "ChannelF1",
    "VoxelAccuracy",
    "VoxelWeightedLoss",
    "compile_metrics",
    "metrics_for_activation",
]

ACCURACY_MODES = ("categorical", "multiclass", "linear")


def _categorical(y_true, y_pred):
    return ops.cast(ops.equal(ops.argmax(y_true, axis=-1), ops.argmax(y_pred, axis=-1)), "float32")


def _multiclass(y_true, y_pred, threshold):
    agree = ops.equal(y_true > threshold, y_pred > threshold)
    return ops.cast(ops.all(agree, axis=-1), "float32")


def _linear(y_true, y_pred, tolerance):
    return ops.cast(ops.all(ops.abs(y_pred - y_true) < tolerance, axis=-1), "float32")


@keras.saving.register_keras_serializable(package="unetsl")
class VoxelAccuracy(keras.metrics.Mean):
    """Fraction of voxels labelled right after the output's reduction (see module doc).

    mode : "categorical" (softmax outputs: arg-max over channels), "multiclass" (sigmoid:
        every channel thresholded at ``threshold``) or "linear" (|P - T| < ``threshold``).
    Tensors are channels-last (batch, z, y, x, channels); the per-voxel values are averaged.
    """

    def __init__(self, mode: str = "multiclass", threshold: float = 0.5,
                 name: str = "accuracy", dtype: Any = None):
        super().__init__(name=name, dtype=dtype)
        if mode not in ACCURACY_MODES:
            raise UnetslError(f"accuracy mode {mode!r} must be one of {', '.join(ACCURACY_MODES)}")
        self.mode = mode
        self.threshold = float(threshold)

    def voxel_values(self, y_true, y_pred):
        """Per-voxel 1.0 (right) or 0.0 (wrong): shape (batch, z, y, x)."""
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
        if self.mode == "categorical":
            return _categorical(y_true, y_pred)
        if self.mode == "multiclass":
            return _multiclass(y_true, y_pred, self.threshold)
        return _linear(y_true, y_pred, self.threshold)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(self.voxel_values(y_true, y_pred), sample_weight=sample_weight)

    def get_config(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "mode": self.mode,
                "threshold": self.threshold}


@keras.saving.register_keras_serializable(package="unetsl")
class BinaryAccuracy(keras.metrics.Mean):
    """Fraction of (voxel, channel) pairs where target and prediction agree about > threshold."""

    def __init__(self, threshold: float = 0.5, name: str = "binary_accuracy", dtype: Any = None):
        super().__init__(name=name, dtype=dtype)
        self.threshold = float(threshold)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
        agree = ops.cast(ops.equal(y_true > self.threshold, y_pred > self.threshold), "float32")
        return super().update_state(ops.mean(agree, axis=-1), sample_weight=sample_weight)

    def get_config(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "threshold": self.threshold}


@keras.saving.register_keras_serializable(package="unetsl")
class ChannelF1(keras.metrics.Metric):
    """Voxel F1 (the Dice of the thresholded prediction) of one output channel.

    So that a channel the model never predicts (a sparse vertex channel, a collapsed
    output) is visible every epoch, where a loss or accuracy over all channels hides it.
    mode : "categorical" (the channel wins the arg-max) or "multiclass" (> 0.5), for target
    and prediction alike. A channel absent from both target and prediction scores 1.
    """

    def __init__(self, channel: int = 0, mode: str = "multiclass", name: str | None = None,
                 dtype: Any = None):
        super().__init__(name=name or f"f1_{channel}", dtype=dtype)
        if mode not in ("categorical", "multiclass"):
            raise UnetslError(f"F1 mode {mode!r} must be categorical or multiclass")
        self.channel, self.mode = int(channel), mode
        self.counts = self.add_variable(shape=(3,), initializer="zeros", name="counts")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
        if self.mode == "categorical":
            truth = ops.equal(ops.argmax(y_true, axis=-1), self.channel)
            said = ops.equal(ops.argmax(y_pred, axis=-1), self.channel)
        else:
            truth = y_true[..., self.channel] > 0.5
            said = y_pred[..., self.channel] > 0.5
        truth, said = ops.cast(truth, "float32"), ops.cast(said, "float32")
        weight = None if sample_weight is None else ops.convert_to_tensor(sample_weight)
        if weight is not None and len(weight.shape) == len(truth.shape):
            # voxel weights: a voxel of weight 0 (unknown label) counts neither way
            known = ops.cast(weight > 0, "float32")
            truth, said = truth * known, said * known
        tp = ops.sum(truth * said)
        self.counts.assign_add(ops.stack([tp, ops.sum(said) - tp, ops.sum(truth) - tp]))

    def result(self):
        tp, fp, fn = self.counts[0], self.counts[1], self.counts[2]
        total = 2 * tp + fp + fn
        return ops.where(total > 0, 2 * tp / ops.maximum(total, 1.0), 1.0)

    def reset_state(self):
        self.counts.assign(ops.zeros((3,)))

    def get_config(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "channel": self.channel,
                "mode": self.mode}


def metrics_for_activation(activation: str, channels: int = 0) -> list[keras.metrics.Metric]:
    """``[accuracy, binary_accuracy]`` for an output with this final activation, then one
    :class:`ChannelF1` (``f1_<k>``) per channel (``channels``) unless the output is linear."""
    mode = reduction_for_activation(activation)
    metrics: list[keras.metrics.Metric] = [VoxelAccuracy(mode), BinaryAccuracy()]
    if mode != "linear":
        metrics += [ChannelF1(k, mode) for k in range(channels)]
    return metrics


def compile_metrics(output_names: list[str], activations: list[str],
                    channels: list[int] | None = None) -> list | dict:
    """The ``metrics=`` argument of ``model.compile``: a list (one output) or a dict per output.

    Keras then logs ``accuracy``, ``binary_accuracy``, ``loss`` (the original's columns) and
    ``f1_<k>`` per channel for a single output, and the same prefixed ``<output>_`` per output
    otherwise. channels : the channels of each output (none: no F1 scores).
    """
    counts = channels or [0] * len(output_names)
    if len(output_names) == 1:
        return metrics_for_activation(activations[0], counts[0])
    return {name: metrics_for_activation(act, n)
            for name, act, n in zip(output_names, activations, counts)}


@keras.saving.register_keras_serializable(package="unetsl")
class VoxelWeightedLoss(keras.losses.Loss):
    """A loss that also accepts one weight per voxel, (batch, z, y, x), as sample weight.

    Keras applies sample weights by multiplying them onto the loss values. Losses that give
    one value per voxel (cross-entropy, MSE) work with voxel weights as they are. The
    unetsl region losses (Dice, Jaccard, ...) give one value per patch, and Keras would
    broadcast (batch, z, y, x) weights against (batch,) values wrongly (silently when the
    batch size equals the patch width). For those, the weights multiply target and
    prediction before the loss: a voxel of weight 0 is ignored, one of weight 1 counts fully.
    Per-patch weights (batch,) are passed on to Keras unchanged.
    """

    def __init__(self, loss: Any, name: str | None = None, reduction: str = "sum_over_batch_size",
                 dtype: Any = None):
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        self.inner = loss
        super().__init__(name=name or getattr(loss, "name", "loss"), reduction=reduction,
                         dtype=dtype)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is None:
            return self.inner(y_true, y_pred)
        sample_weight = ops.convert_to_tensor(sample_weight)
        if len(sample_weight.shape) != len(y_pred.shape) - 1 or len(y_pred.shape) < 3:
            return self.inner(y_true, y_pred, sample_weight)
        values = self.inner.call(ops.convert_to_tensor(y_true), ops.convert_to_tensor(y_pred))
        if len(values.shape) == len(sample_weight.shape):
            return self.inner(y_true, y_pred, sample_weight)  # one loss value per voxel
        weight = ops.expand_dims(ops.cast(sample_weight, y_pred.dtype), -1)
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
        return self.inner(y_true * weight, y_pred * weight)

    def call(self, y_true, y_pred):
        return self.inner.call(y_true, y_pred)

    def get_config(self) -> dict:
        return {"name": self.name, "reduction": self.reduction,
                "loss": keras.saving.serialize_keras_object(self.inner)}
