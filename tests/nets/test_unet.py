"""Tests for unetsl.nets.unet: topology, shapes, cascade, losses and model files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from unetsl.errors import UnetslError
from unetsl.nets.losses import (
    LOSSES,
    SorensenDiceCoefLoss,
    WeightedDiceLoss,
    get_loss,
    get_optimizer,
)
from unetsl.nets.model_files import load_model, save_model
from unetsl.nets.shapes import (
    check_patch_divisible,
    from_model_layout,
    model_patch_shape,
    output_activations,
    to_model_layout,
)
from unetsl.nets.unet import build_cascade, build_unet

COMPAT = Path(__file__).resolve().parents[2].parent / "shared" / "compat"
TINY = dict(n_filters=2, depth=2)
CUSTOM_LOSSES = [name for name in LOSSES if name.startswith("unetsl.model.")]


def _weights_by_layer(model: keras.Model) -> dict[str, list[np.ndarray]]:
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


# ------------------------------------------------------------------------------ topology


def test_default_model_parameter_count_and_names():
    model = build_unet((1, 3, 64, 64))
    assert model.count_params() == 3_928_001
    names = {layer.name for layer in model.layers}
    for d in range(3):
        for family in ("contraction-a", "contraction-b", "unetsl-do-ca", "unetsl-do-cb"):
            assert f"{family}-{d}" in names
    for d in range(2):
        assert f"expansion-a-{d}" in names and f"expansion-b-{d}" in names
    assert "expansion-a-2" not in names
    assert model.layers[-1].name == "output"
    assert tuple(model.input_shape) == (None, 3, 64, 64, 1)
    assert tuple(model.output_shape) == (None, 3, 64, 64, 1)
    assert model_patch_shape(model) == (1, 3, 64, 64)
    assert output_activations(model) == ["sigmoid"]
    assert model.get_layer("contraction-b-2").filters == 256
    assert model.get_layer("expansion-a-0").filters == 64
    conv = model.get_layer("contraction-a-0")
    assert conv.data_format == "channels_last"
    assert keras.config.image_data_format() == "channels_last"


def test_no_dropout_layers_when_rate_is_zero():
    model = build_unet((1, 4, 16, 16), spatial_dropout_rate=0, **TINY)
    assert not [layer for layer in model.layers if "unetsl-do" in layer.name]


@pytest.mark.parametrize(
    "shape, pooling",
    [((1, 1, 32, 32), (1, 2, 2)), ((1, 3, 32, 32), (1, 2, 2)), ((1, 1, 16, 16), (2, 2, 2))],
    ids=["2d", "2d+time", "2d-ignores-z-pooling"],
)
def test_output_shapes_2d(shape, pooling):
    model = build_unet(shape, pooling=pooling, **TINY)
    c, z, y, x = shape
    batch = np.random.default_rng(0).random((2, z, y, x, c), dtype=np.float32)
    out = model.predict(batch, verbose=0)
    assert out.shape == (2, z, y, x, 1)
    assert np.all((out >= 0) & (out <= 1))
    if z == 1:
        assert isinstance(model.get_layer("contraction-a-0"), keras.layers.Conv2D)
        assert model.get_layer("contraction-a-0").kernel.shape == (3, 3, 1, 2)
    else:
        assert isinstance(model.get_layer("contraction-a-0"), keras.layers.Conv3D)


def test_output_shapes_3d_softmax():
    model = build_unet((2, 8, 16, 16), n_labels=2, pooling=(2, 2, 2), activation="softmax", **TINY)
    assert model_patch_shape(model) == (2, 8, 16, 16)
    assert output_activations(model) == ["softmax"]
    batch = np.random.default_rng(1).random((1, 8, 16, 16, 2), dtype=np.float32)
    out = model.predict(batch, verbose=0)
    assert out.shape == (1, 8, 16, 16, 2)
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, atol=1e-5)


def test_batch_normalization_option():
    model = build_unet((1, 4, 16, 16), batch_normalization=True, **TINY)
    bn = [
        layer.name for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    # 2 convs per contracting level (2 levels) + 2 per expanding level (1 level)
    assert len(bn) == 6
    assert "contraction-a-0-bn" in bn and "expansion-b-0-bn" in bn
    assert model.get_layer("contraction-a-0").get_config()["activation"] == "linear"
    plain = build_unet((1, 4, 16, 16), **TINY)
    assert not [layer for layer in plain.layers if "-bn" in layer.name]


def test_bad_arguments_name_their_key():
    with pytest.raises(UnetslError, match='"activation"'):
        build_unet((1, 4, 16, 16), activation="no-such-activation", **TINY)
    with pytest.raises(UnetslError, match='"n labels"'):
        build_unet((1, 4, 16, 16), n_labels=0, **TINY)
    with pytest.raises(UnetslError, match='"kernel shape"'):
        build_unet((1, 4, 16, 16), kernel_shape=(3, 3), **TINY)
    with pytest.raises(UnetslError, match='"spatial dropout rate"'):
        build_unet((1, 4, 16, 16), spatial_dropout_rate=1.5, **TINY)


# ------------------------------------------------------------------------------ divisibility


def test_check_patch_divisible_accepts_valid_shapes():
    check_patch_divisible((1, 3, 64, 64), (1, 2, 2), 3)
    check_patch_divisible((1, 1, 64, 64), (2, 2, 2), 3)  # z == 1: 2-D, z pooling ignored
    check_patch_divisible((1, 5, 7, 9), (2, 2, 2), 1)  # depth 1 never pools


@pytest.mark.parametrize(
    "shape, pooling, depth",
    [((1, 3, 60, 60), (1, 2, 2), 4), ((1, 3, 2, 2), (1, 2, 2), 3), ((1, 6, 16, 16), (2, 2, 2), 3)],
    ids=["not-divisible", "too-small", "z-not-divisible"],
)
def test_check_patch_divisible_errors_name_the_keys(shape, pooling, depth):
    with pytest.raises(UnetslError) as info:
        check_patch_divisible(shape, pooling, depth)
    message = str(info.value)
    for key in ('"input shape"', '"pooling"', '"depth"'):
        assert key in message
    assert "\n" not in message


def test_check_patch_divisible_rejects_malformed_values():
    with pytest.raises(UnetslError, match='"pooling"'):
        check_patch_divisible((1, 3, 64, 64), (2, 2), 3)
    with pytest.raises(UnetslError, match='"input shape"'):
        check_patch_divisible((3, 64, 64), (1, 2, 2), 3)
    with pytest.raises(UnetslError, match='"depth"'):
        check_patch_divisible((1, 3, 64, 64), (1, 2, 2), 0)


def test_builders_check_divisibility():
    with pytest.raises(UnetslError, match='"input shape"'):
        build_unet((1, 4, 18, 18), n_filters=2, depth=3)
    with pytest.raises(UnetslError, match='"input shape"'):
        build_cascade((1, 4, 18, 18), 2, n_filters=2, depth=3)


# ------------------------------------------------------------------------------ layout


def test_layout_round_trip():
    x = np.arange(2 * 3 * 4 * 5 * 6).reshape(2, 3, 4, 5, 6)
    y = to_model_layout(x)
    assert y.shape == (2, 4, 5, 6, 3)
    assert y[1, 2, 3, 4, 0] == x[1, 0, 2, 3, 4]
    np.testing.assert_array_equal(from_model_layout(y), x)
    with pytest.raises(UnetslError, match="5-D"):
        to_model_layout(x[0])


# ------------------------------------------------------------------------------ cascade


def test_cascade_outputs_and_names():
    model = build_cascade((1, 4, 16, 16), 3, **TINY)
    names = {layer.name for layer in model.layers}
    assert list(model.output_names) == ["cascade_0", "cascade_1", "cascade_2"]
    assert output_activations(model) == ["sigmoid"] * 3
    assert {"contraction-a-0", "cascade1-contraction-a-0", "cascade2-expansion-b-0"} <= names
    assert {"cascade_0-conv", "cascade_1-conv", "cascade_2-conv"} <= names
    # stage k > 0 sees the input plus the previous stage's n_labels channels
    assert model.get_layer("cascade1-contraction-a-0").kernel.shape[-2] == 2
    batch = np.random.default_rng(2).random((2, 4, 16, 16, 1), dtype=np.float32)
    outs = model.predict(batch, verbose=0)
    assert len(outs) == 3 and all(o.shape == (2, 4, 16, 16, 1) for o in outs)


def test_cascade_2d_builds_5d_outputs():
    model = build_cascade((1, 1, 16, 16), 2, n_labels=2, activation="softmax", **TINY)
    assert [tuple(t.shape) for t in model.outputs] == [(None, 1, 16, 16, 2)] * 2


def test_plain_unet_weights_transfer_into_cascade_stage0(tmp_path):
    plain = build_unet((1, 4, 16, 16), spatial_dropout_rate=0, **TINY)
    rng = np.random.default_rng(3)
    for layer in plain.layers:
        layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()])
    cascade = build_cascade((1, 4, 16, 16), 3, spatial_dropout_rate=0, **TINY)

    # by name through a weights file
    path = tmp_path / "plain.h5"
    save_model(plain, path)
    cascade.load_weights(path, by_name=True, skip_mismatch=True)
    source = _weights_by_layer(plain)
    copied = 0
    for name, weights in _weights_by_layer(cascade).items():
        if name in source:
            copied += 1
            for a, b in zip(weights, source[name], strict=True):
                np.testing.assert_array_equal(a, b)
    assert copied == len(source) - 1  # everything but the head, whose name differs

    # with the head copied too, stage 0 computes exactly what the plain U-Net computes
    cascade.get_layer("cascade_0-conv").set_weights(plain.get_layer("output-conv").get_weights())
    batch = rng.random((2, 4, 16, 16, 1), dtype=np.float32)
    np.testing.assert_allclose(
        cascade.predict(batch, verbose=0)[0], plain.predict(batch, verbose=0), atol=1e-6
    )


# ------------------------------------------------------------------------------ losses


def _targets(rng: np.random.Generator, shape=(2, 4, 8, 8, 2)) -> np.ndarray:
    labels = rng.integers(0, shape[-1], size=shape[:-1])
    return np.eye(shape[-1], dtype=np.float32)[labels]


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_prefers_perfect_prediction_and_is_finite_on_empty_targets(name):
    rng = np.random.default_rng(4)
    loss = get_loss(name)
    assert isinstance(loss, keras.losses.Loss)
    assert get_loss(name) is not loss
    target = _targets(rng)
    perfect = np.clip(target, 0.01, 0.99)
    poor = 1.0 - perfect
    assert float(loss(target, perfect)) < float(loss(target, poor))
    empty = np.zeros_like(target)
    prediction = rng.random(target.shape, dtype=np.float32)
    assert np.isfinite(float(loss(empty, prediction)))
    if name in CUSTOM_LOSSES:  # Keras' cross-entropy normalises P: 0/0 on all-zero output
        assert np.isfinite(float(loss(empty, empty)))


@pytest.mark.parametrize("name", CUSTOM_LOSSES)
def test_custom_losses_are_per_sample_and_weightable(name):
    rng = np.random.default_rng(5)
    loss = get_loss(name)
    target = _targets(rng)
    prediction = rng.random(target.shape, dtype=np.float32)
    per_sample = keras.ops.convert_to_numpy(loss.call(target, prediction))
    assert per_sample.shape == (2,)
    assert np.all(np.isfinite(per_sample))
    weighted = float(loss(target, prediction, sample_weight=np.array([1.0, 0.0])))
    np.testing.assert_allclose(weighted, per_sample[0] / 2, rtol=1e-5)
    assert type(loss).from_config(loss.get_config()).get_config() == loss.get_config()


def test_dice_values():
    dice = SorensenDiceCoefLoss()
    target = _targets(np.random.default_rng(6))
    np.testing.assert_allclose(float(dice(target, target)), -1.0, atol=1e-6)
    empty = np.zeros_like(target)
    np.testing.assert_allclose(float(dice(empty, empty)), -1.0, atol=1e-6)
    assert float(dice(target, 1 - target)) > -0.01


def test_weighted_dice_balances_channels():
    # one rare channel missed entirely must cost as much as a common channel missed entirely
    target = np.zeros((1, 1, 10, 10, 2), np.float32)
    target[..., 0] = 1
    target[0, 0, 0, 0] = (0, 1)
    miss_rare = target.copy()
    miss_rare[0, 0, 0, 0] = (1, 0)
    loss = WeightedDiceLoss()
    assert float(loss(target, miss_rare)) > -0.6
    np.testing.assert_allclose(float(loss(target, target)), -1.0, atol=1e-6)


def test_aliases_and_unknown_names():
    assert type(get_loss("dice_coefficient")).__name__ == "WeightedError"
    assert isinstance(get_loss("dice_coefficient_loss"), SorensenDiceCoefLoss)
    assert isinstance(get_loss("keras.losses.binary_crossentropy"), keras.losses.BinaryCrossentropy)
    assert isinstance(get_loss("mse"), keras.losses.MeanSquaredError)
    with pytest.raises(UnetslError, match="unetsl.model.sorensenDiceCoefLoss"):
        get_loss("no-such-loss")


def test_get_optimizer():
    adam = get_optimizer("keras.optimizers.Adam", 1e-3)
    assert isinstance(adam, keras.optimizers.Adam)
    np.testing.assert_allclose(float(adam.learning_rate), 1e-3)
    sgd = get_optimizer("keras.optimizers.SGD", 0.1)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0
    with pytest.raises(UnetslError, match='"optimizer".*keras.optimizers.Adam'):
        get_optimizer("keras.optimizers.RMSprop", 1e-3)


# ------------------------------------------------------------------------------ model files

_RELOAD_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from unetsl.nets.model_files import load_model
    batch = np.load(sys.argv[1])
    for path in sys.argv[2:]:
        model = load_model(path, compile=True)
        np.save(path + ".pred.npy", model.predict(batch, verbose=0))
        with open(path + ".loss.txt", "w") as f:
            f.write(type(model.loss).__module__ + "." + type(model.loss).__name__)
            f.write(" " + type(model.optimizer).__name__)
    """
)


def test_compiled_model_reloads_in_a_new_process(tmp_path):
    model = build_unet((1, 4, 16, 16), **TINY)
    model.compile(
        optimizer=get_optimizer("keras.optimizers.Adam", 1e-3),
        loss=get_loss("unetsl.model.sorensenDiceCoefLoss"),
    )
    rng = np.random.default_rng(7)
    batch = rng.random((2, 4, 16, 16, 1), dtype=np.float32)
    model.train_on_batch(batch, (batch > 0.5).astype(np.float32))
    expected = model.predict(batch, verbose=0)

    paths = [tmp_path / "model.h5", tmp_path / "model.keras"]
    for path in paths:
        save_model(model, path)
    np.save(tmp_path / "batch.npy", batch)
    script = tmp_path / "reload.py"
    script.write_text(_RELOAD_SCRIPT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "batch.npy"), *map(str, paths)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for path in paths:
        np.testing.assert_allclose(np.load(f"{path}.pred.npy"), expected, atol=1e-6)
        loss_name, optimizer = Path(f"{path}.loss.txt").read_text().split()
        assert loss_name == "unetsl.nets.losses.SorensenDiceCoefLoss"
        if path.suffix == ".keras":
            assert optimizer == "Adam"  # the .h5 save before must not drop it


def test_load_model_errors_name_the_path(tmp_path):
    missing = tmp_path / "missing.h5"
    with pytest.raises(UnetslError, match="missing.h5"):
        load_model(missing)
    for name in ("text.h5", "text.keras"):
        path = tmp_path / name
        path.write_text("not a model\n")
        with pytest.raises(UnetslError, match=name):
            load_model(path)
    odd = tmp_path / "model.txt"
    odd.write_text("x")
    with pytest.raises(UnetslError, match="model.txt"):
        load_model(odd)


def test_save_model_is_atomic_and_replaces(tmp_path):
    model = build_unet((1, 1, 8, 8), spatial_dropout_rate=0, n_filters=2, depth=1)
    path = tmp_path / "sub" / "model.keras"
    save_model(model, path)
    save_model(model, path)  # overwrite in place
    save_model(model, tmp_path / "sub" / "model.h5")
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.h5", "model.keras"]
    reloaded = load_model(path)
    assert [layer.name for layer in reloaded.layers] == [layer.name for layer in model.layers]
    with pytest.raises(UnetslError, match="suffix"):
        save_model(model, tmp_path / "sub" / "model.pb")
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.h5", "model.keras"]


# ------------------------------------------------------------------------------ compatibility


@pytest.mark.skipif(
    not (COMPAT / "default-2d.h5").exists(),
    reason="original's default-2d.h5 not in ../shared/compat",
)
def test_weight_shapes_match_the_original_default_model():
    """Same layers and weight shapes as the original's file, so weights transfer by name."""
    renamed = {"conv3d": "output-conv"}  # the original's auto-named head
    ours = _weights_by_layer(build_unet((1, 3, 64, 64)))
    theirs: dict[str, list[tuple[int, ...]]] = {}
    with h5py.File(COMPAT / "default-2d.h5", "r") as f:
        group = f["model_weights"]
        for raw in group.attrs["layer_names"]:
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            weight_names = group[name].attrs.get("weight_names", [])
            if len(weight_names):
                theirs[renamed.get(name, name)] = [
                    tuple(group[name][w.decode() if isinstance(w, bytes) else w].shape)
                    for w in weight_names
                ]
    assert set(theirs) == set(ours)
    for name, shapes in theirs.items():
        assert [w.shape for w in ours[name]] == shapes, name
