"""Instance-level scores of a cell segmentation against true cell ids.

Pixel scores cannot tell one cell from two touching ones; these match cells one to one by
intersection over union (IoU) and score the matching, the way cell-segmentation papers do.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from skimage.metrics import adapted_rand_error, variation_of_information

from unetsl.cells.tracking import read_ctc_tracks, tracks_path, whole_tracks
from unetsl.errors import UnetslError
from unetsl.evaluate.cell_scores import cell_labels, overlapping_pairs
from unetsl.evaluate.label_files import read_label_pair

IOU_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))


def match(truth: np.ndarray, predicted: np.ndarray, threshold: float = 0.5
          ) -> tuple[dict[int, int], np.ndarray]:
    """One-to-one matching of cells with IoU >= threshold: ({true id: predicted id}, IoUs).

    For threshold >= 0.5 a cell overlaps at most one other by more than half its union, so
    greedy matching by decreasing IoU is the optimal matching (and needs no dense matrix).
    """
    if threshold < 0.5:
        raise UnetslError(f"IoU threshold {threshold} must be >= 0.5 for a unique matching")
    tid, pid, iou = overlapping_pairs(truth, predicted)
    pairs: dict[int, int] = {}
    used: set[int] = set()
    ious = []
    for k in np.argsort(-iou, kind="stable"):
        if iou[k] < threshold:
            break
        if int(tid[k]) in pairs or int(pid[k]) in used:
            continue
        pairs[int(tid[k])] = int(pid[k])
        used.add(int(pid[k]))
        ious.append(iou[k])
    return pairs, np.array(ious)


def _frames(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None, None]
    if array.ndim != 4:
        raise UnetslError(f"{what} must be (t, z, y, x) labels, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise UnetslError(f"{what} must be integer cell ids, got dtype {array.dtype}")
    return array


def instance_scores(truth: np.ndarray, predicted: np.ndarray,
                    same_cell: dict[int, int] | None = None) -> dict:
    """F1/precision/recall at IoU 0.5, AP over IoU 0.5..0.95, mean matched IoU, adapted Rand
    error, VOI split/merge, per-frame F1 and (time series) identity kept.

    Counts are pooled over frames (every frame is matched on its own); Rand and VOI are the mean
    over frames. AP at one threshold is matched / (matched + false positives + false negatives).
    ``identity_kept``: of the true cells present in >= 2 frames and matched (IoU >= 0.5) in at
    least 2 of them, the fraction matched to one single predicted id (None if there are none);
    cells matched in fewer frames are detection misses, which F1 already counts.
    ``same_cell`` maps predicted ids that are pieces of one cell to one id (a track split at a
    gap: :func:`unetsl.cells.whole_tracks`), so that a gap is not an identity switch.
    """
    truth = _frames(truth, "truth")
    predicted = _frames(predicted, "predicted")
    if truth.shape != predicted.shape:
        raise UnetslError(f"truth shape {truth.shape} differs from predicted {predicted.shape}")
    n_true = n_pred = 0
    hits = np.zeros(len(IOU_THRESHOLDS))
    matched_ious: list[np.ndarray] = []
    per_frame_f1: list[float] = []
    rand: list[float] = []
    split: list[float] = []
    merge: list[float] = []
    matches: list[dict[int, int]] = []
    for t in range(truth.shape[0]):
        true_frame, pred_frame = truth[t], predicted[t]
        nt = len(np.unique(true_frame[true_frame > 0]))
        n_p = len(np.unique(pred_frame[pred_frame > 0]))
        pairs, ious = match(true_frame, pred_frame, 0.5)
        matches.append(pairs)
        n_true += nt
        n_pred += n_p
        hits += [(ious >= th).sum() for th in IOU_THRESHOLDS]
        matched_ious.append(ious)
        per_frame_f1.append(_f1(len(pairs), nt, n_p))
        if nt and n_p:
            rand.append(float(adapted_rand_error(true_frame, pred_frame)[0]))
            vi = variation_of_information(true_frame, pred_frame, ignore_labels=(0,))
            split.append(float(vi[0]))
            merge.append(float(vi[1]))
    tp = hits[0]
    ap = [h / max(n_true + n_pred - h, 1) for h in hits]
    all_ious = np.concatenate(matched_ious) if matched_ious else np.zeros(0)
    return {
        "f1": _f1(tp, n_true, n_pred),
        "precision": float(tp / n_pred) if n_pred else 0.0,
        "recall": float(tp / n_true) if n_true else 0.0,
        "ap": float(np.mean(ap)),
        "ap_per_threshold": {f"{th:.2f}": float(a) for th, a in zip(IOU_THRESHOLDS, ap)},
        "mean_matched_iou": float(all_ious.mean()) if all_ious.size else 0.0,
        "adapted_rand_error": float(np.mean(rand)) if rand else 1.0,
        "voi_split": float(np.mean(split)) if split else 0.0,
        "voi_merge": float(np.mean(merge)) if merge else 0.0,
        "per_frame_f1": per_frame_f1,
        "identity_kept": identity_kept(truth, _joined(matches, same_cell or {})),
        "n_true": int(n_true),
        "n_predicted": int(n_pred),
    }


def per_frame_f1(truth: np.ndarray, predicted: np.ndarray) -> list[float]:
    """F1 at IoU 0.5 of each frame, to spot the frames where segmentation fails."""
    truth = _frames(truth, "truth")
    predicted = _frames(predicted, "predicted")
    out = []
    for t in range(truth.shape[0]):
        pairs, _ = match(truth[t], predicted[t], 0.5)
        nt = len(np.unique(truth[t][truth[t] > 0]))
        n_p = len(np.unique(predicted[t][predicted[t] > 0]))
        out.append(_f1(len(pairs), nt, n_p))
    return out


def _joined(matches: list[dict[int, int]], same_cell: dict[int, int]
            ) -> list[dict[int, int]]:
    return [{true: same_cell.get(found, found) for true, found in m.items()} for m in matches]


def identity_kept(truth: np.ndarray, matches: list[dict[int, int]]) -> float | None:
    """Fraction of true cells matched in >= 2 frames that are matched to one predicted id."""
    frames_of: dict[int, int] = {}
    for t in range(truth.shape[0]):
        for cell in np.unique(truth[t]):
            if cell:
                frames_of[int(cell)] = frames_of.get(int(cell), 0) + 1
    long_lived = [c for c, n in frames_of.items() if n >= 2]
    if not long_lived or truth.shape[0] < 2:
        return None
    judged = kept = 0
    for cell in long_lived:
        found = [m[cell] for m in matches if cell in m]
        if len(found) < 2:  # never seen twice: a detection miss (F1), not an identity error
            continue
        judged += 1
        kept += len(set(found)) == 1
    return kept / judged if judged else None


def _f1(tp: float, n_true: int, n_pred: int) -> float:
    return float(2 * tp / (n_true + n_pred)) if n_true + n_pred else 1.0


# ---------------------------------------------------------------------------------------------
# files


def truth_instances(truth: np.ndarray) -> tuple[np.ndarray, str]:
    """True cells (t, z, y, x) from a truth image: instance ids as they are, or, for a
    membrane label mask (at most 3 distinct non-zero values, bit 0 = membrane), the cells
    the membrane encloses grown over it (watershed), plane by plane."""
    values = np.unique(truth)
    nonzero = values[values != 0]
    if nonzero.size <= 3 and np.all(nonzero == np.round(nonzero)):

        membrane = (truth.astype(np.int64) & 1) > 0
        planes = cell_labels(membrane, method="watershed")
        cells = np.zeros(planes.shape, dtype=np.int64)
        offset = 0
        flat = cells.reshape(-1, *cells.shape[-2:])
        for i, plane in enumerate(planes.reshape(-1, *planes.shape[-2:])):
            flat[i] = np.where(plane > 0, plane + offset, 0)
            offset += int(plane.max())
        return cells, "cells enclosed by the true membrane (label bit 0), grown over it"
    return truth.astype(np.int64), "cell ids of the truth image"


def drop_small(cells: np.ndarray, min_size: int) -> np.ndarray:
    """Cells (t, z, y, x) with objects smaller than ``min_size`` pixels in a frame set to 0,
    e.g. slivers of cells cut by the image border that no method can find."""
    if min_size <= 1:
        return cells
    out = cells.copy()
    for frame in out:
        ids, sizes = np.unique(frame, return_counts=True)
        small = ids[(sizes < min_size) & (ids != 0)]
        frame[np.isin(frame, small)] = 0
    return out


def evaluate_instance_files(prediction_path: str | os.PathLike,
                            truth_path: str | os.PathLike, *,
                            min_size: int = 0) -> dict[str, Any]:
    """Instance scores of a cell label image (segment_cells' output) against the truth
    (instance ids, or a membrane label mask: see :func:`truth_instances`); objects smaller
    than ``min_size`` pixels are left out of both. The prediction's track file
    (``<name>-res_track.txt``), when present, joins a cell's pieces across gaps."""
    prediction, truth = read_label_pair(prediction_path, truth_path, "cells")
    for name, data in ((prediction_path, prediction), (truth_path, truth)):
        if not np.issubdtype(data.dtype, np.integer) and np.any(data != np.round(data)):
            raise UnetslError(f"{name} holds fractional values; --instances compares label "
                              "images of cell ids (segment_cells' output)")
    true_cells, how = truth_instances(truth[:, 0])
    true_cells = drop_small(true_cells, min_size)
    found = drop_small(prediction[:, 0].astype(np.int64), min_size)
    track_file = tracks_path(prediction_path)
    same_cell = whole_tracks(read_ctc_tracks(track_file)) if track_file.is_file() else None
    scores = instance_scores(true_cells, found, same_cell)
    scores["tracks"] = str(track_file) if same_cell is not None else None
    scores["per_frame_f1"] = per_frame_f1(true_cells, found)
    scores["min_size"] = int(min_size)
    scores["prediction"], scores["truth"], scores["truth_cells"] = (
        str(prediction_path), str(truth_path), how)
    return scores


def instance_table(scores: dict[str, Any]) -> str:
    """The printed report of :func:`evaluate_instance_files`."""
    frames = scores.get("per_frame_f1") or []
    lines = [
        f"cells:       {scores['prediction']}",
        f"truth:       {scores['truth']} ({scores['truth_cells']})"
        + (f"; cells under {scores['min_size']} px left out" if scores.get("min_size") else ""),
        f"cells found {scores['n_predicted']}, true {scores['n_true']}",
        f"F1 {scores['f1']:.3f}  precision {scores['precision']:.3f}  recall "
        f"{scores['recall']:.3f}  (IoU > 0.5)",
        f"AP (IoU 0.5..0.95) {scores['ap']:.3f}  mean matched IoU "
        f"{scores['mean_matched_iou']:.3f}",
        f"adapted Rand error {scores['adapted_rand_error']:.3f}  VOI split "
        f"{scores['voi_split']:.3f}  merge {scores['voi_merge']:.3f}",
    ]
    if len(frames) > 1:
        lines.append("F1 per time point: " + " ".join(f"{f:.3f}" for f in frames))
    if scores.get("identity_kept") is not None:
        joined = f" (pieces joined by {scores['tracks']})" if scores.get("tracks") else ""
        lines.append(f"identity kept over time: {scores['identity_kept']:.3f} of true cells "
                     f"seen in 2+ frames keep one id{joined}")
    return "\n".join(lines)
