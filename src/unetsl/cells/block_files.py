"""segment_cells on frames larger than memory: blocks read lazily from the probability file,
stitched (:mod:`unetsl.cells.blocks`) and written core by core to the label output.

Only one padded block's probabilities and labels are in memory at a time; the labels of every
padded block wait in a scratch folder beside the output (removed at the end) until the ids are
joined, then each core is written with the final ids.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from unetsl.cells.blocks import BlockPlan, Reader, final_core, segment_frame_blocks
from unetsl.cells.export import label_file_dtype
from unetsl.cells.settings import CellSettings
from unetsl.io.lazy import LazyImage
from unetsl.io.outputs import open_output

log = logging.getLogger("unetsl")


def segment_file_blocks(image: LazyImage, output: Path, plan: BlockPlan, *, mode: str,
                        settings: CellSettings, channel: int,
                        boundary_channel: int | None) -> int:
    """Segment every frame of ``image`` block by block and write the labels to ``output``
    (ids unique over the whole image, as :func:`unetsl.cells.files.segment_file` gives them
    untracked); returns the number of cells."""
    n_t = image.shape[0]
    log.info(f"cells: frames of {'x'.join(map(str, plan.shape))} voxels in "
             f"{int(np.prod(plan.grid))} blocks of {'x'.join(map(str, plan.core))} (halo "
             f"{'x'.join(map(str, plan.halo))}, \"cell block voxels\" "
             f"{settings.block_voxels})")
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".unetsl-cells-") as scratch:
        frames, total = [], 0
        for t in range(n_t):
            folder = Path(scratch) / f"t{t}"
            folder.mkdir()
            read = frame_reader(image, t, channel, boundary_channel,
                                settings.time_window // 2 if mode == "membrane" else 0)
            lookups, n = segment_frame_blocks(read, plan, mode, image.spacing, settings, folder)
            frames.append((folder, lookups, total))
            total += n
        dtype = label_file_dtype(total, output)
        with open_output(output, (n_t, 1, *plan.shape), dtype, spacing=image.spacing,
                         unit=image.unit, labels=True,
                         frame_interval=image.frame_interval) as sink:
            for t, (folder, lookups, offset) in enumerate(frames):
                for block in plan.blocks():
                    core = final_core(block, lookups[block.index], folder)
                    sink.write(t, block.core,
                               np.where(core > 0, core + offset, 0).astype(dtype)[None])
    return total


def frame_reader(image: LazyImage, t: int, channel: int, boundary_channel: int | None,
                 half_window: int) -> Reader:
    """Reads a (z, y, x) region of frame t: the channel's probability (max-pooled over
    ``half_window`` frames each side, as :func:`unetsl.cells.segment` does for membranes) and
    the boundary channel's, if any."""
    frames = range(max(0, t - half_window), min(image.shape[0], t + half_window + 1))

    def read(region):
        zs, ys, xs = region
        probability = np.max([image.data.read(f, zs, ys, xs)[channel] for f in frames], axis=0)
        boundary = None
        if boundary_channel is not None:
            boundary = image.data.read(t, zs, ys, xs)[boundary_channel]
        return probability.astype(np.float32), boundary

    return read
