"""Prediction of a volume bigger than one wants in memory: one process vs a local Dask cluster.

Writes a synthetic uint16 OME-Zarr volume (default (z, y, x) = (256, 2048, 2048), 2 GiB, in
chunks of (8, 512, 512), stored uncompressed so that it is 2 GiB on disk too) chunk row by
chunk row, then predicts it with the same small 2D U-Net (2 filters, depth 2, 128 x 128
tiles) writing labels and probabilities as OME-Zarr (same axes, chunks and pixel size)

(a) in one process (``predict_image``'s engine: rows of tiles, blended, written chunk row
    by chunk row), and
(b) on a local Dask cluster of N worker processes (``--dask local:N``: chunk-aligned blocks,
    each worker loads the model once and writes its own chunks),

each in a fresh subprocess. Prints voxels/s, the peak resident memory of every process (the
client and each worker), the speed-up, checks that no process came near the volume's size
and that (a) and (b) agree (probabilities within 1e-5), writes
benchmarks/results/scale.json and deletes the volume and the outputs (unless --keep).

    .venv/bin/python benchmarks/scale.py                        # the 2 GiB run
    .venv/bin/python benchmarks/scale.py --shape 32 1024 1024   # a quick one
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
GiB = 2**30


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker_peak_rss() -> int:
    return peak_rss()


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -------------------------------------------------------------------------------- the data


def generate(path: Path, shape: tuple[int, int, int], chunks: tuple[int, int, int],
             seed: int = 0) -> dict:
    """A uint16 volume of blobs, ridges and noise, written one chunk row (along z) at a time."""
    from unetsl.io.omezarr_write import OutputOmeZarr, atomic_dir

    z, y, x = shape
    rng = np.random.default_rng(seed)
    yy = np.arange(y, dtype=np.float32)[:, None]
    xx = np.arange(x, dtype=np.float32)[None, :]
    start = time.perf_counter()
    with atomic_dir(path) as tmp:
        out = OutputOmeZarr(tmp, (1, 1, z, y, x), np.uint16, axes="zyx",
                            chunks=(1, 1, *chunks), spacing=(2.0, 0.5, 0.5), unit="µm",
                            compress=False, name="volume")
        for z0 in range(0, z, chunks[0]):
            z1 = min(z, z0 + chunks[0])
            planes = np.empty((z1 - z0, y, x), dtype=np.uint16)
            for k in range(z1 - z0):
                phase = 0.07 * (z0 + k)
                signal = (np.sin(yy / 17.0 + phase) * np.cos(xx / 23.0 - phase)
                          + 0.5 * np.sin((yy + xx) / 41.0))
                noise = rng.normal(0.0, 0.15, (y, x)).astype(np.float32)
                planes[k] = np.clip(1000 + 600 * (signal + noise), 0, 65535)
            out[(slice(0, 1), slice(None), slice(z0, z1))] = planes[None, None]
        out.close()
    return {"seconds": time.perf_counter() - start, "bytes_on_disk": du(path)}


def make_model(path: Path, patch: int, seed: int = 0) -> dict:
    import keras

    from unetsl.nets.model_files import save_model
    from unetsl.nets.unet import build_unet

    keras.utils.set_random_seed(seed)
    model = build_unet((1, 1, patch, patch), n_labels=1, depth=2, n_filters=2,
                       spatial_dropout_rate=0.0, activation="sigmoid")
    save_model(model, path)
    return {"input_shape": [1, 1, patch, patch], "n_filters": 2, "depth": 2, "n_labels": 1,
            "parameters": int(model.count_params())}


# ------------------------------------------------------------------------- one measured run


def child(mode: str, work: Path, workers: int, batch_size: int, volume: str) -> dict:
    """Run one prediction in this (fresh) process and report time and memory.

    seconds: the whole run as predict_image does it (model loading, for Dask the cluster
    start, the workers' TensorFlow start and model loading, and its shutdown);
    predict_seconds: from the first tile to the last file written.
    """
    from unetsl.cli.common import import_tensorflow_quietly

    import_tensorflow_quietly()
    from unetsl.predict.job import PredictionJob

    out = work / f"{mode}.ome.zarr"
    job = PredictionJob.create(work / "model.h5", work / volume, out)
    job.update({"batch size": batch_size})
    report: dict = {"mode": mode}
    start = time.perf_counter()
    if mode != "dask":
        from unetsl.nets.model_files import load_model

        model = load_model(work / "model.h5")
        ready = time.perf_counter()
        job.run(probabilities=True, model=model)
        done = time.perf_counter()
    else:
        from unetsl.predict.dask_cluster import dask_client
        from unetsl.predict.dask_workers import worker_model

        with dask_client(f"local:{workers}") as client:
            client.run(worker_model, str(work / "model.h5"), [0])  # TensorFlow up everywhere
            ready = time.perf_counter()
            run = job.run(probabilities=True, dask=client).dask
            done = time.perf_counter()
            report["worker_peak_rss"] = sorted(client.run(worker_peak_rss).values())
        report.update(block=list(run.block), blocks=run.blocks, tiles=run.tiles,
                      tiles_predicted=run.tiles_predicted)
    report["seconds"] = time.perf_counter() - start
    report["predict_seconds"] = done - ready
    report["main_peak_rss"] = peak_rss()
    return report


def run_child(mode: str, work: Path, workers: int, batch_size: int,
              volume: str = "volume.ome.zarr") -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--work", str(work),
           "--workers", str(workers), "--batch-size", str(batch_size), "--volume", volume]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{mode} run failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def compare(work: Path, z_step: int) -> dict:
    """Largest probability difference and differing labels of (a) and (b), row by row."""
    from unetsl.io.omezarr import open_zarr

    worst, differing = 0.0, 0
    pa, pb = open_zarr(work / "one-prob.ome.zarr").data, open_zarr(work / "dask-prob.ome.zarr").data
    la, lb = open_zarr(work / "one.ome.zarr").data, open_zarr(work / "dask.ome.zarr").data
    for z0 in range(0, pa.shape[2], z_step):
        key = (0, slice(None), slice(z0, z0 + z_step))
        worst = max(worst, float(np.abs(pa[key] - pb[key]).max()))
        differing += int((la[key] != lb[key]).sum())
    return {"max_abs_probability_difference": worst, "differing_labels": differing}


# ---------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 2048, 2048],
                        metavar=("Z", "Y", "X"))
    parser.add_argument("--chunks", type=int, nargs=3, default=[8, 512, 512],
                        metavar=("Z", "Y", "X"))
    parser.add_argument("--patch", type=int, default=128, help="tile size (y = x)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the volume and outputs (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the volume and outputs")
    parser.add_argument("--no-save", action="store_true", help="do not write scale.json")
    parser.add_argument("--child", choices=["one", "dask", "thin"], help=argparse.SUPPRESS)
    parser.add_argument("--volume", default="volume.ome.zarr", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(child(args.child, args.work, args.workers, args.batch_size,
                               args.volume)))
        return

    work = Path(tempfile.mkdtemp(prefix="unetsl-scale-", dir=args.work))
    shape, voxels = tuple(args.shape), int(np.prod(args.shape))
    volume_bytes = voxels * 2
    try:
        print(f"volume {shape} uint16 = {volume_bytes / GiB:.2f} GiB in {work}", flush=True)
        made = generate(work / "volume.ome.zarr", shape, tuple(args.chunks))
        print(f"  written in {made['seconds']:.1f} s, {made['bytes_on_disk'] / GiB:.2f} GiB on "
              "disk", flush=True)
        from unetsl.cli.common import import_tensorflow_quietly

        import_tensorflow_quietly()
        model = make_model(work / "model.h5", args.patch)
        # the same pipeline on a thin slab of planes of the same size: what memory a
        # process needs whatever the depth (TensorFlow, the model, one row of chunks)
        thin = (min(shape[0], 2 * args.chunks[0]), *shape[1:])
        generate(work / "thin.ome.zarr", thin, tuple(args.chunks))
        baseline = run_child("thin", work, args.workers, args.batch_size, "thin.ome.zarr")
        print(f"baseline: {thin} (z, y, x) in one process: peak RSS "
              f"{baseline['main_peak_rss'] / GiB:.2f} GiB", flush=True)
        runs = {}
        load = os.getloadavg()[0]
        for mode in ("one", "dask"):
            print(f"predicting: {'one process' if mode == 'one' else f'dask local:{args.workers}'}"
                  " ...", flush=True)
            runs[mode] = run_child(mode, work, args.workers, args.batch_size)
            r = runs[mode]
            r["voxels_per_s"] = voxels / r["seconds"]
            r["predict_voxels_per_s"] = voxels / r["predict_seconds"]
            peaks = [r["main_peak_rss"], *r.get("worker_peak_rss", [])]
            r["largest_peak_rss_fraction_of_volume"] = max(peaks) / volume_bytes
            workers = ", ".join(f"{p / GiB:.2f}" for p in r.get("worker_peak_rss", []))
            print(f"  {r['seconds']:.1f} s in all, {r['voxels_per_s'] / 1e6:.2f} Mvoxels/s; "
                  f"predicting {r['predict_seconds']:.1f} s, "
                  f"{r['predict_voxels_per_s'] / 1e6:.2f} Mvoxels/s; peak RSS "
                  f"main {r['main_peak_rss'] / GiB:.2f} GiB"
                  + (f", workers {workers} GiB" if workers else ""), flush=True)
        check = compare(work, args.chunks[0])
        speedup = runs["one"]["seconds"] / runs["dask"]["seconds"]
        speedup_predict = runs["one"]["predict_seconds"] / runs["dask"]["predict_seconds"]
        outputs = {m: du(work / f"{m}.ome.zarr") + du(work / f"{m}-prob.ome.zarr")
                   for m in ("one", "dask")}
        # bounded: no process near the volume's size, and one process needs about as much
        # for the whole volume as for a slab of two chunk rows of the same planes (memory
        # follows the plane size and chunks, not the depth; the allocator's fragmentation
        # adds a little as it runs)
        growth = runs["one"]["main_peak_rss"] / baseline["main_peak_rss"]
        bounded = (all(r["largest_peak_rss_fraction_of_volume"] < 0.75 for r in runs.values())
                   and growth <= 1.3)
        same = check["max_abs_probability_difference"] <= 1e-5
        print(f"speed-up dask local:{args.workers} / one process: {speedup:.2f}x in all, "
              f"{speedup_predict:.2f}x predicting (load average before: {load:.1f})")
        print(f"largest probability difference {check['max_abs_probability_difference']:.2e}, "
              f"differing labels {check['differing_labels']} of {voxels}")
        dask = runs["dask"]
        print(f"dask blocks {dask['blocks']} of {dask['block']}; tiles predicted "
              f"{dask['tiles_predicted']} for {dask['tiles']} "
              f"({dask['tiles_predicted'] / dask['tiles']:.3f}x)")
        print(f"one process: peak RSS {growth:.2f}x that of the {thin[0]}-plane slab for a "
              f"{shape[0] / thin[0]:.0f}x deeper volume")
        print(f"memory bounded (every process < 3/4 of the volume, one process within 1.3x "
              f"of the slab's peak): {bounded}; "
              f"identical within 1e-5: {same}")
        result = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "tensorflow": _version("tensorflow"), "dask": _version("dask"),
                        "zarr": _version("zarr")},
            "volume": {"shape_zyx": list(shape), "dtype": "uint16", "bytes": volume_bytes,
                       "bytes_on_disk": made["bytes_on_disk"], "chunks_zyx": args.chunks,
                       "generate_seconds": made["seconds"]},
            "model": model, "batch_size": args.batch_size, "workers": args.workers,
            "baseline_thin_volume": {"shape_zyx": list(thin), **baseline},
            "runs": runs, "speedup": speedup, "speedup_predicting": speedup_predict,
            "load_average_before": load, "comparison": check,
            "output_bytes_on_disk": outputs, "memory_bounded": bounded,
            "one_process_peak_rss_over_slab": growth,
            "identical_within_1e-5": same,
        }
        if not args.no_save:
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(result, indent=2) + "\n")
            print(f"wrote {RESULTS}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "unknown"


if __name__ == "__main__":
    main()
