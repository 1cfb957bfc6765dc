"""Cerberus (multi-head) configs and models: building, low-resolution heads in the tiled
prediction (the original's "upsample" shaper), and the commands that accept them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unetsl.config.cerberus_layout import CerberusConfig, CerberusTraining, is_cerberus_file
from unetsl.config.heads import DEFAULT_HEADS
from unetsl.errors import UnetslError
from unetsl.nets.unet import build_model
from unetsl.predict.engine import predict, predict_outputs
from unetsl.predict.job import PredictionJob


def _config(tmp_path: Path, **unet) -> Path:
    data = {"unet": {"input shape": [1, 3, 16, 16], "kernel shape": [3, 3, 3],
                     "pooling": [1, 2, 2], "depth": 3, "n filters": 2,
                     "spatial dropout rate": 0.0625, **unet},
            "heads": json.loads(json.dumps(DEFAULT_HEADS)), "data sources": []}
    path = tmp_path / "cb.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def _cli(command, folder: Path, *args: str):
    from click.testing import CliRunner

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        return CliRunner().invoke(command, list(args))
    finally:
        os.chdir(cwd)


def _half_model():
    import keras

    inputs = keras.Input((1, 16, 16, 1))
    x = keras.layers.Conv3D(2, 3, padding="same", activation="relu")(inputs)
    full = keras.layers.Conv3D(1, 1, activation="sigmoid", name="full")(x)
    x = keras.layers.MaxPooling3D((1, 2, 2))(x)
    half = keras.layers.Conv3D(2, 1, activation="sigmoid", name="half")(x)
    return keras.Model(inputs, [full, half])


# ------------------------------------------------------------------ low-resolution outputs


def test_half_resolution_output_is_repeated_per_voxel():
    model = _half_model()
    image = np.random.default_rng(0).random((1, 1, 1, 16, 16)).astype(np.float32)
    out = predict(model, image, output_index=1)  # one tile: exactly the shaper's result
    direct = model.predict_on_batch(np.moveaxis(image, 1, -1))[1]  # (1, 1, 8, 8, 2)
    expected = np.repeat(np.repeat(np.moveaxis(direct, -1, 1), 2, axis=3), 2, axis=4)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_half_resolution_output_tiles_a_larger_image(tmp_path: Path):
    model = _half_model()
    model.save(tmp_path / "two.keras")
    image = np.random.default_rng(1).random((2, 37, 45)).astype(np.float32)
    tifffile.imwrite(tmp_path / "img.tif", image, imagej=True, metadata={"axes": "ZYX"})
    job = PredictionJob.create(tmp_path / "two.keras", tmp_path / "img.tif",
                               tmp_path / "out.tif", all_outputs=True)
    written = job.run().written
    assert [p.name for p in written] == ["out-full.tif", "out-half.tif"]
    half = tifffile.imread(tmp_path / "out-half.tif")
    assert half.size == 2 * 37 * 45 and half.max() <= 3  # multiclass bits of 2 channels
    job = PredictionJob.create(tmp_path / "two.keras", tmp_path / "img.tif",
                               tmp_path / "one.tif")
    job.update({"output index": 1, "reduction type": 2})
    assert [p.name for p in job.run().written] == ["one.tif"]
    probs = tifffile.imread(tmp_path / "one.tif")
    assert probs.size == 2 * 2 * 37 * 45 and 0 <= probs.min() and probs.max() <= 1


def test_crop_head_below_full_resolution_is_refused(tmp_path: Path):
    heads = [dict(DEFAULT_HEADS[2], depth=1)]
    path = _config(tmp_path)
    data = json.loads(path.read_text())
    data["heads"] = heads
    model = build_model(CerberusTraining(CerberusConfig(data, path)))
    with pytest.raises(UnetslError, match="crop head"):
        predict(model, np.zeros((1, 1, 3, 16, 16), np.float32))


# ------------------------------------------------------------------ configs and models


def test_default_heads_build_at_their_levels(tmp_path: Path):
    config = CerberusConfig.load(_config(tmp_path))
    model = build_model(CerberusTraining(config))
    assert list(model.output_names) == ["distance", "membrane-scale", "membrane-crop"]
    shapes = [tuple(o.shape[1:]) for o in model.outputs]
    assert shapes == [(3, 16, 16, 1), (3, 8, 8, 2), (3, 16, 16, 2)]
    names = {layer.name for layer in model.layers}
    assert {"cerberus_distance", "cerberus_membrane-scale", "output-conv"} - names == {
        "output-conv"}  # the U-Net's own head is discarded


def test_bottom_level_and_2d_heads(tmp_path: Path):
    path = _config(tmp_path, **{"input shape": [1, 1, 16, 16]})
    data = json.loads(path.read_text())
    data["heads"] = [dict(DEFAULT_HEADS[1], name="bottom", depth=2, activation="softmax")]
    model = build_model(CerberusTraining(CerberusConfig(data, path)))
    assert tuple(model.outputs[0].shape[1:]) == (1, 4, 4, 2)
    out = predict(model, np.random.default_rng(2).random((1, 1, 1, 20, 24)).astype("f4"))
    assert out.shape == (1, 2, 1, 20, 24)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("change, needle", [
    ({"depth": 3}, '"depth" 3 is out of range'),
    ({"resampler": "shuffle"}, '"resampler" "shuffle" is not supported'),
    ({"n_labels": 0}, '"n_labels" must be an integer >= 1'),
    ({"activation": "nope"}, '"activation" "nope" is not a Keras activation'),
    ({"labeller": "nope"}, '"labeller"'),
    ({"colour": 1}, 'unknown key "colour"'),
    ({"name": "membrane-crop"}, '"membrane-crop" is used twice'),
])
def test_bad_heads_give_one_line_errors(tmp_path: Path, change: dict, needle: str):
    path = _config(tmp_path)
    data = json.loads(path.read_text())
    data["heads"][0].update(change)
    with pytest.raises(UnetslError) as err:
        CerberusConfig(data, path)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_bad_unet_section(tmp_path: Path):
    data = json.loads(_config(tmp_path).read_text())
    data["unet"]["n labels"] = 2
    with pytest.raises(UnetslError, match="each head has its own"):
        CerberusConfig(data)
    data["unet"].pop("n labels")
    data["unet"]["input shape"] = [1, 3, 18, 16]
    with pytest.raises(UnetslError, match="unet"):
        CerberusConfig(data)


def test_fixture_config_builds_the_original_model(compat: Path):
    from unetsl.nets.legacy import load_legacy_model

    config = CerberusConfig.load(compat / "cerberus.json")
    model = build_model(CerberusTraining(config))
    original = load_legacy_model(compat / "cerberus.h5")
    assert model.count_params() == original.count_params()
    for layer in original.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
    x = np.random.default_rng(3).random((1, 3, 64, 64, 1)).astype(np.float32)
    for ours, theirs in zip(model.predict_on_batch(x), original.predict_on_batch(x)):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


# ------------------------------------------------------------------ commands


def test_create_model_and_predict_every_head(compat: Path, tmp_path: Path):
    from unetsl.cli.create_model import main as create_model
    from unetsl.cli.predict_image import main as predict_image

    shutil.copy(compat / "cerberus.json", tmp_path / "cerberus.json")
    result = _cli(create_model, tmp_path, "-c", "cerberus.json", "-b", "-D", "n filters=2")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cerberus.h5").is_file() and "membrane-scale" in result.output
    saved = json.loads((tmp_path / "cerberus.json").read_text())
    assert saved["unet"]["n filters"] == 2 and len(saved["heads"]) == 3
    assert is_cerberus_file(tmp_path / "cerberus.json")
    image = np.random.default_rng(4).integers(0, 900, (3, 70, 66)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "img.tif", image, imagej=True, metadata={"axes": "TYX"})
    result = _cli(predict_image, tmp_path, "cerberus.h5", "img.tif", "-m", "-b")
    assert result.exit_code == 0, result.output
    for head in ("distance", "membrane-scale", "membrane-crop"):
        assert tifffile.imread(tmp_path / f"pred-cerberus-img-{head}.tif").size == image.size


def test_original_cerberus_model_predicts_every_head(compat: Path, tmp_path: Path):
    from unetsl.nets.model_files import load_model

    model = load_model(compat / "cerberus.h5")
    image = np.random.default_rng(5).integers(0, 1000, (1, 1, 3, 80, 72)).astype(np.float32)
    distance, scale, crop = predict_outputs(model, image)
    assert scale.shape == (1, 2, 3, 80, 72) and distance.shape[1] == 1
    assert 0 <= scale.min() and scale.max() <= 1
    job = PredictionJob.create(compat / "cerberus.h5", compat / "sample-2d.tif",
                               tmp_path / "p.tif")
    job.update({"output index": 1})
    assert [p.name for p in job.run().written] == ["p.tif"]
    assert tifffile.imread(tmp_path / "p.tif").size == 3 * 200 * 200


def test_train_model_without_data_sources_in_one_line(tmp_path: Path):
    from unetsl.cli.train_model import main as train_model

    _config(tmp_path)
    result = _cli(train_model, tmp_path, "-c", "cb.json", "-b")
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "data sources" in lines[0] and "attach_data_sources" in lines[0]


def test_create_model_reports_a_bad_head(tmp_path: Path):
    from unetsl.cli.create_model import main as create_model

    path = _config(tmp_path)
    data = json.loads(path.read_text())
    data["heads"][1]["depth"] = 7
    path.write_text(json.dumps(data))
    result = _cli(create_model, tmp_path, "-c", "cb.json", "-b")
    assert result.exit_code == 2 and not (tmp_path / "cb.h5").exists()
    assert 'head "membrane-scale": "depth" 7 is out of range' in result.output
