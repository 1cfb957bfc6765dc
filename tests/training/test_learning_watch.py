"""Visible failure while training: per-channel F1 every epoch (logged after the original's
columns), and one-line warnings for a collapsed model and a channel that never fires."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from unetsl.config.model_config import Config
from unetsl.data.synthetic import write_dataset
from unetsl.io.tiff import read_image, write_image
from unetsl.nets.losses import get_loss
from unetsl.training.checkpoints import monitor_mode
from unetsl.training.logs import is_channel_score, read_log
from unetsl.training.metrics import ChannelF1
from unetsl.training.train import train


def _f1(metric: ChannelF1, truth: np.ndarray, prediction: np.ndarray) -> float:
    metric.reset_state()
    metric.update_state(truth.astype(np.float32), prediction.astype(np.float32))
    return float(metric.result())


def test_channel_f1_counts_voxels_of_one_channel():
    truth = np.zeros((1, 1, 4, 4, 2), np.float32)
    truth[0, 0, :2, :, 0] = 1  # 8 voxels in channel 0, none in channel 1
    prediction = np.zeros_like(truth)
    prediction[0, 0, :1, :, 0] = 0.9  # 4 right, none wrong
    prediction[0, 0, 3, :2, 0] = 0.7  # 2 false positives
    assert _f1(ChannelF1(0), truth, prediction) == pytest.approx(2 * 4 / (2 * 4 + 2 + 4))
    assert _f1(ChannelF1(1), truth, prediction) == 1.0  # empty and predicted empty
    prediction[0, 0, 0, 0, 1] = 0.6
    assert _f1(ChannelF1(1), truth, prediction) == 0.0  # one false positive, nothing right
    softmax = np.stack([1 - truth[..., 0], truth[..., 0]], axis=-1)
    assert _f1(ChannelF1(1, "categorical"), softmax, softmax) == 1.0
    assert monitor_mode("val_f1_1") == "max" and monitor_mode("val_loss") == "min"
    assert is_channel_score("val_membrane_f1_0") and not is_channel_score("val_loss")


def test_default_loss_learns_a_sparse_channel_gradient():
    """The per-channel Dice term gives a sparse channel as much weight as a large one."""
    truth = np.zeros((1, 1, 8, 8, 2), np.float32)
    truth[..., 0] = 1.0
    truth[0, 0, 3, 3, 1] = 1.0  # one vertex voxel
    empty = np.full_like(truth, 0.01)
    empty[..., 0] = 0.99
    found = empty.copy()
    found[0, 0, 3, 3, 1] = 0.99
    loss, bce = get_loss("unetsl.channelDiceBceLoss"), get_loss("binary_crossentropy")
    gain = float(loss(truth, empty)) - float(loss(truth, found))
    assert gain > 0.2 and gain > 5 * (float(bce(truth, empty)) - float(bce(truth, found)))


@pytest.fixture(scope="module")
def collapsed(tmp_path_factory):
    """A bright raw image and a learning rate of 1: the model collapses to constant output."""
    root = tmp_path_factory.mktemp("collapse")
    write_dataset(root, "2d", n_images=1, shape=(3, 32, 32), seed=3, distance=False)
    path = root / "images" / "epi-000.tif"
    image = read_image(path)
    write_image(path, image.data.astype(np.float32) * 40 + 3000, spacing=image.spacing)
    cfg = Config(path=root / "m.json")
    cfg.update({"input shape": [1, 1, 16, 16], "depth": 2, "n filters": 2, "n labels": 2,
                "pooling": [1, 2, 2], "stride": [0, 1, 8, 8], "batch size": 2, "epochs": 3,
                "seed": 7, "validation fraction": 0.25, "spatial dropout rate": 0.0,
                "initial learning rate": 1.0,
                "data sources": [{"source type": "paired directories",
                                  "input folders": ["images"], "label folders": ["labels"],
                                  "labeller": "multiclass labels"}]})
    cfg.save()
    return cfg


def test_collapse_and_silent_channel_are_said_once(collapsed, caplog):
    with caplog.at_level(logging.WARNING, logger="unetsl"):
        result = train(collapsed, progress="none")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    collapse = [w for w in warnings if "has collapsed" in w]
    assert len(collapse) == 1 and "\n" not in collapse[0], warnings
    assert "output " in collapse[0] and "initial learning rate" in collapse[0]
    assert '"sampling": "foreground"' in collapse[0]  # the config samples a grid
    assert '"loss function": "unetsl.batchDiceBceLoss"' in collapse[0]  # a Dice per patch
    silent = [w for w in warnings if "never matches its target" in w]
    assert silent and all(w.startswith("val_f1_") for w in silent), warnings
    keys, rows = read_log(result.epoch_log)
    original = ["accuracy", "binary_accuracy", "loss", "val_accuracy", "val_binary_accuracy",
                "val_loss"]
    assert keys[:6] == original  # the original's columns first, in its order
    assert keys[6:] == ["f1_0", "f1_1", "val_f1_0", "val_f1_1"]
    assert len(rows) == 3


def test_advice_leaves_out_what_the_config_already_does():
    from unetsl.training.callbacks import LearningWatch

    advice = [("loss function", "unetsl.channelDiceBceLoss", "the Dice + BCE loss"),
              ("sampling", "foreground", "foreground sampling")]
    done = LearningWatch(np.zeros(1), validation=True,
                         settings={"loss function": "unetsl.channelDiceBceLoss"})
    assert done._try(*advice) == "; try foreground sampling"
    assert LearningWatch(np.zeros(1), validation=True)._try(*advice) == (
        "; try the Dice + BCE loss and foreground sampling")
    per_head = LearningWatch(np.zeros(1), validation=True, settings={"loss function": {
        "distance": "unetsl.model.logMse", "membrane": "unetsl.channelDiceBceLoss"}})
    assert per_head._try(*advice, head="membrane") == "; try foreground sampling"
    assert per_head._try(*advice) == "; try the Dice + BCE loss and foreground sampling"


def _one_layer(activation: str, bias: float, channels: int = 2):
    import keras

    inputs = keras.Input((1, 8, 8, 1))
    outputs = keras.layers.Conv3D(
        channels, 1, activation=activation, name="output",
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=1),
        bias_initializer=keras.initializers.Constant(bias))(inputs)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("activation,bias,warned", [
    ("sigmoid", 6.0, True),    # on everywhere: the Dice-alone collapse
    ("sigmoid", -1.0, False),  # on nowhere or in places: the other warnings' business
    ("softmax", 6.0, False),   # a softmax background may rightly win everywhere
    ("linear", 6.0, False),    # distances, not probabilities
])
def test_a_channel_on_everywhere_is_said_once(activation, bias, warned, caplog):
    from unetsl.training.callbacks import LearningWatch

    probe = np.random.default_rng(0).normal(size=(2, 1, 8, 8, 1)).astype(np.float32)
    watch = LearningWatch(probe, validation=True, patience=2)
    watch.set_model(_one_layer(activation, bias))
    with caplog.at_level(logging.WARNING, logger="unetsl"):
        watch.on_epoch_end(0, {})  # before the patience: nothing
        assert not [r for r in caplog.records if r.name.startswith("unetsl")]
        watch.on_epoch_end(1, {})
        watch.on_epoch_end(2, {})
    said = [r.getMessage() for r in caplog.records if "marks everything" in r.getMessage()]
    if warned:
        assert len(said) == 2 and "channel 0" in said[0] and "channel 1" in said[1], said
        assert "\n" not in said[0] and "normalization percentiles" in said[0]
    else:
        assert said == []
