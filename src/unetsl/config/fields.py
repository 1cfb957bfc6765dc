"""Every config key of the original and of unetsl: spelling, default, type check, documentation."""

from __future__ import annotations

import copy
import difflib
import json
import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unetsl.errors import UnetslError

log = logging.getLogger("unetsl")


Check = Callable[[Any], bool]


@dataclass(frozen=True)
class Field:
    """One config key: the JSON name, its default, a type check and what it means."""

    key: str
    default: Any
    kind: str  # human-readable type, used in error messages and the README
    check: Check
    doc: str
    original_default: Any = None  # set when unetsl changed the original's default
    new: bool = False  # key introduced by unetsl (absent from the original)
    #: what create_model writes into a new config when it differs from ``default`` (the
    #: value a file without the key gets, so that the original's configs behave as before)
    new_config: Any = None


def _ints(n: int, minimum: int) -> Check:
    def check(v: Any) -> bool:
        return (
            isinstance(v, (list, tuple))
            and len(v) == n
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= minimum for i in v)
        )

    return check


def _int(minimum: int) -> Check:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _number(lo: float, hi: float) -> Check:
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def _dict_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(s, dict) for s in v)


def _optional_int(v: Any) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool))


def is_unknown_label(v: Any) -> bool:
    """A valid "unknown label" (:mod:`unetsl.data.partial`): "max", "none" or an int >= 0."""
    if isinstance(v, str):
        return v in ("max", "none")
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _one_of(*choices: str) -> Check:
    return lambda v: v in choices


def _percentiles(v: Any) -> bool:
    return v is None or (
        isinstance(v, list)
        and len(v) == 2
        and all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in v)
        and 0 <= v[0] < v[1] <= 100
    )


#: The "precision" values (their meaning: :mod:`unetsl.nets.precision`).
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")

FIELDS: tuple[Field, ...] = (
    Field("input shape", [1, 3, 64, 64], "4 integers (c, z, y, x)", _ints(4, 1),
          "Patch the network sees: channels, slices, height, width. For a 2D time series "
          "z counts consecutive frames (3 by default)."),
    Field("kernel shape", [3, 3, 3], "3 integers (z, y, x)", _ints(3, 1),
          "Kernel of every hidden convolution."),
    Field("pooling", [1, 2, 2], "3 integers (z, y, x)", _ints(3, 1),
          "Max-pooling / upsampling factor between levels. Use 1 in z for thin stacks."),
    Field("n labels", 1, "integer >= 1", _int(1),
          "Output channels (alias: \"nlabels\")."),
    Field("depth", 3, "integer >= 1", _int(1),
          "Resolution levels of the U-Net (depth - 1 poolings). Each patch size must be "
          "divisible by pooling^(depth-1)."),
    Field("n filters", 32, "integer >= 1", _int(1),
          "Filters of the first convolution, doubled at every level."),
    Field("activation", "sigmoid", "activation name", _is_str,
          "Output activation: sigmoid (multiclass labels), softmax (categorical labels), "
          "relu or linear (linear labels), or any Keras activation."),
    Field("spatial dropout rate", 0.0625, "number in [0, 1)", _number(0.0, 0.999),
          "Spatial dropout after every contracting convolution; 0 disables it."),
    Field("batch normalization", False, "true/false", _is_bool,
          "Batch normalisation after every hidden convolution.", new=True),
    Field("cascade stages", 0, "integer >= 0", _int(0),
          "0 builds one U-Net; N >= 1 chains N U-Nets, stage k seeing the input and the "
          "output of stage k-1, with outputs cascade_0 .. cascade_{N-1}.", new=True),
    Field("initial learning rate", 1e-4, "number > 0", _number(1e-12, 10.0),
          "Learning rate of the optimizer.", original_default=1e-06,
          new_config=1e-3),
    Field("optimizer", "keras.optimizers.Adam", "optimizer name", _is_str,
          "keras.optimizers.Adam or keras.optimizers.SGD."),
    Field("loss function", "unetsl.model.sorensenDiceCoefLoss", "loss name", _is_str,
          "Training loss, by the original's names (unetsl.model.sorensenDiceCoefLoss, "
          "unetsl.model.weightedDiceLoss, unetsl.model.jaccardIndexLoss, "
          "unetsl.model.weightedError, unetsl.model.logMse, "
          "keras.losses.binary_crossentropy, ...), unetsl.batchDiceBceLoss (binary "
          "cross-entropy + a Dice per channel over the whole batch: sparse channels are "
          "learned too, and patches without objects do not collapse the model) or "
          "unetsl.channelDiceBceLoss (the same with a Dice per patch, the default before).",
          new_config="unetsl.batchDiceBceLoss"),
    Field("stride", [0, 3, 32, 32], "4 integers (c, z, y, x)", _ints(4, 0),
          "Step between training patches; element 0 is unused."),
    Field("batch size", 1, "integer >= 1", _int(1),
          "Patches per training step (the global batch with several GPUs)."),
    Field("multi-gpu", False, "true/false", _is_bool,
          "Train data-parallel on the GPUs given by --gpus or GPUS."),
    Field("samples to predict", [], "list of image paths", _str_list,
          "Images predicted after every epoch into predictions/ so you can watch a model learn."),
    Field("normalize samples", False, "true/false", _is_bool,
          "Z-score every input patch per channel (mean 0, std 1)."),
    Field("validation fraction", 0.03125, "number in [0, 1)", _number(0.0, 0.999),
          "Fraction of the training data held out for validation."),
    Field("validation split", "regions", '"regions" or "files"', _one_of("regions", "files"),
          "How validation data are held out: \"regions\" cuts every image into blocks of at "
          "least one patch and holds out whole blocks, \"files\" holds out whole images (time "
          "frames). No validation pixel is ever a training pixel; the split depends only on the "
          "data and \"seed\" (0 when null), so a resumed training keeps it.", new=True),
    Field("normalization percentiles", None, "null or [low, high] percentiles", _percentiles,
          "Scale every image, per channel, so that these intensity percentiles of the whole "
          "image map to 0 and 1 (e.g. [1, 99.8]) before patches are cut; null keeps raw "
          "intensities. Applied before \"normalize samples\". Stored in every model file "
          "training writes, so every prediction path applies it.", new=True,
          new_config=[1, 99.8]),
    Field("sampling", "grid", '"grid", "random" or "foreground"',
          _one_of("grid", "random", "foreground"),
          "Where training patches come from: \"grid\" = every \"stride\" step, the last patch "
          "flush with the border; \"random\" = as many patches at random places; "
          "\"foreground\" = random, with \"foreground fraction\" of them centred on labelled "
          "pixels (for sparse labels).", new=True),
    Field("foreground fraction", 0.5, "number in [0, 1]", _number(0.0, 1.0),
          "With \"sampling\": \"foreground\", the fraction of training patches centred on a "
          "non-zero label pixel.", new=True),
    Field("unknown label", "max", '"max", "none" or an integer >= 0', is_unknown_label,
          "Label value that means 'not labelled here' (partial labels, e.g. a few corrected "
          "cells): left out of the loss, the metrics and the patch choice. \"max\" = the "
          "largest value of the label image's type (255 for 8 bits, 65535 for 16).", new=True),
    Field("patch jitter", [0, 0, 0], "3 integers (z, y, x)", _ints(3, 0),
          "Grid sampling: move every training patch by a random offset of up to this many "
          "pixels (the original always used [0, 10, 10]).", new=True),
    Field("augment flips", False, "true/false", _is_bool,
          "Random flips of training patches in y and x.", new=True,
          new_config=True),
    Field("augment rotate 90", False, "true/false", _is_bool,
          "Random rotations of training patches by multiples of 90 degrees in the y-x plane "
          "(only 0/180 degrees when the patch is not square).", new=True,
          new_config=True),
    Field("augment intensity scale", 0.0, "number in [0, 1)", _number(0.0, 0.999),
          "Multiply every training patch by a random factor in [1 - s, 1 + s].", new=True),
    Field("augment intensity shift", 0.0, "number >= 0", _number(0.0, 1e6),
          "Add a random offset in [-s, s] standard deviations of the patch.", new=True),
    Field("augment elastic", 0.0, "number >= 0 (pixels)", _number(0.0, 1e3),
          "Elastic deformation in the y-x plane: the largest displacement in pixels of a smooth "
          "random field (control points every 16 pixels); 0 disables it. Labels are warped with "
          "nearest neighbour, never interpolated.", new=True),
    Field("patches per epoch", None, "null or integer >= 1",
          lambda v: v is None or _int(1)(v),
          "Training patches drawn each epoch (rounded up to whole batches), whatever the "
          "amount of data: a single small image gets as many useful updates an epoch as a "
          "large data set, and a large one is not swept whole before a validation. The draws "
          "cycle through every grid patch (each a new jitter, flip and turn) or are random "
          "(\"sampling\"). null = one sweep of the data per epoch, as the original did.",
          new=True, new_config=256),
    Field("epochs", 2000, "integer >= 1", _int(1), "Training epochs."),
    Field("fine-tuning steps", 300, "integer >= 1", _int(1),
          "train_model --from: optimiser steps of a fine-tuning run (epochs of at most 50 "
          "steps, each followed by a validation).", new=True),
    Field("fine-tuning learning rate", None, "null or number > 0",
          lambda v: v is None or _number(1e-12, 10.0)(v),
          "train_model --from: learning rate of a fine-tuning run; null = a tenth of "
          "\"initial learning rate\", so the model adapts without forgetting.", new=True),
    Field("monitor", "val_loss", "a logged key", _is_str,
          "Epoch-log key that decides which model is saved as -best.h5 and drives early "
          "stopping and reduce-on-plateau: val_loss (falls back to loss without validation data), "
          "loss, val_accuracy, ... (accuracies are maximised, losses minimised).", new=True),
    Field("monitor smoothing", 0.0, "number in [0, 1)", _number(0.0, 0.999),
          "Pick the -best model, early stopping and learning-rate cuts on a moving average of "
          "\"monitor\" (each epoch: s = m * s + (1 - m) * value) instead of its raw value, "
          "which jumps from epoch to epoch when the validation data are few; 0 = the raw "
          "value, as the original.", new=True, new_config=0.5),
    Field("early stopping patience", 0, "integer >= 0", _int(0),
          "Stop when \"monitor\" has not improved for this many epochs; 0 = off.", new=True),
    Field("reduce lr patience", 0, "integer >= 0", _int(0),
          "Multiply the learning rate by \"reduce lr factor\" when \"monitor\" has not "
          "improved for this many epochs; 0 = off.", new=True,
          new_config=10),
    Field("reduce lr factor", 0.1, "number in (0, 1)", _number(1e-6, 0.999),
          "Factor of each learning-rate cut (see \"reduce lr patience\").", new=True),
    Field("precision", "auto", '"auto", "float32", "mixed_bfloat16" or "mixed_float16"',
          _one_of(*PRECISIONS),
          "Number format of training (and of predict_image's default): \"auto\" proposes "
          "bfloat16 on CPUs with AMX and GPUs of compute capability >= 8.0, float16 on older "
          "tensor-core GPUs, float32 elsewhere, and keeps a proposal only when a start-up check "
          "(a few seconds) shows that it trains (predicts) like float32 on this machine; the "
          "environment variable UNETSL_PRECISION replaces \"auto\". Said in one info line. "
          "Outputs and losses stay float32; saved models are ordinary float32 models.",
          new=True),
    Field("seed", None, "integer or null", _optional_int,
          "Random seed for sampling, augmentation and weight initialisation; null = random.",
          new=True),
    Field("data sources", [], "list of source objects", _dict_list,
          "Training data, added with attach_data_sources."),
)

FIELD_BY_KEY: dict[str, Field] = {f.key: f for f in FIELDS}

#: Old spellings accepted on load and in -D, mapped to today's key.
ALIASES: dict[str, str] = {
    "nlabels": "n labels",
    "n_labels": "n labels",
    "input_shape": "input shape",
    "kernel_shape": "kernel shape",
    "n_filters": "n filters",
    "learning rate": "initial learning rate",
}

#: Keys old configs may hold that no longer mean anything; reported once, dropped on save.
OBSOLETE: dict[str, str] = {
    "output file": "prediction outputs are named on the predict_image command line",
    "condenser": "the 3D->2D condenser model was an unfinished experiment of the original",
}

#: Keys kept as written and honoured where present, but not part of a new config.
OPTIONAL_KEYS: dict[str, str] = {
    "model file": "model file path (relative to the config's folder); default: <config name>.h5",
}


def canonical_key(key: str) -> str:
    """Map an alias or differently-cased key to today's key; unknown keys pass through."""
    k = key.strip()
    if k in FIELD_BY_KEY or k in OPTIONAL_KEYS:
        return k
    low = k.lower()
    if low in ALIASES:
        return ALIASES[low]
    for known in (*FIELD_BY_KEY, *OPTIONAL_KEYS):
        if known == low:
            return known
    return k


def closest_key(key: str) -> str | None:
    """The known key most like ``key``, for 'did you mean' messages."""
    known = [*FIELD_BY_KEY, *OPTIONAL_KEYS]
    match = difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.5)
    return match[0] if match else None


def unknown_key_hint(key: str, known: Any = None) -> str:
    """'did you mean "n filters"?' for a misspelt key (or the known keys when none is close),
    for the one-line error of an unknown -D key. ``known``: the keys to choose from (default:
    every config key)."""
    known = list(known) if known is not None else [*FIELD_BY_KEY, *OPTIONAL_KEYS]
    match = difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.5)
    if match:
        return f'did you mean "{match[0]}"?'
    return "known keys: " + ", ".join(f'"{k}"' for k in known)


def defaults() -> dict[str, Any]:
    """A fresh copy of every default, in the original's key order."""
    return {f.key: copy.deepcopy(f.default) for f in FIELDS}


def new_config_defaults() -> dict[str, Any]:
    """The values of a config that create_model starts: the defaults, with unetsl's better
    choices (``Field.new_config``) for what a file without the key keeps as the original did."""
    values = defaults()
    for f in FIELDS:
        if f.new_config is not None:
            values[f.key] = copy.deepcopy(f.new_config)
    return values


def check_value(key: str, value: Any, *, source: str = "config") -> None:
    """Raise a one-line UnetslError when ``value`` has the wrong type or shape for ``key``."""
    field = FIELD_BY_KEY.get(key)
    if field is None:
        if key == "model file" and not _is_str(value):
            raise UnetslError(
                f'{source}: key "model file" must be a file name, got {value!r}')
        return
    if not field.check(value):
        raise UnetslError(
            f'{source}: key "{key}" must be {field.kind}, got {json.dumps(value)}'
        )


def key_table_markdown() -> str:
    """The README's table of config keys, generated from ``FIELDS``."""
    rows = ["| key | default | type | meaning |", "|---|---|---|---|"]
    for f in FIELDS:
        default = f"`{json.dumps(f.default)}`"
        if f.new_config is not None:
            default = f"`{json.dumps(f.new_config)}` in new configs, {default} when absent"
        if f.original_default is not None:
            default += f" (original: `{json.dumps(f.original_default)}`)"
        doc = f.doc + (" *New in unetsl.*" if f.new else "")
        rows.append(f"| `{f.key}` | {default} | {f.kind} | {doc} |")
    return "\n".join(rows)


#: The labellers by their JSON name, in the original's menu order (0 .. 4); their code is
#: in :mod:`unetsl.data.labellers`. Here so that a config is checked without loading data code.
LABELLER_NAMES = ("region labels", "multiclass labels", "categorical labels",
                  "double membrane labels", "linear labels", "instance labels")

#: The output activation and loss each labeller's targets need (the README's Labels table),
#: for a config made for a labeller (napari's New model).
LABELLER_OUTPUTS = {
    "region labels": ("softmax", "keras.losses.categorical_crossentropy"),
    "multiclass labels": ("sigmoid", "keras.losses.binary_crossentropy"),
    "categorical labels": ("softmax", "keras.losses.categorical_crossentropy"),
    "double membrane labels": ("sigmoid", "keras.losses.binary_crossentropy"),
    "linear labels": ("relu", "keras.losses.mean_squared_error"),
    "instance labels": ("sigmoid", "unetsl.batchDiceBceLoss"),
}


def labeller_index(name: str | int) -> int:
    """Menu number of a labeller given by JSON name, short name ("multiclass") or number.

    Case, surrounding spaces, "-" and "_" do not matter; anything else is a one-line error
    listing the valid names.
    """
    if isinstance(name, str):
        key = " ".join(name.strip().lower().replace("_", " ").replace("-", " ").split())
        if key.isdigit() and int(key) < len(LABELLER_NAMES):
            return int(key)
        for index, full in enumerate(LABELLER_NAMES):
            if key in (full, full.removesuffix(" labels")):
                return index
    elif not isinstance(name, bool):
        try:
            index = operator.index(name)
        except TypeError:
            pass
        else:
            if 0 <= index < len(LABELLER_NAMES):
                return index
    valid = ", ".join(f"{i} {n!r}" for i, n in enumerate(LABELLER_NAMES))
    raise UnetslError(f"unknown labeller {name!r}; valid labellers: {valid}")
