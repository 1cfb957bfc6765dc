"""How good is a prediction: pixel, tolerant-skeleton and cell-instance scores against the truth.

The original ActiveUnetSegmentation had no pixel-level precision/recall or per-label IoU; its
``evaluate_prediction`` was broken. Here a predicted label image (what ``predict_image``
writes) is compared with a truth label image of the same shape, in three ways:

- **per label** (one label = one channel of the labeller, e.g. one bit of multiclass labels):
  IoU, Dice (= pixel F1), precision and recall, counted over all pixels of the image;
- **within a tolerance** for thin (skeleton) labels such as membranes: a predicted pixel
  counts as correct when a true pixel lies within ``tolerance`` pixels (Euclidean, in the y-x
  plane of its slice), and a true pixel counts as found when a predicted pixel lies that
  close, as in the boundary F-measure; a membrane drawn 1 px off scores 1 with tolerance 1;
- **per cell**: cells are the 4-connected regions of non-membrane pixels of each y-x plane
  (every time frame and z-slice on its own), optionally grown over the membrane by a
  watershed; a predicted and a true cell match when their IoU exceeds 0.5 (such matches are
  one-to-one); precision, recall, F1 and mean IoU of the matched cells follow.

Arrays are label images of shape (..., y, x): the leading axes (time, z) are independent
planes. The prediction is decoded by the labeller's reduction (multiclass: bit k -> channel
k; categorical: 2^k -> channel k, 0 -> background channel), the truth by the labeller itself
(so "double membrane labels" compares with the dilated truth the model was trained on).
Nothing here prints or exits; the ``evaluate_prediction`` command formats the result.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from unetsl.atomic import atomic_write_text
from unetsl.data.labellers import Labeller, categorical_labels, get_labeller, multiclass_labels
from unetsl.errors import UnetslError
from unetsl.evaluate.cell_scores import (
    _NAN,
    CELL_METHODS,
    CellScores,
    _planes,
    _ratio,
    _same_shape,
    cell_scores,
)
from unetsl.evaluate.label_files import read_label_pair

__all__ = [
    "CELL_METHODS",
    "CellScores",
    "Evaluation",
    "LabelScores",
    "RegressionScores",
    "cell_scores",
    "evaluate",
    "evaluate_files",
    "infer_n_labels",
    "pixel_scores",
    "tolerant_scores",
    "write_json",
]

#: How cells are made from the membrane: plain connected components, or components grown
#: over the membrane pixels by a watershed (cells then tile the plane).



@dataclass(frozen=True)
class LabelScores:
    """Scores of one label (channel); NaN where undefined (e.g. precision with nothing predicted).

    tolerance is None for labels that are not thin structures (and for tolerance 0); the
    ``tolerant_*`` fields are then None too.
    """

    name: str
    channel: int
    truth_pixels: int
    predicted_pixels: int
    true_positives: int
    iou: float
    dice: float
    precision: float
    recall: float
    tolerance: float | None = None
    tolerant_precision: float | None = None
    tolerant_recall: float | None = None
    tolerant_f1: float | None = None




@dataclass(frozen=True)
class RegressionScores:
    """Scores of a linear (e.g. distance-transform) prediction."""

    mean_absolute_error: float
    root_mean_square_error: float
    max_absolute_error: float


@dataclass
class Evaluation:
    """Everything ``evaluate`` measured; ``table()`` for people, ``to_dict()`` for JSON."""

    labeller: str
    n_labels: int
    shape: tuple[int, ...]
    tolerance: float
    labels: list[LabelScores] = field(default_factory=list)
    cells: CellScores | None = None
    regression: RegressionScores | None = None
    prediction: str | None = None
    truth: str | None = None

    def to_dict(self) -> dict:
        """Plain JSON-ready dict; undefined scores (NaN) become None (JSON null)."""
        return _json_ready(asdict(self))

    def table(self) -> str:
        """The scores as a plain-text table (what ``evaluate_prediction`` prints)."""
        lines = []
        if self.prediction or self.truth:
            lines.append(f"prediction: {self.prediction}")
            lines.append(f"truth:      {self.truth}")
        planes = int(np.prod(self.shape[:-2])) if len(self.shape) > 2 else 1
        lines.append(f"labeller:   {self.labeller}, {self.n_labels} label"
                     f"{'s' if self.n_labels != 1 else ''}; {planes} plane"
                     f"{'s' if planes != 1 else ''} of {self.shape[-2]} x {self.shape[-1]} "
                     "(y x) pixels")
        if self.labels:
            lines.append("")
            lines.extend(_label_table(self.labels, self.tolerance))
        if self.cells is not None:
            c = self.cells
            grown = ", grown by watershed" if c.method == "watershed" else ""
            small = f", at least {c.min_size} px" if c.min_size > 1 else ""
            lines.append("")
            lines.append(f"cells (4-connected non-membrane regions per plane{grown}{small}; "
                         f"matched at IoU > {_num(c.iou_threshold)}):")
            lines.append(f"  truth {c.truth_cells}  predicted {c.predicted_cells}  "
                         f"matched {c.matched}  precision {_fmt(c.precision)}  "
                         f"recall {_fmt(c.recall)}  F1 {_fmt(c.f1)}  "
                         f"mean matched IoU {_fmt(c.mean_matched_iou)}")
        if self.regression is not None:
            r = self.regression
            lines.append("")
            lines.append(f"mean absolute error {r.mean_absolute_error:.4g}  "
                         f"root mean square error {r.root_mean_square_error:.4g}  "
                         f"max absolute error {r.max_absolute_error:.4g}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# pixel scores


def pixel_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """IoU, Dice, precision and recall of two boolean masks, counted over all their pixels.

    Parameters
    ----------
    predicted, truth : boolean ndarrays of the same shape (any axes)

    Returns
    -------
    dict with "truth_pixels", "predicted_pixels", "true_positives" (ints) and "iou",
    "dice", "precision", "recall" (floats; NaN when the denominator is 0, e.g. precision
    when nothing is predicted, IoU when both masks are empty). Dice equals the pixel F1.
    """
    predicted = np.asarray(predicted, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    _same_shape(predicted, truth)
    tp = int(np.count_nonzero(predicted & truth))
    n_pred = int(np.count_nonzero(predicted))
    n_true = int(np.count_nonzero(truth))
    union = n_pred + n_true - tp
    return {
        "truth_pixels": n_true,
        "predicted_pixels": n_pred,
        "true_positives": tp,
        "iou": _ratio(tp, union),
        "dice": _ratio(2 * tp, n_pred + n_true),
        "precision": _ratio(tp, n_pred),
        "recall": _ratio(tp, n_true),
    }


def tolerant_scores(predicted: np.ndarray, truth: np.ndarray,
                    tolerance: float) -> tuple[float, float, float]:
    """Precision, recall and F1 of thin structures, forgiving misplacement up to ``tolerance``.

    A predicted pixel is correct when its Euclidean distance to the nearest true pixel of the
    same y-x plane is at most ``tolerance`` pixels (distance transform of the truth); a true
    pixel is found when a predicted pixel lies that close. This is the boundary F-measure
    without its one-to-one matching, so a thick prediction around a thin truth still scores
    full precision; the exact scores of :func:`pixel_scores` show the thickness.

    Parameters
    ----------
    predicted, truth : (..., y, x) boolean ndarrays of the same shape; leading axes (t, z)
        are independent planes (no tolerance across slices or frames)
    tolerance : distance in pixels, >= 0 (1 accepts 4-neighbours, 1.5 diagonal ones too)

    Returns
    -------
    (precision, recall, f1) : floats; precision is NaN with nothing predicted, recall NaN
    with nothing true, F1 NaN when both are empty and 0 when only one is.
    """
    if not tolerance >= 0:
        raise UnetslError(f"tolerance must be >= 0 pixels, got {tolerance}")
    predicted = _planes(np.asarray(predicted, dtype=bool), "prediction")
    truth = _planes(np.asarray(truth, dtype=bool), "truth")
    _same_shape(predicted, truth)
    limit = tolerance + 1e-9
    pred_ok = true_ok = 0
    for pred_plane, true_plane in zip(predicted, truth):
        if pred_plane.any() and true_plane.any():
            pred_ok += int(np.count_nonzero(
                pred_plane & (ndimage.distance_transform_edt(~true_plane) <= limit)))
            true_ok += int(np.count_nonzero(
                true_plane & (ndimage.distance_transform_edt(~pred_plane) <= limit)))
    n_pred = int(np.count_nonzero(predicted))
    n_true = int(np.count_nonzero(truth))
    precision = _ratio(pred_ok, n_pred)
    recall = _ratio(true_ok, n_true)
    if n_pred == 0 and n_true == 0:
        f1 = _NAN
    elif n_pred == 0 or n_true == 0 or precision + recall == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    return precision, recall, f1


# ---------------------------------------------------------------------------------------------
# whole images


def infer_n_labels(prediction: np.ndarray, truth: np.ndarray,
                   labeller: str | Labeller = "multiclass") -> int:
    """The number of labels (channels) the values of the two images call for.

    multiclass / double membrane: bits up to the largest value of either image (3 -> 2);
    categorical: those bits plus the background channel (at least 2); region labels: from
    the prediction (written by the categorical reduction); linear: 1.
    """
    lab = get_labeller(labeller)
    if lab.reduction == "linear":
        return 1
    images = (prediction,) if lab.name == "region labels" else (prediction, truth)
    largest = max(_largest_integer(np.asarray(image)) for image in images)
    bits = largest.bit_length()
    if lab.reduction == "categorical":
        return max(2, bits + 1)
    return max(1, bits)


def evaluate(prediction: np.ndarray, truth: np.ndarray, *,
             labeller: str | Labeller = "multiclass", n_labels: int | None = None,
             tolerance: float = 1.0, cells: str | None = "components",
             iou_threshold: float = 0.5, min_cell_size: int = 0,
             skeleton_channels: Sequence[int] | None = None,
             prediction_name: str = "prediction", truth_name: str = "truth") -> Evaluation:
    """Score a predicted label image against the true label image.

    Parameters
    ----------
    prediction : (..., y, x) ndarray, e.g. (t, z, y, x): the label image ``predict_image``
        writes (values of the labeller's reduction); leading axes are independent planes
    truth : ndarray of the same shape: the label image the model should have produced
    labeller : the labeller the model was trained with (name, short name or menu number)
    n_labels : channels to score; None = :func:`infer_n_labels`. For multiclass labels a
        smaller number ignores the higher bits (1 = membrane only).
    tolerance : pixels for the tolerant scores of the skeleton channels; 0 = exact only
    cells : "components", "watershed" (see :func:`cell_labels`) or None for no cell scores
    iou_threshold : cells match when their IoU is above it (see :func:`match_cells`)
    min_cell_size : regions smaller than this are not cells (see :func:`cell_labels`)
    skeleton_channels : channels that are thin structures: they get tolerant scores and their
        union is the membrane that encloses cells. None = every label channel (multiclass,
        double membrane), all but the background (categorical), channel 0 (region labels).
    prediction_name, truth_name : how error messages name the two images (file names)

    Returns
    -------
    Evaluation; linear labels get regression scores instead of label and cell scores.
    """
    lab = get_labeller(labeller)
    prediction = np.asarray(prediction)
    truth = np.asarray(truth)
    if prediction.shape != truth.shape:
        raise UnetslError(f"{prediction_name} has shape {prediction.shape} but {truth_name} "
                          f"has shape {truth.shape}; both images must be the same size")
    if prediction.ndim < 2 or prediction.size == 0:
        raise UnetslError(f"{prediction_name}: expected a (..., y, x) label image, got shape "
                          f"{prediction.shape}")
    if not tolerance >= 0:
        raise UnetslError(f"tolerance must be >= 0 pixels, got {tolerance}")
    if cells is not None and cells not in CELL_METHODS:
        raise UnetslError(f"cell method {cells!r} must be one of {', '.join(CELL_METHODS)}")
    result = Evaluation(labeller=lab.name, n_labels=1, shape=tuple(prediction.shape),
                        tolerance=float(tolerance))
    if lab.reduction == "linear":
        result.regression = _regression(prediction, truth, prediction_name, truth_name)
        return result

    n = infer_n_labels(prediction, truth, lab) if n_labels is None else int(n_labels)
    least = 2 if lab.reduction == "categorical" else 1
    if n < least:
        raise UnetslError(f"{lab.name} need n labels >= {least}, got {n}")
    result.n_labels = n
    decode = multiclass_labels if lab.reduction == "multiclass" else categorical_labels
    pred_channels = _channels(decode, prediction, n, prediction_name)
    true_channels = _channels(lab.function, truth, n, truth_name)
    thin = _skeleton_channels(lab, n, skeleton_channels)

    names = _label_names(lab, n)
    for k in range(n):
        scores = pixel_scores(pred_channels[k], true_channels[k])
        tolerant: dict = {}
        if k in thin and tolerance > 0:
            p, r, f = tolerant_scores(pred_channels[k], true_channels[k], tolerance)
            tolerant = {"tolerance": float(tolerance), "tolerant_precision": p,
                        "tolerant_recall": r, "tolerant_f1": f}
        result.labels.append(LabelScores(name=names[k], channel=k, **scores, **tolerant))

    if cells is not None and thin:
        result.cells = cell_scores(pred_channels[thin].any(axis=0),
                                   true_channels[thin].any(axis=0), method=cells,
                                   iou_threshold=iou_threshold, min_size=min_cell_size)
    return result


def evaluate_files(prediction_path: str | os.PathLike, truth_path: str | os.PathLike,
                   **options) -> Evaluation:
    """Read two label images (TIFF or .npy) and :func:`evaluate` them.

    Both must have the same (t, c, z, y, x) shape and one channel; errors name both files.
    ``options`` are those of :func:`evaluate`.
    """
    pred_name, true_name = str(prediction_path), str(truth_path)
    prediction, truth = read_label_pair(prediction_path, truth_path, "prediction")
    result = evaluate(prediction[:, 0], truth[:, 0], prediction_name=pred_name,
                      truth_name=true_name, **options)
    result.prediction, result.truth = pred_name, true_name
    result.shape = tuple(prediction.shape)
    return result


def write_json(evaluation: Evaluation, path: str | os.PathLike) -> None:
    """Write ``evaluation.to_dict()`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(evaluation.to_dict(), indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# helpers


def _channels(function, label: np.ndarray, n: int, name: str) -> np.ndarray:
    """(n, planes, y, x) bool channels of ``label`` by a labeller function, errors naming it."""
    planes = label.reshape((-1, *label.shape[-2:]))
    try:
        return function(planes, n).astype(bool)
    except UnetslError as err:
        raise UnetslError(f"{name}: {err}") from None


def _skeleton_channels(lab: Labeller, n: int, chosen: Sequence[int] | None) -> list[int]:
    if chosen is not None:
        channels = sorted({int(k) for k in chosen})
        bad = [k for k in channels if not 0 <= k < n]
        if bad:
            raise UnetslError(f"skeleton channels {bad} are outside 0..{n - 1}")
        return channels
    if lab.name == "region labels":
        return [0]
    if lab.reduction == "categorical":
        return list(range(n - 1))
    return list(range(n))


def _label_names(lab: Labeller, n: int) -> list[str]:
    if lab.name == "region labels":
        return ["membrane"] + [f"region {k}" for k in range(1, n)]
    if lab.reduction == "categorical":
        return [str(1 << k) for k in range(n - 1)] + ["0 (background)"]
    return [str(1 << k) for k in range(n)]


def _regression(prediction: np.ndarray, truth: np.ndarray, pred_name: str,
                true_name: str) -> RegressionScores:
    for name, data in ((pred_name, prediction), (true_name, truth)):
        if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
            raise UnetslError(f"{name}: linear labels need real numbers, got {data.dtype}")
    error = np.abs(prediction.astype(np.float64) - truth.astype(np.float64))
    return RegressionScores(
        mean_absolute_error=float(error.mean()),
        root_mean_square_error=float(np.sqrt(np.mean(error**2))),
        max_absolute_error=float(error.max()),
    )


def _largest_integer(data: np.ndarray) -> int:
    if data.size == 0 or not np.issubdtype(data.dtype, np.number) and data.dtype != np.bool_:
        return 0
    largest = data.max()
    if not np.isfinite(largest) or largest < 1:
        return 0  # the labeller reports bad values when decoding
    return int(largest)








def _json_ready(value):
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def _num(value: float) -> str:
    return f"{value:g}"


def _label_table(labels: list[LabelScores], tolerance: float) -> list[str]:
    tolerant = any(s.tolerance is not None for s in labels)
    header = ["label", "truth px", "predicted px", "IoU", "Dice/F1", "precision", "recall"]
    if tolerant:
        within = f"±{_num(tolerance)} px"
        header += [f"precision {within}", f"recall {within}", f"F1 {within}"]
    rows = [header]
    for s in labels:
        row = [s.name, str(s.truth_pixels), str(s.predicted_pixels), _fmt(s.iou), _fmt(s.dice),
               _fmt(s.precision), _fmt(s.recall)]
        if tolerant:
            row += [_fmt(s.tolerant_precision), _fmt(s.tolerant_recall), _fmt(s.tolerant_f1)]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
            for row in rows]
