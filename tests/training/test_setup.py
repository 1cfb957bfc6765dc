"""prepare_training: one training run resolved once from the config (TrainingSetup)."""

from __future__ import annotations

import keras
import pytest

from unetsl.config.model_config import Config
from unetsl.data.dataset import PatchDataset
from unetsl.data.synthetic import write_dataset
from unetsl.errors import UnetslError
from unetsl.nets.model_files import save_model
from unetsl.nets.unet import build_unet
from unetsl.training.callbacks import EpochLine, LearningWatch
from unetsl.training.checkpoints import Checkpointer, TrainingState, save_checkpoint
from unetsl.training.logs import BatchLog, EpochLog
from unetsl.training.prepare import prepare_training
from unetsl.training.setup import TrainingSetup, training_paths

PATCH = [1, 3, 16, 16]


def project(root, **keys) -> Config:
    write_dataset(root, "2d", n_images=2, shape=(3, 32, 32), seed=5, distance=False)
    cfg = Config(path=root / "m.json")
    cfg.update({"input shape": PATCH, "depth": 2, "n filters": 2, "n labels": 2,
                "stride": [0, 3, 8, 8], "batch size": 2, "epochs": 3, "seed": 7,
                "validation fraction": 0.25, "spatial dropout rate": 0.0,
                "data sources": [{"source type": "paired directories",
                                  "input folders": ["images"], "label folders": ["labels"],
                                  "labeller": "multiclass labels"}]})
    cfg.update(keys)
    cfg.save()
    keras.utils.set_random_seed(1)
    save_model(build_unet(PATCH, n_labels=2, depth=2, n_filters=2, pooling=(1, 2, 2),
                          spatial_dropout_rate=0.0), cfg.model_path)
    return cfg


def close(setup: TrainingSetup) -> None:
    setup.epoch_log.close()
    setup.batch_log.close()


def test_setup_holds_the_whole_run(tmp_path):
    cfg = project(tmp_path)
    setup = prepare_training(cfg, progress="lines")
    try:
        assert not setup.finished and setup.chief
        assert setup.name == "m" and setup.paths == training_paths(cfg) and setup.out == setup.paths
        assert setup.source == tmp_path / "m.h5"
        assert (setup.epochs, setup.initial_epoch, setup.batch_size) == (3, 0, 2)
        assert setup.patch_shape == tuple(PATCH)
        assert [h.name for h in setup.heads] == ["output"] == list(setup.model.output_names)
        assert isinstance(setup.train_data, PatchDataset) and len(setup.train_data) > 0
        assert isinstance(setup.val_data, PatchDataset)
        assert setup.train_data.batch_size == 2 and setup.train_data.seed == 7
        assert setup.monitor == "val_loss" and setup.verbose == 0
        assert setup.model.optimizer is not None  # compiled
        kinds = [type(c) for c in setup.callbacks]
        assert kinds == [BatchLog, EpochLog, Checkpointer, EpochLine, LearningWatch]
        assert setup.files.snapshot.is_file() and setup.run_id in setup.files.epoch_log.name
        assert setup.state.run_ids == [setup.run_id]
        with pytest.raises(AttributeError):  # frozen: train() only reads it
            setup.epochs = 4  # type: ignore[misc]
    finally:
        close(setup)


def test_extra_callbacks_come_last_and_bar_mode_is_verbose(tmp_path):
    cfg = project(tmp_path)
    extra = keras.callbacks.Callback()
    setup = prepare_training(cfg, progress="bar", extra_callbacks=[extra])
    try:
        assert setup.callbacks[-1] is extra and setup.verbose == 1
        assert not any(isinstance(c, EpochLine) for c in setup.callbacks)
    finally:
        close(setup)


def test_no_validation_falls_back_to_the_training_monitor(tmp_path):
    cfg = project(tmp_path, **{"validation fraction": 0.0})
    setup = prepare_training(cfg, progress="none")
    try:
        assert setup.val_data is None and setup.monitor == "loss"
    finally:
        close(setup)


def test_resume_of_a_finished_training_resolves_nothing_more(tmp_path):
    cfg = project(tmp_path)
    from unetsl.nets.model_files import load_model

    paths = training_paths(cfg)
    save_checkpoint(load_model(paths.model), paths.latest,
                    TrainingState(epochs_done=3, best=0.5, best_epoch=1))
    setup = prepare_training(cfg, resume=True, progress="none")
    assert setup.finished and setup.model is None and setup.callbacks == ()
    assert setup.source == paths.latest and setup.initial_epoch == 3
    assert setup.state.best == 0.5


def test_resume_starts_at_the_saved_epoch(tmp_path):
    cfg = project(tmp_path)
    from unetsl.nets.model_files import load_model

    paths = training_paths(cfg)
    save_checkpoint(load_model(paths.model), paths.latest, TrainingState(epochs_done=1))
    setup = prepare_training(cfg, resume=True, progress="none")
    try:
        assert setup.source == paths.latest and setup.initial_epoch == 1
        assert setup.train_data.epoch == 1  # the shuffling sequence goes on
    finally:
        close(setup)


def test_bad_settings_are_one_line_errors(tmp_path):
    cfg = project(tmp_path)
    with pytest.raises(UnetslError, match="progress must be one of"):
        prepare_training(cfg, progress="loud")
    cfg["data sources"] = []
    with pytest.raises(UnetslError, match="no \"data sources\""):
        prepare_training(cfg, progress="none")
