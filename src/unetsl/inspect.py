"""Figures of the training data: input, label and every target channel of sampled patches.

``build_pages`` samples patches of every data source exactly as training does (the
config's sampling, jitter, rotations and augmentation, seeded) and summarises each source
(files, shapes, label values, class balance). ``draw`` puts patches side by side on a
matplotlib figure, one row per patch: input channels, label, target channels (and weights).
``save_figure`` renders headless (Agg); ``show`` opens a window that pages through patches
and sources with keys and has a z slider.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unetsl.data import Patch, PatchDataset
from unetsl.sampling import Region
from unetsl.sources import Source, Volume, load_source_volumes, parse_sources

__all__ = ["Page", "build_pages", "draw", "save_figure", "show", "summarise"]

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


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.3g}%"


def summarise(source: Source, volumes: Sequence[Volume], n_labels: int,
              patch_shape: Sequence[int], n_patches: int) -> list[str]:
    """Lines describing a source: files, shapes, label values and class balance."""
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


def build_pages(cfg: Any, *, patch_shape: Sequence[int], n_labels: int, seed: int = 0,
                sources: Sequence[int] | None = None) -> list[Page]:
    """One :class:`Page` per data source (or per index in ``sources``), patches as trained."""
    pages = []
    for source in parse_sources(cfg):
        if sources is not None and source.index not in sources:
            continue
        mine = load_source_volumes(source, cfg, patch_shape=patch_shape, n_labels=n_labels)
        regions = [Region(k, (0, 0, 0), v.shape) for k, v in enumerate(mine)]
        dataset = PatchDataset(mine, regions, cfg, patch_shape=patch_shape, n_labels=n_labels,
                               output_names=None, batch_size=1, seed=seed, training=True)
        order = _labelled_first(dataset, seed)
        summary = summarise(source, mine, n_labels, patch_shape, len(order))
        pages.append(Page(source, dataset, order, summary))
    return pages


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


def _columns(page: Page, n_labels: int) -> list[str]:
    c = page.dataset.channels
    names = [f"input {k}" if c > 1 else "input" for k in range(c)] + ["label"]
    if page.source.labeller.name == "linear labels":
        names.append("target (linear)")
    else:
        names += [f"target {k}" for k in range(n_labels)]
    if any(v.weights is not None for v in page.dataset.volumes):
        names.append("weights")
    return names


def draw(fig: Any, rows: Sequence[tuple[Page, int, int]], z: int | None = None) -> None:
    """Draw patches on ``fig``: ``rows`` holds (page, first patch, number of patches).

    One figure row per patch: input channel(s), label, target channel(s), weights; each
    source's block starts with its summary. ``z`` is the slice shown (default: the middle).
    """
    fig.clear()
    blocks = [(page, page.patches(start, count)) for page, start, count in rows]
    n_cols = max(len(_columns(page, page.dataset.n_labels)) for page, _ in blocks)
    n_rows = sum(len(patches) for _, patches in blocks)
    header = 0.25 + 0.15 * sum(len(page.summary) for page, _ in blocks)  # inches
    fig.set_size_inches(max(8.0, 2.1 * n_cols), 2.1 * n_rows + header)
    top = 1 - header / fig.get_size_inches()[1]
    grid = fig.add_gridspec(n_rows, n_cols, left=0.07, right=0.99, bottom=0.01, top=top,
                            hspace=0.35, wspace=0.08)
    row = 0
    text = []
    for page, patches in blocks:
        text += page.summary
        columns = _columns(page, page.dataset.n_labels)
        for k, patch in enumerate(patches):
            panels = _panels(page, patch)
            zs = patch.x.shape[1]
            s = zs // 2 if z is None else int(np.clip(z, 0, zs - 1))
            for col, (name, (image, kind)) in enumerate(zip(columns, panels, strict=True)):
                ax = fig.add_subplot(grid[row, col])
                _show(ax, image[s], kind)
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0:
                    ax.set_title(name, fontsize=9)
                if col == 0:
                    volume = page.dataset.volumes[patch.volume]
                    angle = f", {patch.transform.angle:g} deg" if patch.transform.angle else ""
                    ax.set_ylabel(f"s{page.source.index} {volume.pair.image.name}\n"
                                  f"t{volume.frame} at {patch.origin}{angle}\nz {s}/{zs}",
                                  fontsize=7)
            row += 1
    fig.text(0.01, 0.995, "\n".join(text), va="top", ha="left", fontsize=8, family="monospace")


def _panels(page: Page, patch: Patch) -> list[tuple[np.ndarray, str]]:
    panels = [(channel, "input") for channel in patch.x]
    linear = page.source.labeller.name == "linear labels"
    panels.append((patch.label, "linear" if linear else "label"))
    panels += [(t, "linear" if linear else "binary") for t in patch.target]
    if any(v.weights is not None for v in page.dataset.volumes):
        weights = patch.weights if patch.weights is not None else np.ones_like(patch.x[0])
        panels.append((weights, "weights"))
    return panels


def _show(ax: Any, image: np.ndarray, kind: str) -> None:
    if kind == "input":
        lo, hi = np.percentile(image, [0.5, 99.5])
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1,
                  interpolation="nearest")
    elif kind == "label":
        few = image.max() < 10  # label values as distinct colours
        ax.imshow(image.astype(np.float64), cmap="tab10" if few else "viridis", vmin=0,
                  vmax=9 if few else None, interpolation="nearest")
    elif kind == "binary":
        ax.imshow(image, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(image, cmap="viridis", interpolation="nearest")


def save_figure(pages: Sequence[Page], path: str | os.PathLike, *, patches: int = 3,
                z: int | None = None, dpi: int = 100) -> None:
    """Render ``patches`` patches of every page into one PNG (or any matplotlib format)."""
    from matplotlib.figure import Figure

    from unetsl.atomic import atomic_path

    fig = Figure()
    draw(fig, [(page, 0, patches) for page in pages], z=z)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)


def show(pages: Sequence[Page], *, patches: int = 3) -> None:
    """A window paging through patches (left/right) and sources (up/down), with a z slider."""
    import matplotlib.pyplot as plt
    from matplotlib.widgets import Slider

    state = {"page": 0, "start": 0, "z": None}
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
