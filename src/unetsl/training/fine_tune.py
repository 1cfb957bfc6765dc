"""Fine-tuning: ``train_model --from MODEL``, a short run that adapts a trained model.

A model trained on one data set is fine-tuned on a few corrected images (partial labels:
:mod:`unetsl.data.partial`) with a lower learning rate and a few hundred steps ("fine-tuning
learning rate", "fine-tuning steps"), starting from MODEL's weights (any model file unetsl
loads, the original's .h5 included). Data given for the run (``--data IMAGES LABELS``) is
added to the config's sources for this run only; when the config has training data of its
own, the added data gets half of the training patches ("patch share"), so the model learns
the corrections without forgetting the rest. A fine-tuning run writes
``<name>-tuned-best.h5`` / ``-tuned-latest.h5``, never the model it started from.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetsl.config.model_config import Config
from unetsl.data.corrections import correction_labels
from unetsl.errors import UnetslError
from unetsl.io.tiff import read_image, write_image
from unetsl.training.checkpoints import TrainingState, read_state
from unetsl.training.setup import TrainingPaths, training_paths

#: steps between two validations (and checkpoints) of a fine-tuning run
STEPS_PER_EPOCH = 50

#: the share of training patches that data added for a run gets beside the config's own
ADDED_SHARE = 0.5


def fine_tuning_config(cfg: Config) -> Config:
    """A copy of ``cfg`` with the fine-tuning schedule: its learning rate, and epochs of at
    most STEPS_PER_EPOCH steps adding up to "fine-tuning steps"."""
    tuned = copy.deepcopy(cfg)
    steps = int(cfg["fine-tuning steps"])
    per_epoch = min(steps, STEPS_PER_EPOCH)
    rate = cfg.get("fine-tuning learning rate") or float(cfg["initial learning rate"]) / 10
    tuned.update({"initial learning rate": rate, "epochs": math.ceil(steps / per_epoch),
                  "patches per epoch": per_epoch * int(cfg["batch size"])},
                 source="fine-tuning")
    return tuned


def with_added_data(cfg: Config, pairs: Sequence[tuple[str, str]],
                    cwd: str | os.PathLike | None = None) -> Config:
    """A copy of ``cfg`` whose "data sources" also hold ``pairs`` of (images, labels): folders
    or single files, with the labeller of the config's first source; they get ADDED_SHARE of
    the training patches when the config has data of its own."""
    if not pairs:
        return cfg
    sources = list(cfg["data sources"] or [])
    model = sources[0] if sources else None
    if model is None:
        raise UnetslError(f"{cfg.path}: no data sources to take a labeller from for --data; "
                          f"attach the data instead (attach_data_sources -c {cfg.path})")
    base = Path(cwd) if cwd is not None else Path.cwd()
    added = [_source_entry(base / images, base / labels, model, share=bool(sources))
             for images, labels in pairs]
    tuned = copy.deepcopy(cfg)
    tuned.update({"data sources": sources + added}, source="--data")
    return tuned


def _source_entry(images: Path, labels: Path, model: dict[str, Any], *, share: bool
                  ) -> dict[str, Any]:
    for path in (images, labels):
        if not path.exists():
            raise UnetslError(f"--data: {path} does not exist")
    if images.is_dir() != labels.is_dir():
        raise UnetslError(f"--data: {images} and {labels} must both be folders or both files")
    if images.is_dir():
        entry = {"source type": "paired directories", "input folders": [str(images.resolve())],
                 "label folders": [str(labels.resolve())]}
    else:
        entry = {"source type": "paired files", "training images": [str(images.resolve())],
                 "label images": [str(labels.resolve())]}
    entry["labeller"] = model.get("labeller", "multiclass labels")
    if "n labels" in model:
        entry["n labels"] = model["n labels"]
    if share:
        entry["patch share"] = ADDED_SHARE
    return entry


def tuned_paths(cfg: Config) -> TrainingPaths:
    """The files of a fine-tuning run: ``<name>-tuned-latest.h5``, ``-tuned-best.h5`` ..."""
    plain = training_paths(cfg)
    suffix = plain.model.suffix or ".h5"
    return dataclasses.replace(
        plain, latest=cfg.sibling(f"-tuned-latest{suffix}"),
        best=cfg.sibling(f"-tuned-best{suffix}"),
        batch_snapshot=cfg.sibling(f"-tuned-batch{suffix}"),
        curves=cfg.sibling("-tuned-curves.png"))


def tuning_start(paths: TrainingPaths, start_from: str | os.PathLike, resume: bool
                 ) -> tuple[Path, TrainingState | None]:
    """The model file a fine-tuning run starts from (MODEL, or with ``resume`` its latest
    checkpoint) and the state saved with it."""
    if resume and paths.latest.exists():
        return paths.latest, read_state(paths.latest)
    start = Path(start_from)
    if not start.is_file():
        raise UnetslError(f"--from: model file {start} does not exist")
    return start, None


def corrections_source(cfg: Config, folder: str | os.PathLike, name: str, image: np.ndarray,
                       cells: np.ndarray, corrected: Sequence[int],
                       erased: np.ndarray | None = None) -> Config:
    """``cfg`` with one image's corrections added for a run: ``image`` (t, c, z, y, x) and
    the partial labels of its ``corrected`` cells (``cells`` (t, z, y, x); ``erased``: where
    false cells were deleted) written as ``folder``/images and /labels/<name>.tif, in the form
    the config's first source's labeller reads (:func:`unetsl.data.corrections.
    correction_labels`). Every image corrected into ``folder`` trains together."""
    sources = list(cfg["data sources"] or [])
    if not sources:
        raise UnetslError(f"{cfg.path}: no data sources to take the labeller of the "
                          "corrections from; attach the training data first")
    labels = correction_labels(cells, corrected, sources[0].get("labeller",
                                                                "multiclass labels"),
                               erased=erased)
    folder = Path(folder)
    stem = re.sub(r"[^\w.-]+", "_", name).strip("._") or "image"
    for sub, data in (("images", np.asarray(image)), ("labels", labels[:, None])):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        write_image(folder / sub / f"{stem}.tif", data)
    tuned = with_added_data(cfg, [(str(folder / "images"), str(folder / "labels"))])
    added = tuned["data sources"]
    tuned.update({"data sources": [*added[:-1], {**added[-1], "unknown label": "max"}]},
                 source="corrections")  # 65535 = unknown, whatever the config says
    return tuned


def parse_cell_ids(text: str) -> tuple[list[int], list[int]]:
    """ "3,17,-42" -> ([3, 17], [42]): the ids of the cells a user corrected, and (with a
    minus) of false cells to erase, with a one-line error."""
    try:
        ids = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise UnetslError(f"--correct: cell ids must be integers like 3,17,-42, got {text!r}"
                          ) from None
    if not ids or 0 in ids:
        raise UnetslError(f"--correct: give the ids (>= 1) of the cells you corrected, and "
                          f"-ID for false cells, got {text!r}")
    corrected, false = [i for i in ids if i > 0], [-i for i in ids if i < 0]
    both = sorted(set(corrected) & set(false))
    if both:
        raise UnetslError(f"--correct: cell {both[0]} is given as corrected and as false "
                          f"(-{both[0]}) in {text!r}")
    return corrected, false


def with_corrections(cfg: Config, corrections: Sequence[tuple[str, str, str]]) -> Config:
    """``--correct IMAGE CELLS IDS``: each image's corrected cells (ids such as "3,17" of the
    label image CELLS) and false cells ("-42": that cell's voxels are background) added as
    partial labels in ``corrections/`` beside the config."""
    for image, cells, ids in corrections:
        corrected, false = parse_cell_ids(ids)
        labels = read_image(cells).data[:, 0]
        missing = sorted(set(corrected + false) - set(np.unique(labels).tolist()))
        if missing:
            raise UnetslError(f"--correct: {cells} has no cell {missing[0]}")
        erased = np.isin(labels, false)
        kept = np.where(erased, 0, labels)  # a false cell is background, with its ring
        cfg = corrections_source(cfg, cfg.folder / "corrections", Path(image).stem,
                                 read_image(image).data, kept, corrected,
                                 erased=erased if false else None)
    return cfg
