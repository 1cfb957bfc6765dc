"""Dask schedulers for prediction: local processes, Slurm jobs, an address or a scheduler file."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unetsl.errors import UnetslError
from unetsl.predict.dask_workers import THREADS_ENV
from unetsl.quiet_tensorflow import import_tensorflow_quietly

log = logging.getLogger("unetsl")


# ---------------------------------------------------------------------------- schedulers


def parse_scheduler(text: str) -> tuple[str, Any]:
    """("local", n) | ("slurm", n) | ("file", path) | ("address", address) for --dask."""
    value = str(text).strip()
    kind, _, rest = value.partition(":")
    if kind in ("local", "slurm") and "/" not in rest:
        if rest == "" and kind == "local":
            return "local", max(1, os.cpu_count() or 1)
        try:
            n = int(rest)
        except ValueError:
            n = 0
        if n < 1:
            raise UnetslError(f"--dask {value}: expected {kind}:N with N >= 1 workers"
                              + (" (worker jobs)" if kind == "slurm" else ""))
        return kind, n
    if value.endswith(".json"):
        if not Path(value).is_file():
            raise UnetslError(f"--dask {value}: no such scheduler file")
        return "file", value
    if "://" in value or (":" in value and value.rsplit(":", 1)[1].isdigit()):
        return "address", value if "://" in value else f"tcp://{value}"
    raise UnetslError(f"--dask {value}: expected local:N, slurm:N, a scheduler address "
                      "(tcp://host:8786) or a scheduler file (scheduler.json)")


def make_cluster(kind: str, n: int, *, threads: int | None = None, **options: Any):
    """A LocalCluster of ``n`` worker processes, or a SLURMCluster scaled to ``n`` jobs.

    Local workers run one task at a time with ``threads`` TensorFlow threads each (default:
    the machine's cores shared out), so that N workers do not fight over the cores.
    SLURMCluster takes its cores, memory, partition ... from dask's jobqueue configuration
    (``~/.config/dask/jobqueue.yaml`` or ``DASK_JOBQUEUE__SLURM__CORES`` etc.) or ``options``.
    """
    try:
        import distributed
    except ImportError:
        raise UnetslError('--dask needs dask.distributed (pip install "unetsl[scale]")') from None
    if kind == "local":
        threads = threads or max(1, (os.cpu_count() or 1) // n)
        env = {THREADS_ENV: str(threads), "OMP_NUM_THREADS": str(threads),
               "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
        options = {"n_workers": n, "threads_per_worker": 1, "processes": True,
                   "dashboard_address": ":0", "env": env, **options}
        return distributed.LocalCluster(**options)
    if kind == "slurm":
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError:
            raise UnetslError('--dask slurm:N needs dask-jobqueue (pip install '
                              '"unetsl[scale]")') from None
        try:
            cluster = SLURMCluster(**options)
        except ValueError as exc:  # e.g. cores/memory not configured
            raise UnetslError(f"--dask slurm:{n}: {exc} (set DASK_JOBQUEUE__SLURM__CORES and "
                              "DASK_JOBQUEUE__SLURM__MEMORY, or ~/.config/dask/jobqueue.yaml)"
                              ) from None
        cluster.scale(jobs=n)
        return cluster
    raise ValueError(f"unknown cluster kind {kind!r}")


@contextlib.contextmanager
def dask_client(spec: str, *, wait: float = 600.0, **options: Any) -> Iterator[Any]:
    """A distributed Client for a --dask value; a cluster it started is closed on exit.

    wait : seconds to wait for the first worker (SLURM jobs may queue).
    """
    try:
        from distributed import Client
    except ImportError:
        raise UnetslError('--dask needs dask.distributed (pip install "unetsl[scale]")') from None
    kind, value = parse_scheduler(spec)
    cluster = None
    try:
        if kind in ("local", "slurm"):
            cluster = make_cluster(kind, value, **options)
            client = Client(cluster)
        elif kind == "file":
            client = Client(scheduler_file=value, timeout=30)
        else:
            client = Client(value, timeout=30)
    except UnetslError:
        if cluster is not None:
            cluster.close()
        raise
    except OSError as exc:
        if cluster is not None:
            cluster.close()
        raise UnetslError(f"--dask {spec}: cannot reach the scheduler ({exc})") from None
    try:
        if kind != "local":
            try:
                client.wait_for_workers(1, timeout=wait)
            except TimeoutError:
                raise UnetslError(f"--dask {spec}: no worker joined within {wait:.0f} s") \
                    from None
        client.run(import_tensorflow_quietly)  # each worker's banner goes to /dev/null
        yield client
    finally:
        client.close()
        if cluster is not None:
            _close_quietly(cluster)


def _close_quietly(cluster: Any) -> None:
    """Close a cluster we started without distributed's "Worker process still alive after
    4.0 seconds, killing" warning: a worker busy unloading TensorFlow is expected to take
    that long, and the user can do nothing about it."""
    nanny = logging.getLogger("distributed.nanny")
    level = nanny.level
    nanny.setLevel(logging.ERROR)
    try:
        cluster.close()
    finally:
        nanny.setLevel(level)


