"""Models of the original (Keras-2, channels-first .h5 files) load, predict and train.

The reference files are the original's own (../shared/compat): its untrained and trained
models, the three-headed cerberus model, and its predictions of two sample images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from unetsl.errors import UnetslError
from unetsl.nets.legacy import is_legacy_model, load_legacy_model, read_legacy_file
from unetsl.nets.losses import SorensenDiceCoefLoss
from unetsl.nets.model_files import load_model, save_model
from unetsl.nets.shapes import (
    from_model_layout,
    model_patch_shape,
    output_activations,
    to_model_layout,
)
from unetsl.nets.unet import build_unet

# name: (patch (c, z, y, x), [(output name, (n, z, y, x), activation)], parameters)
FIXTURE_MODELS = {
    "default-2d": ((1, 3, 64, 64), [("activation", (1, 3, 64, 64), "sigmoid")], 3_928_001),
    "unet3d": ((1, 16, 64, 64), [("activation", (2, 16, 64, 64), "sigmoid")], 245_890),
    "trained-2d-best": ((1, 3, 64, 64), [("activation", (2, 3, 64, 64), "sigmoid")], 245_890),
    "trained-3d-best": ((1, 16, 64, 64), [("activation", (2, 16, 64, 64), "sigmoid")], 245_890),
    "cerberus": ((1, 3, 64, 64), [("distance", (1, 3, 64, 64), "relu"),
                                  ("membrane-scale", (2, 3, 32, 32), "sigmoid"),
                                  ("membrane-crop", (2, 3, 64, 64), "sigmoid")], 245_973),
}
SAMPLES = {"trained-2d-best": ("sample-2d", "sample-2d-pred-original"),
           "trained-3d-best": ("sample-3d", "sample-3d-pred-original")}


@pytest.mark.parametrize("name", sorted(FIXTURE_MODELS))
def test_original_models_load_as_channels_last(compat: Path, name: str) -> None:
    path = compat / f"{name}.h5"
    assert is_legacy_model(path)
    model = load_model(path)  # unetsl's loader detects the legacy file by itself
    patch, outputs, params = FIXTURE_MODELS[name]
    assert model_patch_shape(model) == patch
    assert model.count_params() == params
    assert list(model.output_names) == [o[0] for o in outputs]
    assert output_activations(model) == [o[2] for o in outputs]
    for tensor, (_, (n, z, y, x), _) in zip(model.outputs, outputs):
        assert tuple(tensor.shape) == (None, z, y, x, n)
    assert {layer.get_config().get("data_format") for layer in model.layers} <= {
        None, "channels_last"}


@pytest.mark.parametrize("name", ["default-2d", "unet3d", "with-sources", "trained-2d",
                                  "trained-3d"])
def test_original_configs_load(compat: Path, name: str) -> None:
    from unetsl.config.model_config import Config

    cfg = Config.load(compat / f"{name}.json")
    cfg.validate()
    original = json.loads((compat / f"{name}.json").read_text())
    assert cfg["input shape"] == original["input shape"]
    assert cfg["data sources"] == original.get("data sources", [])


def test_weights_are_the_files_weights(compat: Path) -> None:
    path = compat / "trained-3d-best.h5"
    model = load_model(path)
    with h5py.File(path, "r") as f:
        for name in ("contraction-a-0", "expansion-b-1", "conv3d"):
            kernel = np.asarray(f[f"model_weights/{name}/{name}/kernel:0"])
            bias = np.asarray(f[f"model_weights/{name}/{name}/bias:0"])
            got_kernel, got_bias = model.get_layer(name).get_weights()
            np.testing.assert_array_equal(got_kernel, kernel)  # (kz, ky, kx, in, out) as saved
            np.testing.assert_array_equal(got_bias, bias)


# -- the original's stitching, to show the converted model computes what the original did --

def _full_range(size: int, patch: int, stride: int) -> list[int]:
    if size <= patch:
        return [0]
    return [*range(0, size - patch, stride), size - patch]


def _original_window(patch: np.ndarray, stride: np.ndarray) -> np.ndarray:
    """generateProbabilityWindow of the original, corner offsets swapped as it had them."""
    window = np.full(tuple(patch), 0.5, np.float32)
    r0 = (patch - stride) // 2

    def box(origin, size):
        return tuple(slice(int(o), int(o + s)) for o, s in zip(origin, size))

    window[box(r0, stride)] = 1.0
    for ox in (0, r0[2] + stride[2]):
        for oy in (0, r0[1] + stride[1]):
            for oz in (0, r0[0] + stride[0]):
                window[box((ox, oy, oz), r0)] = 0.25
    s, r = stride, r0
    for origin, size in [((r[0], r[1], 0), (s[0], s[1], r[2])),
                         ((r[0], r[1], s[2] + r[2]), (s[0], s[1], r[2])),
                         ((r[0], 0, r[2]), (s[0], r[1], s[2])),
                         ((r[0], s[1] + r[1], r[2]), (s[0], r[1], s[2])),
                         ((0, r[1], r[2]), (r[0], s[1], s[2])),
                         ((s[0] + r[0], r[1], r[2]), (r[0], s[1], s[2]))]:
        window[box(origin, size)] = 0.75
    return window


def _original_multiclass_prediction(model, volume: np.ndarray, batch: int = 16) -> np.ndarray:
    """The original's predict_image for one (c, z, y, x) frame: half-patch stride, tiles cast
    to uint16, the most central tile wins and ties are OR-ed (§16 of original-behaviour)."""
    _, *patch = model_patch_shape(model)
    patch = np.array(patch)
    stride = np.maximum(patch // 2, 1)
    zs, ys, xs = volume.shape[1:]
    origins = [(k, j, i) for k in _full_range(zs, patch[0], stride[0])
               for j in _full_range(ys, patch[1], stride[1])
               for i in _full_range(xs, patch[2], stride[2])]
    window = _original_window(patch, stride)
    out = np.zeros((zs, ys, xs), np.uint8)
    best = np.zeros((zs, ys, xs), np.float32)
    for start in range(0, len(origins), batch):
        chunk = origins[start:start + batch]
        tiles = np.array([volume[:, k:k + patch[0], j:j + patch[1], i:i + patch[2]]
                          for k, j, i in chunk], dtype=np.uint16).astype(np.float32)
        probabilities = from_model_layout(model.predict_on_batch(to_model_layout(tiles)))
        for (k, j, i), p in zip(chunk, probabilities):
            labels = np.zeros(tuple(patch), np.uint8)
            for channel in range(p.shape[0]):
                labels |= ((p[channel] > 0.5) * (1 << channel)).astype(np.uint8)
            region = (slice(k, k + patch[0]), slice(j, j + patch[1]), slice(i, i + patch[2]))
            stored, weight = out[region], best[region]
            better, tie = window > weight, window == weight
            stored[better] = labels[better]
            stored[tie] |= labels[tie]
            weight[better] = window[better]
    return out


@pytest.mark.parametrize("model_name", sorted(SAMPLES))
def test_converted_model_reproduces_the_originals_prediction_exactly(
        compat: Path, model_name: str) -> None:
    from unetsl.io.tiff import read_image

    model = load_model(compat / f"{model_name}.h5")
    image_name, reference_name = SAMPLES[model_name]
    image = read_image(compat / f"{image_name}.tif", depth_wanted=model_patch_shape(model)[1])
    reference = tifffile.imread(compat / f"{reference_name}.tif")
    labels = _original_multiclass_prediction(model, image.data[0])
    assert np.array_equal(labels.reshape(reference.shape), reference)


@pytest.mark.parametrize("model_name", sorted(SAMPLES))
def test_unetsl_prediction_agrees_with_the_original(compat: Path, model_name: str) -> None:
    """unetsl blends overlapping tiles where the original let one tile win: labels may differ
    only where a probability is near the threshold or a tile edge decided (measured:
    0.0175 % of the 2D and 0.031 % of the 3D sample's pixels on an AMD EPYC)."""
    from unetsl.io.tiff import read_image
    from unetsl.predict.engine import predict
    from unetsl.predict.reduce import reduce

    model = load_model(compat / f"{model_name}.h5")
    image_name, reference_name = SAMPLES[model_name]
    image = read_image(compat / f"{image_name}.tif", depth_wanted=model_patch_shape(model)[1])
    reference = tifffile.imread(compat / f"{reference_name}.tif")
    labels = reduce(predict(model, image.data), "multiclass").reshape(reference.shape)
    differing = float(np.mean(labels != reference))
    print(f"{model_name}: {differing:.4%} of pixels differ from the original's prediction")
    assert differing < 1e-3
    assert set(np.unique(labels)) <= {0, 1, 2, 3}


def test_predict_image_runs_an_original_model(compat: Path, tmp_path: Path, run_script) -> None:
    out = tmp_path / "pred.tif"
    result = run_script("predict_image", str(compat / "trained-2d-best.h5"),
                        str(compat / "sample-2d.tif"), str(out), "-b")
    assert result.returncode == 0, result.stderr
    reference = tifffile.imread(compat / "sample-2d-pred-original.tif")
    labels = tifffile.imread(out)
    assert labels.size == reference.size
    assert np.mean(labels.reshape(reference.shape) != reference) < 1e-3


def test_cerberus_heads_predict(compat: Path) -> None:
    """The full-resolution heads tile like any output. (The half-resolution head
    membrane-scale needs the prediction engine's "upsample" shaper, see §16.6.)"""
    from unetsl.predict.engine import predict_outputs

    model = load_model(compat / "cerberus.h5")
    image = np.random.default_rng(1).integers(0, 1000, (1, 1, 3, 80, 72)).astype(np.float32)
    distance, crop = predict_outputs(model, image, output_indices=[0, 2])
    assert distance.shape == (1, 1, 3, 80, 72) and crop.shape == (1, 2, 3, 80, 72)
    assert distance.min() >= 0  # relu distance head
    assert 0 <= crop.min() and crop.max() <= 1


def test_compiled_load_keeps_loss_and_optimiser_state(compat: Path) -> None:
    model = load_legacy_model(compat / "trained-2d-best.h5", compile=True)
    assert isinstance(model.loss, SorensenDiceCoefLoss)
    assert int(model.optimizer.iterations.numpy()) == 3 * 231  # the original's 3 epochs
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(1e-3)
    with h5py.File(compat / "trained-2d-best.h5", "r") as f:
        saved = np.asarray(f["optimizer_weights/Adam/m/contraction-a-0/kernel:0"])
    moments = {v.path: v for v in model.optimizer.variables}
    momentum = [v for p, v in moments.items() if "contraction-a-0_kernel_momentum" in p]
    assert momentum and np.allclose(np.asarray(momentum[0]), saved)
    x = np.random.default_rng(0).random((1, 3, 64, 64, 1)).astype(np.float32)
    y = (x > 0.5).astype(np.float32).repeat(2, axis=-1)
    loss = model.train_on_batch(x, y)
    assert np.isfinite(np.asarray(loss)).all()


def test_converted_model_saves_in_unetsl_format(compat: Path, tmp_path: Path) -> None:
    model = load_model(compat / "unet3d.h5")
    out = tmp_path / "unet3d-converted.h5"
    save_model(model, out)
    assert not is_legacy_model(out)
    again = load_model(out)
    x = np.random.default_rng(2).random((1, 16, 64, 64, 1)).astype(np.float32)
    np.testing.assert_allclose(again.predict_on_batch(x), model.predict_on_batch(x), atol=1e-6)


def test_unetsl_models_are_not_legacy(tmp_path: Path) -> None:
    path = tmp_path / "new.h5"
    save_model(build_unet((1, 1, 16, 16), depth=2, n_filters=2), path)
    assert not is_legacy_model(path)
    assert not is_legacy_model(tmp_path / "missing.h5")


# -- hand-written Keras-2 files: axis mapping and refusals ---------------------------------

def _write_keras2(path: Path, layers: list[dict], outputs: list[str],
                  weights: dict[str, list[tuple[str, np.ndarray]]], version: str = "2.15.0",
                  training_config: dict | None = None) -> None:
    """A model file laid out as tf.keras 2 writes it (channels-first layers)."""
    config = {"class_name": "Functional", "config": {
        "name": "model", "layers": layers, "input_layers": [[layers[0]["name"], 0, 0]],
        "output_layers": [[o, 0, 0] for o in outputs]}}
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = version
        f.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = json.dumps(config)
        if training_config is not None:
            f.attrs["training_config"] = json.dumps(training_config)
        group = f.create_group("model_weights")
        for layer in layers:
            g = group.create_group(layer["name"])
            entries = weights.get(layer["name"], [])
            g.attrs["weight_names"] = [f"{layer['name']}/{n}".encode() for n, _ in entries]
            for n, value in entries:
                g.create_dataset(f"{layer['name']}/{n}", data=value)


def _layer(cls: str, name: str, inbound: list[str], **config) -> dict:
    return {"class_name": cls, "name": name,
            "config": {"name": name, "trainable": True, "dtype": "float32", **config},
            "inbound_nodes": [[[i, 0, 0, {}] for i in inbound]] if inbound else []}


def test_channels_first_axes_move_with_the_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(1, 1, 1, 2, 3)).astype(np.float32)
    bias = rng.normal(size=3).astype(np.float32)
    gamma, beta = rng.random(3).astype(np.float32) + 0.5, rng.normal(size=3).astype(np.float32)
    mean, var = rng.normal(size=3).astype(np.float32), rng.random(3).astype(np.float32) + 0.5
    layers = [
        _layer("InputLayer", "in", [], batch_input_shape=[None, 2, 1, 4, 4]),
        _layer("Conv3D", "conv", ["in"], filters=3, kernel_size=[1, 1, 1], strides=[1, 1, 1],
               padding="valid", data_format="channels_first", dilation_rate=[1, 1, 1],
               groups=1, activation="linear", use_bias=True),
        _layer("BatchNormalization", "bn", ["conv"], axis=[1], momentum=0.99, epsilon=1e-3,
               center=True, scale=True),
        _layer("Concatenate", "cat", ["bn", "in"], axis=1),
        _layer("Softmax", "soft", ["cat"], axis=1),
    ]
    path = tmp_path / "cf.h5"
    _write_keras2(path, layers, ["soft"], {
        "conv": [("kernel:0", kernel), ("bias:0", bias)],
        "bn": [("gamma:0", gamma), ("beta:0", beta), ("moving_mean:0", mean),
               ("moving_variance:0", var)]})
    model = load_model(path)
    assert output_activations(model) == ["softmax"]
    x = rng.normal(size=(1, 1, 4, 4, 2)).astype(np.float32)  # (batch, z, y, x, c)
    conv = x @ kernel[0, 0, 0] + bias
    bn = (conv - mean) / np.sqrt(var + 1e-3) * gamma + beta
    cat = np.concatenate([bn, x], axis=-1)
    expected = np.exp(cat) / np.exp(cat).sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(model.predict_on_batch(x), expected, rtol=1e-4, atol=1e-5)


def test_code_carrying_layers_are_refused(tmp_path: Path) -> None:
    layers = [_layer("InputLayer", "in", [], batch_input_shape=[None, 1, 1, 4, 4]),
              _layer("Lambda", "evil", ["in"], function="print('hi')")]
    path = tmp_path / "lambda.h5"
    _write_keras2(path, layers, ["evil"], {})
    with pytest.raises(UnetslError, match="Lambda.*never loaded"):
        load_model(path)


def test_weights_that_do_not_fit_are_reported(tmp_path: Path) -> None:
    layers = [_layer("InputLayer", "in", [], batch_input_shape=[None, 1, 1, 4, 4]),
              _layer("Conv3D", "conv", ["in"], filters=2, kernel_size=[1, 1, 1],
                     data_format="channels_first", activation="sigmoid", use_bias=True)]
    path = tmp_path / "bad.h5"
    _write_keras2(path, layers, ["conv"], {"conv": [("kernel:0", np.zeros((1, 1, 1, 1, 3))),
                                                    ("bias:0", np.zeros(3))]})
    with pytest.raises(UnetslError, match="'conv' weights"):
        load_model(path)


def test_malformed_and_old_files_give_one_line_errors(tmp_path: Path, assert_one_line_error,
                                                      run_script) -> None:
    path = tmp_path / "broken.h5"
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.3.1"
        f.attrs["model_config"] = "{not json"
        f.create_group("model_weights")
    with pytest.raises(UnetslError, match="malformed model_config"):
        load_model(path)
    old = tmp_path / "keras1.h5"
    layers = [_layer("InputLayer", "in", [], batch_input_shape=[None, 1, 1, 4, 4])]
    _write_keras2(old, layers, ["in"], {}, version="1.2.2")
    with pytest.raises(UnetslError, match="Keras 1.2.2"):
        read_legacy_file(old)
    result = run_script("predict_image", str(path), str(path))
    assert_one_line_error(result, "broken.h5")


@pytest.mark.slow
def test_train_model_continues_an_original_model(compat: Path, tmp_path: Path, run_script) -> None:
    shutil.copyfile(compat / "trained-2d-best.h5", tmp_path / "trained-2d.h5")
    config = json.loads((compat / "trained-2d.json").read_text())
    for source in config["data sources"]:
        source["input folders"] = [str(compat / f) for f in source["input folders"]]
        source["label folders"] = [str(compat / f) for f in source["label folders"]]
        source["rotation unit"] = "radians"
    (tmp_path / "trained-2d.json").write_text(json.dumps(config, indent=4))
    result = run_script("train_model", "-c", "trained-2d.json", "-b", "-D", "epochs=1",
                        "-D", "stride=[0,3,64,64]", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    trained = load_model(tmp_path / "trained-2d-latest.h5")
    assert not is_legacy_model(tmp_path / "trained-2d-latest.h5")
    assert model_patch_shape(trained) == (1, 3, 64, 64)
