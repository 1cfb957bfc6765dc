"""The batch Dice + BCE loss (issue 27): one Dice per channel over the whole batch, so that a
patch without objects does not push every output to 0."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from unetsl.nets.losses import BatchDiceBceLoss, get_loss


def _batch() -> tuple[np.ndarray, np.ndarray]:
    """Patch 0 holds a 4 x 4 object found at 0.9; patch 1 is empty, predicted 0.05."""
    truth = np.zeros((2, 1, 8, 8, 1), np.float32)
    truth[0, 0, 2:6, 2:6] = 1.0
    pred = np.full_like(truth, 0.05)
    pred[0, 0, 2:6, 2:6] = 0.9
    return truth, pred


def _bce(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    return -(truth * np.log(pred) + (1 - truth) * np.log(1 - pred)).mean(axis=(1, 2, 3, 4))


def test_the_dice_is_shared_by_the_batch():
    truth, pred = _batch()
    inter = 16 * 0.9
    total = 16 + 16 * 0.9 + 48 * 0.05 + 64 * 0.05
    shared = 1 - (2 * inter + 1) / (total + 1)
    per_patch = BatchDiceBceLoss().call(truth, pred)
    assert np.allclose(np.asarray(per_patch), _bce(truth, pred) + shared, atol=1e-6)
    assert float(get_loss("unetsl.batchDiceBceLoss")(truth, pred)) == pytest.approx(
        float(np.mean(_bce(truth, pred) + shared)), abs=1e-6)


def test_an_empty_patch_weighs_far_less_than_with_a_dice_per_patch():
    """Per patch, the empty patch's Dice is 1/(3.2 + 1) = 0.24 (loss 0.76) for outputs of only
    0.05; over the batch its false positives cost a little of one shared Dice."""
    truth, pred = _batch()
    per_patch = np.asarray(get_loss("unetsl.channelDiceBceLoss").call(truth, pred))
    shared = np.asarray(BatchDiceBceLoss().call(truth, pred))
    bce = _bce(truth, pred)
    assert per_patch[1] - bce[1] == pytest.approx(1 - 1 / (64 * 0.05 + 1), abs=1e-5)  # 0.762
    assert shared[1] - bce[1] == pytest.approx(1 - 29.8 / 37, abs=1e-5)  # 0.195, shared


def test_it_is_saved_and_loaded_with_a_model(tmp_path):
    loss = BatchDiceBceLoss(smooth=2.0)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(again, BatchDiceBceLoss) and again.smooth == 2.0
    truth, pred = _batch()
    assert float(again(truth, pred)) == pytest.approx(float(loss(truth, pred)))
