"""examples/slurm: the batch scripts parse, carry their #SBATCH lines, and call unetsl right.

The unetsl commands are replaced by stubs that print their arguments, so no Slurm, GPU or
TensorFlow is needed; the scripts run under plain bash as Slurm would run them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SLURM = Path(__file__).resolve().parents[2] / "examples" / "slurm"
SCRIPTS = ["predict.sh", "train.sh", "predict-array.sh"]


@pytest.fixture
def stub_env(tmp_path: Path) -> Path:
    """A fake virtual environment whose predict_image / train_model echo GPUS and arguments."""
    bin_dir = tmp_path / "env" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("predict_image", "train_model"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/bash\necho "{name} GPUS=$GPUS"\nprintf "arg:%s\\n" "$@"\n')
        stub.chmod(0o755)
    return tmp_path / "env"


def run(script: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith("SLURM_") and k != "GPUS"}
    environment.update(env)
    return subprocess.run(["bash", str(SLURM / script), *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=60)


def called_with(stdout: str) -> list[str]:
    return [line[4:] for line in stdout.splitlines() if line.startswith("arg:")]


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_parses_the_script(script):
    result = subprocess.run(["bash", "-n", str(SLURM / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_is_clean(script):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", str(SLURM / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_sbatch_directives_come_before_the_first_command(script):
    lines = (SLURM / script).read_text().splitlines()
    assert lines[0] == "#!/bin/bash"
    first_command = next(i for i, ln in enumerate(lines) if ln.strip() and not ln.startswith("#"))
    directives = [ln for ln in lines[:first_command] if ln.startswith("#SBATCH")]
    for option in ("--job-name=", "--time=", "--mem=", "--gres=gpu:"):
        assert any(option in d for d in directives), (script, option)
    assert not any(ln.startswith("#SBATCH") for ln in lines[first_command:])
    assert os.access(SLURM / script, os.X_OK)
    assert (SLURM / "README.md").read_text().count(script) >= 1


def test_predict_calls_predict_image_in_batch_mode(tmp_path, stub_env):
    result = run("predict.sh", "models/net-best.h5", "data/img 1.tif", "--probabilities",
                 cwd=tmp_path, UNET_ENV=str(stub_env))
    assert result.returncode == 0, result.stderr
    assert "predict_image GPUS=4" in result.stdout
    assert called_with(result.stdout) == ["models/net-best.h5", "data/img 1.tif",
                                          "pred-net-best-img 1.tif", "-D", "batch size=128",
                                          "--probabilities", "-b"]
    # GPUS comes from Slurm's allocation, or from the caller
    result = run("predict.sh", "m.h5", "i.tif", cwd=tmp_path, UNET_ENV=str(stub_env),
                 SLURM_GPUS_ON_NODE="2")
    assert "predict_image GPUS=2" in result.stdout
    result = run("predict.sh", "m.h5", "i.tif", cwd=tmp_path, UNET_ENV=str(stub_env), GPUS="1")
    assert "predict_image GPUS=1" in result.stdout


def test_train_calls_train_model_in_batch_mode(tmp_path, stub_env):
    result = run("train.sh", "net.json", "-D", "epochs=5", cwd=tmp_path, UNET_ENV=str(stub_env))
    assert result.returncode == 0, result.stderr
    assert "train_model GPUS=4" in result.stdout
    assert called_with(result.stdout) == ["-c", "net.json", "-D", "batch size=128",
                                          "-D", "multi-gpu=true", "-D", "epochs=5", "-b"]
    result = run("train.sh", "net.json", cwd=tmp_path, UNET_ENV=str(stub_env), GPUS="1",
                 BATCH_SIZE="8")
    assert called_with(result.stdout)[2:6] == ["-D", "batch size=8", "-D", "multi-gpu=false"]
    # a resubmitted job continues from net-latest.h5, unless RESUME=0
    (tmp_path / "net-latest.h5").touch()
    result = run("train.sh", "net.json", cwd=tmp_path, UNET_ENV=str(stub_env))
    assert called_with(result.stdout)[-2:] == ["--resume", "-b"]
    result = run("train.sh", "net.json", cwd=tmp_path, UNET_ENV=str(stub_env), RESUME="0")
    assert "--resume" not in called_with(result.stdout)


@pytest.mark.parametrize("script", ["predict.sh", "train.sh", "predict-array.sh"])
def test_missing_arguments_print_usage(tmp_path, script, stub_env):
    result = run(script, cwd=tmp_path, UNET_ENV=str(stub_env))
    assert result.returncode == 2 and "usage: sbatch" in result.stderr


def test_array_lists_images_and_predicts_one_per_task(tmp_path, stub_env):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("b.tif", "a.tif", "B.tif", "pred-old.tif", "notes.txt"):
        (images / name).touch()
    (tmp_path / "net.h5").touch()
    work = tmp_path / "work"
    work.mkdir()

    listing = run("predict-array.sh", "../net.h5", "../images", cwd=work)
    assert listing.returncode == 0, listing.stderr
    assert "3 images" in listing.stdout and "--array=0-2 " in listing.stdout
    order = [ln.split(": ", 1)[1] for ln in listing.stdout.splitlines()
             if ln.startswith("  ") and ": " in ln]
    assert order == ["../images/B.tif", "../images/a.tif", "../images/b.tif"]  # bytewise

    for task, expected in enumerate(order):
        result = run("predict-array.sh", "../net.h5", "../images", "-D", "overlap=[0,1,8,8]",
                     cwd=work, UNET_ENV=str(stub_env), SLURM_ARRAY_TASK_ID=str(task))
        assert result.returncode == 0, result.stderr
        assert "predict_image GPUS=1" in result.stdout
        name = Path(expected).name
        assert called_with(result.stdout) == ["../net.h5", expected,
                                              f"predictions/pred-net-{name}", "-D",
                                              "batch size=128", "-D", "overlap=[0,1,8,8]", "-b"]
    assert (work / "predictions").is_dir()

    beyond = run("predict-array.sh", "../net.h5", "../images", cwd=work,
                 UNET_ENV=str(stub_env), SLURM_ARRAY_TASK_ID="3")
    assert beyond.returncode == 2 and "--array=0-2" in beyond.stderr
    custom = run("predict-array.sh", "../net.h5", "../images", cwd=work, UNET_ENV=str(stub_env),
                 SLURM_ARRAY_TASK_ID="0", OUTPUT_DIR="out")
    assert "out/pred-net-B.tif" in called_with(custom.stdout)


def test_array_refuses_missing_model_folder_or_images(tmp_path):
    (tmp_path / "net.h5").touch()
    (tmp_path / "empty").mkdir()
    for args, needle in ((["nope.h5", "empty"], "nope.h5"), (["net.h5", "nope"], "nope"),
                         (["net.h5", "empty"], "no *.tif")):
        result = run("predict-array.sh", *args, cwd=tmp_path)
        assert result.returncode == 2 and needle in result.stderr, result.stderr


@pytest.mark.slow
def test_train_script_resumes_after_a_time_limit_kill(tmp_path):
    """Slurm at the time limit: SIGTERM to the job's processes, SIGKILL after a grace period;
    the job submitted again continues from the checkpoint the SIGTERM saved."""
    import signal
    import sys
    import time

    from unetsl.config.model_config import Config
    from unetsl.data.synthetic import write_dataset
    from unetsl.training.checkpoints import read_state

    write_dataset(tmp_path, "2d", n_images=1, shape=(3, 32, 32), seed=1, distance=False)
    cfg = Config({"input shape": [1, 1, 16, 16], "depth": 2, "n filters": 2, "n labels": 2,
                  "pooling": [1, 2, 2], "stride": [0, 1, 8, 8], "epochs": 200, "seed": 1,
                  "validation fraction": 0.0,
                  "data sources": [{"source type": "paired directories",
                                    "input folders": ["images"], "label folders": ["labels"],
                                    "labeller": "multiclass labels"}]}, path=tmp_path / "m.json")
    cfg.save()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(UNET_ENV=str(Path(sys.executable).parent.parent), GPUS="1", BATCH_SIZE="2")
    job = subprocess.Popen(["bash", str(SLURM / "train.sh"), "m.json"], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    latest = tmp_path / "m-latest.h5"
    deadline = time.monotonic() + 240
    while not latest.exists():  # at least one epoch done
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()[0]
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGTERM)
    try:
        job.communicate(timeout=60)  # the grace period
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        job.communicate()
    state = read_state(latest)
    assert state is not None and 1 <= state.epochs_done < 200
    again = subprocess.run(["bash", str(SLURM / "train.sh"), "m.json", "-D",
                            f"epochs={state.epochs_done + 1}"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming: m-latest.h5" in again.stdout
    assert read_state(latest).epochs_done == state.epochs_done + 1
