"""The overlay PNG and predict_image's use of the training config's normalisation."""

from __future__ import annotations

import json

import numpy as np

from unetsl.config.model_config import config_for_model
from unetsl.evaluate.overlay import overlay_png
from unetsl.io.tiff import write_image
from unetsl.predict.job import PredictionJob


def test_overlay_colours_hits_extras_and_misses(tmp_path):
    image = np.zeros((1, 1, 1, 20, 20), np.uint16)
    truth = np.zeros_like(image, dtype=np.uint8)
    pred = np.zeros_like(truth)
    truth[..., 5, :] = 1      # a membrane row
    pred[..., 5, :10] = 1     # found on the left half only
    pred[..., 15, :] = 1      # an extra row
    overlay_png(tmp_path / "o.png", image, pred, truth)
    import matplotlib.image as mpimg

    rgb = mpimg.imread(tmp_path / "o.png")[..., :3]
    assert rgb.shape[1] > rgb.shape[0] * 2  # three panels side by side
    r, g, b = rgb.reshape(-1, 3).T
    assert np.any((g > 0.8) & (r < 0.2) & (b < 0.2))   # hit: green
    assert np.any((r > 0.8) & (g < 0.2) & (b > 0.8))   # extra: magenta
    assert np.any((b > 0.9) & (r < 0.3) & (g < 0.5))   # missed: blue


def test_evaluate_prediction_writes_overlay(tmp_path, run_script):
    labels = np.zeros((1, 1, 3, 32, 32), np.uint8)
    labels[..., ::8, :] = 1
    labels[..., :, ::8] = 1
    write_image(tmp_path / "truth.tif", labels)
    write_image(tmp_path / "pred.tif", labels)
    write_image(tmp_path / "image.tif", labels.astype(np.uint16) * 1000 + 100)
    result = run_script("evaluate_prediction", "pred.tif", "truth.tif", "--overlay", "o.png",
                        "--image", "image.tif", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o.png").stat().st_size > 1000
    missing = run_script("evaluate_prediction", "pred.tif", "truth.tif", "--overlay", "o.png",
                         cwd=tmp_path)
    assert missing.returncode != 0 and "--image" in missing.stderr


def test_prediction_normalises_as_training_did(tmp_path):
    (tmp_path / "net.json").write_text(json.dumps({"normalize samples": True}))
    for name in ("net.h5", "net-best.h5", "net-latest.h5"):
        model = tmp_path / name
        assert config_for_model(model) == tmp_path / "net.json"
        job = PredictionJob.create(model, tmp_path / "img.tif")
        assert job.values["normalize samples"] is True
    assert config_for_model(tmp_path / "other.h5") is None
    assert PredictionJob.create(tmp_path / "other.h5", tmp_path / "i.tif").values[
        "normalize samples"] is False


def test_cerberus_prediction_normalises_as_its_training_section_says(tmp_path):
    config = {"unet": {"input shape": [1, 1, 32, 32]}, "heads": [],
              "training": {"normalize samples": True}}
    (tmp_path / "cerb.json").write_text(json.dumps(config))
    assert PredictionJob.create(tmp_path / "cerb-best.h5", tmp_path / "i.tif").values[
        "normalize samples"] is True
    config["normalize samples"] = True  # a top-level key is not a cerberus training setting
    config["training"] = {}
    (tmp_path / "cerb.json").write_text(json.dumps(config))
    assert PredictionJob.create(tmp_path / "cerb.h5", tmp_path / "i.tif").values[
        "normalize samples"] is False
