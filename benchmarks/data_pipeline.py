"""Does patch preparation keep up with training? Steps/s fed by the PyDataset vs from memory.

For the default 2D+time model and the README's CPU-sized 3D model, on the same compiled
model (Adam, the config's Dice loss):

- ``memory``: ``model.fit`` on (x, y) arrays already in memory (no data work at all);
- ``pydataset``: ``model.fit`` on the training ``PatchDataset`` of ``make_datasets``, built
  from synthetic TIFFs on disk, with every augmentation on (a source rotation angle, flips,
  90-degree turns, intensity scale/shift, elastic deformation), for several
  ``workers`` / ``use_multiprocessing`` settings.

Overhead = (memory steps/s) / (pydataset steps/s) - 1; the goal is <= 10 %. Also reported:
the time to build the datasets (reading the TIFFs) and the time to make one batch on the
main thread (the data work a step has to hide).

    .venv/bin/python benchmarks/data_pipeline.py                  # both models
    .venv/bin/python benchmarks/data_pipeline.py --models 2d --steps 20

Prints a table; writes benchmarks/results/data_pipeline.json.
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

RESULTS = Path(__file__).resolve().parent / "results" / "data_pipeline.json"

#: Model config keys on top of the defaults, and the synthetic data each is fed with.
MODELS = {
    "2d": {"config": {"input shape": [1, 3, 64, 64]},  # the default config: 2D + time
           "data": {"kind": "2d", "n_images": 4, "shape": (6, 192, 192)}},
    "3d": {"config": {"input shape": [1, 16, 64, 64], "pooling": [2, 2, 2]},  # README, CPU
           "data": {"kind": "3d", "n_images": 2, "shape": (32, 128, 128)}},
}

AUGMENTATION = {"augment flips": True, "augment rotate 90": True,
                "augment intensity scale": 0.1, "augment intensity shift": 0.1,
                "augment elastic": 4.0, "patch jitter": [0, 8, 8]}

#: (workers, use_multiprocessing) settings of the PyDataset measured.
WORKERS = [(1, False), (2, False), (2, True)]


def step_times(model, data, steps: int, batch_size: int | None = None) -> list[float]:
    """Seconds of each training step of one ``fit`` call (the first step is dropped)."""
    import keras

    marks: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if not marks:
                marks.append(time.perf_counter())

        def on_train_batch_end(self, batch, logs=None):
            marks.append(time.perf_counter())

    if isinstance(data, tuple):
        n = (steps + 1) * batch_size
        model.fit(data[0][:n], data[1][:n], batch_size=batch_size, epochs=1, verbose=0,
                  shuffle=False, callbacks=[Timer()])
    else:
        model.fit(data, epochs=1, steps_per_epoch=steps + 1, verbose=0, callbacks=[Timer()])
    return list(np.diff(marks)[1:])


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def measure(name: str, steps: int, rounds: int, folder: Path, batch_size: int) -> dict:
    """Alternate short runs of every feed, ``rounds`` times, so that drift of a shared
    machine hits all feeds alike; report medians of the per-step times."""
    from unetsl.config.model_config import Config
    from unetsl.data.dataset import make_datasets
    from unetsl.data.dataset_options import DatasetOptions
    from unetsl.data.synthetic import write_dataset
    from unetsl.nets.losses import get_loss, get_optimizer
    from unetsl.nets.model_files import build_model_from_config

    spec = MODELS[name]
    root = folder / name
    write_dataset(root, distance=False, **spec["data"])
    cfg = Config(path=root / "m.json")
    cfg.update(spec["config"])
    cfg.update(AUGMENTATION)
    cfg.update({"batch size": batch_size, "validation fraction": 0.0, "seed": 1,
                "data sources": [{"source type": "paired directories",
                                  "input folders": ["images"], "label folders": ["labels"],
                                  "rotations": [30], "labeller": "multiclass labels"}]})
    patch = tuple(cfg["input shape"])
    model = build_model_from_config(cfg)
    model.compile(optimizer=get_optimizer(cfg["optimizer"], 1e-4),
                  loss=get_loss(cfg["loss function"]))

    # the data work alone, on the main thread: wall and CPU time per batch
    options = DatasetOptions.from_config(cfg)
    probe, _ = make_datasets(options, patch_shape=patch, n_labels=1, output_names=None,
                             batch_size=batch_size)
    n_probe = min(len(probe), 30)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n_probe):
        probe[i]
    batch_ms = 1000 * (time.perf_counter() - wall) / n_probe
    batch_cpu_ms = 1000 * (time.process_time() - cpu) / n_probe

    # in memory: batches made beforehand, fed as arrays
    xs, ys = zip(*(probe[i % len(probe)] for i in range(steps + 1)), strict=True)
    feeds: dict[str, object] = {"arrays in memory": (np.concatenate(xs), np.concatenate(ys))}
    setup = {}
    for workers, multi in WORKERS:
        key = f"PyDataset workers={workers}{' multiprocessing' if multi else ''}"
        t0 = time.perf_counter()
        feeds[key], _ = make_datasets(options, patch_shape=patch, n_labels=1, output_names=None,
                                      batch_size=batch_size, workers=workers,
                                      use_multiprocessing=multi, max_queue_size=8)
        setup[key] = time.perf_counter() - t0
    for feed in feeds.values():  # warm-up: tracing, dataset adapters
        step_times(model, feed, 2, batch_size)

    times: dict[str, list[float]] = {key: [] for key in feeds}
    train_cpu = []
    keys = list(feeds)
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            cpu = time.process_time()
            times[key] += step_times(model, feeds[key], steps, batch_size)
            if key == "arrays in memory":
                train_cpu.append((time.process_time() - cpu) / (steps + 1))
    memory = float(np.median(times["arrays in memory"]))
    step_cpu_ms = 1000 * float(np.median(train_cpu))
    result = {"patch (c, z, y, x)": list(patch), "batch size": batch_size,
              "params": int(model.count_params()), "batches in epoch": len(probe),
              "timed steps per feed": rounds * steps,
              "batch prep ms (main thread)": round(batch_ms, 2),
              "batch prep cpu ms": round(batch_cpu_ms, 2),
              "train step cpu ms (in memory)": round(step_cpu_ms, 1),
              "data cpu share": batch_cpu_ms / (batch_cpu_ms + step_cpu_ms),
              "feeds": {}}
    for key, values in times.items():
        median = float(np.median(values))
        result["feeds"][key] = {
            "median s/step": median, "mean s/step": float(np.mean(values)),
            "steps/s": 1 / median, "overhead": median / memory - 1,
            "setup s (read TIFFs)": round(setup.get(key, 0.0), 3)}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="2d,3d", help="comma-separated: 2d, 3d")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per run (default: 8 for 2d, 3 for 3d)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="runs of every feed, alternated (default: 8 for 2d, 2 for 3d)")
    parser.add_argument("--batch-size", type=int, default=1, help="default: the config's 1")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    report = {"machine": {"cpu cores": cores, "gpus": gpus, "platform": platform.platform(),
                          "python": sys.version.split()[0], "tensorflow": tf.__version__,
                          "keras": keras.__version__},
              "augmentation": {**AUGMENTATION, "source rotations": [30]}, "models": {}}
    report["machine"]["load average before"] = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            steps = args.steps or (8 if name == "2d" else 3)
            rounds = args.rounds or (8 if name == "2d" else 2)
            print(f"{name}: {rounds} rounds of {steps} steps per feed ...", flush=True)
            report["models"][name] = measure(name, steps, rounds, Path(tmp), args.batch_size)
    report["machine"]["load average after"] = load_average()

    device = f"{len(gpus)} GPU(s)" if gpus else "no GPU"
    print(f"\n{cores} CPU cores, {device}, load average {report['machine']['load average before']}"
          f" -> {report['machine']['load average after']}; batch size {args.batch_size}; "
          "overhead = median s/step / in-memory median s/step - 1\n")
    print(f"{'model':6} {'feed':38} {'s/step':>8} {'steps/s':>8} {'overhead':>9}")
    for name, r in report["models"].items():
        for feed, p in r["feeds"].items():
            overhead = "" if feed == "arrays in memory" else f"{100 * p['overhead']:8.1f}%"
            print(f"{name:6} {feed:38} {p['median s/step']:8.3f} {p['steps/s']:8.2f} "
                  f"{overhead:>9}")
        print(f"{'':6} one batch on the main thread: {r['batch prep ms (main thread)']:.1f} ms "
              f"({r['batch prep cpu ms']:.1f} ms CPU) vs {r['train step cpu ms (in memory)']:.0f} "
              f"ms CPU per training step: data work is {100 * r['data cpu share']:.2f}% of "
              "the CPU time\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
