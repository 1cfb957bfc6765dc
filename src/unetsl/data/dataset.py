"""Batches of (input, target) patches for Keras: ``make_datasets`` and ``PatchDataset``.

``make_datasets(options, patch_shape=..., n_labels=..., output_names=..., batch_size=...)``
loads every data source of ``options`` (a :class:`unetsl.data.dataset_options.DatasetOptions`,
what the config says, read once), splits the data into training and validation regions
(:mod:`unetsl.data.sampling`) and returns two ``keras.utils.PyDataset`` objects. A batch is
``(x, y)`` or, when a source is weighted, ``(x, y, sample_weight)``:

- x : float32 (b, z, y, x, c), channels-last;
- y : float32 (b, z, y, x, n) from the source's labeller, or {output name: y} for a model
  with several outputs (a cascade gets the same target for every output; with a ``targets``
  maker, e.g. :class:`unetsl.data.targets.HeadTargets`, each output gets its own, at its
  own resolution);
- sample_weight : float32 (b, z, y, x), the weights image (1 for unweighted sources).

``len(dataset)`` is the number of steps per epoch: one sweep of the training patches, or
``ceil("patches per epoch" / batch size)`` when that is set. Every batch is a pure function of
(seed, epoch, index), so ``workers``/``use_multiprocessing`` give the same batches as a
single thread, and a fixed ``"seed"`` gives the same training run.

Training patches: every training region's strided grid (with "patch jitter"), or as many
random / foreground-centred patches ("sampling"); each one once more per source rotation
angle; shuffled every epoch and padded to whole batches. With "patches per epoch", epochs
are consecutive windows of an endless stream of shuffled sweeps (sweep k shuffled by
(seed, k)), so every patch is drawn equally often whatever the epoch length, each draw with
its own jitter and augmentation. Validation patches: the grid of
the validation regions, unaugmented, in a fixed order.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from unetsl.data.augment import (
    IDENTITY,
    AugmentSettings,
    Transform,
    apply_intensity,
    draw_transform,
)
from unetsl.data.augment import extract_patch as _extract
from unetsl.data.dataset_options import DatasetOptions, SourceOptions
from unetsl.data.normalize import zscore_patch
from unetsl.data.sampling import Region, split_regions
from unetsl.data.volumes import Volume, load_source_volumes, load_volumes
from unetsl.errors import UnetslError

__all__ = ["DatasetOptions", "PatchDataset", "Patch", "TargetMaker", "load_option_volumes",
           "load_volumes", "make_datasets", "regions_for"]

log = logging.getLogger("unetsl")

#: Tries to find a patch with some non-zero weight before giving up on random sampling.
_WEIGHT_TRIES = 20

#: label patch (z, y, x) -> {output name: (n, z', y', x')}, one target per model output.
TargetMaker = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True)
class _Plan:
    """How one region is sampled: its source's resolved options (validation: a plain grid,
    no augmentation) and the rotation angles it is also sampled at."""

    region: Region
    options: SourceOptions
    angles: tuple[float, ...]


@dataclass
class Patch:
    """One sampled patch, channels-first, before it is put in a batch.

    x : (c, z, y, x) float32; label : (z, y, x); target : (n, z, y, x), or
    {output name: (n, z', y', x')} from a target maker; weights : (z, y, x) float32 or None.
    """

    x: np.ndarray
    label: np.ndarray
    target: np.ndarray | dict[str, np.ndarray]
    weights: np.ndarray | None
    volume: int
    origin: tuple[int, int, int]
    transform: Transform


class PatchDataset(keras.utils.PyDataset):
    """Patches of a list of volumes, by region, as Keras batches (see the module docstring).

    options : the sources' sampling, augmentation and normalisation settings.
    training : shuffle, jitter, random sampling and augmentation on; otherwise the plain
        grid in a fixed order (validation, inspection).
    targets : makes {output name: target} from the label patch instead of the source's
        labeller (multi-head models whose outputs learn different things).
    kwargs : ``workers``, ``use_multiprocessing``, ``max_queue_size`` of PyDataset.
    """

    def __init__(self, volumes: Sequence[Volume], regions: Sequence[Region],
                 options: DatasetOptions, *,
                 patch_shape: Sequence[int], n_labels: int, output_names: Sequence[str] | None,
                 batch_size: int, seed: int, training: bool = True,
                 targets: TargetMaker | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if batch_size < 1:
            raise UnetslError(f"batch size must be >= 1, got {batch_size}")
        self.volumes = list(volumes)
        self.patch = tuple(int(p) for p in patch_shape[1:])
        self.channels = int(patch_shape[0])
        self.n_labels = int(n_labels)
        self.output_names = list(output_names or [])
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.training = training
        self.targets = targets
        self.epoch = 0
        self.patches_per_epoch = options.patches_per_epoch if training else None
        self.weighted = any(v.weights is not None for v in self.volumes)
        self.plans = [self._plan(r, options) for r in regions]
        self._foreground: dict[int, np.ndarray] = {}
        self.items = self._items()
        if len(self.items) == 0 and training:
            raise UnetslError("no training patches: every patch of the data has zero weight")

    # --- set-up --------------------------------------------------------------------------
    def _plan(self, region: Region, options: DatasetOptions) -> _Plan:
        source = self.volumes[region.volume].source
        mine = options.of(source)
        if self.training:
            return _Plan(region, mine, tuple(source.rotations))
        plain = dataclasses.replace(mine, sampling="grid", foreground_fraction=0.0,
                                    jitter=(0, 0, 0), augment=AugmentSettings())
        return _Plan(region, plain, ())

    def _items(self) -> np.ndarray:
        """(n, 5) int64 rows (plan, z, y, x, angle index); angle index 0 = unrotated."""
        rows = []
        for p, plan in enumerate(self.plans):
            origins = plan.region.grid(self.patch, plan.options.stride)
            weights = self.volumes[plan.region.volume].weights
            if weights is not None and plan.options.sampling == "grid":
                pz, py, px = self.patch
                keep = [weights[z:z + pz, y:y + py, x:x + px].any() for z, y, x in origins]
                origins = origins[np.asarray(keep, dtype=bool)]
            for a in range(len(plan.angles) + 1):
                block = np.empty((len(origins), 5), dtype=np.int64)
                block[:, 0] = p
                block[:, 1:4] = origins
                block[:, 4] = a
                rows.append(block)
        items = np.concatenate(rows) if rows else np.empty((0, 5), dtype=np.int64)
        return self._shared(items) if self.training else items

    def _shared(self, items: np.ndarray) -> np.ndarray:
        """Training items with the patches of sources that have a "patch share" repeated
        until they make up about that share (a few corrected cells beside a large data set)."""
        shares = np.array([self.plans[p].options.share or 0.0 for p in items[:, 0]])
        if not shares.any() or shares.all():
            return items
        shared = shares > 0
        share = float(shares[shared].max())
        wanted = share / (1 - share) * np.count_nonzero(~shared)
        repeat = max(1, round(wanted / np.count_nonzero(shared)))
        return np.concatenate([items[~shared], np.repeat(items[shared], repeat, axis=0)])

    # --- PyDataset -----------------------------------------------------------------------
    def __len__(self) -> int:
        return math.ceil((self.patches_per_epoch or len(self.items)) / self.batch_size)

    def on_epoch_end(self) -> None:
        if self.training:
            self.epoch += 1

    def _order(self) -> tuple[np.ndarray, np.ndarray]:
        """Item indices of this epoch, padded (from its start) to whole batches, and the
        draw of each (what seeds its placement and augmentation)."""
        n = len(self.items)
        wanted = len(self) * self.batch_size
        if self.patches_per_epoch:
            return self._stream(self.epoch * wanted, wanted)
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(n)
                 if self.training else np.arange(n))
        missing = wanted - n
        if missing:
            order = np.concatenate([order, np.resize(order, missing)])
        return order, np.full(len(order), self.epoch)

    def _stream(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions start..start+count of the endless stream of sweeps: (items, sweep of
        each); sweep k is the items shuffled by (seed, k), as an epoch of one sweep is."""
        n = len(self.items)
        first, last = start // n, (start + count - 1) // n
        sweeps = np.arange(first, last + 1)
        items = np.concatenate([np.random.default_rng([self.seed, int(k)]).permutation(n)
                                for k in sweeps])
        offset = start - first * n
        return items[offset:offset + count], np.repeat(sweeps, n)[offset:offset + count]

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range (dataset has {len(self)})")
        items, draws = self._order()
        batch = slice(index * self.batch_size, (index + 1) * self.batch_size)
        patches = [self.patch_at(int(i), draw=int(d)) for i, d in zip(items[batch], draws[batch])]
        x = np.stack([np.moveaxis(p.x, 0, -1) for p in patches])
        targets = self._batch_targets([p.target for p in patches])
        if not self.weighted:
            return x, targets
        w = np.stack([p.weights if p.weights is not None
                      else np.ones(self.patch, dtype=np.float32) for p in patches])
        return x, targets, w

    def _batch_targets(self, made: list) -> Any:
        """Channels-last float32 batch targets: one array, or {output name: array} for a
        model with several outputs (per-output targets, or the same one for each)."""
        def stack(arrays: Any) -> np.ndarray:
            return np.stack([np.moveaxis(a, 0, -1) for a in arrays]).astype(np.float32)

        if isinstance(made[0], dict):
            names = self.output_names or list(made[0])
            return {name: stack(t[name] for t in made) for name in names}
        y = stack(made)
        if len(self.output_names) > 1:
            return {name: y for name in self.output_names}
        return y

    # --- one patch -----------------------------------------------------------------------
    def patch_at(self, item: int, draw: int | None = None) -> Patch:
        """Patch number ``item`` of the item table, for the current epoch (``draw``: the
        sweep it is drawn in with "patches per epoch")."""
        p, z, y, x, a = (int(v) for v in self.items[item])
        plan = self.plans[p]
        volume = self.volumes[plan.region.volume]
        rng = np.random.default_rng([self.seed, self.epoch if draw is None else draw, item, 1])
        origin = (z, y, x)
        if self.training:
            origin = self._place(rng, plan, p, origin, volume)
        angle = plan.angles[a - 1] if a else 0.0
        transform = (draw_transform(rng, plan.options.augment, self.patch[1:], angle)
                     if self.training else IDENTITY)
        bounds = (plan.region.start, plan.region.stop)
        if plan.region.held and transform.warps:  # a warp must not read a validation block
            bounds = (origin, tuple(o + n for o, n in zip(origin, self.patch)))
        xs, label, weights = _extract(volume.image, volume.label, volume.weights, origin,
                                      self.patch, bounds, transform)
        if plan.options.normalization.zscore_tiles:
            xs = zscore_patch(xs)
        xs = apply_intensity(xs, transform)
        target = (self.targets(label) if self.targets is not None
                  else volume.source.labeller(label, self.n_labels))
        return Patch(xs, label, target, weights, plan.region.volume, origin, transform)

    def _place(self, rng: np.random.Generator, plan: _Plan, p: int,
               origin: tuple[int, int, int], volume: Volume) -> tuple[int, int, int]:
        """The origin after jitter (grid) or a random / foreground draw."""
        start = np.asarray(plan.region.start)
        last = np.asarray(plan.region.stop) - np.asarray(self.patch)  # largest origin
        opts = plan.options
        region = plan.region
        if opts.sampling == "grid":
            jitter = np.asarray(opts.jitter)
            if not jitter.any():
                return origin
            moved = np.clip(np.asarray(origin) + rng.integers(-jitter, jitter + 1), start, last)
            if not region.allows(moved, self.patch):  # onto a validation block: stay put
                return origin
            return tuple(int(v) for v in moved)  # type: ignore[return-value]
        chosen = np.asarray(origin)  # a grid origin: touches no validation block
        for _ in range(_WEIGHT_TRIES):
            if opts.sampling == "foreground" and rng.random() < opts.foreground_fraction:
                found = self._foreground_pixels(p, volume)
                if len(found):
                    centre = np.unravel_index(found[rng.integers(len(found))], plan.region.shape)
                    corner = start + np.asarray(centre) - np.asarray(self.patch) // 2
                    chosen = np.clip(corner, start, last)
                else:
                    chosen = rng.integers(start, last + 1)
            else:
                chosen = rng.integers(start, last + 1)
            if not region.allows(chosen, self.patch):
                chosen = np.asarray(origin)
                continue
            if volume.weights is None or self._has_weight(volume, chosen):
                break
        return tuple(int(v) for v in chosen)  # type: ignore[return-value]

    def _has_weight(self, volume: Volume, origin: np.ndarray) -> bool:
        z, y, x = (int(v) for v in origin)
        pz, py, px = self.patch
        return bool(volume.weights[z:z + pz, y:y + py, x:x + px].any())

    def _foreground_pixels(self, p: int, volume: Volume) -> np.ndarray:
        """Flat indices (in the region) of non-zero label pixels; cached per region."""
        if p not in self._foreground:
            region = self.plans[p].region
            self._foreground[p] = np.flatnonzero(volume.label[region.slices()])
        return self._foreground[p]


def regions_for(volumes: Sequence[Volume], options: DatasetOptions, patch: Sequence[int],
                seed: int | None) -> tuple[list[Region], list[Region]]:
    """Training and validation regions of ``volumes`` ("validation fraction" / "split")."""
    return split_regions([v.shape for v in volumes], patch, options.validation_fraction,
                         options.validation_split, seed)


def load_option_volumes(options: DatasetOptions, *, patch_shape: Sequence[int],
                        n_labels: int) -> list[Volume]:
    """Every volume of every source of ``options`` (as :func:`unetsl.data.volumes.load_volumes`
    for a config)."""
    volumes: list[Volume] = []
    for mine in options.sources:
        volumes += load_source_volumes(mine.source, mine.normalization.percentiles,
                                       patch_shape=patch_shape, n_labels=n_labels,
                                       unknown=mine.unknown)
    return volumes


def make_datasets(options: DatasetOptions, *, patch_shape: Sequence[int], n_labels: int,
                  output_names: Sequence[str] | None, batch_size: int, seed: int | None = None,
                  targets: TargetMaker | None = None, **kwargs: Any
                  ) -> tuple[PatchDataset, PatchDataset | None]:
    """Training and validation datasets of the data sources of ``options``.

    options : :class:`~unetsl.data.dataset_options.DatasetOptions` (``from_config(cfg)``):
        the dataset never reads the config itself.

    patch_shape : (c, z, y, x) of the model input; n_labels : output channels;
    output_names : the model's output names (several: y is a dict, same target each);
    targets : {output name: target} per label patch instead of the labeller (cerberus);
    seed : overrides the config's "seed"; None there too: a random seed for sampling and
        augmentation, while the train/validation split still uses seed 0 (stable across
        resumed runs).
    kwargs : ``workers``, ``use_multiprocessing``, ``max_queue_size`` for both datasets.
    Returns (train, validation); validation is None when "validation fraction" is 0.
    """
    if not isinstance(options, DatasetOptions):
        raise TypeError(f"make_datasets takes DatasetOptions (DatasetOptions.from_config(cfg)), "
                        f"not {type(options).__name__}")
    if seed is None:
        seed = options.seed
    split_seed = seed
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**63))
    volumes = load_option_volumes(options, patch_shape=patch_shape, n_labels=n_labels)
    patch = tuple(int(p) for p in patch_shape[1:])
    train_regions, val_regions = regions_for(volumes, options, patch, split_seed)
    common = dict(patch_shape=patch_shape, n_labels=n_labels, output_names=output_names,
                  batch_size=batch_size, seed=seed, targets=targets, **kwargs)
    train = PatchDataset(volumes, train_regions, options, training=True, **common)
    validation = (PatchDataset(volumes, val_regions, options, training=False, **common)
                  if val_regions else None)
    if validation is not None and len(validation.items) == 0:
        log.warning("no validation patches: every validation patch has zero weight; "
                    "training without validation")
        validation = None
    return train, validation
