"""Tiled prediction of images of any size, blended without seams (plans: predict.tiling).

Why tiles overlap by what they do: a U-Net's output near a tile edge is computed from the
zero padding of its convolutions, not from the image, up to the network's *reach* (half its
receptive field) from the edge. Tiles therefore overlap, and each tile's probabilities are
weighted by a window that is 0 on a margin of up to ``reach`` voxels at every edge shared
with a neighbour, rises smoothly (raised cosine) and is 1 in the middle; the summed
contributions are divided by the summed weights. When the overlap covers twice the reach
(plus the ramp), every voxel is taken only from tiles that saw its whole receptive field, so
the tiled result equals a whole-image prediction. Tile origins are multiples of the model's
pooling factor, so that every tile pools the same voxels together as a whole-image
prediction would; where the image is not a multiple, the last tile (flush with the far
border) reads < pooling factor voxels of reflected image. Images smaller than a tile are
reflect-padded to the tile and cropped back.

Memory: tiles are visited row by row along one axis (z or y); probabilities are summed in
a buffer one tile deep along that axis, and every finished row is divided, reduced and
handed to a sink (an array, or a file written piece by piece, see ``unetsl.io.lazy``), so
memory follows the tile and batch size, not the image.

Axes: arrays are (t, c, z, y, x) as everywhere in unetsl; models are channels-last.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from unetsl.data.normalize import InputNormalization
from unetsl.errors import UnetslError
from unetsl.io.arrays import ArraySink, ArraySource
from unetsl.io.tiff import frames_as_depth
from unetsl.predict.adapter import KerasTiles, Sink, TileModel
from unetsl.predict.augment import AveragedViews
from unetsl.predict.model_info import ModelInfo
from unetsl.predict.reach import Reach, receptive_reach
from unetsl.predict.tiling import TilePlan, model_for_tiles, plan_tiles

log = logging.getLogger("unetsl")

__all__ = [
    "ArraySink",
    "ArraySource",
    "KerasTiles",
    "Reach",
    "TilePlan",
    "model_for_tiles",
    "plan_tiles",
    "predict",
    "predict_outputs",
    "predict_to_sinks",
    "receptive_reach",
]




# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


def run_overlapped(batches: Iterable[list], run: Callable[[list], Any],
                   blend: Callable[[list, Any], None]) -> None:
    """``blend(batch, run(batch))`` for every batch, with the network (``run``) working on the
    next batch in a thread while the previous one is blended, so neither waits for the other.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="unetsl-predict") as pool:
        pending = None
        for batch in batches:
            future = pool.submit(run, batch)
            if pending is not None:
                blend(pending[0], pending[1].result())
            pending = (batch, future)
        if pending is not None:
            blend(pending[0], pending[1].result())


def _batched(items: Iterable[Any], size: int) -> Iterator[list]:
    """Lists of ``size`` consecutive items (the last one shorter)."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def normalize_patches(batch: np.ndarray) -> np.ndarray:
    """Z-score every sample and channel over its voxels (the original's "normalize samples")."""
    axes = tuple(range(2, batch.ndim))
    mean = batch.mean(axis=axes, keepdims=True)
    std = batch.std(axis=axes, keepdims=True)
    return (batch - mean) / np.where(std < 1e-6, 1.0, std)


def read_padded(source, t: int, regions: Sequence[tuple[int, int]]) -> np.ndarray:
    """(c, z, y, x) float32 block of the image over ``regions`` (start, stop) per axis,
    reflecting the image where a region reaches outside it."""
    sizes = source.shape[2:]
    inner, pads = [], [(0, 0)]
    for (start, stop), size in zip(regions, sizes):
        lo, hi = max(start, 0), min(stop, size)
        inner.append(slice(lo, hi))
        pads.append((lo - start, stop - hi))
    block = np.asarray(source.read(t, *inner), dtype=np.float32)
    if any(p != (0, 0) for p in pads):
        block = np.pad(block, pads, mode="reflect")
    return block


@dataclass
class _Tile:
    t: int
    row: int  # index along the stream axis
    index: tuple[int, int, int]  # tile index per axis
    data: np.ndarray  # (c, z, y, x)


def _tiles(source, plan: TilePlan) -> Iterator[_Tile]:
    """Tiles of every time point, row by row along the stream axis; one slab read per row."""
    s = plan.stream_axis
    others = [a for a in range(3) if a != s]
    for t in range(source.shape[0]):
        for row, origin in enumerate(plan.axes[s].origins):
            regions = [plan.axes[a].extent for a in range(3)]
            regions[s] = (origin, origin + plan.axes[s].patch)
            slab = read_padded(source, t, regions)
            base = [r[0] for r in regions]
            a0, a1 = others
            for i0, o0 in enumerate(plan.axes[a0].origins):
                for i1, o1 in enumerate(plan.axes[a1].origins):
                    index = [0, 0, 0]
                    index[s], index[a0], index[a1] = row, i0, i1
                    origin_zyx = [0, 0, 0]
                    origin_zyx[s], origin_zyx[a0], origin_zyx[a1] = origin, o0, o1
                    cut = tuple(slice(o - b, o - b + p) for o, b, p in
                                zip(origin_zyx, base, plan.patch))
                    yield _Tile(t, row, tuple(index), slab[(slice(None), *cut)])


class _RowBuffer:
    """Weighted sums of one time point over a window one tile deep along the stream axis."""

    def __init__(self, plan: TilePlan, channels: Sequence[int], sinks: Sequence[Sink]):
        self.plan = plan
        self.s = plan.stream_axis
        self.sinks = sinks
        shape = list(plan.shape)
        shape[self.s] = min(plan.patch[self.s], plan.shape[self.s])
        self.acc = [np.zeros((n, *shape), dtype=np.float32) for n in channels]
        self.wsum = np.zeros(shape, dtype=np.float32)
        self.windows = [a.windows() for a in plan.axes]
        self.t = -1
        self.lo = 0  # image coordinate of buffer index 0 along the stream axis

    def start(self, t: int) -> None:
        self.t, self.lo = t, 0
        for a in self.acc:
            a.fill(0)
        self.wsum.fill(0)

    def add(self, tile: _Tile, outputs: Sequence[np.ndarray]) -> None:
        buf, src = [], []
        for axis, (plan, i) in enumerate(zip(self.plan.axes, tile.index)):
            origin = plan.origins[i]
            lo, hi = max(origin, 0), min(origin + plan.patch, plan.size)
            offset = self.lo if axis == self.s else 0
            buf.append(slice(lo - offset, hi - offset))
            src.append(slice(lo - origin, hi - origin))
        w = (self.windows[0][tile.index[0]][src[0], None, None]
             * self.windows[1][tile.index[1]][None, src[1], None]
             * self.windows[2][tile.index[2]][None, None, src[2]])
        self.wsum[tuple(buf)] += w
        for acc, out in zip(self.acc, outputs):
            acc[(slice(None), *buf)] += out[(slice(None), *src)] * w

    def flush(self, until: int) -> None:
        """Hand every voxel below ``until`` (stream axis) to the sinks and slide the window."""
        until = min(until, self.plan.shape[self.s])
        depth = until - self.lo
        if depth <= 0:
            return
        cut = [slice(None)] * 3
        cut[self.s] = slice(0, depth)
        weights = self.wsum[tuple(cut)]
        region = [slice(0, n) for n in self.plan.shape]
        region[self.s] = slice(self.lo, until)
        for acc, sink in zip(self.acc, self.sinks):
            block = acc[(slice(None), *cut)] / np.maximum(weights, 1e-12)
            sink.write(self.t, tuple(region), block)
        for arr, lead in [(a, 1) for a in self.acc] + [(self.wsum, 0)]:
            axis = self.s + lead
            keep = arr.shape[axis] - depth
            src = [slice(None)] * arr.ndim
            dst = [slice(None)] * arr.ndim
            src[axis], dst[axis] = slice(depth, None), slice(0, keep)
            if keep > 0:
                arr[tuple(dst)] = arr[tuple(src)]
            tail = [slice(None)] * arr.ndim
            tail[axis] = slice(max(keep, 0), None)
            arr[tuple(tail)] = 0
        self.lo = until


Progress = Callable[[int, int, int, int], None]
"""progress(tiles done, tiles total, time points done, time points total)."""


def predict_to_sinks(tile_model: TileModel, source, sinks: Sequence[Sink], *,
                     reach: Reach, batch_size: int = 16,
                     overlap: Sequence[int] | None = None, normalize: bool = False,
                     progress: Progress | None = None,
                     frames_as_depth: bool = False) -> TilePlan:
    """The engine: predict every time point of ``source`` and hand finished rows to ``sinks``.

    source : ``.shape`` (t, c, z, y, x) and ``.read(t, zs, ys, xs) -> (c, z, y, x)``.
    sinks : one per output of ``tile_model``, each with ``write(t, (zs, ys, xs), block)``,
        block float32 (n, z, y, x) probabilities; every voxel is written exactly once.
    progress : called once before the first tile (0 done) and after every batch.
    frames_as_depth : z holds the time points of a 2D time series read as depth; progress
        then counts those frames (done once every row of theirs is written), so that a
        5-frame movie is not reported as "1 time point".
    The model runs in a worker thread while the previous batch is blended, so reading,
    blending and writing overlap the network's compute.
    """
    c, *patch = tile_model.patch
    if len(sinks) != len(tile_model.channels):
        raise ValueError("one sink per model output is needed")
    if source.shape[1] != c:
        raise UnetslError(f"image has {source.shape[1]} channel(s), the model expects {c}")
    if batch_size < 1:
        raise UnetslError(f'"batch size" must be >= 1, got {batch_size}')
    plan = plan_tiles(source.shape[2:], patch, reach, overlap)
    s = plan.stream_axis
    depth = plan.shape[0] if frames_as_depth else 1
    frames = source.shape[0] * depth
    total = plan.count() * source.shape[0]
    buffer = _RowBuffer(plan, tile_model.channels, sinks)
    # t: time points finished; z: frames (slices) of the current one finished
    state = {"row": None, "done": 0, "t": 0, "z": 0}

    def report() -> None:
        if progress:
            progress(state["done"], total, state["t"] * depth + state["z"], frames)

    def flush(until: int) -> None:
        buffer.flush(until)
        if frames_as_depth:  # a slice is done when all of its rows are
            state["z"] = min(until, depth) if s == 0 else depth * (until >= plan.shape[s])

    def end_time_point() -> None:
        flush(plan.shape[s])
        state["t"] += 1
        state["z"] = 0
        report()

    def blend(batch: list[_Tile], outputs: list[np.ndarray]) -> None:
        for k, tile in enumerate(batch):
            if state["row"] is None or state["row"][0] != tile.t:
                if state["row"] is not None:
                    end_time_point()
                buffer.start(tile.t)
            elif state["row"][1] != tile.row:
                flush(plan.axes[s].origins[tile.row])
            state["row"] = (tile.t, tile.row)
            buffer.add(tile, [out[k] for out in outputs])
        state["done"] += len(batch)
        report()

    def run(batch: list[_Tile]) -> list[np.ndarray]:
        tiles = np.stack([tile.data for tile in batch])
        if normalize:
            tiles = normalize_patches(tiles)
        outputs = tile_model(tiles)
        for out, n in zip(outputs, tile_model.channels):
            if out.shape != (len(batch), n, *patch):
                raise UnetslError(f"model returned shape {out.shape} for {len(batch)} tiles "
                                  f"of {tuple(patch)}; expected {(len(batch), n, *patch)}")
        return outputs

    report()  # 0 done: a progress bar starts its clock here, not after the first batch
    run_overlapped(_batched(_tiles(source, plan), batch_size), run, blend)
    if state["row"] is not None:
        end_time_point()
    return plan


# --------------------------------------------------------------------------------------------
# The Python API
# --------------------------------------------------------------------------------------------


def predict_outputs(model, image: np.ndarray, *, output_indices: Sequence[int] | None = None,
                    batch_size: int = 16, overlap: Sequence[int] | None = None,
                    tile: Sequence[int] | None = None, normalize: bool | None = None,
                    normalization: InputNormalization | None = None,
                    progress: Progress | None = None,
                    info: ModelInfo | None = None, augment: bool = False,
                    view_spread: bool = False) -> list[np.ndarray]:
    """Like ``predict`` for several outputs of a multi-output (cascade) model at once.

    output_indices : which outputs (default: all). Returns one float32 array per output.
    info : the model's :class:`~unetsl.predict.model_info.ModelInfo` when already read.
    augment : average every tile's flipped and turned views (``unetsl.predict.augment``).
    view_spread : with ``augment``, also return each output's standard deviation over the
        views, after the means (twice as many arrays): how much the views disagree.
    """
    if info is None:
        info = ModelInfo.of(model)
    if output_indices is None:
        output_indices = list(range(info.n_outputs))
    chosen = info.input_normalization(normalization, normalize)
    array = np.asarray(image) if not hasattr(image, "shape") else image
    squeeze = len(array.shape) == 4
    if squeeze:
        array = array[None]
    # a 2D movie (t, c, 1, y, x) for a model that wants depth: its frames are the depth, as
    # predict_image reads an ImageJ time series (the original's rule)
    array, swapped = frames_as_depth(array, info.patch[1])
    source = chosen.scaled(ArraySource(array))
    t, _, z, y, x = source.shape
    reach = info.reach
    model, per_batch = model_for_tiles(model, (z, y, x), batch_size=batch_size,
                                       overlap=overlap, tile=tile, reach=reach)
    tile_model = info.resized(model).tiles(model, output_indices)
    if view_spread and not augment:
        raise UnetslError("predict: view_spread needs augment (the views to compare)")
    if augment:
        tile_model = AveragedViews(tile_model, spread=view_spread)
    sinks = [ArraySink((t, n, z, y, x)) for n in tile_model.channels]
    predict_to_sinks(tile_model, source, sinks, reach=reach, batch_size=per_batch,
                     overlap=overlap, normalize=chosen.zscore_tiles, progress=progress)
    outputs = [np.swapaxes(s.array, 0, 2) if swapped else s.array for s in sinks]
    return [o[0] if squeeze else o for o in outputs]


def predict(model, image: np.ndarray, *, output_index: int = -1, batch_size: int = 16,
            overlap: Sequence[int] | None = None, tile: Sequence[int] | None = None,
            normalize: bool | None = None, normalization: InputNormalization | None = None,
            progress: Progress | None = None, augment: bool = False) -> np.ndarray:
    """Predict every time point of an image of any size with a Keras model, tile by tile.

    image : (t, c, z, y, x) or (c, z, y, x) array (any dtype; predicted as float32 of the
        values), c = the model's input channels. z, y, x may be smaller or larger than the
        model's patch. A 2D time series (t > 1, z = 1) for a model that wants depth is
        predicted with its frames as depth, as predict_image reads an ImageJ movie.
    output_index : which output of a multi-output model (default the last).
    batch_size : how many training-patch-sized tiles fit in memory at once; larger tiles
        count as several.
    overlap : tile overlap (z, y, x) in voxels; default from the network's receptive field
        (``default_overlap``).
    tile : tile size (z, y, x); default ``choose_tile`` (often larger than the training
        patch: fewer tiles, less overlap computed twice).
    normalization : how the image is normalised before tiling; default: as the model was
        trained (recorded in its file and attached by ``unetsl.nets.load_model``), raw
        intensities for models without a record.
    normalize : override the per-tile z-score ("normalize samples") of ``normalization``.
    progress : called as progress(tiles done, tiles total, time points done, total).
    augment : test-time augmentation, the mean of every tile's flipped and turned views
        (8x the network time; 4x for tiles that are not square in y-x).
    Returns float32 probabilities (t, n, z, y, x) (or (n, z, y, x) for a 4-D input); use
    ``reduce`` to get labels.
    """
    return predict_outputs(model, image, output_indices=[output_index], batch_size=batch_size,
                           overlap=overlap, tile=tile, normalize=normalize,
                           normalization=normalization, progress=progress,
                           augment=augment)[0]
