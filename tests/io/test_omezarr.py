"""zarr / OME-Zarr: lazy (t, c, z, y, x) reads, OME-Zarr writes that other readers (ome-zarr,
which napari's plugin uses) accept with the same axes, chunks and pixel size, and
predict_image with zarr in and out."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from unetsl.errors import UnetslError
from unetsl.io import omezarr as zarr_io
from unetsl.io import omezarr_write

zarr = pytest.importorskip("zarr")

DATA = np.random.default_rng(0).integers(0, 4000, (2, 3, 5, 37, 41)).astype(np.uint16)


def reader_nodes(path: Path) -> list:
    """What napari's OME-Zarr plugin sees: the nodes of ome-zarr's reader."""
    reader = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    return list(reader.Reader(parse_url(str(path)))())


def validate(path: Path):
    """The official models of the NGFF specification accept the metadata."""
    models = pytest.importorskip("ome_zarr_models")
    return models.open_ome_zarr(zarr.open_group(str(path), mode="r"))


# ------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_round_trip_keeps_axes_chunks_pixel_size(tmp_path, version):
    path = omezarr_write.write_ome_zarr(tmp_path / "a.ome.zarr", DATA, chunks=(1, 1, 2, 16, 16),
                                  spacing=(2.0, 0.5, 0.25), unit="µm", version=version)
    validate(path)
    image = zarr_io.open_zarr(path)
    assert image.axes == "tczyx" and image.version == version
    assert image.shape == DATA.shape and image.chunks == (1, 1, 2, 16, 16)
    assert image.spacing == (2.0, 0.5, 0.25) and image.unit == "µm"
    np.testing.assert_array_equal(image.data[:], DATA)
    node = reader_nodes(path)[0]
    assert node.data[0].shape == DATA.shape
    assert [a["name"] for a in node.metadata["axes"]] == list("tczyx")
    assert node.metadata["coordinateTransformations"][0][0]["scale"] == [1, 1, 2.0, 0.5, 0.25]


def test_view_indexes_like_numpy_and_reads_blocks(tmp_path):
    path = omezarr_write.write_ome_zarr(tmp_path / "a.ome.zarr", DATA[:1, :1], axes="zyx",
                                  chunks=(1, 1, 2, 8, 8))
    image = zarr_io.open_zarr(path)
    view, ref = image.data, DATA[:1, :1]
    assert image.axes == "zyx" and view.shape == (1, 1, 5, 37, 41)
    for key in [(0, 0, 3), (slice(None), 0, slice(1, 4), slice(5, 30), slice(0, 41, 1)),
                (0, slice(None), slice(None), 7), (Ellipsis, slice(3, 9)),
                (slice(0, 1), slice(0, 1), 2, slice(10, 20), 4)]:
        np.testing.assert_array_equal(view[key], ref[key])
    np.testing.assert_array_equal(view.read(0, slice(1, 3), slice(4, 9), slice(0, 41)),
                                  ref[0, :, 1:3, 4:9, :])
    np.testing.assert_array_equal(view.to_dask().compute(), ref)
    again = pickle.loads(pickle.dumps(view))  # a Dask worker reopens the store by path
    np.testing.assert_array_equal(again[0, 0, 4], ref[0, 0, 4])


@pytest.mark.parametrize("names, axes", [(None, "czyx"), (["t", "z", "y", "x"], "tzyx"),
                                         (["c", "y", "x"], "cyx")])
def test_plain_arrays_by_rank_or_dimension_names(tmp_path, names, axes):
    data = DATA[0] if names is None else DATA[:, 0] if axes == "tzyx" else DATA[0, :, 0]
    array = zarr.create_array(tmp_path / "plain.zarr", shape=data.shape, dtype=data.dtype,
                              chunks=data.shape, dimension_names=names)
    array[:] = data
    image = zarr_io.open_zarr(tmp_path / "plain.zarr")
    assert image.axes == axes and image.version is None and image.spacing == (1.0, 1.0, 1.0)
    expected = {"czyx": data[None], "tzyx": data[:, None], "cyx": data[None, :, None]}[axes]
    np.testing.assert_array_equal(image.data[:], expected)


def test_xarray_dimension_names_of_zarr_v2(tmp_path):
    array = zarr.create_array(tmp_path / "x.zarr", shape=(4, 6, 7), dtype="f4",
                              chunks=(2, 6, 7), zarr_format=2)
    array.attrs["_ARRAY_DIMENSIONS"] = ["t", "y", "x"]
    assert zarr_io.open_zarr(tmp_path / "x.zarr").axes == "tyx"


def test_time_series_is_read_with_frames_as_depth_and_written_back(tmp_path):
    frames = DATA[:, 0, 0]  # (t, y, x)
    path = omezarr_write.write_ome_zarr(tmp_path / "ts.ome.zarr", frames[:, None, None], axes="tyx",
                                  spacing=(1.0, 0.4, 0.4), unit="micrometer")
    image = zarr_io.open_zarr(path, depth_wanted=3)
    assert image.time_as_depth and image.shape == (1, 1, 2, 37, 41)
    np.testing.assert_array_equal(image.data[0, 0], frames)
    out = omezarr_write.write_ome_zarr(tmp_path / "out.ome.zarr", image.data[:], time_as_depth=True,
                                 axes=omezarr_write.output_axes(image.axes, image.shape, True),
                                 spacing=image.spacing, unit=image.unit)
    back = zarr_io.open_zarr(out)
    assert back.axes == "tyx" and back.shape == (2, 1, 1, 37, 41)
    np.testing.assert_array_equal(back.data[:, 0, 0], frames)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_reads_what_ome_zarr_writes(tmp_path, version):
    """Stores written by ome-zarr itself (an image with a labels group, as napari and
    ome-zarr's tools write them) open with their axes, pixel size, unit and levels."""
    fmt_module = pytest.importorskip("ome_zarr.format")
    writer = pytest.importorskip("ome_zarr.writer")
    fmt = fmt_module.format_from_version(version)
    image, cells = DATA[0], (DATA[0, 0] % 7).astype(np.uint8)  # czyx, zyx
    root = zarr.open_group(tmp_path / "lib.ome.zarr", mode="w", zarr_format=fmt.zarr_format)
    size = {"z": 2.0, "y": 0.5, "x": 0.25}
    writer.write_image(image, root, axes="czyx", fmt=fmt, scale={"c": 1.0, **size},
                       scale_factors=(2,),
                       axes_units={a: "micrometer" for a in "zyx"})
    writer.write_labels(cells, root, name="cells", axes="zyx", fmt=fmt, scale=size,
                        scale_factors=(2,))
    opened = zarr_io.open_zarr(tmp_path / "lib.ome.zarr")
    assert (opened.axes, opened.version, opened.levels) == ("czyx", version, 2)
    assert opened.spacing == (2.0, 0.5, 0.25) and opened.unit == "µm"
    np.testing.assert_array_equal(opened.data[:], image[None])
    half = zarr_io.open_zarr(tmp_path / "lib.ome.zarr", level=1)
    h, w = half.shape[3:]  # ome-zarr's own resize; its scale is the ratio of the shapes
    assert h < 37 and w < 41 and half.spacing == pytest.approx((2.0, 0.5 * 37 / h, 0.25 * 41 / w))
    labels = zarr_io.open_zarr(tmp_path / "lib.ome.zarr" / "labels" / "cells")
    assert labels.axes == "zyx" and labels.spacing == (2.0, 0.5, 0.25)
    np.testing.assert_array_equal(labels.data[0, 0], cells)


def test_old_ngff_versions_are_read_as_0_4(tmp_path):
    """NGFF 0.3 (axes as names, no transforms), which ome-zarr-models do not cover."""
    root = zarr.open_group(tmp_path / "old.zarr", mode="w", zarr_format=2)
    for level, data in enumerate([DATA[0, 0], DATA[0, 0, :, ::2, ::2]]):
        root.create_array(str(level), shape=data.shape, dtype=data.dtype)[:] = data
    root.attrs["multiscales"] = [{"version": "0.3", "axes": ["z", "y", "x"],
                                  "datasets": [{"path": "0"}, {"path": "1"}]}]
    image = zarr_io.open_zarr(tmp_path / "old.zarr", level=1)
    assert (image.axes, image.version, image.levels) == ("zyx", "0.3", 2)
    assert image.spacing == (1.0, 1.0, 1.0) and image.unit == "pixel"
    np.testing.assert_array_equal(image.data[0, 0], DATA[0, 0, :, ::2, ::2])


def test_bioformats2raw_layout_is_followed(tmp_path):
    inner = tmp_path / "b2r.zarr"
    omezarr_write.write_ome_zarr(inner / "0", DATA[:1], spacing=(1.0, 0.2, 0.2), unit="µm")
    root = zarr.open_group(inner, mode="a", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    image = zarr_io.open_zarr(inner)
    assert image.shape == DATA[:1].shape and image.spacing == (1.0, 0.2, 0.2)
    np.testing.assert_array_equal(image.data[0, 2, 1], DATA[0, 2, 1])


@pytest.mark.parametrize("setup, needle", [
    ("missing", "no such zarr folder"),
    ("group", 'without OME-Zarr "multiscales"'),
    ("level", "resolution level 3 does not exist"),
    ("rank", "expected 2 to 5 dims"),
    ("file", "not a zarr array or OME-Zarr image"),
    ("scale", "invalid OME-Zarr 0.4 \"multiscales\" metadata .*Got 3 axes, but the scale"),
    ("axes", "invalid OME-Zarr 0.5 \"multiscales\" metadata .*space axes"),
    ("version", "OME-Zarr version '0.7' is not supported"),
])
def test_bad_stores_are_one_line_errors(tmp_path, setup, needle):
    path = tmp_path / "bad.zarr"
    level = 0
    if setup == "group":
        zarr.open_group(path, mode="w")
    elif setup in ("scale", "version"):  # metadata the NGFF models refuse, or cannot know
        omezarr_write.write_ome_zarr(path, DATA[:1, :1], axes="zyx")
        group = zarr.open_group(path, mode="a")
        multiscales = group.attrs["multiscales"]
        if setup == "scale":
            multiscales[0]["datasets"][0]["coordinateTransformations"][0]["scale"] = [1, 1]
        else:
            multiscales[0]["version"] = "0.7"
        group.attrs["multiscales"] = multiscales
    elif setup == "axes":
        omezarr_write.write_ome_zarr(path, DATA[:1, :1], axes="zyx", version="0.5")
        group = zarr.open_group(path, mode="a")
        ome = group.attrs["ome"]
        ome["multiscales"][0]["axes"][1]["type"] = "time"  # a time axis after z
        group.attrs["ome"] = ome
    elif setup == "level":
        omezarr_write.write_ome_zarr(path, DATA[:1, :1], levels=2)
        level = 3
    elif setup == "rank":
        zarr.create_array(path, shape=(2,) * 6, dtype="u1")
    elif setup == "file":
        path.mkdir()
        (path / "zarr.json").write_text("not json")
    with pytest.raises(UnetslError, match=needle) as err:
        zarr_io.open_zarr(path, level=level)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_is_zarr_path(tmp_path):
    assert zarr_io.is_zarr_path("x.zarr") and zarr_io.is_zarr_path("x.OME.zarr/")
    assert not zarr_io.is_zarr_path(tmp_path / "x.tif")
    zarr.open_group(tmp_path / "folder", mode="w")
    assert zarr_io.is_zarr_path(tmp_path / "folder")


# ------------------------------------------------------------------------------- writing


class CountingArray:
    """A zarr array that records the keys written, to check chunk-aligned writes."""

    def __init__(self, array):
        self.array, self.keys = array, []

    def __setitem__(self, key, value):
        self.keys.append(key)
        self.array[key] = value

    def __getattr__(self, name):
        return getattr(self.array, name)


@pytest.mark.parametrize("rows", [
    [(0, (0, 3)), (0, (3, 4)), (0, (4, 9)), (0, (9, 10))],  # along z, as the predictor does
    [(1, (0, 13)), (1, (13, 40)), (1, (40, 64))],  # along y
])
def test_sink_gathers_rows_so_every_chunk_is_written_once(tmp_path, rows):
    data = np.random.default_rng(3).random((1, 2, 10, 64, 50)).astype(np.float32)
    out = omezarr_write.OutputOmeZarr(tmp_path / "s.ome.zarr", data.shape, np.float32,
                                chunks=(1, 1, 4, 32, 32))
    out.array = CountingArray(out.array)
    for axis, (lo, hi) in rows:
        region = [slice(0, 10), slice(0, 64), slice(0, 50)]
        region[axis] = slice(lo, hi)
        out.write(0, tuple(region), data[(0, slice(None), *region)])
    out.close()
    np.testing.assert_array_equal(zarr_io.open_zarr(out.path).data[:], data)
    for key in out.array.keys:  # whole chunk rows, each written once
        axis = 2 + rows[0][0]
        assert key[axis].start % out.chunks[axis] == 0
    assert len(out.array.keys) == -(-data.shape[2 + rows[0][0]] // out.chunks[2 + rows[0][0]])


def test_scattered_writes_are_merged(tmp_path):
    data = np.random.default_rng(4).random((2, 1, 6, 30, 30)).astype(np.float32)
    out = omezarr_write.OutputOmeZarr(tmp_path / "s.zarr", data.shape, np.float32,
                                chunks=(1, 1, 4, 16, 16))
    for t in (1, 0):
        for zs in [(0, 3), (3, 6)]:
            for ys in [(0, 11), (11, 30)]:
                for xs in [(7, 30), (0, 23)]:
                    region = (slice(*zs), slice(*ys), slice(*xs))
                    out.write(t, region, data[(t, slice(None), *region)])
    out.close()
    np.testing.assert_array_equal(zarr_io.open_zarr(out.path).data[:], data)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_levels_halve_y_and_x(tmp_path, version):
    labels = np.random.default_rng(5).integers(0, 4, (1, 1, 3, 37, 41)).astype(np.uint8)
    path = omezarr_write.write_ome_zarr(tmp_path / "l.ome.zarr", labels, axes="zyx", levels=3,
                                        labels=True, spacing=(2.0, 0.5, 0.5), unit="µm",
                                        version=version)
    assert type(validate(path)).__name__ == "ImageLabel"  # the models see a label image
    one = zarr_io.open_zarr(path, level=1)
    assert one.shape == (1, 1, 3, 19, 21) and one.spacing == (2.0, 1.0, 1.0)
    np.testing.assert_array_equal(one.data[:], labels[..., ::2, ::2])  # nearest: still labels
    assert zarr_io.open_zarr(path, level=2).shape == (1, 1, 3, 10, 11)
    nodes = reader_nodes(path)
    assert any(type(s).__name__ == "Label" for s in nodes[0].specs)  # napari: a Labels layer
    probs = np.random.default_rng(6).random((1, 2, 1, 8, 6)).astype(np.float32)
    p = omezarr_write.write_ome_zarr(tmp_path / "p.ome.zarr", probs, levels=2,
                                    version=version)
    half = zarr_io.open_zarr(p, level=1).data[:]
    np.testing.assert_allclose(half, probs.reshape(1, 2, 1, 4, 2, 3, 2).mean(axis=(4, 6)),
                               rtol=1e-6)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_metadata_says_how_levels_were_made(tmp_path, version):
    """multiscales "type": every other pixel for labels and integer images, the mean for
    floats (what ``_nearest`` decides), so the metadata tells the truth about level 1."""
    ints = (DATA[:1, :1] % 50).astype(np.uint16)
    written = {}
    for name, data, labels in [("lab", ints, True), ("int", ints, False),
                               ("float", ints.astype(np.float32), False)]:
        path = omezarr_write.write_ome_zarr(tmp_path / f"{name}.ome.zarr", data, levels=2,
                                            axes="zyx", labels=labels, version=version)
        attrs = zarr.open_group(path, mode="r").attrs.asdict()
        multiscale = (attrs["ome"] if version == "0.5" else attrs)["multiscales"][0]
        written[name] = (multiscale["type"], "image-label" in attrs.get("ome", attrs))
        half = zarr_io.open_zarr(path, level=1).data[:]
        if multiscale["type"] == "nearest":
            np.testing.assert_array_equal(half, data[..., ::2, ::2])
        else:
            assert not np.array_equal(half, data[..., ::2, ::2])
    assert written == {"lab": ("nearest", True), "int": ("nearest", False),
                       "float": ("mean", False)}


@pytest.mark.parametrize("kwargs, needle", [
    ({"version": "0.3"}, "OME-Zarr version must be one of"),
    ({"levels": 0}, "resolution levels must be an integer >= 1"),
    ({"spacing": (1.0, 0.0, 1.0)}, "pixel size must be 3 positive numbers"),
    ({"axes": "yxz"}, "axes must be y, x and any of t, c, z"),
    ({"axes": "yx"}, "cannot hold size 3 along c"),
])
def test_bad_output_settings_are_one_line(tmp_path, kwargs, needle):
    with pytest.raises(UnetslError, match=needle):
        omezarr_write.OutputOmeZarr(tmp_path / "o.zarr", (1, 3, 1, 8, 8), np.uint8, **kwargs)


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.ome.zarr"
    omezarr_write.write_ome_zarr(target, DATA[:1, :1])
    with pytest.raises(RuntimeError):
        with omezarr_write.atomic_dir(target) as tmp:
            (tmp / "partial").write_text("x")
            raise RuntimeError("crash")
    np.testing.assert_array_equal(zarr_io.open_zarr(target).data[:], DATA[:1, :1])
    omezarr_write.write_ome_zarr(target, DATA[:1, :2])
    assert zarr_io.open_zarr(target).shape[1] == 2
    assert sorted(os.listdir(tmp_path)) == ["out.ome.zarr"]  # no temporary folders left


def test_dask_array_is_stored_chunk_by_chunk(tmp_path):
    da = pytest.importorskip("dask.array")
    lazy = da.from_array(DATA, chunks=(1, 1, 5, 20, 20))
    path = omezarr_write.write_ome_zarr(tmp_path / "d.ome.zarr", lazy, chunks=(1, 1, 2, 16, 16))
    np.testing.assert_array_equal(zarr_io.open_zarr(path).data[:], DATA)


# ------------------------------------------------------------------------- predict_image


@pytest.fixture(scope="module")
def model_and_image(tmp_path_factory) -> Path:
    import keras

    from unetsl.nets.model_files import save_model
    from unetsl.nets.unet import build_unet

    folder = tmp_path_factory.mktemp("zarrpredict")
    keras.utils.set_random_seed(0)
    save_model(build_unet((1, 1, 32, 32), n_labels=2, depth=2, n_filters=2,
                          spatial_dropout_rate=0.0), folder / "m.h5")
    image = np.random.default_rng(7).normal(500, 100, (1, 1, 6, 70, 50)).astype(np.uint16)
    omezarr_write.write_ome_zarr(folder / "img.ome.zarr", image, axes="zyx",
                                 chunks=(1, 1, 2, 32, 32),
                                 spacing=(3.0, 0.25, 0.25), unit="µm")
    return folder


def test_predict_image_writes_ome_zarr_like_its_input(model_and_image, run_script):
    from unetsl.nets.model_files import load_model
    from unetsl.predict.engine import predict
    from unetsl.predict.reduce import reduce

    folder = model_and_image
    result = run_script("predict_image", "m.h5", "img.ome.zarr", "-b", "--probabilities",
                        "--levels", "2", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert "wrote pred-m-img.ome.zarr" in result.stdout  # zarr in, zarr out by default
    labels = zarr_io.open_zarr(folder / "pred-m-img.ome.zarr")
    probs = zarr_io.open_zarr(folder / "pred-m-img-prob.ome.zarr")
    assert labels.axes == "zyx" and probs.axes == "czyx"
    assert labels.chunks == (1, 1, 2, 32, 32) and labels.spacing == (3.0, 0.25, 0.25)
    assert labels.unit == "µm" and labels.levels == 2 and labels.data.dtype == np.uint8
    validate(folder / "pred-m-img.ome.zarr")
    image = zarr_io.open_zarr(folder / "img.ome.zarr").data[:]
    expected = predict(load_model(folder / "m.h5"), image)
    np.testing.assert_allclose(probs.data[:], expected, atol=1e-6)
    np.testing.assert_array_equal(labels.data[:], reduce(expected, "multiclass"))


def test_predict_image_bad_zarr_is_one_line(model_and_image, assert_one_line_error, run_script):
    folder = model_and_image
    zarr.open_group(folder / "empty.zarr", mode="w")
    result = run_script("predict_image", "m.h5", "empty.zarr", "out.ome.zarr", "-b", cwd=folder)
    assert_one_line_error(result, "empty.zarr")


def test_big_writes_go_in_pieces_of_whole_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(omezarr_write, "_PIECE_BYTES", 2000)
    data = np.random.default_rng(8).random((1, 1, 3, 20, 70)).astype(np.float32)
    out = omezarr_write.OutputOmeZarr(tmp_path / "p.zarr", data.shape, np.float32,
                                chunks=(1, 1, 2, 8, 16))
    out.array = CountingArray(out.array)
    out[(slice(0, 1), slice(None), slice(0, 3), slice(0, 20), slice(5, 70))] = data[..., 5:]
    out[(slice(0, 1), slice(None), slice(0, 3), slice(0, 20), slice(0, 5))] = data[..., :5]
    np.testing.assert_array_equal(zarr_io.open_zarr(out.path).data[:], data)
    xs = [k[-1] for k in out.array.keys[:-1]]
    assert len(xs) > 2 and all(s.start % 16 == 0 for s in xs[1:])
