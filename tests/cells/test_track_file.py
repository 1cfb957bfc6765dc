"""The track file, label image, table and instance scores agree on ids (issue 28 item 1):
read back the way the Cell Tracking Challenge tools and pandas-style users read them."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from skimage.draw import disk

from unetsl.cells import CellSettings, read_ctc_tracks, whole_tracks
from unetsl.cells.files import segment_file
from unetsl.evaluate.instances import evaluate_instance_files
from unetsl.io.tiff import read_image, write_image

SHAPE = (72, 72)


def _frames() -> np.ndarray:
    """True cell ids (t, y, x): cell 1 still, cell 2 missing in frame 2 (a gap), cell 3 divides
    into 4 and 5 at frame 3."""
    out = np.zeros((5, *SHAPE), np.int32)
    for t in range(5):
        out[t][disk((18, 18), 9, shape=SHAPE)] = 1
        if t != 2:
            out[t][disk((18, 52), 9, shape=SHAPE)] = 2
        if t < 3:
            out[t][disk((52, 36), 13, shape=SHAPE)] = 3
        else:
            out[t][disk((52, 28), 7, shape=SHAPE)] = 4
            out[t][disk((52, 44), 7, shape=SHAPE)] = 5
    return out


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tracks")
    truth = _frames()
    write_image(folder / "prob.tif", (truth > 0).astype(np.float32)[:, None, None])
    write_image(folder / "truth.tif", truth[:, None, None])
    settings = CellSettings(mode="foreground", time_window=1)
    segment_file(folder / "prob.tif", folder / "cells.tif", settings=settings,
                 table=folder / "cells.csv")
    return folder


def test_each_track_line_holds_exactly_the_frames_its_id_is_in(segmented):
    labels = read_image(segmented / "cells.tif").data[:, 0, 0]
    tracks = read_ctc_tracks(segmented / "cells-res_track.txt")
    assert sorted(tr.id for tr in tracks) == sorted(np.unique(labels[labels > 0]).tolist())
    for tr in tracks:
        present = [t for t in range(labels.shape[0]) if (labels[t] == tr.id).any()]
        assert present == list(range(tr.first, tr.last + 1)), tr
    # the gap: cell 2's second piece is a child of its first; the division: two daughters
    right = {tr.id: tr for tr in tracks}
    first, later = labels[0, 18, 52], labels[3, 18, 52]
    assert first != later and right[later].parent == first and right[later].first == 3
    daughters = {labels[3, 52, 28], labels[3, 52, 44]}
    assert {right[d].parent for d in daughters} == {labels[0, 52, 36]}
    assert whole_tracks(tracks)[later] == first  # one cell, two pieces
    assert all(whole_tracks(tracks)[d] == d for d in daughters)  # a division is not a gap


def test_ctc_validator_accepts_the_result(segmented):
    ctc = pytest.importorskip("ctc_metrics.metrics", reason="py-ctcmetrics not installed")
    labels = read_image(segmented / "cells.tif").data[:, 0, 0]
    tracks = np.array([[tr.id, tr.first, tr.last, tr.parent]
                       for tr in read_ctc_tracks(segmented / "cells-res_track.txt")])
    present = [np.unique(frame[frame > 0]).tolist() for frame in labels]
    masks = [f"mask{t:03d}.tif" for t in range(labels.shape[0])]
    assert ctc.valid(masks, tracks, present) == 1


def test_table_rows_name_label_ids_and_join_a_gap(segmented):
    labels = read_image(segmented / "cells.tif").data[:, 0, 0]
    with open(segmented / "cells.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        assert (labels[int(row["t"])] == int(row["id"])).any(), row
    gap_cell = {int(r["track"]) for r in rows if float(r["centroid_x"]) > 40
                and float(r["centroid_y"]) < 30}
    assert gap_cell == {int(labels[0, 18, 52])}


def test_identity_score_reads_the_track_file(segmented, tmp_path):
    scores = evaluate_instance_files(segmented / "cells.tif", segmented / "truth.tif")
    assert scores["f1"] == 1.0 and scores["identity_kept"] == 1.0, scores
    assert scores["tracks"].endswith("cells-res_track.txt")
    alone = tmp_path / "cells.tif"  # without its track file, the gap is an identity switch
    alone.write_bytes((segmented / "cells.tif").read_bytes())
    assert evaluate_instance_files(alone, segmented / "truth.tif")["identity_kept"] == 0.8  # 4 of 5
