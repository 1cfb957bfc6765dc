"""Cell instances from a network's probability maps (membrane or foreground), frame by frame.

Membrane mode seeds one cell per peak of the distance to the membrane (so a small gap in a
membrane does not merge two cells, and a cell's irregular outline does not split it) and floods
the membrane probability from those seeds, so the cells tile the image. A cell with two peaks
(a column in a 3D stack often has several along its axis) is split where no membrane lies, so
neighbours are then merged, weakest border first, unless the membrane runs along their border.
Foreground mode (nuclei) thresholds and splits touching objects at the necks of their distance
transform.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import h_maxima, local_maxima
from skimage.segmentation import relabel_sequential, watershed

from unetsl.cells.settings import CellSettings, check_mode
from unetsl.errors import UnetslError

#: Distance (in-plane pixels, physical units like the settings' lengths) from where a border
#: meets a third cell within which its membrane probability is not evidence for that border:
#: the third cells' membranes run into it there. About a membrane's width in a network's map;
#: 1.5-2 scored best on the 2D demo movie and the 3D stacks of benchmarks/cells.py, 1 and 2.5
#: lower on both.
BORDER_RIM = 2.0


def segment(
    probabilities: np.ndarray,
    mode: str | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    settings: CellSettings | None = None,
    distance: np.ndarray | None = None,
    boundary: np.ndarray | None = None,
) -> np.ndarray:
    """Label cells in a (t, z, y, x) probability map; returns int32 labels of the same shape.

    ``mode`` ("membrane" or "foreground") overrides ``settings.mode``. ``spacing`` is (z, y, x)
    in physical units; seeds and smoothing follow the real geometry of anisotropic stacks, and
    the settings' lengths are in units of the in-plane pixel (spacing (3, 1, 1) and
    (1.5, 0.5, 0.5) give the same cells).
    ``distance`` (same shape), e.g. a predicted distance-to-membrane map, seeds instead of the
    distance transform of the thresholded map. ``boundary`` (same shape; foreground mode), the
    object-boundary probability of a model trained with "instance labels": each object
    interior it leaves (foreground and not boundary) seeds one object, so touching nuclei are
    split where the network drew their boundary. Ids are 1..n within each frame (see ``track``).
    In membrane mode each frame's map is first max-pooled with its neighbours in time
    (``settings.time_window``; no effect on single frames or stacks).
    """
    settings = settings or CellSettings()
    mode = check_mode(settings.mode if mode is None else mode)
    probs = check_probabilities(probabilities, "probabilities")
    # Sizes (seed sigma, seed height) are in in-plane pixels: the spacing only says how much
    # longer a z step is, so the same settings work whatever the microscope's pixel size.
    spacing = check_spacing(spacing)
    pixel = min(spacing[1:])
    spacing = (spacing[0] / pixel, spacing[1] / pixel, spacing[2] / pixel)
    distance = _like(distance, probs, "distance map")
    boundary = _like(boundary, probs, "boundary map")
    if boundary is not None and mode != "foreground":
        raise UnetslError('a boundary map is for "cell mode" foreground (objects such as '
                          "nuclei); membrane mode reads the membrane itself")
    out = np.zeros(probs.shape, dtype=np.int32)
    half = settings.time_window // 2 if mode == "membrane" else 0
    for t in range(probs.shape[0]):
        frame_distance = None if distance is None else distance[t]
        frame = probs[max(0, t - half):t + half + 1].max(axis=0) if half else probs[t]
        out[t] = segment_frame(frame, mode, spacing, settings, frame_distance,
                               None if boundary is None else boundary[t])
    return out


def _like(extra: np.ndarray | None, probs: np.ndarray, what: str) -> np.ndarray | None:
    """A second map of the same (t, z, y, x) shape as the probabilities, checked."""
    if extra is None:
        return None
    extra = np.asarray(extra, dtype=np.float64)
    if extra.ndim == 2:
        extra = extra[None, None]
    if extra.shape != probs.shape:
        raise UnetslError(f"{what} shape {extra.shape} differs from the probabilities' "
                          f"{probs.shape}")
    if not np.isfinite(extra).all():
        raise UnetslError(f"{what} contains NaN or infinite values")
    return extra


def segment_frame(
    probability: np.ndarray,
    mode: str,
    spacing: tuple[float, float, float],
    settings: CellSettings,
    distance: np.ndarray | None = None,
    boundary: np.ndarray | None = None,
) -> np.ndarray:
    """Labels of one (z, y, x) frame; a single plane is processed in 2D."""
    flat = probability.shape[0] == 1
    image = probability[0] if flat else probability
    sampling = spacing[1:] if flat else spacing
    given = None if distance is None else (distance[0] if flat else distance)
    if mode == "membrane":
        labels = _membrane(image, sampling, settings, given)
    elif boundary is not None:
        labels = _split_by_boundary(image, boundary[0] if flat else boundary, sampling,
                                    settings)
    else:
        labels = _foreground(image, sampling, settings, given)
    labels = relabel_sequential(labels)[0].astype(np.int32)
    return labels[None] if flat else labels


def _seeds(dist: np.ndarray, sampling: Sequence[float], settings: CellSettings,
           mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(smoothed distance, labelled seeds): one seed per distance peak higher than h."""
    if settings.seed_sigma > 0:
        sigma = [settings.seed_sigma / s for s in sampling]
        dist = ndi.gaussian_filter(dist, sigma, mode="nearest")
    if settings.seed_height > 0:
        peaks = h_maxima(dist, settings.seed_height)
    else:
        peaks = local_maxima(dist)
    peaks = peaks.astype(bool)
    if mask is not None:
        peaks &= mask
    markers, _ = ndi.label(peaks, structure=np.ones((3,) * dist.ndim))
    return dist, markers


def _membrane(membrane: np.ndarray, sampling: Sequence[float], settings: CellSettings,
              distance: np.ndarray | None) -> np.ndarray:
    interior = membrane < settings.threshold
    if distance is None:
        distance = ndi.distance_transform_edt(interior, sampling=sampling)
    smooth, markers = _seeds(distance, sampling, settings, None)
    markers = _seed_enclosed(markers, interior)
    if markers.max() == 0:
        return np.ones(membrane.shape, dtype=np.int32)
    peak = max(float(smooth.max()), 1e-12)
    # Membrane ridges separate cells; where a membrane has a gap the distance term puts the
    # boundary at the narrowest point of the neck between the two seeds.
    elevation = membrane + settings.distance_weight * (1.0 - smooth / peak)
    labels = watershed(elevation, markers)
    if settings.merge_threshold > 0:
        labels = merge_weak_borders(labels, membrane, settings.merge_threshold, sampling)
    return _drop_small(labels, elevation, settings.min_size, None)


def _seed_enclosed(markers: np.ndarray, interior: np.ndarray) -> np.ndarray:
    """Add a seed for every membrane-enclosed region that touches the image border and has
    none: cells cut by the border are thin slivers whose distance peak is too low (or smoothed
    away) to seed. Inside the image a region that is enclosed but has no distance peak is a hole
    in a thick membrane junction, not a cell (every real cell there has a peak)."""
    regions, n = ndi.label(interior)
    if n == 0:
        return markers
    seeded = np.zeros(n + 1, bool)
    seeded[regions[markers > 0]] = True
    seeded[0] = True
    at_border = np.zeros(n + 1, bool)
    for axis in range(regions.ndim):
        at_border[np.take(regions, 0, axis=axis)] = True
        at_border[np.take(regions, -1, axis=axis)] = True
    seeded |= ~at_border
    lonely = ~seeded[regions]
    if not lonely.any():
        return markers
    extra, _ = ndi.label(lonely)
    return np.where(lonely, extra + markers.max(), markers)


def _foreground(foreground: np.ndarray, sampling: Sequence[float], settings: CellSettings,
                distance: np.ndarray | None) -> np.ndarray:
    mask = foreground >= settings.threshold
    if distance is None:
        distance = ndi.distance_transform_edt(mask, sampling=sampling)
    smooth, markers = _seeds(distance, sampling, settings, mask)
    labels = watershed(-smooth, markers, mask=mask)
    return _drop_small(labels, -smooth, settings.min_size, mask)


def _split_by_boundary(foreground: np.ndarray, boundary: np.ndarray,
                       sampling: Sequence[float], settings: CellSettings) -> np.ndarray:
    """Objects of a foreground + boundary model ("instance labels"): seeds are the peaks of
    the distance transform of the interiors (foreground, not boundary), so two touching
    objects, cut apart by their boundary, get a peak each, while a thin false cut through one
    object is bridged by the seed smoothing; an object whose interior the boundary covers
    whole seeds itself. The foreground is flooded over the boundary probability plus the
    distance term (as in membrane mode), so touching objects part along their boundary."""
    mask = foreground >= settings.threshold
    interior = mask & (boundary < settings.threshold)
    distance = ndi.distance_transform_edt(interior, sampling=sampling)
    smooth, markers = _seeds(distance, sampling, settings, interior)
    objects, _ = ndi.label(mask)
    seedless = mask & ~np.isin(objects, np.unique(objects[markers > 0]))
    extra, _ = ndi.label(seedless)
    markers = np.where(seedless, extra + markers.max(), markers)
    peak = max(float(smooth.max()), 1e-12)
    elevation = boundary + settings.distance_weight * (1.0 - smooth / peak)
    labels = watershed(elevation, markers, mask=mask)
    return _drop_small(labels, elevation, settings.min_size, mask)


def _drop_small(labels: np.ndarray, elevation: np.ndarray, min_size: int,
                mask: np.ndarray | None) -> np.ndarray:
    """Re-flood without regions under min_size: they join a neighbour (or vanish if isolated)."""
    if min_size <= 1 or labels.max() == 0:
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if not small[labels].any():
        return labels
    if small[1:].all():  # everything small: keep it rather than return nothing
        return labels
    keep = np.where(small[labels], 0, labels)
    return watershed(elevation, keep, mask=mask)


def touching_pairs(labels: np.ndarray, values: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (n, 2) of distinct non-zero labels that touch (face neighbours) and, if ``values``
    is given, the mean over their shared border of the larger value on either side."""
    keys: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)
        lo, hi = a[:-1].ravel(), a[1:].ravel()
        diff = (lo != hi) & (lo > 0) & (hi > 0)
        first, second = np.minimum(lo[diff], hi[diff]), np.maximum(lo[diff], hi[diff])
        keys.append(first.astype(np.int64) * (int(labels.max()) + 1) + second)
        if values is not None:
            v = np.moveaxis(values, axis, 0)
            vals.append(np.maximum(v[:-1].ravel()[diff], v[1:].ravel()[diff]))
    key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    unique, inverse = np.unique(key, return_inverse=True)
    base = int(labels.max()) + 1
    pairs = np.stack([unique // base, unique % base], axis=1)
    if values is None:
        return pairs, np.zeros(len(pairs))
    sums = np.bincount(inverse, weights=np.concatenate(vals), minlength=len(unique))
    counts = np.bincount(inverse, minlength=len(unique))
    return pairs, sums / np.maximum(counts, 1)


def merge_weak_borders(labels: np.ndarray, membrane: np.ndarray, threshold: float,
                       sampling: Sequence[float] | None = None) -> np.ndarray:
    """Merge touching cells whose shared border has mean membrane probability below threshold.

    A cell that got two seeds is split by a border with no membrane under it; a real border,
    even one with a small gap, has a high mean probability and survives. The mean leaves out
    the border's rim (within ``BORDER_RIM`` of where a third cell meets it, ``sampling`` =
    physical spacing): there the third cells' membranes run into the border, and a cut across a
    3D column is a whole cross-section whose rim is a third of it, enough to lift the mean over
    the threshold although no membrane divides the column. Pairs merge weakest first, and each
    merge pools the evidence of the two borders it joins, so one weak patch between pieces of
    two different cells does not merge cells whose border is strong elsewhere.
    """
    pairs, values, far = border_voxels(labels, membrane, sampling)
    parent = np.arange(int(labels.max()) + 1)
    while True:
        pairs = np.sort(parent[pairs], axis=1)
        keep = pairs[:, 0] != pairs[:, 1]
        pairs, values, far = pairs[keep], values[keep], far[keep]
        if len(pairs) == 0:
            break
        unique, strength = _border_strength(pairs, values, far)
        weak = np.flatnonzero(strength < threshold)
        if len(weak) == 0:
            break
        used: set[int] = set()
        for k in weak[np.argsort(strength[weak], kind="stable")]:
            a, b = int(unique[k, 0]), int(unique[k, 1])
            if a not in used and b not in used:  # each cell in one merge per round
                parent[parent == b] = a
            used.update((a, b))
    return parent[labels]


def border_voxels(labels: np.ndarray, membrane: np.ndarray,
                  sampling: Sequence[float] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every face-neighbour pair of voxels in two different cells: (n, 2) sorted label pairs,
    the larger membrane value of the two voxels, and whether the pair is clear of the rim."""
    sampling = tuple(sampling) if sampling is not None else (1.0,) * labels.ndim
    rim = ndi.binary_dilation(_junctions(labels), structure=_ball(sampling, BORDER_RIM))
    pairs, values, far = [], [], []
    for axis in range(labels.ndim):
        lab, val, edge = (np.moveaxis(a, axis, 0) for a in (labels, membrane, rim))
        diff = (lab[:-1] != lab[1:]) & (lab[:-1] > 0) & (lab[1:] > 0)
        lo, hi = lab[:-1][diff], lab[1:][diff]
        pairs.append(np.stack([np.minimum(lo, hi), np.maximum(lo, hi)], axis=1))
        values.append(np.maximum(val[:-1][diff], val[1:][diff]))
        far.append(~(edge[:-1][diff] | edge[1:][diff]))
    return (np.concatenate(pairs).astype(np.int64), np.concatenate(values).astype(np.float64),
            np.concatenate(far))


def _border_strength(pairs: np.ndarray, values: np.ndarray, far: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Distinct pairs and their border's mean value away from the rim (the whole border's
    mean where all of it is rim: a contact that small is judged on what there is)."""
    base = int(pairs.max()) + 1
    key, inverse = np.unique(pairs[:, 0] * base + pairs[:, 1], return_inverse=True)
    count = np.bincount(inverse, minlength=len(key))
    n_far = np.bincount(inverse, weights=far, minlength=len(key))
    whole = np.bincount(inverse, weights=values, minlength=len(key)) / np.maximum(count, 1)
    away = np.bincount(inverse, weights=values * far, minlength=len(key))
    unique = np.stack([key // base, key % base], axis=1)
    return unique, np.where(n_far > 0, away / np.maximum(n_far, 1), whole)


def _junctions(labels: np.ndarray) -> np.ndarray:
    """Voxels with face neighbours in two or more cells other than their own: where three cells
    meet (a point in 2D, a line in 3D)."""
    low = np.zeros(labels.shape, labels.dtype)  # smallest other label seen, 0 = none yet
    high = np.zeros(labels.shape, labels.dtype)
    for axis in range(labels.ndim):
        for here, there in ((slice(None, -1), slice(1, None)), (slice(1, None), slice(None, -1))):
            index = [slice(None)] * labels.ndim
            index[axis] = here
            own, lo, hi = labels[tuple(index)], low[tuple(index)], high[tuple(index)]
            index[axis] = there
            other = labels[tuple(index)]
            new = (other != own) & (other > 0)
            smaller = new & ((lo == 0) | (other < lo))
            lo[smaller] = other[smaller]  # views: updates low/high in place
            larger = new & (other > hi)
            hi[larger] = other[larger]
    return (low > 0) & (low != high)


def _ball(sampling: Sequence[float], radius: float) -> np.ndarray:
    """Footprint of the voxel offsets shorter than ``radius`` in physical units."""
    reach = [int(np.ceil(radius / s)) for s in sampling]
    grid = np.meshgrid(*[np.arange(-r, r + 1) * s for r, s in zip(reach, sampling)],
                       indexing="ij")
    return sum(g**2 for g in grid) < radius**2


def check_probabilities(probabilities: np.ndarray, what: str) -> np.ndarray:
    """A float (t, z, y, x) copy of a probability map, or a one-line UnetslError."""
    array = np.asarray(probabilities)
    if array.ndim == 2:
        array = array[None, None]
    if array.ndim != 4:
        raise UnetslError(f"{what} must be (t, z, y, x) (or a single (y, x) image), got shape "
                          f"{array.shape}; use a[None] for a (z, y, x) stack, a[:, None] for a "
                          f"(t, y, x) series")
    if array.size == 0:
        raise UnetslError(f"{what} is empty (shape {array.shape})")
    if array.dtype == bool:
        array = array.astype(np.float32)
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise UnetslError(f"{what} must be a real numeric array, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise UnetslError(f"{what} contains NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if np.issubdtype(array.dtype, np.integer) and high > 1:
        distinct = len(np.unique(array))
        if distinct <= 2:
            raise UnetslError(f"{what} looks like a binary mask (values {low:g}/{high:g}, dtype "
                              f"{array.dtype}), not probabilities in [0, 1]: divide by {high:g}")
        raise UnetslError(f"{what} looks like a label image (dtype {array.dtype}, {distinct} "
                          f"distinct values up to {high:g}), not a probability map in [0, 1]")
    if low < -1e-3 or high > 1 + 1e-3:  # tolerate float rounding of filtered maps
        raise UnetslError(f"{what} values must be probabilities in [0, 1], got {low:g}..{high:g}")
    if high == low:
        raise UnetslError(f"{what} is constant ({low:g} everywhere): nothing to segment")
    return np.clip(array.astype(np.float32, copy=False), 0.0, 1.0)


def check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    """(z, y, x) spacing as floats, or a one-line UnetslError."""
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(values)) or min(values) <= 0:
        raise UnetslError(f"spacing must be three positive numbers (z, y, x), got {spacing!r}")
    return values  # type: ignore[return-value]
