"""Does bfloat16 train like float32 on this machine, and is it faster? (issue 24)

A minimal reproduction of the fault that made "precision auto" learn nothing on Intel Xeons
with AMX, for anyone with such a CPU (``grep amx_bf16 /proc/cpuinfo``): a few lines of Keras,
the network of the report (Conv3D 16 -> max-pool (1, 2, 2) -> Conv3D F -> 1x1 sigmoid),
trained ``--steps`` Adam steps on one fixed batch in float32 and in ``mixed_bfloat16`` from
the same weights. Healthy kernels give the same loss to about 3 digits; AMX's were reported
to stay near the start (learning nothing). Each row also says whether a second bfloat16
run repeats the first bit for bit.

Then, for the demo's model (``examples/epithelium-2d.json``, batch 8 of [1, 3, 64, 64]):
seconds per training step and per prediction batch in both precisions, and what unetsl's
start-up check (``unetsl.nets.precision_check``) decides here for training (on the reference
network and on the demo's own model, as training does) and prediction.

Everything runs once per oneDNN ISA setting in a fresh process, since oneDNN reads
``ONEDNN_MAX_CPU_ISA`` when TensorFlow loads: the default, and ``AVX512_CORE_BF16`` (bfloat16
without AMX, measured to train correctly on AMX Xeons but slower than float32 there).

    .venv/bin/python benchmarks/precision.py [--steps 60] [--filters 16 32 64]

Prints a table; writes benchmarks/results/precision.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "precision.json"
DEMO_CONFIG = HERE.parent / "examples" / "epithelium-2d.json"
ISAS = ("default", "AVX512_CORE_BF16")
POLICIES = ("float32", "mixed_bfloat16")


def repro_losses(policy: str, filters: int, steps: int) -> list[float]:
    """The reproduction: the reported network trained ``steps`` steps in ``policy``."""
    import keras
    import numpy as np
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    x = gaussian_filter(rng.normal(size=(4, 8, 32, 32, 1)), (0, 1, 2, 2, 0)).astype("float32")
    x /= x.std()
    y = (x[:, :, ::2, ::2] > 0).astype("float32")  # the net's output is pooled in y and x

    def conv(n: int, size: int, seed: int, **kw) -> keras.layers.Layer:
        return keras.layers.Conv3D(n, size, padding="same", dtype=kw.pop("dtype", policy),
                                   kernel_initializer=keras.initializers.GlorotUniform(seed),
                                   **kw)

    inputs = keras.Input((8, 32, 32, 1))
    h = conv(16, 3, 1, activation="relu")(inputs)
    h = keras.layers.MaxPooling3D((1, 2, 2), dtype=policy)(h)
    h = conv(filters, 3, 2, activation="relu")(h)
    outputs = conv(1, 1, 3, activation="sigmoid", dtype="float32")(h)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    return [float(model.train_on_batch(x, y)) for _ in range(steps)]


def demo_speed(policy: str, repeats: int) -> dict:
    """Seconds per training step and per prediction batch of the demo's model."""
    import keras
    import numpy as np

    from unetsl.config.model_config import Config
    from unetsl.nets.precision import with_precision
    from unetsl.nets.unet import build_model
    from unetsl.training.setup import compile_model

    cfg = Config.load(DEMO_CONFIG)
    model = with_precision(build_model(cfg), policy)
    compile_model(model, cfg, weighted=False)
    batch = int(cfg["batch size"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, 3, 64, 64, 1)).astype("float32")
    y = (rng.random((batch, 3, 64, 64, 2)) > 0.8).astype("float32")
    timings = {}
    for name, step in (("train step s", lambda: model.train_on_batch(x, y)),
                       ("predict batch s", lambda: model.predict_on_batch(x))):
        step()  # compile
        started = time.perf_counter()
        for _ in range(repeats):
            step()
        timings[name] = (time.perf_counter() - started) / repeats
    keras.backend.clear_session()
    return timings


def demo_model_check():
    """What training's check of its own model (``model_training_check``) says of the demo's
    model: the reference network passed on an AMX Xeon whose kernels broke this one."""
    import keras

    from unetsl.config.model_config import Config
    from unetsl.nets.precision_check import model_training_check
    from unetsl.nets.unet import build_model
    from unetsl.training.setup import compile_model

    cfg = Config.load(DEMO_CONFIG)
    keras.utils.set_random_seed(1)
    model = build_model(cfg)

    def compile_copy(copy: keras.Model) -> None:
        compile_model(copy, cfg, optimizer=keras.optimizers.Adam(1e-3))

    return model_training_check(model, compile_copy, int(cfg["batch size"]))(
        "mixed_bfloat16", "training")


def child(steps: int, filters: list[int], repeats: int) -> dict:
    """Everything measured under the ISA this process was started with."""
    from unetsl.nets.precision_check import check_precision

    rows = []
    for f in filters:
        runs = {p: repro_losses(p, f, steps) for p in POLICIES}
        again = repro_losses("mixed_bfloat16", f, steps)
        rows.append({"filters": f, "start": runs["float32"][0],
                     **{f"{p} loss": runs[p][-1] for p in POLICIES},
                     "bfloat16 repeats bit for bit": again == runs["mixed_bfloat16"]})
    checks = {purpose: check_precision("mixed_bfloat16", purpose)
              for purpose in ("training", "prediction")}
    checks["training (demo model)"] = demo_model_check()
    return {"repro": rows,
            "demo model": {p: demo_speed(p, repeats) for p in POLICIES},
            "check": {k: {"passed": c.passed, "summary": c.summary} for k, c in checks.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--filters", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--repeats", type=int, default=10, help="demo-model steps timed")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.steps, args.filters, args.repeats)))
        return
    sys.path.insert(0, str(HERE))
    from machine import cpu_model

    results = {"cpu": cpu_model(), "steps": args.steps, "isa": {}}
    for isa in ISAS:
        env = dict(os.environ)
        env.pop("ONEDNN_MAX_CPU_ISA", None)
        if isa != "default":
            env["ONEDNN_MAX_CPU_ISA"] = isa
        out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps),
                              "--repeats", str(args.repeats), "--filters",
                              *map(str, args.filters)], env=env, capture_output=True,
                             text=True, check=True)
        results["isa"][isa] = json.loads(out.stdout.strip().splitlines()[-1])
    report(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.output}")


def report(results: dict) -> None:
    print(f"{results['cpu']}; {results['steps']} Adam steps on one batch")
    print(f"{'oneDNN ISA':18} {'F':>3} {'start':>7} {'float32':>8} {'bfloat16':>8}  repeats")
    for isa, got in results["isa"].items():
        for row in got["repro"]:
            print(f"{isa:18} {row['filters']:3d} {row['start']:7.4f} {row['float32 loss']:8.4f}"
                  f" {row['mixed_bfloat16 loss']:8.4f}  {row['bfloat16 repeats bit for bit']}")
    print(f"\ndemo model, batch 8: {'':9} train step s  predict batch s  (float32 / bfloat16)")
    for isa, got in results["isa"].items():
        full, half = got["demo model"]["float32"], got["demo model"]["mixed_bfloat16"]
        print(f"{isa:30} {full['train step s']:6.3f} / {half['train step s']:6.3f}"
              f"   {full['predict batch s']:6.3f} / {half['predict batch s']:6.3f}")
    for isa, got in results["isa"].items():
        for purpose, c in got["check"].items():
            print(f"check {isa} {purpose}: {'passed' if c['passed'] else 'FAILED'}: "
                  f"{c['summary']}")


if __name__ == "__main__":
    main()
