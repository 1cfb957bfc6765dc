"""Test-time augmentation: the mean of every flipped and turned view of each tile."""

from __future__ import annotations

import numpy as np
import pytest

from unetsl.errors import UnetslError
from unetsl.predict.augment import AveragedViews, views


class Weighted:
    """A TileModel that is not turn-invariant: tiles times a fixed lopsided pattern."""

    def __init__(self, patch):
        self.patch, self.channels, self.indices = patch, [1], [0]
        y, x = patch[-2:]
        self.pattern = np.arange(y * x, dtype=np.float32).reshape(y, x)
        self.calls = 0

    def __call__(self, tiles):
        self.calls += 1
        return [tiles[:, :1] * self.pattern]


def test_square_tiles_have_eight_views_and_others_four():
    assert len(views((2, 1, 1, 8, 8))) == 8 and len(set(views((1, 8, 8)))) == 8
    assert views((1, 1, 1, 8, 6)) == [(0, False), (0, True), (2, False), (2, True)]


@pytest.mark.parametrize("shape", [(3, 1, 2, 6, 6), (3, 1, 2, 6, 4)])
def test_the_mean_of_the_views_turned_back(shape):
    rng = np.random.default_rng(0)
    tiles = rng.random(shape, dtype=np.float32)
    inner = Weighted(shape[1:])
    (out,) = AveragedViews(inner)(tiles)
    chosen = views(shape)
    assert inner.calls == len(chosen) and out.dtype == np.float32
    # a view's output, turned back, is the tile times the pattern mirrored and turned back
    mean = np.zeros(shape[-2:], np.float64)
    for turns, mirrored in chosen:
        mean += np.rot90(inner.pattern[:, ::-1] if mirrored else inner.pattern, -turns)
    np.testing.assert_allclose(out, tiles[:, :1] * mean / len(chosen), rtol=1e-5)
    assert not np.allclose(out, inner(tiles)[0])  # it is not the plain prediction


def test_the_spread_is_the_views_standard_deviation():
    """With spread, the means come first and then, per output, the standard deviation of
    the views turned back (what view_agreement scores)."""
    shape = (2, 1, 1, 6, 6)
    tiles = np.random.default_rng(3).random(shape, dtype=np.float32)
    inner = Weighted(shape[1:])
    wrapped = AveragedViews(inner, spread=True)
    assert wrapped.channels == [1, 1]
    mean, spread = wrapped(tiles)
    seen = [tiles[:, :1] * np.rot90(inner.pattern[:, ::-1] if mirrored else inner.pattern,
                                    -turns) for turns, mirrored in views(shape)]
    np.testing.assert_allclose(mean, np.mean(seen, axis=0), rtol=1e-5)
    np.testing.assert_allclose(spread, np.std(seen, axis=0), rtol=1e-4, atol=1e-3)
    assert spread.dtype == np.float32 and spread.max() > 1.0  # the pattern is lopsided


def test_an_invariant_model_is_unchanged():
    class Same:
        patch, channels, indices = (1, 1, 8, 8), [1], [0]

        def __call__(self, tiles):
            return [tiles * 2.0]

    tiles = np.random.default_rng(1).random((2, 1, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(AveragedViews(Same())(tiles)[0], tiles * 2.0, rtol=1e-6)
    _, spread = AveragedViews(Same(), spread=True)(tiles)
    assert np.abs(spread).max() < 1e-3  # every view agrees


def test_predict_averages_the_views_of_a_real_network():
    """One tile covers the image: predict(augment=True) is the mean of the 8 predictions of
    the turned and flipped image, turned back."""
    import keras

    from unetsl.nets.unet import build_unet
    from unetsl.predict import predict
    from unetsl.predict.engine import predict_outputs

    keras.utils.set_random_seed(4)
    model = build_unet((1, 1, 16, 16), n_labels=1, depth=2, n_filters=2,
                       spatial_dropout_rate=0.0)
    image = np.random.default_rng(2).random((1, 1, 16, 16), dtype=np.float32) * 100
    kwargs = dict(batch_size=1, tile=(1, 16, 16), normalization=None)
    averaged = predict(model, image, augment=True, **kwargs)
    expected = np.zeros_like(averaged)
    for turns, mirrored in views(image.shape):
        seen = np.rot90(image, turns, axes=(-2, -1))
        seen = np.ascontiguousarray(seen[..., ::-1] if mirrored else seen)
        out = predict(model, seen, **kwargs)
        out = out[..., ::-1] if mirrored else out
        expected += np.rot90(out, -turns, axes=(-2, -1)) / 8
    np.testing.assert_allclose(averaged, expected, rtol=1e-4, atol=1e-6)
    assert not np.allclose(averaged, predict(model, image, **kwargs), atol=1e-4)
    mean, spread = predict_outputs(model, image, augment=True, view_spread=True, **kwargs)
    np.testing.assert_allclose(mean, averaged, rtol=1e-5, atol=1e-7)
    assert spread.shape == mean.shape and 0 < spread.max() <= 0.5
    with pytest.raises(UnetslError, match="view_spread needs augment"):
        predict_outputs(model, image, view_spread=True, **kwargs)
