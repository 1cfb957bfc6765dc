"""Training cerberus (multi-head) configs: each head's target from its bits of the label
(bit field -> labeller -> resampler), the "training" section, train_model end to end,
Ctrl-C and --resume, and the one-line errors.

The data are tiny synthetic epithelium time series (2 frames of 48 x 48) whose labels carry
membrane/vertex in bits 0-1 and the distance to the membrane in bits 2-7, as the original's
default heads expect; the model is a 2-filter, depth-2 U-Net on 1 x 32 x 32 patches.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from skimage.measure import block_reduce

from unetsl.config.cerberus_layout import CerberusTraining, default_loss, training_keys
from unetsl.config.heads import DEFAULT_HEADS, RESAMPLERS, Head
from unetsl.config.model_config import Config
from unetsl.data import synthetic
from unetsl.data.targets import HeadTargets, bit_field, head_target, resample_target
from unetsl.errors import UnetslError

UNET = {"input shape": [1, 1, 32, 32], "kernel shape": [1, 3, 3], "pooling": [1, 2, 2],
        "depth": 2, "n filters": 2, "spatial dropout rate": 0.0}
LINEAR = {"source type": "paired directories", "input folders": ["images"],
          "label folders": ["labels"], "labeller": "linear labels"}
NAMES = ["distance", "membrane-scale", "membrane-crop"]
DICE = "unetsl.model.sorensenDiceCoefLoss"
LOG_MSE = "unetsl.model.logMse"
SMALL = ["-D", "epochs=2", "-D", "stride=[0,1,16,16]", "-D", "batch size=2",
         "-D", "initial learning rate=0.01", "-D", "seed=1"]


def default_heads() -> list[dict]:
    return json.loads(json.dumps(DEFAULT_HEADS))


def heads_of(depth: int = 2) -> list[Head]:
    return [Head.from_dict(h, where="t", index=i, unet_depth=depth)
            for i, h in enumerate(default_heads())]


def write_data(root: Path, *, n_images: int = 2, shape=(2, 48, 48), dtype=np.uint8) -> None:
    """images/e<i>.tif and labels/e<i>.tif: bit-packed labels (bits 0-1 membrane/vertex,
    bits 2-7 distance)."""
    for i in range(n_images):
        sample = synthetic.make_sample("2d", shape, seed=i)
        synthetic.write_imagej(root / "images" / f"e{i}.tif", sample.image)
        labels = synthetic.pack_cerberus_labels(sample.labels, sample.distance).astype(dtype)
        synthetic.write_imagej(root / "labels" / f"e{i}.tif", labels)


def write_config(root: Path, name: str = "tiny.json", **sections) -> Path:
    data = {"unet": dict(UNET), "heads": default_heads(), "data sources": [dict(LINEAR)],
            **sections}
    path = root / name
    path.write_text(json.dumps(data, indent=2))
    return path


def data_lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]


# --------------------------------------------------------------------------- targets


def test_label_21_gives_membrane_1_and_distance_5():
    label = np.full((1, 4, 4), 21, np.uint8)  # 0b0001_0101
    assert np.all(bit_field(label, 2, 0) == 1) and np.all(bit_field(label, 6, 2) == 5)
    distance, scale, crop = heads_of()
    d = head_target(label, distance, (1, 2, 2))
    assert d.shape == (1, 1, 4, 4) and np.all(d == 5)
    for head, size in ((scale, 2), (crop, 4)):
        t = head_target(label, head, (1, 2, 2))
        assert t.shape == (2, 1, size, size)
        assert np.all(t[0] == 1) and np.all(t[1] == 0)  # membrane only, no vertex
    full = np.full((1, 2, 2), 255, np.uint16)  # all 8 bits: vertex + distance 63
    assert np.all(head_target(full, distance, (1, 2, 2)) == 63)
    assert np.all(head_target(full, crop, (1, 2, 2)) == 1)


def test_resamplers_pool_and_crop_to_head_resolution():
    target = np.arange(16).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(resample_target(target, "max pool", (1, 2, 2))[0, 0],
                                  [[5, 7], [13, 15]])
    np.testing.assert_array_equal(resample_target(target, "min pool", (1, 2, 2))[0, 0],
                                  [[0, 2], [8, 10]])
    np.testing.assert_array_equal(resample_target(target, "crop", (1, 2, 2))[0, 0],
                                  [[5, 6], [9, 10]])
    for resampler in RESAMPLERS:  # depth 0: identities
        assert resample_target(target, resampler, (1, 1, 1)) is target
    volume = np.random.default_rng(0).integers(0, 9, (2, 4, 8, 8))
    for resampler, reduce in (("max pool", np.max), ("min pool", np.min)):
        pooled = resample_target(volume, resampler, (2, 4, 4))
        assert pooled.shape == (2, 2, 2, 2)
        np.testing.assert_array_equal(pooled, block_reduce(volume, (1, 2, 4, 4), reduce))
    np.testing.assert_array_equal(resample_target(volume, "crop", (2, 4, 4)),
                                  volume[:, 1:3, 3:5, 3:5])
    with pytest.raises(UnetslError, match="multiples"):
        resample_target(np.zeros((1, 1, 6, 6)), "max pool", (1, 4, 4))


def test_targets_of_every_head_for_one_patch():
    sample = synthetic.make_sample("2d", (3, 16, 16), seed=3)
    label = synthetic.pack_cerberus_labels(sample.labels, sample.distance)
    made = HeadTargets(heads_of(3), (1, 2, 2))(label)
    assert list(made) == NAMES
    assert made["distance"].shape == (1, 3, 16, 16)
    np.testing.assert_array_equal(made["distance"][0], label >> 2)
    assert made["membrane-crop"].shape == (2, 3, 16, 16)
    np.testing.assert_array_equal(made["membrane-crop"][1], (label >> 1) & 1)
    assert made["membrane-scale"].shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(made["membrane-scale"],
                                  block_reduce(made["membrane-crop"], (1, 1, 2, 2), np.max))
    # a 2-D patch (z == 1) is not pooled in z, as the 2-D U-Net
    flat = HeadTargets(heads_of(3), (2, 2, 2))(label[:1])
    assert flat["membrane-scale"].shape == (2, 1, 8, 8)


def test_batches_hold_one_target_per_head(tmp_path: Path):
    from unetsl.data.dataset import PatchDataset, load_option_volumes, regions_for
    from unetsl.data.dataset_options import DatasetOptions

    write_data(tmp_path)
    cfg = Config.load(write_config(tmp_path))
    options = DatasetOptions.from_config(cfg)
    patch = (1, 1, 32, 32)
    volumes = load_option_volumes(options, patch_shape=patch, n_labels=1)
    regions, _ = regions_for(volumes, options, patch[1:], 0)
    dataset = PatchDataset(volumes, regions, options, patch_shape=patch, n_labels=1,
                           output_names=NAMES, batch_size=2, seed=0, training=False,
                           targets=HeadTargets(cfg.heads(), cfg["pooling"]))
    x, y = dataset[0]
    assert x.shape == (2, 1, 32, 32, 1) and list(y) == NAMES
    assert {k: v.shape for k, v in y.items()} == {
        "distance": (2, 1, 32, 32, 1), "membrane-scale": (2, 1, 16, 16, 2),
        "membrane-crop": (2, 1, 32, 32, 2)}
    assert all(v.dtype == np.float32 for v in y.values())
    label = dataset.patch_at(0).label
    np.testing.assert_array_equal(y["distance"][0, ..., 0], (label >> 2) & 63)
    np.testing.assert_array_equal(y["membrane-crop"][0, ..., 0], label & 1)


# --------------------------------------------------------------------------- config


def test_training_defaults_per_head_and_the_file_layout(tmp_path: Path):
    heads = default_heads() + [dict(DEFAULT_HEADS[1], name="skeleton"),
                               dict(DEFAULT_HEADS[0], name="cells")]
    cfg = Config.load(write_config(tmp_path, heads=heads))
    assert isinstance(cfg, CerberusTraining) and not cfg.had_training
    assert cfg["loss function"] == {"distance": LOG_MSE, "membrane-scale": DICE,
                                    "membrane-crop": DICE, "skeleton": DICE,
                                    "cells": "keras.losses.mean_squared_error"}
    assert default_loss("cell-distance") == LOG_MSE
    assert cfg["loss weights"] == dict.fromkeys(cfg.head_names, 1)
    assert cfg["epochs"] == Config()["epochs"] and cfg["input shape"] == UNET["input shape"]
    assert cfg.model_path == tmp_path / "tiny.h5"
    assert cfg.sibling("-latest.h5") == tmp_path / "tiny-latest.h5"
    text = cfg.to_json()
    assert text.startswith('{\n  "unet": {\n    "input shape"') and not text.endswith("\n")
    data = json.loads(text)
    assert list(data) == ["unet", "heads", "data sources", "training"]
    assert list(data["training"]) == [*training_keys(), "loss weights"]
    assert "input shape" not in data["training"] and "n labels" not in data["training"]


def test_training_section_and_overrides(tmp_path: Path):
    path = write_config(tmp_path, training={
        "epochs": 3, "loss function": {"distance": "mse"},
        "loss weights": {"membrane-crop": 0.5}})
    cfg = Config.load(path)
    assert cfg.had_training and cfg["epochs"] == 3
    assert cfg["loss function"] == {"distance": "mse", "membrane-scale": DICE,
                                    "membrane-crop": DICE}
    assert cfg["loss weights"] == {"distance": 1, "membrane-scale": 1, "membrane-crop": 0.5}
    cfg.apply_overrides(["n filters=4", "batch size=3",
                         'loss function="keras.losses.hinge"',
                         "heads=" + json.dumps(default_heads()[:2])])
    assert cfg["n filters"] == 4 and cfg.cerberus.unet["n filters"] == 4
    assert cfg["batch size"] == 3 and cfg.head_names == NAMES[:2]
    assert cfg["loss function"] == dict.fromkeys(NAMES[:2], "keras.losses.hinge")
    assert cfg["loss weights"] == dict.fromkeys(NAMES[:2], 1)
    cfg.save()
    again = Config.load(path)
    assert again.to_json() == cfg.to_json() == path.read_text()
    edited = {**again.training_section(), "epochs": 9}  # what the editor hands back
    assert again.with_training(edited)["epochs"] == 9 and again["epochs"] == 3


def test_editor_edits_the_training_section(tmp_path: Path, monkeypatch):
    import unetsl.cli.train_model as command

    path = write_config(tmp_path, **{"data sources": []})
    seen = {}

    def fake_editor(values, title, validate):
        seen.update(values)
        edited = {**values, "epochs": 5, "loss weights": {"distance": 2}}
        validate(edited)
        return edited

    monkeypatch.setattr(command, "interactive", lambda batch: True)
    monkeypatch.setattr(command, "edit_values", fake_editor)
    result = CliRunner().invoke(command.main, ["-c", str(path)])
    assert result.exit_code == 2 and 'no "data sources"' in result.output  # after saving
    assert list(seen) == [*training_keys(), "loss weights"]
    saved = json.loads(path.read_text())["training"]
    assert saved["epochs"] == 5
    assert saved["loss weights"] == {"distance": 2, "membrane-scale": 1, "membrane-crop": 1}


@pytest.mark.parametrize("change, needle", [
    ({"training": {"loss function": {"nose": "mse"}}},
     '"loss function" has an entry for "nose", which is not a head'),
    ({"training": {"loss function": {"distance": "msee"}}},
     '"loss function" of head "distance": "msee" is unknown'),
    ({"training": {"loss weights": {"distance": -1}}},
     '"loss weights" of head "distance" must be a number >= 0'),
    ({"training": {"depth": 3}}, '"depth" does not belong in "training"'),
    ({"training": {"n labels": 2}}, '"n labels" does not belong in "training"'),
    ({"training": {"epochs": 0}}, 'key "epochs" must be'),
    ({"data sources": [dict(LINEAR, **{"source type": "weighted directories",
                                       "weights folders": ["w"]})]},
     "source 0: weighted sources are not supported for cerberus"),
    ({"data sources": [dict(LINEAR, labeller="multiclass labels")]},
     'source 0: "labeller" must be "linear labels" for cerberus'),
], ids=["loss-head", "loss-name", "weight", "unet-key", "n-labels", "value", "weighted",
        "labeller"])
def test_bad_training_settings_fail_in_one_line(tmp_path: Path, change: dict, needle: str):
    from unetsl.training.setup import check_training_config

    path = write_config(tmp_path, **change)
    with pytest.raises(UnetslError) as err:
        check_training_config(Config.load(path))
    assert needle in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- train_model


def test_train_model_trains_every_head(tmp_path: Path, run_script):
    from unetsl.nets.model_files import load_model
    from unetsl.training.logs import read_log

    write_data(tmp_path)
    path = write_config(tmp_path)
    result = run_script("train_model", "-c", "tiny.json", "-b", *SMALL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for name in ("tiny.h5", "tiny-latest.h5", "tiny-best.h5", "tiny-curves.png"):
        assert (tmp_path / name).is_file(), name
    for name in ("tiny-latest.h5", "tiny-best.h5"):
        model = load_model(tmp_path / name)
        assert list(model.output_names) == NAMES
        assert [tuple(o.shape[1:]) for o in model.outputs] == [
            (1, 32, 32, 1), (1, 16, 16, 2), (1, 32, 32, 2)]
    # the training section (absent before) is written with the head losses; the -D values
    # were for this run only
    text = path.read_text()
    saved = json.loads(text)
    assert text.startswith('{\n  "unet"') and list(saved)[-1] == "training"
    assert saved["training"]["epochs"] == 2000
    assert saved["training"]["loss function"] == {"distance": LOG_MSE, "membrane-scale": DICE,
                                                  "membrane-crop": DICE}
    assert saved["training"]["loss weights"] == dict.fromkeys(NAMES, 1)
    epoch_log = next(tmp_path.glob("training-log_tiny-*.txt"))
    snapshot = json.loads(epoch_log.with_suffix(".json").read_text())  # the run's config
    assert snapshot["training"]["epochs"] == 2 and snapshot["heads"] == saved["heads"]
    assert '#-D "epochs=2" (this run only)' in epoch_log.read_text()
    keys, rows = read_log(epoch_log)
    for name in NAMES:
        for metric in ("accuracy", "binary_accuracy", "loss"):
            assert f"{name}_{metric}" in keys and f"val_{name}_{metric}" in keys
    original = [k for k in keys if "_f1_" not in k]  # per-channel F1 columns come last
    assert keys[:len(original)] == original == sorted(original) and len(rows) == 2
    losses = [row[keys.index("loss") + 1] for row in rows]
    assert all(math.isfinite(v) for row in rows for v in row), rows
    assert losses[1] < losses[0], losses
    batch_keys, _ = read_log(next(tmp_path.glob("batch-log_tiny-*.txt")))
    assert batch_keys[1:4] == ["distance_accuracy", "distance_binary_accuracy", "distance_loss"]


@pytest.mark.parametrize("index, change, needles", [
    (1, {"colour": 1}, ['heads[1]: unknown key "colour"']),
    (1, {"resampler": "region crop"},
     ['head "membrane-scale"', '"resampler" "region crop" is not supported']),
    (2, {"depth": 2}, ['head "membrane-crop"', '"depth" 2 is out of range']),
    (1, {"n_labels": 1},
     ['head "membrane-scale"', "needs 2 output channels", 'head "n_labels" is 1', "e0.tif"]),
], ids=["key", "resampler", "depth", "n_labels"])
def test_bad_heads_fail_in_one_line(tmp_path: Path, index: int, change: dict,
                                    needles: list[str]):
    from unetsl.cli.train_model import main as train_model

    write_data(tmp_path, n_images=1)
    path = write_config(tmp_path)
    data = json.loads(path.read_text())
    data["heads"][index].update(change)
    path.write_text(json.dumps(data, indent=2))
    result = CliRunner().invoke(train_model, ["-c", str(path), "-b"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for needle in (str(path), *needles):
        assert needle in errors[0], errors[0]


def test_bits_beyond_the_label_image_fail_in_one_line(tmp_path: Path, assert_one_line_error,
                                                      run_script):
    write_data(tmp_path, n_images=1)  # uint8 labels: bits 0..7
    heads = default_heads()
    heads[0]["offset"] = 4  # bits 4..9
    write_config(tmp_path, heads=heads)
    result = run_script("train_model", "-c", "tiny.json", "-b", cwd=tmp_path)
    assert_one_line_error(result, "tiny.json", 'head "distance"', '"offset" 4 + "bits" 6',
                          "e0.tif", "uint8")


def test_ctrl_c_saves_latest_and_resume_finishes(tmp_path: Path):
    from unetsl.nets.model_files import load_model
    from unetsl.training.checkpoints import read_state
    from unetsl.training.train import train

    write_data(tmp_path)
    cfg = Config.load(write_config(tmp_path, training={
        "epochs": 200, "stride": [0, 1, 4, 4], "batch size": 1, "validation fraction": 0.0,
        "seed": 1}))

    def press_ctrl_c() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            logs = list(tmp_path.glob("batch-log_tiny-*.txt"))
            if logs and len(data_lines(logs[0])) >= 3:
                break
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    first = train(cfg, progress="none")
    presser.join()
    assert first.interrupted == signal.SIGINT
    latest = tmp_path / "tiny-latest.h5"
    state = read_state(latest)
    assert state.interrupted and state.epochs_done == 0 and state.batches_done >= 3
    assert list(load_model(latest).output_names) == NAMES
    cfg["epochs"] = 1
    second = train(cfg, resume=True, progress="none")
    assert second.interrupted is None and second.epochs_done == 1
    assert read_state(latest).run_ids == [first.run_id, second.run_id]
    assert "#resumed: tiny-latest.h5 at epoch 0" in second.epoch_log.read_text()


def test_original_cerberus_config_trains(compat: Path, tmp_path: Path, run_script):
    from unetsl.nets.model_files import load_model

    shutil.copy(compat / "cerberus.json", tmp_path / "cerberus.json")
    original = json.loads((compat / "cerberus.json").read_text())
    write_data(tmp_path, shape=(3, 40, 40))
    attached = run_script("attach_data_sources", "-c", "cerberus.json", "--paired", "images",
                          "labels", "--labeller", "linear", "-b", cwd=tmp_path)
    assert attached.returncode == 0, attached.stderr
    result = run_script("train_model", "-c", "cerberus.json", "-b", "-D", "n filters=2",
                        "-D", "input shape=[1,3,32,32]", "-D", "epochs=1",
                        "-D", "stride=[0,3,8,8]", "-D", "batch size=2", "--save-config",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    model = load_model(tmp_path / "cerberus-latest.h5")
    assert list(model.output_names) == NAMES
    assert [tuple(o.shape[1:]) for o in model.outputs] == [
        (3, 32, 32, 1), (3, 16, 16, 2), (3, 32, 32, 2)]
    saved = json.loads((tmp_path / "cerberus.json").read_text())
    assert saved["heads"] == original["heads"]
    assert saved["unet"]["n filters"] == 2 and saved["data sources"][0]["labeller"] == (
        "linear labels")
    assert saved["training"]["loss function"] == {"distance": LOG_MSE, "membrane-scale": DICE,
                                                  "membrane-crop": DICE}
