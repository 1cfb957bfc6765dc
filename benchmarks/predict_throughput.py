"""Prediction throughput on a 3D stack, three ways side by side on the same model and image.

(a) the compute floor: the network alone on the tiles unetsl predicts, cut in advance
    (the faster of ``model.predict`` and a ``predict_on_batch`` loop);
(b) unetsl end to end: TIFF read block by block, tiles, blending, reduction, TIFF written
    (``PredictionJob.run`` with the loaded model); tiles chosen by ``choose_tile`` (larger
    than the training patch where that computes fewer voxels); (b0) the same with tiles of
    the training patch;
(c) the original's scheme, reimplemented here: stride = half the patch, tiles cast to
    uint16, per-tile labels stitched winner-take-all by its body/face/edge/corner window.

Prints voxels/s, b/a (overhead of everything that is not the network) and c/b (speed-up
over the original), and the peak resident memory of each; writes
benchmarks/results/predict_throughput.json.

    .venv/bin/python benchmarks/predict_throughput.py              # default 3D model
    .venv/bin/python benchmarks/predict_throughput.py --filters 8 --pooling 2 2 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "predict_throughput.json"


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    """Reset VmHWM (Linux) so each scheme reports its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss() -> int:
    return _status("VmHWM")


# ------------------------------------------------------------------ (c) the original's scheme


def original_origins(size: int, patch: int) -> list[int]:
    """Half-patch stride, last origin flush with the edge (original §16.1)."""
    stride = max(patch // 2, 1)
    origins, o = [], 0
    while o + patch < size:
        origins.append(o)
        o += stride
    last = size - patch
    if not origins or origins[-1] != last:
        origins.append(last)
    return origins


def original_window(patch: tuple[int, int, int]) -> np.ndarray:
    """1.0 body (central stride block), 0.75 face, 0.5 edge, 0.25 corner (symmetric)."""
    outside = np.zeros(patch, dtype=np.int8)
    for axis, p in enumerate(patch):
        s = max(p // 2, 1)
        lo = (p - s) // 2
        inside = np.zeros(p, dtype=bool)
        inside[lo:lo + s] = True
        shape = [1, 1, 1]
        shape[axis] = p
        outside += (~inside).reshape(shape)
    return (1.0 - 0.25 * outside).astype(np.float32)


def predict_original(model, image: np.ndarray, batch_size: int) -> np.ndarray:
    """(c, z, y, x) uint16 image -> (z, y, x) uint8 multiclass labels, as the original."""
    from unetsl.nets.shapes import from_model_layout, model_patch_shape, to_model_layout

    _, *patch = model_patch_shape(model)
    window = original_window(tuple(patch))
    _, Z, Y, X = image.shape
    labels = np.zeros((Z, Y, X), dtype=np.uint8)
    best = np.zeros((Z, Y, X), dtype=np.float32)
    origins = [(z, y, x) for z in original_origins(Z, patch[0])
               for y in original_origins(Y, patch[1]) for x in original_origins(X, patch[2])]
    for start in range(0, len(origins), batch_size):
        chunk = origins[start:start + batch_size]
        tiles = np.stack([image[:, z:z + patch[0], y:y + patch[1], x:x + patch[2]]
                          for z, y, x in chunk]).astype(np.uint16).astype(np.float32)
        out = from_model_layout(np.asarray(model.predict_on_batch(to_model_layout(tiles))))
        for probs, (z, y, x) in zip(out, chunk):
            tile_labels = np.zeros(patch, dtype=np.uint8)
            for k in range(probs.shape[0]):
                tile_labels |= ((probs[k] > 0.5).astype(np.uint8) << k)
            region = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
            stored, weight = labels[region], best[region]
            better, tie = window > weight, window == weight
            stored[better] = tile_labels[better]
            stored[tie] |= tile_labels[tie]
            weight[better] = window[better]
    return labels


# ------------------------------------------------------------------------------ the run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 256, 256],
                        metavar=("Z", "Y", "X"), help="image size (default 64 256 256)")
    parser.add_argument("--patch", type=int, nargs=3, default=[16, 64, 64],
                        metavar=("Z", "Y", "X"), help="model input (default 16 64 64)")
    parser.add_argument("--filters", type=int, default=32, help="n filters (default 32)")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--pooling", type=int, nargs=3, default=[1, 2, 2])
    parser.add_argument("--labels", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs; the best counts")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--precisions", nargs="*", default=["mixed_bfloat16"],
                        help="reduced precisions to time end to end besides float32 "
                             "(rows b-<precision>; their labels are compared with b's)")
    args = parser.parse_args()

    import keras

    from unetsl.data.synthetic import epithelium_stack, write_imagej
    from unetsl.nets.devices import keras_backend, visible_gpus
    from unetsl.nets.model_files import save_model
    from unetsl.nets.shapes import model_patch_shape, to_model_layout
    from unetsl.nets.unet import build_unet
    from unetsl.predict.job import PredictionJob
    from unetsl.predict.reach import receptive_reach
    from unetsl.predict.tiling import model_for_tiles, plan_tiles

    keras.utils.set_random_seed(0)
    patch = (1, *args.patch)
    model = build_unet(patch, n_labels=args.labels, depth=args.depth, n_filters=args.filters,
                       pooling=tuple(args.pooling))
    work = Path(tempfile.mkdtemp(prefix="unetsl-bench-"))
    sample = epithelium_stack(tuple(args.shape), seed=0)
    image_path = work / "stack.tif"
    write_imagej(image_path, sample.image, "3d")
    model_path = work / "bench.keras"
    save_model(model, model_path)
    image = sample.image[None].astype(np.float32)  # (c, z, y, x)
    voxels = int(np.prod(args.shape))

    reach = receptive_reach(model)
    tile_net, per_batch = model_for_tiles(model, args.shape, batch_size=args.batch_size,
                                          reach=reach)
    tile_shape = tuple(model_patch_shape(tile_net)[1:])
    plan = plan_tiles(args.shape, tile_shape, reach)
    patch_plan = plan_tiles(args.shape, args.patch, reach)
    tile_list = []
    for z in plan.axes[0].origins:
        for y in plan.axes[1].origins:
            for x in plan.axes[2].origins:
                sl = tuple(slice(max(o, 0), o + p) for o, p in zip((z, y, x), tile_shape))
                tile = image[(slice(None), *sl)]
                pad = [(0, 0)] + [(0, p - n) for p, n in zip(tile_shape, tile.shape[1:])]
                tile_list.append(np.pad(tile, pad, mode="reflect"))
    tiles = np.ascontiguousarray(to_model_layout(np.stack(tile_list)))
    n_orig = int(np.prod([len(original_origins(s, p)) for s, p in zip(args.shape, args.patch)]))
    computed = {"unetsl": plan.count() * int(np.prod(tile_shape)),
                "patch tiles": patch_plan.count() * int(np.prod(args.patch)),
                "original": n_orig * int(np.prod(args.patch))}
    print(f"model: input {patch}, {args.filters} filters, depth {args.depth}, pooling "
          f"{tuple(args.pooling)}, {model.count_params():,} parameters; reach {reach.reach}, "
          f"pooling factor {reach.align}")
    print(f"image: {tuple(args.shape)} = {voxels:,} voxels; unetsl {plan.count()} tiles of "
          f"{tile_shape}, {per_batch} per batch (overlap {plan.overlap}); with training-patch "
          f"tiles {patch_plan.count()} (overlap {patch_plan.overlap}); original {n_orig} tiles "
          "(stride = half the patch)")
    print("voxels computed: " + ", ".join(f"{k} {v / 1e6:.2f} M ({v / voxels:.2f}x the image)"
                                          for k, v in computed.items()))
    from unetsl.nets.precision import choose_precision, cpu_flags

    cpu_model, flags = cpu_flags()
    wanted_flags = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model} ({platform.machine()}; "
          + " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in wanted_flags)
          + f"), Keras {keras.__version__} ({keras_backend()} backend), "
          f"GPUs: {len(visible_gpus())}")
    auto = choose_precision("auto")
    print(f"precision \"auto\" here: {auto.policy} ({auto.reason})")

    # warm up: trace the full and the partial batch shapes once
    tile_net.predict_on_batch(tiles[:per_batch])
    if len(tiles) % per_batch:
        tile_net.predict_on_batch(tiles[:len(tiles) % per_batch])
    tile_net.predict(tiles[:per_batch], batch_size=per_batch, verbose=0)

    def raw_predict():
        return tile_net.predict(tiles, batch_size=per_batch, verbose=0)

    def raw_on_batch():
        return [tile_net.predict_on_batch(tiles[i:i + per_batch])
                for i in range(0, len(tiles), per_batch)]

    out_path = work / "pred.tif"
    job = PredictionJob.create(model_path, image_path, out_path)
    job.update({"batch size": args.batch_size, "precision": "float32"})
    patch_job = PredictionJob.create(model_path, image_path, work / "pred-patch.tif")
    patch_job.update({"batch size": args.batch_size, "tile shape": list(args.patch),
                      "precision": "float32"})
    reduced_jobs = {}
    for policy in args.precisions:
        reduced = PredictionJob.create(model_path, image_path, work / f"pred-{policy}.tif")
        reduced.update({"batch size": args.batch_size, "precision": policy})
        reduced_jobs[policy] = reduced

    def end_to_end():
        return job.run(model=model)

    def end_to_end_patch():
        return patch_job.run(model=model)

    labels_c = []

    def original():
        labels_c[:] = [predict_original(model, sample.image[None], args.batch_size)]

    schemes = {
        "a1": ("model.predict on pre-cut tiles", raw_predict),
        "a2": ("predict_on_batch loop on pre-cut tiles", raw_on_batch),
        "b": ("unetsl predict_image end to end", end_to_end),
        "b0": ("the same with training-patch tiles", end_to_end_patch),
        "c": ("original scheme (half stride, winner-take-all)", original),
    }
    for policy, reduced in reduced_jobs.items():
        schemes[f"b-{policy}"] = (f"b in {policy}",
                                  lambda reduced=reduced: reduced.run(model=model))
    # Rounds interleave the schemes so that a change of machine load hits all of them;
    # the best wall time of each counts. CPU time (all threads) is reported beside it
    # because this machine may be shared.
    results: dict[str, dict] = {}
    reset_peak()
    baseline = _status("VmRSS")
    print(f"timings (best of {args.repeats}, load average {os.getloadavg()[0]:.1f}):")
    for _ in range(args.repeats):
        for key, (name, fn) in schemes.items():
            reset_peak()
            cpu0, start = time.process_time(), time.perf_counter()
            fn()
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
            peak = peak_rss()
            old = results.get(key)
            if old is None or seconds < old["seconds"]:
                results[key] = {"name": name, "seconds": round(seconds, 3),
                                "cpu_seconds": round(cpu, 3),
                                "voxels_per_s": round(voxels / seconds, 1),
                                "peak_rss_mib": round(peak / 2**20, 1),
                                "peak_rss_growth_mib": round((peak - baseline) / 2**20, 1)}
    for key, r in results.items():
        print(f"  {key:<3} {r['name']:<48} {r['seconds']:8.2f} s (cpu {r['cpu_seconds']:7.1f} s)"
              f" {r['voxels_per_s'] / 1e6:7.3f} Mvoxel/s  peak RSS {r['peak_rss_mib']:6.0f} MiB"
              f" (+{r['peak_rss_growth_mib']:.0f})")

    a = min(results["a1"]["seconds"], results["a2"]["seconds"])
    b, c = results["b"]["seconds"], results["c"]["seconds"]
    a_cpu = min(results["a1"]["cpu_seconds"], results["a2"]["cpu_seconds"])
    b_cpu, c_cpu = results["b"]["cpu_seconds"], results["c"]["cpu_seconds"]
    from unetsl.io.tiff import read_image

    labels_b = read_image(out_path).data[0, 0]
    agree = float((labels_b == labels_c[0]).mean())
    tile_ratio = computed["original"] / computed["unetsl"]
    print(f"b/a = {b / a:.3f} (cpu time {b_cpu / a_cpu:.3f})  target <= 1.10: unetsl's "
          "overhead over the network alone")
    print(f"c/b = {c / b:.2f}  (cpu time {c_cpu / b_cpu:.2f})  target >= 4: speed-up over the "
          f"original's scheme; ratio of voxels computed {tile_ratio:.2f}")
    b0 = results["b0"]["seconds"]
    print(f"b0/b = {b0 / b:.2f}: larger tiles over training-patch tiles")
    print(f"labels of b and c agree on {100 * agree:.2f}% of voxels; baseline RSS "
          f"{baseline / 2**20:.0f} MiB (TensorFlow, model, image in memory for a and c)")
    precisions = {}
    for policy in reduced_jobs:
        labels = read_image(work / f"pred-{policy}.tif").data[0, 0]
        seconds = results[f"b-{policy}"]["seconds"]
        precisions[policy] = {"speedup_over_float32": round(b / seconds, 3),
                              "label_agreement_with_float32": round(
                                  float((labels == labels_b).mean()), 5)}
        print(f"{policy}: {b / seconds:.2f}x the speed of float32 end to end; labels equal on "
              f"{100 * precisions[policy]['label_agreement_with_float32']:.3f}% of voxels")

    record = {
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model,
                    "cpu_flags": sorted(f for f in wanted_flags if f in flags),
                    "precision_auto": auto.policy, "python": sys.version.split()[0],
                    "keras": keras.__version__, "backend": keras_backend(),
                    "gpus": len(visible_gpus())},
        "model": {"input_shape": list(patch), "n_filters": args.filters, "depth": args.depth,
                  "pooling": args.pooling, "n_labels": args.labels,
                  "parameters": int(model.count_params()), "reach": list(reach.reach)},
        "image_shape": args.shape, "voxels": voxels, "batch_size": args.batch_size,
        "tiles_unetsl": plan.count(), "tile_shape_unetsl": list(tile_shape),
        "tiles_per_batch_unetsl": per_batch, "overlap_unetsl": list(plan.overlap),
        "tiles_training_patch": patch_plan.count(),
        "voxels_computed_millions": {k: round(v / 1e6, 3) for k, v in computed.items()},
        "ratio_b0_over_b": round(b0 / b, 3),
        "tiles_original": n_orig, "results": results,
        "ratio_b_over_a": round(b / a, 3), "ratio_c_over_b": round(c / b, 3),
        "cpu_ratio_b_over_a": round(b_cpu / a_cpu, 3),
        "cpu_ratio_c_over_b": round(c_cpu / b_cpu, 3),
        "load_average_end": round(os.getloadavg()[0], 2),
        "label_agreement_b_c": round(agree, 5), "baseline_rss_mib": round(baseline / 2**20, 1),
        "precisions": precisions,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    existing = {}
    if args.output.exists():
        try:
            existing = json.loads(args.output.read_text())
        except json.JSONDecodeError:
            existing = {}
    key = f"{args.filters}f-{'x'.join(map(str, args.patch))}-{'x'.join(map(str, args.shape))}"
    if visible_gpus():
        key += f"-gpu-{keras_backend()}"
    existing[key] = record
    args.output.write_text(json.dumps(existing, indent=2) + "\n")
    print(f"wrote {args.output} [{key}]")


if __name__ == "__main__":
    main()
