"""Per-cell measurements in physical units, one row per cell per frame, as table columns.

Columns are plain numpy arrays (a dict), so a notebook can wrap them in any dataframe library
and ``write_csv`` needs nothing beyond the standard library.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import find_contours, marching_cubes, mesh_surface_area, regionprops_table
from skimage.segmentation import find_boundaries

from unetsl.atomic import atomic_path
from unetsl.cells.confidence import cell_confidence
from unetsl.cells.regions import CellRegion, frame_regions
from unetsl.cells.segment import check_spacing, touching_pairs
from unetsl.cells.tracking import Track, whole_tracks
from unetsl.errors import UnetslError

_PROPS = ("label", "area", "centroid", "equivalent_diameter_area", "axis_major_length",
          "axis_minor_length", "bbox")


def measure(
    labels: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    membrane: np.ndarray | None = None,
    tracks: Sequence[Track] | None = None,
    *,
    foreground: np.ndarray | None = None,
    boundary: np.ndarray | None = None,
    confidence: bool = False,
) -> dict[str, np.ndarray]:
    """Measure every cell of (t, z, y, x) labels; returns columns of equal length.

    2D frames (z == 1) give ``area`` and ``perimeter``, 3D ones ``volume`` and
    ``surface_area`` (marching cubes with the spacing); both give id, t, centroid_z/y/x,
    equivalent_diameter, major/minor_axis_length, elongation (major / minor), neighbours
    (touching cells), parent and track (from ``tracks``: the parent id, and the id of the
    cell's first piece when a gap split it; else 0 and the id) and, if a ``membrane``
    probability map of the same shape is given, border_membrane: its mean over the cell's
    border pixels. ``confidence`` adds a confidence column (before parent; see
    :func:`unetsl.cells.confidence.cell_confidence`) from the map the cells were segmented
    from: ``membrane``, or for objects segmented in foreground mode ``foreground`` (and
    their ``boundary`` probability, if the model gives one).
    """
    labels = np.asarray(labels)
    if labels.ndim != 4 or not np.issubdtype(labels.dtype, np.integer):
        raise UnetslError(f"labels to measure must be integer (t, z, y, x), got shape "
                          f"{labels.shape} dtype {labels.dtype}")
    spacing = check_spacing(spacing)
    if membrane is not None:
        membrane = np.asarray(_like_labels(membrane, labels, "membrane"), dtype=np.float64)
    if membrane is not None and foreground is not None:
        raise UnetslError("measure: give membrane (membrane mode) or foreground (foreground "
                          "mode), not both")
    if boundary is not None and foreground is None:
        raise UnetslError("measure: a boundary map goes with a foreground map")
    probability = membrane if foreground is None else _like_labels(foreground, labels,
                                                                   "foreground")
    if confidence and probability is None:
        raise UnetslError("measure: confidence needs the probability map the cells were "
                          "segmented from (membrane= or foreground=)")
    regions = frame_regions(labels, probability, _like_labels(boundary, labels, "boundary"))
    return measure_regions(regions, spacing, flat=labels.shape[1] == 1,
                           with_membrane=membrane is not None, tracks=tracks,
                           confidence=confidence,
                           mode="membrane" if foreground is None else "foreground")


def _like_labels(array: np.ndarray | None, labels: np.ndarray, what: str) -> np.ndarray | None:
    """A map of the labels' shape (as given, None stays None), or a one-line error."""
    if array is None:
        return None
    array = np.asarray(array)
    if array.shape != labels.shape:
        raise UnetslError(f"{what} shape {array.shape} differs from labels {labels.shape}")
    return array


def measure_regions(regions: Iterable[CellRegion], spacing: Sequence[float], *, flat: bool,
                    with_membrane: bool, tracks: Sequence[Track] | None = None,
                    confidence: bool = False, mode: str = "membrane"
                    ) -> dict[str, np.ndarray]:
    """The columns of :func:`measure` from regions that each hold some cells whole (a frame
    in memory, or a block of a frame read back from its label file); rows by (t, id).
    ``confidence``: from each region's probability (``membrane``), as ``mode`` segmented."""
    spacing = check_spacing(spacing)
    parents = {tr.id: tr.parent for tr in tracks or ()}
    lineage = whole_tracks(tracks or ())
    rows = []
    for region in regions:
        if len(region.ids):
            rows.append(_region(region, spacing, flat, parents, lineage))
            if confidence:  # by id: the region's order need not be the table's
                scores = dict(zip(region.ids.tolist(), cell_confidence(region, mode, spacing)))
                rows[-1]["confidence"] = np.array([scores[i] for i in rows[-1]["id"].tolist()])
    keys = _columns(flat, with_membrane, confidence)
    if not rows:
        return {k: np.zeros(0) for k in keys}
    table = {k: np.concatenate([r[k] for r in rows]) for k in keys}
    order = np.lexsort((table["id"], table["t"]))
    return {k: v[order] for k, v in table.items()}


def _columns(flat: bool, with_membrane: bool, confidence: bool) -> list[str]:
    size, surface = ("area", "perimeter") if flat else ("volume", "surface_area")
    keys = ["id", "t", "centroid_z", "centroid_y", "centroid_x", size, surface,
            "equivalent_diameter", "major_axis_length", "minor_axis_length", "elongation",
            "neighbours"]
    if with_membrane:
        keys.append("border_membrane")
    if confidence:
        keys.append("confidence")
    return keys + ["parent", "track"]


def _region(region: CellRegion, spacing: tuple[float, float, float], flat: bool,
            parents: dict[int, int], lineage: dict[int, int]) -> dict[str, np.ndarray]:
    """The rows of one region's own cells (positions in the whole frame's coordinates)."""
    context, own = region.labels, region.owned()
    membrane = region.membrane
    if flat:
        context, own = context[0], own[0]
        membrane = None if membrane is None else membrane[0]
    sampling = spacing[1:] if flat else spacing
    props = regionprops_table(own, spacing=sampling, properties=_PROPS)
    ids = props["label"].astype(np.int64)
    n = len(ids)
    shift = np.asarray(region.origin, dtype=np.float64) * np.asarray(spacing)
    major, minor = props["axis_major_length"], props["axis_minor_length"]
    pairs, _ = touching_pairs(context)
    counts = np.bincount(pairs.ravel(), minlength=int(ids.max()) + 1)
    out: dict[str, np.ndarray] = {
        "id": ids,
        "t": np.full(n, region.t, dtype=np.int64),
        "centroid_z": np.zeros(n) if flat else props["centroid-0"] + shift[0],
        "centroid_y": props["centroid-0" if flat else "centroid-1"] + shift[1],
        "centroid_x": props["centroid-1" if flat else "centroid-2"] + shift[2],
        "equivalent_diameter": props["equivalent_diameter_area"],
        "major_axis_length": major,
        "minor_axis_length": minor,
        "elongation": np.divide(major, minor, out=np.full(n, np.inf), where=minor > 0),
        "neighbours": counts[ids],
        "parent": np.array([parents.get(int(i), 0) for i in ids], dtype=np.int64),
        "track": np.array([lineage.get(int(i), int(i)) for i in ids], dtype=np.int64),
    }
    boxes = [tuple(slice(int(props[f"bbox-{k}"][i]), int(props[f"bbox-{k + own.ndim}"][i]))
                   for k in range(own.ndim)) for i in range(n)]
    if flat:
        out["area"] = props["area"]
        out["perimeter"] = np.array([_perimeter(own, i, box, sampling)
                                     for i, box in zip(ids, boxes)])
    else:
        out["volume"] = props["area"]
        out["surface_area"] = np.array([_surface(own, i, box, sampling)
                                        for i, box in zip(ids, boxes)])
    if membrane is not None:
        border = find_boundaries(context, mode="inner")
        with np.errstate(invalid="ignore"):  # a cell with no border (it fills the frame): NaN
            means = ndi.mean(np.asarray(membrane, dtype=np.float64),
                             labels=np.where(border, own, 0), index=ids)
        out["border_membrane"] = np.asarray(means, dtype=np.float64)
    return out


def _crop(frame: np.ndarray, cell: int, box: tuple[slice, ...]) -> np.ndarray:
    """The cell's mask in its bounding box, padded by one pixel so its outline is closed."""
    return np.pad(frame[box] == cell, 1).astype(np.float32)


def _perimeter(frame: np.ndarray, cell: int, box, sampling: Sequence[float]) -> float:
    """Length of the cell's outline (at half height between pixel centres), in spacing units."""
    total = 0.0
    for contour in find_contours(_crop(frame, cell, box), 0.5):
        steps = np.diff(contour * np.asarray(sampling), axis=0)
        total += float(np.hypot(steps[:, 0], steps[:, 1]).sum())
    return total


def _surface(frame: np.ndarray, cell: int, box, sampling: Sequence[float]) -> float:
    """Surface area of the cell's smoothed mask: raw voxel staircases overestimate a smooth
    surface by 10-20 % (more with coarse z); a blur of half the coarsest spacing brings a ball
    within ~4 % of 4 pi r^2."""
    sigma = [0.5 * max(sampling) / s for s in sampling]
    pad = [int(np.ceil(2 * g)) + 1 for g in sigma]
    mask = np.pad(frame[box] == cell, [(p, p) for p in pad]).astype(np.float32)
    mask = ndi.gaussian_filter(mask, sigma)
    if mask.max() <= 0.5:  # too thin to survive the blur: fall back to the raw mask
        mask = _crop(frame, cell, box)
    verts, faces, _, _ = marching_cubes(mask, 0.5, spacing=tuple(sampling))
    return float(mesh_surface_area(verts, faces))


def write_csv(table: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write table columns as CSV (header row first), atomically: temp file, then rename."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UnetslError(f"folder for table {path} does not exist")
    keys = list(table)
    lengths = {len(table[k]) for k in keys}
    if len(lengths) > 1:
        raise UnetslError(f"table columns for {path} differ in length: {sorted(lengths)}")
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(keys)
        for row in zip(*(table[k] for k in keys)):
            writer.writerow([_cell(v) for v in row])
    return path


def _cell(value) -> str | int:
    if isinstance(value, (np.integer, int)):
        return int(value)
    return f"{float(value):.6g}"
