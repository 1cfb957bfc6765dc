import csv

import numpy as np
import pytest
import roifile
import tifffile
import trimesh
from matplotlib.path import Path as Polygon
from skimage.draw import disk

from unetsl.cells import Track, measure, write_csv, write_labels_tiff, write_meshes, write_roi_zip
from unetsl.errors import UnetslError


def _ball(radius_phys, spacing, shape=(24, 40, 40)):
    grid = np.indices(shape).astype(float)
    centre = [(n - 1) / 2 for n in shape]
    r2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing))
    return (r2 <= radius_phys**2).astype(np.int32)


def test_disk_area_and_perimeter_in_physical_units(tmp_path):
    labels = np.zeros((1, 1, 80, 80), np.int32)
    labels[0, 0][disk((40, 40), 25)] = 3
    labels[0, 0][disk((10, 10), 6)] = 4
    table = measure(labels, spacing=(1, 0.5, 0.5), tracks=[Track(3, 0, 0, 1)])
    row = list(table["id"]).index(3)
    r = 25 * 0.5
    assert table["area"][row] == pytest.approx(np.pi * r**2, rel=0.03)
    assert table["perimeter"][row] == pytest.approx(2 * np.pi * r, rel=0.05)
    assert table["equivalent_diameter"][row] == pytest.approx(2 * r, rel=0.03)
    assert table["elongation"][row] == pytest.approx(1, abs=0.05)
    assert table["centroid_y"][row] == pytest.approx(20, abs=0.1)
    assert table["parent"][row] == 1 and table["neighbours"][row] == 0
    path = write_csv(table, tmp_path / "cells.csv")
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 2 and rows[0]["id"] == "3"
    assert [p.name for p in tmp_path.iterdir()] == ["cells.csv"]  # no temp files left


def test_ball_volume_and_border_membrane():
    spacing = (2.0, 0.5, 0.5)
    labels = _ball(7.0, spacing)[None]
    labels[0][labels[0] == 0] = 2  # a second cell around it: neighbours
    membrane = np.zeros(labels.shape, np.float32)
    table = measure(labels, spacing=spacing, membrane=membrane)
    row = list(table["id"]).index(1)
    assert table["volume"][row] == pytest.approx(4 / 3 * np.pi * 7**3, rel=0.04)
    assert table["surface_area"][row] == pytest.approx(4 * np.pi * 7**2, rel=0.06)
    assert table["neighbours"][row] == 1 and table["border_membrane"][row] == 0


def test_roi_zip_reads_back(tmp_path):
    labels = np.zeros((2, 1, 50, 60), np.int32)
    labels[0, 0][disk((20, 20), 8)] = 5
    labels[0, 0][disk((30, 45), 6)] = 9
    labels[1, 0][disk((21, 22), 8)] = 5
    path = write_roi_zip(tmp_path / "cells.zip", labels)
    rois = roifile.roiread(path)
    assert len(rois) == 3
    assert sorted(r.name for r in rois) == ["5", "5", "9"]
    for roi in rois:
        t = roi.t_position - 1
        mask = labels[t, 0] == int(roi.name)
        points = roi.coordinates()  # (x, y), ImageJ pixel corners
        centre = points.mean(axis=0)
        assert mask[int(centre[1]), int(centre[0])]
        inside = Polygon(points).contains_points(np.argwhere(mask)[:, ::-1] + 0.5)
        assert inside.mean() > 0.95
    with pytest.raises(UnetslError, match="2D"):
        write_roi_zip(tmp_path / "x.zip", np.ones((1, 3, 5, 5), np.int32))


def test_labels_tiff_has_scale(tmp_path):
    labels = np.zeros((2, 3, 10, 12), np.int32)
    labels[:, 1, 2:5, 2:5] = 7
    path = write_labels_tiff(tmp_path / "labels.tif", labels, spacing=(2.0, 0.25, 0.5))
    with tifffile.TiffFile(path) as tif:
        data = tif.asarray()
        assert tif.imagej_metadata["spacing"] == 2.0
        assert tif.imagej_metadata["unit"] == "micron"
        x_res = tif.pages[0].tags["XResolution"].value
        assert x_res[0] / x_res[1] == pytest.approx(2.0)
        assert tif.series[0].axes == "TZYX"
    assert data.dtype == np.uint16 and (data == labels).all()
    big = labels.copy()
    big[big == 7] = 70000
    write_labels_tiff(tmp_path / "big.tif", big)
    assert (tifffile.imread(tmp_path / "big.tif") == big).all()


def test_mesh_volume_close_to_voxel_volume(tmp_path):
    spacing = (3.0, 1.0, 1.0)
    labels = _ball(9.0, spacing, shape=(10, 26, 26))[None]
    paths = write_meshes(tmp_path / "meshes", labels, spacing, fmt="ply")
    assert [p.name for p in paths] == ["cell-00001-t000.ply"]
    mesh = trimesh.load(paths[0])
    voxels = labels.sum() * np.prod(spacing)
    assert mesh.volume == pytest.approx(voxels, rel=0.1)
    assert write_meshes(tmp_path / "m", labels, spacing, fmt="stl")[0].suffix == ".stl"
    with pytest.raises(UnetslError, match="one z plane"):
        write_meshes(tmp_path / "m", labels[:, :1], spacing)


def test_a_mesh_is_read_back_in_x_y_z_micrometres(tmp_path):
    """An asymmetric box, 2 z x 4 y x 6 x voxels at (z, y, x) = (1, 2, 3), spacing (3, 1,
    0.5) um: trimesh reads it 3 um long in x, 4 in y, 6 in z, where the image has it (issue
    28: x and z were swapped, so viewers showed every cell mirrored across the diagonal)."""
    spacing = (3.0, 1.0, 0.5)
    labels = np.zeros((1, 5, 8, 12), np.uint16)
    labels[0, 1:3, 2:6, 3:9] = 1
    (path,) = write_meshes(tmp_path / "meshes", labels, spacing, fmt="ply")
    mesh = trimesh.load(path)
    np.testing.assert_allclose(mesh.extents, (3.0, 4.0, 6.0), atol=1e-6)
    np.testing.assert_allclose(mesh.bounds[0], (2.5 * 0.5, 1.5 * 1.0, 0.5 * 3.0), atol=1e-6)
    assert mesh.is_watertight and mesh.volume == pytest.approx(2 * 4 * 6 * 1.5, rel=0.15)


def test_every_cells_file_gets_the_umask_permissions(tmp_path):
    """Colleagues on a shared disk read the table as they read the models (issue 25: the
    CSV and ROI zip were 0600 while models were 0644)."""
    import os

    from unetsl.cells.tracking import write_ctc_tracks

    labels = np.zeros((1, 1, 20, 20), np.int32)
    labels[0, 0, 4:9, 4:9] = 1
    old = os.umask(0o022)
    try:
        written = [write_csv({"id": np.array([1])}, tmp_path / "cells.csv"),
                   write_roi_zip(tmp_path / "cells.zip", labels),
                   write_labels_tiff(tmp_path / "cells.tif", labels),
                   write_ctc_tracks([Track(1, 0, 0, 0)], tmp_path / "res_track.txt")]
        os.umask(0o027)
        written.append(write_csv({"id": np.array([1])}, tmp_path / "group.csv"))
    finally:
        os.umask(old)
    modes = [oct(os.stat(p).st_mode & 0o777) for p in written]
    assert modes == ["0o644"] * 4 + ["0o640"], modes
