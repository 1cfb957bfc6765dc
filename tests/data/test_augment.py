"""Every augmentation moves image, label and weights together; labels are never interpolated."""

from __future__ import annotations

import numpy as np
import pytest

from unetsl.data.augment import (
    AugmentSettings,
    Transform,
    apply_intensity,
    displacement_field,
    draw_transform,
    extract_patch,
)


def letter_f(size=48):
    """An asymmetric pattern (an 'F' of thick bars, values 1 and 3) in a (1, size, size) label."""
    label = np.zeros((1, size, size), dtype=np.uint8)
    label[0, 8:40, 10:16] = 1  # stem
    label[0, 8:14, 10:36] = 3  # top bar
    label[0, 22:27, 10:28] = 1  # middle bar
    return label


def image_of(label):
    """An image whose intensity is the label (x 100), so alignment can be checked exactly."""
    return (label.astype(np.float32) * 100)[np.newaxis]


def test_identity_is_a_plain_crop():
    label = letter_f()
    image = image_of(label)
    x, lab, w = extract_patch(image, label, None, (0, 4, 6), (1, 32, 32))
    np.testing.assert_array_equal(lab, label[:, 4:36, 6:38])
    np.testing.assert_array_equal(x, image[:, :, 4:36, 6:38])
    assert x.dtype == np.float32 and w is None


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rotation_by_multiples_of_90_degrees_is_exact(k):
    label = letter_f()
    image = image_of(label)
    weights = np.random.default_rng(0).random(label.shape).astype(np.float32)
    x, lab, w = extract_patch(image, label, weights, (0, 0, 0), (1, 48, 48),
                              transform=Transform(angle=90.0 * k))
    np.testing.assert_array_equal(lab, np.rot90(label, k, axes=(1, 2)))
    np.testing.assert_allclose(x, np.rot90(image, k, axes=(2, 3)), atol=1e-3)
    np.testing.assert_allclose(w, np.rot90(weights, k, axes=(1, 2)), atol=1e-5)


@pytest.mark.parametrize("angle", [30.0, 45.0, -17.0, 200.0])
def test_arbitrary_rotation_keeps_label_values_and_alignment(angle):
    label = letter_f(64)
    image = image_of(label)
    x, lab, _ = extract_patch(image, label, None, (0, 8, 8), (1, 48, 48),
                              transform=Transform(angle=angle))
    assert set(np.unique(lab)) <= {0, 1, 3}  # nearest neighbour: no new values
    assert (lab != 0).sum() > 100  # the pattern is still there
    # interpolated image and nearest label agree except on the pattern's outline
    agree = np.isclose(x[0], lab * 100.0, atol=1.0)
    assert agree.mean() > 0.93
    # and the rotation is the same as turning the label with scipy (nearest)
    from scipy import ndimage
    turned = ndimage.rotate(label[0, 8:56, 8:56], angle, reshape=False, order=0, mode="mirror")
    assert np.mean(turned == lab[0]) > 0.9


def test_flips_and_quarter_turns_are_exact():
    label = letter_f()
    image = image_of(label)
    weights = label.astype(np.float32) + 0.5
    cases = [(True, False, 0), (False, True, 0), (True, True, 1), (False, False, 3)]
    for flip_y, flip_x, k in cases:
        t = Transform(flip_y=flip_y, flip_x=flip_x, k90=k)
        x, lab, w = extract_patch(image, label, weights, (0, 0, 0), (1, 48, 48), transform=t)
        expected = label
        if flip_y:
            expected = expected[:, ::-1]
        if flip_x:
            expected = expected[:, :, ::-1]
        expected = np.rot90(expected, k, axes=(1, 2))
        np.testing.assert_array_equal(lab, expected)
        np.testing.assert_array_equal(x[0], expected * 100.0)
        np.testing.assert_array_equal(w, expected + 0.5)


def test_elastic_deformation_moves_label_with_image():
    label = letter_f(64)
    image = image_of(label)
    rng = np.random.default_rng(3)
    field = displacement_field(rng, (48, 48), 4.0)
    assert field.shape == (2, 48, 48) and 2.0 < np.abs(field).max() < 6.0
    x, lab, _ = extract_patch(image, label, None, (0, 8, 8), (1, 48, 48),
                              transform=Transform(displacement=field))
    assert set(np.unique(lab)) <= {0, 1, 3}
    assert not np.array_equal(lab, label[:, 8:56, 8:56])  # it did move
    assert np.isclose(x[0], lab * 100.0, atol=1.0).mean() > 0.93


def test_3d_patches_move_every_slice_alike():
    rng = np.random.default_rng(1)
    label = np.repeat(letter_f(40), 4, axis=0)
    image = np.stack([image_of(label)[0], image_of(label)[0] + 7])  # 2 channels
    field = displacement_field(rng, (32, 32), 2.0)
    x, lab, _ = extract_patch(image, label, None, (1, 4, 4), (2, 32, 32),
                              transform=Transform(angle=90.0, displacement=field, flip_x=True))
    assert x.shape == (2, 2, 32, 32) and lab.shape == (2, 32, 32)
    np.testing.assert_array_equal(lab[0], lab[1])
    np.testing.assert_allclose(x[1] - x[0], 7.0, atol=1e-3)


def test_warps_never_read_outside_the_region():
    label = np.zeros((1, 64, 64), dtype=np.uint8)
    image = np.full((1, 1, 64, 64), 1000.0, dtype=np.float32)
    image[..., 16:48, 16:48] = 0.0  # the region holds zeros, everything else 1000
    label[:, 16:48, 16:48] = 1
    bounds = ((0, 16, 16), (1, 48, 48))
    field = displacement_field(np.random.default_rng(0), (32, 32), 6.0)
    for t in (Transform(angle=37.0), Transform(displacement=field)):
        x, lab, _ = extract_patch(image, label, None, (0, 16, 16), (1, 32, 32), bounds, t)
        assert (x == 0).all() and (lab == 1).all()


def test_intensity_scale_and_shift():
    x = np.stack([np.linspace(0, 10, 64, dtype=np.float32).reshape(1, 8, 8)] * 2)
    std = x[0].std()
    out = apply_intensity(x.copy(), Transform(scale=2.0, shift=0.5))
    np.testing.assert_allclose(out, x * 2.0 + 0.5 * std, rtol=1e-5)
    assert apply_intensity(x, Transform()) is x


def test_draw_transform_is_seeded_and_off_by_default():
    off = AugmentSettings()
    assert not off.active
    t = draw_transform(np.random.default_rng(0), off, (32, 32))
    assert not t.warps and t.k90 == 0 and t.scale == 1.0 and not (t.flip_x or t.flip_y)
    on = AugmentSettings(flips=True, rotate90=True, intensity_scale=0.2, intensity_shift=0.1,
                         elastic=3.0)
    a = draw_transform(np.random.default_rng(5), on, (32, 32), angle=10.0)
    b = draw_transform(np.random.default_rng(5), on, (32, 32), angle=10.0)
    assert (a.flip_y, a.flip_x, a.k90, a.scale, a.shift) == (b.flip_y, b.flip_x, b.k90, b.scale,
                                                             b.shift)
    np.testing.assert_array_equal(a.displacement, b.displacement)
    assert a.angle == 10.0 and 0.8 <= a.scale <= 1.2 and -0.1 <= a.shift <= 0.1
    ks = {draw_transform(np.random.default_rng(s), on, (16, 32)).k90 for s in range(40)}
    assert ks == {0, 2}  # non-square patches only turn by 180 degrees
