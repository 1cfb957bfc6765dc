"""Lazy images: open_image is read_image by blocks; OutputTiff writes block by block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from unetsl.errors import UnetslError
from unetsl.io.arrays import ArraySource
from unetsl.io.lazy import OutputTiff, open_image
from unetsl.io.tiff import read_image, write_image, write_like

ALL = slice(None)


def _ramp(shape, dtype=np.uint16) -> np.ndarray:
    """Distinct values everywhere, so that any misplaced voxel shows."""
    return (np.arange(int(np.prod(shape))) % 50000).reshape(shape).astype(dtype)


def _full(image) -> np.ndarray:
    """Every time point of a LazyImage read back through ``read``, as (t, c, z, y, x)."""
    return np.stack([image.data.read(t, ALL, ALL, ALL) for t in range(image.shape[0])])


def _assert_same_as_read_image(path: Path, depth_wanted: int = 1):
    lazy = open_image(path, depth_wanted=depth_wanted)
    eager = read_image(path, depth_wanted=depth_wanted)
    assert lazy.shape == eager.data.shape
    assert lazy.spacing == pytest.approx(eager.spacing)
    assert lazy.unit == eager.unit
    assert lazy.time_as_depth == eager.time_as_depth
    full = _full(lazy)
    assert full.dtype == eager.data.dtype
    np.testing.assert_array_equal(full, eager.data)
    return lazy, eager


BLOCKS = [  # (t, zs, ys, xs) of (t, c, z, y, x) = (2, 3, 4, 5, 6) images
    (0, slice(0, 4), slice(0, 5), slice(0, 6)),
    (1, slice(1, 3), slice(2, 5), slice(1, 4)),
    (1, slice(3, 4), slice(4, 5), slice(5, 6)),
    (0, slice(2, None), slice(None, 3), slice(3, None)),
    (1, slice(0, 0), slice(0, 5), slice(0, 6)),  # empty block
]


def _assert_blocks(lazy, data):
    for t, zs, ys, xs in BLOCKS:
        block = lazy.data.read(t, zs, ys, xs)
        np.testing.assert_array_equal(block, data[t, :, zs, ys, xs], err_msg=str((t, zs, ys, xs)))


# ----------------------------------------------------------------------------------- TIFF


def test_imagej_hyperstack_same_as_read_image_with_calibration(tmp_path):
    data = _ramp((2, 3, 4, 5, 6))
    write_image(tmp_path / "a.tif", data, spacing=(2.0, 0.5, 0.25), unit="µm")
    lazy, _ = _assert_same_as_read_image(tmp_path / "a.tif")
    assert lazy.spacing == pytest.approx((2.0, 0.5, 0.25)) and lazy.unit == "µm"
    assert lazy.path == str(tmp_path / "a.tif") and not lazy.time_as_depth
    _assert_blocks(lazy, data)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_other_dtypes_read_lazily(tmp_path, dtype):
    signed = _ramp((2, 3, 4, 5, 6), np.int32) % 241 - 120  # -120..120
    data = {np.uint8: signed + 120, np.int16: signed * 200, np.float32: signed / 3}[dtype]
    data = data.astype(dtype)
    write_image(tmp_path / "d.tif", data)
    lazy, _ = _assert_same_as_read_image(tmp_path / "d.tif")
    _assert_blocks(lazy, data)


def test_compressed_tiff_reads_through_zarr(tmp_path):
    data = _ramp((2, 3, 4, 5, 6))
    tifffile.imwrite(tmp_path / "z.tif", data.transpose(0, 2, 1, 3, 4), imagej=True,
                     compression="zlib", resolution=(2.0, 4.0),
                     metadata={"axes": "TZCYX", "spacing": 3.0, "unit": "um"})
    lazy, _ = _assert_same_as_read_image(tmp_path / "z.tif")
    assert lazy.spacing == pytest.approx((3.0, 0.25, 0.5))
    _assert_blocks(lazy, data)


def test_ome_tiff_calibration(tmp_path):
    data = _ramp((4, 5, 6))
    tifffile.imwrite(tmp_path / "o.ome.tif", data, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.4,
                               "PhysicalSizeZ": 1.5})
    lazy, _ = _assert_same_as_read_image(tmp_path / "o.ome.tif")
    assert lazy.shape == (1, 1, 4, 5, 6)
    assert lazy.spacing == pytest.approx((1.5, 0.4, 0.3))
    _assert_blocks(lazy, data[None, None].repeat(2, axis=0))  # t=1: blocks at t=0 only
    np.testing.assert_array_equal(lazy.data.read(0, slice(1, 3), slice(2, 4), slice(0, 6)),
                                  data[None, 1:3, 2:4, :])


def test_plain_tiff_with_merged_axes_falls_back_to_read_image(tmp_path):
    data = _ramp((2, 3, 4, 5, 6))  # a shaped series with two axes read_image merges
    tifffile.imwrite(tmp_path / "q.tif", data)
    lazy, eager = _assert_same_as_read_image(tmp_path / "q.tif")
    assert isinstance(lazy.data, ArraySource)  # the fallback really ran
    z = eager.data.shape[2]
    np.testing.assert_array_equal(lazy.data.read(0, slice(1, z - 1), slice(1, 4), ALL),
                                  eager.data[0, :, 1:z - 1, 1:4])


def test_big_endian_tiff_reads_the_same_values(tmp_path):
    """ImageJ writes big-endian TIFFs by default; the raw block reader swaps the bytes."""
    data = _ramp((3, 4, 5))
    tifffile.imwrite(tmp_path / "be.tif", data, byteorder=">", imagej=True,
                     metadata={"axes": "ZYX"})
    np.testing.assert_array_equal(read_image(tmp_path / "be.tif").data[0, 0], data)
    lazy = open_image(tmp_path / "be.tif")
    block = lazy.data.read(0, ALL, ALL, ALL)[0]
    np.testing.assert_array_equal(block, data)
    assert block.dtype.isnative


# ------------------------------------------------------------------------------------- npy


@pytest.mark.parametrize("shape", [(5, 6), (4, 5, 6), (3, 4, 5, 6), (2, 3, 4, 5, 6)])
def test_npy_every_rank(tmp_path, shape):
    data = _ramp(shape, np.float32)
    np.save(tmp_path / "a.npy", data)
    lazy, eager = _assert_same_as_read_image(tmp_path / "a.npy")
    assert lazy.spacing == (1.0, 1.0, 1.0) and lazy.unit == "pixel"
    full = eager.data
    t, _, z, y, x = full.shape
    block = lazy.data.read(t - 1, slice(z // 2, z), slice(1, y - 1), slice(2, x))
    np.testing.assert_array_equal(block, full[t - 1, :, z // 2:z, 1:y - 1, 2:x])


# ------------------------------------------------------------------- 2D time series as depth


def test_2d_time_series_becomes_depth_when_the_model_wants_depth(tmp_path):
    frames = _ramp((5, 1, 6, 7))  # (t, z=1, y, x)
    tifffile.imwrite(tmp_path / "ts.tif", frames, imagej=True, metadata={"axes": "TZYX"})
    np.save(tmp_path / "ts.npy", frames[:, None])  # (t, c, z, y, x)
    for name in ("ts.tif", "ts.npy"):
        lazy, _ = _assert_same_as_read_image(tmp_path / name, depth_wanted=3)
        assert lazy.time_as_depth and lazy.shape == (1, 1, 5, 6, 7)
        np.testing.assert_array_equal(lazy.data.read(0, slice(1, 4), slice(2, 5), ALL)[0],
                                      frames[1:4, 0, 2:5])
        flat, _ = _assert_same_as_read_image(tmp_path / name, depth_wanted=1)
        assert not flat.time_as_depth and flat.shape == (5, 1, 1, 6, 7)


def test_real_stacks_and_single_frames_are_never_swapped(tmp_path):
    stack = _ramp((2, 3, 6, 7))  # t=2 with z=3: a 3D time series
    tifffile.imwrite(tmp_path / "st.tif", stack, imagej=True, metadata={"axes": "TZYX"})
    lazy, _ = _assert_same_as_read_image(tmp_path / "st.tif", depth_wanted=3)
    assert not lazy.time_as_depth and lazy.shape == (2, 1, 3, 6, 7)
    single = _ramp((1, 1, 6, 7))
    np.save(tmp_path / "one.npy", single[:, None])
    lazy, _ = _assert_same_as_read_image(tmp_path / "one.npy", depth_wanted=3)
    assert not lazy.time_as_depth and lazy.shape == (1, 1, 1, 6, 7)


# ------------------------------------------------------------------------------ OutputTiff


def test_output_tiff_block_by_block_reads_back_equal_with_scale(tmp_path):
    data = (_ramp((2, 3, 4, 5, 6)) % 251).astype(np.float32) / 7
    path = tmp_path / "out.tif"
    with OutputTiff(path, data.shape, np.float32, spacing=(1.5, 0.5, 0.25), unit="µm") as out:
        for t in range(2):
            # uneven blocks: partial rows (x split) and full rows, in scrambled order
            for zs, ys, xs in [(slice(2, 4), slice(0, 5), slice(0, 6)),
                               (slice(0, 2), slice(3, 5), slice(2, 6)),
                               (slice(0, 2), slice(0, 3), slice(0, 6)),
                               (slice(0, 2), slice(3, 5), slice(0, 2))]:
                out.write(t, (zs, ys, xs), data[t, :, zs, ys, xs])
    back = read_image(path)
    np.testing.assert_array_equal(back.data, data)
    assert back.spacing == pytest.approx((1.5, 0.5, 0.25)) and back.unit == "µm"
    again = open_image(path)
    np.testing.assert_array_equal(_full(again), data)


def test_output_tiff_is_the_file_write_like_writes(tmp_path):
    frames = _ramp((4, 1, 6, 7), np.uint8)  # a 2D time series
    tifffile.imwrite(tmp_path / "ts.tif", frames, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "TZYX", "unit": "um"})
    like = read_image(tmp_path / "ts.tif", depth_wanted=3)
    assert like.time_as_depth and like.data.shape == (1, 1, 4, 6, 7)
    labels = (like.data % 3).astype(np.uint8)
    write_like(tmp_path / "eager.tif", labels, like)
    with OutputTiff(tmp_path / "lazy.tif", labels.shape, np.uint8, spacing=like.spacing,
                    unit=like.unit, time_as_depth=True) as out:
        for z in range(4):  # frame by frame, as z planes of the internal layout
            out.write(0, (slice(z, z + 1), ALL, ALL), labels[0, :, z:z + 1])
    eager, lazy = (tifffile.TiffFile(tmp_path / n) for n in ("eager.tif", "lazy.tif"))
    with eager, lazy:
        assert lazy.series[0].shape == eager.series[0].shape
        assert lazy.series[0].axes == eager.series[0].axes
        np.testing.assert_array_equal(lazy.asarray(), eager.asarray())
        assert lazy.imagej_metadata["frames"] == 4
    back = read_image(tmp_path / "lazy.tif", depth_wanted=3)
    np.testing.assert_array_equal(back.data, labels)
    assert back.spacing == pytest.approx(like.spacing)


def test_output_tiff_converts_blocks_and_leaves_unwritten_voxels_zero(tmp_path):
    with OutputTiff(tmp_path / "o.tif", (1, 1, 2, 3, 4), np.uint16) as out:
        out.write(0, (slice(1, 2), slice(1, 3), slice(1, 3)),
                  np.full((1, 1, 2, 2), 7.0, np.float64))
    back = read_image(tmp_path / "o.tif").data
    assert back.dtype == np.uint16
    expected = np.zeros((1, 1, 2, 3, 4), np.uint16)
    expected[0, 0, 1, 1:3, 1:3] = 7
    np.testing.assert_array_equal(back, expected)


def test_output_tiff_refuses_bad_dtype_and_pixel_size(tmp_path):
    with pytest.raises(UnetslError, match="dtype int64") as err:
        OutputTiff(tmp_path / "i.tif", (1, 1, 1, 2, 2), np.int64)
    assert "\n" not in str(err.value) and "i.tif" in str(err.value)
    with pytest.raises(UnetslError, match="pixel size must be positive") as err:
        OutputTiff(tmp_path / "s.tif", (1, 1, 1, 2, 2), np.uint8, spacing=(1.0, 0.0, 1.0))
    assert "\n" not in str(err.value) and "s.tif" in str(err.value)


# ------------------------------------------------------------------------------ bad files


def _one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> None:
    text = str(exc.value)
    assert "\n" not in text, text
    assert str(path) in text, text


def test_bad_files_give_one_line_errors(tmp_path):
    missing = tmp_path / "missing.tif"
    with pytest.raises(UnetslError, match="no such file") as err:
        open_image(missing)
    _one_line_naming(err, missing)

    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"this is not\na TIFF file at all\n" * 10)
    with pytest.raises(UnetslError) as err:
        open_image(garbage)
    _one_line_naming(err, garbage)

    bad_npy = tmp_path / "bad.npy"
    bad_npy.write_bytes(b"\x93NUMPY but\nbroken")
    with pytest.raises(UnetslError, match="cannot read .npy") as err:
        open_image(bad_npy)
    _one_line_naming(err, bad_npy)

    six = tmp_path / "six.npy"
    np.save(six, np.zeros((1, 1, 1, 1, 2, 2), np.uint8))
    with pytest.raises(UnetslError, match="expected 2 to 5 dims") as err:
        open_image(six)
    _one_line_naming(err, six)


def test_truncated_tiff_fails_on_read_in_one_line(tmp_path):
    path = tmp_path / "cut.tif"
    write_image(path, _ramp((1, 1, 4, 32, 32)))
    raw = path.read_bytes()
    lazy = open_image(path)  # tifffile reads the header; the pixels go missing later
    data_at = lazy.data.array.offset
    path.write_bytes(raw[: data_at + 4 * 32 * 2 * 10])  # only the first rows of the data
    with pytest.raises(UnetslError, match="truncated") as err:
        lazy.data.read(0, slice(3, 4), ALL, ALL)
    _one_line_naming(err, path)
