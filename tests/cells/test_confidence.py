"""Per-cell confidence (issue 30): cells a weak or missing membrane closes score lowest, the
column is the same in memory and block by block, and segment_cells --confidence writes it.

Numbers pinned here were measured on an AMD EPYC (2 cores); the maps are drawn, so they only
move if the segmentation or the score changes."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk
from skimage.segmentation import find_boundaries

from unetsl.cells import CellSettings, measure
from unetsl.cells.files import segment_array, segment_file
from unetsl.data import synthetic
from unetsl.errors import UnetslError
from unetsl.io.lazy import open_image
from unetsl.io.tiff import write_image

SPACING = (2.0, 1.0, 1.0)


def _faint_between(cells: np.ndarray, a: int, b: int, level: float) -> np.ndarray:
    """The drawings' membrane map with the membrane shared by cells a and b drawn at
    ``level`` (1 = as strong as the others, 0 = none): the rest of both outlines stays."""
    outer = find_boundaries(np.where(cells == b, a, cells), mode="thick")
    between = find_boundaries(cells, mode="thick") & ~outer
    membrane = outer + level * between
    prob = np.clip(ndi.gaussian_filter(membrane, 0.7) * 1.6, 0, 1) * 0.95 + 0.02
    return prob.astype(np.float32)


def _scores(prob: np.ndarray, cells: np.ndarray, a: int, b: int
            ) -> tuple[list[float], np.ndarray, bool]:
    """Confidence of the cell(s) that hold true cells a and b, of all others, and whether
    a and b were merged."""
    result = segment_array(prob[None, None], confidence=True)
    labels = result.labels[0, 0]
    ids = {int(np.bincount(labels[cells == c]).argmax()) for c in (a, b)}
    table = result.table
    mine = np.isin(table["id"], sorted(ids))
    return sorted(table["confidence"][mine].tolist()), table["confidence"][~mine], len(ids) == 1


@pytest.mark.parametrize("level, merged, expected", [
    (1.0, False, [0.95, 0.95]),   # a membrane like all others
    (0.5, False, [0.836, 0.841]),  # weak: still two cells, part of their border unsupported
    (0.3, True, [0.596]),         # faint: merged, the faint membrane runs through the cell
])
def test_cells_closed_by_a_weak_membrane_score_lowest(drawings, level, merged, expected):
    cells = drawings.voronoi((96, 96), 16, seed=1)
    a, b = drawings.neighbours_with_longest_border(cells)
    affected, others, joined = _scores(_faint_between(cells, a, b, level), cells, a, b)
    assert joined == merged and len(others) >= 30
    assert affected == pytest.approx(expected, abs=0.02)
    assert others.min() == pytest.approx(0.947, abs=0.01)  # support 1, contrast 0.97 - 0.02
    if level < 1:
        assert max(affected) < others.min() - 0.1


def test_a_hole_in_a_membrane_marks_both_cells_it_opens(drawings):
    """A hole of radius 2.5 px: the seeds still split the two cells, whose borders now cross
    a gap; they are the two least confident cells."""
    cells = drawings.voronoi((96, 96), 16, seed=1)
    a, b = drawings.neighbours_with_longest_border(cells)
    prob = drawings.membrane_probability(cells, gap_between=(a, b))
    affected, others, joined = _scores(prob, cells, a, b)
    assert not joined
    assert affected == pytest.approx([0.843, 0.868], abs=0.02)
    assert others.min() == pytest.approx(0.947, abs=0.01)
    assert max(affected) < others.min() - 0.05


def test_foreground_confidence_is_the_margin_from_one_half():
    """Two blobs, one at p 0.95 and one at 0.6 (edges blurred like a network's)."""
    sure = np.zeros((64, 96), np.float32)
    sure[disk((32, 24), 12)] = 0.95
    sure[disk((32, 72), 12)] = 0.6
    prob = np.clip(ndi.gaussian_filter(sure, 1.0), 0, 1)[None, None]
    table = segment_array(prob, mode="foreground", tracking=False, confidence=True).table
    assert len(table["id"]) == 2 and "border_membrane" not in table
    by_x = dict(zip(np.round(table["centroid_x"]), table["confidence"]))
    # |2p - 1| is 0.9 and 0.2 inside; the blurred rim (p 0.5..0.95) lowers the sure one
    assert by_x[24] == pytest.approx(0.777, abs=0.02)
    assert by_x[72] == pytest.approx(0.179, abs=0.02)


def test_a_boundary_map_adds_how_well_it_encloses_the_objects():
    """Two touching squares and their boundary (an "instance labels" model): a faint
    boundary between them lowers both, not the blob beside them."""
    from unetsl.data.labellers import instance_labels

    truth = np.zeros((1, 1, 40, 60), np.int32)
    truth[0, 0, 10:30, 10:30], truth[0, 0, 10:30, 30:50] = 1, 2
    truth[0, 0, 8:30, 52:58] = 3
    target = instance_labels(truth[0], 2).astype(np.float32)
    foreground, boundary = (0.1 + 0.8 * target[0])[None], (0.05 + 0.9 * target[1])[None]
    clear = measure(truth, foreground=foreground, boundary=boundary, confidence=True)
    faint = boundary.copy()
    faint[..., 10:30, 29:31] = 0.3
    weak = measure(truth, foreground=foreground, boundary=faint, confidence=True)
    # margin 0.8 (p 0.9 inside) x (support 1, contrast 0.95 - 0.05)
    assert clear["confidence"] == pytest.approx([0.72, 0.72, 0.72], abs=0.01)
    # the squares' borders on the faint side (20 of 76 px) are unsupported and weaker
    assert weak["confidence"] == pytest.approx([0.455, 0.455, 0.72], abs=0.02)
    assert list(clear) == list(weak) and list(clear)[-3:] == ["confidence", "parent", "track"]


def test_confidence_needs_the_map_the_cells_came_from():
    labels = np.ones((1, 1, 8, 8), np.int32)
    with pytest.raises(UnetslError, match="confidence needs the probability map"):
        measure(labels, confidence=True)
    with pytest.raises(UnetslError, match="boundary map goes with a foreground map"):
        measure(labels, boundary=np.zeros(labels.shape), confidence=True)


def _stack(mode: str) -> np.ndarray:
    """(t, c, z, y, x): a synthetic 3D epithelium's membrane map (membrane mode), or cells as
    objects with their outline as boundary channel (foreground mode)."""
    sample = synthetic.epithelium_stack(shape=(16, 96, 96), seed=2)
    blurred = ndi.gaussian_filter((sample.labels & 1).astype(np.float32), (0.5, 1, 1))
    membrane = blurred / blurred.max()
    channels = [membrane] if mode == "membrane" else [1 - membrane, membrane]
    return np.stack(channels)[None]


@pytest.mark.parametrize("mode", ["membrane", "foreground"])
def test_block_runs_give_the_in_memory_confidence(tmp_path, mode):
    """The column of a block-by-block run (cells read back block by block with their maps)
    equals measure() of the labels it wrote, over the whole frame in memory."""
    stack = _stack(mode)
    write_image(tmp_path / "prob.tif", stack, spacing=SPACING, unit="µm")
    settings = CellSettings(mode=mode, block_voxels=60_000, block_halo=12)
    result = segment_file(tmp_path / "prob.tif", tmp_path / "cells.tif", settings=settings,
                          table=tmp_path / "cells.csv", confidence=True)
    assert result.labels is None  # it did run block by block
    labels = open_image(tmp_path / "cells.tif").data.read(0, *(slice(None),) * 3)[0][None]
    maps = stack[:, 0], (stack[:, 1] if mode == "foreground" else None)
    if mode == "membrane":
        expected = measure(labels, SPACING, membrane=maps[0], confidence=True)
    else:
        expected = measure(labels, SPACING, foreground=maps[0], boundary=maps[1],
                           confidence=True)
    assert list(result.table) == list(expected) and len(expected["id"]) > 20
    np.testing.assert_array_equal(result.table["id"], expected["id"])
    np.testing.assert_array_equal(result.table["confidence"], expected["confidence"])
    assert 0 <= expected["confidence"].min() and expected["confidence"].max() <= 1
    assert (expected["confidence"] > 0).mean() > 0.9


def test_segment_cells_confidence_column(drawings, tmp_path, run_script,
                                         assert_one_line_error):
    cells = drawings.voronoi((96, 96), 16, seed=1)
    a, b = drawings.neighbours_with_longest_border(cells)
    write_image(tmp_path / "prob.tif", _faint_between(cells, a, b, 0.3)[None, None, None])
    result = run_script("segment_cells", "prob.tif", "cells.tif", "--table", "t.csv",
                        "--confidence", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "t.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0])
    assert header.index("confidence") == header.index("parent") - 1
    lowest = min(rows, key=lambda row: float(row["confidence"]))
    merged = np.bincount(open_image(tmp_path / "cells.tif").data.read(
        0, *(slice(None),) * 3)[0, 0][cells == a]).argmax()
    assert int(lowest["id"]) == merged and float(lowest["confidence"]) == pytest.approx(
        0.596, abs=0.02)
    refused = run_script("segment_cells", "prob.tif", "other.tif", "--confidence",
                         cwd=tmp_path)
    assert_one_line_error(refused, "--confidence", "--table")
    assert not (tmp_path / "other.tif").exists()


def test_view_agreement_is_one_where_the_views_agree():
    """One minus twice the mean spread over each cell: a cell whose views split evenly
    (spread 0.5) scores 0, one they agree on 1, and the other cells are untouched."""
    from unetsl.cells.confidence import view_agreement

    labels = np.zeros((8, 8), np.int32)
    labels[:4, :4], labels[4:, 4:], labels[:2, 6:] = 3, 5, 9
    spread = np.zeros((8, 8), np.float32)
    spread[labels == 5] = 0.5
    spread[0, 6] = 0.2  # one of cell 9's four pixels
    np.testing.assert_allclose(view_agreement(labels, spread, np.array([3, 5, 9])),
                               [1.0, 0.0, 0.9])
    assert view_agreement(labels, spread, np.array([], int)).shape == (0,)
