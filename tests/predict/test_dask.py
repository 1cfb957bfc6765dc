"""Dask prediction: chunk-aligned blocks blended exactly as one process blends the whole
volume, workers that load the model once, zarr outputs written by the workers, the
--dask option of predict_image, SLURMCluster wiring and the Slurm example."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from unetsl.errors import UnetslError
from unetsl.io import omezarr
from unetsl.io.arrays import ArraySink, ArraySource
from unetsl.predict import dask_blocks as dd
from unetsl.predict import dask_cluster, dask_workers
from unetsl.predict.engine import predict_to_sinks
from unetsl.predict.reach import Reach
from unetsl.predict.tiling import plan_tiles


def script(name: str) -> str:
    """The console script of the running interpreter's environment."""
    return str(Path(sys.executable).parent / name)

distributed = pytest.importorskip("distributed")

SLURM = Path(__file__).resolve().parents[2] / "examples" / "slurm"


class PositionNet:
    """A TileModel whose output depends on where a voxel sits in its tile, so that any
    difference in the tile grid or the blending weights shows in the result."""

    def __init__(self, patch=(1, 4, 16, 16), channels=(2,)):
        self.patch = tuple(patch)
        self.channels = list(channels)

    def __call__(self, tiles: np.ndarray) -> list[np.ndarray]:
        _, _, z, y, x = tiles.shape
        ramp = (np.arange(z)[:, None, None] + 2 * np.arange(y)[None, :, None]
                + 3 * np.arange(x)[None, None, :]).astype(np.float32) / (z + 2 * y + 3 * x)
        base = tiles.mean(axis=1, keepdims=True)
        outs = []
        for k, n in enumerate(self.channels):
            scale = np.arange(1, n + 1, dtype=np.float32)[None, :, None, None, None]
            outs.append((1 / (1 + np.exp(-(base * scale + ramp * (k + 1))))).astype(np.float32))
        return outs


REACH = Reach((1, 3, 3), (1, 2, 2))


@pytest.fixture(scope="module")
def client():
    """An in-process cluster (threads): fast, and it needs no model file."""
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2,
                            dashboard_address=":0") as c:
        yield c


def single(net, image, **kw) -> list[np.ndarray]:
    source = ArraySource(image)
    sinks = [ArraySink((image.shape[0], n, *image.shape[2:])) for n in net.channels]
    predict_to_sinks(net, source, sinks, reach=REACH, batch_size=5, **kw)
    return [s.array for s in sinks]


def blocked(client, net, image, **kw) -> tuple[list[np.ndarray], dd.DaskRun]:
    sinks = [ArraySink((image.shape[0], n, *image.shape[2:])) for n in net.channels]
    run = dd.predict_to_sinks_dask(client, net, ArraySource(image), sinks, tile_model=net,
                                   reach=REACH, output_indices=[0], batch_size=3, **kw)
    return [s.array for s in sinks], run


# ------------------------------------------------------------------------------ schedulers


@pytest.mark.parametrize("text, expected", [
    ("local:3", ("local", 3)), ("slurm:12", ("slurm", 12)),
    ("tcp://10.1.2.3:8786", ("address", "tcp://10.1.2.3:8786")),
    ("node7:8786", ("address", "tcp://node7:8786")),
])
def test_parse_scheduler(text, expected):
    assert dask_cluster.parse_scheduler(text) == expected


def test_parse_scheduler_file_and_errors(tmp_path):
    (tmp_path / "s.json").write_text("{}")
    scheduler_file = str(tmp_path / "s.json")
    assert dask_cluster.parse_scheduler(scheduler_file) == ("file", scheduler_file)
    for bad, needle in [("local:0", "local:N with N >= 1"), ("slurm:x", "slurm:N"),
                        ("cluster", "expected local:N"), ("gone.json", "no such scheduler")]:
        with pytest.raises(UnetslError, match=needle):
            dask_cluster.parse_scheduler(bad)


# ------------------------------------------------------------------- the same as one process


@pytest.mark.parametrize("shape, patch, block, normalize", [
    ((1, 1, 9, 70, 61), (1, 4, 16, 16), (4, 32, 32), False),  # blocks cut through tiles
    ((1, 1, 9, 70, 61), (1, 4, 16, 16), (2, 16, 48), True),  # blocks smaller than a tile
    ((3, 2, 1, 50, 45), (2, 1, 16, 16), (1, 20, 30), False),  # time points, 2 channels
    ((1, 1, 3, 12, 10), (1, 4, 16, 16), (1, 8, 8), False),  # image smaller than a tile
])
def test_blocks_give_the_single_process_result(client, shape, patch, block, normalize):
    image = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    net = PositionNet(patch, channels=(2, 1))
    expected = single(net, image, normalize=normalize)
    got, run = blocked(client, net, image, normalize=normalize, block=block)
    assert run.blocks > 1
    assert run.tiles == plan_tiles(shape[2:], patch[1:], REACH).count() * shape[0]
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-6)


def test_progress_counts_every_tile_once(client):
    image = np.random.default_rng(2).normal(size=(2, 1, 5, 40, 40)).astype(np.float32)
    calls = []
    _, run = blocked(client, PositionNet(), image, block=(2, 16, 16),
                     progress=lambda *a: calls.append(a))
    assert calls[-1] == (run.tiles, run.tiles, 2, 2)
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)


def test_lazy_dask_array(client):
    image = np.random.default_rng(3).normal(size=(2, 1, 7, 45, 38)).astype(np.float32)
    net = PositionNet(channels=(2, 3))
    expected = np.concatenate(single(net, image), axis=1)
    array = dd.predict_array(net, ArraySource(image), tile_model=net, reach=REACH,
                             output_indices=[0, 1], block=(4, 16, 32))
    assert array.shape == expected.shape and array.numblocks[2:] == (2, 3, 2)
    np.testing.assert_allclose(array.compute(), expected, atol=1e-6)


def test_plan_blocks_are_whole_chunks_and_waste_little():
    plan = plan_tiles((64, 1024, 1024), (1, 128, 128), Reach((0, 9, 9), (1, 2, 2)))
    block = dd.plan_blocks(plan, (16, 256, 256))
    assert all(b % c == 0 or b == n for b, c, n in zip(block, (16, 256, 256), plan.shape))
    assert np.prod(block) <= dd.DEFAULT_BLOCK_VOXELS
    regions = dd._regions(plan.shape, block)
    predicted = sum(np.prod([len(i) for i in dd._tiles_for(plan, r)]) for r in regions)
    assert predicted / plan.count() < 1.25, (block, predicted / plan.count())
    one_tile = plan_tiles((8, 20, 300), (8, 32, 32), Reach((2, 3, 3), (2, 2, 2)))
    assert dd.plan_blocks(one_tile, (1, 1, 64))[:2] == (8, 20)  # whole axes with one tile


def test_a_failing_block_is_one_line(client, tmp_path):
    image = np.zeros((1, 1, 4, 20, 20), dtype=np.float32)
    sinks = [ArraySink((1, 2, 4, 20, 20))]
    net = PositionNet()
    with pytest.raises(UnetslError, match="no such model file on worker host") as err:
        dd.predict_to_sinks_dask(client, str(tmp_path / "missing.h5"), ArraySource(image), sinks,
                                 tile_model=net, reach=REACH, output_indices=[0])
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ worker processes, models


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    pytest.importorskip("zarr")
    import keras

    from unetsl.io import omezarr_write
    from unetsl.nets.model_files import save_model
    from unetsl.nets.unet import build_unet

    folder = tmp_path_factory.mktemp("dask")
    keras.utils.set_random_seed(0)
    save_model(build_unet((1, 1, 32, 32), n_labels=2, depth=2, n_filters=2,
                          spatial_dropout_rate=0.0), folder / "m.h5")
    image = np.random.default_rng(4).normal(500, 100, (1, 1, 8, 90, 70)).astype(np.uint16)
    np.save(folder / "img.npy", image)
    omezarr_write.write_ome_zarr(folder / "img.ome.zarr", image, axes="zyx",
                                 chunks=(1, 1, 2, 32, 32),
                                 spacing=(2.0, 0.5, 0.5), unit="µm")
    return folder


def test_local_workers_load_the_model_once_and_match_predict(work):
    from unetsl.nets.model_files import load_model
    from unetsl.predict.adapter import KerasTiles
    from unetsl.predict.engine import predict
    from unetsl.predict.reach import receptive_reach

    model = load_model(work / "m.h5")
    image = np.load(work / "img.npy")
    tiles = KerasTiles(model, [0])
    expected = predict(model, image, tile=tiles.patch[1:])  # the tiles the workers predict
    sink = ArraySink(expected.shape)
    with dask_cluster.dask_client("local:2") as c:
        run = dd.predict_to_sinks_dask(c, str(work / "m.h5"), str(work / "img.npy"), [sink],
                                       tile_model=tiles, reach=receptive_reach(model),
                                       output_indices=[0], shape=image.shape, block=(2, 32, 32))
        loads = c.run(dask_workers.models_loaded)
    assert run.workers == 2 and run.blocks == 4 * 3 * 3
    assert sorted(loads.values()) == [1, 1]  # each worker process loaded the model once
    np.testing.assert_allclose(sink.array, expected, rtol=0, atol=1e-5)


def test_predict_image_dask_zarr_equals_one_process(work, run_script):
    one = run_script("predict_image", "m.h5", "img.ome.zarr", "one.ome.zarr", "-b",
                     "--probabilities", cwd=work)
    assert one.returncode == 0, one.stderr
    two = run_script("predict_image", "m.h5", "img.ome.zarr", "two.ome.zarr", "-b",
                     "--probabilities", "--dask", "local:2", "--levels", "2", cwd=work)
    assert two.returncode == 0, two.stderr
    assert "dask:" in two.stderr and "on 2 workers" in two.stderr
    # the workers' TensorFlow start-up banner and distributed's shutdown chatter stay out
    noise = [line for line in two.stderr.splitlines()
             if not line.startswith(("info: ", "warning: ", "time point"))]
    assert noise == [], two.stderr
    a = omezarr.open_zarr(work / "one-prob.ome.zarr")
    b = omezarr.open_zarr(work / "two-prob.ome.zarr")
    assert (b.axes, b.chunks, b.spacing, b.unit) == ("czyx", (1, 1, 2, 32, 32), (2.0, 0.5, 0.5),
                                                     "µm")
    np.testing.assert_allclose(b.data[:], a.data[:], rtol=0, atol=1e-5)
    labels_a = omezarr.open_zarr(work / "one.ome.zarr").data[:]
    labels_b = omezarr.open_zarr(work / "two.ome.zarr")
    assert labels_b.levels == 2
    assert np.mean(labels_a != labels_b.data[:]) < 1e-4  # only where a value is 0.5 +- 1e-5


def test_tiff_output_is_gathered_by_the_client(work, client):
    from unetsl.io.tiff import read_image
    from unetsl.predict.job import PredictionJob

    job = PredictionJob.create(work / "m.h5", work / "img.npy", work / "g.tif")
    run = job.run(dask=client, probabilities=True)
    assert run.tiles == 0 and run.dask.blocks >= 1 and run.dask.tiles_predicted >= run.dask.tiles
    assert run.written == [work / "g.tif", work / "g-prob.tif"]
    ref = PredictionJob.create(work / "m.h5", work / "img.npy", work / "r.tif")
    assert ref.run(probabilities=True).tiles > 0
    np.testing.assert_allclose(read_image(work / "g-prob.tif").data,
                               read_image(work / "r-prob.tif").data, atol=1e-5)


def test_test_time_augmentation_on_the_workers(work, client):
    """The workers average the same views as one process does."""
    from unetsl.io.tiff import read_image
    from unetsl.predict.job import PredictionJob

    for name, dask, views in (("ga.tif", client, True), ("ra.tif", None, True),
                              ("rp.tif", None, False)):
        job = PredictionJob.create(work / "m.h5", work / "img.npy", work / name)
        job.update({"test time augmentation": views})
        job.run(dask=dask, probabilities=True)
    augmented = read_image(work / "ga-prob.tif").data
    np.testing.assert_allclose(augmented, read_image(work / "ra-prob.tif").data, atol=1e-5)
    assert not np.allclose(augmented, read_image(work / "rp-prob.tif").data, atol=1e-4)


def test_bad_dask_value_is_one_line(work, assert_one_line_error, run_script):
    result = run_script("predict_image", "m.h5", "img.npy", "x.tif", "-b", "--dask", "many",
                        cwd=work)
    assert_one_line_error(result, "--dask many")


# ------------------------------------------------------------------------------- Slurm


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """sbatch/scancel stand-ins that keep the job scripts dask-jobqueue submits."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/bash\ncat "$1" > "$FAKE_SLURM/job-$$.sh"\n'
                                    'echo "Submitted batch job $$"\n')
    (bin_dir / "scancel").write_text("#!/bin/bash\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(tmp_path))
    return tmp_path


def test_slurm_cluster_submits_one_job_per_worker(fake_slurm, monkeypatch):
    pytest.importorskip("dask_jobqueue")
    import dask

    monkeypatch.setenv("DASK_JOBQUEUE__SLURM__JOB_EXTRA_DIRECTIVES", '["--gres=gpu:1"]')
    with dask.config.set({"jobqueue.slurm.job-extra-directives": ["--gres=gpu:1"]}):
        cluster = dask_cluster.make_cluster("slurm", 2, cores=1, memory="2GB", job_cpu=4)
        try:
            for _ in range(100):
                if len(glob.glob(str(fake_slurm / "job-*.sh"))) >= 2:
                    break
                time.sleep(0.1)
            scripts = [Path(p).read_text() for p in glob.glob(str(fake_slurm / "job-*.sh"))]
        finally:
            cluster.close()
    assert len(scripts) == 2
    assert "--cpus-per-task=4" in scripts[0] and "--gres=gpu:1" in scripts[0]
    assert "--nthreads 1" in scripts[0]  # one block at a time per worker job


def test_slurm_without_settings_is_one_line(monkeypatch):
    pytest.importorskip("dask_jobqueue")
    import dask

    with dask.config.set({"jobqueue.slurm.cores": None, "jobqueue.slurm.memory": None}):
        with pytest.raises(UnetslError, match="DASK_JOBQUEUE__SLURM__CORES"):
            dask_cluster.make_cluster("slurm", 1)


def test_dask_predict_script(tmp_path):
    result = subprocess.run(["bash", "-n", str(SLURM / "dask-predict.sh")], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    if shutil.which("shellcheck"):
        lint = subprocess.run(["shellcheck", str(SLURM / "dask-predict.sh")],
                              capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout
    bin_dir = tmp_path / "env" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "predict_image").write_text(
        '#!/bin/bash\necho "cores=$DASK_JOBQUEUE__SLURM__JOB_CPU '
        'extra=$DASK_JOBQUEUE__SLURM__JOB_EXTRA_DIRECTIVES"\nprintf "arg:%s\\n" "$@"\n')
    (bin_dir / "predict_image").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "DASK_"))}
    env.update(UNET_ENV=str(tmp_path / "env"), WORKERS="5", WORKER_CPUS="6")
    result = subprocess.run(["bash", str(SLURM / "dask-predict.sh"), "net.h5", "big.ome.zarr",
                             "out.ome.zarr", "-D", "batch size=64"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    args = [ln[4:] for ln in result.stdout.splitlines() if ln.startswith("arg:")]
    assert args == ["net.h5", "big.ome.zarr", "out.ome.zarr", "--dask", "slurm:5", "-b", "-D",
                    "batch size=64"]
    assert "cores=6" in result.stdout and "--gres=gpu:1" in result.stdout
    usage = subprocess.run(["bash", str(SLURM / "dask-predict.sh")], env=env,
                           capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr
    assert Path(script("predict_image")).exists()  # the real command is installed here
