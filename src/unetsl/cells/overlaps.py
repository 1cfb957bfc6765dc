"""Voxels shared by the cells of two frames, kept sparse, for tracking.

Tracking needs, for two frames, how many voxels each pair of cells shares and each cell's size.
Kept as a list of pairs (not an n x m matrix, which for 10,000 cells per frame is 800 MB), it
also adds up block by block: a frame too large for memory is tracked from per-block counts
(:mod:`unetsl.cells.block_files`) exactly as a whole one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


@dataclass(frozen=True)
class Overlaps:
    """Cells of frame a and frame b: the sizes of each, and the voxels each pair shares.

    ``ids_a``/``ids_b`` are sorted with their ``size_a``/``size_b``; ``pairs`` (n, 2) holds
    (id in a, id in b) for every pair that shares ``shared`` (n,) > 0 voxels, sorted."""

    ids_a: np.ndarray
    size_a: np.ndarray
    ids_b: np.ndarray
    size_b: np.ndarray
    pairs: np.ndarray
    shared: np.ndarray

    @classmethod
    def of(cls, a: np.ndarray, b: np.ndarray) -> Overlaps:
        """The overlaps of two label arrays of one shape (0 = background)."""
        a = np.asarray(a).ravel().astype(np.int64)
        b = np.asarray(b).ravel().astype(np.int64)
        ids_a, size_a = _sizes(a)
        ids_b, size_b = _sizes(b)
        both = (a > 0) & (b > 0)
        pairs, shared = _unique_pairs(np.stack([a[both], b[both]], axis=1))
        return cls(ids_a, size_a, ids_b, size_b, pairs, np.bincount(shared))

    @classmethod
    def total(cls, parts: Iterable[Overlaps]) -> Overlaps:
        """The overlaps of a whole frame from those of its blocks (disjoint regions)."""
        parts = list(parts)
        ids_a, size_a = _add([p.ids_a for p in parts], [p.size_a for p in parts])
        ids_b, size_b = _add([p.ids_b for p in parts], [p.size_b for p in parts])
        pairs, where = _unique_pairs(np.concatenate([p.pairs for p in parts]).reshape(-1, 2))
        shared = np.bincount(where, weights=np.concatenate([p.shared for p in parts]),
                             minlength=len(pairs)).astype(np.int64)
        return cls(ids_a, size_a, ids_b, size_b, pairs, shared)

    def renamed(self, lookup_a: dict[int, int]) -> Overlaps:
        """The same overlaps with frame a's ids renamed (one to one) by ``lookup_a``."""
        keys = np.fromiter(lookup_a.keys(), dtype=np.int64, count=len(lookup_a))
        values = np.fromiter(lookup_a.values(), dtype=np.int64, count=len(lookup_a))
        order = np.argsort(keys)
        keys, values = keys[order], values[order]

        def rename(ids: np.ndarray) -> np.ndarray:
            return values[np.searchsorted(keys, ids)] if len(ids) else ids

        ids_a = rename(self.ids_a)
        by_id = np.argsort(ids_a)
        pairs = self.pairs.copy()
        pairs[:, 0] = rename(pairs[:, 0])
        by_pair = np.lexsort((pairs[:, 1], pairs[:, 0]))
        return Overlaps(ids_a[by_id], self.size_a[by_id], self.ids_b, self.size_b,
                        pairs[by_pair], self.shared[by_pair])

    def only(self, keep_a: np.ndarray, keep_b: np.ndarray) -> Overlaps:
        """The pairs between the cells ``keep_a`` of frame a and ``keep_b`` of frame b (sizes
        unchanged)."""
        kept = np.isin(self.pairs[:, 0], keep_a) & np.isin(self.pairs[:, 1], keep_b)
        return Overlaps(self.ids_a, self.size_a, self.ids_b, self.size_b, self.pairs[kept],
                        self.shared[kept])

    def size_of(self, side: str, ids: np.ndarray) -> np.ndarray:
        """Sizes of ``ids`` of frame ``side`` ("a" or "b")."""
        known, sizes = (self.ids_a, self.size_a) if side == "a" else (self.ids_b, self.size_b)
        return sizes[np.searchsorted(known, ids)]

    def iou(self) -> np.ndarray:
        """Intersection over union of every pair."""
        size_a = self.size_of("a", self.pairs[:, 0])
        size_b = self.size_of("b", self.pairs[:, 1])
        return self.shared / np.maximum(size_a + size_b - self.shared, 1)


def _unique_pairs(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of (n, 2) non-negative ids, sorted, and each row's index among them
    (one int64 key per row: several times faster than ``np.unique(axis=0)``)."""
    width = int(pairs[:, 1].max()) + 1 if len(pairs) else 1
    keys, where = np.unique(pairs[:, 0] * width + pairs[:, 1], return_inverse=True)
    return np.stack([keys // width, keys % width], axis=1), where.ravel()


def _sizes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, sizes = np.unique(labels[labels > 0], return_counts=True)
    return ids.astype(np.int64), sizes.astype(np.int64)


def _add(ids: list[np.ndarray], sizes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sizes of the same ids counted in several parts, summed."""
    every = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    unique, where = np.unique(every, return_inverse=True)
    weights = np.concatenate(sizes) if sizes else np.zeros(0)
    return unique.astype(np.int64), np.bincount(where, weights=weights,
                                                minlength=len(unique)).astype(np.int64)


def best_matches(pairs: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Indices of the pairs of a one-to-one matching with the largest total score.

    Pairs not listed score 0, so the optimum splits into the connected groups of listed
    pairs: each is solved on its own (most are a single pair), which keeps a frame of
    thousands of cells a matter of milliseconds."""
    if not len(pairs):
        return np.zeros(0, dtype=np.int64)
    a_ids, a_of = np.unique(pairs[:, 0], return_inverse=True)
    b_ids, b_of = np.unique(pairs[:, 1], return_inverse=True)
    n_a = len(a_ids)
    graph = coo_matrix((np.ones(len(pairs)), (a_of.ravel(), n_a + b_of.ravel())),
                       shape=(n_a + len(b_ids),) * 2)
    _, group = connected_components(graph, directed=False)
    group_of_pair = group[a_of.ravel()]
    counts = np.bincount(group_of_pair)
    chosen = [np.flatnonzero(counts[group_of_pair] == 1)]
    shared = np.flatnonzero(counts[group_of_pair] > 1)
    by_group = shared[np.argsort(group_of_pair[shared], kind="stable")]
    edges = np.flatnonzero(np.diff(group_of_pair[by_group])) + 1
    for members in np.split(by_group, edges) if len(by_group) else ():
        rows, row_of = np.unique(a_of.ravel()[members], return_inverse=True)
        cols, col_of = np.unique(b_of.ravel()[members], return_inverse=True)
        matrix = np.zeros((len(rows), len(cols)))
        matrix[row_of, col_of] = score[members]
        index = np.full((len(rows), len(cols)), -1)
        index[row_of, col_of] = members
        r, c = linear_sum_assignment(matrix, maximize=True)
        picked = index[r, c]
        chosen.append(picked[picked >= 0])
    return np.sort(np.concatenate(chosen))
