"""Prediction of volumes too big for one machine's patience, on a Dask cluster.

Why this design: the single-process engine (``unetsl.predict.engine``) covers a volume with one
global grid of tiles and blends every tile with a window that depends only on that grid.
Here the volume is cut into blocks aligned to the output's chunks; a block task predicts
exactly the tiles of the *same global grid* whose window reaches into the block (reading the
image around the block, the overlap the model needs, straight from the store), and blends
them with the same windows in the same order. Each voxel therefore gets the same weighted
sum as in one process; only the network's batches differ, so results agree to float32
rounding (the test asks for 1e-5). This is ``dask.array.map_overlap`` done by hand: the halo
is read by the task itself rather than exchanged between workers, and it is the halo the
tile grid needs rather than a fixed depth. Tiles that straddle a block border are predicted
once for each block they reach; blocks are grown (in whole chunks) until that redundancy is
small (``plan_blocks``; the ratio is reported as ``DaskRun.redundancy``).

Workers load the model once (a per-process cache keyed by the model file's path, size and
time) and open the image themselves (by path: nothing but block coordinates travels over
the network). Outputs to OME-Zarr are written by the workers, each block onto whole chunks
of its own; other outputs (TIFF) are gathered and written by the client, a few blocks at a
time, so memory stays bounded on both sides.

Schedulers (``dask_client``): ``local:N`` (a LocalCluster of N one-thread worker processes
on this machine), ``slurm:N`` (dask-jobqueue's SLURMCluster with N worker jobs, configured by
dask's jobqueue settings or ``DASK_JOBQUEUE__SLURM__*`` variables), a scheduler address
(``tcp://host:8786``) or a scheduler file (``scheduler.json``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unetsl.data.normalize import ScaledSource
from unetsl.errors import UnetslError
from unetsl.predict.augment import AveragedViews
from unetsl.predict.dask_workers import worker_model, worker_source
from unetsl.predict.engine import normalize_patches, read_padded, run_overlapped
from unetsl.predict.tiling import plan_tiles

log = logging.getLogger("unetsl")

__all__ = [
    "DaskRun",
    "block_probabilities",
    "plan_blocks",
    "predict_array",
    "predict_to_sinks_dask",
    "worker_model",
]

DEFAULT_BLOCK_VOXELS = 16 * 2**20  # a block's accumulators: 64 MB per output channel
# ----------------------------------------------------------------------------- the blocks


def _support(plan, axis: int) -> list[tuple[int, int]]:
    """Per tile along ``axis``: the image range where its window is not 0."""
    a = plan.axes[axis]
    result = []
    for origin, window in zip(a.origins, a.windows()):
        nonzero = np.flatnonzero(window)
        lo, hi = (int(nonzero[0]), int(nonzero[-1]) + 1) if len(nonzero) else (0, 0)
        result.append((max(origin + lo, 0), min(origin + hi, a.size)))
    return result


def _tiles_for(plan, region: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Per axis, the tile indices whose window reaches into ``region`` (start, stop)."""
    chosen = []
    for axis, (start, stop) in enumerate(region):
        chosen.append([i for i, (lo, hi) in enumerate(_support(plan, axis))
                       if lo < stop and hi > start])
    return chosen


def plan_blocks(plan, chunks: Sequence[int], *, max_voxels: int = DEFAULT_BLOCK_VOXELS,
                block: Sequence[int] | None = None, min_blocks: int = 1
                ) -> tuple[int, int, int]:
    """Block shape (z, y, x): whole multiples of ``chunks`` (z, y, x), at least a tile (the
    whole axis where the grid has one tile), doubled along the axis where that saves the
    most recomputed tiles until ``max_voxels``, or until fewer than ``min_blocks`` blocks
    (per time point) would be left for the workers.

    ``block`` forces a shape (rounded up to whole chunks).
    """
    shape = plan.shape
    chunks = [max(1, min(int(c), n)) for c, n in zip(chunks, shape)]
    if block is not None:
        return tuple(min(n, -(-int(b) // c) * c) for b, c, n in zip(block, chunks, shape))
    sizes = [n if len(a.origins) == 1 else min(n, -(-a.patch // c) * c)
             for a, c, n in zip(plan.axes, chunks, shape)]

    def waste(axis: int, size: int) -> float:
        """Tiles predicted per tile owned along one axis, for blocks of ``size``."""
        n = shape[axis]
        if size >= n:
            return 1.0
        owned = len(plan.axes[axis].origins)
        starts = range(0, n, size)
        used = sum(len(_tiles_for(_OneAxis(plan, axis), [(s, min(s + size, n))])[0])
                   for s in starts)
        return used / owned

    while True:
        best, gain = None, 1.0 + 1e-9
        for axis in range(3):
            if sizes[axis] >= shape[axis]:
                continue
            grown = min(shape[axis], sizes[axis] * 2)
            voxels = math.prod(sizes) // sizes[axis] * grown
            if voxels > max_voxels:
                continue
            count = math.prod(-(-n // (grown if a == axis else b))
                              for a, (n, b) in enumerate(zip(shape, sizes)))
            if count < min_blocks:
                continue
            factor = waste(axis, sizes[axis]) / waste(axis, grown)
            if factor > gain:
                best, gain = axis, factor
        if best is None:
            break
        sizes[best] = min(shape[best], sizes[best] * 2)
    return tuple(sizes)


class _OneAxis:
    """A view of one axis of a plan, for ``_tiles_for`` on that axis alone."""

    def __init__(self, plan, axis: int):
        self.axes = (plan.axes[axis],)


def block_probabilities(tile_model, source, plan, t: int,
                        region: Sequence[tuple[int, int]], *, batch_size: int = 16,
                        normalize: bool = False) -> tuple[list[np.ndarray], int]:
    """Probabilities of one block, blended exactly as the whole-volume engine blends them.

    region : (start, stop) per axis (z, y, x). Returns (one float32 (n, z, y, x) array per
    output of ``tile_model``, the number of tiles predicted).
    """

    c, *patch = tile_model.patch
    chosen = _tiles_for(plan, region)
    s = plan.stream_axis
    others = [a for a in range(3) if a != s]
    depth = [stop - start for start, stop in region]
    acc = [np.zeros((n, *depth), dtype=np.float32) for n in tile_model.channels]
    wsum = np.zeros(depth, dtype=np.float32)
    if not all(chosen):
        return acc, 0
    windows = [plan.axes[a].windows() for a in range(3)]
    read = []
    for axis in range(3):
        a = plan.axes[axis]
        read.append((a.origins[chosen[axis][0]], a.origins[chosen[axis][-1]] + a.patch))
    data = read_padded(source, t, read)
    # the engine's order: rows along the stream axis, then the other two axes
    order = [(i_s, i0, i1) for i_s in chosen[s] for i0 in chosen[others[0]]
             for i1 in chosen[others[1]]]
    batches = []
    for start in range(0, len(order), batch_size):
        batch = []
        for i_s, i0, i1 in order[start:start + batch_size]:
            index = [0, 0, 0]
            index[s], index[others[0]], index[others[1]] = i_s, i0, i1
            batch.append(tuple(index))
        batches.append(batch)

    def run(batch: list[tuple[int, int, int]]) -> list[np.ndarray]:
        tiles = []
        for index in batch:
            cut = []
            for axis, i in enumerate(index):
                o = plan.axes[axis].origins[i] - read[axis][0]
                cut.append(slice(o, o + patch[axis]))
            tiles.append(data[(slice(None), *cut)])
        x = np.stack(tiles)
        if normalize:
            x = normalize_patches(x)
        return tile_model(x)

    def blend(batch: list[tuple[int, int, int]], outputs: list[np.ndarray]) -> None:
        for k, index in enumerate(batch):
            dst, src = [], []
            for axis, i in enumerate(index):
                a = plan.axes[axis]
                origin = a.origins[i]
                lo = max(origin, 0, region[axis][0])
                hi = min(origin + a.patch, a.size, region[axis][1])
                dst.append(slice(lo - region[axis][0], hi - region[axis][0]))
                src.append(slice(lo - origin, hi - origin))
            w = (windows[0][index[0]][src[0], None, None]
                 * windows[1][index[1]][None, src[1], None]
                 * windows[2][index[2]][None, None, src[2]])
            wsum[tuple(dst)] += w
            for a_out, out in zip(acc, outputs):
                a_out[(slice(None), *dst)] += out[k][(slice(None), *src)] * w

    run_overlapped(batches, run, blend)  # as in the engine: network and blending overlap
    count = len(order)
    weights = np.maximum(wsum, 1e-12)
    return [a / weights for a in acc], count


def _block_task(model: Any, output_indices: Sequence[int], source: Any, depth_wanted: int,
                plan, scaling: Any, precision: str, t: int, region: Sequence[tuple[int, int]],
                batch_size: int, normalize: bool, sinks: Sequence[Any] | None,
                augment: bool = False) -> tuple[int, Any]:
    """A Dask task: predict one block; write it with ``sinks`` (on the worker) or return it.

    scaling : the image's percentile scaling (``unetsl.data.normalize.ChannelScaling``),
        computed once on the client over the whole image, or None.
    """
    tile_model = worker_model(model, output_indices, plan.patch, precision)
    if augment:
        tile_model = AveragedViews(tile_model)
    opened = worker_source(source, depth_wanted)
    if scaling is not None:

        opened = ScaledSource(opened, scaling)
    blocks, count = block_probabilities(tile_model, opened, plan, t, region,
                                        batch_size=batch_size, normalize=normalize)
    if sinks is None:
        return count, blocks
    spans = tuple(slice(a, b) for a, b in region)
    for sink, block in zip(sinks, blocks):
        sink.write(t, spans, block)
    return count, None


# ------------------------------------------------------------------------------ the runs


@dataclass
class DaskRun:
    """What a distributed prediction did."""

    plan: Any  # unetsl.predict.tiling.TilePlan
    block: tuple[int, int, int]
    blocks: int
    tiles: int  # tiles of the global grid (all time points)
    tiles_predicted: int  # including the tiles predicted for two blocks
    workers: int

    @property
    def redundancy(self) -> float:
        return self.tiles_predicted / max(self.tiles, 1)


def _regions(shape: Sequence[int], block: Sequence[int]) -> list[tuple[tuple[int, int], ...]]:
    ranges = [[(s, min(s + b, n)) for s in range(0, n, b)] for n, b in zip(shape, block)]
    return [(rz, ry, rx) for rz in ranges[0] for ry in ranges[1] for rx in ranges[2]]


def _sink_chunks(sinks: Sequence[Any]) -> tuple[int, int, int] | None:
    """The (z, y, x) chunk grid all chunked sinks share (their writes must not share a chunk)."""
    grid = None
    for sink in sinks:
        for part in (sink, getattr(sink, "labels", None), getattr(sink, "probabilities", None)):
            chunks = getattr(part, "chunks", None)
            if chunks is None:
                continue
            zyx = [int(c) for c in chunks[2:]]
            grid = zyx if grid is None else [math.lcm(a, b) for a, b in zip(grid, zyx)]
    return tuple(grid) if grid is not None else None


def _worker_sinks(sinks: Sequence[Any]) -> list[Any] | None:
    """Picklable twins of the sinks that workers can write themselves (zarr), else None."""
    result = []
    for sink in sinks:
        twin = getattr(sink, "parallel", None)
        twin = twin() if twin is not None else None
        if twin is None:
            return None
        result.append(twin)
    return result


def predict_to_sinks_dask(client: Any, model: Any, source: Any, sinks: Sequence[Any], *,
                          tile_model: Any, reach: Any, output_indices: Sequence[int],
                          depth_wanted: int = 1, batch_size: int = 16,
                          overlap: Sequence[int] | None = None, normalize: bool = False,
                          scaling: Any = None, precision: str = "float32",
                          block: Sequence[int] | None = None,
                          max_block_voxels: int = DEFAULT_BLOCK_VOXELS,
                          progress: Any = None, shape: Sequence[int] | None = None,
                          augment: bool = False) -> DaskRun:
    """The distributed twin of ``unetsl.predict.engine.predict_to_sinks``.

    client : a ``distributed.Client``. model : the model file (each worker loads it once),
        or a ``TileModel`` for in-process clusters. source : the image path (workers open it
        with ``unetsl.io.lazy.open_image(path, depth_wanted)``) or a picklable source
        (``.shape``, ``.read``); scaling : its percentile scaling, applied on the workers
        (``unetsl.data.normalize.ChannelScaling``, or None); precision : the dtype policy
        the workers' models compute in (``unetsl.nets.precision``). tile_model : the client's
        ``KerasTiles`` of the same model (patch and channels). sinks : one per output, as
        in ``predict_to_sinks``; a sink with a ``parallel()`` method (zarr outputs) is
        written by the workers, otherwise blocks are gathered and written here.
        shape : the source's (t, c, z, y, x) if ``source`` is a path (else read from it).
        augment : test-time augmentation on the workers (``unetsl.predict.augment``).
    """

    shape = source.shape if shape is None else shape
    plan, block_shape, regions, workers = _plan_blocks(
        client, tile_model, sinks, shape, reach=reach, overlap=overlap, batch_size=batch_size,
        block=block, max_block_voxels=max_block_voxels)
    frames = int(shape[0])
    jobs = [(t, r) for t in range(frames) for r in regions]
    args = (_scattered(client, model), list(output_indices), _scattered(client, source),
            depth_wanted, plan, scaling, precision)
    total = plan.count() * frames
    counter = _BlockProgress(plan, total, frames, len(regions), progress)
    remote = _worker_sinks(sinks)  # zarr outputs: the workers write their blocks

    def submit(job: tuple[int, Any]) -> Any:
        return client.submit(_block_task, *args, *job, batch_size, normalize, remote,
                             augment, pure=False)

    predicted = 0
    for (t, region), (count, blocks) in _in_flight(submit, jobs, window=max(2, 2 * workers)):
        if blocks is not None:
            spans = tuple(slice(a, b) for a, b in region)
            for sink, data in zip(sinks, blocks):
                sink.write(t, spans, data)
        predicted += count
        counter.block_done(t, region)
    return DaskRun(plan, tuple(block_shape), len(jobs), total, predicted, workers)


def _plan_blocks(client: Any, tile_model: Any, sinks: Sequence[Any], shape: Sequence[int], *,
                 reach: Any, overlap: Any, batch_size: int, block: Sequence[int] | None,
                 max_block_voxels: int) -> tuple[Any, tuple, list, int]:
    """Check the image against the model, then plan its tiles and the blocks the workers
    predict: (tile plan, block shape, block regions, number of workers)."""
    c, *patch = tile_model.patch
    if len(sinks) != len(tile_model.channels):
        raise ValueError("one sink per model output is needed")
    if shape[1] != c:
        raise UnetslError(f"image has {shape[1]} channel(s), the model expects {c}")
    if batch_size < 1:
        raise UnetslError(f'"batch size" must be >= 1, got {batch_size}')
    plan = plan_tiles(shape[2:], patch, reach, overlap)
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    per_frame = -(-4 * workers // max(1, int(shape[0])))  # enough blocks to share out
    block_shape = plan_blocks(plan, _sink_chunks(sinks) or (1, 1, 1),
                              max_voxels=max_block_voxels, block=block, min_blocks=per_frame)
    return plan, block_shape, _regions(plan.shape, block_shape), workers


def _scattered(client: Any, thing: Any) -> Any:
    """Objects (not paths) go to the workers once, not with every task."""
    if isinstance(thing, (str, os.PathLike)):
        return thing
    return client.scatter(thing, broadcast=True, hash=False)


def _in_flight(submit: Any, jobs: Sequence[Any], *, window: int):
    """(job, result) as tasks finish, at most ``window`` in flight (bounds the memory of
    gathered blocks); a task's failure is one line naming its block."""
    from distributed import as_completed

    pending = iter(jobs)
    futures = {}
    flow = as_completed()

    def next_task() -> None:
        job = next(pending, None)
        if job is not None:
            future = submit(job)
            futures[future] = job
            flow.add(future)

    for _ in range(window):
        next_task()
    for future in flow:
        t, region = job = futures.pop(future)
        try:
            result = future.result()
        except UnetslError:
            raise
        except Exception as exc:
            raise UnetslError(f"block t={t} z,y,x={[r[0] for r in region]} failed on a "
                              f"worker: {type(exc).__name__}: {exc}") from exc
        yield job, result
        next_task()


class _BlockProgress:
    """Tiles and whole frames done, reported to ``progress(tiles, total, frames, of)``."""

    def __init__(self, plan: Any, total: int, frames: int, blocks_per_frame: int,
                 progress: Any):
        self.plan, self.total, self.frames, self.progress = plan, total, frames, progress
        self.per_frame, self.tiles, self.frames_done = blocks_per_frame, 0, 0
        self.blocks = dict.fromkeys(range(frames), 0)

    def block_done(self, t: int, region: Sequence[tuple[int, int]]) -> None:
        self.tiles += math.prod(len(i) for i in _owned_tiles(self.plan, region))
        self.blocks[t] += 1
        self.frames_done += self.blocks[t] == self.per_frame
        if self.progress:
            self.progress(self.tiles, self.total, self.frames_done, self.frames)


def _owned_tiles(plan, region: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Tiles counted for a block in progress reports: those whose origin lies in it (each
    tile of the grid is owned by exactly one block)."""
    owned = []
    for a, (start, stop) in zip(plan.axes, region):
        first = start == 0
        owned.append([i for i, o in enumerate(a.origins)
                      if (start <= o < stop) or (first and o < 0)])
    return owned


def predict_array(model: Any, source: Any, *, tile_model: Any, reach: Any,
                  output_indices: Sequence[int], depth_wanted: int = 1, batch_size: int = 16,
                  overlap: Sequence[int] | None = None, normalize: bool = False,
                  scaling: Any = None, precision: str = "float32",
                  chunks: Sequence[int] | None = None,
                  block: Sequence[int] | None = None, shape: Sequence[int] | None = None):
    """The probabilities as a lazy dask array (t, n, z, y, x), one task per block.

    For notebooks and custom pipelines (``.to_zarr``, ``dask.array.store``); the arguments
    are those of ``predict_to_sinks_dask``. n sums the channels of the selected outputs.
    """
    import dask.array as da


    c, *patch = tile_model.patch
    if shape is None:
        shape = source.shape
    plan = plan_tiles(shape[2:], patch, reach, overlap)
    block_shape = plan_blocks(plan, chunks or (1, 1, 1), block=block)
    n = sum(tile_model.channels)
    dims = [(1,) * int(shape[0]), (n,)]
    for size, b in zip(plan.shape, block_shape):
        dims.append(tuple(min(b, size - s) for s in range(0, size, b)))
    args = (model, list(output_indices), source, depth_wanted, plan, scaling, precision)

    def one_block(block_info=None):
        location = block_info[None]["array-location"]
        t = location[0][0]
        region = [tuple(location[a]) for a in (2, 3, 4)]
        _, blocks = _block_task(*args, t, region, batch_size, normalize, None)
        return np.concatenate(blocks, axis=0)[None]

    return da.map_blocks(one_block, chunks=tuple(dims), dtype=np.float32,
                         meta=np.empty((0,) * 5, dtype=np.float32))
