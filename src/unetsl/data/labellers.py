"""Labellers: turn a label image into the target channels the network learns.

Every labeller is a pure function ``f(label, n_labels) -> target`` where

- ``label`` : (z, y, x) ndarray, channel 0 of the label image;
- ``target`` : (n_labels, z, y, x) uint8 array of 0/1 (``linear labels``: (1, z, y, x) in
  the label's own dtype).

Labellers are looked up by the names the original ActiveUnetSegmentation wrote in its
JSON configs ("multiclass labels", ...) from one registry, :data:`LABELLERS`, whose
order is the original's menu order, so menu numbers keep their meaning (unetsl's own,
"instance labels", comes after them).

Differences from the original, on purpose:

- binary targets are uint8 (the original used int8; the values are the same 0/1);
- ``categorical labels`` puts background in the last channel for every ``n_labels``
  (the original got this right only for ``n_labels == 2``) and rejects labels that are
  not one-hot;
- ``multiclass labels`` (and those built on it) reject non-integer or negative labels
  instead of silently truncating them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import measure, segmentation

from unetsl.config.fields import LABELLER_NAMES, labeller_index
from unetsl.errors import UnetslError

__all__ = [
    "LABELLERS",
    "Labeller",
    "categorical_labels",
    "double_membrane_labels",
    "get_labeller",
    "instance_labels",
    "linear_labels",
    "make_target",
    "multiclass_labels",
    "region_labels",
]

# 4-neighbourhood cross in y/x only: nothing is connected or dilated across z-slices.
_PLANE_CROSS = ndimage.generate_binary_structure(2, 1)[np.newaxis]  # (1, 3, 3)
_MAX_SHOWN = 5  # offending values listed in an error message


def _check_label(label: np.ndarray, who: str) -> np.ndarray:
    """Return ``label`` as an ndarray after checking it is a real-valued (z, y, x) array."""
    label = np.asarray(label)
    if label.ndim != 3:
        raise UnetslError(f"{who}: label must be a 3-D (z, y, x) array, got shape {label.shape}")
    if not (np.issubdtype(label.dtype, np.number) or label.dtype == np.bool_) or np.iscomplexobj(
        label
    ):
        raise UnetslError(f"{who}: label dtype must be integer, bool or float, got {label.dtype}")
    return label


def _check_n_labels(n_labels: int, who: str, minimum: int = 1) -> int:
    """Return ``n_labels`` as an int after checking it is an integer >= ``minimum``."""
    if isinstance(n_labels, bool):
        raise UnetslError(f"{who}: n labels must be an integer, got {n_labels!r}")
    try:
        n = operator.index(n_labels)
    except TypeError:
        raise UnetslError(f"{who}: n labels must be an integer, got {n_labels!r}") from None
    if n < minimum:
        raise UnetslError(f"{who}: n labels must be at least {minimum}, got {n}")
    return n


def _shown(values: np.ndarray) -> str:
    """Format the first few ``values`` for an error message."""
    shown = ", ".join(str(v) for v in values[:_MAX_SHOWN].tolist())
    return shown + (", ..." if values.size > _MAX_SHOWN else "")


def _as_bit_carrier(label: np.ndarray, who: str) -> np.ndarray:
    """Return ``label`` as uint64 after checking it holds non-negative integers.

    Float arrays are accepted when every value is integral (labels saved as float TIFFs).
    """
    if label.dtype == np.bool_ or np.issubdtype(label.dtype, np.unsignedinteger):
        return label.astype(np.uint64)
    if np.issubdtype(label.dtype, np.signedinteger):
        negative = np.unique(label[label < 0])
        if negative.size:
            raise UnetslError(f"{who}: label values must be non-negative, got {_shown(negative)}")
        return label.astype(np.uint64)
    # floating point
    bad = ~np.isfinite(label) | (label < 0) | (label >= 2.0**64)
    bad |= np.floor(np.where(bad, 0, label)) != np.where(bad, 0, label)
    if bad.any():
        raise UnetslError(
            f"{who}: label values must be non-negative integers, got {label.dtype} values "
            f"{_shown(np.unique(label[bad]))}"
        )
    return label.astype(np.uint64)


def _bit_planes(values: np.ndarray, n_bits: int) -> np.ndarray:
    """(n_bits, *values.shape) uint8: plane i is bit i of the uint64 ``values``."""
    planes = np.zeros((n_bits, *values.shape), dtype=np.uint8)
    n_real = min(n_bits, 64)  # bits 64+ of a uint64 are always 0
    shifts = np.arange(n_real, dtype=np.uint64).reshape((n_real,) + (1,) * values.ndim)
    planes[:n_real] = (values[np.newaxis] >> shifts) & np.uint64(1)
    return planes


def region_labels(label: np.ndarray, n_labels: int) -> np.ndarray:
    """Membrane plus the regions it encloses, for segmenting cells rather than their outlines.

    Per z-slice, the zero pixels are split into 4-connected regions, numbered in
    raster-scan order of their first pixel. Channel 0 is the membrane (``label != 0``);
    channel k (1 <= k <= n_labels - 1) holds region k; when a slice has more regions than
    region channels, all extra regions go into the last channel, and channels without a
    region stay 0.

    Parameters
    ----------
    label : (z, y, x) ndarray, any real dtype (only zero / non-zero matters)
    n_labels : int >= 1

    Returns
    -------
    (n_labels, z, y, x) uint8 ndarray of 0/1
    """
    who = "region labels"
    label = _check_label(label, who)
    n = _check_n_labels(n_labels, who)
    membrane = label != 0
    regions = np.zeros(label.shape, dtype=np.int64)
    for z, plane in enumerate(membrane):  # per slice: regions never connect across z
        regions[z] = measure.label(~plane, connectivity=1, background=0)
    if n > 1:
        # 0 stays 0 (membrane), regions n-1, n, ... all collapse onto channel n-1
        regions = np.minimum(regions, n - 1)
    channels = np.arange(1, n).reshape((n - 1, 1, 1, 1))
    target = np.empty((n, *label.shape), dtype=np.uint8)
    target[0] = membrane
    target[1:] = regions[np.newaxis] == channels
    return target


def multiclass_labels(label: np.ndarray, n_labels: int) -> np.ndarray:
    """One channel per bit, so one pixel can carry several overlapping classes (sigmoid).

    Channel i is bit i of the label value (i = 0 .. n_labels - 1): with membrane = 1 and
    vertex = 3, a vertex is in channels 0 and 1. A 16-bit image can carry 16 classes.

    Parameters
    ----------
    label : (z, y, x) ndarray of non-negative integers (integer, bool, or float holding
        integral values)
    n_labels : int >= 1

    Returns
    -------
    (n_labels, z, y, x) uint8 ndarray of 0/1

    Raises
    ------
    UnetslError
        for negative or fractional label values.
    """
    who = "multiclass labels"
    label = _check_label(label, who)
    n = _check_n_labels(n_labels, who)
    return _bit_planes(_as_bit_carrier(label, who), n)


def categorical_labels(label: np.ndarray, n_labels: int) -> np.ndarray:
    """One-hot classes with background as a class of its own, for a softmax output.

    Channels 0 .. n_labels - 2 hold the classes 2^0 .. 2^(n_labels - 2) (value 2^k goes to
    channel k) and channel n_labels - 1 holds the background (value 0), so the channels
    sum to 1 at every pixel.

    This differs from the original for ``n_labels > 2``: it wrote the background into
    channel n_labels - 3, overwriting bit 0 and leaving the last channel empty. For
    ``n_labels == 2`` both give (bit 0, background).

    Parameters
    ----------
    label : (z, y, x) ndarray whose values are 0 or a single bit 2^k with k < n_labels - 1
    n_labels : int >= 2

    Returns
    -------
    (n_labels, z, y, x) uint8 ndarray of 0/1, exactly one 1 per pixel

    Raises
    ------
    UnetslError
        naming the values that are not one-hot (several bits set, or a bit >= n_labels - 1).
    """
    who = "categorical labels"
    label = _check_label(label, who)
    n = _check_n_labels(n_labels, who, minimum=2)
    values = _as_bit_carrier(label, who)
    present = np.unique(values)
    single_bit = (present & (present - np.uint64(1))) == 0  # true for 0 too
    in_range = present < np.uint64(2) ** np.uint64(n - 1) if n - 1 < 64 else True
    bad = present[~(single_bit & in_range)]
    if bad.size:
        raise UnetslError(
            f"{who}: values {_shown(bad)} are not one-hot for n labels = {n} "
            f"(allowed: 0 and powers of two below {2 ** (n - 1)})"
        )
    target = np.empty((n, *label.shape), dtype=np.uint8)
    target[: n - 1] = _bit_planes(values, n - 1)
    target[n - 1] = values == 0
    return target


def double_membrane_labels(label: np.ndarray, n_labels: int) -> np.ndarray:
    """Multiclass labels thickened by one pixel, so thin membranes give a wider target.

    Each channel of :func:`multiclass_labels` is dilated per z-slice with a 3x3 cross
    (4-neighbourhood); nothing spreads across z. One labelled pixel becomes a plus of 5.

    Parameters
    ----------
    label : (z, y, x) ndarray of non-negative integers
    n_labels : int >= 1

    Returns
    -------
    (n_labels, z, y, x) uint8 ndarray of 0/1
    """
    who = "double membrane labels"
    label = _check_label(label, who)
    n = _check_n_labels(n_labels, who)
    planes = _bit_planes(_as_bit_carrier(label, who), n)
    dilated = ndimage.binary_dilation(planes.astype(bool), structure=_PLANE_CROSS[np.newaxis])
    return dilated.astype(np.uint8)


def linear_labels(label: np.ndarray, n_labels: int) -> np.ndarray:
    """The label values themselves as one channel, for relu / distance outputs.

    ``n_labels`` is ignored (the target always has one channel). The dtype is kept, so
    float labels stay float. The result is a copy.

    Parameters
    ----------
    label : (z, y, x) ndarray, any real dtype
    n_labels : ignored

    Returns
    -------
    (1, z, y, x) ndarray, dtype of ``label``
    """
    label = _check_label(label, "linear labels")
    return label[np.newaxis].copy()


def instance_labels(label: np.ndarray, n_labels: int) -> np.ndarray:
    """Objects that touch, kept apart: foreground and the boundary of every object.

    For labels where each object (nucleus, cell) has its own value and 0 is background, as
    StarDist, Cellpose and the Cell Tracking Challenge write them. Channel 0 is the foreground
    (label != 0), channel 1 the object's own pixels that touch another value (another object
    or the background; 4-neighbourhood, per slice). Two touching objects are then split by a
    two-pixel boundary, which ``segment_cells --from foreground`` uses to seed one cell per
    object (the classic "interior / boundary / background" U-Net of nuclei). Needs
    ``n_labels`` 2.

    Parameters
    ----------
    label : (z, y, x) ndarray of non-negative integer object ids
    n_labels : 2

    Returns
    -------
    (2, z, y, x) uint8 ndarray of 0/1
    """
    who = "instance labels"
    label = _as_bit_carrier(_check_label(label, who), who)
    if _check_n_labels(n_labels, who, minimum=2) != 2:
        raise UnetslError(f'{who}: "n labels" must be 2 (foreground, boundary), got {n_labels}')
    target = np.zeros((2, *label.shape), dtype=np.uint8)
    target[0] = label != 0
    for z, plane in enumerate(label):  # per slice: z steps are often several pixels long
        target[1, z] = segmentation.find_boundaries(plane, connectivity=1, mode="inner")
    target[1] &= target[0]
    return target


@dataclass(frozen=True)
class Labeller:
    """A labeller and what goes with it.

    Attributes
    ----------
    name : the original's JSON name, e.g. "multiclass labels"
    function : ``(label (z, y, x), n_labels) -> (n, z, y, x)``
    activation : output activation that fits the targets: "sigmoid", "softmax" or "relu"
    reduction : how predictions turn back into labels: "multiclass", "categorical" or "linear"
    integer_only : True when the label values must be non-negative integers
    """

    name: str
    function: Callable[[np.ndarray, int], np.ndarray]
    activation: str
    reduction: str
    integer_only: bool

    def __call__(self, label: np.ndarray, n_labels: int) -> np.ndarray:
        return self.function(label, n_labels)

    @property
    def short_name(self) -> str:
        """The name without the trailing " labels", e.g. "multiclass"."""
        return self.name.removesuffix(" labels")


_REGISTRY = (
    # membrane + disjoint regions: every pixel in exactly one channel (n >= 2)
    Labeller("region labels", region_labels, "softmax", "categorical", False),
    Labeller("multiclass labels", multiclass_labels, "sigmoid", "multiclass", True),
    Labeller("categorical labels", categorical_labels, "softmax", "categorical", True),
    Labeller("double membrane labels", double_membrane_labels, "sigmoid", "multiclass", True),
    Labeller("linear labels", linear_labels, "relu", "linear", False),
    Labeller("instance labels", instance_labels, "sigmoid", "multiclass", True),
)

#: Labellers by the original's JSON name, in the original's menu order (0 .. 4).
LABELLERS: dict[str, Labeller] = {labeller.name: labeller for labeller in _REGISTRY}
assert tuple(LABELLERS) == LABELLER_NAMES, "config.fields.LABELLER_NAMES is out of date"


def get_labeller(name: str | int | Labeller) -> Labeller:
    """Look up a labeller by its JSON name, short name or menu number.

    Accepted: "multiclass labels", "multiclass" (case, surrounding spaces, "-" and "_"
    do not matter), 1 or "1" (:func:`unetsl.config.fields.labeller_index`); a
    :class:`Labeller` is returned as is.

    Raises
    ------
    UnetslError
        for anything else, listing the valid names.
    """
    if isinstance(name, Labeller):
        return name
    return _REGISTRY[labeller_index(name)]


def make_target(label: np.ndarray, labeller: str | int, n_labels: int) -> np.ndarray:
    """Target channels for ``label``: ``get_labeller(labeller)(label, n_labels)``.

    Parameters
    ----------
    label : (z, y, x) ndarray, channel 0 of the label image
    labeller : name, short name or menu number (see :func:`get_labeller`)
    n_labels : the model's output channel count

    Returns
    -------
    (n_labels, z, y, x) ndarray ((1, z, y, x) for "linear labels")
    """
    return get_labeller(labeller).function(label, n_labels)
