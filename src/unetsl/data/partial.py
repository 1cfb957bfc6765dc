"""Partial labels: a label value that means "not labelled here", left out of training.

Correcting a few cells of a prediction and training on them needs label images that say
"unknown" everywhere else: painting every cell of an image is what a user wants to avoid. The
value is the config key ``"unknown label"`` (per source or for the whole config):

- ``"max"`` (default): the largest value of the label image's integer type, 255 in an 8-bit
  image and 65535 in a 16-bit one (what a paint tool's "fill with max" gives; no label image
  of a unetsl labeller uses it otherwise);
- an integer: that value;
- ``"none"``: every value is a label.

Unknown voxels become label 0 with weight 0, as a weights image of 0 there would: the loss
and the metrics leave them out (:class:`unetsl.training.metrics.VoxelWeightedLoss`,
``ChannelF1``) and no training patch is drawn where every voxel is unknown.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from unetsl.config.fields import is_unknown_label
from unetsl.errors import UnetslError

log = logging.getLogger("unetsl")

def unknown_value(setting: Any, dtype: np.dtype) -> int | None:
    """The label value that means unknown in a label image of ``dtype`` (None: none)."""
    if setting == "none" or not np.issubdtype(dtype, np.integer):
        return None
    if setting == "max":
        return int(np.iinfo(dtype).max)
    if not is_unknown_label(setting):
        raise UnetslError(f'"unknown label" must be "max", "none" or an integer >= 0, '
                          f"got {setting!r}")
    return int(setting)


def known_only(label: np.ndarray, weights: np.ndarray | None, setting: Any, where: str
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """``label`` with its unknown voxels set to 0 and ``weights`` (None: all 1) set to 0
    there; unchanged when no voxel is unknown. ``where`` names the file in the info line."""
    value = unknown_value(setting, label.dtype)
    if value is None:
        return label, weights
    unknown = label == value
    count = int(np.count_nonzero(unknown))
    if not count:
        return label, weights
    log.info(f"{where}: {100 * count / unknown.size:.1f}% of the voxels are unknown (label "
             f'{value}, "unknown label"): left out of the loss and the metrics')
    known = (~unknown).astype(np.float32)
    label = np.where(unknown, np.zeros((), label.dtype), label)
    return label, known if weights is None else weights * known
