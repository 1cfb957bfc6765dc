"""Synthetic fluorescent epithelium with exact ground truth: examples and tests need no download.

The tissue is a perturbed Voronoi tessellation: seeds on a jittered hexagonal lattice, pixels
assigned to the nearest seed after a smooth random warp (curvy membranes). The label is the
1-pixel skeleton of the cell boundaries (1 = membrane) with the pixels around each junction
of three or more cells marked as vertices (3 = membrane bit + vertex bit), the multiclass
bit-mask convention of the original ActiveUnetSegmentation. The image renders the membrane
with a finite width, a dim cytoplasm, a Gaussian point spread function (anisotropic in z),
uneven illumination, bleaching/depth attenuation, Poisson shot noise, camera offset and
Gaussian read noise, stored as uint16 like a camera frame.

Two kinds of sample: a 2D time series (t, y, x) whose seeds drift slowly between frames, and a
3D stack (z, y, x) of columnar cells whose xy tessellation changes slowly with z (the lateral
membranes are surfaces; each slice's skeleton is the label of that slice).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from skimage.morphology import skeletonize

from unetsl.atomic import atomic_path
from unetsl.errors import UnetslError

#: Label values (multiclass bit mask: bit 0 = membrane, bit 1 = vertex).
MEMBRANE = 1
VERTEX = 3

#: Physical pixel sizes written to the TIFF metadata, in microns.
PIXEL_SIZE_UM = 0.2
Z_SPACING_UM = 0.5
FRAME_INTERVAL_S = 60.0

#: Largest distance a cerberus label carries (6 bits, bits 2-7; :func:`pack_cerberus_labels`).
CERBERUS_MAX_DISTANCE = 63


@dataclass
class Sample:
    """One synthetic image with its targets, all of the same shape.

    image : (t, y, x) or (z, y, x) uint16 camera counts.
    labels : same shape, uint8 multiclass bit mask (0 background, 1 membrane, 3 vertex).
    distance : same shape, uint8 Euclidean distance to the nearest label pixel, per 2D plane.
    cells : same shape, uint16 true cell ids (the tessellation, membranes included); a cell
        keeps its id over frames (2d) or slices (3d), so it is the truth for cell instances
        and tracking. Ids are renumbered 1..n in order of first appearance.
    """

    image: np.ndarray
    labels: np.ndarray
    distance: np.ndarray
    cells: np.ndarray | None = None


@dataclass(frozen=True)
class Imaging:
    """Tissue and microscope parameters; each one is a ``**noise`` keyword of the generators.

    Defaults give a moderately noisy confocal-like membrane marker (signal-to-noise ~8 on
    membranes), so that a network trained on it has to denoise, not just threshold.
    """

    photons: float = 120.0  # expected photons at the brightest in-focus membrane
    cytoplasm: float = 0.12  # cytoplasm brightness relative to membrane
    ambient: float = 6.0  # photons of out-of-focus/autofluorescent background per pixel
    offset: float = 100.0  # camera offset (ADU)
    gain: float = 1.0  # ADU per photon
    read_noise: float = 4.0  # Gaussian read noise (ADU, standard deviation)
    illumination: float = 0.3  # relative amplitude of the smooth illumination gain field
    membrane_width: float = 2.5  # membrane width in pixels before blurring
    membrane_variation: float = 0.3  # relative brightness variation along membranes
    vertex_boost: float = 0.3  # extra brightness at junctions (junctional proteins)
    vesicles: float = 1.0  # bright intracellular puncta per cell on average
    psf_sigma: float = 1.0  # PSF standard deviation in y/x (pixels)
    psf_sigma_z: float = 1.5  # PSF standard deviation in z (slices, stacks only)
    warp: float = 0.12  # membrane curviness, as a fraction of the cell diameter
    jitter: float = 0.3  # seed jitter on the hexagonal lattice, fraction of cell diameter
    drift: float | None = None  # seed motion per frame/slice in pixels (None: kind default)
    bleaching: float = 0.02  # fraction of intensity lost per frame / attenuation per slice
    max_distance: int = 255  # the distance target is clipped here

    @classmethod
    def from_kwargs(cls, noise: dict) -> Imaging:
        """Build from keyword arguments; an unknown name is a user error, not a silent no-op."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in noise:
            if key not in known:
                raise UnetslError(
                    f"unknown synthetic image parameter {key!r}; known: {', '.join(sorted(known))}"
                )
        params = cls(**noise)
        if params.photons <= 0 or params.membrane_width <= 0:
            raise UnetslError("synthetic image parameters photons and membrane_width must be > 0")
        if min(params.psf_sigma, params.psf_sigma_z, params.read_noise, params.ambient) < 0:
            raise UnetslError("synthetic psf_sigma, psf_sigma_z, read_noise, ambient must be >= 0")
        if not 1 <= params.max_distance <= 255:
            raise UnetslError(f"max_distance {params.max_distance} must be in 1..255 (uint8)")
        return params


def epithelium_time_series(
    shape: tuple[int, int, int] = (5, 128, 128),
    cell_diameter: float = 16.0,
    seed: int = 0,
    **noise: float,
) -> Sample:
    """A 2D time series (t, y, x) of an epithelium whose cells move slowly between frames.

    Consecutive frames are similar but not identical, like a live-imaging movie, so that
    models using a few consecutive frames as z (the original's 2D time-series swap) see
    realistic temporal context. ``noise`` overrides fields of :class:`Imaging`.
    """
    params = Imaging.from_kwargs(noise)
    n_t, height, width = _check_shape(shape, "shape (t, y, x)")
    drift = 0.5 if params.drift is None else params.drift
    rng = np.random.default_rng(seed)
    regions = _tessellation(rng, n_t, height, width, cell_diameter, params, drift, smooth_t=2.0)
    labels, skeleton_distance = _skeleton_labels(regions)
    signal = _render_signal(rng, regions, labels, skeleton_distance, cell_diameter, params)
    signal = ndi.gaussian_filter(signal, (0, params.psf_sigma, params.psf_sigma), mode="reflect")
    attenuation = (1.0 - params.bleaching) ** np.arange(n_t, dtype=np.float64)
    image = _camera(rng, signal, attenuation, cell_diameter, params)
    return Sample(image, labels, _distance(skeleton_distance, params.max_distance),
                  _renumber(regions))


def epithelium_stack(
    shape: tuple[int, int, int] = (32, 96, 96),
    cell_diameter: float = 16.0,
    seed: int = 0,
    **noise: float,
) -> Sample:
    """A 3D stack (z, y, x) of columnar epithelial cells; the xy tessellation changes slowly with z.

    The lateral membranes are surfaces through the stack, slightly tilted and curved; the label
    of each slice is that slice's membrane skeleton. The point spread function is wider in z
    than in y/x, and deeper slices are dimmer (scattering). ``noise`` overrides :class:`Imaging`.
    """
    params = Imaging.from_kwargs(noise)
    n_z, height, width = _check_shape(shape, "shape (z, y, x)")
    drift = 0.12 if params.drift is None else params.drift
    rng = np.random.default_rng(seed)
    regions = _tessellation(rng, n_z, height, width, cell_diameter, params, drift, smooth_t=6.0)
    labels, skeleton_distance = _skeleton_labels(regions)
    signal = _render_signal(rng, regions, labels, skeleton_distance, cell_diameter, params)
    sigma = (params.psf_sigma_z, params.psf_sigma, params.psf_sigma)
    signal = ndi.gaussian_filter(signal, sigma, mode="reflect")
    attenuation = np.exp(-params.bleaching * np.arange(n_z, dtype=np.float64))
    image = _camera(rng, signal, attenuation, cell_diameter, params)
    return Sample(image, labels, _distance(skeleton_distance, params.max_distance),
                  _renumber(regions))


def write_dataset(
    folder: str | os.PathLike,
    kind: str = "2d",
    n_images: int = 4,
    shape: tuple[int, int, int] | None = None,
    seed: int = 0,
    distance: bool = True,
    cerberus: bool = False,
) -> dict[str, list[Path]]:
    """Write a paired-directory training set: ``images/``, ``labels/`` (and ``labels-dist/``,
    ``labels-packed/``).

    Files in the folders share their names (``epi-000.tif`` ...), which is how a paired
    directory data source matches image and label. ``kind`` "2d" writes TYX time series,
    "3d" ZYX stacks. Image i uses seed ``seed + i``. ``cerberus`` also writes the bit-packed
    labels of a cerberus model (:func:`pack_cerberus_labels`). Returns {"images": [...],
    "labels": [...], "labels-dist": [...], "labels-packed": [...]} (the last two only with
    ``distance`` / ``cerberus``).
    """
    if kind not in ("2d", "3d"):
        raise UnetslError(f"kind {kind!r} must be '2d' or '3d'")
    if n_images < 1:
        raise UnetslError(f"n_images {n_images} must be >= 1")
    root = Path(folder)
    written: dict[str, list[Path]] = {"images": [], "labels": []}
    if distance:
        written["labels-dist"] = []
    if cerberus:
        written["labels-packed"] = []
    for i in range(n_images):
        sample = make_sample(kind, shape, seed + i)
        paths = write_sample(sample, root, f"epi-{i:03d}.tif", kind, distance, cerberus)
        for key, path in paths.items():
            written[key].append(path)
    return written


def make_sample(kind: str, shape: tuple[int, int, int] | None, seed: int) -> Sample:
    """One sample of ``kind`` "2d" (time series) or "3d" (stack); default shape when None."""
    if kind == "2d":
        return epithelium_time_series(shape or (5, 128, 128), seed=seed)
    if kind == "3d":
        return epithelium_stack(shape or (32, 96, 96), seed=seed)
    raise UnetslError(f"kind {kind!r} must be '2d' or '3d'")


def write_sample(
    sample: Sample,
    root: str | os.PathLike,
    name: str,
    kind: str = "2d",
    distance: bool = True,
    cerberus: bool = False,
) -> dict[str, Path]:
    """Write ``sample`` as root/images/name, root/labels/name (and root/labels-dist/name,
    root/labels-packed/name), the folders of :func:`sample_targets`."""
    root = Path(root)
    arrays = {"images": sample.image, **sample_targets(sample, distance, cerberus)}
    paths = {}
    for sub, array in arrays.items():
        path = root / sub / name
        write_imagej(path, array, kind)
        paths[sub] = path
    return paths


def write_imagej(path: str | os.PathLike, array: np.ndarray, kind: str = "2d") -> None:
    """Write a (t, y, x) ("2d") or (z, y, x) ("3d") array atomically as an ImageJ hyperstack.

    2D time series are stored as frames (axes TYX), like Fiji's 2D time series; stacks as
    slices (ZYX) with the z spacing. Pixel size is in microns so that Fiji shows real units.
    """

    axes = "TYX" if kind == "2d" else "ZYX"
    metadata: dict[str, object] = {"axes": axes, "unit": "micron"}
    if kind == "2d":
        metadata["finterval"] = FRAME_INTERVAL_S
    else:
        metadata["spacing"] = Z_SPACING_UM
    resolution = (1.0 / PIXEL_SIZE_UM, 1.0 / PIXEL_SIZE_UM)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, imagej=True, resolution=resolution, metadata=metadata)


def pack_cerberus_labels(labels: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Bit-pack multiclass labels and a distance map into one uint8 label image for cerberus.

    A cerberus model reads all its heads' targets from one "linear labels" image, each head
    its own bit field; with the original's default heads bits 0-1 are membrane/vertex and
    bits 2-7 a distance 0..63. So a pixel is ``(min(rint(distance), 63) << 2) | labels``:
    label 1 at distance 5 gives 21. Labels must be 0..3 (two bits); distances (any real or
    integer dtype, e.g. :attr:`Sample.distance`) are rounded and clipped to 0..63.
    """
    labels = np.asarray(labels)
    distance = np.asarray(distance)
    if labels.shape != distance.shape:
        raise UnetslError(f"cerberus labels {labels.shape} and distance {distance.shape} "
                          "must have the same shape")
    if labels.dtype != np.bool_ and not np.issubdtype(labels.dtype, np.integer):
        raise UnetslError(f"cerberus labels must be integers 0..3, got dtype {labels.dtype}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > 3):
        raise UnetslError(f"cerberus labels must be 0..3 (bits 0-1), got "
                          f"{int(labels.min())}..{int(labels.max())}")
    steps = np.clip(np.rint(distance.astype(np.float64)), 0, CERBERUS_MAX_DISTANCE)
    return ((steps.astype(np.uint8) << 2) | labels.astype(np.uint8)).astype(np.uint8)


def sample_targets(sample: Sample, distance: bool = True, cerberus: bool = False
                   ) -> dict[str, np.ndarray]:
    """The label images written for ``sample``, by folder name: "labels" (multiclass),
    "labels-dist" (with ``distance``) and "labels-packed" (with ``cerberus``,
    :func:`pack_cerberus_labels`); one place, so training and held-out sets agree."""
    targets = {"labels": sample.labels}
    if distance:
        targets["labels-dist"] = sample.distance
    if cerberus:
        targets["labels-packed"] = pack_cerberus_labels(sample.labels, sample.distance)
    return targets


# --------------------------------------------------------------------------- internals


def _renumber(regions: np.ndarray) -> np.ndarray:
    """Cell ids 1..n (uint16) in order of first appearance, the same cell the same id."""
    ids, first, inverse = np.unique(regions, return_index=True, return_inverse=True)
    rank = np.empty(ids.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(1, ids.size + 1)
    return rank[inverse].reshape(regions.shape).astype(np.uint16)


def _check_shape(shape: tuple[int, ...], what: str) -> tuple[int, int, int]:
    if len(shape) != 3 or any(int(s) != s or s < 1 for s in shape):
        raise UnetslError(f"{what} must be 3 positive integers, got {tuple(shape)}")
    n, height, width = (int(s) for s in shape)
    if height < 8 or width < 8:
        raise UnetslError(f"{what} {tuple(shape)}: y and x must be at least 8")
    return n, height, width


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / max(float(field.std()), 1e-12)


def _tessellation(
    rng: np.random.Generator,
    n_planes: int,
    height: int,
    width: int,
    diameter: float,
    params: Imaging,
    drift: float,
    smooth_t: float,
) -> np.ndarray:
    """Voronoi cell ids (planes, y, x) from slowly moving seeds, queried through a smooth warp."""
    if diameter < 4:
        raise UnetslError(f"cell_diameter {diameter} must be >= 4 pixels")
    margin = 2.0 * diameter + drift * n_planes
    row_step = diameter * np.sqrt(3.0) / 2.0
    rows = np.arange(-margin, height + margin, row_step)
    cols = np.arange(-margin, width + margin, diameter)
    yy, xx = np.meshgrid(rows, cols, indexing="ij")
    xx = xx + (np.arange(len(rows))[:, None] % 2) * diameter / 2.0
    seeds = np.stack([yy.ravel(), xx.ravel()], axis=1)
    seeds += rng.uniform(-0.5, 0.5, size=2) * diameter
    seeds += rng.uniform(-1.0, 1.0, size=seeds.shape) * params.jitter * diameter

    # Persistent random walk: each seed keeps most of its velocity, so motion is smooth.
    velocity = rng.standard_normal(seeds.shape) * drift
    warp_sigma = (smooth_t, 0.5 * diameter, 0.5 * diameter)
    amplitude = params.warp * diameter
    warp_y = _smooth_noise(rng, (n_planes, height, width), warp_sigma) * amplitude
    warp_x = _smooth_noise(rng, (n_planes, height, width), warp_sigma) * amplitude
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float64)

    regions = np.empty((n_planes, height, width), dtype=np.int32)
    for t in range(n_planes):
        if t:
            velocity = 0.8 * velocity + 0.2 * rng.standard_normal(seeds.shape) * drift
            seeds = seeds + velocity
        coords = np.stack([(grid_y + warp_y[t]).ravel(), (grid_x + warp_x[t]).ravel()], axis=1)
        _, nearest = cKDTree(seeds).query(coords)
        regions[t] = nearest.reshape(height, width) + 1
    return regions


def _distinct_neighbours(cells: np.ndarray, radius: int) -> np.ndarray:
    """Number of distinct nonzero ids in the (2r+1)^2 window around each pixel of a 2D image."""
    padded = np.pad(cells, radius)
    height, width = cells.shape
    size = 2 * radius + 1
    windows = [
        padded[dy : dy + height, dx : dx + width] for dy in range(size) for dx in range(size)
    ]
    stacked = np.sort(np.stack(windows), axis=0)
    new = np.concatenate([stacked[:1] > 0, (stacked[1:] != stacked[:-1]) & (stacked[1:] > 0)])
    return new.sum(axis=0)


def _plane_labels(regions: np.ndarray) -> np.ndarray:
    """Skeleton (1) and vertex (3) labels of one 2D Voronoi plane."""
    diff = np.zeros(regions.shape, dtype=bool)
    diff[:-1] |= regions[:-1] != regions[1:]
    diff[1:] |= regions[:-1] != regions[1:]
    diff[:, :-1] |= regions[:, :-1] != regions[:, 1:]
    diff[:, 1:] |= regions[:, :-1] != regions[:, 1:]
    skeleton = skeletonize(diff)
    # Cells after thinning: an 8-connected 1-pixel line separates 4-connected regions.
    cells, _ = ndi.label(~skeleton)
    labels = skeleton.astype(np.uint8) * MEMBRANE
    # Junction pixels touch 3+ cells in their 3x3 window. Where the thinning left a junction
    # whose arms hide a cell from the 3x3 window, the 5x5 window still sees it: such a cluster
    # gets one centre, its candidate pixel closest to the cluster centroid.
    centres = skeleton & (_distinct_neighbours(cells, 1) >= 3)
    candidates = skeleton & (_distinct_neighbours(cells, 2) >= 3)
    clusters, n_clusters = ndi.label(candidates, structure=np.ones((3, 3)))
    found = np.zeros(n_clusters + 1, dtype=bool)
    found[clusters[centres]] = True
    ys, xs = np.nonzero(candidates & ~found[clusters])
    if len(ys):
        ids = clusters[ys, xs]
        count = np.bincount(ids, minlength=n_clusters + 1)
        cy = np.bincount(ids, ys, minlength=n_clusters + 1) / np.maximum(count, 1)
        cx = np.bincount(ids, xs, minlength=n_clusters + 1) / np.maximum(count, 1)
        gap = (ys - cy[ids]) ** 2 + (xs - cx[ids]) ** 2
        order = np.lexsort((gap, ids))
        first = order[np.r_[True, ids[order][1:] != ids[order][:-1]]]
        centres[ys[first], xs[first]] = True
    near = ndi.binary_dilation(centres, structure=np.ones((3, 3), dtype=bool))
    labels[near & skeleton] = VERTEX
    return labels


def _skeleton_labels(regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-plane labels (planes, y, x) uint8 and the float distance to the nearest label pixel."""
    labels = np.stack([_plane_labels(plane) for plane in regions])
    distance = np.stack([ndi.distance_transform_edt(plane == 0) for plane in labels])
    return labels, distance


def _render_signal(
    rng: np.random.Generator,
    regions: np.ndarray,
    labels: np.ndarray,
    skeleton_distance: np.ndarray,
    diameter: float,
    params: Imaging,
) -> np.ndarray:
    """Noise-free fluorophore density (planes, y, x), membrane peak ~1, before the PSF."""
    shape = regions.shape
    half = params.membrane_width / 2.0
    membrane = np.clip(half + 0.5 - skeleton_distance, 0.0, 1.0)
    # Brightness varies along membranes (coarse) and is punctate (fine), like tagged E-cadherin.
    coarse = _smooth_noise(rng, shape, (3.0, diameter / 3.0, diameter / 3.0))
    fine = _smooth_noise(rng, shape, (1.0, 1.0, 1.0))
    modulation = 1.0 + params.membrane_variation * (0.7 * coarse + 0.5 * fine)
    membrane *= np.clip(modulation, 0.2, None)
    vertex = ndi.gaussian_filter((labels == VERTEX).astype(np.float64), (0, 1.0, 1.0))
    membrane += params.vertex_boost * vertex / max(float(vertex.max()), 1e-12)

    n_cells = int(regions.max()) + 1
    cell_level = rng.uniform(0.5, 1.5, size=n_cells) * params.cytoplasm
    cytoplasm = cell_level[regions] * (1.0 - np.clip(membrane, 0.0, 1.0))

    signal = membrane + cytoplasm
    if params.vesicles > 0:
        cell_area = diameter * diameter * np.sqrt(3.0) / 2.0
        spots = (rng.random(shape) < params.vesicles / cell_area) * rng.uniform(0.3, 0.9, shape)
        # A unit spot blurred with sigma 0.7 peaks at 1 / (2 pi 0.7^2): rescale to peak 1.
        signal += ndi.gaussian_filter(spots, (0, 0.7, 0.7)) * (2.0 * np.pi * 0.49)
    return signal


def _camera(
    rng: np.random.Generator,
    signal: np.ndarray,
    attenuation: np.ndarray,
    diameter: float,
    params: Imaging,
) -> np.ndarray:
    """Blurred fluorophore density to uint16 camera counts: gain field, shot and read noise."""
    _, height, width = signal.shape
    # Illumination: an off-centre vignette times low-frequency wobble, the same for every plane.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    cy, cx = rng.uniform(0.2, 0.8, size=2) * (height, width)
    radius2 = ((yy - cy) / height) ** 2 + ((xx - cx) / width) ** 2
    wobble = _smooth_noise(rng, (height, width), max(height, width) / 4.0)
    field = 1.0 - params.illumination * (radius2 / max(float(radius2.max()), 1e-12))
    field *= 1.0 + 0.5 * params.illumination * wobble
    field = np.clip(field, 0.1, None)

    expected = params.photons * signal * field[None] * attenuation[:, None, None]
    expected += params.ambient
    counts = rng.poisson(np.clip(expected, 0.0, None)).astype(np.float64) * params.gain
    counts += params.offset + rng.standard_normal(signal.shape) * params.read_noise
    return np.clip(np.rint(counts), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def _distance(skeleton_distance: np.ndarray, max_distance: int) -> np.ndarray:
    return np.clip(np.rint(skeleton_distance), 0, max_distance).astype(np.uint8)
