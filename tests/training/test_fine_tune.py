"""Issue 30, items 2 and 3: partial labels ("unknown label") and train_model --from.

Real tiny U-Nets trained on small synthetic TIFFs on the CPU (as tests/training/test_train.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from unetsl.config.model_config import Config
from unetsl.data.dataset import make_datasets
from unetsl.data.dataset_options import DatasetOptions
from unetsl.data.volumes import load_volumes
from unetsl.errors import UnetslError
from unetsl.io.tiff import read_image, write_image
from unetsl.nets.losses import get_loss
from unetsl.nets.model_files import load_model
from unetsl.training.logs import read_log
from unetsl.training.metrics import ChannelF1, VoxelWeightedLoss
from unetsl.training.train import train

from .test_train import make_project, optimizer_value, paired


def _mark_unknown(root: Path, folder: str, keep_columns: int) -> None:
    """Copy labels/ to ``folder`` with every column from ``keep_columns`` on unknown (255)."""
    (root / folder).mkdir()
    for path in sorted((root / "labels").glob("*.tif")):
        label = read_image(path).data.copy()
        assert label.dtype == np.uint8 and label.max() < 255
        label[..., keep_columns:] = 255
        write_image(root / folder / path.name, label)


def test_unknown_label_voxels_get_label_0_and_weight_0(tmp_path):
    cfg = make_project(tmp_path)
    _mark_unknown(tmp_path, "partial", keep_columns=12)
    cfg.update({"data sources": [paired("partial")]})
    volumes = load_volumes(cfg, patch_shape=(1, 3, 16, 16), n_labels=2)
    plain = load_volumes(make_project(tmp_path), patch_shape=(1, 3, 16, 16), n_labels=2)
    for partial, full in zip(volumes, plain):
        assert partial.weights is not None
        assert (partial.weights[..., :12] == 1).all() and (partial.weights[..., 12:] == 0).all()
        assert (partial.label[..., 12:] == 0).all()
        np.testing.assert_array_equal(partial.label[..., :12], full.label[..., :12])
    cfg.update({"unknown label": "none"})  # 255 is then a label like any other
    labelled = load_volumes(cfg, patch_shape=(1, 3, 16, 16), n_labels=2)
    assert labelled[0].weights is None and labelled[0].label.max() == 255
    cfg.update({"unknown label": 1})  # or another value: here the membranes
    ones = load_volumes(cfg, patch_shape=(1, 3, 16, 16), n_labels=2)
    assert (ones[0].weights[..., :12] == (plain[0].label[..., :12] != 1)).all()
    assert (ones[0].weights[..., 12:] == 1).all() and (ones[0].weights == 0).any()


def test_training_patches_avoid_unknown_regions(tmp_path):
    """Grid patches wholly inside the unknown part are never drawn."""
    cfg = make_project(tmp_path, **{"validation fraction": 0.0})
    _mark_unknown(tmp_path, "partial", keep_columns=12)
    full, _ = make_datasets(DatasetOptions.from_config(cfg), patch_shape=(1, 3, 16, 16),
                            n_labels=2, output_names=None, batch_size=2, seed=1)
    cfg.update({"data sources": [paired("partial")]})
    part, _ = make_datasets(DatasetOptions.from_config(cfg), patch_shape=(1, 3, 16, 16),
                            n_labels=2, output_names=None, batch_size=2, seed=1)
    # x origins 0, 8, 16 of a 32-wide image: the patch at 16 sees only unknown columns
    assert set(full.items[:, 3]) == {0, 8, 16} and set(part.items[:, 3]) == {0, 8}
    x, y, weights = part[0]
    assert weights.shape == x.shape[:-1] and set(np.unique(weights)) <= {0.0, 1.0}


def test_unknown_voxels_change_neither_the_loss_nor_the_f1():
    rng = np.random.default_rng(0)
    truth = (rng.random((2, 3, 16, 16, 2)) > 0.6).astype("float32")
    known = np.ones((2, 3, 16, 16), "float32")
    known[..., 10:] = 0
    guess = rng.random(truth.shape).astype("float32")
    other = guess.copy()
    other[..., 10:, :] = 1 - other[..., 10:, :]  # a different guess where labels are unknown
    changed = guess.copy()
    changed[..., :10, :] = 1 - changed[..., :10, :]  # ... and where they are known
    for name in ("unetsl.model.sorensenDiceCoefLoss", "keras.losses.binary_crossentropy"):
        loss = VoxelWeightedLoss(get_loss(name))
        values = [float(loss(truth, g, sample_weight=known)) for g in (guess, other, changed)]
        assert values[0] == pytest.approx(values[1], rel=1e-6), name
        assert abs(values[0] - values[2]) > 1e-3, name
    scores = []
    for g in (guess, other, changed):
        f1 = ChannelF1(0)
        f1.update_state(truth, g, sample_weight=known)
        scores.append(float(f1.result()))
    assert scores[0] == pytest.approx(scores[1]) and scores[0] != pytest.approx(scores[2])


def test_a_patch_share_gives_the_added_source_half_the_patches(tmp_path):
    cfg = make_project(tmp_path, **{"validation fraction": 0.0})
    _mark_unknown(tmp_path, "partial", keep_columns=32)  # nothing unknown: a plain copy
    few = dict(paired("partial"), **{"input folders": ["few"], "patch share": 0.5})
    (tmp_path / "few").mkdir()
    shutil.copy(sorted((tmp_path / "images").glob("*.tif"))[0], tmp_path / "few")
    (tmp_path / "partial" / sorted(p.name for p in (tmp_path / "images").glob("*.tif"))[1]
     ).unlink()
    sources = [paired(), paired(), paired(), few]  # three times the data, and one image
    cfg.update({"data sources": sources})
    data, _ = make_datasets(DatasetOptions.from_config(cfg), patch_shape=(1, 3, 16, 16),
                            n_labels=2, output_names=None, batch_size=2, seed=1)
    added = [p for p, plan in enumerate(data.plans) if plan.options.share]
    share = np.isin(data.items[:, 0], added).mean()
    assert 0.4 <= share <= 0.6  # 18 of 36 patches on an AMD EPYC (1 of 7 images)
    cfg.update({"data sources": [paired(), dict(few, **{"patch share": 1.5})]})
    with pytest.raises(Exception, match='"patch share" must be a number between 0 and 1'):
        DatasetOptions.from_config(cfg)


def test_train_model_from_fine_tunes_into_tuned_files(tmp_path, run_script):
    """--from starts from the model's weights, a tenth of its learning rate, "fine-tuning
    steps" steps, with --data added for the run; the model it started from is untouched."""
    cfg = make_project(tmp_path)
    train(cfg, progress="none")
    best = tmp_path / "m-best.h5"
    before = best.read_bytes()
    _mark_unknown(tmp_path, "partial", keep_columns=12)
    result = run_script("train_model", "-c", "m.json", "-b", "--from", "m-best.h5",
                        "--data", "images", "partial", "-D", "fine-tuning steps=6",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "m-tuned-latest.h5" in result.stdout and best.read_bytes() == before
    tuned = tmp_path / "m-tuned-latest.h5"
    assert optimizer_value(tuned, "iteration") == 6
    assert optimizer_value(tuned, "learning_rate") == pytest.approx(0.001)  # 0.01 / 10
    start, end = load_model(best), load_model(tuned)
    moved = [np.abs(a - b).max() for a, b in zip(start.get_weights(), end.get_weights())]
    fresh = load_model(tmp_path / "m.h5")
    apart = [np.abs(a - b).max() for a, b in zip(fresh.get_weights(), end.get_weights())]
    assert 0 < max(moved) < max(apart)  # it moved, from the trained weights
    log = sorted(tmp_path.glob("training-log_m-*.txt"))[-1]
    text = log.read_text()
    assert "--from m-best.h5" in text and "--data images partial" in text
    assert read_log(log)[1]  # epoch rows were written
    assert Config.load(tmp_path / "m.json")["data sources"] == [paired()]  # not saved


def test_from_a_missing_model_is_one_line(tmp_path, run_script, assert_one_line_error):
    make_project(tmp_path)
    result = run_script("train_model", "-c", "m.json", "-b", "--from", "nope.h5", cwd=tmp_path)
    assert_one_line_error(result, "--from: model file nope.h5 does not exist")
    result = run_script("train_model", "-c", "m.json", "-b", "--data", "images", "nothing",
                        cwd=tmp_path)
    assert_one_line_error(result, "--data:", "nothing does not exist")


def test_the_originals_model_fine_tunes(compat, tmp_path):
    """A model file the original wrote is a valid --from."""
    for folder in ("images", "labels"):
        shutil.copytree(compat / folder, tmp_path / folder)
    shutil.copy(compat / "trained-2d.json", tmp_path / "t.json")
    cfg = Config.load(tmp_path / "t.json")
    cfg.update({"fine-tuning steps": 2, "validation fraction": 0.0})
    keras.utils.set_random_seed(0)
    result = train(cfg, progress="none", start_from=compat / "trained-2d-best.h5")
    assert result.paths.best.name == "t-tuned-best.h5" and result.epochs_done == 1
    assert optimizer_value(tmp_path / "t-tuned-latest.h5", "iteration") == 2


def test_train_model_correct_turns_corrected_cells_into_partial_labels(tmp_path, run_script,
                                                                       assert_one_line_error):
    """--correct IMAGE CELLS IDS: the CLI side of correct and retrain."""
    from scipy import ndimage as ndi

    from unetsl.data.corrections import UNKNOWN, correction_labels

    make_project(tmp_path)
    name = sorted(p.name for p in (tmp_path / "images").glob("*.tif"))[0]
    membrane = read_image(tmp_path / "labels" / name).data[:, 0]
    cells = np.stack([ndi.label(frame == 0)[0] for frame in membrane]).astype(np.uint16)
    write_image(tmp_path / "cells.tif", cells[:, None])
    result = run_script("train_model", "-c", "m.json", "-b", "--from", "m.h5", "--correct",
                        f"images/{name}", "cells.tif", "2,5", "-D", "fine-tuning steps=2",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = read_image(tmp_path / "corrections" / "labels" / name).data[:, 0]
    np.testing.assert_array_equal(written, correction_labels(cells, [2, 5],
                                                             "multiclass labels"))
    assert (written == UNKNOWN).mean() > 0.5 and (written == 1).any()
    assert optimizer_value(tmp_path / "m-tuned-latest.h5", "iteration") == 2
    bad = run_script("train_model", "-c", "m.json", "-b", "--correct", f"images/{name}",
                     "cells.tif", "2,999", cwd=tmp_path)
    assert_one_line_error(bad, "--correct: cells.tif has no cell 999")
    bad = run_script("train_model", "-c", "m.json", "-b", "--correct", f"images/{name}",
                     "cells.tif", "2,0", cwd=tmp_path)
    assert_one_line_error(bad, "--correct: give the ids (>= 1)")
    bad = run_script("train_model", "-c", "m.json", "-b", "--correct", f"images/{name}",
                     "cells.tif", "-999", cwd=tmp_path)  # a leading minus is a value here
    assert_one_line_error(bad, "--correct: cells.tif has no cell 999")


def test_correct_minus_id_erases_a_false_cell(tmp_path):
    """--correct ... 2,-5: cell 5 is a false cell, its pixels (and ring) known background,
    as the Review widget's Done on a deleted cell."""
    from scipy import ndimage as ndi

    from unetsl.config.model_config import Config
    from unetsl.data.corrections import UNKNOWN, correction_labels
    from unetsl.training.fine_tune import parse_cell_ids, with_corrections

    assert parse_cell_ids("3, 17,-42") == ([3, 17], [42])
    with pytest.raises(UnetslError, match="cell 5 is given as corrected and as false"):
        parse_cell_ids("5,2,-5")
    make_project(tmp_path)
    name = sorted(p.name for p in (tmp_path / "images").glob("*.tif"))[0]
    membrane = read_image(tmp_path / "labels" / name).data[:, 0]
    cells = np.stack([ndi.label(frame == 0)[0] for frame in membrane]).astype(np.uint16)
    write_image(tmp_path / "cells.tif", cells[:, None])
    cfg = with_corrections(Config.load(tmp_path / "m.json"),
                           [(str(tmp_path / "images" / name), str(tmp_path / "cells.tif"),
                             "2,-5")])
    written = read_image(tmp_path / "corrections" / "labels" / name).data[:, 0]
    expected = correction_labels(np.where(cells == 5, 0, cells), [2], "multiclass labels",
                                 erased=cells == 5)
    np.testing.assert_array_equal(written, expected)
    assert (written[cells == 5] == 0).all()  # known: no membrane, no cell
    assert (written[cells == 7] == UNKNOWN).all()  # a cell nobody looked at
    assert cfg["data sources"][-1]["unknown label"] == "max"
