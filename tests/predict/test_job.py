"""PredictionJob: the predict_image settings table, -D overrides, output names, one run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.tiny_models import save_tiny_unet

from unetsl.config.model_config import config_for_model
from unetsl.errors import UnetslError
from unetsl.io.lazy import open_image
from unetsl.io.outputs import with_suffix
from unetsl.io.tiff import read_image, write_image
from unetsl.predict.engine import predict, predict_outputs
from unetsl.predict.job import (
    SETTING_CHECKS,
    PredictionJob,
    default_output_path,
)
from unetsl.predict.reduce import reduce

SPACING = (1.0, 0.5, 0.25)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """m.h5: a tiny 2-D sigmoid U-Net (2 labels, 16 x 16 patch); img.tif: 2 frames of 40 x 36."""
    folder = tmp_path_factory.mktemp("job")
    save_tiny_unet(folder / "m.h5")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 1000, (2, 1, 1, 40, 36)).astype(np.uint16)
    write_image(folder / "img.tif", image, spacing=SPACING, unit="µm")
    return folder


@pytest.fixture(scope="module")
def model(work):
    from unetsl.nets.model_files import load_model

    return load_model(work / "m.h5")


def _one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    text = str(err.value)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, text


# ---------------------------------------------------------------------------- settings


def test_create_gives_the_original_defaults(tmp_path):
    job = PredictionJob.create(tmp_path / "models" / "m-best.h5", tmp_path / "cells.tif")
    assert job.settings() == {
        "model file": str(tmp_path / "models" / "m-best.h5"),
        "image to predict": str(tmp_path / "cells.tif"),
        "output image": "pred-m-best-cells.tif",
        "reduction type": None,
        "output index": -1,
        "normalize samples": False,
        "batch size": 16,
        "overlap": None,
        "tile shape": None,
        "normalization percentiles": None,
        "precision": "auto",
        "test time augmentation": False,
    }
    assert set(job.settings()) == set(SETTING_CHECKS)
    job.check_settings(job.settings())  # the defaults pass their own checks
    every = PredictionJob.create(Path("m.h5"), Path("a.tif"), Path("o.tif"), all_outputs=True)
    assert every.values["output index"] == "all" and every.values["output image"] == "o.tif"
    settings = every.settings()
    settings["batch size"] = 1
    assert every.values["batch size"] == 16  # settings() is a copy


@pytest.mark.parametrize(("model", "image", "expected"), [
    ("m.h5", "cells.tif", "pred-m-cells.tif"),
    ("dir/m-latest.keras", "data/cells.tiff", "pred-m-latest-cells.tiff"),
    ("m.h5", "data/cells.npy", "pred-m-cells.tif"),
    ("m.h5", "data/stack.TIF", "pred-m-stack.TIF"),
    ("m.h5", "data/cells.zarr", "pred-m-cells.ome.zarr"),
    ("m.h5", "data/cells.ome.zarr", "pred-m-cells.ome.zarr"),
    ("model", "noext", "pred-model-noext.tif"),
])
def test_default_output_names(model, image, expected):
    assert default_output_path(Path(model), Path(image)) == Path(expected)


def test_normalize_samples_comes_from_the_training_config(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"normalize samples": True}))
    for name in ("m.h5", "m-best.h5", "m-latest.keras", "m-batch.h5", "m-tuned-latest.h5",
                 "m-tuned-best.h5"):
        assert config_for_model(tmp_path / name) == tmp_path / "m.json"
        assert PredictionJob.create(tmp_path / name, tmp_path / "i.tif").values[
            "normalize samples"] is True
    assert config_for_model(tmp_path / "other.h5") is None
    assert PredictionJob.create(tmp_path / "other.h5", tmp_path / "i.tif").values[
        "normalize samples"] is False
    # a multi-head (cerberus) config keeps it under "training"
    (tmp_path / "c.json").write_text(json.dumps(
        {"unet": {}, "heads": [], "training": {"normalize samples": True}}))
    assert PredictionJob.create(tmp_path / "c-best.h5", tmp_path / "i.tif").values[
        "normalize samples"] is True
    # unreadable or odd configs fall back to the default
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    for name in ("bad.h5", "list.h5"):
        assert PredictionJob.create(tmp_path / name, tmp_path / "i.tif").values[
            "normalize samples"] is False


@pytest.mark.parametrize(("key", "value"), [
    ("batch size", 0), ("batch size", 2.0), ("batch size", True), ("batch size", "16"),
    ("overlap", [1, 2]), ("overlap", [0, -1, 4]), ("overlap", 4),
    ("tile shape", [1, 0, 16]), ("tile shape", [1, 16]),
    ("reduction type", 3), ("reduction type", "multiclass"), ("reduction type", {"out": 5}),
    ("normalize samples", "yes"), ("normalize samples", 1),
    ("output index", "first"), ("output index", 1.0),
    ("model file", ""), ("image to predict", None), ("output image", 3),
])
def test_bad_values_are_refused_in_one_line_naming_the_key(key, value):
    job = PredictionJob.create(Path("m.h5"), Path("i.tif"))
    before = job.settings()
    with pytest.raises(UnetslError) as err:
        job.update({key: value})
    _one_line(err, f'"{key}"', repr(value))
    assert job.settings() == before


def test_good_values_are_accepted():
    job = PredictionJob.create(Path("m.h5"), Path("i.tif"))
    job.update({"batch size": 1, "overlap": [0, 4, 4], "tile shape": [1, 32, 32],
                "reduction type": {"output": 2}, "normalize samples": True,
                "output index": "all", "output image": "x.tif"})
    job.update({"reduction type": 0, "overlap": None, "tile shape": None, "output index": 0})
    assert job.values["reduction type"] == 0 and job.values["output index"] == 0
    assert job.values["overlap"] is None and job.values["batch size"] == 1


def test_unknown_key_is_refused_and_nothing_is_applied():
    job = PredictionJob.create(Path("m.h5"), Path("i.tif"))
    with pytest.raises(UnetslError) as err:
        job.update({"batch size": 4, "batch sise": 8})
    _one_line(err, '"batch sise"', '"batch size"')
    assert job.values["batch size"] == 16  # checked as a whole before any is applied


def test_overrides_parse_json_values():
    job = PredictionJob.create(Path("m.h5"), Path("i.tif"))
    job.apply_overrides(["batch size=4", "overlap=[0, 2, 2]", 'output image="out.tif"',
                         "normalize samples=true", "reduction type=null", "Batch Size=5"])
    assert job.values["batch size"] == 5  # later wins; known keys are matched ignoring case
    assert job.values["overlap"] == [0, 2, 2] and job.values["output image"] == "out.tif"
    assert job.values["normalize samples"] is True and job.values["reduction type"] is None


@pytest.mark.parametrize(("override", "needles"), [
    ("batch size=0", ['"batch size"', "0"]),
    ("batch size=big", ['"batch size"', "JSON"]),
    ("tile shape=[1, 16]", ['"tile shape"']),
    ("overlaps=[0, 2, 2]", ['"overlaps"']),
    ("no equals sign", ["key=value"]),
    ("=3", ["missing key"]),
])
def test_bad_overrides_are_one_line(override, needles):
    job = PredictionJob.create(Path("m.h5"), Path("i.tif"))
    before = job.settings()
    with pytest.raises(UnetslError) as err:
        job.apply_overrides([override])
    _one_line(err, *needles)
    assert job.settings() == before


# ---------------------------------------------------------------------------------- run


def test_run_writes_labels_and_probabilities_equal_to_predict(work, model, tmp_path,
                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = PredictionJob.create(work / "m.h5", work / "img.tif")
    job.apply_overrides(["batch size=2", "tile shape=[1, 16, 16]"])
    run = job.run(probabilities=True)  # loads "model file" itself
    written = run.written
    assert run.dask is None and run.tiles == 3 * 3 and run.precision.policy == "float32"
    assert written == [Path("pred-m-img.tif"), Path("pred-m-img-prob.tif")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred-m-img-prob.tif",
                                                          "pred-m-img.tif"]

    image = read_image(work / "img.tif")
    expected = predict(model, image.data, batch_size=2, tile=(1, 16, 16))
    assert expected.shape == (2, 2, 1, 40, 36)
    labels = read_image(tmp_path / "pred-m-img.tif")
    probabilities = read_image(tmp_path / "pred-m-img-prob.tif")
    np.testing.assert_allclose(probabilities.data, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels.data, reduce(expected, "multiclass"))
    assert labels.data.dtype == np.uint8 and probabilities.data.dtype == np.float32
    for out in (labels, probabilities):
        assert out.spacing == pytest.approx(SPACING) and out.unit == "µm"
    assert len(np.unique(labels.data)) > 1  # the comparison is not between two blank images


@pytest.mark.parametrize("name", ["out.npy", "out.ome.zarr"])
def test_the_output_name_chooses_the_format(work, model, tmp_path, name):
    """.npy and OME-Zarr outputs hold what the TIFF holds (unetsl.io.outputs)."""
    pytest.importorskip("zarr")
    tiff = PredictionJob.create(work / "m.h5", work / "img.tif", tmp_path / "out.tif")
    tiff.update({"batch size": 2})
    tiff.run(model=model, probabilities=True)
    job = PredictionJob.create(work / "m.h5", work / "img.tif", tmp_path / name)
    job.update({"batch size": 2})
    labels, floats = job.run(model=model, probabilities=True).written
    assert floats == with_suffix(tmp_path / name, "-prob")
    for mine, reference in ((labels, "out.tif"), (floats, "out-prob.tif")):
        expected = read_image(tmp_path / reference)
        got = open_image(mine, depth_wanted=1)
        np.testing.assert_array_equal(
            np.stack([got.data.read(t, *(slice(None),) * 3) for t in range(2)]), expected.data)
        if name.endswith(".npy"):
            assert np.load(mine).shape == expected.data.shape  # (t, c, z, y, x)
        else:
            assert got.spacing == pytest.approx(SPACING)


def test_test_time_augmentation_runs_through_the_job(work, model, tmp_path):
    out = tmp_path / "tta.tif"
    job = PredictionJob.create(work / "m.h5", work / "img.tif", out)
    job.apply_overrides(["test time augmentation=true", "batch size=2"])
    job.run(model=model, probabilities=True)
    expected = predict(model, read_image(work / "img.tif").data, batch_size=2, augment=True)
    np.testing.assert_allclose(read_image(with_suffix(out, "-prob")).data, expected,
                               rtol=1e-5, atol=1e-6)


def test_run_with_linear_reduction_and_default_tiles(work, model, tmp_path):
    out = tmp_path / "lin.tif"
    job = PredictionJob.create(work / "m.h5", work / "img.tif", out)
    job.update({"reduction type": 2, "batch size": 3})
    assert job.run(model=model).written == [out]
    labels = read_image(out).data
    expected = predict(model, read_image(work / "img.tif").data, batch_size=3)
    assert labels.dtype == np.float32 and labels.shape == expected.shape
    np.testing.assert_allclose(labels, expected, rtol=1e-5, atol=1e-6)


def test_run_errors_are_one_line_and_write_nothing(work, model, tmp_path):
    job = PredictionJob.create(work / "m.h5", work / "img.tif", tmp_path / "o.tif")
    job.values["output index"] = 1  # the model has a single output
    with pytest.raises(UnetslError) as err:
        job.run(model=model)
    _one_line(err, '"output index" 1', "1 output")

    job = PredictionJob.create(work / "m.h5", work / "img.tif", tmp_path / "o.tif")
    job.update({"reduction type": {"nope": 1}})
    with pytest.raises(UnetslError) as err:
        job.run(model=model)
    _one_line(err, "'nope'", "output")

    job = PredictionJob.create(work / "m.h5", tmp_path / "missing.tif", tmp_path / "o.tif")
    with pytest.raises(UnetslError) as err:
        job.run(model=model)
    _one_line(err, "missing.tif")

    job = PredictionJob.create(tmp_path / "missing.h5", work / "img.tif", tmp_path / "o.tif")
    with pytest.raises(UnetslError) as err:
        job.run()
    _one_line(err, "missing.h5")

    job = PredictionJob.create(work / "m.h5", work / "img.tif", tmp_path / "o.tif")
    job.values["batch size"] = 0  # set around update(): run checks again
    with pytest.raises(UnetslError) as err:
        job.run(model=model)
    _one_line(err, '"batch size"')
    assert list(tmp_path.iterdir()) == []


def test_python_predict_reads_a_2d_movie_as_predict_image_does(tmp_path):
    """Issue 28: predict(model, movie[:, None, None]) predicted each frame alone where
    predict_image reads the frames as depth for a model with depth 3."""
    import keras

    from unetsl.data.synthetic import epithelium_time_series, write_imagej
    from unetsl.nets.model_files import save_model
    from unetsl.nets.unet import build_unet

    keras.utils.set_random_seed(0)
    model = build_unet((1, 3, 32, 32), n_labels=2, depth=2, n_filters=2,
                       spatial_dropout_rate=0.0)
    save_model(model, tmp_path / "m.h5")
    movie = epithelium_time_series((5, 40, 48), seed=1).image
    write_imagej(tmp_path / "movie.tif", movie, "2d")
    job = PredictionJob.create(tmp_path / "m.h5", tmp_path / "movie.tif", tmp_path / "o.tif")
    job.update({"batch size": 4})
    job.run(model=model, probabilities=True)
    expected = read_image(tmp_path / "o-prob.tif").data  # (5, 2, 1, 40, 48)
    mine = predict_outputs(model, movie[:, None, None].astype(np.float32), batch_size=4,
                           normalization=None)[0]
    assert mine.shape == expected.shape
    np.testing.assert_allclose(mine, expected, rtol=1e-5, atol=1e-6)


def test_a_model_that_was_never_trained_is_named(work, tmp_path, caplog):
    """NAME.h5 beside NAME.json without a training state is create_model's file: predicting
    with it says so (issue 28); a -best file or a model without its config is not named."""
    import shutil

    for name in ("m.h5", "m-best.h5", "other.h5"):
        shutil.copy(work / "m.h5", tmp_path / name)
    (tmp_path / "m.json").write_text("{}")
    said = {}
    for name in ("m.h5", "m-best.h5", "other.h5"):
        caplog.clear()
        job = PredictionJob.create(tmp_path / name, work / "img.tif", tmp_path / f"o-{name}.tif")
        with caplog.at_level("WARNING", logger="unetsl"):
            job.run()
        said[name] = [r.message for r in caplog.records if "never trained" in r.message]
    assert len(said["m.h5"]) == 1 and "train_model writes m-best.h5" in said["m.h5"][0]
    assert said["m-best.h5"] == [] and said["other.h5"] == []
