"""Multi-worker training: cluster from TF_CONFIG or Slurm, chief-only files, and two workers
on loopback reaching the weights of one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from unetsl.config.model_config import Config
from unetsl.data.synthetic import write_dataset
from unetsl.errors import UnetslError
from unetsl.nets.model_files import load_model, save_model
from unetsl.nets.unet import build_unet
from unetsl.training import multiworker
from unetsl.training.train import training_paths


def script(name: str) -> str:
    """The console script of the running interpreter's environment."""
    return str(Path(sys.executable).parent / name)

PATCH = [1, 3, 16, 16]
SLURM = Path(__file__).resolve().parents[2] / "examples" / "slurm"


def tf_config(workers: list[str], index: int, kind: str = "worker", **extra) -> str:
    return json.dumps({"cluster": {"worker": workers, **extra},
                       "task": {"type": kind, "index": index}})


def slurm_env(procid: int, nodes: str = "node[01-02]", tasks_per_node: str = "2(x2)",
              **extra: str) -> dict[str, str]:
    n = sum(int(p.split("(")[0]) * (int(p.split("x")[1][:-1]) if "x" in p else 1)
            for p in tasks_per_node.split(","))
    return {"SLURM_PROCID": str(procid), "SLURM_STEP_NUM_TASKS": str(n),
            "SLURM_STEP_NODELIST": nodes, "SLURM_STEP_TASKS_PER_NODE": tasks_per_node,
            "SLURM_LOCALID": str(procid % 2), "SLURMD_NODENAME": f"node0{procid // 2 + 1}",
            **extra}


# ------------------------------------------------------------------------ cluster discovery


def test_single_process_has_no_cluster():
    assert multiworker.cluster_resolver({}) is None
    one = tf_config(["localhost:2222"], 0)
    assert multiworker.cluster_resolver({"TF_CONFIG": one}) is None
    assert multiworker.cluster_resolver({"SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}) \
        is None
    assert multiworker.is_chief(None)


def test_tf_config_is_honoured():
    resolver = multiworker.cluster_resolver(
        {"TF_CONFIG": tf_config(["localhost:2222", "localhost:2223"], 1)})
    assert resolver.cluster_spec().as_dict() == {"worker": ["localhost:2222", "localhost:2223"]}
    assert (resolver.task_type, resolver.task_id) == ("worker", 1)


@pytest.mark.parametrize("text, needle", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    (json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "ps", "index": 0}}),
     '"task" must be'),
])
def test_bad_tf_config_is_one_line(text, needle):
    with pytest.raises(UnetslError, match=needle):
        multiworker.cluster_resolver({"TF_CONFIG": text})


def test_slurm_step_gives_hosts_ports_and_rank(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    env = slurm_env(3, UNETSL_PORT_BASE="9100")
    resolver = multiworker.cluster_resolver(env)
    assert resolver.cluster_spec().as_dict() == {
        "worker": ["node01:9100", "node01:9101", "node02:9100", "node02:9101"]}
    assert (resolver.task_type, resolver.task_id) == ("worker", 3)
    assert resolver.num_accelerators() == {"GPU": 0}  # a CPU node
    assert "SLURM_PROCID" not in os.environ or os.environ["SLURM_PROCID"] != "3"


def test_slurm_tasks_share_the_gpus_of_a_node(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    env = slurm_env(1, CUDA_VISIBLE_DEVICES="0,1,2,3")
    resolver = multiworker.cluster_resolver(env)
    assert resolver.num_accelerators() == {"GPU": 2}
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"  # the second task of node01


def test_slurm_gpus_bound_per_task_are_kept(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    env = slurm_env(1, CUDA_VISIBLE_DEVICES="0", SLURM_GPUS_PER_TASK="1")
    resolver = multiworker.cluster_resolver(env)
    assert resolver.num_accelerators() == {"GPU": 1}
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"


def test_slurm_bad_port_is_one_line():
    with pytest.raises(UnetslError, match="UNETSL_PORT_BASE"):
        multiworker.cluster_resolver(slurm_env(0, UNETSL_PORT_BASE="http"))


class _Resolver:
    def __init__(self, task_type, task_id, jobs):
        self.task_type, self.task_id, self._jobs = task_type, task_id, jobs

    def cluster_spec(self):
        import tensorflow as tf

        return tf.train.ClusterSpec({j: [f"h:{i}" for i in range(2)] for j in self._jobs})


class _Strategy:
    def __init__(self, *args):
        self.cluster_resolver = _Resolver(*args)


@pytest.mark.parametrize("task, jobs, chief", [
    (("worker", 0), ["worker"], True),
    (("worker", 1), ["worker"], False),
    (("worker", 0), ["chief", "worker"], False),
    (("chief", 0), ["chief", "worker"], True),
])
def test_chief_is_task_chief_or_worker_zero(task, jobs, chief):
    assert multiworker.is_chief(_Strategy(*task, jobs)) is chief


def test_scratch_paths_move_every_file_and_go_away(tmp_path):
    cfg = Config(path=tmp_path / "m.json")
    paths = training_paths(cfg)
    moved = multiworker.scratch_paths(paths, _Strategy("worker", 1, ["worker"]))
    folder = moved.latest.parent
    assert folder.is_dir() and folder != tmp_path
    assert moved.latest.name == paths.latest.name and moved.best.parent == folder
    multiworker.remove_scratch(moved)
    assert not folder.exists()


# ----------------------------------------------------------------------- two real workers


def free_ports(n: int) -> list[int]:
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def make_project(root: Path) -> Path:
    """Synthetic data, a config (per-voxel loss, no dropout, global batch 4), the model."""
    write_dataset(root, "2d", n_images=2, shape=(3, 32, 32), seed=5, distance=False)
    cfg = Config(path=root / "m.json")
    cfg.update({"input shape": PATCH, "depth": 2, "n filters": 2, "n labels": 2,
                "stride": [0, 3, 8, 8], "batch size": 4, "epochs": 2, "seed": 7,
                "validation fraction": 0.25, "initial learning rate": 0.01,
                "loss function": "keras.losses.binary_crossentropy",
                "spatial dropout rate": 0.0,
                "data sources": [{"source type": "paired directories",
                                  "input folders": ["images"], "label folders": ["labels"],
                                  "labeller": "multiclass labels"}]})
    cfg.save()
    keras.utils.set_random_seed(1)
    save_model(build_unet(PATCH, n_labels=2, depth=2, n_filters=2, pooling=(1, 2, 2),
                          spatial_dropout_rate=0.0), cfg.model_path)
    return root / "m.json"


def train_cmd(config: Path) -> list[str]:
    return [script("train_model"), "-c", str(config), "-b"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in ("TF_CONFIG", "GPUS")}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1",
                "OMP_NUM_THREADS": "1", **extra})
    return env


def test_two_workers_on_loopback_reach_the_weights_of_one_process(tmp_path):
    one = make_project(tmp_path / "one")
    two = make_project(tmp_path / "two")
    start = time.perf_counter()
    single = subprocess.run(train_cmd(one), cwd=one.parent, env=clean_env(),
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]

    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = [subprocess.Popen(train_cmd(two), cwd=two.parent, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=clean_env(TF_CONFIG=tf_config(workers, i)))
             for i in range(2)]
    outs = []
    for proc in procs:
        try:
            outs.append(proc.communicate(timeout=300))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    for proc, (_out, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
    elapsed = time.perf_counter() - start
    assert "trained 2/2 epochs" in outs[0][0]  # the chief reports
    assert outs[1][0].strip() == ""  # the other worker is silent

    a = load_model(one.parent / "m-latest.h5").get_weights()
    b = load_model(two.parent / "m-latest.h5").get_weights()
    start_weights = load_model(one.parent / "m.h5").get_weights()
    moved = max(float(np.abs(x - s).max()) for x, s in zip(a, start_weights))
    diff = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
    assert moved > 1e-3  # it trained
    assert diff < 1e-5, (diff, moved)
    # only the chief wrote: one run's logs, no second set of checkpoints
    logs = sorted(p.name for p in two.parent.glob("training-log_m-*.txt"))
    assert len(logs) == 1, logs
    assert len(list(two.parent.glob("batch-log_m-*.txt"))) == 1
    print(f"single + two workers: {elapsed:.1f} s")


# ------------------------------------------------------------------------ the Slurm script


def test_train_multinode_script(tmp_path):
    text = (SLURM / "train-multinode.sh").read_text()
    assert "#SBATCH --nodes" in text and "srun" in text
    result = subprocess.run(["bash", "-n", str(SLURM / "train-multinode.sh")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    bin_dir = tmp_path / "env" / "bin"
    bin_dir.mkdir(parents=True)
    stub = bin_dir / "train_model"
    stub.write_text('#!/bin/bash\necho "train_model GPUS=$GPUS"\nprintf "arg:%s\\n" "$@"\n')
    stub.chmod(0o755)
    fake = tmp_path / "bin"
    fake.mkdir()
    srun = fake / "srun"
    srun.write_text('#!/bin/bash\necho "srun $*"\nwhile [[ $1 == -* ]]; do shift; done\n'
                    'exec "$@"\n')
    srun.chmod(0o755)
    env = clean_env(UNET_ENV=str(tmp_path / "env"), PATH=f"{fake}:{os.environ['PATH']}",
                    SLURM_JOB_NUM_NODES="2", SLURM_GPUS_ON_NODE="4", SLURM_JOB_ID="7")
    result = subprocess.run(["bash", str(SLURM / "train-multinode.sh"), "net.json"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "srun" in result.stdout
    args = [ln[4:] for ln in result.stdout.splitlines() if ln.startswith("arg:")]
    assert args[:3] == ["-c", "net.json", "-b"]
    assert "batch size=256" in " ".join(args)  # 32 per GPU x 4 GPUs x 2 nodes


@pytest.mark.skipif(sys.platform != "linux", reason="bash scripts")
def test_train_multinode_script_is_shellcheck_clean():
    import shutil

    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", str(SLURM / "train-multinode.sh")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
