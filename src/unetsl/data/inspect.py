"""Figures of the training data: input, label and every target channel of sampled patches.

``build_pages`` samples patches of every data source exactly as training does (the
config's sampling, jitter, rotations and augmentation, seeded) and summarises each source
(files, shapes, label values, class balance). ``draw`` puts patches side by side on a
matplotlib figure, one row per patch: input channels, label, target channels (and weights).
``save_figure`` renders headless (Agg); ``show`` opens a window that pages through patches
and sources with keys and has a z slider.

A cerberus config (several heads, raw bit-packed labels) gets one column per head channel:
the target :class:`unetsl.data.targets.HeadTargets` makes for that patch, as training does.
A head below full resolution is drawn on its own pixel grid (matplotlib ``extent`` in input
pixels), not upsampled, so its pixels cover the image pixels they were made from.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from unetsl.atomic import atomic_path
from unetsl.data.dataset import Patch, PatchDataset
from unetsl.data.dataset_options import DatasetOptions
from unetsl.data.labellers import get_labeller
from unetsl.data.sampling import Region
from unetsl.data.sources import Source
from unetsl.data.targets import (
    check_training_labels,
    head_factors,
    head_target,
    resample_target,
    training_targets,
)
from unetsl.data.volumes import Volume, load_source_volumes
from unetsl.errors import UnetslError

if TYPE_CHECKING:
    from unetsl.config.heads import Head
    from unetsl.config.model_config import Config
    from unetsl.data.targets import HeadTargets

__all__ = ["Page", "Panel", "build_pages", "draw", "panels", "save_figure", "show", "summarise"]

KEYS_HELP = ("right/left: next/previous patches   up/down: next/previous source   "
             "q: quit")


@dataclass
class Page:
    """One data source: its patches (in viewing order) and a text summary."""

    source: Source
    dataset: PatchDataset
    order: np.ndarray  # item indices of ``dataset``, patches with labels first
    summary: list[str]

    def patches(self, start: int, count: int) -> list[Patch]:
        """``count`` patches from position ``start`` (wrapping around)."""
        n = len(self.order)
        return [self.dataset.patch_at(int(self.order[(start + i) % n]))
                for i in range(min(count, n))]

    @property
    def targets(self) -> HeadTargets | None:
        """The per-head target maker of a cerberus config (None: the source's labeller)."""
        return self.dataset.targets  # type: ignore[return-value]


@dataclass
class Panel:
    """One image of a figure row, kept apart from drawing so tests see what is drawn.

    image : (z', y', x') as the data pipeline made it (a head target at its own resolution).
    kind : colour scheme: "input", "label", "binary", "linear" or "weights".
    extent : imshow (left, right, bottom, top) in input-patch pixels; None: the patch grid.
    z_map : for each input slice, the slice of ``image`` made from it (-1: none, e.g. outside
        a crop); None: the same slice.
    """

    title: str
    image: np.ndarray
    kind: str
    extent: tuple[float, float, float, float] | None = None
    z_map: np.ndarray | None = None

    def plane(self, z: int) -> np.ndarray | None:
        """The 2-D image drawn for input slice ``z`` (None when no slice covers it)."""
        k = z if self.z_map is None else int(self.z_map[z])
        return None if k < 0 else self.image[k]


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.3g}%"


def summarise(source: Source, volumes: Sequence[Volume], n_labels: int,
              patch_shape: Sequence[int], n_patches: int,
              targets: HeadTargets | None = None) -> list[str]:
    """Lines describing a source: files, shapes, label values and class balance (per head
    for a cerberus config, whose source labeller only passes the raw label through)."""
    shapes = sorted({tuple(v.image.shape) for v in volumes})
    shown = ", ".join(str(s) for s in shapes[:3]) + (" ..." if len(shapes) > 3 else "")
    files = len({v.pair for v in volumes})
    lines = [f"source {source.index}: {source.describe()}",
             f"{files} image pair(s), {len(volumes)} volume(s) (c, z, y, x) {shown}; "
             f"patch {tuple(int(p) for p in patch_shape)}, {n_patches} patches"]
    labels = np.concatenate([v.label.ravel() for v in volumes])
    if np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_:
        values, counts = np.unique(labels, return_counts=True)
        order = np.argsort(-counts)[:8]
        text = ", ".join(f"{values[i]}: {_percent(counts[i] / labels.size)}" for i in order)
        lines.append("label values " + text + (" ..." if len(values) > 8 else ""))
    else:
        lines.append(f"label values {labels.dtype}, min {labels.min():.4g}, "
                     f"mean {labels.mean():.4g}, max {labels.max():.4g}")
    if targets is not None:
        return lines + _head_summary(targets, volumes, patch_shape)
    totals = np.zeros(n_labels)
    voxels = 0
    for v in volumes:
        target = source.labeller(v.label, n_labels)
        totals += target.reshape(target.shape[0], -1).sum(axis=1)
        voxels += v.label.size
    if source.labeller.name == "linear labels":
        lines.append(f"target mean {totals[0] / voxels:.4g}")
    else:
        lines.append("class balance (voxels per target channel) "
                     + ", ".join(f"{c}: {_percent(t / voxels)}" for c, t in enumerate(totals)))
    return lines


def build_pages(cfg: Config, *, patch_shape: Sequence[int], n_labels: int, seed: int = 0,
                sources: Sequence[int] | None = None) -> list[Page]:
    """One :class:`Page` per data source (or per index in ``sources``), patches as trained.

    n_labels : the channels the sources give (``unetsl.training.setup.training_shapes``).
    When the config's heads make their own targets, patches carry {head name: target} from
    :class:`unetsl.data.targets.HeadTargets`, and the label bits are checked as training
    checks them.
    """

    targets = training_targets(cfg.heads(), cfg["pooling"])
    options = DatasetOptions.from_config(cfg)
    pages = []
    for resolved in options.sources:
        source = resolved.source
        if sources is not None and source.index not in sources:
            continue
        mine = load_source_volumes(source, resolved.normalization.percentiles,
                                   patch_shape=patch_shape, n_labels=n_labels,
                                   unknown=resolved.unknown)
        check_training_labels(mine, targets, n_labels, str(cfg.path))  # as training does
        regions = [Region(k, (0, 0, 0), v.shape) for k, v in enumerate(mine)]
        dataset = PatchDataset(mine, regions, options, patch_shape=patch_shape, n_labels=n_labels,
                               output_names=None, batch_size=1, seed=seed, training=True,
                               targets=targets)
        order = _labelled_first(dataset, seed)
        summary = summarise(source, mine, n_labels, patch_shape, len(order), targets)
        pages.append(Page(source, dataset, order, summary))
    return pages


def _head_summary(targets: HeadTargets, volumes: Sequence[Volume],
                  patch_shape: Sequence[int]) -> list[str]:
    """Per head: where its target comes from and its balance over the whole label images."""

    lines = []
    for head in targets.heads:
        grid = _head_grid(head, targets.pooling, tuple(int(p) for p in patch_shape[1:]))
        full = replace(head, depth=0)  # the same bits and labeller, without resampling
        made = [head_target(v.label, full, targets.pooling) for v in volumes]
        voxels = sum(v.label.size for v in volumes)
        totals = sum(m.reshape(m.shape[0], -1).sum(axis=1) for m in made)
        if get_labeller(head.labeller).reduction == "linear":
            balance = "target mean " + ", ".join(f"{t / voxels:.4g}" for t in totals)
        else:
            balance = "balance " + ", ".join(f"{c}: {_percent(t / voxels)}"
                                             for c, t in enumerate(totals))
        lines.append(f"head {head.name}: bits {head.offset}..{head.offset + head.bits - 1}, "
                     f"{head.labeller}, {grid.note} {tuple(grid.shape)}; {balance}")
    lines.append("head targets as training makes them (cerberus.CerberusTargets); heads below "
                 "full resolution drawn on their own pixel grid (imshow extent), not upsampled")
    return lines


def _labelled_first(dataset: PatchDataset, seed: int) -> np.ndarray:
    """Item indices shuffled, those whose grid window holds labels first."""
    items = dataset.items
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(items))
    pz, py, px = dataset.patch
    labelled = np.array([
        dataset.volumes[dataset.plans[items[i, 0]].region.volume]
        .label[items[i, 1]:items[i, 1] + pz, items[i, 2]:items[i, 2] + py,
               items[i, 3]:items[i, 3] + px].any() for i in order], dtype=bool)
    return np.concatenate([order[labelled], order[~labelled]])


def draw(fig: Any, rows: Sequence[tuple[Page, int, int]], z: int | None = None) -> None:
    """Draw patches on ``fig``: ``rows`` holds (page, first patch, number of patches).

    One figure row per patch: input channel(s), label, target channel(s), weights; each
    source's block starts with its summary. ``z`` is the slice shown (default: the middle).
    """
    fig.clear()
    blocks = [(page, [(patch, panels(page, patch)) for patch in page.patches(start, count)])
              for page, start, count in rows]
    n_cols = max((len(shown) for _, made in blocks for _, shown in made), default=1)
    n_rows = max(1, sum(len(made) for _, made in blocks))
    cerberus = any(page.targets is not None for page, _ in blocks)  # two-line titles
    header = (0.25 + 0.15 * cerberus
              + 0.15 * sum(len(page.summary) for page, _ in blocks))  # inches
    fig.set_size_inches(max(8.0, 2.1 * n_cols), 2.1 * n_rows + header)
    top = 1 - header / fig.get_size_inches()[1]
    grid = fig.add_gridspec(n_rows, n_cols, left=0.07, right=0.99, bottom=0.01, top=top,
                            hspace=0.45 if cerberus else 0.35, wspace=0.08)
    row = 0
    text = []
    for page, made in blocks:
        text += page.summary
        for k, (patch, shown) in enumerate(made):
            zs, ys, xs = patch.x.shape[1:]
            check_slice(z, zs)
            s = zs // 2 if z is None else z
            for col, panel in enumerate(shown):
                ax = fig.add_subplot(grid[row, col])
                _show(ax, panel, s, (ys, xs))
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0:
                    ax.set_title(panel.title, fontsize=9 if "\n" not in panel.title else 8)
                if col == 0:
                    volume = page.dataset.volumes[patch.volume]
                    angle = f", {patch.transform.angle:g} deg" if patch.transform.angle else ""
                    ax.set_ylabel(f"s{page.source.index} {volume.pair.image.name}\n"
                                  f"t{volume.frame} at {patch.origin}{angle}\nz {s}/{zs}",
                                  fontsize=7)
            row += 1
    fig.text(0.01, 0.995, "\n".join(text), va="top", ha="left", fontsize=8, family="monospace")


def check_slice(z: int | None, depth: int) -> None:
    """Refuse a slice outside the patch: showing the nearest one instead looked like the
    slice asked for."""
    if z is not None and not 0 <= z < depth:
        raise UnetslError(f"slice {z}: the patches have {depth} slice(s), 0 to {depth - 1}")


def panels(page: Page, patch: Patch) -> list[Panel]:
    """What one figure row shows: input channel(s), label, target channel(s), weights.

    Target panels hold ``patch.target`` itself (for a cerberus config one panel per head
    channel, at the head's resolution, titled "<head> <channel>").
    """
    c = page.dataset.channels
    shown = [Panel(f"input {k}" if c > 1 else "input", channel, "input")
             for k, channel in enumerate(patch.x)]
    targets = page.targets
    if targets is not None:
        shown.append(Panel("label (raw bits)", patch.label, "label"))
        shown += _head_panels(targets, patch)
    else:
        linear = page.source.labeller.name == "linear labels"
        shown.append(Panel("label", patch.label, "linear" if linear else "label"))
        target = np.asarray(patch.target)
        if linear:
            shown += [Panel("target (linear)", t, "linear") for t in target]
        else:
            shown += [Panel(f"target {k}", t, "binary") for k, t in enumerate(target)]
    if any(v.weights is not None for v in page.dataset.volumes):
        weights = patch.weights if patch.weights is not None else np.ones_like(patch.x[0])
        shown.append(Panel("weights", weights, "weights"))
    return shown


@dataclass(frozen=True)
class _Grid:
    """Where a head's target voxels sit in the input patch."""

    shape: tuple[int, int, int]  # (z', y', x') of the head target
    extent: tuple[float, float, float, float] | None  # imshow extent; None: the patch grid
    z_map: np.ndarray | None  # input slice -> head slice (-1: none)
    note: str  # e.g. "1/2 res, max pool"


def _head_grid(head: Head, pooling: Sequence[int], patch: tuple[int, int, int]) -> _Grid:
    """The head's voxel footprints, found by resampling the patch's own voxel coordinates
    with the head's resampler (so the figure follows ``cerberus.resample_target``)."""

    factors = head_factors(pooling, head.depth, z=patch[0])
    if factors == (1, 1, 1):
        return _Grid(patch, None, None, "full res")
    coords = np.indices(patch)
    crop = head.resampler == "crop"
    first = resample_target(coords, "crop" if crop else "min pool", factors)
    last = resample_target(coords, "crop" if crop else "max pool", factors)
    extent = (float(first[2, 0, 0, 0]) - 0.5, float(last[2, 0, 0, -1]) + 0.5,
              float(last[1, 0, -1, 0]) + 0.5, float(first[1, 0, 0, 0]) - 0.5)
    z_map = np.full(patch[0], -1, dtype=np.int64)
    for k, (lo, hi) in enumerate(zip(first[0, :, 0, 0], last[0, :, 0, 0], strict=True)):
        z_map[lo:hi + 1] = k
    shape = (int(first.shape[1]), int(first.shape[2]), int(first.shape[3]))
    fz, fy, fx = factors
    if crop:
        note = f"centre {shape[1]}x{shape[2]} crop, 1:1"
    else:
        scale = f"1/{fy}" if fy == fx else f"1/{fy} y 1/{fx} x"
        note = f"{scale} res, {head.resampler}" + (f", z 1/{fz}" if fz > 1 else "")
    return _Grid(shape, extent, z_map, note)


def _head_panels(targets: HeadTargets, patch: Patch) -> list[Panel]:
    """One panel per channel of every head's target in ``patch`` (the dict training uses)."""

    made = patch.target
    assert isinstance(made, dict)
    shown = []
    for head in targets.heads:
        target = made[head.name]
        grid = _head_grid(head, targets.pooling, tuple(patch.label.shape))
        kind = "linear" if get_labeller(head.labeller).reduction == "linear" else "binary"
        for k, channel in enumerate(target):
            name = head.name if len(target) == 1 else f"{head.name} {k}"
            shown.append(Panel(f"{name}\n{grid.note}", channel, kind, grid.extent, grid.z_map))
    return shown


def _show(ax: Any, panel: Panel, z: int, patch_yx: tuple[int, int]) -> None:
    """Draw ``panel`` at input slice ``z``; panels with an extent keep the patch's axes, so
    a half-resolution head lines up with the input beside it."""
    image = panel.plane(z)
    if panel.extent is not None:
        ax.set_xlim(-0.5, patch_yx[1] - 0.5)
        ax.set_ylim(patch_yx[0] - 0.5, -0.5)
        ax.set_facecolor("0.85")  # what the head does not cover (a crop's margin)
    if image is None:
        ax.text(0.5, 0.5, f"slice {z}\nnot in target", ha="center", va="center",
                fontsize=8, transform=ax.transAxes)
        return
    options: dict[str, Any] = {"interpolation": "nearest"}
    if panel.extent is not None:
        options["extent"] = panel.extent
    kind = panel.kind
    if kind == "input":
        lo, hi = np.percentile(image, [0.5, 99.5])
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, **options)
    elif kind == "label":
        few = image.max() < 10  # label values as distinct colours
        ax.imshow(image.astype(np.float64), cmap="tab10" if few else "viridis", vmin=0,
                  vmax=9 if few else None, **options)
    elif kind == "binary":
        ax.imshow(image, cmap="magma", vmin=0, vmax=1, **options)
    else:
        ax.imshow(image, cmap="viridis", **options)


def save_figure(pages: Sequence[Page], path: str | os.PathLike, *, patches: int = 3,
                z: int | None = None, dpi: int = 100) -> None:
    """Render ``patches`` patches of every page into one PNG (or any matplotlib format)."""
    from matplotlib.figure import Figure


    fig = Figure()
    draw(fig, [(page, 0, patches) for page in pages], z=z)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)


def show(pages: Sequence[Page], *, patches: int = 3, z: int | None = None) -> None:
    """A window paging through patches (left/right) and sources (up/down), with a z slider
    that starts at slice ``z`` (default: the middle)."""
    import matplotlib.pyplot as plt
    from matplotlib.widgets import Slider

    state = {"page": 0, "start": 0, "z": z}
    fig = plt.figure()
    fig.canvas.manager.set_window_title("inspect data sources")
    holder: dict[str, Any] = {}

    def redraw() -> None:
        page = pages[state["page"]]
        draw(fig, [(page, state["start"], patches)], z=state["z"])
        fig.subplots_adjust(bottom=0.08)
        depth = page.dataset.patch[0]
        fig.text(0.5, 0.005, KEYS_HELP, ha="center", va="bottom", fontsize=8)
        if depth > 1:
            ax = fig.add_axes((0.25, 0.03, 0.5, 0.02))
            value = depth // 2 if state["z"] is None else state["z"]
            slider = Slider(ax, "slice", 0, depth - 1, valinit=value, valstep=1)
            slider.on_changed(lambda v: (state.update(z=int(v)), redraw()))
            holder["slider"] = slider  # keep a reference, or the slider stops responding
        fig.canvas.draw_idle()

    def on_key(event: Any) -> None:
        page = pages[state["page"]]
        if event.key in ("right", "n", " "):
            state["start"] = (state["start"] + patches) % max(1, len(page.order))
        elif event.key in ("left", "p"):
            state["start"] = (state["start"] - patches) % max(1, len(page.order))
        elif event.key in ("up", "pagedown", "N"):
            state.update(page=(state["page"] + 1) % len(pages), start=0)
        elif event.key in ("down", "pageup", "P"):
            state.update(page=(state["page"] - 1) % len(pages), start=0)
        else:
            return
        redraw()

    fig.canvas.mpl_connect("key_press_event", on_key)
    redraw()
    plt.show()
