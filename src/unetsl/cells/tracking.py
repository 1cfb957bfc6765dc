"""Cell ids kept over time: frame-to-frame overlap matching, with divisions recorded.

Epithelial cells move little between frames compared with their size, so overlap (IoU) with an
optimal one-to-one assignment is enough; a cell whose previous region holds two new cells
divided: it ends there and the two daughters start new tracks with it as parent, as in the Cell
Tracking Challenge (CTC) format.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from unetsl.atomic import atomic_write_text
from unetsl.cells.settings import CellSettings
from unetsl.errors import UnetslError


@dataclass(frozen=True)
class Track:
    """One cell's life: its id, first and last frame (inclusive) and its parent id (0: none)."""

    id: int
    first: int
    last: int
    parent: int = 0


def _overlaps(prev: np.ndarray, cur: np.ndarray):
    """ids of both frames, intersection counts (prev x cur) and the areas."""
    a = prev.ravel().astype(np.int64)
    b = cur.ravel().astype(np.int64)
    prev_ids = np.unique(a[a > 0])
    cur_ids = np.unique(b[b > 0])
    ia, ib = np.searchsorted(prev_ids, a), np.searchsorted(cur_ids, b)
    both = (a > 0) & (b > 0)
    n_a, n_b = len(prev_ids), len(cur_ids)
    inter = np.bincount(ia[both] * n_b + ib[both], minlength=n_a * n_b).reshape(n_a, n_b)
    area_a = np.bincount(ia[a > 0], minlength=n_a)
    area_b = np.bincount(ib[b > 0], minlength=n_b)
    return prev_ids, cur_ids, inter, area_a, area_b


def track(labels: np.ndarray, settings: CellSettings | None = None
          ) -> tuple[np.ndarray, list[Track]]:
    """Relabel (t, z, y, x) labels so that a cell keeps its id over frames; return the tracks.

    Matching maximises the total IoU between consecutive frames, keeping pairs with IoU >=
    ``settings.track_min_overlap``; unmatched cells start new tracks. A division is two new
    cells that each lie mostly (``division_min_overlap``) inside one previous cell and are each
    between ``division_min_fraction`` and 1 minus it of the parent's size.
    """
    settings = settings or CellSettings()
    labels = np.asarray(labels)
    if labels.ndim != 4 or not np.issubdtype(labels.dtype, np.integer):
        raise UnetslError(f"labels to track must be integer (t, z, y, x), got shape "
                          f"{labels.shape} dtype {labels.dtype}")
    out = np.zeros(labels.shape, dtype=np.int32)
    spans: dict[int, list[int]] = {}  # id -> [first, last, parent]
    next_id = 1

    def start(t: int, parent: int) -> int:
        nonlocal next_id
        spans[next_id] = [t, t, parent]
        next_id += 1
        return next_id - 1

    ended: set[int] = set()  # tracks ended by a division: never resumed
    for t in range(labels.shape[0]):
        cur = labels[t]
        new_of: dict[int, int] = {}
        if t:
            new_of = _link(out[t - 1], cur, t, settings, spans)
        for k in range(2, settings.track_max_gap + 2):
            if t - k < 0:
                break
            _resume(out[t - k], cur, t, t - k, settings, spans, ended, new_of)
        if t:
            _divisions(out[t - 1], cur, t, settings, spans, start, ended, new_of)
        for c in np.unique(cur[cur > 0]):
            if int(c) not in new_of:
                new_of[int(c)] = start(t, 0)
        lookup = np.zeros(int(cur.max()) + 1, dtype=np.int32)
        for old, new in new_of.items():
            lookup[old] = new
        out[t] = lookup[cur]
    tracks = [Track(i, s[0], s[1], s[2]) for i, s in sorted(spans.items())]
    return out, tracks


def _link(prev: np.ndarray, cur: np.ndarray, t: int, settings: CellSettings,
          spans: dict[int, list[int]]) -> dict[int, int]:
    """{current label: track id} for frame t by optimal IoU assignment to the previous frame;
    cells left unmatched are absent from the result."""
    new_of: dict[int, int] = {}
    _assign(prev, cur, t, settings, spans, new_of)
    return new_of


def _assign(before: np.ndarray, cur: np.ndarray, t: int, settings: CellSettings,
            spans: dict[int, list[int]], new_of: dict[int, int]) -> None:
    """Optimal IoU assignment of the cells of ``cur`` (frame t) to those of ``before``; a
    pair with IoU >= track_min_overlap gives the current cell the earlier cell's track id."""
    before_ids, cur_ids, inter, area_b, area_c = _overlaps(before, cur)
    if inter.size == 0:
        return
    iou = inter / np.maximum(area_b[:, None] + area_c[None, :] - inter, 1)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    for r, c in zip(rows, cols):
        if iou[r, c] >= settings.track_min_overlap:
            cell = int(before_ids[r])
            new_of[int(cur_ids[c])] = cell
            spans[cell][1] = t


def _divisions(prev: np.ndarray, cur: np.ndarray, t: int, settings: CellSettings,
               spans: dict[int, list[int]], start, ended: set[int],
               new_of: dict[int, int]) -> None:
    """End each previous cell whose region now holds two new cells, which start new tracks.

    Run after gap closing, so that two cells merged by a segmentation error in the previous
    frame and separated again are not mistaken for a division.
    """
    prev_ids, cur_ids, inter, area_p, area_c = _overlaps(prev, cur)
    inside = inter / np.maximum(area_c[None, :], 1)  # fraction of each current cell in prev
    for i, parent in enumerate(prev_ids.tolist()):
        # Daughters share the parent: each between f and 1 - f of it. A cell that keeps most
        # of a region it shared with a wrongly merged neighbour is not a division.
        frac = area_c / max(int(area_p[i]), 1)
        f = settings.division_min_fraction
        cand = np.flatnonzero((inside[i] >= settings.division_min_overlap)
                              & (frac >= f) & (frac <= 1 - f))
        cand = [j for j in cand if new_of.get(int(cur_ids[j]), parent) == parent]
        if len(cand) < 2:
            continue
        daughters = sorted(cand, key=lambda j: -inter[i, j])[:2]
        ended.add(parent)
        spans[parent][1] = t - 1
        for j in daughters:
            new_of[int(cur_ids[j])] = start(t, parent)


def _resume(old: np.ndarray, cur: np.ndarray, t: int, t_old: int, settings: CellSettings,
            spans: dict[int, list[int]], ended: set[int], new_of: dict[int, int]) -> None:
    """Give cells still unmatched at t the ids of tracks last seen at t_old, by overlap: a cell
    merged with a neighbour (or missed) for a frame or two gets its id back."""
    lost = [i for i, s in spans.items() if s[1] == t_old and i not in ended]
    waiting = [c for c in np.unique(cur[cur > 0]) if int(c) not in new_of]
    if not lost or not waiting:
        return
    old = np.where(np.isin(old, lost), old, 0)
    cur = np.where(np.isin(cur, waiting), cur, 0)
    _assign(old, cur, t, settings, spans, new_of)


def split_gaps(labels: np.ndarray, tracks: Sequence[Track]) -> tuple[np.ndarray, list[Track]]:
    """Give each gap-separated piece of a track its own id, parent = the piece before it.

    ``track`` keeps a cell's id across frames where it was missed (best for measuring), but
    the Cell Tracking Challenge format wants tracks continuous from B to E and a gap encoded
    as a new track whose parent is the interrupted one. Call this before writing CTC results.
    """
    labels = np.array(labels, copy=True)
    present: dict[int, list[int]] = {}
    for t in range(labels.shape[0]):
        for cell in np.unique(labels[t]):
            if cell:
                present.setdefault(int(cell), []).append(t)
    next_id = max([int(labels.max())] + [tr.id for tr in tracks]) + 1
    out: list[Track] = []
    for tr in tracks:
        frames = present.get(tr.id, [])
        pieces = np.split(np.array(frames), np.flatnonzero(np.diff(frames) > 1) + 1)
        if len(pieces) <= 1:
            out.append(tr)
            continue
        current, parent = tr.id, tr.parent
        for number, piece in enumerate(pieces):
            if number:
                current, parent = next_id, current
                next_id += 1
                for t in piece:
                    labels[t][labels[t] == tr.id] = current
            out.append(Track(current, int(piece[0]), int(piece[-1]), parent))
    return labels, out


def whole_tracks(tracks: Sequence[Track]) -> dict[int, int]:
    """{id: id of the cell's first piece}: the pieces ``split_gaps`` made of one cell, joined.

    A track with exactly one child is a gap, not a division (a division has two daughters),
    so the child is the same cell; measuring or scoring identity over a whole life groups by
    this id.
    """
    children: dict[int, list[int]] = {}
    for tr in tracks:
        children.setdefault(tr.parent, []).append(tr.id)
    parent_of = {tr.id: tr.parent for tr in tracks}
    whole: dict[int, int] = {}
    for tr in sorted(tracks, key=lambda t: (t.first, t.id)):  # parents start before children
        parent = parent_of[tr.id]
        gap = parent and len(children.get(parent, ())) == 1
        whole[tr.id] = whole.get(parent, parent) if gap else tr.id
    return whole


def tracks_path(labels_path: str | os.PathLike) -> Path:
    """Where segment_cells writes the tracks of a label image: ``<name>-res_track.txt``."""
    labels_path = Path(labels_path)
    return labels_path.with_name(labels_path.name.split(".")[0] + "-res_track.txt")


def read_ctc_tracks(path: str | os.PathLike) -> list[Track]:
    """Tracks of a Cell Tracking Challenge res_track.txt ("L B E P" per line)."""
    tracks = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 4 or not all(f.lstrip("-").isdigit() for f in fields):
            raise UnetslError(f"{path}: line {number} is not 'id first last parent': {line!r}")
        tracks.append(Track(*(int(f) for f in fields)))
    return tracks


def write_ctc_tracks(tracks: Sequence[Track], path: str | os.PathLike) -> Path:
    """Write a Cell Tracking Challenge res_track.txt ("L B E P" per line), atomically.

    Tracks with gaps (see ``track_max_gap``) should first go through ``split_gaps``, with the
    label image written from its labels, so that each id is present in exactly frames B..E.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise UnetslError(f"folder for tracks file {path} does not exist")
    text = "".join(f"{tr.id} {tr.first} {tr.last} {tr.parent}\n" for tr in tracks)
    atomic_write_text(path, text)
    return path
