"""The patch grid covers every voxel; the validation split never shares a voxel with training."""

from __future__ import annotations

import numpy as np
import pytest

from unetsl.data.sampling import Region, axis_origins, cut_blocks, grid_origins, split_regions
from unetsl.errors import UnetslError


@pytest.mark.parametrize("size, patch, stride, expected", [
    (100, 64, 32, [0, 32, 36]),  # last patch flush with the border
    (128, 64, 32, [0, 32, 64]),
    (64, 64, 32, [0]),
    (5, 3, 3, [0, 2]),  # the original's z example: origins 0 and 2
    (10, 3, 0, [0, 3, 6, 7]),  # stride 0 = one patch
    (7, 1, 1, list(range(7))),
])
def test_axis_origins(size, patch, stride, expected):
    assert axis_origins(size, patch, stride).tolist() == expected


def test_axis_smaller_than_patch():
    with pytest.raises(UnetslError, match="smaller than the patch"):
        axis_origins(10, 16, 8)


@pytest.mark.parametrize("shape, patch, stride", [
    ((5, 100, 100), (3, 64, 64), (3, 32, 32)),
    ((1, 75, 130), (1, 32, 48), (1, 40, 50)),  # stride larger than the patch leaves gaps ...
    ((9, 33, 33), (4, 16, 16), (0, 0, 0)),
])
def test_grid_covers_every_voxel_when_stride_fits(shape, patch, stride):
    origins = grid_origins(shape, patch, stride)
    seen = np.zeros(shape, dtype=bool)
    for z, y, x in origins:
        seen[z:z + patch[0], y:y + patch[1], x:x + patch[2]] = True
    assert (origins >= 0).all() and (origins + patch <= shape).all()
    if all(s <= p or s == 0 for s, p in zip(stride, patch)):
        assert seen.all()
    # ... but the first and the last voxel of every axis are always seen
    assert seen[0, 0, 0] and seen[-1, -1, -1]


def test_cut_blocks_tile_the_volume_and_fit_a_patch():
    shape, patch = (7, 130, 200), (3, 64, 64)
    blocks = cut_blocks(shape, patch)
    assert len(blocks) == 2 * 2 * 3
    owner = np.zeros(shape, dtype=int)
    for start, stop in blocks:
        assert all(b - a >= p for a, b, p in zip(start, stop, patch))
        owner[tuple(slice(a, b) for a, b in zip(start, stop))] += 1
    assert (owner == 1).all()


def _mask(regions, shapes):
    """The voxels each region gives: its box without its held (validation) boxes."""
    masks = [np.zeros(s, dtype=bool) for s in shapes]
    for r in regions:
        assert not masks[r.volume][r.slices()].any(), "regions overlap"
        masks[r.volume][r.slices()] = True
        for start, stop in r.held:
            masks[r.volume][tuple(slice(a, b) for a, b in zip(start, stop))] = False
    return masks


@pytest.mark.parametrize("mode", ["regions", "files"])
def test_split_has_no_overlap_and_is_deterministic(mode):
    shapes = [(3, 128, 128), (3, 128, 200), (5, 64, 64), (3, 200, 128)]
    patch = (3, 64, 64)
    train, val = split_regions(shapes, patch, 0.25, mode, seed=7)
    assert train and val
    train_masks, val_masks = _mask(train, shapes), _mask(val, shapes)
    for t, v in zip(train_masks, val_masks):
        assert not (t & v).any()
        assert (t | v).all()  # nothing is lost
    assert split_regions(shapes, patch, 0.25, mode, seed=7) == (train, val)
    others = {tuple(split_regions(shapes, patch, 0.25, mode, seed=s)[1]) for s in range(10)}
    assert len(others) > 1
    for r in train + val:
        assert all(s >= p for s, p in zip(r.shape, patch))
    for r in train:  # no training patch anywhere (stride 1) touches a validation voxel
        for z, y, x in r.grid(patch, (1, 1, 1)):
            assert not val_masks[r.volume][z:z + 3, y:y + 64, x:x + 64].any()


def test_a_single_image_trains_around_its_validation_block():
    """One 256 x 512 image, 1/32 held out: every grid patch that does not touch the held
    block trains (earlier versions kept only the patches inside single blocks: 31 here)."""
    train, val = split_regions([(1, 256, 512)], (1, 64, 64), 1 / 32, "regions", seed=0)
    assert len(val) == 1 and len(train) == 1 and train[0].held == ((val[0].start, val[0].stop),)
    origins = train[0].grid((1, 64, 64), (0, 32, 32))
    assert len(origins) > 80  # of 7 x 15 = 105
    assert all(train[0].allows(o, (1, 64, 64)) for o in origins)


def test_split_fraction_and_whole_volumes_without_validation():
    shapes = [(1, 256, 256)] * 4  # 4 x 16 blocks of 64 x 64
    train, val = split_regions(shapes, (1, 64, 64), 1 / 32, "regions", seed=0)
    assert len(val) == 2  # round(64 / 32)
    held = {r.volume for r in val}
    assert all(r.shape == (1, 256, 256) for r in train) and len(train) == 4
    assert {r.volume for r in train if r.held} == held


def test_no_validation_gives_whole_volumes():
    train, val = split_regions([(3, 70, 80)], (3, 64, 64), 0.0)
    assert val == [] and train == [Region(0, (0, 0, 0), (3, 70, 80))]


def test_too_little_data_for_validation_is_a_clear_error():
    with pytest.raises(UnetslError, match='"validation fraction" 0.1 needs at least 2 units'):
        split_regions([(3, 100, 100)], (3, 64, 64), 0.1)
    with pytest.raises(UnetslError, match='"validation split" to "regions"'):
        split_regions([(3, 128, 128)], (3, 64, 64), 0.1, "files")


def test_training_is_never_empty():
    train, val = split_regions([(1, 64, 128)], (1, 64, 64), 0.9)
    assert len(train) == 1 and len(val) == 1
