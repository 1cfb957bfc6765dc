"""Devices: GPU count, the CPU fallback, data-parallel training and resume under a
MirroredStrategy (on two logical CPU devices, so it runs on any machine)."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tensorflow as tf

from unetsl.errors import UnetslError
from unetsl.nets import devices

TESTS = Path(__file__).resolve().parents[1] / "training"  # where test_train.py lives
NO_GPU = not tf.config.list_physical_devices("GPU")


def test_gpus_wanted(monkeypatch):
    assert devices.gpus_wanted(3, False) == 3
    assert devices.gpus_wanted(None, False) == 1
    monkeypatch.setattr(devices, "visible_gpus", lambda: ["g0", "g1", "g2", "g3"])
    assert devices.gpus_wanted(None, True) == 4  # "multi-gpu" without a count: all of them
    assert devices.gpus_wanted(2, True) == 2
    monkeypatch.setattr(devices, "visible_gpus", lambda: [])
    assert devices.gpus_wanted(None, True) == 1
    with pytest.raises(UnetslError, match="--gpus"):
        devices.gpus_wanted(-1, False)


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_no_gpu_means_cpu_and_one_line(monkeypatch, caplog):
    monkeypatch.setattr(devices, "_said_no_gpu", False)
    with caplog.at_level(logging.INFO, logger="unetsl"):
        first = devices.distribution_strategy(4)
        second = devices.distribution_strategy(1)
    assert first is tf.distribute.get_strategy() and second is first
    assert first.num_replicas_in_sync == 1
    lines = [r.message for r in caplog.records if r.name == "unetsl"]
    assert lines == ["no GPU found: training on the CPU (asked for 4 GPUs)"]


def test_fewer_gpus_than_asked(monkeypatch, caplog):
    monkeypatch.setattr(devices, "visible_gpus", lambda: ["g0"])
    with caplog.at_level(logging.INFO, logger="unetsl"):
        strategy = devices.distribution_strategy(2)
    assert strategy.num_replicas_in_sync == 1
    assert any("asked for 2 GPUs but 1 are visible" in r.message for r in caplog.records)


def test_batch_must_split_evenly_over_replicas(tmp_path):
    sys.path.insert(0, str(TESTS))
    from test_train import make_project

    from unetsl.training.train import train

    class TwoReplicas:
        num_replicas_in_sync = 2

    cfg = make_project(tmp_path, **{"batch size": 3})
    with pytest.raises(UnetslError, match='"batch size" 3 cannot be split evenly over 2'):
        train(cfg, strategy=TwoReplicas(), progress="none")


def test_deterministic_without_seed_is_a_no_op():
    devices.set_deterministic(None)


MIRRORED = textwrap.dedent("""
    import sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[2])
    from pathlib import Path
    from test_train import data_lines, make_project, optimizer_value
    from unetsl.training.checkpoints import read_state
    from unetsl.nets.devices import distribution_strategy
    from unetsl.training.train import train

    cfg = make_project(Path(sys.argv[1]), epochs=1)
    strategy = distribution_strategy(2, devices=["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    first = train(cfg, strategy=strategy, progress="none")
    steps = read_state(cfg.sibling("-latest.h5")).batches_done
    cfg["epochs"] = 2
    second = train(cfg, strategy=strategy, progress="none", resume=True)
    state = read_state(cfg.sibling("-latest.h5"))
    assert state.epochs_done == 2 and state.batches_done == 2 * steps, state
    assert optimizer_value(cfg.sibling("-latest.h5"), "iteration") == 2 * steps
    assert [ln.split()[0] for ln in data_lines(second.epoch_log)] == ["1"]
    print("MIRRORED OK", len(data_lines(first.batch_log)))
""")


def test_mirrored_training_and_resume_on_two_devices(tmp_path):
    result = subprocess.run([sys.executable, "-c", MIRRORED, str(tmp_path), str(TESTS)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MIRRORED OK" in result.stdout


def test_other_keras_backends_run_on_one_device(monkeypatch, caplog):
    """With KERAS_BACKEND=jax/torch (the lent GPU machines have JAX, not TensorFlow) the
    strategy is one device: several GPUs are refused with a warning, not an error."""
    monkeypatch.setattr(devices, "keras_backend", lambda: "jax")
    monkeypatch.setattr(devices, "visible_gpus", lambda: ["gpu0", "gpu1"])
    with caplog.at_level(logging.INFO, logger="unetsl"):
        strategy = devices.distribution_strategy(2)
    assert isinstance(strategy, devices.OneDevice) and strategy.num_replicas_in_sync == 1
    with strategy.scope():
        pass
    assert "need the TensorFlow backend" in caplog.text and "first GPU" in caplog.text
    monkeypatch.setattr(tf.config.experimental, "enable_op_determinism",
                        lambda: pytest.fail("TensorFlow determinism asked for under jax"))
    devices.set_deterministic(3)
