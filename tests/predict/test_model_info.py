"""ModelInfo: what a prediction needs of a model, read once and passed down."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from unetsl.data.normalize import InputNormalization, attach_normalization
from unetsl.errors import UnetslError
from unetsl.nets.model_files import with_input_patch
from unetsl.nets.shapes import model_patch_shape, output_activations
from unetsl.nets.unet import build_cascade, build_unet
from unetsl.predict import model_info as model_info_module
from unetsl.predict.adapter import KerasTiles
from unetsl.predict.in_memory import predict_array
from unetsl.predict.job import PredictionJob
from unetsl.predict.model_info import ModelInfo
from unetsl.predict.reach import receptive_reach

PATCH = (1, 1, 16, 16)


@pytest.fixture(scope="module")
def cascade():
    keras.utils.set_random_seed(3)
    return build_cascade(PATCH, 2, n_labels=2, depth=2, n_filters=2, spatial_dropout_rate=0.0)


def test_of_reads_what_the_model_says(cascade):
    info = ModelInfo.of(cascade)
    assert info.patch == model_patch_shape(cascade) == PATCH and info.input_channels == 1
    assert info.output_names == ("cascade_0", "cascade_1") and info.n_outputs == 2
    assert info.channels == (2, 2)
    assert info.output_shapes == ((None, 1, 16, 16, 2),) * 2
    assert list(info.activations) == output_activations(cascade) == ["sigmoid", "sigmoid"]
    assert info.reach == receptive_reach(cascade)
    assert info.normalization is None
    with pytest.raises(AttributeError):  # frozen
        info.patch = (1, 1, 8, 8)  # type: ignore[misc]


def test_normalisation_record_and_choice():
    model = build_unet(PATCH, n_labels=1, depth=2, n_filters=2, spatial_dropout_rate=0.0)
    recorded = InputNormalization((1.0, 99.0), True)
    info = ModelInfo.of(attach_normalization(model, recorded))
    assert info.normalization == recorded
    assert info.input_normalization() == recorded
    assert info.input_normalization(normalize=False) == InputNormalization((1.0, 99.0), False)
    given = InputNormalization(None, False)
    assert info.input_normalization(given) == given
    bare = ModelInfo.of(build_unet(PATCH, n_labels=1, depth=2, n_filters=2))
    assert bare.input_normalization() == InputNormalization()


def test_output_index_counts_from_the_end_and_refuses_out_of_range(cascade):
    info = ModelInfo.of(cascade)
    assert [info.output_index(i) for i in (0, 1, -1, -2)] == [0, 1, 1, 0]
    with pytest.raises(UnetslError, match='"output index" 2 is out of range: the model has 2'):
        info.output_index(2)


def test_resized_keeps_outputs_and_reach_with_the_new_patch(cascade):
    info = ModelInfo.of(cascade)
    assert info.resized(cascade) is info
    bigger = with_input_patch(cascade, (1, 32, 48))
    resized = info.resized(bigger)
    assert resized.patch == (1, 1, 32, 48) == model_patch_shape(bigger)
    assert resized.output_shapes == ((None, 1, 32, 48, 2),) * 2
    assert (resized.output_names, resized.activations, resized.reach) == (
        info.output_names, info.activations, info.reach)


def test_tiles_from_the_record_equal_tiles_from_the_model(cascade):
    info = ModelInfo.of(cascade)
    tiles = np.random.default_rng(0).normal(size=(3, *PATCH)).astype(np.float32)
    from_record = info.tiles(cascade, [0, 1])
    from_model = KerasTiles(cascade, [0, 1])
    assert from_record.patch == from_model.patch and from_record.channels == [2, 2]
    for a, b in zip(from_record(tiles), from_model(tiles), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_prediction_reads_the_model_once(cascade, monkeypatch):
    calls = {"activations": 0, "reach": 0}

    def counted(name, function):
        def wrapper(model, *args, **kwargs):
            calls[name] += 1
            return function(model, *args, **kwargs)
        return wrapper

    import unetsl.nets.shapes as shapes

    monkeypatch.setattr(shapes, "output_activations",
                        counted("activations", shapes.output_activations))
    monkeypatch.setattr(model_info_module, "receptive_reach",
                        counted("reach", model_info_module.receptive_reach))
    job = PredictionJob({"model file": "unused.h5", "image to predict": "array",
                         "output image": "out.tif", "reduction type": None,
                         "output index": "all", "normalize samples": False, "batch size": 4,
                         "overlap": None, "tile shape": None,
                         "normalization percentiles": None, "precision": "float32"})
    image = np.random.default_rng(1).random((1, 1, 1, 40, 40)).astype(np.float32)
    result = predict_array(job, image, model=cascade)
    assert calls == {"activations": 1, "reach": 1}
    assert result.names == ["cascade_0", "cascade_1"]
    assert result.reductions == ["multiclass", "multiclass"]
    assert [p.shape for p in result.probabilities] == [(1, 2, 1, 40, 40)] * 2
