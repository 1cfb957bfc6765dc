"""train / train_model: files, logs, resume, interruption, weights, metrics, bad configs.

Every test trains a real, tiny U-Net (2 filters, depth 2, 16x16 patches) on small synthetic
TIFFs in a temporary folder, on the CPU.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tifffile

from unetsl.config.model_config import Config
from unetsl.data.synthetic import write_dataset
from unetsl.errors import UnetslError
from unetsl.nets.losses import get_loss
from unetsl.nets.model_files import load_model, save_model
from unetsl.nets.unet import build_cascade, build_unet
from unetsl.training.checkpoints import (
    TrainingState,
    read_state,
    restore_optimizer_state,
    save_checkpoint,
)
from unetsl.training.logs import read_log
from unetsl.training.metrics import BinaryAccuracy, VoxelAccuracy, VoxelWeightedLoss
from unetsl.training.setup import compile_model
from unetsl.training.train import train


def script(name: str) -> str:
    """The console script of the running interpreter's environment."""
    return str(Path(sys.executable).parent / name)

PATCH = [1, 3, 16, 16]
TINY = dict(n_labels=2, depth=2, n_filters=2, pooling=(1, 2, 2))


def paired(labels: str = "labels", labeller: str = "multiclass labels") -> dict:
    return {"source type": "paired directories", "input folders": ["images"],
            "label folders": [labels], "labeller": labeller}


def make_project(root: Path, *, n_images: int = 2, shape=(3, 32, 32), cascade: int = 0,
                 **keys) -> Config:
    """Images, labels, a config m.json and the untrained model m.h5 in ``root``."""
    if not (root / "images").is_dir():
        write_dataset(root, "2d", n_images=n_images, shape=shape, seed=5, distance=False)
    cfg = Config(path=root / "m.json")
    cfg.update({"input shape": PATCH, "depth": 2, "n filters": 2, "n labels": 2,
                "stride": [0, 3, 8, 8], "batch size": 2, "epochs": 2, "seed": 7,
                "validation fraction": 0.25, "initial learning rate": 0.01,
                "spatial dropout rate": 0.0, "data sources": [paired()]})
    cfg.update(keys)
    cfg.save()
    keras.utils.set_random_seed(1)
    if cascade:
        model = build_cascade(PATCH, cascade, **TINY, spatial_dropout_rate=0.0)
    else:
        model = build_unet(PATCH, **TINY, spatial_dropout_rate=0.0)
    save_model(model, cfg.model_path)
    return cfg


def epoch_rows(path: Path) -> tuple[list[str], list[list[float]]]:
    return read_log(path)


def optimizer_value(path: Path, name: str) -> float:
    """A scalar optimizer variable (e.g. "iteration") as saved in an .h5 model file."""
    with h5py.File(path) as f:
        group = f["optimizer_weights"]
        names = [n.decode() if isinstance(n, bytes) else str(n)
                 for n in group.attrs["weight_names"]]
        match = [n for n in names if n.split("/")[-1] == name]
        return float(np.asarray(group[match[0]]))


def data_lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]


# ------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two epochs on 4 small time series, with a sample predicted every epoch."""
    root = tmp_path_factory.mktemp("trained")
    cfg = make_project(root, n_images=4, **{"samples to predict": ["images/epi-000.tif"]})
    result = train(cfg, progress="none")
    return cfg, result


def test_two_epochs_loss_falls(trained):
    cfg, result = trained
    keys, rows = epoch_rows(result.epoch_log)
    assert [r[0] for r in rows] == [0, 1]
    loss = keys.index("loss") + 1
    assert rows[1][loss] < rows[0][loss], rows
    assert result.epochs_done == 2 and result.interrupted is None
    assert result.monitor == "val_loss"


def test_files_have_the_original_names_and_headers(trained):
    cfg, result = trained
    root = cfg.folder
    rid = result.run_id
    assert len(rid) >= 8 and int(rid, 16) > 0 and rid == rid.lower()
    assert result.epoch_log == root / f"training-log_m-{rid}.txt"
    assert result.batch_log == root / f"batch-log_m-{rid}.txt"
    snapshot = root / f"training-log_m-{rid}.json"
    assert snapshot.read_text() == cfg.to_json()
    for name in ("m-latest.h5", "m-best.h5", "m-curves.png"):
        assert (root / name).is_file(), name

    epoch = result.epoch_log.read_text().splitlines()
    assert epoch[0] == "#training model: m.h5"
    assert epoch[1].startswith("#input: ") and epoch[2].startswith("#output: ")
    assert epoch[3].startswith("#optimiser: <keras") and "Adam" in epoch[3]
    assert epoch[4] == "#epoch\taccuracy\tbinary_accuracy\tloss\tval_accuracy\t" \
                      "val_binary_accuracy\tval_loss\tf1_0\tf1_1\tval_f1_0\tval_f1_1"
    assert len(data_lines(result.epoch_log)) == 2
    for line in data_lines(result.epoch_log):
        fields = line.split("\t")
        assert len(fields) == 11  # the epoch, the original's 6 columns, 4 F1 columns
        assert all(f == str(float(f)) for f in fields[1:])

    batch = result.batch_log.read_text().splitlines()
    assert [ln.split(":")[0] for ln in batch[:3]] == ["#input", "#output", "#optimiser"]
    assert batch[3] == "#batch_number\t2.accuracy\t3.binary_accuracy\t4.loss"
    rows = data_lines(result.batch_log)
    state = read_state(root / "m-latest.h5")
    assert state.batches_done == len(rows) and len(rows) % 2 == 0
    assert [int(r.split("\t")[0]) for r in rows] == list(range(len(rows)))


def test_latest_and_best_are_full_models(trained):
    cfg, result = trained
    from unetsl.predict.engine import predict

    image = tifffile.imread(cfg.folder / "images" / "epi-001.tif").astype(np.float32)
    for name in ("m-latest.h5", "m-best.h5"):
        model = load_model(cfg.folder / name)
        probs = predict(model, image[None])  # (c, z, y, x): time as depth
        assert probs.shape == (2, 3, 32, 32)
    with h5py.File(cfg.folder / "m-latest.h5") as f:
        assert "optimizer_weights" in f
    state = read_state(cfg.folder / "m-best.h5")
    assert state.best == result.best and state.best_epoch == result.best_epoch
    keys, rows = epoch_rows(result.epoch_log)
    column = keys.index("val_loss") + 1  # after the epoch number
    assert result.best == min(r[column] for r in rows)  # best by val_loss


def test_samples_predicted_every_epoch(trained):
    cfg, result = trained
    names = sorted(p.name for p in (cfg.folder / "predictions").iterdir())
    assert names == [f"pred-m-e{n}-epi-000.tif" for n in range(3)]
    with tifffile.TiffFile(cfg.folder / "predictions" / names[-1]) as tif:
        assert tif.asarray().shape[-2:] == (32, 32)


# -------------------------------------------------------------------------------- resume


def test_resume_continues_at_next_epoch_with_optimizer_state(tmp_path):
    cfg = make_project(tmp_path, epochs=1)
    first = train(cfg, progress="none")
    steps = read_state(cfg.sibling("-latest.h5")).batches_done
    cfg["epochs"] = 3
    out = io.StringIO()
    second = train(cfg, resume=True, progress="lines", stream=out)
    printed = out.getvalue().splitlines()  # one line per epoch when not on a terminal
    assert len(printed) == 2 and printed[0].startswith("epoch 2/3 ")
    assert "  val_loss " in printed[0] and "  val_f1_0/1 " in printed[0]
    assert second.run_id != first.run_id
    lines = second.epoch_log.read_text().splitlines()
    assert lines[0] == "#training model: m-latest.h5"
    assert any(ln.startswith("#resumed: m-latest.h5 at epoch 1") for ln in lines)
    _, rows = epoch_rows(second.epoch_log)
    assert [r[0] for r in rows] == [1, 2]
    state = read_state(cfg.sibling("-latest.h5"))
    assert state.epochs_done == 3 and state.batches_done == 3 * steps
    assert state.run_ids == [first.run_id, second.run_id]
    assert int(data_lines(second.batch_log)[0].split("\t")[0]) == steps
    assert int(optimizer_value(cfg.sibling("-latest.h5"), "iteration")) == 3 * steps
    column = epoch_rows(first.epoch_log)[0].index("val_loss") + 1
    all_losses = [r[column] for r in epoch_rows(first.epoch_log)[1] + rows]
    assert second.best == min(all_losses)  # best-so-far kept across runs


def test_resume_when_all_epochs_done_trains_nothing(tmp_path):
    cfg = make_project(tmp_path, epochs=1)
    train(cfg, progress="none")
    before = cfg.sibling("-latest.h5").stat().st_mtime_ns
    result = train(cfg, resume=True, progress="none")
    assert result.epochs_done == 1 and result.run_id is None
    assert cfg.sibling("-latest.h5").stat().st_mtime_ns == before


def test_optimizer_state_round_trip_h5_and_keras(tmp_path):
    x = np.random.default_rng(0).random((4, 3, 16, 16, 1), dtype=np.float32)
    y = (x > 0.5).astype(np.float32).repeat(2, axis=-1)
    cfg = Config()
    for suffix in (".h5", ".keras"):
        model = build_unet(PATCH, **TINY)
        compile_model(model, cfg)
        model.fit(x, y, batch_size=2, epochs=1, verbose=0)
        path = save_checkpoint(model, tmp_path / f"c{suffix}", TrainingState(epochs_done=1))
        assert read_state(path).epochs_done == 1  # stored inside the model file
        again = load_model(path)
        compile_model(again, cfg)
        assert restore_optimizer_state(again, path)
        for a, b in zip(model.optimizer.variables, again.optimizer.variables):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert int(again.optimizer.iterations.numpy()) == 2
        again.fit(x, y, batch_size=2, epochs=1, verbose=0)  # the restored optimizer works


# --------------------------------------------------------------------------- interruption


@pytest.mark.parametrize("signum", [
    signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_signal_mid_epoch_saves_a_loadable_latest(tmp_path, signum):
    # 2 x 625 patches of batch 1: an epoch takes many seconds, the signal lands inside it
    cfg = make_project(tmp_path, shape=(3, 64, 64), epochs=50, **{
        "batch size": 1, "stride": [0, 3, 2, 2], "validation fraction": 0.0})
    proc = subprocess.Popen([script("train_model"), "-c", str(cfg.path), "-b"], cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        batch_logs: list[Path] = []
        while time.monotonic() < deadline and proc.poll() is None:
            batch_logs = list(tmp_path.glob("batch-log_m-*.txt"))
            if batch_logs and len(data_lines(batch_logs[0])) >= 3:
                break
            time.sleep(0.05)
        assert batch_logs, "training did not start"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, err
    assert f"{signal.Signals(signum).name} received" in err
    assert "--resume" in err and "Traceback" not in err
    latest = tmp_path / "m-latest.h5"
    model = load_model(latest)
    assert model_output_channels(model) == 2
    state = read_state(latest)
    assert state.interrupted and state.epochs_done == 0
    assert 3 <= state.batches_done < 1250
    assert len(data_lines(batch_logs[0])) == state.batches_done
    assert not list(tmp_path.glob(".m-latest-*"))  # no temporary file left behind


def test_batch_snapshot_at_batch_5000(tmp_path):
    from unetsl.training.checkpoints import BATCH_SNAPSHOT_AT, Checkpointer, TrainingState

    model = build_unet(PATCH, **TINY)
    compile_model(model, Config())
    state = TrainingState(batches_done=BATCH_SNAPSHOT_AT - 1)
    cb = Checkpointer(state, tmp_path / "l.h5", tmp_path / "b.h5",
                      batch_snapshot=tmp_path / "m-batch.h5")
    cb.set_model(model)
    cb.on_train_batch_end(0)
    assert not (tmp_path / "m-batch.h5").exists()
    state.batches_done += 1  # the batch log counts the batch first
    cb.on_train_batch_end(1)
    assert load_model(tmp_path / "m-batch.h5").count_params() == model.count_params()


def model_output_channels(model) -> int:
    return int(model.outputs[-1].shape[-1])


def test_train_on_given_datasets(tmp_path):
    """Any Keras PyDataset can be trained on (scripts, benchmarks): no data sources needed."""

    class Batches(keras.utils.PyDataset):
        def __init__(self, n):
            super().__init__()
            rng = np.random.default_rng(n)
            self.x = rng.random((n, 2, 3, 16, 16, 1), dtype=np.float32)
            self.y = (self.x > 0.6).astype(np.float32).repeat(2, axis=-1)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i], self.y[i]

    cfg = make_project(tmp_path, epochs=1, **{"data sources": []})
    result = train(cfg, datasets=(Batches(3), Batches(1)), progress="none")
    assert result.epochs_done == 1 and len(data_lines(result.batch_log)) == 3
    assert result.monitor == "val_loss"


# ----------------------------------------------------------------------- weights, cascade


def test_voxel_weights_change_the_loss():
    rng = np.random.default_rng(1)
    y_true = (rng.random((2, 3, 16, 16, 2)) > 0.5).astype(np.float32)
    y_pred = rng.random((2, 3, 16, 16, 2)).astype(np.float32)
    ones = np.ones((2, 3, 16, 16), np.float32)
    half = ones.copy()
    half[:, :, :, 8:] = 0
    for name in ("unetsl.model.sorensenDiceCoefLoss", "keras.losses.binary_crossentropy"):
        loss = VoxelWeightedLoss(get_loss(name))
        plain = float(loss(y_true, y_pred))
        assert float(loss(y_true, y_pred, ones)) == pytest.approx(plain, rel=1e-6)
        masked = float(loss(y_true, y_pred, half))
        assert masked != pytest.approx(plain, rel=1e-3), name
        if name.endswith("DiceCoefLoss"):  # weight 0 = the voxels are not there at all
            left = float(loss(y_true[..., :8, :], y_pred[..., :8, :]))
            assert masked == pytest.approx(left, rel=1e-5)
    # per-patch weights go to Keras unchanged
    loss = VoxelWeightedLoss(get_loss("unetsl.model.sorensenDiceCoefLoss"))
    assert float(loss(y_true, y_pred, np.array([1.0, 0.0], np.float32))) == pytest.approx(
        float(loss(y_true[:1], y_pred[:1])) / 2, rel=1e-5)


def test_weighted_source_trains_with_weighted_loss(tmp_path):
    cfg = make_project(tmp_path, epochs=1, **{"validation fraction": 0.0})
    (tmp_path / "weights").mkdir()
    for path in sorted((tmp_path / "images").iterdir()):
        w = np.ones((3, 32, 32), np.float32)
        w[:, :, 16:] = 0
        tifffile.imwrite(tmp_path / "weights" / path.name, w, imagej=True,
                         metadata={"axes": "TYX"})
    cfg["data sources"] = [{**paired(), "source type": "weighted directories",
                            "weights folders": ["weights"]}]
    result = train(cfg, progress="none")
    model = load_model(cfg.sibling("-latest.h5"), compile=True)
    assert isinstance(model.loss, VoxelWeightedLoss)
    # no validation data: the best model is chosen by the training loss
    assert result.monitor == "loss"
    keys, rows = epoch_rows(result.epoch_log)
    assert keys == ["accuracy", "binary_accuracy", "loss", "f1_0", "f1_1"]
    assert result.best == rows[0][3]


def test_cascade_logs_use_the_readme_layout(tmp_path):
    cfg = make_project(tmp_path, cascade=2, epochs=1)
    result = train(cfg, progress="none")
    header = [ln for ln in result.batch_log.read_text().splitlines()
              if ln.startswith("#batch_number")][0].split("\t")
    assert header == ["#batch_number", "batch",
                      "cascade_0_accuracy", "cascade_0_binary_accuracy", "cascade_0_loss",
                      "cascade_1_accuracy", "cascade_1_binary_accuracy", "cascade_1_loss",
                      "loss", "size"]
    for x in range(2):  # the README's rule: output X's triple starts at column 2 + 3X
        assert header[2 + 3 * x] == f"cascade_{x}_accuracy"
    first = data_lines(result.batch_log)[0].split("\t")
    assert first[:2] == ["0", "0"] and first[-1] == "2"
    epoch = [ln for ln in result.epoch_log.read_text().splitlines() if ln.startswith("#epoch")]
    keys = epoch[0].split("\t")[1:]
    original = [k for k in keys if "_f1_" not in k]  # the per-channel F1 columns come last
    assert keys[:len(original)] == original
    assert original == sorted(original) and original[0] == "cascade_0_accuracy"
    assert original[-1] == "val_loss"
    assert keys.index("loss") == 6 and keys[7] == "val_cascade_0_accuracy"


# --------------------------------------------------------------------------------- metrics


def test_accuracy_means_right_labels_per_voxel():
    t = np.zeros((1, 1, 2, 2, 2), np.float32)
    t[..., 0] = [[1, 0], [0, 0]]
    t[..., 1] = [[1, 1], [0, 0]]
    p = t.copy()
    p[0, 0, 0, 0, 1] = 0.2  # one channel of one voxel wrong
    multi = VoxelAccuracy("multiclass")
    multi.update_state(t, p)
    assert float(multi.result()) == pytest.approx(0.75)  # 3 of 4 voxels fully right
    binary = BinaryAccuracy()
    binary.update_state(t, p)
    assert float(binary.result()) == pytest.approx(7 / 8)  # 7 of 8 channel values right

    onehot = np.zeros((1, 1, 1, 4, 3), np.float32)
    onehot[0, 0, 0, np.arange(4), [0, 1, 2, 2]] = 1
    guess = np.full_like(onehot, 0.1)
    guess[0, 0, 0, np.arange(4), [0, 1, 2, 0]] = 0.8
    cat = VoxelAccuracy("categorical")
    cat.update_state(onehot, guess)
    assert float(cat.result()) == pytest.approx(0.75)

    lin = VoxelAccuracy("linear")
    lin.update_state(np.array([[[[[1.0], [3.0]]]]]), np.array([[[[[1.2], [4.0]]]]]))
    assert float(lin.result()) == pytest.approx(0.5)


def test_compiled_model_with_metrics_saves_and_reloads(tmp_path):
    model = build_unet(PATCH, **{**TINY, "activation": "softmax"})
    compile_model(model, Config(), weighted=True)
    x = np.zeros((2, 3, 16, 16, 1), np.float32)
    y = np.zeros((2, 3, 16, 16, 2), np.float32)
    y[..., 1] = 1
    model.fit(x, y, sample_weight=np.ones((2, 3, 16, 16), np.float32), verbose=0)
    save_model(model, tmp_path / "s.h5")
    again = load_model(tmp_path / "s.h5", compile=True)
    logs = again.evaluate(x, y, verbose=0, return_dict=True)
    assert set(logs) == {"accuracy", "binary_accuracy", "loss", "f1_0", "f1_1"}


# ----------------------------------------------------------------------------- bad input


def test_bad_configs_fail_with_one_line(tmp_path):
    cfg = make_project(tmp_path, **{"data sources": []})
    with pytest.raises(UnetslError, match='no "data sources"'):
        train(cfg, progress="none")
    cfg = make_project(tmp_path, **{"loss function": "unetsl.model.noSuchLoss"})
    with pytest.raises(UnetslError, match="noSuchLoss"):
        train(cfg, progress="none")
    cfg = make_project(tmp_path, **{"monitor": "val_nothing"})
    with pytest.raises(UnetslError, match="val_nothing"):
        train(cfg, progress="none")
    cfg = make_project(tmp_path, **{"samples to predict": ["nowhere.tif"]})
    with pytest.raises(UnetslError, match="nowhere.tif"):
        train(cfg, progress="none")


def test_labels_needing_more_channels_than_n_labels(tmp_path):
    cfg = make_project(tmp_path)
    (tmp_path / "labels8").mkdir()
    for path in sorted((tmp_path / "labels").iterdir()):
        label = tifffile.imread(path)
        label[0, 0, 0] = 4  # bit 2: a third class, but the model has 2 outputs
        tifffile.imwrite(tmp_path / "labels8" / path.name, label, imagej=True,
                         metadata={"axes": "TYX"})
    cfg["data sources"] = [paired("labels8")]
    with pytest.raises(UnetslError, match=r'label value 4 needs 3 output channels.*"n labels"'):
        train(cfg, progress="none")


def test_cli_one_line_errors_and_saved_overrides(tmp_path, assert_one_line_error, run_script):
    cfg = make_project(tmp_path, **{"data sources": []})
    before = cfg.path.read_text()
    result = run_script("train_model", "-c", str(cfg.path), "-b", "-D",
                        'loss function="unetsl.model.nope"', cwd=tmp_path)
    assert_one_line_error(result, "loss function", "unetsl.model.nope")
    assert cfg.path.read_text() == before  # a bad value never reaches the config file
    result = run_script("train_model", "-c", str(cfg.path), "-b", "-D", "epochs=1",
                        cwd=tmp_path)
    assert_one_line_error(result, "data sources", "attach_data_sources")
    assert cfg.path.read_text() == before  # -D applies to the run only ...
    result = run_script("train_model", "-c", str(cfg.path), "-b", "-D", "epochs=1",
                        "--save-config", cwd=tmp_path)
    assert_one_line_error(result, "data sources", "attach_data_sources")
    assert json.loads(cfg.path.read_text())["epochs"] == 1  # ... unless asked
    assert (tmp_path / "m-json.bak").read_text() == before  # with a backup


def test_early_stopping_and_plateau(tmp_path, caplog):
    # at a learning rate of 1e-12 the weights do not move, so val_loss (fixed validation
    # patches) never improves after epoch 0
    cfg = make_project(tmp_path, epochs=6, **{
        "initial learning rate": 1e-12, "early stopping patience": 2, "reduce lr patience": 1})
    with caplog.at_level("INFO", logger="unetsl"):
        result = train(cfg, progress="none")
    assert result.stopped_early
    assert result.epochs_done == 3 and result.best_epoch == 0
    assert any("learning rate" in r.message for r in caplog.records)
    assert optimizer_value(cfg.sibling("-latest.h5"), "learning_rate") == pytest.approx(1e-14)


@pytest.mark.slow
def test_cli_run_with_gpus_env_then_predict_image(tmp_path, run_script):
    make_project(tmp_path, epochs=1)
    env = {**os.environ, "GPUS": "2"}
    result = subprocess.run([script("train_model"), "-c", "m.json", "-b"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    if not tf_gpus():
        assert "no GPU found: training on the CPU (asked for 2 GPUs)" in result.stderr
    assert "epoch 1/1 " in result.stdout and "trained 1/1 epochs" in result.stdout
    pred = run_script("predict_image", "m-best.h5", "images/epi-000.tif", "p.tif", "-b",
                      cwd=tmp_path)
    assert pred.returncode == 0, pred.stderr
    assert tifffile.imread(tmp_path / "p.tif").shape[-2:] == (32, 32)


def tf_gpus() -> list:
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


@pytest.mark.slow
def test_same_seed_same_run(tmp_path):
    """With "seed", the model train builds, the training and its files are the same."""
    runs = []
    for name in ("a", "b"):
        cfg = make_project(tmp_path / name, epochs=1)
        cfg.model_path.unlink()  # train builds it from the config, seeded
        runs.append((cfg, train(cfg, progress="none")))
    (a, ra), (b, rb) = runs
    assert data_lines(ra.epoch_log) == data_lines(rb.epoch_log)
    wa = load_model(a.sibling("-latest.h5")).get_weights()
    wb = load_model(b.sibling("-latest.h5")).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb))


def test_epoch_line_of_one_output_is_short_with_channel_f1_and_best():
    from unetsl.training.callbacks import EpochLine

    logs = {"accuracy": 0.61, "binary_accuracy": 0.93, "loss": 0.41234, "f1_0": 0.8,
            "f1_1": 0.1, "val_accuracy": 0.6, "val_binary_accuracy": 0.94, "val_loss": 0.39811,
            "val_f1_0": 0.912, "val_f1_1": 0.0, "learning_rate": 0.001}
    state = TrainingState(best=0.39811, best_epoch=1011)
    out = io.StringIO()
    line = EpochLine(2000, 231, state, out)
    line.on_epoch_begin(1011)
    line.on_epoch_end(1011, logs)
    (printed,) = out.getvalue().splitlines()
    assert len(printed) <= 100, printed
    assert printed.startswith("epoch 1012/2000 ")
    assert "  loss 0.4123  val_loss 0.3981  val_f1_0/1 0.91/0.00  best 0.3981 (epoch 1012)" \
        in printed
    assert "accuracy" not in printed and "learning_rate" not in printed


def test_epoch_line_of_a_multi_head_model_fits_one_screen_line():
    from unetsl.training.callbacks import epoch_line

    heads = ["distance", "membrane-scale", "membrane-crop"]
    logs = {"loss": 2.5, "val_loss": 2.75}
    for prefix in ("", "val_"):
        for head in heads:
            for metric in ("accuracy", "binary_accuracy", "loss", "f1_0", "f1_1"):
                logs[f"{prefix}{head}_{metric}"] = 0.123456
    state = TrainingState(monitor="val_membrane-scale_f1_0", mode="max", best=0.5,
                          best_epoch=2)
    printed = epoch_line(4, 40, 12.3, logs, state)
    assert len(printed) <= 100, printed
    assert printed == ("epoch 5/40 12.3s  loss 2.5  val_loss 2.75  "
                       "best val_membrane-scale_f1_0 0.5 (epoch 3)")
    assert epoch_line(0, 40, 1.0, {"loss": 1.0}, TrainingState()) == "epoch 1/40 1.0s  loss 1"


def test_monitor_smoothing_picks_best_on_the_moving_average():
    """A lucky dip of the raw value is not "best" under smoothing 0.5 (issue 27): raw
    1.0 0.4 0.9 0.5 0.45 -> averages 1.0 0.7 0.8 0.65 0.55, best at epoch 4, not 1."""
    state = TrainingState(smoothing=0.5)
    judged = [state.judged(v) for v in (1.0, 0.4, 0.9, 0.5, 0.45)]
    assert judged == pytest.approx([1.0, 0.7, 0.8, 0.65, 0.55])
    assert np.isnan(state.judged(float("nan")))  # passed on as it is, never averaged in
    assert state.smoothed == pytest.approx(0.55)
    assert TrainingState().judged(0.4) == 0.4  # 0: the raw value, as the original


def test_training_says_what_an_epoch_is_and_judges_the_average(tmp_path, caplog):
    cfg = make_project(tmp_path, epochs=3, **{"patches per epoch": 6,
                                             "monitor smoothing": 0.5})
    with caplog.at_level("INFO", logger="unetsl"):
        result = train(cfg, progress="none")
    start = next(r.message for r in caplog.records if r.message.startswith("training m"))
    assert '3 batches of 2 patch(es) per epoch ("patches per epoch" 6 of ' in start
    assert "best by val_loss (moving average, 0.5)" in start
    keys, rows = epoch_rows(result.epoch_log)
    raw = [row[keys.index("val_loss") + 1] for row in rows]
    average = raw[0]
    for value in raw[1:]:
        average = 0.5 * average + 0.5 * value
    state = read_state(cfg.sibling("-latest.h5"))
    assert state.smoothed == pytest.approx(average, rel=1e-6)
    batches = data_lines(result.batch_log)
    assert len(batches) == 3 * 3  # 3 steps an epoch however many patches the grid has
