"""Synthetic epithelium generator: the ground truth is exact and the image is tissue-like."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from unetsl.data import synthetic
from unetsl.errors import UnetslError

REPO = Path(__file__).resolve().parents[2]
TS_SHAPE = (4, 96, 96)
STACK_SHAPE = (12, 64, 64)


@pytest.fixture(scope="module")
def series() -> synthetic.Sample:
    return synthetic.epithelium_time_series(TS_SHAPE, seed=1)


@pytest.fixture(scope="module")
def stack() -> synthetic.Sample:
    return synthetic.epithelium_stack(STACK_SHAPE, seed=2)


@pytest.fixture(scope="module", params=["series", "stack"])
def sample(request) -> synthetic.Sample:
    return request.getfixturevalue(request.param)


def _equal(a: synthetic.Sample, b: synthetic.Sample) -> bool:
    return all(
        np.array_equal(getattr(a, f), getattr(b, f)) for f in ("image", "labels", "distance")
    )


def test_same_seed_same_arrays_different_seed_differs():
    a = synthetic.epithelium_time_series((2, 48, 48), seed=5)
    b = synthetic.epithelium_time_series((2, 48, 48), seed=5)
    c = synthetic.epithelium_time_series((2, 48, 48), seed=6)
    assert _equal(a, b)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.labels, c.labels)
    s1 = synthetic.epithelium_stack((4, 40, 40), seed=5)
    s2 = synthetic.epithelium_stack((4, 40, 40), seed=5)
    s3 = synthetic.epithelium_stack((4, 40, 40), seed=7)
    assert _equal(s1, s2)
    assert not np.array_equal(s1.labels, s3.labels)


def test_shapes_and_dtypes(series, stack):
    for s, shape in ((series, TS_SHAPE), (stack, STACK_SHAPE)):
        assert s.image.shape == s.labels.shape == s.distance.shape == shape
        assert s.image.dtype == np.uint16
        assert s.labels.dtype == np.uint8
        assert s.distance.dtype == np.uint8


def test_default_shapes():
    assert synthetic.epithelium_time_series().image.shape == (5, 128, 128)
    assert synthetic.epithelium_stack().image.shape == (32, 96, 96)


def test_labels_are_membrane_and_vertex_bits_only(sample):
    values = set(np.unique(sample.labels).tolist())
    assert values == {0, synthetic.MEMBRANE, synthetic.VERTEX}


def test_membrane_is_a_thin_skeleton(sample):
    for plane in sample.labels:
        membrane = plane > 0
        kept = skeletonize(membrane).sum() / membrane.sum()
        assert kept >= 0.9
        # Cells are mostly unlabelled interior, not filled.
        assert 0.03 < membrane.mean() < 0.2


def test_cells_are_closed_polygons_of_expected_size(series):
    plane = series.labels[0] > 0
    cells, n = ndi.label(~plane)
    sizes = np.bincount(cells.ravel())[1:]
    big = sizes[sizes > 20]
    # 16 px diameter hexagon-like cells: area ~ 220 px minus the membrane.
    assert 100 < np.median(big) < 300
    assert len(big) > 0.6 * plane.size / 256


def test_image_brighter_on_membranes(sample):
    for image, distance in zip(sample.image, sample.distance, strict=True):
        image = image.astype(np.float64)
        membrane = image[distance == 0]
        interior = image[distance >= 4]
        assert membrane.mean() > interior.mean() + 2 * interior.std()


def test_image_has_noise_and_uneven_illumination(series):
    image = series.image.astype(np.float64)
    # Shot and read noise: neighbouring pixels differ by more than the read noise alone.
    assert np.abs(np.diff(image[0], axis=1)).mean() > 3
    assert image.min() > 50  # camera offset: no clipping at zero
    assert np.unique(series.image).size > 100


def test_vertices_are_at_junctions_of_three_or_more_cells(sample):
    n_vertex_planes = 0
    for plane in sample.labels:
        cells, _ = ndi.label(plane == 0)  # 4-connected non-membrane regions
        padded = np.pad(cells, 3)
        ys, xs = np.nonzero(plane == synthetic.VERTEX)
        n_vertex_planes += bool(len(ys))
        for y, x in zip(ys, xs, strict=True):
            window = padded[y : y + 7, x : x + 7]
            assert np.unique(window[window > 0]).size >= 3, (y, x)
    assert n_vertex_planes == len(sample.labels)


def test_every_junction_pixel_is_a_vertex(sample):
    """A membrane pixel whose 3x3 window touches 3+ cells is a junction: it must be a vertex."""
    n_junctions = 0
    for plane in sample.labels:
        cells, _ = ndi.label(plane == 0)
        padded = np.pad(cells, 1)
        for y, x in zip(*np.nonzero(plane > 0), strict=True):
            window = padded[y : y + 3, x : x + 3]
            if np.unique(window[window > 0]).size >= 3:
                n_junctions += 1
                assert plane[y, x] == synthetic.VERTEX, (y, x)
    assert n_junctions > 10 * len(sample.labels)


def test_time_series_frames_similar_not_identical(series):
    image = series.image.astype(np.float64)
    for a, b in zip(image[:-1], image[1:], strict=True):
        r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert 0.5 < r < 0.99
    for a, b in zip(series.labels[:-1], series.labels[1:], strict=True):
        assert not np.array_equal(a, b)
        # Cells move slowly: most membrane pixels are within 2 px of the previous frame's.
        near = ndi.distance_transform_edt(a == 0)[b > 0] <= 2
        assert near.mean() > 0.8


def test_stack_membranes_are_continuous_surfaces_in_z(stack):
    for a, b in zip(stack.labels[:-1], stack.labels[1:], strict=True):
        near = ndi.distance_transform_edt(a == 0)[b > 0] <= 1.5
        assert near.mean() > 0.9
    assert not np.array_equal(stack.labels[0], stack.labels[-1])


def test_distance_zero_on_membrane_and_growing(sample):
    assert np.all(sample.distance[sample.labels > 0] == 0)
    assert np.all(sample.distance[sample.labels == 0] >= 1)
    for plane, dist in zip(sample.labels, sample.distance, strict=True):
        expected = np.rint(ndi.distance_transform_edt(plane == 0))
        assert np.array_equal(dist, np.clip(expected, 0, 255).astype(np.uint8))
        assert dist.max() >= 4


def test_distance_is_clipped():
    s = synthetic.epithelium_time_series((1, 64, 64), cell_diameter=32, seed=0, max_distance=3)
    assert s.distance.max() == 3


def test_noise_keywords_change_the_image_only():
    quiet = synthetic.epithelium_time_series((1, 48, 48), seed=3, read_noise=0.0)
    loud = synthetic.epithelium_time_series((1, 48, 48), seed=3, read_noise=50.0)
    assert np.array_equal(quiet.labels, loud.labels)
    assert loud.image.astype(float).std() > quiet.image.astype(float).std()


def test_bad_input_raises_one_line_error():
    with pytest.raises(UnetslError, match="unknown synthetic image parameter 'nosie'"):
        synthetic.epithelium_time_series((1, 32, 32), nosie=1.0)
    with pytest.raises(UnetslError, match="shape"):
        synthetic.epithelium_stack((4, 32))
    with pytest.raises(UnetslError, match="kind"):
        synthetic.write_dataset("unused", kind="4d")


def test_pack_cerberus_labels(series):
    packed = synthetic.pack_cerberus_labels(series.labels, series.distance)
    assert packed.dtype == np.uint8
    assert np.array_equal(packed & 3, series.labels)
    assert np.array_equal(packed >> 2, np.minimum(series.distance, 63))


@pytest.mark.parametrize(("kind", "shape", "axes"), [("2d", (3, 40, 48), "TYX"),
                                                      ("3d", (6, 40, 40), "ZYX")])
def test_write_dataset_paired_imagej_files(tmp_path, kind, shape, axes):
    written = synthetic.write_dataset(tmp_path, kind=kind, n_images=2, shape=shape, seed=4)
    assert set(written) == {"images", "labels", "labels-dist"}
    names = {key: [p.name for p in paths] for key, paths in written.items()}
    assert names["images"] == names["labels"] == names["labels-dist"] == ["epi-000.tif",
                                                                          "epi-001.tif"]
    expected = synthetic.make_sample(kind, shape, seed=5)
    for key, dtype in (("images", np.uint16), ("labels", np.uint8), ("labels-dist", np.uint8)):
        assert sorted(p.name for p in (tmp_path / key).iterdir()) == names[key]  # no temp files
        with tifffile.TiffFile(written[key][1]) as tif:
            assert tif.is_imagej
            assert tif.series[0].axes == axes
            data = tif.asarray()
            meta = tif.imagej_metadata
            assert meta["unit"] == "micron"
            if kind == "2d":
                assert meta["frames"] == shape[0] and "slices" not in meta
            else:
                assert meta["slices"] == shape[0] and meta["spacing"] == synthetic.Z_SPACING_UM
            num, den = tif.pages[0].tags["XResolution"].value
            assert num / den == pytest.approx(1 / synthetic.PIXEL_SIZE_UM)
        assert data.dtype == dtype and data.shape == shape
        field = {"images": "image", "labels": "labels", "labels-dist": "distance"}[key]
        assert np.array_equal(data, getattr(expected, field))


def test_write_dataset_without_distance(tmp_path):
    written = synthetic.write_dataset(tmp_path, n_images=1, shape=(2, 32, 32), distance=False)
    assert set(written) == {"images", "labels"}
    assert not (tmp_path / "labels-dist").exists()


def test_example_script_writes_dataset_and_held_out(tmp_path):
    script = REPO / "examples" / "make_example_data.py"
    cmd = [sys.executable, str(script), str(tmp_path), "--n", "2", "--seed", "3",
           "--shape", "2", "32", "32", "--held-out"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "epi-001.tif" in result.stdout and "epi-holdout.tif" in result.stdout
    held = tmp_path / "held-out" / "epi-holdout.tif"
    for path in (held, held.parent / "labels" / held.name, held.parent / "labels-dist" / held.name):
        assert tifffile.imread(path).shape == (2, 32, 32)
    train = {tifffile.imread(p).tobytes() for p in (tmp_path / "images").iterdir()}
    assert tifffile.imread(held).tobytes() not in train
    bad = subprocess.run(cmd[:3] + ["--shape", "1", "4", "4"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
