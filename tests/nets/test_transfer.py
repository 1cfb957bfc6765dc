"""transfer_weights: by name first, then in order; every copy reported; nothing doubled."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from unetsl.errors import UnetslError
from unetsl.nets.model_files import load_model, save_model
from unetsl.nets.transfer import describe_layers, transfer_weights
from unetsl.nets.unet import build_unet


def _seeded(model: keras.Model, seed: int) -> keras.Model:
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def test_same_structure_copies_everything_and_predicts_alike() -> None:
    origin = _seeded(build_unet((1, 1, 16, 16), n_labels=2, depth=2, n_filters=2), 0)
    target = build_unet((1, 1, 16, 16), n_labels=2, depth=2, n_filters=2)
    report = transfer_weights(origin, target)
    assert len(report.copies) == 7 and not report.skipped and not report.untouched
    assert all(c.how == "by name" for c in report.copies)
    x = np.random.default_rng(1).random((2, 1, 16, 16, 1)).astype(np.float32)
    np.testing.assert_allclose(target.predict_on_batch(x), origin.predict_on_batch(x))


def test_shallow_into_deeper_unet() -> None:
    origin = _seeded(build_unet((1, 1, 16, 16), n_labels=1, depth=2, n_filters=2), 0)
    target = build_unet((1, 1, 16, 16), n_labels=1, depth=3, n_filters=2)
    before = {layer.name: layer.get_weights() for layer in target.layers if layer.weights}
    report = transfer_weights(origin, target)
    copied = {c.target_name for c in report.copies}
    # Level 0 of both nets has the same shapes; contraction-b-1 of the shallow net is its
    # bottom, with half the input of the deep net's expansion -> skipped, not forced.
    assert {"contraction-a-0", "contraction-b-0", "contraction-a-1", "contraction-b-1",
            "expansion-a-0", "expansion-b-0", "output-conv"} <= copied
    for layer in target.layers:
        if layer.name in copied:
            for got, want in zip(layer.get_weights(), origin.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(got, want)
        elif layer.weights:
            for got, was in zip(layer.get_weights(), before[layer.name]):
                np.testing.assert_array_equal(got, was)  # untouched layers keep their init
    assert {name for _, name, _ in report.untouched} == {
        "contraction-a-2", "contraction-b-2", "expansion-a-1", "expansion-b-1"}


def _chain(names: list[str], filters: list[int]) -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    x = inputs
    for name, n in zip(names, filters):
        x = keras.layers.Conv2D(n, 3, padding="same", name=name)(x)
    return keras.Model(inputs, x)


def test_order_pass_uses_each_target_once_and_moves_on() -> None:
    # Names never match: the original's walk would copy "a" and then "b" into the same
    # target layer; here each target layer takes one origin layer, in order.
    origin = _seeded(_chain(["a", "b", "c"], [2, 2, 3]), 0)
    target = _chain(["x", "y", "z"], [2, 2, 3])
    report = transfer_weights(origin, target)
    assert [(c.origin_name, c.target_name, c.how) for c in report.copies] == [
        ("a", "x", "in order"), ("b", "y", "in order"), ("c", "z", "in order")]


def test_origin_layer_without_match_is_skipped_without_losing_the_place() -> None:
    origin = _seeded(_chain(["a", "odd", "c"], [2, 5, 3]), 0)
    target = _chain(["x", "y", "z"], [2, 2, 3])
    report = transfer_weights(origin, target)
    assert [(c.origin_name, c.target_name) for c in report.copies] == [("a", "x")]
    assert [name for _, name, _ in report.skipped] == ["odd", "c"]  # c's input size differs
    lines = report.lines()
    assert lines[0].startswith("copied 1 a -> 1 x") and "skipped" in lines[1]


def test_nothing_fits_is_an_error() -> None:
    with pytest.raises(UnetslError, match="nothing copied"):
        transfer_weights(_chain(["a"], [4]), _chain(["a"], [5]))


def test_describe_layers_lists_weightless_layers_like_the_original() -> None:
    lines = describe_layers(build_unet((1, 1, 16, 16), depth=2, n_filters=2,
                                       spatial_dropout_rate=0))
    assert lines[0] == "\t**0 input"
    assert any(line.startswith("2 contraction-a-0 ((3, 3, 1, 2), (2,))") for line in lines)


def test_original_model_into_a_unetsl_model(compat: Path) -> None:
    origin = load_model(compat / "trained-2d-best.h5")
    target = build_unet((1, 3, 64, 64), n_labels=2, depth=3, n_filters=8)
    report = transfer_weights(origin, target)
    assert len(report.copies) == 11 and not report.skipped
    assert [c.target_name for c in report.copies if c.how == "in order"] == ["output-conv"]
    x = np.random.default_rng(0).random((1, 3, 64, 64, 1)).astype(np.float32) * 1000
    np.testing.assert_allclose(target.predict_on_batch(x), origin.predict_on_batch(x),
                               atol=1e-6)


def test_cli_writes_the_target_with_the_origins_weights(tmp_path: Path, run_script) -> None:
    origin = _seeded(build_unet((1, 1, 16, 16), depth=2, n_filters=2), 0)
    target = build_unet((1, 1, 16, 16), depth=3, n_filters=2)
    save_model(origin, tmp_path / "origin.h5")
    save_model(target, tmp_path / "target.keras")
    result = run_script("transfer_weights", "origin.h5", "target.keras", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "copied 2 contraction-a-0 -> 2 contraction-a-0" in result.stdout
    assert "\t**0 input" in result.stdout
    written = load_model(tmp_path / "transferred.h5")  # the original's default name
    np.testing.assert_array_equal(written.get_layer("contraction-a-0").get_weights()[0],
                                  origin.get_layer("contraction-a-0").get_weights()[0])
    assert len(written.layers) == len(target.layers)


def test_cli_errors_are_one_line(tmp_path: Path, assert_one_line_error, run_script) -> None:
    (tmp_path / "not-a-model.h5").write_text("hello")
    save_model(_chain(["a"], [4]), tmp_path / "a.keras")
    save_model(_chain(["a"], [5]), tmp_path / "b.keras")
    result = run_script("transfer_weights", "not-a-model.h5", "a.keras", "out.h5", cwd=tmp_path)
    assert_one_line_error(result, "not-a-model.h5")
    result = run_script("transfer_weights", "a.keras", "b.keras", "out.h5", "-q", cwd=tmp_path)
    assert_one_line_error(result, "nothing copied")
    assert not (tmp_path / "out.h5").exists()
