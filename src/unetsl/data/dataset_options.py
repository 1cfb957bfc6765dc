"""What the training batches need from a config, read once: ``DatasetOptions.from_config(cfg)``.

The dataset (:mod:`unetsl.data.dataset`) never sees the config: it gets the parsed data
sources, each with its sampling, augmentation and normalisation settings resolved (the
source's own value when it sets one, else the config's), the validation split and the seed.
This module is the one place that reads those keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unetsl.config.model_config import Config
from unetsl.data.augment import AugmentSettings
from unetsl.data.normalize import InputNormalization
from unetsl.data.sources import Source, parse_sources
from unetsl.errors import UnetslError

__all__ = ["DatasetOptions", "SourceOptions"]


@dataclass(frozen=True)
class SourceOptions:
    """One data source with its settings resolved.

    stride, jitter : (z, y, x) of the patch grid and of the grid's random shifts;
    sampling : "grid", "random" or "foreground"; normalization : per-image percentiles and
    per-patch z-score ("normalize samples"); augment : the augmentation settings;
    unknown : "unknown label" (:mod:`unetsl.data.partial`); share : the source's "patch
    share", the fraction of training patches it gets whatever its size (None: by its size).
    """

    source: Source
    stride: tuple[int, int, int]
    sampling: str
    foreground_fraction: float
    jitter: tuple[int, int, int]
    normalization: InputNormalization
    augment: AugmentSettings
    unknown: Any = "max"
    share: float | None = None

    @classmethod
    def resolve(cls, source: Source, cfg: Config) -> SourceOptions:
        """The settings of ``source`` over those of ``cfg``."""
        def get(key: str) -> Any:
            return source.setting(cfg, key)

        return cls(
            source=source,
            stride=tuple(int(s) for s in get("stride")[1:]),  # type: ignore[arg-type]
            sampling=str(get("sampling")),
            foreground_fraction=float(get("foreground fraction")),
            jitter=tuple(int(j) for j in get("patch jitter")),  # type: ignore[arg-type]
            normalization=InputNormalization.from_settings({
                "normalization percentiles": get("normalization percentiles"),
                "normalize samples": bool(get("normalize samples"))}),
            augment=AugmentSettings.from_config(get),
            unknown=get("unknown label"),
            share=_patch_share(source),
        )


def _patch_share(source: Source) -> float | None:
    share = source.entry.get("patch share")
    if share is None:
        return None
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
        raise UnetslError(f'{source.where}"patch share" must be a number between 0 and 1 '
                          f"(exclusive), got {share!r}")
    return float(share)


@dataclass(frozen=True)
class DatasetOptions:
    """Everything :func:`unetsl.data.dataset.make_datasets` reads besides the model's shapes.

    sources : one :class:`SourceOptions` per "data sources" entry, in order;
    validation_fraction, validation_split : "validation fraction", "validation split";
    seed : "seed" (None: random sampling, split with seed 0);
    patches_per_epoch : "patches per epoch" (None: one sweep of the training patches).
    """

    sources: tuple[SourceOptions, ...]
    validation_fraction: float
    validation_split: str
    seed: int | None
    patches_per_epoch: int | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> DatasetOptions:
        """Parse the config's "data sources" (an empty list is an error) and resolve them."""
        return cls(
            sources=tuple(SourceOptions.resolve(s, cfg) for s in parse_sources(cfg)),
            validation_fraction=float(cfg["validation fraction"]),
            validation_split=cfg["validation split"],
            seed=cfg["seed"],
            patches_per_epoch=cfg.get("patches per epoch"),
        )

    def of(self, source: Source) -> SourceOptions:
        """The options of ``source`` (by its index among the data sources)."""
        for options in self.sources:
            if options.source.index == source.index:
                return options
        raise KeyError(f"no options for data source {source.index}")
