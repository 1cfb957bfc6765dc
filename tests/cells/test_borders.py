"""The rules that decide which touching regions are one cell: the weak-border merge measured
away from a border's rim, weakest border first, and seeds for enclosed regions at the image
border only."""

import numpy as np

from unetsl.cells import segment
from unetsl.cells.segment import border_voxels, merge_weak_borders
from unetsl.evaluate.instances import instance_scores


def _columns(drawings, n_z: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Columnar cells (a 2D tessellation repeated along z, lateral membranes only)."""
    cells2d = drawings.voronoi((48, 48), 12, seed=5)
    prob2d = drawings.membrane_probability(cells2d)
    return np.repeat(cells2d[None], n_z, 0), np.repeat(prob2d[None], n_z, 0)


def _face(pairs: np.ndarray, a: int, b: int) -> np.ndarray:
    return (pairs[:, 0] == min(a, b)) & (pairs[:, 1] == max(a, b))


def test_column_cut_in_two_merges_although_its_rim_lies_on_membranes(drawings):
    """A cut across a 3D column is a cross-section whose rim lies in the lateral membranes:
    the cut's plain mean probability is over the threshold, the mean away from the rim is not."""
    cells, prob = _columns(drawings)
    spacing = (3.0, 1.0, 1.0)
    column = int(cells[0, 24, 24])
    cut = cells.copy()
    top = cut[:4]
    top[top == column] = cells.max() + 1  # two seeds in one column, no membrane between
    pairs, values, far = border_voxels(cut, prob, spacing)
    face = _face(pairs, column, int(cells.max()) + 1)
    assert values[face].mean() > 0.35  # the rim: the old whole-border mean kept the cut
    assert values[face & far].mean() < 0.1
    merged = merge_weak_borders(cut, prob, 0.3, spacing)
    assert instance_scores(cells[None], merged[None].astype(np.int32))["f1"] == 1.0


def test_membrane_between_stacked_cells_keeps_them_apart(drawings):
    """A real border across a column (a membrane in one plane) is not a weak border."""
    cells, prob = _columns(drawings)
    column = int(cells[0, 24, 24])
    stacked = cells.copy()
    upper = stacked[:4]
    upper[upper == column] = cells.max() + 1
    prob = prob.copy()
    prob[3:5][cells[3:5] == column] = 0.9  # the membrane between the two stacked cells
    merged = merge_weak_borders(stacked, prob, 0.3, (3.0, 1.0, 1.0))
    assert len(np.unique(merged)) == len(np.unique(stacked))


def test_weakest_border_first_pools_the_evidence():
    """A1 and A2 are one cell cut in two; B lies above both, behind a membrane with a gap
    where it meets A2. Merging A1+A2 first pools their borders with B: strong, so B stays."""
    labels = np.zeros((20, 30), np.int32)
    labels[:10] = 3  # B
    labels[10:, :15], labels[10:, 15:] = 1, 2  # A1, A2
    membrane = np.full(labels.shape, 0.02, np.float32)
    membrane[9:11, :15] = 0.9  # B | A1: membrane
    membrane[9:11, 15:] = 0.25  # B | A2: a gap (weak, but not as weak as A1 | A2)
    merged = merge_weak_borders(labels, membrane, 0.3)
    assert merged[15, 5] == merged[15, 25] != merged[5, 5]


def test_enclosed_regions_seed_cells_at_the_image_border_only():
    """An enclosed region without a distance peak is a cell cut by the image border when it
    touches the border, and a hole in a thick membrane junction when it does not."""
    from unetsl.cells.segment import _seed_enclosed

    interior = np.ones((40, 40), bool)
    interior[:, 2:5] = False  # membrane closing a 2-pixel strip along the left edge
    interior[18:27, 18:27] = False  # a thick junction ...
    interior[22:24, 20:25] = True  # ... with a 10-pixel hole
    markers = np.zeros(interior.shape, np.int32)
    markers[20, 35] = 1  # the big cell's own seed
    seeded = _seed_enclosed(markers, interior)
    assert seeded[10, 0] > 1 and seeded[10, 1] == seeded[10, 0]  # the strip: a new seed
    assert (seeded[22:24, 20:25] == 0).all()  # the hole: none
    prob = np.where(interior, 0.02, 0.95).astype(np.float32)
    labels = segment(prob)[0, 0]
    assert labels[10, 0] != labels[10, 30]  # the strip is its own cell
