"""The one output entry: the format follows the name, the file is complete or absent."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from unetsl.errors import UnetslError
from unetsl.io.lazy import open_image
from unetsl.io.outputs import open_output, output_format, split_suffix, with_suffix, write_output


@pytest.mark.parametrize("name, stem, suffix, kind", [
    ("a.tif", "a", ".tif", "tiff"), ("a.TIFF", "a", ".TIFF", "tiff"),
    ("a.ome.tif", "a", ".ome.tif", "tiff"), ("a.ome.zarr", "a", ".ome.zarr", "zarr"),
    ("a.zarr/", "a", ".zarr", "zarr"), ("a.npy", "a", ".npy", "npy"),
    ("a.png", "a.png", "", "tiff"), ("a", "a", "", "tiff")])
def test_the_name_says_the_format(name, stem, suffix, kind):
    assert split_suffix(name) == (stem, suffix)
    assert output_format(name) == kind


@pytest.mark.parametrize("name, sibling", [
    ("out.tif", "out-prob.tif"), ("out.ome.zarr", "out-prob.ome.zarr"),
    ("out.ome.tif", "out-prob.ome.tif"), ("out.npy", "out-prob.npy"), ("out", "out-prob.tif")])
def test_siblings_keep_the_format(tmp_path, name, sibling):
    assert with_suffix(tmp_path / name, "-prob") == tmp_path / sibling


@pytest.mark.parametrize("name", ["x.tif", "x.ome.zarr", "x.npy"])
def test_every_format_reads_back_with_its_scale(tmp_path, name):
    data = np.arange(2 * 3 * 4 * 5 * 6, dtype=np.uint16).reshape(2, 3, 4, 5, 6)
    path = write_output(tmp_path / name, data, spacing=(2.0, 0.5, 0.25), unit="micron")
    image = open_image(path, depth_wanted=4)
    every = (slice(None),) * 3
    back = np.stack([image.data.read(t, *every) for t in range(2)])
    np.testing.assert_array_equal(back, data)
    if not name.endswith(".npy"):  # a .npy array has no pixel size
        np.testing.assert_allclose(image.spacing, (2.0, 0.5, 0.25))


def test_a_block_by_block_tiff_is_an_imagej_hyperstack(tmp_path):
    path = tmp_path / "labels.tif"
    with open_output(path, (3, 1, 4, 6, 8), np.uint16, spacing=(2.0, 1.0, 1.0)) as out:
        for t in range(3):
            out.write(t, (slice(0, 4), slice(0, 3), slice(None)), np.full((1, 4, 3, 8), t + 1))
            out.write(t, (slice(0, 4), slice(3, 6), slice(None)), np.full((1, 4, 3, 8), 7))
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == "TZYX"
        assert tif.imagej_metadata["spacing"] == 2.0
        data = tif.asarray()
    assert (data[:, :, :3] == np.arange(1, 4)[:, None, None, None]).all()
    assert (data[:, :, 3:] == 7).all()


@pytest.mark.parametrize("name", ["x.tif", "x.ome.zarr", "x.npy"])
def test_an_error_leaves_no_output(tmp_path, name):
    target = tmp_path / name
    with pytest.raises(RuntimeError), open_output(target, (1, 1, 1, 4, 4), np.uint8) as out:
        out.write(0, (slice(0, 1), slice(0, 2), slice(0, 4)), np.ones((1, 1, 2, 4)))
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_a_wrong_rank_is_named(tmp_path):
    with pytest.raises(UnetslError, match=r"x\.tif: expected a \(t, c, z, y, x\) array"):
        write_output(tmp_path / "x.tif", np.zeros((4, 4)))


def test_an_ome_tif_name_gets_an_ome_tiff(tmp_path):
    """Issue 28: "X.ome.tif" was a plain ImageJ TIFF; now tifffile reads it as OME, with its
    pixel size, and every reader of unetsl reads the same pixels back."""
    data = np.arange(2 * 1 * 3 * 4 * 5, dtype=np.uint16).reshape(2, 1, 3, 4, 5)
    path = write_output(tmp_path / "x.ome.tif", data, spacing=(2.0, 0.5, 0.25), unit="micron")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and not tif.is_imagej
        xml = tif.ome_metadata
    assert 'PhysicalSizeX="0.25"' in xml and 'PhysicalSizeZUnit="µm"' in xml
    image = open_image(path, depth_wanted=3)
    assert image.spacing == pytest.approx((2.0, 0.5, 0.25))
    back = np.stack([image.data.read(t, *(slice(None),) * 3) for t in range(2)])
    np.testing.assert_array_equal(back, data)
