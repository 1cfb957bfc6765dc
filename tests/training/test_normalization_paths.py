"""Input normalisation travels with the model: train with each setting, then predict through
every path (predict_image's job, the Python ``predict``, the samples predicted during
training, Dask workers) and get the same result, without telling any path how to normalise.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from unetsl.config.model_config import Config
from unetsl.data.normalize import InputNormalization, model_normalization
from unetsl.data.synthetic import write_dataset
from unetsl.io.tiff import read_image, write_image
from unetsl.nets.model_files import load_model
from unetsl.predict.engine import predict
from unetsl.predict.job import PredictionJob
from unetsl.predict.reduce import reduce
from unetsl.training.train import train

SETTINGS = {
    "raw": InputNormalization(None, False),
    "percentiles": InputNormalization((1.0, 99.8), False),
    "zscore": InputNormalization(None, True),
    "both": InputNormalization((2.0, 98.0), True),
}


@pytest.fixture(scope="module")
def trainings(tmp_path_factory):
    """train(name): one epoch of a tiny 2D U-Net trained with one normalisation setting, a
    sample predicted after it (once per setting and module); the image is bright
    (x 40 + 3000) so that scaling matters."""
    done = {}

    def trained(name: str):
        if name not in done:
            done[name] = _train(tmp_path_factory.mktemp(name), name)
        return done[name]

    return trained


def _train(root, name: str):
    write_dataset(root, "2d", n_images=1, shape=(3, 32, 32), seed=3, distance=False)
    image_path = root / "images" / "epi-000.tif"
    image = read_image(image_path)
    write_image(image_path, image.data.astype(np.float32) * 40 + 3000, spacing=image.spacing)
    cfg = Config(path=root / "m.json")
    cfg.update({"input shape": [1, 1, 16, 16], "depth": 2, "n filters": 2, "n labels": 2,
                "pooling": [1, 2, 2], "stride": [0, 1, 16, 16], "batch size": 2, "epochs": 1,
                "seed": 7, "validation fraction": 0.0, "spatial dropout rate": 0.0,
                "samples to predict": ["images/epi-000.tif"],
                "data sources": [{"source type": "paired directories",
                                  "input folders": ["images"], "label folders": ["labels"],
                                  "labeller": "multiclass labels"}],
                **SETTINGS[name].settings()})
    cfg.save()
    result = train(cfg, progress="none")
    return name, root, cfg, result


@pytest.fixture(params=list(SETTINGS))
def trained(request, trainings):
    return trainings(request.param)


def test_the_model_file_records_its_normalisation(trained):
    name, _, cfg, _ = trained
    for path in (cfg.model_path, cfg.sibling("-latest.h5"), cfg.sibling("-best.h5")):
        cfg.path.rename(cfg.path.with_suffix(".off"))  # the record alone, not the config
        try:
            assert model_normalization(load_model(path)) == SETTINGS[name], path
        finally:
            cfg.path.with_suffix(".off").rename(cfg.path)


def test_every_path_predicts_alike(trained, tmp_path):
    name, root, cfg, result = trained
    latest = cfg.sibling("-latest.h5")
    image_path = root / "images" / "epi-000.tif"
    raw = read_image(image_path, depth_wanted=1).data

    model = load_model(latest)
    python = predict(model, raw, batch_size=2)

    job = PredictionJob.create(latest, image_path, tmp_path / "out.tif")
    job.update({"batch size": 2})
    assert InputNormalization.from_settings(job.values) == SETTINGS[name]
    job.run(probabilities=True)
    job_probabilities = read_image(tmp_path / "out-prob.tif").data
    np.testing.assert_allclose(job_probabilities, python, atol=1e-6)
    labels = reduce(python, "multiclass")
    np.testing.assert_array_equal(read_image(tmp_path / "out.tif").data, labels)

    sample = read_image(result.predictions[-1]).data  # predicted during training, epoch 1
    assert result.predictions[-1].name == "pred-m-e1-epi-000.tif"
    np.testing.assert_array_equal(sample, labels)

    if name != "raw":  # the normalisation is really applied: raw input predicts otherwise
        plain = predict(model, raw, batch_size=2, normalization=InputNormalization())
        assert np.abs(plain - python).max() > 1e-3


def test_dask_workers_normalise_as_the_model_says(trainings, tmp_path):
    _, root, cfg, _ = trainings("both")
    distributed = pytest.importorskip("distributed")
    latest = cfg.sibling("-latest.h5")
    image_path = root / "images" / "epi-000.tif"
    one = PredictionJob.create(latest, image_path, tmp_path / "one.tif")
    one.run(probabilities=True)
    blocks = PredictionJob.create(latest, image_path, tmp_path / "dask.tif")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1,
                            dashboard_address=":0") as client:
        blocks.run(probabilities=True, dask=client)
    np.testing.assert_allclose(read_image(tmp_path / "dask-prob.tif").data,
                               read_image(tmp_path / "one-prob.tif").data, atol=1e-6)


def test_prediction_settings_override_the_record(trainings, tmp_path):
    _, root, cfg, _ = trainings("percentiles")
    job = PredictionJob.create(cfg.sibling("-latest.h5"), root / "images" / "epi-000.tif",
                               tmp_path / "o.tif")
    job.apply_overrides(["normalization percentiles=null"])
    assert job.values["normalization percentiles"] is None
    with pytest.raises(Exception, match="normalization percentiles"):
        job.apply_overrides(["normalization percentiles=[99, 1]"])


def test_new_configs_normalise_and_old_ones_stay_raw(tmp_path):
    assert Config.new(tmp_path / "n.json")["normalization percentiles"] == [1, 99.8]
    (tmp_path / "old.json").write_text(json.dumps({"n labels": 2}))
    assert Config.load(tmp_path / "old.json")["normalization percentiles"] is None
    assert Config.load(tmp_path / "new.json", must_exist=False)[
        "normalization percentiles"] == [1, 99.8]
