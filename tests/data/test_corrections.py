"""Corrected cells -> partial training labels; corrections kept across re-segmentations."""

from __future__ import annotations

import numpy as np
import pytest

from unetsl.data.corrections import (
    UNKNOWN,
    correction_labels,
    keep_corrections,
    pasted_ids,
)
from unetsl.errors import UnetslError

U = UNKNOWN
#: three cells and a background corner, one frame (t, z, y, x)
CELLS = np.array([[[[1, 1, 2, 2, 2, 2],
                    [1, 1, 2, 2, 2, 2],
                    [1, 1, 2, 2, 2, 2],
                    [3, 3, 3, 3, 0, 0],
                    [3, 3, 3, 3, 0, 0]]]], dtype=np.int32)


def test_membrane_labels_are_the_cell_borders_in_the_known_ring():
    labels = correction_labels(CELLS, [1], "multiclass labels", ring=1)
    assert labels.dtype == np.uint16
    np.testing.assert_array_equal(labels[0, 0], [
        [0, 1, 1, U, U, U],  # the image edge is no border; both sides of 1|2 are
        [0, 1, 1, U, U, U],
        [1, 1, 1, U, U, U],
        [1, 1, U, U, U, U],  # cell 3's border with cell 1, in the ring
        [U, U, U, U, U, U]])
    # "region labels" and "double membrane labels" read membranes too; "multiclass" is the
    # short name
    for name in ("region labels", "double membrane labels", "multiclass"):
        np.testing.assert_array_equal(correction_labels(CELLS, [1], name, ring=1), labels)


def test_instance_labels_keep_the_ids_and_the_ring_grows_in_plane_only():
    labels = correction_labels(CELLS, [3, 0], "instance labels", ring=2)
    np.testing.assert_array_equal(labels[0, 0], [
        [U, U, U, U, U, U],
        [1, 1, 2, 2, U, U],
        [1, 1, 2, 2, 2, U],
        [3, 3, 3, 3, 0, 0],
        [3, 3, 3, 3, 0, 0]])
    two = np.concatenate([CELLS, np.full_like(CELLS, 4)])  # frame 1 has no cell 3
    stacked = correction_labels(two[:, [0, 0]], [3], "instance labels", ring=2)
    assert stacked.shape == (2, 2, 5, 6)
    np.testing.assert_array_equal(stacked[0, 1], labels[0, 0])  # each z plane alike
    assert (stacked[1] == U).all()  # nothing known across time
    assert (correction_labels(CELLS, [], "instance labels") == U).all()
    np.testing.assert_array_equal(correction_labels(CELLS, [2], "instance labels", ring=0),
                                  np.where(CELLS == 2, 2, U))


@pytest.mark.parametrize("cells, labeller, message", [
    (CELLS, "linear labels", "the labeller 'linear labels' does not read cells"),
    (CELLS, "no such labels", "no such labels"),
    (CELLS + 65534, "instance labels", "cell ids must lie in 0..65534"),
    (CELLS[0], "instance labels", r"integer \(t, z, y, x\)"),
    (CELLS.astype(float), "instance labels", r"integer \(t, z, y, x\)")])
def test_bad_inputs_are_one_line(cells, labeller, message):
    with pytest.raises(UnetslError, match=message) as error:
        correction_labels(cells, [1], labeller)
    assert "\n" not in str(error.value)


#: the new segmentation: cell 5 lies mostly on corrected cell 1, cell 7 partly
NEW = np.array([[[[5, 5, 5, 1, 1, 1],
                  [5, 5, 5, 1, 1, 1],
                  [7, 7, 7, 1, 1, 1],
                  [7, 7, 7, 7, 0, 0],
                  [7, 7, 7, 7, 0, 0]]]], dtype=np.int32)


def test_corrected_cells_win_covered_cells_go_taken_ids_are_renumbered():
    merged = keep_corrections(NEW, CELLS, [1])
    np.testing.assert_array_equal(merged[0, 0], [
        [8, 8, 0, 1, 1, 1],  # 5 was 4/6 under cell 1: gone, also where it stuck out
        [8, 8, 0, 1, 1, 1],  # the new cell 1 keeps its id; the corrected 1 becomes 8
        [8, 8, 7, 1, 1, 1],  # 7 was 2/11 under cell 1: it keeps the rest
        [7, 7, 7, 7, 0, 0],
        [7, 7, 7, 7, 0, 0]])
    assert pasted_ids(merged, CELLS, [1]) == {1: 8}
    kept = keep_corrections(NEW, CELLS, [2])
    np.testing.assert_array_equal(kept[0, 0], [
        [5, 5, 2, 2, 2, 2],  # 5 was 2/6 under cell 2: kept; the new 1 (9/9) is gone
        [5, 5, 2, 2, 2, 2],
        [7, 7, 2, 2, 2, 2],  # the id 2 was free: kept
        [7, 7, 7, 7, 0, 0],
        [7, 7, 7, 7, 0, 0]])
    np.testing.assert_array_equal(keep_corrections(NEW, CELLS, []), NEW)


def test_a_renumbered_cell_has_one_id_in_every_frame():
    new = np.concatenate([NEW, np.where(NEW == 1, 0, NEW)])  # id 1 taken in frame 0 only
    old = np.concatenate([CELLS, CELLS])
    merged = keep_corrections(new.astype(np.uint16), old.astype(np.uint16), [1, 3])
    assert merged.dtype == np.int32
    assert (merged[old == 1] == 4).all() and (merged[old == 3] == 3).all()  # 5, 7 gone
    assert pasted_ids(merged, old, [1, 3]) == {1: 4, 3: 3}
    with pytest.raises(UnetslError, match=r"the new cells \(1, 1, 5, 6\) and the corrected "
                                          r"ones \(2, 1, 5, 6\) differ in shape"):
        keep_corrections(NEW, old, [1])


def test_deleted_cells_are_known_background_and_stay_deleted():
    """A false cell the user erased: known background (with its ring) to learn from, and a
    new cell found there again is dropped."""
    cells = CELLS.copy()
    erased = cells == 2
    cells[erased] = 0
    labels = correction_labels(cells, [], "instance labels", ring=1, erased=erased)
    assert (labels[erased] == 0).all()
    assert (labels[0, 0, :3, 1] == 1).all() and labels[0, 0, 4, 5] == U  # ring, not beyond
    again = CELLS * 10  # the re-segmentation finds cell 2 again as 20
    merged = keep_corrections(again, cells, [], erased=erased)
    assert not (merged == 20).any() and (merged == 10).sum() == 6 and (merged == 30).sum() == 8
