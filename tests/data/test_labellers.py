"""Tests for unetsl.data.labellers: the behaviour doc's worked examples (§10) and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage
from skimage import measure

from unetsl.data.labellers import (
    LABELLERS,
    Labeller,
    categorical_labels,
    double_membrane_labels,
    get_labeller,
    linear_labels,
    make_target,
    multiclass_labels,
    region_labels,
)
from unetsl.errors import UnetslError

FAST = settings(max_examples=50, deadline=None)

shapes = st.tuples(st.integers(1, 2), st.integers(1, 12), st.integers(1, 12))


def grid(text: str) -> np.ndarray:
    """A (1, y, x) label slice from rows of whitespace-separated integers."""
    rows = [[int(v) for v in line.split()] for line in text.strip().splitlines()]
    return np.array(rows, dtype=np.uint16)[np.newaxis]


def four_neighbour_dilation(mask: np.ndarray) -> np.ndarray:
    """Reference 3x3-cross dilation of each (y, x) plane of a (..., y, x) bool array."""
    out = mask.copy()
    out[..., 1:, :] |= mask[..., :-1, :]
    out[..., :-1, :] |= mask[..., 1:, :]
    out[..., :, 1:] |= mask[..., :, :-1]
    out[..., :, :-1] |= mask[..., :, 1:]
    return out


# --- worked examples (original-behaviour.md §10) ------------------------------------------


def test_multiclass_example_vertex_in_both_channels():
    label = grid("1 0 0\n0 3 0\n0 1 0")
    target = multiclass_labels(label, 2)
    assert target.shape == (2, 1, 3, 3)
    assert target.dtype == np.uint8
    np.testing.assert_array_equal(target[0, 0], [[1, 0, 0], [0, 1, 0], [0, 1, 0]])
    np.testing.assert_array_equal(target[1, 0], [[0, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_region_example_four_regions_three_channels():
    label = grid("0 0 1 0\n0 0 1 0\n1 1 1 1\n0 0 1 0")
    target = region_labels(label, 3)
    assert target.shape == (3, 1, 4, 4)
    assert target.dtype == np.uint8
    np.testing.assert_array_equal(target[0, 0], label[0] != 0)
    np.testing.assert_array_equal(
        target[1, 0], [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        target[2, 0], [[0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0], [1, 1, 0, 1]]
    )


def test_region_fewer_regions_than_channels_leaves_zeros():
    label = grid("0 0 1 0\n0 0 1 0\n1 1 1 1\n0 0 1 0")
    target = region_labels(label, 7)
    assert target[5:].sum() == 0  # 4 regions -> channels 1..4, channels 5, 6 empty
    np.testing.assert_array_equal(target[4, 0, 3], [0, 0, 0, 1])


def test_region_labels_each_slice_separately():
    slice_ = grid("0 1 0\n0 1 0\n0 1 0")[0]
    label = np.stack([slice_, slice_.T])
    target = region_labels(label, 3)
    np.testing.assert_array_equal(target[1, 0], [[1, 0, 0]] * 3)  # left column
    np.testing.assert_array_equal(target[1, 1], [[1, 1, 1], [0, 0, 0], [0, 0, 0]])  # top row


def test_categorical_example_n2():
    # row `0 1 0`: ch0 = bit 0, ch1 = background (the original got n = 2 right)
    target = categorical_labels(np.array([[[0, 1, 0]]], dtype=np.uint8), 2)
    assert target.shape == (2, 1, 1, 3)
    assert target.dtype == np.uint8
    np.testing.assert_array_equal(target[:, 0, 0, :], [[0, 1, 0], [1, 0, 1]])


def test_categorical_example_n3_background_last():
    # row `0 1 2`: bit 0, bit 1, background; the original gave `1 0 0` / `0 0 1` / `0 0 0`
    target = categorical_labels(np.array([[[0, 1, 2]]], dtype=np.uint8), 3)
    assert target.shape == (3, 1, 1, 3)
    np.testing.assert_array_equal(target[:, 0, 0, :], [[0, 1, 0], [0, 0, 1], [1, 0, 0]])


def test_categorical_example_row_0_1_2_needs_three_channels():
    # with n = 2 the value 2 (bit 1) has no class channel: not one-hot, rejected
    with pytest.raises(UnetslError, match="2"):
        categorical_labels(np.array([[[0, 1, 2]]], dtype=np.uint8), 2)


def test_double_membrane_example_plus():
    label = grid("0 0 0 0 0\n0 0 0 0 0\n0 0 1 0 0\n0 0 0 0 0")
    target = double_membrane_labels(label, 1)
    assert target.shape == (1, 1, 4, 5)
    assert target.dtype == np.uint8
    np.testing.assert_array_equal(
        target[0, 0],
        [[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]],
    )


def test_double_membrane_does_not_spread_across_z():
    label = np.zeros((3, 3, 3), dtype=np.uint8)
    label[1, 1, 1] = 1
    target = double_membrane_labels(label, 1)
    assert target[0, 0].sum() == 0 and target[0, 2].sum() == 0
    assert target[0, 1].sum() == 5


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32])
def test_linear_example_values_and_dtype_kept(dtype):
    label = np.array([[[0, 5, 63]]], dtype=dtype)
    target = linear_labels(label, 7)
    assert target.shape == (1, 1, 1, 3)
    assert target.dtype == dtype
    np.testing.assert_array_equal(target[0, 0, 0], [0, 5, 63])


# --- properties ---------------------------------------------------------------------------


@FAST
@given(label=arrays(np.uint16, shapes), n=st.integers(1, 18))
def test_multiclass_bits_recompose_the_label(label, n):
    target = multiclass_labels(label, n)
    assert target.shape == (n, *label.shape)
    assert target.dtype == np.uint8
    assert set(np.unique(target)) <= {0, 1}
    weights = (np.uint64(1) << np.arange(n, dtype=np.uint64)).reshape(n, 1, 1, 1)
    recomposed = (target.astype(np.uint64) * weights).sum(axis=0)
    np.testing.assert_array_equal(recomposed, label.astype(np.uint64) & np.uint64(2**n - 1))


@FAST
@given(label=arrays(np.uint8, shapes, elements=st.integers(0, 15)), n=st.integers(1, 5))
def test_multiclass_accepts_integral_floats(label, n):
    np.testing.assert_array_equal(
        multiclass_labels(label.astype(np.float32), n), multiclass_labels(label, n)
    )


@st.composite
def one_hot_labels(draw):
    """(label, n, class index per pixel): values 0 or 2^k with k < n - 1; class n-1 = 0."""
    n = draw(st.integers(2, 9))
    classes = draw(arrays(np.int64, draw(shapes), elements=st.integers(0, n - 1)))
    values = np.where(classes == n - 1, 0, np.left_shift(1, classes)).astype(np.uint16)
    return values, n, classes


@FAST
@given(data=one_hot_labels())
def test_categorical_one_hot_and_argmax_recovers_class(data):
    label, n, classes = data
    target = categorical_labels(label, n)
    assert target.shape == (n, *label.shape)
    assert target.dtype == np.uint8
    np.testing.assert_array_equal(target.sum(axis=0), 1)
    np.testing.assert_array_equal(target.argmax(axis=0), classes)


@FAST
@given(
    label=arrays(np.uint8, shapes, elements=st.integers(0, 255)),
    n=st.integers(2, 9),
)
def test_categorical_rejects_exactly_the_non_one_hot_values(label, n):
    values = np.unique(label).astype(int)
    bad = [v for v in values if v != 0 and (v & (v - 1) or v >= 2 ** (n - 1))]
    if bad:
        with pytest.raises(UnetslError, match=str(bad[0])):
            categorical_labels(label, n)
    else:
        np.testing.assert_array_equal(categorical_labels(label, n).sum(axis=0), 1)


@FAST
@given(label=arrays(np.uint8, shapes, elements=st.integers(0, 7)), n=st.integers(1, 4))
def test_double_membrane_is_cross_dilated_multiclass(label, n):
    multiclass = multiclass_labels(label, n).astype(bool)
    target = double_membrane_labels(label, n)
    assert target.shape == (n, *label.shape)
    assert target.dtype == np.uint8
    assert np.all(target.astype(bool) >= multiclass)  # superset
    np.testing.assert_array_equal(target.astype(bool), four_neighbour_dilation(multiclass))


def _first_pixel(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


@FAST
@given(label=arrays(np.uint8, shapes, elements=st.integers(0, 1)))
def test_region_channels_partition_zero_pixels_in_raster_order(label):
    n_regions = max(int(measure.label(plane == 0, connectivity=1).max()) for plane in label)
    n = n_regions + 1
    target = region_labels(label, n)
    assert target.shape == (n, *label.shape)
    assert target.dtype == np.uint8
    np.testing.assert_array_equal(target[0], label != 0)
    # every pixel in exactly one channel: membrane or one region
    np.testing.assert_array_equal(target.sum(axis=0), 1)
    for z in range(label.shape[0]):
        firsts = []
        for k in range(1, n):
            region = target[k, z].astype(bool)
            if not region.any():
                continue
            # each region channel is one 4-connected component of zeros ...
            assert measure.label(region, connectivity=1).max() == 1
            firsts.append(_first_pixel(region))
        # ... and the regions come in raster-scan order of their first pixel
        assert firsts == sorted(firsts)
        if firsts:
            assert firsts[0] == _first_pixel(label[z] == 0)
        # the non-empty channels are exactly 1..len(firsts)
        assert target[1 + len(firsts) :, z].sum() == 0


@FAST
@given(label=arrays(np.uint8, shapes, elements=st.integers(0, 1)), n=st.integers(1, 5))
def test_region_extra_regions_merge_into_last_channel(label, n):
    full = region_labels(label, 64)  # extra regions (>= 63) merge the same way in both
    target = region_labels(label, n)
    np.testing.assert_array_equal(target[: n - 1], full[: n - 1])
    if n > 1:
        np.testing.assert_array_equal(target[n - 1], full[n - 1 :].max(axis=0))
    # region channels are disjoint from each other and from the membrane
    assert target.sum(axis=0).max() <= 1


@FAST
@given(
    label=arrays(st.sampled_from([np.uint8, np.int16, np.uint16, np.float32, np.float64]), shapes),
    n=st.integers(1, 5),
)
def test_linear_is_identity_with_dtype_kept(label, n):
    target = linear_labels(label, n)
    assert target.shape == (1, *label.shape)
    assert target.dtype == label.dtype
    np.testing.assert_array_equal(target[0], label)
    assert not np.shares_memory(target, label)


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LABELLERS))
@pytest.mark.parametrize("shape", [(4, 4), (1, 1, 4, 4), (3,)])
def test_non_3d_labels_rejected(name, shape):
    with pytest.raises(UnetslError, match="3-D"):
        make_target(np.zeros(shape, dtype=np.uint8), name, 2)


@pytest.mark.parametrize(
    "labeller", [multiclass_labels, categorical_labels, double_membrane_labels]
)
def test_fractional_labels_rejected(labeller):
    label = np.array([[[0.0, 1.0, 0.5]]], dtype=np.float32)
    with pytest.raises(UnetslError, match="0.5"):
        labeller(label, 2)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0])
def test_multiclass_rejects_nan_inf_negative_floats(bad):
    with pytest.raises(UnetslError, match="non-negative integers"):
        multiclass_labels(np.array([[[0.0, bad]]]), 2)


def test_multiclass_rejects_negative_integers():
    with pytest.raises(UnetslError, match="-3"):
        multiclass_labels(np.array([[[0, -3]]], dtype=np.int16), 2)


def test_categorical_error_names_multi_bit_value():
    with pytest.raises(UnetslError, match=r"\b3\b"):
        categorical_labels(np.array([[[0, 1, 3]]], dtype=np.uint8), 3)


@pytest.mark.parametrize("n", [0, -1, 1.5, "2", True])
def test_bad_n_labels_rejected(n):
    with pytest.raises(UnetslError, match="n labels"):
        multiclass_labels(np.zeros((1, 2, 2), dtype=np.uint8), n)


def test_categorical_needs_two_channels():
    with pytest.raises(UnetslError, match="at least 2"):
        categorical_labels(np.zeros((1, 2, 2), dtype=np.uint8), 1)


def test_region_labels_with_one_channel_is_membrane_only():
    label = grid("0 1\n1 0")
    np.testing.assert_array_equal(region_labels(label, 1), (label != 0)[np.newaxis])


def test_multiclass_high_bits_of_uint16_and_beyond_dtype():
    label = np.array([[[1 << 15, 1]]], dtype=np.uint16)
    target = multiclass_labels(label, 20)
    assert target[15, 0, 0].tolist() == [1, 0]
    assert target[0, 0, 0].tolist() == [0, 1]
    assert target[16:].sum() == 0


# --- registry -----------------------------------------------------------------------------

MENU = [
    "region labels",
    "multiclass labels",
    "categorical labels",
    "double membrane labels",
    "linear labels",
    "instance labels",  # unetsl's own, after the original's five
]


def test_registry_in_menu_order():
    assert list(LABELLERS) == MENU
    assert all(isinstance(v, Labeller) and v.name == k for k, v in LABELLERS.items())


@pytest.mark.parametrize("index", range(6))
def test_get_labeller_by_name_short_name_and_number(index):
    name = MENU[index]
    expected = LABELLERS[name]
    short = name.removesuffix(" labels")
    for key in (
        name,
        short,
        short.upper(),
        f"  {name} ",
        short.replace(" ", "_"),
        index,
        str(index),
    ):
        assert get_labeller(key) is expected
    assert get_labeller(np.int64(index)) is expected
    assert get_labeller(expected) is expected


@pytest.mark.parametrize("bad", ["foo", "labels", "", "6", 6, -1, True, 1.0, None])
def test_get_labeller_unknown_lists_valid_names(bad):
    with pytest.raises(UnetslError, match="multiclass labels") as info:
        get_labeller(bad)
    message = str(info.value)
    assert "\n" not in message
    assert all(name in message for name in MENU)


def test_registry_metadata():
    assert get_labeller("multiclass").activation == "sigmoid"
    assert get_labeller("multiclass").reduction == "multiclass"
    assert get_labeller("categorical").activation == "softmax"
    assert get_labeller("categorical").reduction == "categorical"
    assert get_labeller("linear").activation == "relu"
    assert get_labeller("linear").reduction == "linear"
    assert get_labeller("double membrane").reduction == "multiclass"
    assert not get_labeller("linear").integer_only
    assert get_labeller("multiclass").integer_only


def test_make_target_dispatches_and_labeller_is_callable():
    label = grid("1 0 0\n0 3 0\n0 1 0")
    np.testing.assert_array_equal(
        make_target(label, "multiclass labels", 2), multiclass_labels(label, 2)
    )
    np.testing.assert_array_equal(make_target(label, 4, 2), linear_labels(label, 2))
    np.testing.assert_array_equal(
        LABELLERS["double membrane labels"](label, 2), double_membrane_labels(label, 2)
    )


def test_instance_labels_split_touching_objects():
    """Two touching squares and one alone: foreground, and each object's own edge pixels
    (4-neighbourhood) as boundary, so the touching pair is cut by two boundary columns."""
    label = np.zeros((1, 8, 12), np.uint16)
    label[0, 1:6, 1:5] = 7
    label[0, 1:6, 5:9] = 300  # touches 7 along a column
    label[0, 6:8, 10:12] = 2  # at the image border: no boundary along the border
    target = get_labeller("instance")(label, 2)
    assert target.shape == (2, 1, 8, 12) and target.dtype == np.uint8
    np.testing.assert_array_equal(target[0], label != 0)
    boundary = target[1, 0]
    assert boundary[3, 4] and boundary[3, 5]  # both sides of the touching column
    assert not boundary[3, 2:4].any() and not boundary[3, 6:8].any()  # interiors
    assert boundary[1, 1:9].all() and boundary[5, 1:9].all()  # edges against background
    assert boundary[6, 10] and not boundary[7, 11]  # the image border is not an edge
    interior, n = ndimage.label(target[0, 0] & ~boundary)
    assert n == 3  # one seed per object


def test_instance_labels_need_two_channels_and_integer_ids():
    with pytest.raises(UnetslError, match='instance labels: "n labels" must be 2'):
        get_labeller("instance")(np.zeros((1, 4, 4), np.uint8), 3)
    with pytest.raises(UnetslError, match="instance labels: label values must be non-negative"):
        get_labeller("instance")(np.full((1, 4, 4), -1, np.int16), 2)
