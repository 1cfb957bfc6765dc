"""evaluate.py and evaluate_prediction on hand-made images whose scores are known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from unetsl.errors import UnetslError
from unetsl.evaluate.cell_scores import cell_labels, cell_scores, match_cells
from unetsl.evaluate.scores import (
    evaluate,
    evaluate_files,
    infer_n_labels,
    pixel_scores,
    tolerant_scores,
    write_json,
)
from unetsl.io.tiff import write_image


def grid(size: int = 17, step: int = 8) -> np.ndarray:
    """(size, size) uint8 membrane skeleton (1) on every step-th row and column: square cells."""
    label = np.zeros((size, size), dtype=np.uint8)
    label[::step, :] = 1
    label[:, ::step] = 1
    return label


# --- pixel scores ---------------------------------------------------------------------------

def test_pixel_scores_counts():
    truth = np.zeros((4, 4), bool)
    truth[0, :] = truth[1, :2] = True  # 6 pixels
    pred = np.zeros((4, 4), bool)
    pred[0, 1:] = pred[3, 3] = True  # 4 pixels, 3 of them true
    s = pixel_scores(pred, truth)
    assert (s["truth_pixels"], s["predicted_pixels"], s["true_positives"]) == (6, 4, 3)
    assert s["iou"] == pytest.approx(3 / 7)
    assert s["dice"] == pytest.approx(6 / 10)
    assert s["precision"] == pytest.approx(3 / 4)
    assert s["recall"] == pytest.approx(3 / 6)


def test_pixel_scores_empty_are_undefined_not_perfect():
    empty = np.zeros((3, 3), bool)
    s = pixel_scores(empty, empty)
    assert all(math.isnan(s[k]) for k in ("iou", "dice", "precision", "recall"))
    one = empty.copy()
    one[1, 1] = True
    s = pixel_scores(empty, one)  # nothing predicted
    assert math.isnan(s["precision"]) and s["recall"] == 0 and s["dice"] == 0 and s["iou"] == 0


# --- tolerance ------------------------------------------------------------------------------

def test_membrane_one_pixel_off_is_right_within_tolerance_1():
    truth = np.zeros((1, 9, 12), bool)
    truth[0, 4, :] = True
    pred = np.roll(truth, 1, axis=1)  # the whole membrane one row lower
    exact = pixel_scores(pred, truth)
    assert exact["dice"] == 0 and exact["dice"] < 1
    assert tolerant_scores(pred, truth, 1) == (1.0, 1.0, 1.0)
    assert tolerant_scores(pred, truth, 0)[2] == 0
    two_off = np.roll(truth, 2, axis=1)
    assert tolerant_scores(two_off, truth, 1)[2] == 0
    assert tolerant_scores(two_off, truth, 2)[2] == 1


def test_tolerance_is_euclidean_and_stays_in_its_plane():
    truth = np.zeros((2, 5, 5), bool)
    truth[0, 2, 2] = True
    diagonal = np.zeros_like(truth)
    diagonal[0, 3, 3] = True
    assert tolerant_scores(diagonal, truth, 1)[:2] == (0.0, 0.0)
    assert tolerant_scores(diagonal, truth, 1.5) == (1.0, 1.0, 1.0)
    other_plane = np.zeros_like(truth)
    other_plane[1, 2, 2] = True  # same (y, x), next frame: not a match
    assert tolerant_scores(other_plane, truth, 3)[:2] == (0.0, 0.0)


def test_tolerant_precision_and_recall_differ_for_a_partial_membrane():
    truth = np.zeros((1, 5, 10), bool)
    truth[0, 2, :] = True
    pred = np.zeros_like(truth)
    pred[0, 3, :5] = True  # half the membrane, 1 px off
    precision, recall, f1 = tolerant_scores(pred, truth, 1)
    assert precision == 1.0
    assert recall == pytest.approx(0.5)
    assert f1 == pytest.approx(2 / 3)


# --- cells ----------------------------------------------------------------------------------

def test_two_squares_split_by_a_line():
    label = np.zeros((9, 19), np.uint8)
    label[[0, -1], :] = label[:, [0, 9, -1]] = 1
    cells = cell_labels(label[None] > 0)
    assert cells.shape == (1, 9, 19) and cells.max() == 2
    assert sorted(np.bincount(cells.ravel())[1:]) == [56, 56]  # 7 x 8 each
    s = cell_scores(label > 0, label > 0)
    assert (s.truth_cells, s.predicted_cells, s.matched) == (2, 2, 2)
    assert s.precision == s.recall == s.f1 == s.mean_matched_iou == 1.0


def test_missing_membrane_merges_two_cells():
    truth = grid()  # 4 cells of 7 x 7
    pred = truth.copy()
    pred[1:8, 8] = 0  # the wall between the two top cells is missing
    s = cell_scores(pred > 0, truth > 0)
    assert (s.truth_cells, s.predicted_cells, s.matched) == (4, 3, 2)
    assert s.recall == 0.5
    assert s.precision == pytest.approx(2 / 3)
    assert s.f1 == pytest.approx(4 / 7)
    assert s.mean_matched_iou == 1.0


def test_merge_of_a_big_and_a_small_cell_keeps_the_big_one():
    truth = np.zeros((12, 12), bool)
    truth[:, 8] = True  # big cell 8 wide, small cell 3 wide
    merged = np.zeros_like(truth)
    s = cell_scores(merged, truth)
    assert (s.truth_cells, s.predicted_cells, s.matched) == (2, 1, 1)
    assert s.mean_matched_iou == pytest.approx(96 / 144)
    assert s.precision == 1 and s.recall == 0.5


def test_shifted_membrane_lowers_cell_iou_but_cells_still_match():
    truth = np.zeros((9, 19), bool)
    truth[[0, -1], :] = truth[:, [0, 9, -1]] = True
    pred = np.zeros_like(truth)
    pred[[0, -1], :] = pred[:, [0, 10, -1]] = True
    s = cell_scores(pred, truth)
    assert s.matched == 2 and s.f1 == 1
    # left 56 vs 63 px (IoU 56/63), right 56 vs 49 (IoU 49/56)
    assert s.mean_matched_iou == pytest.approx((56 / 63 + 49 / 56) / 2)


def test_watershed_cells_tile_the_plane():
    label = grid()
    components = cell_labels(label > 0)
    grown = cell_labels(label > 0, method="watershed")
    assert components.max() == grown.max() == 4
    assert (grown > 0).all() and (components[label == 0] > 0).all()
    assert (grown[components > 0] == components[components > 0]).all()
    s = cell_scores(label > 0, label > 0, method="watershed")
    assert s.f1 == 1 and s.mean_matched_iou == 1


def test_min_size_ignores_holes_in_a_thick_membrane():
    truth = np.zeros((9, 19), bool)
    truth[[0, -1], :] = truth[:, [0, 9, -1]] = True
    pred = truth.copy()
    pred[2:7, 8:11] = True
    pred[4, 9] = False  # a 1-pixel hole inside the thick membrane
    assert cell_scores(pred, truth).predicted_cells == 3
    s = cell_scores(pred, truth, min_size=2)
    assert s.predicted_cells == 2 and s.precision == 1
    assert cell_labels(pred, min_size=2).max() == 2


def test_cells_are_counted_per_plane():
    stack = np.stack([grid(), np.zeros((17, 17), np.uint8)])  # 4 cells, then 1 cell
    cells = cell_labels(stack > 0)
    assert cells[0].max() == 4 and cells[1].max() == 1
    s = cell_scores(stack > 0, stack > 0)
    assert s.truth_cells == 5 and s.matched == 5


def test_match_cells_one_to_one_and_below_half():
    truth = np.array([[1, 1, 1, 2, 2, 2]])
    pred = np.array([[1, 1, 1, 1, 3, 3]])
    assert match_cells(truth, pred) == [(1, 1, 0.75), (2, 3, pytest.approx(2 / 3))]
    # at 0.3 a split cell can match only once: the best assignment wins
    truth = np.array([[1, 1, 1, 1, 1, 1]])
    pred = np.array([[1, 1, 2, 2, 2, 2]])
    assert match_cells(truth, pred) == [(1, 2, pytest.approx(4 / 6))]
    assert match_cells(truth, pred, iou_threshold=0.3) == [(1, 2, pytest.approx(4 / 6))]
    assert match_cells(np.zeros((2, 2), int), pred[:, :4].reshape(2, 2)) == []
    with pytest.raises(UnetslError, match="IoU threshold"):
        match_cells(truth, pred, iou_threshold=1.0)


# --- whole images ---------------------------------------------------------------------------

def test_multiclass_membrane_and_vertex_channels():
    truth = grid()
    truth[::8, ::8] = 3  # vertices where the walls cross
    pred = truth.copy()
    pred[8, 8] = 1  # the centre vertex is predicted as plain membrane
    result = evaluate(pred, truth)
    assert result.n_labels == 2 and [s.name for s in result.labels] == ["1", "2"]
    membrane, vertex = result.labels
    assert membrane.dice == 1 and membrane.tolerant_f1 == 1
    assert vertex.truth_pixels == 9 and vertex.predicted_pixels == 8
    assert vertex.precision == 1 and vertex.recall == pytest.approx(8 / 9)
    assert result.cells.f1 == 1
    only_membrane = evaluate(pred, truth, n_labels=1)
    assert [s.name for s in only_membrane.labels] == ["1"]


def test_identical_synthetic_epithelium_scores_one():
    from unetsl.data.synthetic import epithelium_time_series

    labels = epithelium_time_series((2, 64, 64), seed=3).labels
    result = evaluate(labels, labels)
    assert all(s.dice == 1 and s.tolerant_f1 == 1 for s in result.labels)
    assert result.cells.truth_cells > 10 and result.cells.f1 == 1


def test_categorical_has_a_background_label_without_tolerance():
    truth = np.array([[0, 1, 2, 0], [0, 1, 2, 0]])
    pred = np.array([[0, 1, 2, 2], [0, 1, 0, 0]])
    result = evaluate(pred, truth, labeller="categorical")
    assert result.n_labels == 3
    assert [s.name for s in result.labels] == ["1", "2", "0 (background)"]
    assert result.labels[0].dice == 1
    assert result.labels[1].precision == 0.5 and result.labels[1].recall == 0.5
    assert result.labels[2].tolerance is None and result.labels[0].tolerance == 1.0
    with pytest.raises(UnetslError, match="truth"):
        evaluate(pred, truth + 1, labeller="categorical", truth_name="truth.tif")


def test_double_membrane_compares_with_the_dilated_truth():
    truth = np.zeros((7, 7), np.uint8)
    truth[3, :] = 1
    pred = np.zeros_like(truth)
    pred[2:5, :] = 1  # what a double-membrane model predicts
    assert evaluate(pred, truth, labeller="double membrane").labels[0].dice == 1
    assert evaluate(pred, truth).labels[0].precision == pytest.approx(1 / 3)


def test_region_labels_use_the_membrane_channel():
    truth = grid(9, 8)  # 1 cell
    # categorical reduction of 2 channels: membrane (channel 0) -> 1, region 1 (last) -> 0
    pred = np.where(truth > 0, 1, 0)
    result = evaluate(pred, truth, labeller="region labels")
    assert result.n_labels == 2
    assert [s.name for s in result.labels] == ["membrane", "region 1"]
    assert result.labels[0].dice == result.labels[1].dice == 1
    assert result.cells.matched == 1


def test_linear_labels_get_regression_scores():
    truth = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
    result = evaluate(truth + np.array([[0, 0], [0, 2]]), truth, labeller="linear")
    assert result.labels == [] and result.cells is None
    assert result.regression.mean_absolute_error == 0.5
    assert result.regression.max_absolute_error == 2
    assert result.regression.root_mean_square_error == pytest.approx(1.0)


def test_infer_n_labels():
    a = np.array([[0, 1]])
    assert infer_n_labels(a, np.array([[3, 0]])) == 2
    assert infer_n_labels(a, a) == 1
    assert infer_n_labels(np.zeros((1, 2)), np.zeros((1, 2))) == 1
    assert infer_n_labels(a, np.array([[2, 0]]), "categorical") == 3
    assert infer_n_labels(a, a, "categorical") == 2
    assert infer_n_labels(a, a, "linear") == 1


def test_bad_input_names_the_culprit():
    a = np.zeros((4, 4), np.uint8)
    with pytest.raises(UnetslError, match=r"p\.tif has shape \(4, 4\) but t\.tif has shape"):
        evaluate(a, np.zeros((4, 5)), prediction_name="p.tif", truth_name="t.tif")
    with pytest.raises(UnetslError, match="p.tif"):
        evaluate(a + 0.5, a, prediction_name="p.tif")
    with pytest.raises(UnetslError, match="tolerance"):
        evaluate(a, a, tolerance=-1)
    with pytest.raises(UnetslError, match="n labels >= 2"):
        evaluate(a, a, labeller="categorical", n_labels=1)
    with pytest.raises(UnetslError, match="unknown labeller"):
        evaluate(a, a, labeller="nonsense")


# --- files and the command ------------------------------------------------------------------

def test_evaluate_files_5d_and_json(tmp_path):
    truth = np.stack([grid(), grid()])[None, None]  # (t, c, z, y, x) = (1, 1, 2, 17, 17)
    truth = np.concatenate([truth, truth])  # 2 frames
    pred = truth.copy()
    pred[1, 0, 1, 1:8, 8] = 0  # one merge in the last plane
    write_image(tmp_path / "pred.tif", pred)
    write_image(tmp_path / "truth.tif", truth)
    result = evaluate_files(tmp_path / "pred.tif", tmp_path / "truth.tif", tolerance=0)
    assert result.shape == (2, 1, 2, 17, 17)
    assert (result.cells.truth_cells, result.cells.matched) == (16, 14)
    assert result.labels[0].tolerance is None
    write_json(result, tmp_path / "out.json")
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["cells"]["matched"] == 14 and saved["labels"][0]["precision"] == 1
    assert saved["labels"][0]["tolerant_f1"] is None

    two_channels = np.concatenate([truth, truth], axis=1)
    write_image(tmp_path / "two.tif", two_channels)
    with pytest.raises(UnetslError, match="two.tif has 2 channels"):
        evaluate_files(tmp_path / "two.tif", tmp_path / "two.tif")


def test_json_has_null_for_undefined_scores(tmp_path):
    empty = np.zeros((5, 5), np.uint8)
    write_json(evaluate(empty, empty), tmp_path / "e.json")
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["labels"][0]["iou"] is None and saved["cells"]["f1"] == 1.0


def test_command_prints_table_and_writes_json(tmp_path, assert_one_line_error, run_script):
    truth = np.zeros((20, 20), np.uint8)
    truth[1:18, 1:18] = grid()
    truth[1:18:8, 1:18:8] = 3
    pred = np.roll(truth, 1, axis=0)  # one row lower, nothing wraps round
    write_image(tmp_path / "pred.tif", pred)
    write_image(tmp_path / "truth.tif", truth)
    result = run_script("evaluate_prediction", "pred.tif", "truth.tif", "--tolerance", "1",
                        "--json", "scores/out.json", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(ln for ln in lines if ln.split()[:1] == ["label"])
    assert "IoU" in header and "Dice/F1" in header and "F1 ±1 px" in header
    assert any(ln.startswith("cells") for ln in lines)
    saved = json.loads((tmp_path / "scores" / "out.json").read_text())
    assert saved["prediction"] == "pred.tif" and saved["n_labels"] == 2
    assert saved["labels"][0]["dice"] < 1 and saved["labels"][0]["tolerant_f1"] == 1

    write_image(tmp_path / "small.tif", truth[:16])  # (16, 20) vs (20, 20)
    result = run_script("evaluate_prediction", "small.tif", "truth.tif", cwd=tmp_path,
                        timeout=120)
    assert result.returncode == 2
    assert_one_line_error(result, "small.tif", "truth.tif", "(1, 1, 1, 16, 20)",
                          "(1, 1, 1, 20, 20)")
