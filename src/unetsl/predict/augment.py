"""Test-time augmentation: every tile predicted flipped and turned, the outputs averaged.

A network trained with flips and quarter turns ("augment flips", "augment rotate 90") should
give the same answer for a turned tile turned back; where it does not, averaging the eight
views of the y-x plane (four turns, each also mirrored) removes part of its error, at eight
times the network time (four views, the flips, when the tile is not square in y-x: a quarter
turn would change its shape). The tiling engine sees an ordinary ``TileModel``, so seams,
batches and Dask blocks are as without it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["AveragedViews", "views"]


def views(tile_shape: tuple[int, ...]) -> list[tuple[int, bool]]:
    """(quarter turns, mirrored) of every view of a (..., y, x) tile: 8, or 4 if y != x."""
    turns = (0, 1, 2, 3) if tile_shape[-1] == tile_shape[-2] else (0, 2)
    return [(k, mirrored) for k in turns for mirrored in (False, True)]


def _seen(tiles: np.ndarray, turns: int, mirrored: bool) -> np.ndarray:
    out = np.rot90(tiles, turns, axes=(-2, -1))
    return np.ascontiguousarray(out[..., ::-1] if mirrored else out)


def _undone(output: np.ndarray, turns: int, mirrored: bool) -> np.ndarray:
    back = output[..., ::-1] if mirrored else output
    return np.rot90(back, -turns, axes=(-2, -1))


class AveragedViews:
    """A ``TileModel`` (``unetsl.predict.adapter``) whose outputs are the mean of ``model``'s
    over every view of the tile (:func:`views`).

    spread : also give, after the means, each output's standard deviation over the views:
        where the views disagree the network is unsure (a per-voxel uncertainty for
        :mod:`unetsl.cells.confidence`).
    """

    def __init__(self, model: Any, spread: bool = False):
        self.model = model
        self.patch = model.patch
        self.spread = spread
        self.channels = list(model.channels) * (2 if spread else 1)
        self.indices = getattr(model, "indices", None)

    def __call__(self, tiles: np.ndarray) -> list[np.ndarray]:
        total: list[np.ndarray] | None = None
        squares: list[np.ndarray] | None = None
        chosen = views(tiles.shape)
        for turns, mirrored in chosen:
            outputs = self.model(_seen(tiles, turns, mirrored))
            back = [_undone(o, turns, mirrored) for o in outputs]
            total = back if total is None else [t + b for t, b in zip(total, back)]
            if self.spread:
                squared = [np.square(b, dtype=np.float64) for b in back]
                squares = squared if squares is None else [
                    s + q for s, q in zip(squares, squared)]
        means = [(t / len(chosen)).astype(np.float32) for t in total]
        if not self.spread:
            return means
        return means + [np.sqrt(np.maximum(s / len(chosen) - np.square(m, dtype=np.float64),
                                           0.0)).astype(np.float32)
                        for s, m in zip(squares, means)]
