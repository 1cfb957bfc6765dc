"""segment_cells on frames larger than memory: blocks read lazily from the probability file,
stitched (:mod:`unetsl.cells.blocks`) and written core by core to the label output.

Only one padded block's probabilities and labels are in memory at a time; the labels of every
padded block wait in a scratch folder beside the output (removed at the end) until the ids are
joined, then each core is written with the final ids.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from unetsl.cells.blocks import Block, BlockPlan, Reader, final_core, segment_block, stitch
from unetsl.cells.export import label_file_dtype
from unetsl.cells.overlaps import Overlaps
from unetsl.cells.regions import CellRegion
from unetsl.cells.settings import CellSettings
from unetsl.cells.tracking import Track, gap_pieces, link_frames, lookup_array
from unetsl.io.lazy import LazyImage, open_image
from unetsl.io.outputs import open_output
from unetsl.predict.dask_workers import worker_source

log = logging.getLogger("unetsl")


def segment_file_blocks(image: LazyImage, output: Path, plan: BlockPlan, *, mode: str,
                        settings: CellSettings, channel: int, boundary_channel: int | None,
                        client: Any = None, tracking: bool = False
                        ) -> tuple[int, list[Track]]:
    """Segment every frame of ``image`` block by block and write the labels to ``output``;
    returns the number of ids and the tracks.

    Without tracking, ids are unique over the whole image (as :func:`unetsl.cells.files.
    segment_file` gives them); with it, they follow the cells over frames as there, tracked
    from overlaps counted block by block (:class:`BlockFrames`).

    client : a Dask ``distributed.Client``: its workers segment the blocks (each opens the
        file itself, so the scratch folder beside the output must be on a file system they
        share, as on a cluster); this process joins the ids and writes the output.
    """
    n_t = image.shape[0]
    log.info(f"cells: frames of {'x'.join(map(str, plan.shape))} voxels in "
             f"{int(np.prod(plan.grid))} blocks of {'x'.join(map(str, plan.core))} (halo "
             f"{'x'.join(map(str, plan.halo))}, \"cell block voxels\" "
             f"{settings.block_voxels})" + (" on Dask" if client is not None else ""))
    job = BlockJob(str(image.path), channel, boundary_channel, mode, tuple(image.spacing),
                   settings)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".unetsl-cells-") as scratch:
        frames = []
        for t in range(n_t):
            folder = Path(scratch) / f"t{t}"
            folder.mkdir()
            counts = _segment_blocks(job, image, t, plan, folder, client)
            frames.append(StitchedFrame(folder, *stitch(plan, counts, folder)))
        if tracking and n_t > 1:
            ids, tracks = tracked_ids(BlockFrames(plan, frames), settings)
        else:
            ids, tracks = untracked_ids(frames), []
        top = max((int(lookup.max()) for lookup in ids), default=0)
        dtype = label_file_dtype(top, output)
        with open_output(output, (n_t, 1, *plan.shape), dtype, spacing=image.spacing,
                         unit=image.unit, labels=True, levels=pyramid_levels(plan.shape),
                         frame_interval=image.frame_interval) as sink:
            for t, frame in enumerate(frames):
                for block in plan.blocks():
                    sink.write(t, block.core, ids[t][frame.core(block)].astype(dtype)[None])
    return top, tracks


@dataclass(frozen=True)
class StitchedFrame:
    """One frame's blocks in the scratch folder, and each block's lookup to the frame's ids
    1..count."""

    folder: Path
    lookups: dict[tuple[int, int, int], np.ndarray]
    count: int

    def core(self, block: Block) -> np.ndarray:
        return final_core(block, self.lookups[block.index], self.folder)


@dataclass(frozen=True)
class BlockFrames:
    """The stitched frames as tracking reads them (:class:`unetsl.cells.tracking.FrameCells`):
    the overlaps of two frames are those of their blocks' cores added up, one block pair in
    memory at a time."""

    plan: BlockPlan
    frames: list[StitchedFrame]

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    def cells(self, t: int) -> np.ndarray:
        return np.arange(1, self.frames[t].count + 1, dtype=np.int64)

    def overlaps(self, a: int, b: int) -> Overlaps:
        first, second = self.frames[a], self.frames[b]
        return Overlaps.total(Overlaps.of(first.core(block), second.core(block))
                              for block in self.plan.blocks())


def untracked_ids(frames: list[StitchedFrame]) -> list[np.ndarray]:
    """For each frame the lookup from its ids 1..count to ids unique over the image."""
    ids, offset = [], 0
    for frame in frames:
        ids.append(np.arange(offset, offset + frame.count + 1, dtype=np.int64))
        ids[-1][0] = 0
        offset += frame.count
    return ids


def tracked_ids(frames: BlockFrames, settings: CellSettings
                ) -> tuple[list[np.ndarray], list[Track]]:
    """For each frame the lookup from its ids to track ids (Cell Tracking Challenge pieces,
    as :func:`unetsl.cells.files.segment_array` gives them), and the tracks."""
    assigned, tracks = link_frames(frames, settings)
    present: dict[int, list[int]] = {}
    for t, new_of in enumerate(assigned):
        for track_id in new_of.values():
            present.setdefault(track_id, []).append(t)
    top = max(present, default=0)
    renames, tracks = gap_pieces(present, tracks, top)
    ids = []
    for t, new_of in enumerate(assigned):
        rename = renames.get(t, {})
        final = {raw: rename.get(track_id, track_id) for raw, track_id in new_of.items()}
        ids.append(lookup_array(final, frames.frames[t].count).astype(np.int64))
    return ids, tracks


def pyramid_levels(shape: tuple[int, int, int], top: int = 1024) -> int:
    """Resolution levels of an OME-Zarr label output: y and x halved until the smallest level
    is at most ``top`` pixels wide, so that napari shows a large volume at once."""
    return 1 + max(0, math.ceil(math.log2(max(shape[1:]) / top)))


@dataclass(frozen=True)
class BlockJob:
    """What every block task of one file needs (small and picklable, for Dask workers)."""

    path: str
    channel: int
    boundary_channel: int | None
    mode: str
    spacing: tuple[float, float, float]
    settings: CellSettings

    def run(self, data: Any, n_t: int, t: int, block: Block, folder: str) -> int:
        """Segment one block of frame t of ``data`` (an image's ``.data``); its cell count."""
        half = self.settings.time_window // 2 if self.mode == "membrane" else 0
        read = frame_reader(data, n_t, t, self.channel, self.boundary_channel, half)
        return segment_block(read, block, self.mode, self.spacing, self.settings, folder)


def _segment_blocks(job: BlockJob, image: LazyImage, t: int, plan: BlockPlan, folder: Path,
                    client: Any) -> dict[tuple[int, int, int], int]:
    """{block index: its cell count} for frame t, here or on the client's workers."""
    blocks = plan.blocks()
    if client is None:
        counts = [job.run(image.data, image.shape[0], t, block, str(folder))
                  for block in blocks]
    else:
        futures = client.map(_worker_block, [job] * len(blocks), [image.shape[0]] * len(blocks),
                             [t] * len(blocks), blocks, [str(folder)] * len(blocks), pure=False)
        counts = client.gather(futures)
    return {block.index: count for block, count in zip(blocks, counts)}


def _worker_block(job: BlockJob, n_t: int, t: int, block: Block, folder: str) -> int:
    """A Dask task: the worker opens the file once (cached per process) and runs the block."""
    return job.run(worker_source(job.path, 1), n_t, t, block, folder)


def frame_reader(data: Any, n_t: int, t: int, channel: int, boundary_channel: int | None,
                 half_window: int) -> Reader:
    """Reads a (z, y, x) region of frame t of ``data`` (``read(t, zs, ys, xs)`` gives
    (c, z, y, x)): the channel's probability, max-pooled over ``half_window`` frames each side
    as :func:`unetsl.cells.segment` does for membranes, and the boundary channel's, if any."""
    frames = range(max(0, t - half_window), min(n_t, t + half_window + 1))

    def read(region):
        zs, ys, xs = region
        probability = np.max([data.read(f, zs, ys, xs)[channel] for f in frames], axis=0)
        boundary = None
        if boundary_channel is not None:
            boundary = data.read(t, zs, ys, xs)[boundary_channel]
        return probability.astype(np.float32), boundary

    return read


def file_regions(labels_path: str | os.PathLike, plan: BlockPlan,
                 membrane: tuple[LazyImage, int] | None = None, boundary: int | None = None
                 ) -> Iterator[CellRegion]:
    """The cells of a label file written block by block, one region per block and frame:
    the cells whose first corner lies in the block's core, read whole with one voxel around
    (and the probability there: (image, channel), with the ``boundary`` channel of the same
    image, if any). Memory: a block's core plus the parts of its cells that reach beyond
    it."""
    labels = open_image(labels_path)
    for t in range(labels.shape[0]):
        ids, first, last = _cell_boxes(labels, plan, t)
        owner = np.ravel_multi_index(tuple((first // plan.core).T), plan.grid) if len(ids) \
            else np.zeros(0, dtype=np.int64)
        for number in range(math.prod(plan.grid)):  # the order of plan.blocks()
            mine = owner == number
            if not mine.any():
                continue
            start = np.maximum(first[mine].min(axis=0) - 1, 0)
            stop = np.minimum(last[mine].max(axis=0) + 1, plan.shape)
            region = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
            context = labels.data.read(t, *region)[0]
            probability = edge = None
            if membrane is not None:
                channels = membrane[0].data.read(t, *region)
                probability = channels[membrane[1]]
                edge = None if boundary is None else channels[boundary]
            yield CellRegion(t, tuple(int(a) for a in start), context,  # type: ignore[arg-type]
                             ids[mine], probability, edge)


def _cell_boxes(labels: LazyImage, plan: BlockPlan, t: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids of frame t and each one's bounding box, first and last+1 voxel (n, 3), from the
    label file core by core."""
    parts = []
    for block in plan.blocks():
        core = labels.data.read(t, *block.core)[0]
        found, compact = np.unique(core, return_inverse=True)
        boxes = ndi.find_objects(compact.reshape(core.shape).astype(np.int32) + 1)
        corner = np.array([s.start for s in block.core])
        for cell, box in zip(found.tolist(), boxes):
            if cell and box is not None:
                parts.append((cell, [s.start for s in box] + corner,
                              [s.stop for s in box] + corner))
    if not parts:
        empty = np.zeros((0, 3), dtype=np.int64)
        return np.zeros(0, dtype=np.int64), empty, empty
    cells = np.array([p[0] for p in parts])
    ids, where = np.unique(cells, return_inverse=True)
    first = np.full((len(ids), 3), np.iinfo(np.int64).max)
    last = np.zeros((len(ids), 3), dtype=np.int64)
    np.minimum.at(first, where, np.array([p[1] for p in parts]))
    np.maximum.at(last, where, np.array([p[2] for p in parts]))
    return ids.astype(np.int64), first, last
