"""Intensity normalisation: percentiles per channel to 0/1, flat images, per-patch z-score."""

from __future__ import annotations

import numpy as np
import pytest

from unetsl.data.normalize import percentile_normalize, zscore_patch


def _ramp_channels() -> np.ndarray:
    """(c=2, z=1, y=1, x=101): channel 0 holds 0..100, channel 1 holds 1000..1200 step 2."""
    values = np.arange(101, dtype=np.float64)
    return np.stack([values, 1000 + 2 * values]).reshape(2, 1, 1, 101).astype(np.uint16)


# ----------------------------------------------------------------------------- percentiles


def test_percentiles_map_to_zero_and_one_per_channel():
    data = _ramp_channels()
    out = percentile_normalize(data, (10, 90))
    assert out.dtype == np.float32 and out.shape == data.shape
    for c in range(2):
        channel = out[c].ravel()
        # on a 0..100 ramp the 10th/90th percentiles are the values at index 10 and 90
        assert channel[10] == pytest.approx(0.0, abs=1e-6)
        assert channel[90] == pytest.approx(1.0, abs=1e-6)
        assert channel[0] == pytest.approx(-10 / 80, abs=1e-6)
        assert channel[100] == pytest.approx(90 / 80, abs=1e-6)
    # both channels are ramps, so after their own scaling they are equal
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)


def test_percentiles_are_taken_per_channel_over_time_and_space():
    rng = np.random.default_rng(3)
    data = np.empty((3, 2, 2, 4, 5), np.float32)  # (t, c, z, y, x)
    data[:, 0] = rng.normal(10, 2, data[:, 0].shape)
    data[:, 1] = rng.normal(-500, 50, data[:, 1].shape)
    out = percentile_normalize(data, (1, 99.8))
    for c in range(2):
        lo, hi = np.percentile(data[:, c], [1, 99.8])
        expected = (data[:, c] - lo) / (hi - lo)
        np.testing.assert_allclose(out[:, c], expected, rtol=1e-5, atol=1e-5)
        assert np.percentile(out[:, c], 1) == pytest.approx(0.0, abs=1e-5)
        assert np.percentile(out[:, c], 99.8) == pytest.approx(1.0, abs=1e-5)


def test_other_channel_axis():
    data = np.moveaxis(_ramp_channels(), 0, -1)  # (z, y, x, c)
    out = percentile_normalize(data, (0, 100), channel_axis=-1)
    assert out.shape == data.shape
    np.testing.assert_allclose(out[..., 0].ravel(), np.arange(101) / 100, atol=1e-6)
    np.testing.assert_allclose(out[..., 1].ravel(), np.arange(101) / 100, atol=1e-6)


def test_flat_channel_is_shifted_not_divided_by_zero():
    data = np.zeros((2, 1, 3, 3), np.uint8)
    data[0] = 7  # flat channel
    data[1] = np.arange(9, dtype=np.uint8).reshape(1, 3, 3)
    with np.errstate(all="raise"):  # a division by zero would raise here
        out = percentile_normalize(data, (0, 100))
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[0], np.zeros((1, 3, 3), np.float32))
    np.testing.assert_allclose(out[1].ravel(), np.arange(9) / 8, atol=1e-6)


def test_no_percentiles_only_converts_and_input_is_untouched():
    data = np.array([[[[1, 2], [3, 40000]]]], np.uint16)
    out = percentile_normalize(data, None)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, data.astype(np.float32))
    source = np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2)
    kept = source.copy()
    percentile_normalize(source, (0, 100))
    np.testing.assert_array_equal(source, kept)  # a float32 input is not changed in place


# --------------------------------------------------------------------------------- z-score


def test_zscore_per_channel_by_hand():
    patch = np.zeros((2, 1, 1, 4), np.float32)
    patch[0, 0, 0] = [1, 2, 3, 4]  # mean 2.5, population std sqrt(1.25)
    patch[1, 0, 0] = [10, 10, 30, 30]  # mean 20, std 10
    out = zscore_patch(patch.astype(np.int32))
    s = np.sqrt(1.25)
    np.testing.assert_allclose(out[0, 0, 0], [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s], rtol=1e-6)
    np.testing.assert_allclose(out[1, 0, 0], [-1, -1, 1, 1], rtol=1e-6)
    assert out.dtype == np.float32


def test_zscore_gives_mean_zero_std_one_per_channel():
    rng = np.random.default_rng(0)
    patch = rng.normal([[[[5.0]]], [[[-300.0]]], [[[0.01]]]], [[[[3.0]]], [[[40.0]]], [[[1.0]]]],
                       (3, 2, 5, 6)).astype(np.float32)
    out = zscore_patch(patch.copy())
    for c in range(3):
        assert float(out[c].mean()) == pytest.approx(0.0, abs=1e-5)
        assert float(out[c].std()) == pytest.approx(1.0, abs=1e-4)


def test_zscore_flat_or_nearly_flat_channel_is_only_centred():
    patch = np.full((2, 1, 2, 2), 9.0, np.float32)
    patch[1] += np.array([[0.0, 1e-4], [0.0, 1e-4]], np.float32)  # std 5e-5 < 1e-3 counts as 1
    with np.errstate(all="raise"):
        out = zscore_patch(patch.copy())
    np.testing.assert_array_equal(out[0], np.zeros((1, 2, 2), np.float32))
    np.testing.assert_allclose(out[1], patch[1] - patch[1].mean(), atol=1e-6)


def test_zscore_works_in_place_on_float32_only():
    patch = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    out = zscore_patch(patch)
    assert out is patch
    assert float(patch.mean()) == pytest.approx(0.0, abs=1e-6)
    ints = np.arange(8, dtype=np.int16).reshape(1, 2, 2, 2)
    out = zscore_patch(ints)
    assert out is not ints and out.dtype == np.float32
    np.testing.assert_array_equal(ints.ravel(), np.arange(8))
