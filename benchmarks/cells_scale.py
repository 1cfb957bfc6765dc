"""segment_cells at scale: whole-frame versus block-by-block, peak memory, seconds, agreement.

Each run is a separate ``segment_cells`` process (as a user types it), so its peak resident
memory (``ru_maxrss`` of the child) is its own. Volumes are synthetic 3D epithelia
(``unetsl.data.synthetic.epithelium_stack``, columnar cells of about 16 px) whose membrane
skeleton, blurred (sigma 0.5 slices, 1 px) and scaled to 0..1, stands for a network's
probability map; larger volumes mirror-tile one generated stack in y and x (the cells stay
realistic, the work per voxel is the same), written as OME-Zarr chunk by chunk.

Rows:
  whole    the default run on a volume that fits ("cell block voxels" raised above its size)
  blocks   the same volume block by block (default "cell block voxels", 8 M, and halo)
  measured the fitting volume block by block with --table and --meshes (read back block by
           block from the label file)
  movie    three frames of the fitting volume drifting 1 px per frame along x, block by block,
           tracked (overlaps counted block by block), with --table
  large    a volume several times the block size, block by block only

"agreement" is the cell F1 (IoU > 0.5, ``unetsl.evaluate.instances``) of the block-by-block
labels against the whole-frame labels of the same volume.

    python benchmarks/cells_scale.py [--quick] [--json benchmarks/results/cells_scale.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from unetsl.data import synthetic
from unetsl.evaluate.instances import instance_scores
from unetsl.io.lazy import open_image
from unetsl.io.omezarr_write import OutputOmeZarr, atomic_dir

SPACING = (2.0, 1.0, 1.0)
TILE = (64, 256, 256)  # one generated stack (z, y, x), mirror-tiled for larger volumes


def probability_tile(seed: int = 0) -> np.ndarray:
    sample = synthetic.epithelium_stack(shape=TILE, seed=seed)
    blurred = ndi.gaussian_filter((sample.labels & 1).astype(np.float32), (0.5, 1, 1))
    return blurred / blurred.max()


def write_volume(path: Path, tile: np.ndarray, repeat: tuple[int, int]) -> tuple[int, ...]:
    """An OME-Zarr (1, 1, z, ry*y, rx*x) of the tile mirrored in y and x, written tile by tile."""
    nz, ny, nx = tile.shape
    shape = (1, 1, nz, ny * repeat[0], nx * repeat[1])
    with atomic_dir(path) as tmp:
        out = OutputOmeZarr(tmp, shape, np.float32, axes="tczyx", chunks=(1, 1, 16, 256, 256),
                            spacing=SPACING, unit="µm", time_as_depth=False, levels=1,
                            labels=False, name=path.name.split(".")[0])
        with out:
            for i in range(repeat[0]):
                for j in range(repeat[1]):
                    block = tile[:, ::-1 if i % 2 else 1, ::-1 if j % 2 else 1]
                    region = (slice(0, nz), slice(i * ny, (i + 1) * ny),
                              slice(j * nx, (j + 1) * nx))
                    out.write(0, region, block[None])
    return shape


#: runs the command given and prints its peak resident memory (kB) last: a fresh parent per
#: run, so that RUSAGE_CHILDREN holds that run alone
MEASURE = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
           "sys.exit(code)")


def write_movie(path: Path, tile: np.ndarray, repeat: tuple[int, int], frames: int,
                step: int) -> tuple[int, ...]:
    """An OME-Zarr (frames, 1, z, y, x): the mirrored volume drifting ``step`` px per frame."""
    rows = [np.concatenate([tile[:, ::-1 if i % 2 else 1, ::-1 if j % 2 else 1]
                            for j in range(repeat[1])], axis=2) for i in range(repeat[0])]
    volume = np.concatenate(rows, axis=1)
    shape = (frames, 1, *volume.shape)
    with atomic_dir(path) as tmp:
        out = OutputOmeZarr(tmp, shape, np.float32, axes="tczyx", chunks=(1, 1, 16, 256, 256),
                            spacing=SPACING, unit="µm", time_as_depth=False, levels=1,
                            labels=False, name=path.name.split(".")[0])
        with out:
            for t in range(frames):
                whole = (slice(None),) * 3
                out.write(t, whole, np.roll(volume, t * step, axis=2)[None])
    return shape


def run(probabilities: Path, output: Path, *settings: str, options: tuple[str, ...] = (
        "--no-tracking",)) -> dict:
    """One segment_cells process: seconds and its peak resident memory (MB)."""
    script = str(Path(sys.executable).parent / "segment_cells")
    command = [script, str(probabilities), str(output), *options]
    for setting in settings:
        command += ["-D", setting]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    lines = done.stderr.strip().splitlines()
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed: {' '.join(lines[:-1])}")
    return {"seconds": round(seconds, 1), "peak_mb": round(int(lines[-1]) / 1024),
            "log": lines[:-1]}


def agreement(whole: Path, blocks: Path) -> float:
    read = (slice(None),) * 3
    a = open_image(whole).data.read(0, *read)[0].astype(np.int64)
    b = open_image(blocks).data.read(0, *read)[0].astype(np.int64)
    return round(float(instance_scores(a[None], b[None])["f1"]), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller volumes (a check run)")
    parser.add_argument("--work", default="cells-scale-work", help="folder for the volumes")
    parser.add_argument("--json", default="benchmarks/results/cells_scale.json")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(exist_ok=True)
    tile = probability_tile()
    fits, large = ((1, 1), (2, 2)) if args.quick else ((2, 2), (4, 4))
    rows = []
    small = work / "fits.ome.zarr"
    shape = write_volume(small, tile, fits)
    voxels = int(np.prod(shape))
    whole = run(small, work / "whole.ome.zarr", f"cell block voxels={voxels}")
    rows.append({"run": "whole", "shape": shape[2:], "voxels": voxels, **whole})
    blocks = run(small, work / "blocks.ome.zarr")
    rows.append({"run": "blocks", "shape": shape[2:], "voxels": voxels, **blocks,
                 "agreement_f1": agreement(work / "whole.ome.zarr", work / "blocks.ome.zarr")})
    files = ("--no-tracking", "--table", str(work / "measured.csv"), "--meshes",
             str(work / "meshes"))
    rows.append({"run": "measured", "shape": shape[2:], "voxels": voxels,
                 **run(small, work / "measured.ome.zarr", options=files),
                 "cells": _rows(work / "measured.csv")})
    movie = work / "movie.ome.zarr"
    shape = write_movie(movie, tile, fits, frames=3, step=1)
    tracked = run(movie, work / "movie-cells.ome.zarr",
                  options=("--table", str(work / "movie.csv")))
    rows.append({"run": "movie", "shape": shape, "voxels": int(np.prod(shape)), **tracked,
                 "cells": _rows(work / "movie.csv"),
                 "tracks": len((work / "movie-cells-res_track.txt").read_text().splitlines())})
    big = work / "large.ome.zarr"
    shape = write_volume(big, tile, large)
    rows.append({"run": "large", "shape": shape[2:], "voxels": int(np.prod(shape)),
                 **run(big, work / "large-cells.ome.zarr")})
    cpu = _cpu()
    print(f"CPU: {cpu}")
    print(f"{'run':8} {'shape':22} {'voxels':>11} {'seconds':>8} {'peak MB':>8} "
          f"{'F1 vs whole':>11} {'rows':>6} {'tracks':>6}")
    for row in rows:
        print(f"{row['run']:8} {str(tuple(row['shape'])):22} {row['voxels']:>11,} "
              f"{row['seconds']:>8} {row['peak_mb']:>8} {row.get('agreement_f1', ''):>11} "
              f"{row.get('cells', ''):>6} {row.get('tracks', ''):>6}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


def _rows(table: Path) -> int:
    return len(table.read_text().splitlines()) - 1


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
