"""Drawn test images with known cells (no model needed), as the ``drawings`` fixture."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from skimage.segmentation import find_boundaries


def voronoi(shape: tuple[int, ...], step: float, seed: int = 0, jitter: float = 0.2,
            scale: tuple[float, ...] | None = None) -> np.ndarray:
    """Cell ids (1..n) of a jittered-grid Voronoi tessellation; ``scale`` = physical spacing."""
    rng = np.random.default_rng(seed)
    scale = scale or (1.0,) * len(shape)
    extent = [n * s for n, s in zip(shape, scale)]
    axes = [np.arange(step / 2, e, step) for e in extent]  # seeds inside: no slivers
    points = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(shape))
    points = points + rng.uniform(-jitter, jitter, points.shape) * step
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, scale)],
                                indexing="ij"), -1).reshape(-1, len(shape))
    _, nearest = cKDTree(points).query(grid)
    _, ids = np.unique(nearest, return_inverse=True)
    return (ids + 1).reshape(shape).astype(np.int32)


def membrane_probability(cells: np.ndarray, gap_between: tuple[int, int] | None = None
                         ) -> np.ndarray:
    """A membrane probability like a network's: 2-pixel membranes, blurred, with an optional
    hole in the membrane shared by the two cells ``gap_between``."""
    membrane = find_boundaries(cells, mode="thick").astype(np.float64)
    prob = np.clip(ndi.gaussian_filter(membrane, 0.7) * 1.6, 0, 1) * 0.95 + 0.02
    if gap_between is not None:
        a, b = gap_between
        near_a = ndi.binary_dilation(cells == a, iterations=2)
        near_b = ndi.binary_dilation(cells == b, iterations=2)
        shared = np.argwhere(near_a & near_b)
        centre = shared[len(shared) // 2]
        grid = np.indices(cells.shape)
        hole = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= 2.5**2
        prob[hole] = 0.05
    return prob.astype(np.float32)


def neighbours_with_longest_border(cells: np.ndarray) -> tuple[int, int]:
    """The two touching cells sharing the longest border (where a gap hurts most)."""
    a, b = cells[:, :-1].ravel(), cells[:, 1:].ravel()
    keep = a != b
    pairs, counts = np.unique(np.sort(np.stack([a[keep], b[keep]], 1), 1), axis=0,
                              return_counts=True)
    first, second = pairs[np.argmax(counts)]
    return int(first), int(second)


@pytest.fixture
def drawings() -> SimpleNamespace:
    """``drawings.voronoi``, ``drawings.membrane_probability``,
    ``drawings.neighbours_with_longest_border``: cells and membrane maps with known truth."""
    return SimpleNamespace(voronoi=voronoi, membrane_probability=membrane_probability,
                           neighbours_with_longest_border=neighbours_with_longest_border)
