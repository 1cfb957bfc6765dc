"""Per-head training targets: label bit field, then the head labeller, then its resampler;
the label checks before training."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from unetsl.config.heads import RESAMPLERS, Head
from unetsl.data.labellers import _as_bit_carrier, get_labeller
from unetsl.data.partial import unknown_value
from unetsl.data.volumes import _label_values, check_label_values
from unetsl.errors import UnetslError
from unetsl.io.tiff import read_image

# ------------------------------------------------------------------------------ targets


def head_factors(pooling: Sequence[int], depth: int, z: int | None = None
                 ) -> tuple[int, int, int]:
    """(z, y, x) size ratio between the input patch and a head at decoder level ``depth``.

    z : the patch depth; a 2-D patch (z == 1) is not pooled in z (the 2-D U-Net).
    """
    fz, fy, fx = (int(p) ** int(depth) for p in pooling)
    return (1 if z == 1 else fz), fy, fx


def bit_field(label: np.ndarray, bits: int, offset: int) -> np.ndarray:
    """``(label >> offset) & (2**bits - 1)``: the unsigned field a head sees (label bit
    contract), in the smallest unsigned dtype that holds it.

    label : (z, y, x) non-negative integers (bool, integer, or float holding integers).
    """

    values = _as_bit_carrier(np.asarray(label), "cerberus labels")
    field = (values >> np.uint64(offset)) & np.uint64((1 << bits) - 1)
    dtype = np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32
    return field.astype(dtype)


def resample_target(target: np.ndarray, resampler: str,
                    factors: Sequence[int]) -> np.ndarray:
    """A full-patch target (n, z, y, x) at head resolution (n, z/fz, y/fy, x/fx).

    "max pool" / "min pool": maximum / minimum of each fz x fy x fx block; "crop": the centre
    (the head sees only the middle of the patch). Factors of 1 leave the target as it is.
    """
    fz, fy, fx = (int(f) for f in factors)
    if (fz, fy, fx) == (1, 1, 1):
        return target
    n, z, y, x = target.shape
    if z % fz or y % fy or x % fx:
        raise UnetslError(f"cerberus: a patch of (z, y, x) = {(z, y, x)} cannot be "
                          f"resampled by {(fz, fy, fx)}; its sizes must be multiples")
    if resampler == "crop":
        starts = [(s - s // f) // 2 for s, f in ((z, fz), (y, fy), (x, fx))]
        (z0, y0, x0), (kz, ky, kx) = starts, (z // fz, y // fy, x // fx)
        return target[:, z0:z0 + kz, y0:y0 + ky, x0:x0 + kx]
    blocks = target.reshape(n, z // fz, fz, y // fy, fy, x // fx, fx)
    if resampler == "max pool":
        return blocks.max(axis=(2, 4, 6))
    if resampler == "min pool":
        return blocks.min(axis=(2, 4, 6))
    raise UnetslError(f'cerberus: "resampler" {json.dumps(resampler)} is not supported; use '
                      + ", ".join(f'"{r}"' for r in RESAMPLERS))


def head_target(label: np.ndarray, head: Head, pooling: Sequence[int]) -> np.ndarray:
    """The target of ``head`` for one raw label patch (z, y, x): (n_labels, z', y', x')."""

    field = bit_field(label, head.bits, head.offset)
    target = get_labeller(head.labeller)(field, head.n_labels)
    factors = head_factors(pooling, head.depth, z=np.shape(label)[0])
    return resample_target(target, head.resampler, factors)


class HeadTargets:
    """label patch (z, y, x) -> {head name: (n_labels, z', y', x')}: the per-patch target
    maker :class:`unetsl.data.dataset.PatchDataset` calls for heads that make their own
    targets from the label bits (picklable, so multiprocessing workers can use it)."""

    source_channels = 1
    """Channels the data sources give it: the raw label ("linear labels" passes it on)."""

    def __init__(self, heads: Sequence[Head], pooling: Sequence[int]):
        self.heads = tuple(heads)
        self.pooling = tuple(int(p) for p in pooling)

    def __call__(self, label: np.ndarray) -> dict[str, np.ndarray]:
        return {head.name: head_target(label, head, self.pooling) for head in self.heads}


def training_targets(heads: Sequence[Head], pooling: Sequence[int]) -> HeadTargets | None:
    """The target maker of heads that make their own targets from the label bits, or None:
    then the data source's labeller makes the one target every output trains on."""
    if any(head.own_target for head in heads):
        return HeadTargets(heads, pooling)
    return None


def check_training_labels(volumes: Sequence[Any], targets: HeadTargets | None, n_labels: int,
                          where: str) -> None:
    """The one label check before training: each head's bits (:func:`check_head_labels`), or
    for the source labeller's targets, bit labels against the output channels
    (:func:`check_label_bits`)."""
    if targets is not None:
        check_head_labels(volumes, targets.heads, where)
    else:
        check_label_bits(volumes, n_labels)


BIT_LABELLERS = ("multiclass labels", "double membrane labels")


def check_label_bits(volumes: Sequence[Any], n_labels: int) -> None:
    """Bit labels must fit the model: a value with bit k set needs k + 1 output channels.

    The multiclass labellers drop higher bits silently, so a label image meant for more
    classes than "n labels" would train on part of its labels without a word.
    volumes : :class:`unetsl.data.volumes.Volume` objects (label, source.labeller, pair).
    """
    for volume in volumes:
        labeller = getattr(getattr(volume, "source", None), "labeller", None)
        if labeller is None or labeller.name not in BIT_LABELLERS or volume.label.size == 0:
            continue
        _check_bits_fit(int(volume.label.max()), n_labels, labeller.name,
                        f"{volume.pair.label}: label value", 'the model has {n} ("n labels")')


def check_label_file(source: Any, path: Any, n_labels: int) -> None:
    """What training checks of one attached label file, run when it is attached: the labeller
    accepts its values and bit labels fit the model's ``n_labels`` channels (a distance map or
    an instance mask given to "multiclass" is refused now, not when training starts)."""
    label = read_image(path).data
    if label.dtype == np.bool_:
        label = label.astype(np.uint8)
    unknown = unknown_value(getattr(source, "settings", {}).get("unknown label", "max"),
                            label.dtype)
    if unknown is not None:  # partial labels: the unknown value is no label
        label = np.where(label == unknown, np.zeros((), label.dtype), label)
    check_label_values(source, label, path, n_labels)
    if source.labeller.name in BIT_LABELLERS and label.size:
        _check_bits_fit(int(label.max()), n_labels, source.labeller.name,
                        f"{source.where}{path}: label value", 'the model has {n} ("n labels")')


def _check_bits_fit(top: int, n_labels: int, labeller: str, what: str, has: str) -> None:
    """The one test of bit labels against output channels, for every head kind: a value with
    bit k set needs k + 1 channels (the multiclass labellers would drop higher bits without a
    word). ``what`` names the label, ``has`` the channels ({n} is replaced by n_labels)."""
    if top >= 2**n_labels:
        raise UnetslError(f"{what} {top} needs {top.bit_length()} output channels ({labeller}) "
                          f"but {has.format(n=n_labels)}")


def _label_width(dtype: np.dtype) -> int | None:
    """How many bits a label of this dtype can carry (None: checked by value instead)."""
    if dtype == np.bool_:
        return 1
    if np.issubdtype(dtype, np.unsignedinteger):
        return dtype.itemsize * 8
    if np.issubdtype(dtype, np.signedinteger):
        return dtype.itemsize * 8 - 1
    return None


def check_head_labels(volumes: Sequence[Any], heads: Sequence[Head], where: str) -> None:
    """Every head's bits must exist in the label images and its labeller must accept what it
    finds there; a one-line UnetslError names the config, the head key and the label file.

    volumes : :class:`unetsl.data.volumes.Volume` objects; where : the config path for messages.
    """

    for volume in volumes:
        path = volume.pair.label
        label = volume.label
        if label.size == 0:
            continue
        width = _label_width(label.dtype)
        for head in heads:
            top = head.offset + head.bits
            if width is not None and top > width:
                raise UnetslError(
                    f'{where}: head "{head.name}": "offset" {head.offset} + "bits" {head.bits} '
                    f"reads bits {head.offset}..{top - 1} but {path} holds {label.dtype} "
                    f"labels (bits 0..{width - 1})")
        values = _label_values(label).reshape(1, 1, -1)
        try:
            bit_field(values, 1, 0)  # non-negative integers only
        except UnetslError as err:
            raise UnetslError(f"{where}: {path}: {err}") from None
        for head in heads:
            field = bit_field(values, head.bits, head.offset)
            labeller = get_labeller(head.labeller)
            if labeller.name in BIT_LABELLERS and field.size:
                _check_bits_fit(int(field.max()), head.n_labels, labeller.name,
                                f'{where}: head "{head.name}": {path}: bit field value',
                                'head "n_labels" is {n}')
            try:
                labeller(field, head.n_labels)
            except UnetslError as err:
                raise UnetslError(f'{where}: head "{head.name}": {path}: {err}') from None




def check_head_sources(sources: Sequence[Any], where: str) -> None:
    """Sources a multi-head model trains on: unweighted, with "linear labels" (the raw
    bit-packed label must reach the heads, each applies its own labeller)."""
    for index, source in enumerate(sources):
        if source.weighted:
            raise UnetslError(f"{where}: source {index}: weighted sources are not "
                              "supported for cerberus")
        if source.labeller.name != "linear labels":
            raise UnetslError(
                f'{where}: source {index}: "labeller" must be "linear labels" for cerberus '
                f'(each head applies its own labeller to the raw label bits), got '
                f'"{source.labeller.name}"')
