"""Shared fixtures: where the original's reference files live, tiny configs, CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Results that do not depend on the CPU: "auto" would compute in bfloat16 on AMX Xeons and
# GPUs, while tests compare predictions with float32 ones (console scripts, Dask workers and
# training workers started by tests inherit it). Tests of "auto" and of the reduced
# precisions set their own (tests/nets/test_precision*.py).
os.environ["UNETSL_PRECISION"] = "float32"

REPO = Path(__file__).resolve().parents[1]
COMPAT = REPO.parent / "shared" / "compat"


@pytest.fixture
def compat() -> Path:
    """The original's files (../shared/compat); the test skips when they are absent."""
    if not COMPAT.is_dir():
        pytest.skip(f"reference files of the original not found at {COMPAT}")
    return COMPAT


def _script(name: str) -> str:
    """Path of an installed console script in the running interpreter's environment."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _run_script(name: str, *args: str, cwd: Path | None = None, timeout: int = 300,
               input: str | None = None) -> subprocess.CompletedProcess:
    """Run a console script as a user would (no terminal on stdin)."""
    return subprocess.run([_script(name), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, input=input if input is not None else "")


def _assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """Non-zero exit, no traceback, one 'error:' line naming the culprit."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture
def run_script():
    """``run_script(name, *args, cwd=, timeout=, input=)``: a console script run as a user
    would run it (no terminal on stdin); returns the CompletedProcess."""
    return _run_script


@pytest.fixture
def assert_one_line_error():
    """``assert_one_line_error(result, *needles)``: non-zero exit, no traceback, exactly one
    'error:' line, which contains every needle."""
    return _assert_one_line_error
