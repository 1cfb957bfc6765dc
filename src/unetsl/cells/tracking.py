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
from typing import Protocol

import numpy as np

from unetsl.atomic import atomic_write_text
from unetsl.cells.overlaps import Overlaps, best_matches
from unetsl.cells.settings import CellSettings
from unetsl.errors import UnetslError


@dataclass(frozen=True)
class Track:
    """One cell's life: its id, first and last frame (inclusive) and its parent id (0: none)."""

    id: int
    first: int
    last: int
    parent: int = 0


class FrameCells(Protocol):
    """What tracking reads of a movie: the cells of a frame and the overlaps of two frames
    (raw ids, as segmentation gave them); from arrays or, for frames larger than memory,
    added up block by block."""

    n_frames: int

    def cells(self, t: int) -> np.ndarray: ...

    def overlaps(self, a: int, b: int) -> Overlaps: ...


@dataclass(frozen=True)
class ArrayFrames:
    """The frames of (t, z, y, x) labels in memory."""

    labels: np.ndarray

    @property
    def n_frames(self) -> int:
        return int(self.labels.shape[0])

    def cells(self, t: int) -> np.ndarray:
        frame = self.labels[t]
        return np.unique(frame[frame > 0]).astype(np.int64)

    def overlaps(self, a: int, b: int) -> Overlaps:
        return Overlaps.of(self.labels[a], self.labels[b])


def track(labels: np.ndarray, settings: CellSettings | None = None
          ) -> tuple[np.ndarray, list[Track]]:
    """Relabel (t, z, y, x) labels so that a cell keeps its id over frames; return the tracks.

    Matching maximises the total IoU between consecutive frames, keeping pairs with IoU >=
    ``settings.track_min_overlap``; unmatched cells start new tracks. A division is two new
    cells that each lie mostly (``division_min_overlap``) inside one previous cell and are each
    between ``division_min_fraction`` and 1 minus it of the parent's size.
    """
    labels = np.asarray(labels)
    if labels.ndim != 4 or not np.issubdtype(labels.dtype, np.integer):
        raise UnetslError(f"labels to track must be integer (t, z, y, x), got shape "
                          f"{labels.shape} dtype {labels.dtype}")
    assigned, tracks = link_frames(ArrayFrames(labels), settings)
    out = np.zeros(labels.shape, dtype=np.int32)
    for t, new_of in enumerate(assigned):
        out[t] = lookup_array(new_of, int(labels[t].max()))[labels[t]]
    return out, tracks


def lookup_array(new_of: dict[int, int], top: int) -> np.ndarray:
    """``new_of`` as an array indexed by the old ids 0..top (unlisted ids, and 0, give 0)."""
    lookup = np.zeros(top + 1, dtype=np.int32)
    for old, new in new_of.items():
        lookup[old] = new
    return lookup


def link_frames(frames: FrameCells, settings: CellSettings | None = None
                ) -> tuple[list[dict[int, int]], list[Track]]:
    """The tracking of :func:`track` on any source of frames: for each frame {raw id: track
    id}, and the tracks."""
    settings = settings or CellSettings()
    spans: dict[int, list[int]] = {}  # id -> [first, last, parent]
    next_id = 1

    def start(t: int, parent: int) -> int:
        nonlocal next_id
        spans[next_id] = [t, t, parent]
        next_id += 1
        return next_id - 1

    ended: set[int] = set()  # tracks ended by a division: never resumed
    assigned: list[dict[int, int]] = []
    for t in range(frames.n_frames):
        cur_ids = frames.cells(t)
        new_of: dict[int, int] = {}
        if t:
            near = frames.overlaps(t - 1, t).renamed(assigned[t - 1])
            _assign(near, t, settings, spans, new_of)
        for k in range(2, settings.track_max_gap + 2):
            if t - k < 0:
                break
            _resume(frames, assigned[t - k], cur_ids, t, t - k, settings, spans, ended,
                    new_of)
        if t:
            _divisions(near, t, settings, spans, start, ended, new_of)
        for c in cur_ids.tolist():
            if c not in new_of:
                new_of[c] = start(t, 0)
        assigned.append(new_of)
    tracks = [Track(i, s[0], s[1], s[2]) for i, s in sorted(spans.items())]
    return assigned, tracks


def _assign(overlaps: Overlaps, t: int, settings: CellSettings,
            spans: dict[int, list[int]], new_of: dict[int, int]) -> None:
    """Optimal IoU assignment of the cells of frame t (b) to earlier tracks (a) among the pairs
    of IoU >= track_min_overlap: each matched cell gets the earlier cell's track id."""
    iou = overlaps.iou()
    # Only pairs that may be kept compete: a weaker pair never blocks a kept one, and the
    # matching splits into small groups (pairs of IoU > 0.5 are one to one already).
    allowed = np.flatnonzero((iou >= settings.track_min_overlap) & (iou > 0))
    pairs = overlaps.pairs[allowed]
    for p in best_matches(pairs, iou[allowed]).tolist():
        cell = int(pairs[p, 0])
        new_of[int(pairs[p, 1])] = cell
        spans[cell][1] = t


def _divisions(overlaps: Overlaps, t: int, settings: CellSettings,
               spans: dict[int, list[int]], start, ended: set[int],
               new_of: dict[int, int]) -> None:
    """End each previous cell whose region now holds two new cells, which start new tracks.

    Run after gap closing, so that two cells merged by a segmentation error in the previous
    frame and separated again are not mistaken for a division.
    """
    pairs, shared = overlaps.pairs, overlaps.shared
    size_parent = overlaps.size_of("a", pairs[:, 0])
    size_cell = overlaps.size_of("b", pairs[:, 1])
    inside = shared / np.maximum(size_cell, 1)  # fraction of each current cell in the parent
    # Daughters share the parent: each between f and 1 - f of it. A cell that keeps most of a
    # region it shared with a wrongly merged neighbour is not a division.
    frac = size_cell / np.maximum(size_parent, 1)
    f = settings.division_min_fraction
    fits = (inside >= settings.division_min_overlap) & (frac >= f) & (frac <= 1 - f)
    for parent in np.unique(pairs[fits, 0]).tolist():
        mine = np.flatnonzero(fits & (pairs[:, 0] == parent))
        cand = [p for p in mine.tolist()
                if new_of.get(int(pairs[p, 1]), parent) == parent]
        if len(cand) < 2:
            continue
        daughters = sorted(cand, key=lambda p: -shared[p])[:2]
        ended.add(parent)
        spans[parent][1] = t - 1
        for p in daughters:
            new_of[int(pairs[p, 1])] = start(t, parent)


def _resume(frames: FrameCells, old_ids: dict[int, int], cur_ids: np.ndarray, t: int,
            t_old: int, settings: CellSettings, spans: dict[int, list[int]], ended: set[int],
            new_of: dict[int, int]) -> None:
    """Give cells still unmatched at t the ids of tracks last seen at t_old, by overlap: a cell
    merged with a neighbour (or missed) for a frame or two gets its id back."""
    lost = [i for i, s in spans.items() if s[1] == t_old and i not in ended]
    waiting = [c for c in cur_ids.tolist() if c not in new_of]
    if not lost or not waiting:
        return
    overlaps = frames.overlaps(t_old, t).renamed(old_ids).only(np.array(lost),
                                                                np.array(waiting))
    _assign(overlaps, t, settings, spans, new_of)


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
    renames, out = gap_pieces(present, tracks, int(labels.max()) if labels.size else 0)
    for t, rename in renames.items():
        frame = labels[t]
        for old, new in rename.items():
            frame[labels[t] == old] = new
    return labels, out


def gap_pieces(present: dict[int, list[int]], tracks: Sequence[Track], top: int
               ) -> tuple[dict[int, dict[int, int]], list[Track]]:
    """:func:`split_gaps` on ids: ``present`` lists the frames of each track id, ``top`` is
    the largest id in use; returns {frame: {track id: piece id}} and the tracks."""
    next_id = max([top] + [tr.id for tr in tracks]) + 1
    renames: dict[int, dict[int, int]] = {}
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
                for t in piece.tolist():
                    renames.setdefault(t, {})[tr.id] = current
            out.append(Track(current, int(piece[0]), int(piece[-1]), parent))
    return renames, out


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
