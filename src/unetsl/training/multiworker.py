"""Training on several machines: tf.distribute.MultiWorkerMirroredStrategy from Slurm or TF_CONFIG.

Why: a model that needs days on one GPU node trains data-parallel on N nodes with
TensorFlow's own engine. Every worker process holds a replica of the model on its devices,
computes gradients on its share of each global batch and all-reduces them (NCCL between
GPUs, gRPC between CPU processes), so the "batch size" stays the global batch and N workers
reach the weights one process would, in about 1/N of the time.

Where the cluster comes from (``cluster_resolver``):

- ``TF_CONFIG`` (TensorFlow's JSON: ``{"cluster": {"worker": ["host:port", ...]},
  "task": {"type": "worker", "index": i}}``), when it names more than one task;
- otherwise Slurm: a job step started by ``srun`` with several tasks
  (``SLURM_STEP_NUM_TASKS`` > 1) uses TensorFlow's ``SlurmClusterResolver`` for the hosts,
  ports (``UNETSL_PORT_BASE``, default 8888, + the task's index on its node) and ranks. The
  GPUs a node's tasks see are shared out among them unless Slurm already bound GPUs to
  tasks; CPU-only nodes train on one CPU device per task.

Only the chief (task "chief", or worker 0) writes checkpoints, logs, curves and sample
predictions to the model's folder. The other workers run exactly the same steps (a collective
operation that one worker skipped would hang the others) but write into a private scratch
folder that is removed at the end (``scratch_paths``), as TensorFlow recommends.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unetsl.errors import UnetslError

log = logging.getLogger("unetsl")

__all__ = [
    "cluster_resolver",
    "cluster_strategy",
    "in_cluster",
    "is_chief",
    "is_multiworker",
    "prepare_model",
    "remove_scratch",
    "scratch_paths",
    "task_info",
]

PORT_ENV = "UNETSL_PORT_BASE"
DEFAULT_PORT_BASE = 8888


def _tf_config(environ: Mapping[str, str]) -> dict | None:
    text = environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UnetslError(f"TF_CONFIG is not valid JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster", {}), dict):
        raise UnetslError('TF_CONFIG must be a JSON object with "cluster" and "task"')
    return config


def _tasks(cluster: Mapping[str, Any]) -> int:
    return sum(len(v) for k, v in cluster.items() if k in ("chief", "worker")
               and isinstance(v, list))


def _count_gpus(environ: Mapping[str, str]) -> list[str]:
    """The GPU ids this process may use, without starting TensorFlow (which must not see
    the GPUs before CUDA_VISIBLE_DEVICES is final)."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    on_node = environ.get("SLURM_GPUS_ON_NODE", "").strip()
    if on_node.isdigit():
        return [str(i) for i in range(int(on_node))]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True,
                                 timeout=30, check=True).stdout
            return [str(i) for i, line in enumerate(out.splitlines()) if line.strip()]
        except (OSError, subprocess.SubprocessError):
            return []
    return []


def _slurm_resolver(environ: Mapping[str, str]):
    """A resolver for the srun step this process belongs to."""
    import tensorflow as tf
    from tensorflow.python.distribute.cluster_resolver import slurm_cluster_resolver as slurm

    missing = [v for v in ("SLURM_PROCID", "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE")
               if not environ.get(v)]
    if missing:
        raise UnetslError(f"Slurm step with several tasks but {missing[0]} is not set; start "
                          "train_model with srun")
    port_text = environ.get(PORT_ENV, str(DEFAULT_PORT_BASE))
    if not port_text.isdigit() or not 1024 <= int(port_text) <= 65000:
        raise UnetslError(f"{PORT_ENV} must be a port number (1024..65000), got {port_text!r}")
    hosts = slurm.expand_hostlist(environ["SLURM_STEP_NODELIST"])
    counts = slurm.expand_tasks_per_node(environ["SLURM_STEP_TASKS_PER_NODE"])
    per_node = dict(zip(hosts, counts, strict=False))
    most = max(per_node.values())
    saved = {k: os.environ.get(k) for k in ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS",
                                           "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE")}
    os.environ.update({k: environ[k] for k in saved if k in environ})
    try:
        # the GPU arguments only matter to its own GPU split, done below instead
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
            port_base=int(port_text), gpus_per_node=most, gpus_per_task=1, auto_set_gpu=False,
            tasks_per_node=per_node)
        spec = resolver.cluster_spec()
        task_type, task_id = resolver.get_task_info()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    gpus = _count_gpus(environ)
    local = int(environ.get("SLURM_LOCALID", "0") or 0)
    here = per_node.get(environ.get("SLURMD_NODENAME", ""), most)
    bound = environ.get("SLURM_GPUS_PER_TASK") or environ.get("SLURM_GPU_BIND")
    if len(gpus) >= here > 1 and not bound:
        share = len(gpus) // here
        gpus = gpus[local * share:(local + 1) * share]
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        spec, task_type=task_type, task_id=task_id, num_accelerators={"GPU": len(gpus)},
        rpc_layer="grpc")


def in_cluster(environ: Mapping[str, str] | None = None) -> bool:
    """Whether TF_CONFIG or an srun step names several tasks (cheap: TensorFlow not loaded)."""
    environ = os.environ if environ is None else environ
    try:
        config = _tf_config(environ)
    except UnetslError:
        return True  # cluster_resolver reports the error
    if config is not None and _tasks(config.get("cluster", {})) > 1:
        return True
    tasks = environ.get("SLURM_STEP_NUM_TASKS", "").strip()
    return tasks.isdigit() and int(tasks) > 1


def cluster_resolver(environ: Mapping[str, str] | None = None):
    """The cluster this process is one worker of, or None for a single process.

    TF_CONFIG with several tasks -> ``TFConfigClusterResolver``; else an srun step with
    several tasks -> Slurm (see the module notes); else None.
    """
    environ = os.environ if environ is None else environ
    config = _tf_config(environ)
    if config is not None and _tasks(config.get("cluster", {})) > 1:
        import tensorflow as tf

        task = config.get("task") or {}
        if task.get("type") not in ("chief", "worker") or not isinstance(task.get("index"), int):
            raise UnetslError('TF_CONFIG: "task" must be {"type": "chief"|"worker", "index": i}')
        if environ is os.environ:  # TensorFlow's own resolver (it counts the GPUs itself)
            return tf.distribute.cluster_resolver.TFConfigClusterResolver()
        return tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(config["cluster"]), task_type=task["type"],
            task_id=task["index"], num_accelerators={"GPU": len(_count_gpus(environ))},
            rpc_layer=config.get("rpc_layer", "grpc"))
    tasks = environ.get("SLURM_STEP_NUM_TASKS", "").strip()
    if tasks.isdigit() and int(tasks) > 1:
        return _slurm_resolver(environ)
    return None


def cluster_strategy(environ: Mapping[str, str] | None = None):
    """MultiWorkerMirroredStrategy for the cluster of ``cluster_resolver``, or None.

    Must run before TensorFlow creates any tensor in this process (TensorFlow configures
    its collective operations at start-up): train_model calls it first thing.
    """
    resolver = cluster_resolver(environ)
    if resolver is None:
        return None
    import tensorflow as tf

    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except (RuntimeError, ValueError) as exc:
        hint = ""
        if "startup" in str(exc):
            hint = ("; create the strategy (unetsl.training.multiworker.cluster_strategy()) before "
                    "anything else uses TensorFlow")
        raise UnetslError(f"cannot start multi-worker training: {exc}{hint}") from None
    task_type, task_id = task_info(strategy)
    spec = resolver.cluster_spec().as_dict()
    log.info(f"multi-worker training: {task_type} {task_id} of {_tasks(spec)} workers, "
             f"{strategy.num_replicas_in_sync} replicas in all")
    return strategy


def task_info(strategy: Any) -> tuple[str | None, int | None]:
    """(task type, task id) of this process in a multi-worker strategy; (None, None) else."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return None, None
    task_type = getattr(resolver, "task_type", None)
    task_id = getattr(resolver, "task_id", None)
    return task_type, (int(task_id) if task_id is not None else None)


def is_chief(strategy: Any = None) -> bool:
    """True unless this process is a non-chief worker of a multi-worker strategy.

    The chief is the task of type "chief", or worker 0 when the cluster has no chief.
    """
    if strategy is None:
        return True
    task_type, task_id = task_info(strategy)
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    if task_type != "worker":
        return False
    try:
        jobs = strategy.cluster_resolver.cluster_spec().jobs
    except Exception:  # pragma: no cover - a resolver without a spec
        jobs = []
    return task_id == 0 and "chief" not in jobs


def scratch_paths(paths: Any, strategy: Any = None) -> Any:
    """``paths`` (a dataclass of file paths, e.g. ``train.TrainingPaths``) moved into a new
    private scratch folder, for a worker that is not the chief; removed by
    ``remove_scratch`` or at the latest when the process exits."""
    task_type, task_id = task_info(strategy)
    folder = Path(tempfile.mkdtemp(prefix=f"unetsl-{task_type or 'worker'}{task_id or 0}-"))
    atexit.register(shutil.rmtree, folder, True)
    moved = {f.name: folder / Path(getattr(paths, f.name)).name
             for f in dataclasses.fields(paths) if isinstance(getattr(paths, f.name), Path)}
    return dataclasses.replace(paths, **moved)


def remove_scratch(paths: Any) -> None:
    """Delete the scratch folder of ``scratch_paths``."""
    for f in dataclasses.fields(paths):
        value = getattr(paths, f.name)
        if isinstance(value, Path) and value.parent.name.startswith("unetsl-"):
            shutil.rmtree(value.parent, ignore_errors=True)
            return


def is_multiworker(strategy: Any) -> bool:
    """True for a MultiWorkerMirroredStrategy that spans several workers."""
    if strategy is None or getattr(strategy, "cluster_resolver", None) is None:
        return False
    try:
        spec = strategy.cluster_resolver.cluster_spec().as_dict()
    except Exception:  # pragma: no cover
        return False
    return _tasks(spec) > 1


def prepare_model(model: Any, strategy: Any) -> None:
    """Let Keras 3 train ``model`` under a multi-worker strategy.

    Two defects of Keras 3's TensorFlow trainer with MultiWorkerMirroredStrategy (up to
    3.15 at least; keras-team/keras#20585) are worked around:

    - before the first epoch it builds the training state from one batch averaged across
      workers with ``strategy.reduce``, which the strategy refuses for an (x, y)
      structure; the batch is only needed for its shapes, so this worker's share is used;
    - it averages the per-replica metric values of every step with
      ``strategy.reduce("MEAN", value, axis=0)``, which fails for scalars; scalars are
      averaged over the replicas (axis=None), as the single-machine path does.
    """
    if not is_multiworker(strategy):
        return
    _patch_reduce_per_replica()
    import tensorflow as tf
    from keras.src import tree

    def local(value: Any) -> Any:
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(iterator: Any = None, data_batch: Any = None) -> None:
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tree.map_structure(local, next(it))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = maybe_symbolic_build


_PATCHED = {"reduce": False}


def _patch_reduce_per_replica() -> None:
    if _PATCHED["reduce"]:
        return
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica
    multi_worker = getattr(tf_trainer, "_collective_all_reduce_multi_worker", None)
    if multi_worker is None:  # a Keras whose trainer changed: leave it alone
        return

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and multi_worker(strategy):
            def mean(value: Any) -> Any:
                local = strategy.experimental_local_results(value)[0]
                axis = 0 if getattr(local.shape, "rank", 0) else None
                return strategy.reduce("MEAN", value, axis=axis)

            return tree.map_structure(mean, values)
        return original(values, strategy, reduction)

    tf_trainer.reduce_per_replica = reduce_per_replica
    _PATCHED["reduce"] = True
