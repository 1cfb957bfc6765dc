"""Accuracy on the example: train the 2D time-series example, score a held-out sequence.

Trains ``examples/epithelium-2d.json`` on generated epithelium (``unetsl.data.synthetic``) for a
number of epochs (the CPU budget), predicts a held-out sequence generated with another
seed, and scores it with ``unetsl.evaluate.scores``: membrane and vertex F1 within a tolerance
(1 px = the 4 direct neighbours, 1.5 px = the 8 neighbours) and cell-instance F1
(4-connected regions between predicted membranes, matched at IoU > 0.5).

    .venv/bin/python benchmarks/accuracy.py                 # 15 epochs, about 3 min on 2 cores
    .venv/bin/python benchmarks/accuracy.py --epochs 40

Prints a table; writes benchmarks/results/accuracy.json. Target: membrane F1 >= 0.9
within 10 minutes of CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "accuracy.json"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(epochs: int, n_images: int, seed: int) -> dict:
    import numpy as np

    from unetsl.config.model_config import Config
    from unetsl.data import synthetic
    from unetsl.evaluate.scores import evaluate
    from unetsl.nets.model_files import load_model
    from unetsl.predict.engine import predict
    from unetsl.predict.reduce import reduce
    from unetsl.training.train import train

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        synthetic.write_dataset(work, kind="2d", n_images=n_images, shape=(5, 128, 128),
                                seed=seed, distance=False)
        cfg = Config.load(REPO / "examples" / "epithelium-2d.json")
        cfg.path = work / "epithelium-2d.json"
        cfg.update({"epochs": epochs, "data sources": [{
            "source type": "paired directories", "input folders": ["images"],
            "label folders": ["labels"], "rotations": [], "labeller": "multiclass labels"}]})
        cfg.save()
        wall, cpu = time.perf_counter(), cpu_seconds()
        train(cfg, progress="none")
        train_wall, train_cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        model = load_model(cfg.sibling("-best.h5"))
        held_out = synthetic.epithelium_time_series(shape=(8, 256, 256), seed=seed + 10_007)
        image = held_out.image[None, None].astype(np.float32)  # frames as z, as for training
        labels = reduce(predict(model, image, normalize=cfg["normalize samples"]),
                        "multiclass")[0, 0]
        scores = {}
        for tolerance in (1.0, 1.5):
            ev = evaluate(labels, held_out.labels, labeller="multiclass labels", n_labels=2,
                          tolerance=tolerance)
            scores[f"membrane F1 ±{tolerance:g} px"] = ev.labels[0].tolerant_f1
            scores[f"vertex F1 ±{tolerance:g} px"] = ev.labels[1].tolerant_f1
            scores["membrane F1 exact"] = ev.labels[0].dice
            scores["cell F1"] = ev.cells.f1
    return {"epochs": epochs, "training images": n_images, "train wall s": train_wall,
            "train cpu s": train_cpu, **scores}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = run(args.epochs, args.images, args.seed)
    result["machine"] = f"{os.cpu_count()} CPU cores"
    width = max(len(k) for k in result)
    for key, value in result.items():
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {text}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(REPO)}")
    ok = result["membrane F1 ±1 px"] >= 0.9 and result["train wall s"] <= 600
    target = "membrane F1 ±1 px >= 0.9, training within 10 min on this CPU"
    print(f"target ({target}):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
