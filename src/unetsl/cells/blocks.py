"""Cells of frames larger than memory: segment block by block with a halo, stitch, relabel.

Segmenting one frame needs about 160 bytes per voxel at its peak (scikit-image's h-maxima), so
a whole light-sheet stack cannot be segmented at once. Here a frame is cut into blocks whose
padded size (core + halo on every side) stays under ``settings.block_voxels``:

1. every block is segmented on its own, padded by the halo so that the cells near its core's
   faces are seen whole; its core keeps ids 1..n, the rest of the padded labels keep the ids of
   core cells only (0 elsewhere), saved to a scratch folder (independent tasks: Dask-ready);
2. two neighbouring blocks both labelled the slab around their shared face (each one's halo
   is the other's core): a cell cut by the face has one id from each block there, and pairs
   whose regions in the slab overlap by IoU >= 0.5 are joined (union-find). Cells that merely
   touch across the face do not overlap, so neighbours are never merged;
3. the joined ids are numbered 1..N and each core is written with them.

Memory is one padded block at a time (plus two blocks' int32 labels while stitching), whatever
the frame's size; the scratch folder holds one int32 label array per padded block.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.cluster.hierarchy import DisjointSet

from unetsl.cells.segment import segment
from unetsl.cells.settings import CellSettings
from unetsl.errors import UnetslError

#: IoU of a cell's two views in the slab around a face above which they are one cell
STITCH_IOU = 0.5

Region = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Block:
    """One block of a frame: its index in the grid, its core and its padded region (global)."""

    index: tuple[int, int, int]
    core: Region
    padded: Region

    @property
    def inner(self) -> Region:
        """The core as a region of the padded array."""
        return tuple(slice(c.start - p.start, c.stop - p.start)  # type: ignore[return-value]
                     for c, p in zip(self.core, self.padded))


@dataclass(frozen=True)
class BlockPlan:
    """How a (z, y, x) frame is cut: core size and halo (voxels) per axis."""

    shape: tuple[int, int, int]
    core: tuple[int, int, int]
    halo: tuple[int, int, int]

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(math.ceil(n / c) for n, c in zip(self.shape, self.core))  # type: ignore

    def blocks(self) -> list[Block]:
        return [self.block(index) for index in itertools.product(*map(range, self.grid))]

    def block(self, index: Sequence[int]) -> Block:
        core, padded = [], []
        for i, n, c, h in zip(index, self.shape, self.core, self.halo):
            start, stop = i * c, min((i + 1) * c, n)
            core.append(slice(start, stop))
            padded.append(slice(max(0, start - h), min(n, stop + h)))
        return Block(tuple(index), tuple(core), tuple(padded))  # type: ignore[arg-type]

    def neighbours(self) -> Iterator[tuple[Block, Block]]:
        """Every pair of blocks that share a face, each pair once."""
        grid = self.grid
        for index in itertools.product(*map(range, grid)):
            for axis in range(3):
                if index[axis] + 1 < grid[axis]:
                    after = list(index)
                    after[axis] += 1
                    yield self.block(index), self.block(after)


def plan_blocks(shape: Sequence[int], spacing: Sequence[float],
                settings: CellSettings) -> BlockPlan | None:
    """The blocks of a (z, y, x) frame, or None when it fits ``settings.block_voxels`` whole.

    The halo is ``settings.block_halo`` in-plane pixels (fewer z planes when z steps are
    longer); the core is the frame halved along its longest physical axis until the padded
    block fits, never thinner than the halo (a block that is mostly halo would segment each
    voxel many times): a budget too small for that is a one-line error.
    """
    shape3 = tuple(int(n) for n in shape)
    if math.prod(shape3) <= settings.block_voxels:
        return None
    pixel = min(float(s) for s in spacing[1:])
    reach = [settings.block_halo * pixel / float(s) for s in spacing]
    halo = tuple(min(n, math.ceil(r)) if n > 1 else 0 for n, r in zip(shape3, reach))
    core = list(shape3)
    while _padded_voxels(shape3, core, halo) > settings.block_voxels:
        halvable = [a for a in range(3) if core[a] > 1 and math.ceil(core[a] / 2) >= halo[a]]
        if not halvable:
            smallest = _padded_voxels(shape3, [max(1, h) for h in halo], halo)
            voxels = "x".join(map(str, halo))
            raise UnetslError(f'"cell block voxels" {settings.block_voxels} is too small for '
                              f"a halo of {settings.block_halo:g} pixels ({voxels} voxels): "
                              f'give at least {smallest}, or a smaller "cell block halo"')
        longest = max(halvable, key=lambda a: core[a] * float(spacing[a]))
        core[longest] = math.ceil(core[longest] / 2)
    return BlockPlan(shape3, tuple(core), halo)  # type: ignore[arg-type]


def _padded_voxels(shape: Sequence[int], core: Sequence[int], halo: Sequence[int]) -> int:
    return math.prod(min(n, c + 2 * h) for n, c, h in zip(shape, core, halo))


Reader = Callable[[Region], tuple[np.ndarray, np.ndarray | None]]


def segment_block(read: Reader, block: Block, mode: str, spacing: Sequence[float],
                  settings: CellSettings, scratch: str | os.PathLike) -> int:
    """Step 1 for one block: segment its padded region, save the labels of its core cells
    (1..n in the whole padded region, 0 for cells outside the core) as ``<index>.npy`` in
    ``scratch``; returns n."""
    probability, boundary = read(block.padded)
    labels = segment(probability[None], mode, spacing, settings,
                     boundary=None if boundary is None else boundary[None])[0]
    core_ids = np.unique(labels[block.inner])
    core_ids = core_ids[core_ids > 0]
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lookup[core_ids] = np.arange(1, len(core_ids) + 1, dtype=np.int32)
    np.save(_block_file(scratch, block), lookup[labels])
    return len(core_ids)


def _block_file(scratch: str | os.PathLike, block: Block) -> Path:
    return Path(scratch) / ("block-" + "-".join(map(str, block.index)) + ".npy")


def stitch(plan: BlockPlan, counts: dict[tuple[int, int, int], int],
           scratch: str | os.PathLike) -> tuple[dict[tuple[int, int, int], np.ndarray], int]:
    """Steps 2 and 3: join the ids of one cell cut by block faces; for every block the lookup
    from its own ids (0..n) to the frame's final ids, and the number of cells."""
    offsets, total = {}, 0
    for index in sorted(counts):
        offsets[index], total = total, total + counts[index]
    joined = DisjointSet(range(1, total + 1))
    for first, second in plan.neighbours():
        for a, b in _same_cells(first, second, scratch):
            joined.merge(int(a) + offsets[first.index], int(b) + offsets[second.index])
    final = np.zeros(total + 1, dtype=np.int64)
    roots = sorted({joined[i] for i in range(1, total + 1)})
    number = {root: n for n, root in enumerate(roots, start=1)}
    for i in range(1, total + 1):
        final[i] = number[joined[i]]
    lookups = {index: np.concatenate([[0], final[offsets[index] + 1:
                                                  offsets[index] + counts[index] + 1]])
               for index in counts}
    return lookups, len(roots)


def _same_cells(first: Block, second: Block, scratch: str | os.PathLike
                ) -> list[tuple[int, int]]:
    """(id in first, id in second) of the cells both blocks saw in the slab around their face
    whose two regions there overlap by IoU >= STITCH_IOU. (Joining a block's sliver of a cell
    to the neighbour's cell that contains it instead merged true neighbours: F1 against the
    whole-volume cells fell from 0.993-0.998 to 0.974-0.997 on synthetic 3D stacks.)"""
    slab = tuple(slice(max(a.start, b.start), min(a.stop, b.stop))
                 for a, b in zip(first.padded, second.padded))
    views = []
    for block in (first, second):
        labels = np.load(_block_file(scratch, block), mmap_mode="r")
        local = tuple(slice(s.start - p.start, s.stop - p.start)
                      for s, p in zip(slab, block.padded))
        views.append(np.asarray(labels[local]).ravel().astype(np.int64))
    a, b = views
    both = (a > 0) & (b > 0)
    if not both.any():
        return []
    width = int(b.max()) + 1
    keys, inter = np.unique(a[both] * width + b[both], return_counts=True)
    first_ids, second_ids = keys // width, keys % width
    union = np.bincount(a)[first_ids] + np.bincount(b)[second_ids] - inter
    joined = inter / union >= STITCH_IOU
    return list(zip(first_ids[joined].tolist(), second_ids[joined].tolist()))


def final_core(block: Block, lookup: np.ndarray, scratch: str | os.PathLike) -> np.ndarray:
    """The block's core labelled with the frame's final ids."""
    labels = np.load(_block_file(scratch, block), mmap_mode="r")
    return lookup[np.asarray(labels[block.inner])]


def segment_frame_blocks(read: Reader, plan: BlockPlan, mode: str, spacing: Sequence[float],
                         settings: CellSettings, scratch: str | os.PathLike
                         ) -> tuple[dict[tuple[int, int, int], np.ndarray], int]:
    """Steps 1-3 for one frame: (each block's lookup to the frame's ids 1..n, n); the cores
    are then :func:`final_core` of each block."""
    counts = {block.index: segment_block(read, block, mode, spacing, settings, scratch)
              for block in plan.blocks()}
    return stitch(plan, counts, scratch)
