"""segment_cells on frames larger than memory: blocks read lazily from the probability file,
stitched (:mod:`unetsl.cells.blocks`) and written core by core to the label output.

Only one padded block's probabilities and labels are in memory at a time; the labels of every
padded block wait in a scratch folder beside the output (removed at the end) until the ids are
joined, then each core is written with the final ids.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unetsl.cells.blocks import Block, BlockPlan, Reader, final_core, segment_block, stitch
from unetsl.cells.export import label_file_dtype
from unetsl.cells.settings import CellSettings
from unetsl.io.lazy import LazyImage
from unetsl.io.outputs import open_output
from unetsl.predict.dask_workers import worker_source

log = logging.getLogger("unetsl")


def segment_file_blocks(image: LazyImage, output: Path, plan: BlockPlan, *, mode: str,
                        settings: CellSettings, channel: int, boundary_channel: int | None,
                        client: Any = None) -> int:
    """Segment every frame of ``image`` block by block and write the labels to ``output``
    (ids unique over the whole image, as :func:`unetsl.cells.files.segment_file` gives them
    untracked); returns the number of cells.

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
        frames, total = [], 0
        for t in range(n_t):
            folder = Path(scratch) / f"t{t}"
            folder.mkdir()
            counts = _segment_blocks(job, image, t, plan, folder, client)
            lookups, n = stitch(plan, counts, folder)
            frames.append((folder, lookups, total))
            total += n
        dtype = label_file_dtype(total, output)
        with open_output(output, (n_t, 1, *plan.shape), dtype, spacing=image.spacing,
                         unit=image.unit, labels=True, levels=pyramid_levels(plan.shape),
                         frame_interval=image.frame_interval) as sink:
            for t, (folder, lookups, offset) in enumerate(frames):
                for block in plan.blocks():
                    core = final_core(block, lookups[block.index], folder)
                    sink.write(t, block.core,
                               np.where(core > 0, core + offset, 0).astype(dtype)[None])
    return total


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
