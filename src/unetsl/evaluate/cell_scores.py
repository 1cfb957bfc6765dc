"""Cells from membrane masks and their one-to-one matching, for cell-instance scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from skimage import measure, segmentation

from unetsl.errors import UnetslError

CELL_METHODS = ("components", "watershed")


_NAN = float("nan")


@dataclass(frozen=True)
class CellScores:
    """Cell-instance scores, pooled over every y-x plane of the image."""

    method: str
    iou_threshold: float
    min_size: int
    truth_cells: int
    predicted_cells: int
    matched: int
    precision: float
    recall: float
    f1: float
    mean_matched_iou: float


def _planes(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim < 2:
        raise UnetslError(f"{name or 'image'}: expected (..., y, x), got shape {array.shape}")
    return array.reshape((-1, *array.shape[-2:]))


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise UnetslError(f"prediction shape {a.shape} differs from truth shape {b.shape}")


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / denominator if denominator else _NAN

# cell instances


def cell_labels(membrane: np.ndarray, *, method: str = "components",
                min_size: int = 0) -> np.ndarray:
    """Cells enclosed by a membrane skeleton, numbered 1..n in every y-x plane.

    Parameters
    ----------
    membrane : (..., y, x) boolean ndarray, True on membrane pixels; leading axes are
        independent planes (cells never connect across slices or frames)
    method : "components": the 4-connected regions of non-membrane pixels, membrane pixels
        stay 0; "watershed": those regions grown over the membrane (flooding from the
        middle of each cell), so that cells tile the plane
    min_size : regions smaller than this many pixels are not cells (they stay 0, and are no
        watershed seed), e.g. to ignore holes inside a thick predicted membrane

    Returns
    -------
    (..., y, x) int32 ndarray; 0 = no cell; numbering restarts in every plane
    """
    if method not in CELL_METHODS:
        raise UnetslError(f"cell method {method!r} must be one of {', '.join(CELL_METHODS)}")
    membrane = np.asarray(membrane, dtype=bool)
    planes = _planes(membrane, "membrane")
    cells = np.zeros(planes.shape, dtype=np.int32)
    for i, plane in enumerate(planes):
        regions = measure.label(~plane, connectivity=1, background=0)
        if min_size > 1 and regions.max() > 0:
            sizes = np.bincount(regions.ravel())
            keep = sizes >= min_size
            keep[0] = False
            renumber = np.zeros(sizes.size, dtype=np.int64)
            renumber[keep] = np.arange(1, np.count_nonzero(keep) + 1)
            regions = renumber[regions]
        if method == "watershed" and regions.max() > 0 and plane.any():
            height = ndimage.distance_transform_edt(regions == 0)
            regions = segmentation.watershed(height, markers=regions)
        cells[i] = regions
    return cells.reshape(membrane.shape)


def overlapping_pairs(truth: np.ndarray, predicted: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true ids, predicted ids, IoU) of every overlapping pair of non-zero labels (sparse, so
    stacks with many thousands of cells stay cheap)."""
    t = truth.ravel().astype(np.int64)
    p = predicted.ravel().astype(np.int64)
    area_t = np.bincount(t)
    area_p = np.bincount(p)
    both = (t > 0) & (p > 0)
    base = int(p.max()) + 1
    keys, inter = np.unique(t[both] * base + p[both], return_counts=True)
    tid, pid = keys // base, keys % base
    iou = inter / (area_t[tid] + area_p[pid] - inter)
    return tid, pid, iou


def match_cells(truth_cells: np.ndarray, predicted_cells: np.ndarray, *,
                iou_threshold: float = 0.5) -> list[tuple[int, int, float]]:
    """One-to-one matches between true and predicted cells of one plane with IoU > threshold.

    For a threshold >= 0.5 the matches are unique by construction (two cells cannot both
    overlap a third by more than half of their union); below 0.5 the assignment maximising
    the summed IoU is taken (scipy's linear_sum_assignment).

    Parameters
    ----------
    truth_cells, predicted_cells : (y, x) (or any shape, the same) integer ndarrays, 0 = no
        cell, k > 0 = cell k
    iou_threshold : in [0, 1)

    Returns
    -------
    list of (truth label, predicted label, IoU), sorted by truth label
    """
    if not 0 <= iou_threshold < 1:
        raise UnetslError(f"IoU threshold must be in [0, 1), got {iou_threshold}")
    t = np.asarray(truth_cells).ravel().astype(np.int64)
    p = np.asarray(predicted_cells).ravel().astype(np.int64)
    if t.shape != p.shape:
        raise UnetslError(f"cell images differ in size: {t.size} vs {p.size} pixels")
    if t.size == 0 or t.max() <= 0 or p.max() <= 0:
        return []
    if t.min() < 0 or p.min() < 0:
        raise UnetslError("cell labels must be >= 0")
    ti, pi, iou = overlapping_pairs(t, p)
    candidate = iou > iou_threshold
    ti, pi, iou = ti[candidate], pi[candidate], iou[candidate]
    if iou_threshold < 0.5 and ti.size:
        rows, row_of = np.unique(ti, return_inverse=True)
        cols, col_of = np.unique(pi, return_inverse=True)
        matrix = np.zeros((rows.size, cols.size))
        matrix[row_of, col_of] = iou
        r, c = linear_sum_assignment(matrix, maximize=True)
        chosen = matrix[r, c] > iou_threshold
        ti, pi, iou = rows[r[chosen]], cols[c[chosen]], matrix[r[chosen], c[chosen]]
    order = np.argsort(ti, kind="stable")
    return [(int(a), int(b), float(v)) for a, b, v in zip(ti[order], pi[order], iou[order])]


def cell_scores(predicted_membrane: np.ndarray, truth_membrane: np.ndarray, *,
                method: str = "components", iou_threshold: float = 0.5,
                min_size: int = 0) -> CellScores:
    """Cell-instance precision, recall, F1 and mean matched IoU from two membrane masks.

    Cells are made by :func:`cell_labels` in each y-x plane of both masks and matched plane
    by plane with :func:`match_cells`; counts are pooled over planes. A missing membrane
    between two true cells gives one predicted cell that matches at most one of them.

    Parameters
    ----------
    predicted_membrane, truth_membrane : (..., y, x) boolean ndarrays of the same shape
    method, min_size : see :func:`cell_labels`
    iou_threshold : see :func:`match_cells`

    Returns
    -------
    CellScores; precision is NaN with no predicted cell, recall NaN with no true cell.
    """
    predicted_membrane = np.asarray(predicted_membrane, dtype=bool)
    truth_membrane = np.asarray(truth_membrane, dtype=bool)
    _same_shape(predicted_membrane, truth_membrane)
    pred_cells = _planes(cell_labels(predicted_membrane, method=method, min_size=min_size), "")
    true_cells = _planes(cell_labels(truth_membrane, method=method, min_size=min_size), "")
    n_pred = int(sum(int(plane.max()) for plane in pred_cells))
    n_true = int(sum(int(plane.max()) for plane in true_cells))
    ious: list[float] = []
    for true_plane, pred_plane in zip(true_cells, pred_cells):
        ious.extend(v for _, _, v in match_cells(true_plane, pred_plane,
                                                 iou_threshold=iou_threshold))
    matched = len(ious)
    return CellScores(
        method=method,
        iou_threshold=float(iou_threshold),
        min_size=int(min_size),
        truth_cells=n_true,
        predicted_cells=n_pred,
        matched=matched,
        precision=_ratio(matched, n_pred),
        recall=_ratio(matched, n_true),
        f1=_ratio(2 * matched, n_pred + n_true),
        mean_matched_iou=float(np.mean(ious)) if ious else _NAN,
    )


# ---------------------------------------------------------------------------------------------
