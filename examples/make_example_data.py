"""Write a synthetic epithelium training set (paired images/, labels/, labels-dist/ folders).

Usage:
    python examples/make_example_data.py OUT_FOLDER [--kind 2d|3d] [--n N] [--seed S]
        [--shape A Y X] [--no-distance] [--cerberus] [--held-out]

--held-out also writes one image with an unrelated seed, for evaluating a trained model:
OUT_FOLDER/held-out/epi-holdout.tif with held-out/labels/ and held-out/labels-dist/ beside it,
and held-out/cells/: the true cell ids (the same cell keeps its id in every frame).

--cerberus also writes labels-packed/ (and held-out/labels-packed/): uint8 labels for a
cerberus model (examples/cerberus.json) with membrane/vertex in bits 0-1 and the distance to
the membrane, clipped at 63, in bits 2-7; attach them with --labeller linear.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unetsl.data import synthetic
from unetsl.errors import UnetslError

HOLD_OUT_SEED_OFFSET = 1_000_003  # far from the training seeds seed .. seed + n - 1


def write_held_out(
    out: Path,
    kind: str,
    shape: tuple[int, int, int] | None,
    seed: int,
    distance: bool,
    cerberus: bool = False,
) -> list[Path]:
    """Write the held-out image and its targets; return the paths written."""
    sample = synthetic.make_sample(kind, shape, seed + HOLD_OUT_SEED_OFFSET)
    folder = out / "held-out"
    image_path = folder / "epi-holdout.tif"
    synthetic.write_imagej(image_path, sample.image, kind)
    written = [image_path]
    targets = synthetic.sample_targets(sample, distance, cerberus)
    for sub, array in targets.items():
        path = folder / sub / image_path.name
        synthetic.write_imagej(path, array, kind)
        written.append(path)
    if sample.cells is not None:  # true cell ids, tracked over time: the truth for cells
        path = folder / "cells" / image_path.name
        synthetic.write_imagej(path, sample.cells, kind)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_folder", type=Path, help="folder to write into (created)")
    parser.add_argument("--kind", choices=("2d", "3d"), default="2d",
                        help="2d: TYX time series; 3d: ZYX stacks (default 2d)")
    parser.add_argument("--n", type=int, default=4, help="number of training images (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image (default 0)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("A", "Y", "X"), default=None,
                        help="(t, y, x) for 2d or (z, y, x) for 3d; default 5 128 128 / 32 96 96")
    parser.add_argument("--no-distance", action="store_true",
                        help="do not write labels-dist/ (distance-transform targets)")
    parser.add_argument("--cerberus", action="store_true",
                        help="also write labels-packed/: bit-packed labels for a cerberus model "
                             "(bits 0-1 membrane/vertex, bits 2-7 distance 0..63)")
    parser.add_argument("--held-out", action="store_true",
                        help="also write held-out/epi-holdout.tif (+ labels) with another seed")
    args = parser.parse_args(argv)
    shape = tuple(args.shape) if args.shape else None
    distance = not args.no_distance
    try:
        written = synthetic.write_dataset(
            args.out_folder, kind=args.kind, n_images=args.n, shape=shape, seed=args.seed,
            distance=distance, cerberus=args.cerberus,
        )
        for sub, paths in written.items():
            print(f"{sub}: {len(paths)} file(s) in {args.out_folder / sub}")
            for path in paths:
                print(f"  {path}")
        if args.held_out:
            for path in write_held_out(args.out_folder, args.kind, shape, args.seed, distance,
                                       args.cerberus):
                print(f"held-out: {path}")
    except UnetslError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
