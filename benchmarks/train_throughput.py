"""Training throughput: patches/s of the default 2D+time and 3D models, and what it means in
FLOP/s against the CPU's peak.

For each model two numbers, on the same compiled model (the training step unetsl runs:
Adam, the Dice loss, the accuracy metrics):

- ``steps``: ``model.fit`` on batches already in memory: the network's forward and
  backward pass and the optimiser update, nothing else;
- ``train()``: :func:`unetsl.training.train.train` end to end on synthetic TIFFs: patch sampling
  from ``make_datasets``, the batch and epoch logs and the checkpoints written every epoch.

FLOPs per patch are counted from the layers (2 x multiply-adds of every convolution,
forward); a training step costs about 3 x forward (forward, gradient of the input,
gradient of the weights). The peak is cores x FMA lanes (fp32) x 2 x FMA units x clock,
with the lanes from the CPU flags (AVX-512: 16, AVX2: 8), 2 FMA units per core (override
with --fma-units) and the clock from /proc/cpuinfo (override with --ghz). Under a
hypervisor that clock is the base clock, so the script also measures a large fp32 matmul
as the ceiling this TensorFlow reaches in practice ("% matmul"). Other processes on the
machine lower every number: the load average is recorded.

    .venv/bin/python benchmarks/train_throughput.py                 # both models
    .venv/bin/python benchmarks/train_throughput.py --models 2d --batch-size 8

Prints a table; writes benchmarks/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.json"

#: The models measured: config keys on top of the defaults.
MODELS = {
    "2d": {"input shape": [1, 3, 64, 64]},  # the default config: 2D + time, 32 filters
    "3d": {"input shape": [1, 16, 64, 64], "pooling": [2, 2, 2]},  # README's 3D on a CPU
}


# ----------------------------------------------------------------------------- machine


def cpu_info() -> dict:
    """Cores, SIMD lanes for fp32 FMA, clock (GHz) and the CPU name, from /proc/cpuinfo."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    flags, name, mhz = set(), platform.processor() or platform.machine(), 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "flags" and not flags:
                flags = set(value.split())
            elif key == "model name":
                name = value.strip()
            elif key == "cpu MHz" and not mhz:
                mhz = float(value)
    except OSError:
        pass
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    fma = "fma" in flags or "avx512f" in flags
    return {"name": name, "cores": cores, "fp32_lanes": lanes, "fma": fma,
            "ghz": round(mhz / 1000, 3) if mhz else None}


def peak_flops(info: dict, fma_units: int, ghz: float) -> float:
    """cores x lanes x 2 (multiply + add) x FMA units x clock."""
    per_cycle = info["fp32_lanes"] * (2 if info["fma"] else 1) * fma_units
    return info["cores"] * per_cycle * ghz * 1e9


def matmul_flops(n: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of a large fp32 matrix product: what this TensorFlow reaches here in practice.

    A check on the nominal peak: under a hypervisor /proc/cpuinfo shows the base clock, and
    turbo clocks can make the real peak much higher.
    """
    import tensorflow as tf

    a = tf.random.normal((n, n), seed=1)
    b = tf.random.normal((n, n), seed=2)
    product = tf.function(tf.linalg.matmul)
    product(a, b).numpy()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            result = product(a, b)
        result.numpy()
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2.0 * n**3 / best


# ---------------------------------------------------------------------------- FLOPs


def forward_flops(model) -> float:
    """2 x multiply-adds of every convolution for one patch (other layers are negligible)."""
    total = 0.0
    for layer in model.layers:
        if layer.__class__.__name__ not in ("Conv2D", "Conv3D"):
            continue
        kernel = layer.kernel.shape  # (k..., in, out)
        out_voxels = int(np.prod([d for d in layer.output.shape[1:-1]]))
        total += 2.0 * out_voxels * float(np.prod(kernel))
    return total


# ----------------------------------------------------------------------------- runs


def make_config(folder: Path, keys: dict, batch_size: int, epochs: int):
    from unetsl.config.model_config import Config

    cfg = Config(path=folder / "bench.json")
    cfg.update({**keys, "batch size": batch_size, "epochs": epochs, "seed": 1,
                "validation fraction": 0.0})
    return cfg


def time_steps(cfg, steps: int, batch_size: int) -> tuple[float, object]:
    """Seconds per training step on in-memory batches (after one warm-up epoch)."""
    import keras

    from unetsl.nets.model_files import build_model_from_config
    from unetsl.nets.precision import choose_precision, with_precision
    from unetsl.training.setup import compile_model

    policy = choose_precision(cfg["precision"]).policy
    model = with_precision(build_model_from_config(cfg), policy)
    compile_model(model, cfg)
    c, z, y, x = (int(v) for v in cfg["input shape"])
    rng = np.random.default_rng(0)

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.x = rng.random((batch_size, z, y, x, c), dtype=np.float32)
            self.y = (rng.random((batch_size, z, y, x, cfg["n labels"])) > 0.7).astype(np.float32)

        def __len__(self):
            return steps

        def __getitem__(self, i):
            return self.x, self.y

    data = Batches()
    model.fit(data, epochs=1, steps_per_epoch=min(3, steps), verbose=0)  # trace + warm up
    start = time.perf_counter()
    model.fit(data, epochs=1, verbose=0)
    return (time.perf_counter() - start) / steps, model


def time_train(cfg, folder: Path, n_images: int) -> tuple[float, int]:
    """Seconds per step of train()'s second epoch (the first one traces the graph).

    The epoch time is the one train() prints per epoch: sampling, the steps, the logs and
    the two checkpoints written at the end of the epoch.
    """
    import io

    from unetsl.data.synthetic import write_dataset
    from unetsl.nets.model_files import build_model_from_config, save_model
    from unetsl.training.train import train

    c, z, y, x = (int(v) for v in cfg["input shape"])
    kind = "2d" if z == 3 else "3d"
    shape = (z, 2 * y, 2 * x)  # 9 patches per image at half-patch stride
    write_dataset(folder, kind, n_images=n_images, shape=shape, seed=3, distance=False)
    cfg.update({"data sources": [{"source type": "paired directories",
                                  "input folders": ["images"], "label folders": ["labels"],
                                  "labeller": "multiclass labels"}],
                "stride": [0, z, y // 2, x // 2], "n labels": 2, "epochs": 2})
    cfg.save()
    save_model(build_model_from_config(cfg), cfg.model_path)
    from unetsl.training.logs import read_log

    out = io.StringIO()
    result = train(cfg, progress="lines", stream=out)
    lines = [ln for ln in out.getvalue().splitlines() if ln.startswith("epoch 2/2 ")]
    if not lines:
        raise RuntimeError(f"no epoch line for epoch 2 in: {out.getvalue()!r}")
    last = lines[-1]
    seconds = float(last.split()[2].rstrip("s"))  # "epoch 2/2 12.3s  loss ..."
    steps = len(read_log(result.batch_log)[1]) // 2
    return seconds / steps, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="2d,3d", help="comma-separated: 2d, 3d")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="timed in-memory steps")
    parser.add_argument("--images", type=int, default=3, help="synthetic images for train()")
    parser.add_argument("--no-train", action="store_true", help="skip the train() runs")
    parser.add_argument("--fma-units", type=int, default=2)
    parser.add_argument("--ghz", type=float, default=None, help="clock (default: /proc/cpuinfo)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--precisions", default="float32,auto",
                        help='comma-separated "precision" values, one row each (default: '
                             'float32 and what "auto" picks here, if that differs)')
    args = parser.parse_args()
    logging.getLogger("unetsl").setLevel(logging.WARNING)

    import tensorflow as tf

    info = cpu_info()
    ghz = args.ghz or info["ghz"] or 2.0
    peak = peak_flops(info, args.fma_units, ghz)
    gpus = tf.config.list_physical_devices("GPU")
    matmul = matmul_flops()
    print(f"CPU: {info['name']}, {info['cores']} cores, fp32 lanes {info['fp32_lanes']}, "
          f"FMA {'yes' if info['fma'] else 'no'}, {args.fma_units} FMA units, {ghz} GHz")
    print(f"peak = {info['cores']} cores x {info['fp32_lanes']} lanes x "
          f"{2 if info['fma'] else 1} x {args.fma_units} units x {ghz} GHz = "
          f"{peak / 1e9:.1f} GFLOP/s (fp32)" + (f"; GPUs: {len(gpus)}" if gpus else ""))
    print(f"measured: a 4096 x 4096 fp32 matmul runs at {matmul / 1e9:.1f} GFLOP/s "
          f"({100 * matmul / peak:.0f}% of that peak)")

    from unetsl.nets.precision import choose_precision, cpu_flags

    auto = choose_precision("auto")
    flags = cpu_flags()[1]
    print("CPU flags: " + " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in
                                   ("avx2", "avx512f", "avx512_bf16", "amx_bf16"))
          + f'; precision "auto" here: {auto.policy} ({auto.reason})')
    precisions = list(dict.fromkeys(auto.policy if p.strip() == "auto" else p.strip()
                                    for p in args.precisions.split(",") if p.strip()))
    rows = []
    runs = [(m.strip(), p) for m in args.models.split(",") if m.strip() for p in precisions]
    for key, precision in runs:
        if key not in MODELS:
            sys.exit(f"unknown model {key!r}; choose from {', '.join(MODELS)}")
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            keys = {**MODELS[key], "precision": precision}
            cfg = make_config(folder, keys, args.batch_size, epochs=1)
            step, model = time_steps(cfg, args.steps, args.batch_size)
            fwd = forward_flops(model)
            row = {"model": key, "precision": precision,
                   "input shape": cfg["input shape"], "pooling": cfg["pooling"],
                   "n filters": cfg["n filters"], "depth": cfg["depth"],
                   "parameters": int(model.count_params()), "batch size": args.batch_size,
                   "forward GFLOP per patch": round(fwd / 1e9, 3),
                   "train GFLOP per patch": round(3 * fwd / 1e9, 3),
                   "steps": {"seconds per step": round(step, 4),
                             "patches/s": round(args.batch_size / step, 2)}}
            row["steps"]["GFLOP/s"] = round(3 * fwd * args.batch_size / step / 1e9, 1)
            row["steps"]["% of peak"] = round(100 * 3 * fwd * args.batch_size / step / peak, 1)
            row["steps"]["% of matmul"] = round(
                100 * 3 * fwd * args.batch_size / step / matmul, 1)
            if not args.no_train:
                seconds, n = time_train(make_config(folder, keys, args.batch_size, 1),
                                        folder, args.images)
                flops = 3 * fwd * args.batch_size / seconds
                row["train()"] = {"seconds per step": round(seconds, 4), "steps": n,
                                  "patches/s": round(args.batch_size / seconds, 2),
                                  "GFLOP/s": round(flops / 1e9, 1),
                                  "% of peak": round(100 * flops / peak, 1)}
            rows.append(row)
            del model

    print()
    print(f"{'model':6} {'precision':15} {'patch (c,z,y,x)':16} {'params':>10} "
          f"{'GFLOP/patch':>11} "
          f"{'batch':>5} {'patches/s':>10} {'GFLOP/s':>8} {'% peak':>7} {'% matmul':>9} "
          f"{'train() p/s':>12}")
    for r in rows:
        t = r.get("train()", {}).get("patches/s", "-")
        print(f"{r['model']:6} {r['precision']:15} {str(tuple(r['input shape'])):16} "
              f"{r['parameters']:>10,} "
              f"{r['train GFLOP per patch']:>11} {r['batch size']:>5} "
              f"{r['steps']['patches/s']:>10} {r['steps']['GFLOP/s']:>8} "
              f"{r['steps']['% of peak']:>7} {r['steps']['% of matmul']:>9} {t:>12}")

    load = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    print(f"load average (1, 5, 15 min) at the end: {load} (other processes skew the numbers)")
    report = {"machine": {**info, "ghz used": ghz, "fma units": args.fma_units,
                          "load average at end": load, "timed steps": args.steps,
                          "peak GFLOP/s": round(peak / 1e9, 1),
                          "matmul GFLOP/s": round(matmul / 1e9, 1), "gpus": len(gpus),
                          "tensorflow": tf.__version__, "python": platform.python_version()},
              "results": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
