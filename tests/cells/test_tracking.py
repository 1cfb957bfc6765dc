import numpy as np
from skimage.draw import disk

from unetsl.cells import CellSettings, split_gaps, track, write_ctc_tracks
from unetsl.evaluate.instances import instance_scores


def _frame(centres, radius=7, shape=(64, 64)):
    out = np.zeros(shape, np.int32)
    for label, (y, x, r) in centres.items():
        out[disk((y, x), r or radius, shape=shape)] = label
    return out


def test_ids_kept_under_motion_and_division_recorded(tmp_path):
    # Frame labels are arbitrary per frame (as segment() returns them); cell A moves right,
    # cell B stays, then divides into two daughters in frame 2.
    f0 = _frame({1: (20, 15, 0), 2: (45, 40, 9)})
    f1 = _frame({5: (45, 41, 9), 3: (20, 18, 0)})
    f2 = _frame({1: (20, 21, 0), 7: (40, 41, 6), 8: (51, 41, 5)})
    f3 = _frame({2: (20, 24, 0), 4: (39, 41, 6), 9: (52, 41, 5)})
    labels = np.stack([f0, f1, f2, f3])[:, None]
    tracked, tracks = track(labels, CellSettings())
    a = tracked[0, 0, 20, 15]
    assert [tracked[t, 0, 20, 15 + 3 * t] for t in range(4)] == [a] * 4
    b = tracked[0, 0, 45, 40]
    assert tracked[1, 0, 45, 41] == b
    d1, d2 = tracked[2, 0, 40, 41], tracked[2, 0, 51, 41]
    assert len({a, b, d1, d2}) == 4
    assert (tracked[3, 0, 39, 41], tracked[3, 0, 52, 41]) == (d1, d2)
    by_id = {tr.id: tr for tr in tracks}
    assert (by_id[b].first, by_id[b].last, by_id[b].parent) == (0, 1, 0)
    assert (by_id[d1].first, by_id[d1].last, by_id[d1].parent) == (2, 3, b)
    assert by_id[d2].parent == b and by_id[a].last == 3
    path = write_ctc_tracks(tracks, tmp_path / "res_track.txt")
    lines = sorted(path.read_text().splitlines())
    assert lines == sorted(f"{tr.id} {tr.first} {tr.last} {tr.parent}" for tr in tracks)
    assert f"{d1} 2 3 {b}" in lines and f"{b} 0 1 0" in lines


def test_identity_survives_one_missed_frame():
    f0 = _frame({1: (20, 20, 0), 2: (45, 45, 0)})
    f1 = _frame({1: (20, 21, 0)})  # cell 2 missed (e.g. merged away) for one frame
    f2 = _frame({3: (20, 22, 0), 4: (45, 46, 0)})
    tracked, tracks = track(np.stack([f0, f1, f2])[:, None])
    assert tracked[2, 0, 45, 46] == tracked[0, 0, 45, 45]
    truth = np.stack([_frame({1: (20, 20, 0), 2: (45, 45, 0)}),
                      _frame({1: (20, 21, 0), 2: (45, 45, 0)}),
                      _frame({1: (20, 22, 0), 2: (45, 46, 0)})])[:, None]
    assert instance_scores(truth, tracked)["identity_kept"] == 1.0
    assert len(tracks) == 2
    # The CTC format wants continuous tracks: the piece after the gap becomes a child.
    ctc_labels, ctc_tracks = split_gaps(tracked, tracks)
    b = tracked[0, 0, 45, 45]
    resumed = ctc_labels[2, 0, 45, 46]
    assert resumed != b and ctc_labels[0, 0, 45, 45] == b
    assert {(tr.id, tr.first, tr.last, tr.parent) for tr in ctc_tracks if tr.id in (b, resumed)} \
        == {(b, 0, 0, 0), (resumed, 2, 2, b)}


def test_instance_scores_count_errors():
    truth = _frame({1: (20, 20, 0), 2: (45, 45, 0)})[None, None]
    predicted = _frame({1: (20, 20, 0), 2: (10, 50, 4)})[None, None]
    scores = instance_scores(truth, predicted)
    assert scores["f1"] == 0.5 and scores["precision"] == 0.5 and scores["recall"] == 0.5
    assert scores["per_frame_f1"] == [0.5]
    assert scores["identity_kept"] is None
    assert instance_scores(truth, truth)["ap"] == 1.0
