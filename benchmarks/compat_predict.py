"""Time predict_image on the original's trained models, as the original's numbers were taken.

The original's predict_image took about 24 s and 1.6 GB peak memory for a 64x256x256 uint16
volume with trained-3d-best.h5, and about 20 s for a 5x512x512 time series with
trained-2d-best.h5, on a 2-core CPU machine (TensorFlow 2.21 with legacy Keras 2). This script
generates images of those sizes (lines on noise, like the compat samples), runs
``predict_image MODEL IMAGE OUT -b`` in a fresh process for each (so start-up, model loading
and conversion, reading and writing are included, as in the original's figure), and reports
the wall time and the peak resident memory of that process.

    .venv/bin/python benchmarks/compat_predict.py [--compat ../shared/compat] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
ORIGINAL = {"3d": (24.0, 1.6), "2d": (20.0, None)}  # seconds, GB (None: not quoted)


def lines_image(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """uint16 planes of thin horizontal/vertical lines, blurred, x2000 + 200, noise sd 60."""
    rng = np.random.default_rng(seed)
    planes = np.zeros(shape, np.float32)
    for plane in planes:
        for row in rng.choice(shape[1], size=shape[1] // 16, replace=False):
            plane[row, :] = 1.0
        for col in rng.choice(shape[2], size=shape[2] // 16, replace=False):
            plane[:, col] = 1.0
    planes = ndimage.gaussian_filter(planes, (0, 1, 1)) * 2000 + 200
    planes += rng.normal(0, 60, shape)
    return np.clip(planes, 0, 65535).astype(np.uint16)


def run_child(args: list[str]) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS in GB, exit code, stderr tail) of one command."""
    with tempfile.TemporaryFile("w+") as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=errors, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        tail = errors.read()[-500:]
    return wall, usage.ru_maxrss / 1024 / 1024, proc.returncode, tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compat", type=Path, default=REPO.parent / "shared" / "compat")
    parser.add_argument("--repeat", type=int, default=2, help="runs per case (best is kept)")
    args = parser.parse_args()
    predict = shutil.which("predict_image", path=str(Path(sys.executable).parent)) \
        or "predict_image"
    cases = {
        "3d": ("trained-3d-best.h5", (64, 256, 256), "64x256x256 uint16 volume (ZYX)"),
        "2d": ("trained-2d-best.h5", (5, 512, 512), "5x512x512 uint16 time series (TYX)"),
    }
    for model_name, _, _ in cases.values():
        if not (args.compat / model_name).is_file():
            print(f"error: {args.compat / model_name} not found (use --compat)", file=sys.stderr)
            return 2
    print(f"machine: {os.cpu_count()} CPU cores; python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="unetsl-bench-") as tmp:
        folder = Path(tmp)
        for key, (model_name, shape, what) in cases.items():
            image = folder / f"bench-{key}.tif"
            axes = "ZYX" if key == "3d" else "TYX"
            tifffile.imwrite(image, lines_image(shape, seed=1), imagej=True,
                             metadata={"axes": axes})
            results = []
            for _ in range(args.repeat):
                out = folder / f"pred-{key}.tif"
                wall, rss, code, err = run_child(
                    [predict, str(args.compat / model_name), str(image), str(out), "-b"])
                if code != 0:
                    print(f"error: predict_image failed ({code}): {err}", file=sys.stderr)
                    return 1
                results.append((wall, rss))
            wall, rss = min(r[0] for r in results), max(r[1] for r in results)
            orig_s, orig_gb = ORIGINAL[key]
            quoted = f"{orig_s:.0f} s" + (f", {orig_gb} GB" if orig_gb else "")
            print(f"{model_name} on {what}: {wall:.1f} s (best of {args.repeat}), "
                  f"peak RSS {rss:.2f} GB; original: {quoted}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
