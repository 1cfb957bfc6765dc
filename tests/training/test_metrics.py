"""Per-voxel accuracies and voxel-weighted losses on tiny tensors with values worked by hand."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from unetsl.errors import UnetslError
from unetsl.nets.losses import SorensenDiceCoefLoss, get_loss
from unetsl.training.metrics import (
    BinaryAccuracy,
    VoxelAccuracy,
    VoxelWeightedLoss,
    compile_metrics,
    metrics_for_activation,
)


def voxels(*values, channels: int = 1) -> np.ndarray:
    """(1, 1, 1, n, channels) float32 tensor of n voxels from a flat list."""
    return np.asarray(values, np.float32).reshape(1, 1, 1, -1, channels)


def result(metric, y_true, y_pred, sample_weight=None) -> float:
    metric.update_state(y_true, y_pred, sample_weight=sample_weight)
    return float(metric.result())


# --------------------------------------------------------------------------------- accuracy


def test_multiclass_threshold_is_strict_and_configurable():
    t = voxels(1, 0, 1, 0)
    p = voxels(0.5, 0.5, 0.35, 0.2)  # 0.5 is not above 0.5
    assert result(VoxelAccuracy("multiclass"), t, p) == pytest.approx(2 / 4)  # voxels 1, 3
    # at 0.3: 0.5 is right for voxel 0, wrong for voxel 1; 0.35 right, 0.2 right
    assert result(VoxelAccuracy("multiclass", threshold=0.3), t, p) == pytest.approx(3 / 4)


def test_multiclass_needs_every_channel_right():
    t = voxels(1, 1, 0, 1, 0, 0, channels=2)  # 3 voxels x 2 channels
    p = voxels(0.9, 0.1, 0.2, 0.8, 0.4, 0.6, channels=2)
    # voxel 0: channel 1 wrong; voxel 1: both right; voxel 2: channel 1 wrong
    assert result(VoxelAccuracy("multiclass"), t, p) == pytest.approx(1 / 3)
    # binary accuracy counts the 6 (voxel, channel) pairs: 4 agree
    assert result(BinaryAccuracy(), t, p) == pytest.approx(4 / 6)


def test_categorical_is_argmax_agreement():
    t = voxels(1, 0, 0, 0, 1, 0, 0, 0, 1, channels=3)
    p = voxels(0.2, 0.5, 0.3, 0.1, 0.6, 0.3, 0.3, 0.3, 0.4, channels=3)
    # voxel 0 picks channel 1 (wrong), voxel 1 channel 1 (right), voxel 2 channel 2 (right)
    assert result(VoxelAccuracy("categorical"), t, p) == pytest.approx(2 / 3)


def test_linear_tolerance_is_strict_over_all_channels():
    t = voxels(1.0, 2.0, 3.0, 4.0, channels=2)
    p = voxels(1.25, 2.0, 3.5, 4.0, channels=2)  # voxel 1 is off by exactly 0.5
    assert result(VoxelAccuracy("linear"), t, p) == pytest.approx(1 / 2)
    assert result(VoxelAccuracy("linear", threshold=0.75), t, p) == pytest.approx(1.0)
    assert result(VoxelAccuracy("linear", threshold=0.2), t, p) == pytest.approx(0.0)


def test_binary_accuracy_thresholds_soft_targets_too():
    t = voxels(0.6, 0.4, 0.9, 0.1)
    p = voxels(0.9, 0.6, 0.51, 0.5)
    # agree: 0.6/0.9 yes, 0.4/0.6 no, 0.9/0.51 yes, 0.1/0.5 yes (neither above 0.5)
    assert result(BinaryAccuracy(), t, p) == pytest.approx(3 / 4)
    assert result(BinaryAccuracy(threshold=0.55), t, p) == pytest.approx(2 / 4)


def test_voxel_weights_and_accumulation_over_batches():
    t = voxels(1, 0, 1, 1)
    p = voxels(0.9, 0.8, 0.1, 0.7)  # right, wrong, wrong, right
    metric = VoxelAccuracy("multiclass")
    weights = np.array([1, 3, 0, 0], np.float32).reshape(1, 1, 1, 4)
    assert result(metric, t, p, weights) == pytest.approx(1 / 4)  # (1*1 + 3*0) / (1 + 3)
    metric.reset_state()
    assert result(metric, t, p) == pytest.approx(2 / 4)
    # a running mean over batches of equal patches: 2 + 1 right of 4 + 4 voxels
    assert result(metric, t, voxels(0.0, 0.9, 0.0, 0.6)) == pytest.approx(3 / 8)
    # two patches in one batch, weighted per voxel: patch 0 counts only voxel 0 (right),
    # patch 1 only voxels 2 and 3 (wrong, right)
    metric.reset_state()
    w2 = np.array([[1, 0, 0, 0], [0, 0, 1, 1]], np.float32).reshape(2, 1, 1, 4)
    assert result(metric, np.concatenate([t, t]), np.concatenate([p, p]), w2) == \
        pytest.approx(2 / 3)
    binary = BinaryAccuracy()
    assert result(binary, t, p, np.array([0, 0, 2, 2], np.float32).reshape(1, 1, 1, 4)) == \
        pytest.approx(1 / 2)


def test_unknown_accuracy_mode_is_one_line():
    with pytest.raises(UnetslError, match="'softmax'") as err:
        VoxelAccuracy("softmax")
    assert "\n" not in str(err.value) and "categorical" in str(err.value)


def test_metrics_serialize_and_come_back_alike():
    t = voxels(1.0, 2.0, 3.0)
    p = voxels(1.3, 2.0, 2.0)
    for metric in (VoxelAccuracy("linear", threshold=0.4, name="acc"),
                   BinaryAccuracy(threshold=1.5)):
        again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
        assert type(again) is type(metric) and again.name == metric.name
        assert again.threshold == metric.threshold
        assert result(again, t, p) == pytest.approx(result(metric, t, p))
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(VoxelAccuracy("linear", threshold=0.4)))
    assert again.mode == "linear"
    assert result(again, t, p) == pytest.approx(2 / 3)  # 0.3 and 0.0 within 0.4, 1.0 not


def test_metrics_follow_the_output_activation():
    for activation, mode in [("softmax", "categorical"), ("sigmoid", "multiclass"),
                             ("relu", "linear"), ("linear", "linear")]:
        accuracy, binary = metrics_for_activation(activation)
        assert isinstance(accuracy, VoxelAccuracy) and accuracy.mode == mode
        assert accuracy.name == "accuracy"
        assert isinstance(binary, BinaryAccuracy) and binary.name == "binary_accuracy"
    single = compile_metrics(["output"], ["softmax"])
    assert isinstance(single, list) and single[0].mode == "categorical"
    per_output = compile_metrics(["cascade_0", "cascade_1"], ["sigmoid", "relu"])
    assert sorted(per_output) == ["cascade_0", "cascade_1"]
    assert per_output["cascade_0"][0].mode == "multiclass"
    assert per_output["cascade_1"][0].mode == "linear"
    assert per_output["cascade_0"][0] is not per_output["cascade_1"][0]


# ------------------------------------------------------------------------ VoxelWeightedLoss


def test_per_voxel_loss_weights_multiply_the_voxel_losses():
    loss = VoxelWeightedLoss(get_loss("mse"))
    t = voxels(0.0, 0.0)
    p = voxels(1.0, 2.0)  # squared errors 1 and 4
    assert float(loss(t, p)) == pytest.approx(2.5)
    w = np.array([1, 0], np.float32).reshape(1, 1, 1, 2)
    assert float(loss(t, p, w)) == pytest.approx(0.5)  # (1*1 + 0*4) / 2 voxels
    w = np.array([1, 3], np.float32).reshape(1, 1, 1, 2)
    assert float(loss(t, p, w)) == pytest.approx(6.5)  # (1 + 12) / 2


def test_region_loss_ignores_voxels_of_weight_zero():
    loss = VoxelWeightedLoss(SorensenDiceCoefLoss(smooth=1.0))
    t = voxels(1.0, 1.0)
    p = voxels(1.0, 0.5)
    # plain: -(2 * 1.5 + 1) / (2 + 1.5 + 1)
    assert float(loss(t, p)) == pytest.approx(-4 / 4.5, rel=1e-6)
    w = np.array([1, 0], np.float32).reshape(1, 1, 1, 2)
    # only voxel 0: -(2 * 1 + 1) / (1 + 1 + 1) = -1
    assert float(loss(t, p, w)) == pytest.approx(-1.0, rel=1e-6)
    # weight 1 everywhere is no weight at all
    assert float(loss(t, p, np.ones((1, 1, 1, 2), np.float32))) == pytest.approx(-4 / 4.5)


def test_per_patch_weights_go_to_keras_unchanged():
    loss = VoxelWeightedLoss(SorensenDiceCoefLoss(smooth=1.0))
    t = np.concatenate([voxels(1.0, 1.0), voxels(1.0, 0.0)])  # 2 patches
    p = np.concatenate([voxels(1.0, 0.5), voxels(0.0, 0.0)])
    first = -4 / 4.5
    second = -(0 + 1) / (1 + 0 + 1)
    assert float(loss(t, p)) == pytest.approx((first + second) / 2, rel=1e-6)
    w = np.array([2.0, 0.0], np.float32)
    assert float(loss(t, p, w)) == pytest.approx(2 * first / 2, rel=1e-6)


def test_weighted_loss_serializes_with_its_inner_loss():
    loss = VoxelWeightedLoss(SorensenDiceCoefLoss(smooth=0.5))
    assert loss.name == "sorensen_dice_coef_loss"
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(again, VoxelWeightedLoss)
    assert isinstance(again.inner, SorensenDiceCoefLoss) and again.inner.smooth == 0.5
    t, p = voxels(1.0, 0.0, 1.0), voxels(0.8, 0.3, 0.1)
    w = np.array([1, 1, 0], np.float32).reshape(1, 1, 1, 3)
    assert float(again(t, p, w)) == pytest.approx(float(loss(t, p, w)), rel=1e-6)
    # -(2 * 0.8 + 0.5) / (1 + 1.1 + 0.5) with the third voxel masked out
    assert float(loss(t, p, w)) == pytest.approx(-2.1 / 2.6, rel=1e-5)
