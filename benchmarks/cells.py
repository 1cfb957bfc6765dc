"""Cells from probability maps: unetsl.cells.segment against three baselines on the same maps.

Every method gets the SAME probability map of a dataset and returns cell labels; the scores
(``unetsl.evaluate.instances.instance_scores``) are F1 at IoU 0.5 (one-to-one matching), the
adapted Rand error and, for time series, the fraction of true cells that keep one predicted id
over time; "missed (edge)" counts the true cells left unmatched and, of them, those touching
the image's y/x edge (cells cut by the field of view). Each dataset's "ceiling_f1" is the F1
of the truth's own connected pieces taken as a prediction: what a perfect method scores where
one true id lies in several pieces. Methods:

  cc       connected components (face connectivity) of the non-membrane pixels (membrane
           probability < 0.5) or of the foreground (foreground probability >= 0.5).
  skimage  plain scikit-image watershed of the boundary map (membrane probability, or 1 -
           foreground probability) from the h-maxima (h = 0.1) of its inverse; foreground mode
           floods inside the thresholded foreground only.
  elf      python-elf's distance-transform watershed (elf.segmentation.watershed.
           distance_transform_watershed) with PlantSeg's dt_watershed defaults: threshold 0.5,
           sigma_seeds 1.0, sigma_weights 2.0, min_size 100, alpha 1.0, pixel_pitch None, no
           non-maximum suppression; 3D stacks also get a row with pixel_pitch = the spacing.
           Foreground mode passes the thresholded foreground as elf's mask. Needs python-elf
           from PyPI (``--elf-path`` adds a pip --target folder to sys.path); else the row says
           why not.
  unetsl   unetsl.cells.segment(probabilities, mode, spacing) with default CellSettings.

Time series are linked frame to frame with unetsl.cells.track (default settings) for EVERY
method, so only the per-frame segmentation differs. "seconds" is the wall time of the
segmentation alone (tracking time is listed apart).

Datasets:

  demo     the held-out movie of the demo (synthetic 2D epithelium, 5 frames of 128x128,
           tracked true cell ids): a folder that ``make demo`` leaves (``--demo-dir``, default
           ./demo) with a trained epithelium-2d-best.h5 and held-out/. Its membrane
           probabilities come from ``predict_image ... --probabilities`` (channel 0).
           ``--make-demo`` runs examples/demo.sh into that folder first when it is missing.
  synth3d  unetsl's synthetic 3D epithelium (epithelium_stack(shape=(48, 96, 96))) with every
           third slice kept (z spacing 3x xy). The "probability" is made from the true membrane
           skeleton: 12 gaps (5x5 px in y-x, 3 slices deep) cut into it, blurred (sigma 0.5
           slices, 1 px), scaled to 0.05..0.95, plus Gaussian noise (sd 0.08), clipped to
           [0, 1]; all seeded. No network involved: it tests the cell step alone. The truth is
           the generator's cell ids as they are (a few border cells leave the field of view
           and come back under the same id, so they are two pieces no method can match both
           of; that caps F1 equally for every method: the JSON's ceiling_f1).
  nuclei   a real image: the 512x512 DSB 2018 fluorescence-nuclei image and its instance mask
           that ship inside the stardist wheel (stardist/data/images/img2d.tif, mask2d.tif;
           BBBC038v1, Caicedo et al. 2019, Nature Methods 16:1247, images CC0 1.0; stardist
           itself BSD-3-Clause). Read from an installed stardist or from the wheel (``pip
           download stardist==0.9.2 --no-deps``; stardist's dependencies are not needed).
           A small unetsl model (1 sigmoid channel = foreground) is trained on the left half
           with create_model / attach_data_sources / train_model and predicts the right half,
           which is scored. A second row set uses a documented pixel classifier instead
           (Gaussian-smoothed intensity, sigma 1, through a logistic centred on the Otsu
           threshold) so the comparison does not hinge on one trained model.

    .venv/bin/python benchmarks/cells.py --quick     # 1 synthetic stack, ~2-3 min nuclei training
    .venv/bin/python benchmarks/cells.py             # 3 stacks, ~4-10 min nuclei training (2 cores)

Prints the CPU model and a table; writes benchmarks/results/cells.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)
from scipy import ndimage as ndi  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "cells.json"
BIN = Path(sys.executable).parent
STARDIST = "stardist==0.9.2"

H_SKIMAGE = 0.1
PERCENTILES = (1.0, 99.8)
PLANTSEG_DT_WATERSHED = {"threshold": 0.5, "sigma_seeds": 1.0, "sigma_weights": 2.0,
                         "min_size": 100, "alpha": 1.0, "pixel_pitch": None,
                         "apply_nonmax_suppression": False}
DSB_LICENSE = ("DSB 2018 stage-1 image (BBBC038v1, Broad Bioimage Benchmark Collection; "
               "Caicedo et al. 2019, Nature Methods 16:1247): CC0 1.0; shipped in the stardist "
               "wheel (BSD-3-Clause, Schmidt & Weigert)")


# ----------------------------------------------------------------------------- helpers

def synthetic_module():
    from unetsl.data import synthetic

    return synthetic


def load_elf(paths: list[str]):
    """(distance_transform_watershed, version, None) or (None, None, why not)."""
    def attempt():
        import elf
        from elf.segmentation.watershed import distance_transform_watershed
        return distance_transform_watershed, getattr(elf, "__version__", "?")
    try:
        return (*attempt(), None)
    except ImportError as exc:
        first = exc
    for path in paths:
        if Path(path).is_dir() and path not in sys.path:
            sys.path.append(path)  # appended: the venv's numpy/scipy/skimage stay first
    try:
        return (*attempt(), None)
    except ImportError as exc:
        reason = (f"not installable/importable here: {exc or first} (try `pip install "
                  f"--target DIR python-elf` and --elf-path DIR)")
        return None, None, reason


def run_cli(args: list[str], cwd: Path, log: Path) -> None:
    """Run one of unetsl's console scripts (from this interpreter's bin/) like a user would."""
    exe = BIN / args[0]
    cmd = [str(exe) if exe.exists() else args[0], *args[1:]]
    with open(log, "a", encoding="utf-8") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        done = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}); see {log}")


def channel0(path: Path) -> np.ndarray:
    """Channel 0 of a probability TIFF as float32 (t, z, y, x)."""
    from unetsl.io.tiff import read_image
    data = read_image(path).data  # (t, c, z, y, x)
    return np.clip(data[:, 0].astype(np.float32), 0.0, 1.0)


def as_tzyx(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    while labels.ndim < 4:
        labels = labels[None]
    return labels.astype(np.int32)


# ----------------------------------------------------------------------------- methods

def boundary_map(p: np.ndarray, mode: str) -> np.ndarray:
    return p if mode == "membrane" else 1.0 - p


def method_cc(p: np.ndarray, mode: str, spacing) -> np.ndarray:
    out = np.zeros(p.shape, np.int32)
    for t in range(p.shape[0]):
        region = p[t] < 0.5 if mode == "membrane" else p[t] >= 0.5
        frame = region[0] if p.shape[1] == 1 else region
        labels, _ = ndi.label(frame)
        out[t] = labels.reshape(p.shape[1:])
    return out


def method_skimage(p: np.ndarray, mode: str, spacing) -> np.ndarray:
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed
    out = np.zeros(p.shape, np.int32)
    for t in range(p.shape[0]):
        frame = p[t, 0] if p.shape[1] == 1 else p[t]
        boundary = boundary_map(frame, mode).astype(np.float64)
        peaks = h_maxima(1.0 - boundary, H_SKIMAGE).astype(bool)
        mask = None
        if mode == "foreground":
            mask = frame >= 0.5
            peaks &= mask
        markers, _ = ndi.label(peaks, structure=np.ones((3,) * frame.ndim))
        out[t] = watershed(boundary, markers, mask=mask).reshape(p.shape[1:])
    return out


def make_elf(dt_watershed, pixel_pitch: bool):
    def method_elf(p: np.ndarray, mode: str, spacing) -> np.ndarray:
        out = np.zeros(p.shape, np.int32)
        for t in range(p.shape[0]):
            frame = p[t, 0] if p.shape[1] == 1 else p[t]
            kwargs = dict(PLANTSEG_DT_WATERSHED)
            if pixel_pitch and frame.ndim == 3:
                kwargs["pixel_pitch"] = list(spacing)
            if mode == "foreground":
                kwargs["mask"] = frame >= 0.5
            seg, _ = dt_watershed(boundary_map(frame, mode).astype(np.float32), **kwargs)
            out[t] = seg.astype(np.int32).reshape(p.shape[1:])
        return out
    return method_elf


def method_unetsl(p: np.ndarray, mode: str, spacing) -> np.ndarray:
    from unetsl.cells import CellSettings, segment
    return segment(p, mode=mode, spacing=spacing, settings=CellSettings())


def methods(elf_fn, elf_reason, anisotropic: bool) -> list[tuple[str, object, str | None]]:
    rows: list[tuple[str, object, str | None]] = [
        ("cc", method_cc, None), ("skimage ws", method_skimage, None)]
    if elf_fn is None:
        rows.append(("elf dt-ws (PlantSeg)", None, elf_reason))
    else:
        rows.append(("elf dt-ws (PlantSeg)", make_elf(elf_fn, False), None))
        if anisotropic:
            rows.append(("elf dt-ws +pitch", make_elf(elf_fn, True), None))
    rows.append(("unetsl", method_unetsl, None))
    return rows


def score_methods(truth: np.ndarray, prob: np.ndarray, mode: str, spacing, elf_fn,
                  elf_reason, keep: dict | None = None) -> dict:
    """Scores of every method; ``keep`` (if given) receives each method's labels."""
    from unetsl.cells import CellSettings, track
    from unetsl.evaluate.instances import instance_scores
    truth = as_tzyx(truth)
    series = prob.shape[0] > 1
    results = {}
    for name, fn, reason in methods(elf_fn, elf_reason, spacing[0] != spacing[1]):
        if fn is None:
            results[name] = {"available": False, "reason": reason}
            continue
        start = time.perf_counter()
        labels = as_tzyx(fn(prob, mode, spacing))
        seconds = time.perf_counter() - start
        track_seconds = None
        if series:
            start = time.perf_counter()
            labels, _ = track(labels, CellSettings())
            track_seconds = time.perf_counter() - start
        if keep is not None:
            keep[name] = labels
        s = instance_scores(truth, labels)
        results[name] = {
            "available": True, "f1": s["f1"], "precision": s["precision"],
            "recall": s["recall"], "ap": s["ap"], "adapted_rand_error": s["adapted_rand_error"],
            "voi_split": s["voi_split"], "voi_merge": s["voi_merge"],
            "identity_kept": s["identity_kept"], "per_frame_f1": s["per_frame_f1"],
            "n_true": s["n_true"], "n_predicted": s["n_predicted"], "seconds": seconds,
            "track_seconds": track_seconds, **misses(truth, labels)}
    return results


def misses(truth: np.ndarray, labels: np.ndarray) -> dict:
    """True cells left unmatched (IoU < 0.5, frame by frame): how many, how many of them touch
    the image's y/x edge (cells cut by the field of view), and their median size."""
    from unetsl.evaluate.instances import match
    sizes, at_edge = [], 0
    for t in range(truth.shape[0]):
        frame = truth[t]
        pairs, _ = match(frame, labels[t])
        rims = [frame[..., 0, :], frame[..., -1, :], frame[..., :, 0], frame[..., :, -1]]
        edge = set(np.unique(np.concatenate([r.ravel() for r in rims])).tolist())
        ids, counts = np.unique(frame[frame > 0], return_counts=True)
        for cell, size in zip(ids.tolist(), counts.tolist()):
            if cell not in pairs:
                sizes.append(size)
                at_edge += cell in edge
    return {"unmatched_true": len(sizes), "unmatched_true_at_edge": at_edge,
            "unmatched_true_median_size": float(np.median(sizes)) if sizes else None}


def ceiling_f1(truth: np.ndarray) -> float:
    """F1 of the truth's own connected pieces as a prediction: an id in several pieces (a cell
    that leaves the field of view and comes back) can match one of them only, for any method."""
    from unetsl.evaluate.instances import instance_scores
    pieces = np.zeros_like(truth)
    for t in range(truth.shape[0]):
        used = 0
        for cell in np.unique(truth[t][truth[t] > 0]):
            parts, n = ndi.label(truth[t] == cell)
            pieces[t][parts > 0] = parts[parts > 0] + used
            used += n
    return float(instance_scores(truth, pieces)["f1"])


# ----------------------------------------------------------------------------- datasets

def dataset_demo(args, work: Path) -> dict:
    demo = Path(args.demo_dir).resolve()
    model = demo / "epithelium-2d-best.h5"
    image = demo / "held-out" / "epi-holdout.tif"
    cells = demo / "held-out" / "cells" / "epi-holdout.tif"
    if args.make_demo and not (model.exists() and cells.exists()):
        env = dict(os.environ, DEMO_DIR=str(demo), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
        print(f"running examples/demo.sh into {demo} (a few minutes)", flush=True)
        subprocess.run(["bash", str(REPO / "examples" / "demo.sh")], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    if args.demo_probabilities:
        prob_file = Path(args.demo_probabilities)
    else:
        missing = [p for p in (model, image, cells) if not p.exists()]
        if missing:
            return {"skipped": f"no trained demo: {', '.join(map(str, missing))} missing "
                               f"(run `make demo`, or pass --make-demo / --demo-dir)"}
        out = work / "demo-pred.tif"
        run_cli(["predict_image", str(model), str(image), str(out), "--probabilities", "-b"],
                work, work / "demo.log")
        prob_file = work / "demo-pred-prob.tif"
    import tifffile
    truth = tifffile.imread(cells)  # (t, y, x) tracked ids, cells tile the image
    prob = channel0(prob_file)  # (t, 1, y, x): membrane
    truth = truth.reshape(prob.shape)
    return {"description": "demo held-out movie (synthetic 2D epithelium), membrane "
                           "probabilities of the demo model (epithelium-2d-best.h5)",
            "license": "synthetic, generated by unetsl (BSD-3-Clause)",
            "probabilities": str(prob_file), "mode": "membrane", "spacing": [1, 1, 1],
            "shape": list(prob.shape), "truth": truth, "prob": prob}


def membrane_probability(membrane: np.ndarray, seed: int, n_gaps: int = 12) -> np.ndarray:
    """A noisy membrane 'probability' from a true (z, y, x) membrane mask, with gaps."""
    rng = np.random.default_rng(seed)
    mask = membrane.astype(bool).copy()
    zs, ys, xs = np.nonzero(mask)
    for k in rng.choice(len(zs), size=min(n_gaps, len(zs)), replace=False):
        z, y, x = zs[k], ys[k], xs[k]
        mask[max(z - 1, 0):z + 2, max(y - 2, 0):y + 3, max(x - 2, 0):x + 3] = False
    blurred = ndi.gaussian_filter(mask.astype(np.float64), (0.5, 1.0, 1.0))
    ref = np.percentile(blurred[mask], 99) if mask.any() else 1.0
    p = 0.05 + 0.9 * np.clip(blurred / ref, 0.0, 1.0)
    p += rng.normal(0.0, 0.08, size=p.shape)
    return np.clip(p, 0.0, 1.0).astype(np.float32)


def dataset_synth3d(seed: int) -> dict:
    synthetic = synthetic_module()
    sample = synthetic.epithelium_stack(shape=(48, 96, 96), seed=seed)
    labels, cells = sample.labels[::3], sample.cells[::3]
    prob = membrane_probability((labels & 1) > 0, seed=seed + 1000)
    return {"description": f"synthetic 3D epithelium, epithelium_stack(shape=(48, 96, 96), "
                           f"seed={seed}), every 3rd slice; membrane probability made from the "
                           f"true skeleton (12 gaps, blur, noise sd 0.08)",
            "license": "synthetic, generated by unetsl (BSD-3-Clause)", "mode": "membrane",
            "spacing": [3, 1, 1], "shape": [1, *prob.shape],
            "truth": cells[None].astype(np.int32), "prob": prob[None]}


def stardist_images(work: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(image, mask, where from) of stardist's DSB 2018 test image, without importing it."""
    import tifffile
    spec = importlib.util.find_spec("stardist")
    if spec and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "images"
        if (folder / "img2d.tif").exists():
            return (tifffile.imread(folder / "img2d.tif"), tifffile.imread(folder / "mask2d.tif"),
                    f"installed stardist ({folder})")
    wheels = sorted(work.glob("stardist-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", STARDIST, "--no-deps",
                        "--only-binary", ":all:", "-q", "-d", str(work)], check=True)
        wheels = sorted(work.glob("stardist-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as whl:
        image = tifffile.imread(io.BytesIO(whl.read("stardist/data/images/img2d.tif")))
        mask = tifffile.imread(io.BytesIO(whl.read("stardist/data/images/mask2d.tif")))
    return image, mask, f"wheel {wheels[-1].name}"


def nuclei_config(epochs: int, stride: int) -> dict:
    return {"input shape": [1, 1, 64, 64], "kernel shape": [1, 3, 3], "pooling": [1, 2, 2],
            "n labels": 1, "depth": 3, "n filters": 16, "activation": "sigmoid",
            "loss function": "keras.losses.binary_crossentropy",
            "stride": [0, 1, stride, stride], "batch size": 8,
            "normalization percentiles": list(PERCENTILES), "normalize samples": False,
            "validation fraction": 0, "augment flips": True, "augment rotate 90": True,
            "seed": 1, "epochs": epochs}


def train_nuclei(args, image: np.ndarray, mask: np.ndarray, work: Path
                 ) -> tuple[Path, float | None]:
    """Train the small foreground model on the left half; (best model, training seconds or
    None when an existing model is reused)."""
    import tifffile
    folder = work / "nuclei"
    if args.nuclei_model:
        return Path(args.nuclei_model).resolve(), None
    if (folder / "nuclei-best.h5").exists():  # trained by an earlier run with this --work
        return folder / "nuclei-best.h5", None
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    half = image.shape[1] // 2
    tifffile.imwrite(folder / "images" / "dsb-left.tif", image[:, :half])
    tifffile.imwrite(folder / "labels" / "dsb-left.tif", (mask[:, :half] > 0).astype(np.uint8))
    epochs = args.nuclei_epochs or 8
    stride = 32 if args.quick else 16
    (folder / "nuclei.json").write_text(json.dumps(nuclei_config(epochs, stride), indent=1))
    log = folder / "train.log"
    start = time.perf_counter()
    run_cli(["create_model", "-c", "nuclei.json", "-b"], folder, log)
    run_cli(["attach_data_sources", "-c", "nuclei.json", "--paired", "images", "labels",
             "--labeller", "multiclass", "-b"], folder, log)
    print(f"training the nuclei model ({epochs} epochs, stride {stride}) ...", flush=True)
    run_cli(["train_model", "-c", "nuclei.json", "-b"], folder, log)
    return folder / "nuclei-best.h5", time.perf_counter() - start


def pixel_classifier(image: np.ndarray) -> np.ndarray:
    """Pseudo-probability: smoothed intensity through a logistic centred on Otsu's threshold."""
    from skimage.filters import threshold_otsu
    smooth = ndi.gaussian_filter(image.astype(np.float64), 1.0)
    lo, hi = np.percentile(smooth, [1, 99.8])
    smooth = (smooth - lo) / max(hi - lo, 1e-12)
    otsu = threshold_otsu(smooth)
    return (1.0 / (1.0 + np.exp(-(smooth - otsu) / 0.05))).astype(np.float32)


def datasets_nuclei(args, work: Path) -> dict:
    import tifffile
    image, mask, source = stardist_images(work)
    half = image.shape[1] // 2
    truth = mask[:, half:].astype(np.int32)[None, None]
    test = image[:, half:]
    out: dict = {}
    common = {"license": DSB_LICENSE, "source": source, "mode": "foreground",
              "spacing": [1, 1, 1], "shape": [1, 1, *test.shape], "truth": truth}
    try:
        model, train_seconds = train_nuclei(args, image, mask, work)
        folder = work / "nuclei"
        folder.mkdir(exist_ok=True)
        # predict_image does not apply the config's "normalization percentiles" (training
        # does), so the image to predict is scaled the same way here first.
        from unetsl.data.normalize import percentile_normalize
        scaled = percentile_normalize(test[None, None], PERCENTILES)[0, 0]
        tifffile.imwrite(folder / "dsb-right.tif", scaled.astype(np.float32))
        run_cli(["predict_image", str(model), "dsb-right.tif", "pred-dsb-right.tif",
                 "--probabilities", "-b"], folder, folder / "predict.log")
        prob = channel0(folder / "pred-dsb-right-prob.tif")
        out["nuclei (unetsl model)"] = {
            **common, "description": "DSB 2018 nuclei, right half; foreground probability of a "
                                     "small unetsl model trained on the left half",
            "model": str(model), "train_seconds": train_seconds,
            "train_config": nuclei_config(args.nuclei_epochs or 8,
                                          32 if args.quick else 16),
            "prob": prob.reshape(truth.shape)}
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        out["nuclei (unetsl model)"] = {"skipped": f"training/prediction failed: {exc}"}
    out["nuclei (pixel classifier)"] = {
        **common, "description": "DSB 2018 nuclei, right half; pseudo-probability = Gaussian "
                                 "(sigma 1) smoothed intensity, percentile-scaled, logistic "
                                 "(width 0.05) centred on the Otsu threshold",
        "prob": pixel_classifier(test)[None, None]}
    return out


# ----------------------------------------------------------------------------- report

def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(results: dict) -> str:
    head = ["dataset", "method", "F1@0.5", "prec", "recall", "ARand err", "id kept",
            "n pred/true", "missed (edge)", "seconds"]
    rows = [head]
    for dname, data in results.items():
        if "skipped" in data:
            rows.append([dname, "(skipped)", data["skipped"][:60], "", "", "", "", "", "", ""])
            continue
        for mname, m in data["methods"].items():
            if not m.get("available", True):
                rows.append([dname, mname, "n/a", "", "", "", "", "", "", ""])
                continue
            rows.append([dname, mname, fmt(m["f1"]), fmt(m["precision"]), fmt(m["recall"]),
                         fmt(m["adapted_rand_error"]), fmt(m["identity_kept"]),
                         f"{m['n_predicted']}/{m['n_true']}",
                         f"{m['unmatched_true']} ({m['unmatched_true_at_edge']})",
                         fmt(m["seconds"], 2)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plane(array: np.ndarray) -> np.ndarray:
    """First frame, middle slice of a (t, z, y, x) array."""
    return array[0, array.shape[1] // 2]


def figure(panels: list[tuple[str, np.ndarray, np.ndarray, dict]], path: Path) -> None:
    """One row per dataset: probability, truth, then each method's labels (one plane)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    def show(ax, labels, title):
        rng = np.random.default_rng(0)
        colours = rng.uniform(0.2, 1.0, size=(int(labels.max()) + 1, 3))
        colours[0] = 0
        rgb = colours[labels]
        rgb[find_boundaries(labels, mode="inner")] = 0
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(title, fontsize=8)

    n_cols = 2 + max(len(p[3]) for p in panels)
    fig, axes = plt.subplots(len(panels), n_cols, figsize=(2.2 * n_cols, 2.3 * len(panels)),
                             squeeze=False)
    for row, (name, prob, truth, labels) in zip(axes, panels):
        row[0].imshow(plane(prob), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        row[0].set_title(f"{name}: probability", fontsize=8)
        show(row[1], plane(truth), "truth")
        for ax, (mname, lab) in zip(row[2:], labels.items()):
            show(ax, plane(lab), mname)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def mean_over_seeds(per_seed: list[dict]) -> dict:
    """Pooled summary of the synthetic stacks: means of the scores, summed counts."""
    out = {}
    for name in per_seed[0]:
        ms = [r[name] for r in per_seed]
        if not ms[0].get("available", True):
            out[name] = ms[0]
            continue
        out[name] = {"available": True}
        for key in ("f1", "precision", "recall", "ap", "adapted_rand_error", "voi_split",
                    "voi_merge", "seconds"):
            out[name][key] = float(np.mean([m[key] for m in ms]))
        out[name]["identity_kept"] = None
        out[name]["n_true"] = int(sum(m["n_true"] for m in ms))
        out[name]["n_predicted"] = int(sum(m["n_predicted"] for m in ms))
        for key in ("unmatched_true", "unmatched_true_at_edge"):
            out[name][key] = int(sum(m[key] for m in ms))
        out[name]["per_seed_f1"] = [m["f1"] for m in ms]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 synthetic stack (not 3), shorter nuclei training")
    parser.add_argument("--demo-dir", default=str(REPO / "demo"),
                        help="folder left by `make demo` (epithelium-2d-best.h5, held-out/)")
    parser.add_argument("--make-demo", action="store_true",
                        help="run examples/demo.sh into --demo-dir if it has no trained model")
    parser.add_argument("--demo-probabilities", metavar="TIF",
                        help="reuse a `predict_image --probabilities` output of the held-out "
                             "movie instead of predicting it")
    parser.add_argument("--nuclei-model", metavar="H5", help="reuse a trained nuclei model")
    parser.add_argument("--nuclei-epochs", type=int, default=None,
                        help="epochs of the nuclei model (default 8; --quick samples its "
                             "patches on a stride-32 grid, not 16: ~3.5x fewer steps)")
    parser.add_argument("--seeds", type=int, nargs="*", default=None,
                        help="seeds of the synthetic stacks (default 0 1 2, --quick 0)")
    parser.add_argument("--elf-path", action="append", default=None, metavar="DIR",
                        help="extra folder holding python-elf (pip install --target DIR "
                             "python-elf); default /tmp/benchpkgs if present")
    parser.add_argument("--work", metavar="DIR",
                        help="keep intermediate files (predictions, models) here; reused "
                             "when present (default: a temporary folder)")
    parser.add_argument("--only", nargs="*", choices=["demo", "synth3d", "nuclei"],
                        help="run only these datasets")
    parser.add_argument("--out", default=str(RESULTS), help="JSON results file")
    parser.add_argument("--figure", default=str(RESULTS.with_suffix(".png")),
                        help="PNG of one plane per dataset and method ('' for none)")
    args = parser.parse_args(argv)
    only = set(args.only or ["demo", "synth3d", "nuclei"])
    seeds = args.seeds if args.seeds else ([0] if args.quick else [0, 1, 2])

    cpu = cpu_model()
    print(f"CPU: {cpu} ({os.cpu_count()} cores visible)")
    elf_fn, elf_version, elf_reason = load_elf(args.elf_path or ["/tmp/benchpkgs"])
    print(f"python-elf: {elf_version}" if elf_fn else f"python-elf: {elf_reason}", flush=True)
    from unetsl.cells import CellSettings

    tmp = None
    if args.work:
        work = Path(args.work).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="unetsl-bench-cells-")
        work = Path(tmp.name)
    results: dict = {}
    panels: list = []
    started = time.perf_counter()
    try:
        todo: list[tuple[str, object]] = []
        if "demo" in only:
            todo.append(("demo", lambda: {"demo": dataset_demo(args, work)}))
        if "synth3d" in only:
            todo.append(("synth3d", lambda: {f"synth3d seed {s}": dataset_synth3d(s)
                                             for s in seeds}))
        if "nuclei" in only:
            todo.append(("nuclei", lambda: datasets_nuclei(args, work)))
        for label, load in todo:
            print(f"dataset {label} ...", flush=True)
            for dname, data in load().items():
                if "skipped" in data:
                    results[dname] = data
                    print(f"  {dname}: skipped: {data['skipped']}")
                    continue
                truth, prob = data.pop("truth"), data.pop("prob")
                keep: dict = {}
                data["methods"] = score_methods(truth, prob, data["mode"],
                                                tuple(data["spacing"]), elf_fn, elf_reason,
                                                keep)
                data["ceiling_f1"] = ceiling_f1(as_tzyx(truth))
                if dname in ("demo", "synth3d seed 0", "nuclei (unetsl model)"):
                    panels.append((dname, prob, as_tzyx(truth), keep))
                data["shape"] = list(prob.shape)
                results[dname] = data
                best = max((m["f1"], n) for n, m in data["methods"].items()
                           if m.get("available", True))
                print(f"  {dname}: best F1 {best[0]:.3f} ({best[1]}); ceiling "
                      f"{data['ceiling_f1']:.3f}", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    synth = [k for k in results if k.startswith("synth3d seed")]
    if len(synth) > 1:
        results["synth3d (mean of seeds)"] = {
            "description": f"mean over seeds {seeds}", "mode": "membrane",
            "spacing": [3, 1, 1],
            "ceiling_f1": float(np.mean([results[k]["ceiling_f1"] for k in synth])),
            "methods": mean_over_seeds([results[k]["methods"] for k in synth])}

    print()
    print(table(results))
    if elf_reason:
        print(f"n/a: elf dt-ws: {elf_reason}")
    print()
    print("F1@0.5: one-to-one matching at IoU >= 0.5; ARand err: adapted Rand error (lower is "
          "better); id kept: true cells keeping one predicted id over time (time series only; "
          "every method tracked with unetsl.cells.track); missed (edge): true cells unmatched "
          "(of them touching the image's y/x edge); seconds: segmentation only.")
    for dname, data in results.items():
        if "ceiling_f1" in data:
            print(f"ceiling F1 {dname}: {data['ceiling_f1']:.3f} (the truth's own connected "
                  f"pieces as a prediction)")
    report = {
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
        "quick": args.quick, "seeds": seeds, "wall_seconds": time.perf_counter() - started,
        "unetsl_settings": CellSettings().to_config(),
        "baselines": {
            "cc": "ndi.label of (membrane < 0.5) or (foreground >= 0.5), face connectivity",
            "skimage ws": f"skimage.segmentation.watershed(boundary, label(h_maxima(1 - "
                          f"boundary, {H_SKIMAGE}))); foreground: mask = foreground >= 0.5",
            "elf dt-ws (PlantSeg)": {"function": "elf.segmentation.watershed."
                                                 "distance_transform_watershed",
                                     "params": PLANTSEG_DT_WATERSHED,
                                     "version": elf_version, "reason": elf_reason},
            "elf dt-ws +pitch": "the same with pixel_pitch = spacing (3D stacks only)",
            "tracking": "every method's per-frame labels are linked with unetsl.cells.track "
                        "(default CellSettings)"},
        "datasets": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.figure and panels:
        figure(panels, Path(args.figure))
        report["figure"] = str(args.figure)
        print(f"wrote {args.figure}")
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    try:
        shown = out.resolve().relative_to(REPO)
    except ValueError:
        shown = out
    print(f"wrote {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
