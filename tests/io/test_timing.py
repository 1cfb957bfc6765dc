"""The frame interval of a movie survives every output, read back as its consumers read it:
Fiji (ImageJ finterval/tunit), OME-TIFF readers (Pixels TimeIncrement) and OME-Zarr viewers
(the scale and unit of the "t" axis)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from unetsl.errors import UnetslError
from unetsl.io import timing
from unetsl.io.lazy import OutputTiff, open_image
from unetsl.io.outputs import open_output, write_output
from unetsl.io.tiff import read_image, write_image, write_like

zarr = pytest.importorskip("zarr")

MOVIE = np.arange(2 * 6 * 5, dtype=np.uint16).reshape(2, 1, 1, 6, 5)  # 2 frames (t, c, z, y, x)


def imagej_meta(path) -> dict:
    """What Fiji reads: the ImageJ description's keys."""
    with tifffile.TiffFile(path) as tif:
        return tif.imagej_metadata


def ome_pixels(path) -> dict:
    """What OME readers (Bio-Formats) read: the first image's Pixels element."""
    with tifffile.TiffFile(path) as tif:
        return tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]


def zarr_t_axis(path) -> tuple[dict, float]:
    """What OME-Zarr viewers read: the "t" axis and its level-0 scale (0.4 and 0.5 layouts)."""
    attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    multiscale = attrs.get("ome", attrs)["multiscales"][0]
    names = [a["name"] for a in multiscale["axes"]]
    scale = multiscale["datasets"][0]["coordinateTransformations"][0]["scale"]
    return multiscale["axes"][names.index("t")], scale[names.index("t")]


def both_readers(path, depth_wanted: int = 1) -> list[float | None]:
    """The interval as the eager and the lazy reader give it (they must agree)."""
    eager = [] if str(path).endswith(".zarr") else [read_image(path).frame_interval]
    return eager + [open_image(path, depth_wanted=depth_wanted).frame_interval]


# ------------------------------------------------------------------------------- units


@pytest.mark.parametrize("value, unit, seconds", [
    (60, "sec", 60.0), (60, "s", 60.0), (2, "seconds", 2.0), (2, "min", 120.0),
    (2, "minute", 120.0), (3, "Minutes", 180.0), (500, "ms", 0.5), (500, "msec", 0.5),
    (250, "millisecond", 0.25), (1, "h", 3600.0), (2, "hours", 7200.0), (1, "µs", 1e-6),
    (2, "fortnight", None), (2, None, None), (0, "sec", None), (-1, "s", None),
    ("x", "s", None), (float("nan"), "s", None)])
def test_common_time_units_become_seconds(value, unit, seconds):
    assert timing.to_seconds(value, unit) == (pytest.approx(seconds) if seconds else None)


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("extra, seconds", [
    ({"finterval": 2, "tunit": "min"}, 120.0),  # Fiji's "2 min"
    ({"finterval": 60}, 60.0),  # ImageJ leaves out tunit when it is "sec"
    ({"finterval": 60, "tunit": "sec"}, 60.0), ({"finterval": 250, "tunit": "ms"}, 0.25),
    ({"finterval": 1.5, "tunit": "hour"}, 5400.0),
    ({"finterval": 2, "tunit": "frames"}, None),  # a unit we do not know: not guessed
    ({"finterval": 0}, None), ({}, None)])
def test_imagej_finterval_is_read_in_seconds(tmp_path, extra, seconds):
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, MOVIE.transpose(0, 2, 1, 3, 4), imagej=True,
                     metadata={"axes": "TZCYX", **extra})
    expected = pytest.approx(seconds) if seconds else None
    assert both_readers(path) == [expected, expected]
    assert open_image(path, depth_wanted=2).frame_interval == expected  # frames as depth too


@pytest.mark.parametrize("extra, seconds", [
    ({"TimeIncrement": 60.0, "TimeIncrementUnit": "s"}, 60.0),
    ({"TimeIncrement": 2.0, "TimeIncrementUnit": "min"}, 120.0),
    ({"TimeIncrement": 60.0}, 60.0),  # OME's default unit is s
    ({}, None)])
def test_ome_time_increment_is_read_in_seconds(tmp_path, extra, seconds):
    path = tmp_path / "movie.ome.tif"
    tifffile.imwrite(path, MOVIE.transpose(0, 2, 1, 3, 4), ome=True, photometric="minisblack",
                     metadata={"axes": "TZCYX", **extra})
    expected = pytest.approx(seconds) if seconds else None
    assert both_readers(path) == [expected, expected]


@pytest.mark.parametrize("unit, scale, seconds", [
    ("second", 60.0, 60.0), ("minute", 2.0, 120.0), ("millisecond", 500.0, 0.5),
    ("hour", 0.5, 1800.0), (None, 60.0, None),  # a t scale without a unit is not time
    ("parsec", 2.0, None)])
def test_ome_zarr_t_scale_is_read_in_seconds(tmp_path, unit, scale, seconds):
    from unetsl.io.omezarr import read_zarr

    path = write_output(tmp_path / "movie.ome.zarr", MOVIE, frame_interval=7.0)
    group = zarr.open_group(str(path), mode="r+")
    multiscales = group.attrs["multiscales"]
    axis = multiscales[0]["axes"][0]
    assert axis["name"] == "t"
    if unit is None:
        axis.pop("unit")
    else:
        axis["unit"] = unit
    multiscales[0]["datasets"][0]["coordinateTransformations"][0]["scale"][0] = scale
    group.attrs["multiscales"] = multiscales
    expected = pytest.approx(seconds) if seconds else None
    assert both_readers(path) == [expected]
    assert read_zarr(path).frame_interval == expected


# ----------------------------------------------------------------------------- writing


def test_write_image_gives_fiji_its_finterval(tmp_path):
    write_image(tmp_path / "a.tif", MOVIE, spacing=(1.0, 0.5, 0.5), unit="µm",
                frame_interval=60.0)
    meta = imagej_meta(tmp_path / "a.tif")
    assert meta["finterval"] == 60.0 and meta["tunit"] == "sec" and meta["frames"] == 2
    write_image(tmp_path / "b.tif", MOVIE)  # unknown: nothing claimed
    assert "finterval" not in imagej_meta(tmp_path / "b.tif")


@pytest.mark.parametrize("ome", [False, True])
def test_output_tiff_writes_the_interval_for_fiji_and_ome_readers(tmp_path, ome):
    path = tmp_path / ("out.ome.tif" if ome else "out.tif")
    with OutputTiff(path, MOVIE.shape, np.uint16, frame_interval=60.0, ome=ome) as out:
        for t in range(2):
            out.write(t, (slice(None),) * 3, MOVIE[t])
    if ome:
        pixels = ome_pixels(path)
        assert pixels["TimeIncrement"] == 60.0 and pixels["TimeIncrementUnit"] == "s"
    else:
        assert imagej_meta(path)["finterval"] == 60.0
    assert both_readers(path) == [60.0, 60.0]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_t_axis_carries_the_interval_in_seconds(tmp_path, version):
    from unetsl.io.omezarr_write import write_ome_zarr

    path = write_ome_zarr(tmp_path / "a.ome.zarr", MOVIE, spacing=(1.0, 0.5, 0.5),
                          unit="µm", version=version, frame_interval=60.0, levels=2)
    axis, scale = zarr_t_axis(path)
    assert axis == {"name": "t", "type": "time", "unit": "second"} and scale == 60.0
    assert both_readers(path) == [60.0]
    plain = write_ome_zarr(tmp_path / "b.ome.zarr", MOVIE, version=version)
    axis, scale = zarr_t_axis(plain)  # unknown: t stays a unit-less index, as before
    assert "unit" not in axis and scale == 1.0
    assert both_readers(plain) == [None]


@pytest.mark.parametrize("name", ["a.tif", "a.ome.tif", "a.ome.zarr"])
def test_round_trip_keeps_the_interval(tmp_path, name):
    """A 2-minute movie read, written through open_output and read again: still 120 s."""
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, MOVIE.transpose(0, 2, 1, 3, 4), imagej=True,
                     metadata={"axes": "TZCYX", "finterval": 2, "tunit": "min"})
    image = open_image(source)
    with open_output(tmp_path / name, image.shape, np.uint16,
                     frame_interval=image.frame_interval) as out:
        for t in range(2):
            out.write(t, (slice(None),) * 3, MOVIE[t])
    assert open_image(tmp_path / name).frame_interval == pytest.approx(120.0)


def test_write_like_puts_the_interval_on_the_frames_of_a_2d_movie(tmp_path):
    """A 2D movie read with its frames as z (a model with depth) is written back as frames,
    and its interval with them."""
    write_image(tmp_path / "in.tif", MOVIE, frame_interval=60.0)
    deep = read_image(tmp_path / "in.tif", depth_wanted=2)
    assert deep.time_as_depth and deep.data.shape[2] == 2 and deep.frame_interval == 60.0
    write_like(tmp_path / "out.tif", deep.data > 10, deep)
    meta = imagej_meta(tmp_path / "out.tif")
    assert meta["frames"] == 2 and "slices" not in meta and meta["finterval"] == 60.0
    lazy = open_image(tmp_path / "in.tif", depth_wanted=2)
    path = write_output(tmp_path / "out.ome.zarr", np.asarray(deep.data), time_as_depth=True,
                        frame_interval=lazy.frame_interval)
    axis, scale = zarr_t_axis(path)
    assert axis["unit"] == "second" and scale == 60.0
    assert open_image(path).shape[0] == 2


@pytest.mark.parametrize("bad", [0, -60.0, float("inf"), "a minute"])
def test_a_bad_interval_is_refused_in_one_line(tmp_path, bad):
    for name in ("a.tif", "a.ome.tif", "a.ome.zarr"):
        with pytest.raises(UnetslError) as err:
            write_output(tmp_path / name, MOVIE, frame_interval=bad)
        assert "frame interval must be a positive number of seconds" in str(err.value)
        assert "\n" not in str(err.value) and not (tmp_path / name).exists()
    with pytest.raises(UnetslError, match="frame interval must be a positive"):
        write_image(tmp_path / "b.tif", MOVIE, frame_interval=bad)
