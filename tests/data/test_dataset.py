"""make_datasets: batch layout, determinism, sampling modes, split, weights, and Keras fit."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from unetsl.config.model_config import Config
from unetsl.data.dataset import PatchDataset, make_datasets
from unetsl.data.dataset_options import DatasetOptions
from unetsl.data.synthetic import write_dataset
from unetsl.errors import UnetslError

PATCH = (1, 3, 32, 32)


def paired(labels="labels", labeller="multiclass labels", **extra):
    return {"source type": "paired directories", "input folders": ["images"],
            "label folders": [labels], "rotations": [], "labeller": labeller, **extra}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    write_dataset(root, kind="2d", n_images=2, shape=(3, 64, 64))
    weights = root / "weights"
    weights.mkdir()
    for i in range(2):
        w = np.ones((3, 64, 64), np.float32)
        w[:, :, 32:] = 0  # the right half never counts
        w[:, :32, :32] = 2.5
        tifffile.imwrite(weights / f"epi-00{i}.tif", w, imagej=True, metadata={"axes": "TYX"})
    return root


def config(root, *entries, **keys):
    cfg = Config(path=root / "m.json")
    cfg["data sources"] = list(entries) or [paired()]
    cfg["validation fraction"] = 0.0
    cfg.update(keys)
    return cfg


def datasets(cfg, batch_size=4, seed=1, names=("output",), patch=PATCH, n_labels=2, **kw):
    return make_datasets(DatasetOptions.from_config(cfg), patch_shape=patch, n_labels=n_labels,
                         output_names=list(names), batch_size=batch_size, seed=seed, **kw)


def test_batch_layout(project):
    train, val = datasets(config(project, stride=[0, 3, 16, 16]))
    assert isinstance(train, PatchDataset) and val is None
    assert len(train.items) == 2 * 3 * 3 and len(train) == 5  # 9 origins per image, batch 4
    x, y = train[0]
    assert x.shape == (4, 3, 32, 32, 1) and x.dtype == np.float32
    assert y.shape == (4, 3, 32, 32, 2) and y.dtype == np.float32
    assert set(np.unique(y)) <= {0.0, 1.0} and y[..., 0].any() and y[..., 1].any()
    # membrane channel follows the label image: label 1 and 3 have bit 0, 3 has bit 1
    p = train.patch_at(0)
    np.testing.assert_array_equal(np.moveaxis(p.target, 0, -1)[..., 1], p.label == 3)
    x, y = train[len(train) - 1]  # padded to a whole batch
    assert x.shape[0] == 4


def test_several_outputs_get_the_same_target(project):
    train, _ = datasets(config(project), names=["cascade_0", "cascade_1"])
    x, y = train[0]
    assert set(y) == {"cascade_0", "cascade_1"}
    np.testing.assert_array_equal(y["cascade_0"], y["cascade_1"])


def test_same_seed_same_batches_new_epoch_new_order(project):
    cfg = config(project, sampling="random", **{"augment flips": True, "augment elastic": 2.0})
    a, _ = datasets(cfg, seed=3)
    b, _ = datasets(cfg, seed=3)
    for i in range(len(a)):
        np.testing.assert_array_equal(a[i][0], b[i][0])
    first = a[0][0]
    a.on_epoch_end()
    assert not np.array_equal(a[0][0], first)
    c, _ = datasets(cfg, seed=4)
    assert not np.array_equal(c[0][0], first)


def test_config_seed_is_used_and_null_seed_is_random(project):
    a, _ = datasets(config(project, seed=11, sampling="random"), seed=None)
    b, _ = datasets(config(project, seed=11, sampling="random"), seed=None)
    assert a.seed == b.seed == 11
    c, _ = datasets(config(project, sampling="random"), seed=None)
    d, _ = datasets(config(project, sampling="random"), seed=None)
    assert c.seed != d.seed


def test_rotations_add_one_copy_per_angle(project):
    plain, _ = datasets(config(project))
    rotated, _ = datasets(config(project, paired(rotations=[90, 45])))
    assert len(rotated.items) == 3 * len(plain.items)
    angles = {rotated.patch_at(i).transform.angle for i in range(len(rotated.items))}
    assert angles == {0.0, 90.0, 45.0}


def test_jitter_stays_inside_the_region(project):
    train, _ = datasets(config(project, **{"patch jitter": [1, 10, 10]}))
    origins = np.array([train.patch_at(i).origin for i in range(len(train.items))])
    assert (origins >= 0).all() and (origins[:, 1:] <= 32).all() and (origins[:, 0] == 0).all()
    assert not np.array_equal(origins, train.items[:, 1:4])


def test_foreground_sampling_centres_patches_on_labels(project):
    train, _ = datasets(config(project, sampling="foreground", **{"foreground fraction": 1.0}))
    for i in range(len(train.items)):
        p = train.patch_at(i)
        assert p.label[1, 16, 16] != 0 or p.label[:, 14:19, 14:19].any()


def test_random_sampling_keeps_epoch_length(project):
    grid, _ = datasets(config(project))
    random, _ = datasets(config(project, sampling="random"))
    assert len(random) == len(grid)


def test_normalisation(project):
    train, _ = datasets(config(project, **{"normalize samples": True}))
    x, _ = train[0]
    np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(1, 2, 3)), 1, atol=1e-3)
    train, _ = datasets(config(project, **{"normalization percentiles": [1, 99.8]}))
    x, _ = train[0]
    assert -0.5 < x.min() and x.max() < 1.5


def test_per_source_settings_override_the_config(project):
    cfg = config(project, paired(stride=[0, 3, 32, 32]), stride=[0, 3, 16, 16])
    train, _ = datasets(cfg)
    assert len(train.items) == 2 * 1 * 2 * 2


def test_weighted_sources_give_sample_weights(project):
    weighted = {"source type": "weighted directories", "input folders": ["images"],
                "label folders": ["labels"], "weights folders": ["weights"],
                "labeller": "multiclass labels"}
    train, _ = datasets(config(project, weighted, paired(), stride=[0, 3, 16, 16]))
    x, y, w = train[0]
    assert w.shape == (4, 3, 32, 32) and w.dtype == np.float32
    # grid patches entirely in the zero-weight half are dropped: 6 of 9 per weighted image
    assert len(train.items) == 2 * 6 + 2 * 9
    weights_seen = [train.patch_at(i).weights for i in range(len(train.items))]
    assert all(v is None or v.any() for v in weights_seen)
    assert {float(v.max()) for v in weights_seen if v is not None} == {1.0, 2.5}


def test_validation_never_shares_a_pixel_with_training(tmp_path):
    """Validation blocks are bright; no training patch, even rotated or warped, sees them."""
    write_dataset(tmp_path, kind="2d", n_images=3, shape=(3, 96, 128))
    cfg = config(tmp_path, paired(rotations=[33]), **{
        "validation fraction": 0.2, "patch jitter": [0, 12, 12], "augment elastic": 5.0,
        "augment flips": True, "augment rotate 90": True})
    train, val = datasets(cfg)
    assert val is not None and len(val.items) > 0
    for v in train.volumes:
        v.image[:] = 0
    for plan in val.plans:
        train.volumes[plan.region.volume].image[(slice(None), *plan.region.slices())] = 1000
    for _epoch in range(2):
        for i in range(len(train)):
            x, _ = train[i]
            assert x.max() == 0
        train.on_epoch_end()
    for i in range(len(val)):
        assert val[i][0].min() == 1000


def test_validation_is_fixed_and_unaugmented(project):
    cfg = config(project, **{"validation fraction": 0.3, "augment flips": True})
    train, val = datasets(cfg)
    first = [val[i][0] for i in range(len(val))]
    val.on_epoch_end()
    for i, x in enumerate(first):
        np.testing.assert_array_equal(val[i][0], x)
    assert all(val.patch_at(i).transform.k90 == 0 for i in range(len(val.items)))


def test_split_is_stable_without_a_seed(project):
    cfg = config(project, **{"validation fraction": 0.3})
    a = datasets(cfg, seed=None)[1]
    b = datasets(cfg, seed=None)[1]
    assert [p.region for p in a.plans] == [p.region for p in b.plans]


def test_batch_size_must_be_positive(project):
    with pytest.raises(UnetslError, match="batch size"):
        datasets(config(project), batch_size=0)


def test_workers_are_passed_to_pydataset(project):
    train, val = datasets(config(project, **{"validation fraction": 0.3}), workers=2,
                          use_multiprocessing=True, max_queue_size=3)
    assert (train.workers, train.use_multiprocessing, train.max_queue_size) == (2, True, 3)
    assert val.workers == 2


def test_keras_reads_the_same_batches_with_worker_threads(project):
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    cfg = config(project, **{"augment flips": True})
    threaded, _ = datasets(cfg, workers=2)
    plain, _ = datasets(cfg)
    adapter = PyDatasetAdapter(threaded, shuffle=False)
    adapter.on_epoch_begin()
    batches = list(adapter.get_numpy_iterator())
    adapter.on_epoch_end()
    assert len(batches) == len(plain)
    for i, (x, y) in enumerate(batches):
        np.testing.assert_array_equal(x, plain[i][0])
        np.testing.assert_array_equal(y, plain[i][1])


def test_fit_a_unet_with_and_without_weights(project):
    import keras

    from unetsl.nets.unet import build_unet

    keras.utils.set_random_seed(0)
    model = build_unet(PATCH, n_labels=2, depth=2, n_filters=4)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    train, val = datasets(config(project, **{"validation fraction": 0.3}), batch_size=2)
    history = model.fit(train, validation_data=val, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and "val_loss" in history.history
    weighted = {"source type": "weighted directories", "input folders": ["images"],
                "label folders": ["labels"], "weights folders": ["weights"],
                "labeller": "multiclass labels"}
    train, _ = datasets(config(project, weighted), batch_size=2)
    history = model.fit(train, epochs=1, verbose=0, steps_per_epoch=2)
    assert np.isfinite(history.history["loss"][0])


def test_zero_weight_data(tmp_path, caplog):
    """All-zero weights: no training patches is an error, no validation patches a warning."""
    import logging

    from unetsl.data.sampling import split_regions

    write_dataset(tmp_path, kind="2d", n_images=2, shape=(3, 32, 32))
    (tmp_path / "weights").mkdir()
    for i, value in enumerate((1.0, 0.0)):  # image 1 has zero weight everywhere
        tifffile.imwrite(tmp_path / "weights" / f"epi-00{i}.tif",
                         np.full((3, 32, 32), value, np.float32), imagej=True,
                         metadata={"axes": "TYX"})
    weighted = {"source type": "weighted directories", "input folders": ["images"],
                "label folders": ["labels"], "weights folders": ["weights"],
                "labeller": "multiclass labels"}
    shapes = [(3, 32, 32)] * 2
    held = {s: split_regions(shapes, (3, 32, 32), 0.5, "files", s)[1][0].volume for s in range(20)}
    seed_b = next(s for s, v in held.items() if v == 1)  # the zero-weight image validates
    seed_a = next(s for s, v in held.items() if v == 0)  # the zero-weight image trains
    cfg = config(tmp_path, weighted, **{"validation fraction": 0.5, "validation split": "files"})
    with caplog.at_level(logging.WARNING, logger="unetsl"):
        train, val = datasets(cfg, seed=seed_b)
    assert val is None and "no validation patches" in caplog.text and len(train.items) > 0
    with pytest.raises(UnetslError, match="no training patches"):
        datasets(cfg, seed=seed_a)


def test_patches_per_epoch_fixes_the_epoch_and_cycles_through_every_patch(project):
    """A fixed number of draws an epoch, whatever the data (issue 27): 18 grid patches,
    10 draws an epoch in batches of 4 -> 3 batches (12 draws); 3 epochs = 36 draws = every
    patch exactly twice, and a patch drawn twice gets two different augmentations."""
    keys = {"stride": [0, 3, 16, 16], "patch jitter": [0, 8, 8], "patches per epoch": 10}
    train, _ = datasets(config(project, **keys))
    assert len(train.items) == 18 and len(train) == 3
    drawn, looks = [], {}
    for epoch in range(3):
        train.epoch = epoch
        items, draws = train._order()
        assert len(items) == 12
        drawn += items.tolist()
        for item, draw in zip(items, draws):
            looks.setdefault(int(item), set()).add(train.patch_at(int(item), int(draw)).origin)
    assert sorted(drawn) == sorted(list(range(18)) * 2)
    assert sum(len(origins) > 1 for origins in looks.values()) >= 12  # jitter per draw
    again, _ = datasets(config(project, **keys))
    again.epoch = 2
    np.testing.assert_array_equal(again[1][0], train[1][0])  # a pure function of the seed


def test_without_patches_per_epoch_an_epoch_is_one_sweep(project):
    """null keeps the original's epoch: every patch once, shuffled by (seed, epoch)."""
    train, _ = datasets(config(project, stride=[0, 3, 16, 16]), seed=5)
    train.epoch = 3
    items, draws = train._order()
    expected = np.random.default_rng([5, 3]).permutation(18)
    np.testing.assert_array_equal(items, np.concatenate([expected, expected[:2]]))
    assert (draws == 3).all()
    validation_keys = {"validation fraction": 0.25, "patches per epoch": 1000}
    _, val = datasets(config(project, **validation_keys))
    assert len(val) == -(-len(val.items) // 4)  # validation is never resampled


@pytest.mark.parametrize("sampling", ["grid", "random", "foreground"])
def test_no_training_patch_touches_a_validation_block(project, sampling):
    """Training patches go anywhere around the validation blocks of their image, never onto
    them: with jitter, random and foreground draws, and with warps (elastic), which read only
    inside their own patch box there."""
    keys = {"validation fraction": 0.25, "sampling": sampling, "patch jitter": [0, 16, 16],
            "stride": [0, 3, 8, 8], "augment elastic": 4.0}
    train, val = datasets(config(project, **keys))
    held = {}
    for region in val.plans:
        held.setdefault(region.region.volume, []).append(region.region)
    assert any(plan.region.held for plan in train.plans)
    for epoch in range(2):
        train.epoch = epoch
        for item in range(len(train.items)):
            patch = train.patch_at(item)
            for block in held.get(patch.volume, []):
                inside = all(o < b and o + p > a for o, p, a, b in
                             zip(patch.origin, PATCH[1:], block.start, block.stop))
                assert not inside, (patch.origin, block)
