"""Tests for unetsl.io.tiff: TIFF files written by tifffile with real ImageJ/OME metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from unetsl.errors import UnetslError
from unetsl.io.tiff import Image, match_channels, read_image, write_image, write_like

COMPAT = Path(__file__).parents[2].parent / "shared" / "compat"


def ramp(shape, dtype=np.uint16) -> np.ndarray:
    return np.arange(np.prod(shape)).reshape(shape).astype(dtype)


def imagej_meta(path) -> dict:
    with tifffile.TiffFile(path) as tif:
        return tif.imagej_metadata


# ImageJ hyperstacks ---------------------------------------------------------------------

def test_write_read_round_trip_keeps_axes_spacing_unit(tmp_path):
    data = ramp((2, 3, 4, 5, 6))  # t, c, z, y, x
    path = tmp_path / "sub" / "out.tif"  # parent folder is created
    write_image(path, data, spacing=(2.0, 0.25, 0.5), unit="micron")
    image = read_image(path)
    assert image.data.shape == (2, 3, 4, 5, 6)
    assert image.data.dtype == np.uint16
    np.testing.assert_array_equal(image.data, data)
    assert image.spacing == pytest.approx((2.0, 0.25, 0.5))
    assert image.unit == "micron"
    assert image.path == str(path)
    assert not image.time_as_depth
    meta = imagej_meta(path)
    assert (meta["frames"], meta["slices"], meta["channels"]) == (2, 4, 3)
    assert not list(path.parent.glob(".*"))  # no temporary file left behind


def test_read_fiji_style_tzcyx_file(tmp_path):
    tzcyx = ramp((2, 4, 3, 5, 6))
    path = tmp_path / "fiji.tif"
    tifffile.imwrite(path, tzcyx, imagej=True, resolution=(1 / 0.5, 1 / 0.25),
                     metadata={"axes": "TZCYX", "spacing": 2.0, "unit": "\\u00B5m"})
    image = read_image(path)
    np.testing.assert_array_equal(image.data, tzcyx.transpose(0, 2, 1, 3, 4))
    assert image.spacing == pytest.approx((2.0, 0.25, 0.5))
    assert image.unit == "µm"  # ImageJ's escape decoded


def test_non_ascii_unit_is_escaped_like_imagej(tmp_path):
    path = tmp_path / "mu.tif"
    write_image(path, ramp((3, 4)), unit="µm")
    assert imagej_meta(path)["unit"] == "\\u00B5m"
    assert read_image(path).unit == "µm"  # round trip


def test_time_series_frames_become_z_only_when_depth_wanted(tmp_path):
    tyx = ramp((3, 5, 6))
    path = tmp_path / "series.tif"
    tifffile.imwrite(path, tyx, imagej=True, metadata={"axes": "TYX"})

    flat = read_image(path)
    assert flat.data.shape == (3, 1, 1, 5, 6)
    assert not flat.time_as_depth

    deep = read_image(path, depth_wanted=3)
    assert deep.data.shape == (1, 1, 3, 5, 6)
    assert deep.time_as_depth
    np.testing.assert_array_equal(deep.data[0, 0], tyx)

    out = tmp_path / "pred.tif"
    write_like(out, (deep.data > 10).astype(np.uint8), deep)
    meta = imagej_meta(out)
    assert meta["frames"] == 3
    assert meta.get("slices", 1) == 1
    assert read_image(out).data.shape == (3, 1, 1, 5, 6)


@pytest.mark.parametrize(
    ("axes", "shape", "expected"),
    [
        ("ZYX", (4, 5, 6), (1, 1, 4, 5, 6)),
        ("CYX", (2, 5, 6), (1, 2, 1, 5, 6)),
        ("YX", (5, 6), (1, 1, 1, 5, 6)),
        ("ZCYX", (4, 2, 5, 6), (1, 2, 4, 5, 6)),
    ],
)
def test_imagej_axes(tmp_path, axes, shape, expected):
    data = ramp(shape, np.uint8)
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": axes})
    image = read_image(path, depth_wanted=3)
    assert image.data.shape == expected
    assert image.data.dtype == np.uint8
    assert image.data.sum() == data.sum()
    assert not image.time_as_depth


def test_imagej_channels_are_not_confused_with_z(tmp_path):
    zcyx = ramp((4, 2, 5, 6))
    path = tmp_path / "zc.tif"
    tifffile.imwrite(path, zcyx, imagej=True, metadata={"axes": "ZCYX"})
    np.testing.assert_array_equal(read_image(path).data[0], zcyx.transpose(1, 0, 2, 3))


def test_uncalibrated_imagej_file_has_unit_pixel(tmp_path):
    path = tmp_path / "plain-ij.tif"
    tifffile.imwrite(path, ramp((4, 5, 6)), imagej=True, metadata={"axes": "ZYX"})
    image = read_image(path)
    assert image.spacing == (1.0, 1.0, 1.0)
    assert image.unit == "pixel"


# OME and plain TIFF -----------------------------------------------------------------------

def test_ome_tiff_axes_and_physical_sizes(tmp_path):
    tczyx = ramp((2, 3, 4, 5, 6))
    path = tmp_path / "img.ome.tif"
    tifffile.imwrite(path, tczyx, ome=True, metadata={
        "axes": "TCZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.25, "PhysicalSizeZ": 2.0,
        "PhysicalSizeXUnit": "nm", "PhysicalSizeYUnit": "nm", "PhysicalSizeZUnit": "nm"})
    image = read_image(path)
    np.testing.assert_array_equal(image.data, tczyx)
    assert image.spacing == pytest.approx((2.0, 0.25, 0.5))
    assert image.unit == "nm"


def test_ome_tiff_default_unit_is_micrometre(tmp_path):
    zyx = ramp((4, 5, 6))
    path = tmp_path / "z.ome.tif"
    tifffile.imwrite(path, zyx, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 0.1,
                                                    "PhysicalSizeY": 0.1})
    image = read_image(path)
    assert image.data.shape == (1, 1, 4, 5, 6)
    assert image.spacing == pytest.approx((1.0, 0.1, 0.1))
    assert image.unit == "µm"


def test_plain_multipage_tiff_pages_are_z(tmp_path):
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tif:
        for k in range(4):
            tif.write(np.full((5, 6), k, np.uint8), metadata=None, contiguous=False)
    image = read_image(path)
    assert image.data.shape == (1, 1, 4, 5, 6)
    assert image.data[0, 0, :, 0, 0].tolist() == [0, 1, 2, 3]
    assert (image.spacing, image.unit) == ((1.0, 1.0, 1.0), "pixel")


def test_shaped_tiff_without_axes_folds_unknown_axes_into_z(tmp_path):
    path = tmp_path / "shaped.tif"
    data = ramp((2, 3, 5, 6))
    tifffile.imwrite(path, data, photometric="minisblack")  # tifffile reports 'QQYX'
    image = read_image(path)
    assert image.data.shape == (1, 1, 6, 5, 6)
    np.testing.assert_array_equal(image.data[0, 0], data.reshape(6, 5, 6))


@pytest.mark.parametrize("imagej", [False, True])
def test_rgb_samples_become_channels(tmp_path, imagej):
    rgb = ramp((5, 6, 3), np.uint8)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", imagej=imagej)
    image = read_image(path)
    assert image.data.shape == (1, 3, 1, 5, 6)
    np.testing.assert_array_equal(image.data[0, :, 0], rgb.transpose(2, 0, 1))


@pytest.mark.parametrize("compression", ["lzw", "zlib"])
def test_compressed_tiff_reads(tmp_path, compression):
    data = ramp((3, 5, 6))
    path = tmp_path / f"{compression}.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX"}, compression=compression)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression != 1
    np.testing.assert_array_equal(read_image(path).data[0, 0], data)


def test_unmappable_axis_is_an_error_naming_file_and_axes(tmp_path):
    path = tmp_path / "angles.ome.tif"
    tifffile.imwrite(path, ramp((2, 5, 6)), ome=True, metadata={"axes": "AYX"})
    with pytest.raises(UnetslError, match=r"angles\.ome\.tif.*'AYX'"):
        read_image(path)


# .npy -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("shape", "expected"),
    [((5, 6), (1, 1, 1, 5, 6)), ((4, 5, 6), (1, 1, 4, 5, 6)),
     ((2, 4, 5, 6), (1, 2, 4, 5, 6)), ((3, 2, 4, 5, 6), (3, 2, 4, 5, 6))],
)
def test_npy_dims(tmp_path, shape, expected):
    path = tmp_path / "a.npy"
    np.save(path, ramp(shape, np.float32))
    image = read_image(path)
    assert image.data.shape == expected
    assert image.data.dtype == np.float32


def test_npy_with_wrong_dims_is_an_error(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.zeros(5))
    with pytest.raises(UnetslError, match="a.npy"):
        read_image(path)


# writing dtypes and shapes ----------------------------------------------------------------

@pytest.mark.parametrize(
    ("values", "written"),
    [
        (np.array([[True, False], [False, True]]), np.uint8),
        (np.array([[0, 7], [255, 3]], np.int32), np.uint8),
        (np.array([[0, 7], [60000, 3]], np.int64), np.uint16),
        (np.array([[-5, 7], [70000, 3]], np.int32), np.float32),
        (np.array([[0.5, -1.25], [3.0, 1e-3]], np.float64), np.float32),
        (np.array([[1, 2], [3, 4]], np.uint16), np.uint16),
        (np.array([[-1, 2], [3, 4]], np.int16), np.int16),
    ],
)
def test_write_converts_dtypes_imagej_cannot_hold(tmp_path, values, written):
    path = tmp_path / "d.tif"
    write_image(path, values)
    image = read_image(path)
    assert image.data.dtype == written
    np.testing.assert_allclose(image.data[0, 0, 0], values.astype(np.float64), rtol=1e-6)


def test_write_accepts_2d_to_4d(tmp_path):
    write_image(tmp_path / "zyx.tif", ramp((4, 5, 6)))
    write_image(tmp_path / "czyx.tif", ramp((2, 4, 5, 6)))
    assert read_image(tmp_path / "zyx.tif").data.shape == (1, 1, 4, 5, 6)
    assert read_image(tmp_path / "czyx.tif").data.shape == (1, 2, 4, 5, 6)


def test_narrow_uint8_image_is_not_written_as_rgb(tmp_path):
    data = ramp((1, 1, 2, 5, 3), np.uint8)  # x == 3 must stay x
    write_image(tmp_path / "narrow.tif", data)
    np.testing.assert_array_equal(read_image(tmp_path / "narrow.tif").data, data)


def test_write_rejects_bad_shape_and_spacing(tmp_path):
    with pytest.raises(UnetslError, match="bad.tif"):
        write_image(tmp_path / "bad.tif", np.zeros(4))
    with pytest.raises(UnetslError, match="bad.tif"):
        write_image(tmp_path / "bad.tif", np.zeros((3, 4)), spacing=(1.0, 0.0, 1.0))
    assert not (tmp_path / "bad.tif").exists()


def test_image_defaults():
    image = Image(np.zeros((1, 1, 1, 2, 2)))
    assert (image.spacing, image.unit, image.time_as_depth, image.path) == (
        (1.0, 1.0, 1.0), "pixel", False, None)


# match_channels ---------------------------------------------------------------------------

def test_match_channels_same_count_is_unchanged():
    data = ramp((1, 2, 3, 4, 5))
    assert match_channels(data, 2) is data


def test_match_channels_channels_last():
    yxc = ramp((5, 6, 3))
    loaded = yxc[None, None]  # a (y, x, c) array read as (z, y, x)
    out = match_channels(loaded, 3)
    assert out.shape == (1, 3, 1, 5, 6)
    np.testing.assert_array_equal(out[0, :, 0], yxc.transpose(2, 0, 1))


def test_match_channels_interleaved_planes():
    planes = ramp((1, 1, 6, 4, 5))
    out = match_channels(planes, 2)
    assert out.shape == (1, 2, 3, 4, 5)
    for k in range(6):
        np.testing.assert_array_equal(out[0, k % 2, k // 2], planes[0, 0, k])


def test_match_channels_error_names_source_shape_and_count():
    with pytest.raises(UnetslError, match=r"img\.tif.*\(1, 1, 5, 4, 4\).*expects 3"):
        match_channels(np.zeros((1, 1, 5, 4, 4)), 3, source="img.tif")
    with pytest.raises(UnetslError, match="expects 3"):
        match_channels(np.zeros((1, 2, 6, 4, 4)), 3)


# errors -----------------------------------------------------------------------------------

def test_missing_file_is_an_error_with_the_path(tmp_path):
    path = tmp_path / "nothere.tif"
    with pytest.raises(UnetslError, match="nothere.tif") as info:
        read_image(path)
    assert "\n" not in str(info.value)


def test_text_file_named_tif_is_an_error_with_the_path(tmp_path):
    path = tmp_path / "x.tif"
    path.write_text("not an image\nat all\n")
    with pytest.raises(UnetslError, match=r"x\.tif") as info:
        read_image(path)
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


# reference file of the original -----------------------------------------------------------

def test_original_sample_2d_time_series():
    path = COMPAT / "sample-2d.tif"
    if not path.exists():
        pytest.skip(f"reference file {path} not present")
    image = read_image(path, depth_wanted=3)
    assert image.data.shape == (1, 1, 3, 200, 200)
    assert image.data.dtype == np.uint16
    assert image.time_as_depth


def test_arrays_with_named_axes_and_frames_as_depth():
    from unetsl.io.tiff import frames_as_depth, to_tczyx

    tyx = ramp((3, 5, 6))
    data = to_tczyx(tyx, "tyx")
    assert data.shape == (3, 1, 1, 5, 6)
    assert to_tczyx(np.zeros((5, 6, 3)), "YXC").shape == (1, 3, 1, 5, 6)
    deep, moved = frames_as_depth(data, 3)
    assert moved and deep.shape == (1, 1, 3, 5, 6)
    np.testing.assert_array_equal(deep[0, 0], tyx)
    assert frames_as_depth(data, 1) == (data, False)
    with pytest.raises(UnetslError, match="layer 'a': cannot map axes 'TQX'"):
        to_tczyx(np.zeros((3, 5, 6)), "TQX", source="layer 'a'")
