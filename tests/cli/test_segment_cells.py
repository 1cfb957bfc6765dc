"""segment_cells, evaluate_prediction --instances and predict_image --cells, run as a user would."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import roifile
from scipy import ndimage as ndi

from unetsl.data import synthetic
from unetsl.evaluate.instances import drop_small, instance_scores
from unetsl.io.tiff import read_image, write_image

PIXEL = 0.2  # microns, as the synthetic examples; the defaults must not depend on it


def _membrane_map(labels: np.ndarray) -> np.ndarray:
    """A network-like membrane probability from true membrane labels (bit 0): blurred."""
    membrane = (labels & 1).astype(np.float32)
    blurred = ndi.gaussian_filter(membrane, (0, 1.0, 1.0))
    return np.clip(blurred / blurred.max(), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def movie(tmp_path_factory) -> Path:
    """prob.tif (t, c=1, z=1, y, x) of a 4-frame synthetic epithelium, truth.tif its cell ids."""
    folder = tmp_path_factory.mktemp("movie")
    sample = synthetic.epithelium_time_series((4, 64, 64), seed=3)
    write_image(folder / "prob.tif", _membrane_map(sample.labels)[:, None, None],
                spacing=(1.0, PIXEL, PIXEL), unit="micron")
    write_image(folder / "truth.tif", sample.cells[:, None, None],
                spacing=(1.0, PIXEL, PIXEL), unit="micron")
    write_image(folder / "image.tif", sample.image[:, None, None])
    return folder


def test_segment_cells_tracks_measures_and_exports(movie, tmp_path, run_script):
    result = run_script("segment_cells", str(movie / "prob.tif"), "cells.tif", "--table",
                        "cells.csv", "--rois", "rois.zip", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote cells.tif" in result.stdout and "tracks" in result.stdout

    cells = read_image(tmp_path / "cells.tif")
    assert cells.data.shape == (4, 1, 1, 64, 64)
    assert cells.spacing[1:] == pytest.approx((PIXEL, PIXEL))  # Fiji shows the scale
    truth = read_image(movie / "truth.tif").data[:, 0].astype(np.int64)
    scores = instance_scores(truth, cells.data[:, 0].astype(np.int64))
    assert scores["f1"] > 0.8, scores  # a 64 x 64 movie: many slivers of cells at the border
    assert scores["identity_kept"] > 0.95, scores
    whole = instance_scores(drop_small(truth, 40), drop_small(cells.data[:, 0], 40))
    assert whole["f1"] > 0.9, whole

    with open(tmp_path / "cells.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    per_frame = sum(len(np.unique(frame[frame > 0])) for frame in cells.data[:, 0])
    assert len(rows) == per_frame
    ids = {int(r["id"]) for r in rows}
    assert ids == set(np.unique(cells.data[cells.data > 0]).tolist())  # table ids = label ids
    assert all(float(r["area"]) > 0 for r in rows)
    areas = {(int(r["t"]), int(r["id"])): float(r["area"]) for r in rows}
    t0, cell = next(iter(areas))
    expected = np.count_nonzero(cells.data[t0, 0] == cell) * PIXEL**2  # square microns
    assert areas[(t0, cell)] == pytest.approx(expected, rel=1e-6)

    tracks = (tmp_path / "cells-res_track.txt").read_text().split("\n")
    tracks = [line.split() for line in tracks if line]
    assert {int(line[0]) for line in tracks} >= ids  # every cell id is a track (CTC format)
    assert all(0 <= int(b) <= int(e) <= 3 for _, b, e, _ in tracks)

    rois = roifile.roiread(tmp_path / "rois.zip")
    assert len(rois) == per_frame
    assert {int(r.name) for r in rois} == ids


def test_evaluate_prediction_instances(movie, tmp_path, run_script):
    assert run_script("segment_cells", str(movie / "prob.tif"), "cells.tif",
                      cwd=tmp_path).returncode == 0
    result = run_script("evaluate_prediction", "cells.tif", str(movie / "truth.tif"),
                        "--instances", "--min-cell-size", "40", "--json", "s.json",
                        "--overlay", "cells.png",
                        "--image", str(movie / "image.tif"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "F1 per time point" in result.stdout and "identity kept" in result.stdout
    import json

    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["f1"] > 0.9 and len(scores["per_frame_f1"]) == 4
    import matplotlib.image as mpimg

    rgb = mpimg.imread(tmp_path / "cells.png")
    assert rgb.shape[1] > 2 * rgb.shape[0]  # three time points side by side


def test_membrane_truth_gives_the_same_cells_as_ids(movie, tmp_path, run_script):
    """A membrane label mask as truth: the cells it encloses are compared, not its values."""
    sample = synthetic.epithelium_time_series((4, 64, 64), seed=3)
    write_image(tmp_path / "membrane.tif", sample.labels[:, None, None])
    assert run_script("segment_cells", str(movie / "prob.tif"), "cells.tif",
                      cwd=tmp_path).returncode == 0
    result = run_script("evaluate_prediction", "cells.tif", "membrane.tif", "--instances",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "cells enclosed by the true membrane" in result.stdout
    f1 = float(result.stdout.split("F1 ")[1].split()[0])
    # the skeleton leaves cells at the image border open (merged): ids are the better truth
    assert 0.6 < f1 < 1


def test_3d_stack_meshes(tmp_path, run_script):
    sample = synthetic.epithelium_stack((12, 48, 48), seed=2)
    write_image(tmp_path / "prob.tif", _membrane_map(sample.labels)[None, None],
                spacing=(0.5, PIXEL, PIXEL), unit="micron")
    result = run_script("segment_cells", "prob.tif", "--meshes", "meshes", "--table", "c.csv",
                        "--mesh-format", "stl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cells = read_image(tmp_path / "cells-prob.tif").data
    assert cells.shape == (1, 1, 12, 48, 48)
    n_cells = len(np.unique(cells[cells > 0]))
    meshes = sorted((tmp_path / "meshes").glob("*.stl"))
    assert n_cells > 5 and len(meshes) == n_cells
    truth = sample.cells[None].astype(np.int64)
    assert instance_scores(truth, cells[:, 0].astype(np.int64))["f1"] > 0.8


@pytest.mark.parametrize("make, args, needles", [
    ("labels", [], ["prob.tif", "not probabilities"]),
    ("prob", ["--channel", "3"], ["channel 3 does not exist", "1 channel"]),
    ("empty", [], ["prob.tif", "constant"]),
    ("nan", [], ["prob.tif", "NaN"]),
    ("prob", ["-D", "cell min sise=3"], ['"cell min size"']),
    ("prob", ["-D", "cell threshold=2"], ["cell threshold"]),
    ("prob", ["--meshes", "m"], ["meshes: prob.tif is 2D", "write an ROI set"]),
    ("prob", ["out.txt/cells.tif"], ["out.txt", "is a file"]),
    ("none", [], ["prob.tif", "no such file"]),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, make, args, needles, run_script,
                                                  assert_one_line_error):
    prob = np.zeros((2, 1, 1, 16, 16), np.float32)
    prob[..., ::5, :] = prob[..., :, ::5] = 1
    if make == "labels":
        write_image(tmp_path / "prob.tif", (np.arange(2 * 16 * 16) % 50).reshape(prob.shape)
                    .astype(np.uint16))
    elif make == "empty":
        write_image(tmp_path / "prob.tif", np.zeros_like(prob))
    elif make == "nan":
        write_image(tmp_path / "prob.tif", np.where(prob > 0, np.nan, 0).astype(np.float32))
    elif make == "prob":
        write_image(tmp_path / "prob.tif", prob)
    (tmp_path / "out.txt").write_text("a file, not a folder")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_script("segment_cells", "prob.tif", *args, cwd=tmp_path)
    assert_one_line_error(result, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_predict_image_cells(tmp_path, run_script):
    tiny = ["-D", "n filters=2", "-D", "depth=2", "-D", "input shape=[1,1,32,32]",
            "-D", "n labels=2"]
    assert run_script("create_model", "-c", "m.json", "-b", *tiny,
                      cwd=tmp_path).returncode == 0
    sample = synthetic.epithelium_time_series((2, 48, 48), seed=5)
    write_image(tmp_path / "img.tif", sample.image[:, None, None])
    result = run_script("predict_image", "m.h5", "img.tif", "pred.tif", "-b", "--cells",
                        "--table", "cells.csv", "-D", "cell min size=4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # an untrained model's map: what matters is that the cell step ran on its probabilities
    assert (tmp_path / "pred-prob.tif").exists() and (tmp_path / "cells-pred.tif").exists()
    assert (tmp_path / "cells.csv").exists()
    cells = read_image(tmp_path / "cells-pred.tif").data
    assert cells.shape == (2, 1, 1, 48, 48)


def test_ome_zarr_output_is_a_label_image(movie, tmp_path, run_script):
    pytest.importorskip("zarr")
    result = run_script("segment_cells", str(movie / "prob.tif"), "cells.ome.zarr", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    from unetsl.io.omezarr import open_zarr

    cells = open_zarr(tmp_path / "cells.ome.zarr")
    tiff = tmp_path / "cells.tif"
    assert run_script("segment_cells", str(movie / "prob.tif"), str(tiff),
                      cwd=tmp_path).returncode == 0
    np.testing.assert_array_equal(cells.data[:], read_image(tiff).data)
    assert cells.spacing[1:] == pytest.approx((PIXEL, PIXEL))
    metadata = json.dumps(json.loads((tmp_path / "cells.ome.zarr" / "zarr.json").read_text())
                          if (tmp_path / "cells.ome.zarr" / "zarr.json").exists()
                          else json.loads((tmp_path / "cells.ome.zarr" / ".zattrs").read_text()))
    assert "image-label" in metadata  # napari's reader opens it as a Labels layer


def test_npy_output_holds_the_tiffs_labels(movie, tmp_path, run_script):
    """The output name chooses the format for cells as for predict (unetsl.io.outputs)."""
    for name in ("cells.npy", "cells.tif"):
        result = run_script("segment_cells", str(movie / "prob.tif"), name, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    array = np.load(tmp_path / "cells.npy")
    assert array.dtype == np.uint16 and array.ndim == 5  # (t, 1, z, y, x)
    np.testing.assert_array_equal(array, read_image(tmp_path / "cells.tif").data)
    assert len(np.unique(array)) > 2


def test_readme_cell_key_table_is_current():
    from unetsl.cells.settings import cell_key_table_markdown

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert cell_key_table_markdown() in readme, (
        "README's cell key table is out of date; regenerate it with python -c 'from "
        "unetsl.cells.settings import cell_key_table_markdown as k; print(k())'")


def test_foreground_mode_from_the_config_key(tmp_path, run_script):
    """-D 'cell mode="foreground"' is honoured like --from foreground (nuclei: bright disks)."""
    from skimage.draw import disk

    prob = np.zeros((1, 1, 1, 48, 48), np.float32)
    for centre in ((12, 12), (12, 30), (32, 20), (34, 38)):
        prob[(0, 0, 0, *disk(centre, 6, shape=(48, 48)))] = 0.9
    write_image(tmp_path / "prob.tif", prob)
    for args in (["--from", "foreground"], ["-D", 'cell mode="foreground"']):
        result = run_script("segment_cells", "prob.tif", "cells.tif", *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        cells = read_image(tmp_path / "cells.tif").data
        assert len(np.unique(cells[cells > 0])) == 4
