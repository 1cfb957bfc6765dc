"""Atomic file writes: a crash or Ctrl-C never leaves a half-written model, log or image."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from unetsl.errors import UnetslError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary name keeps the suffix of ``path`` so that writers that choose
    a format from the suffix (Keras, tifffile) behave as for the final name.
    On error the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    check_writable([target])
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=target.suffix, dir=folder)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files; give the usual umask permissions
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def check_writable(paths, *, folders: bool = False) -> None:
    """Each path can be written: the nearest existing folder above it is a writable folder
    (not a file, not read-only), and the path itself is not an existing folder unless
    ``folders`` (outputs that are folders) or it is a .zarr store (replaced whole). Checked
    before long work, so nothing is computed for nothing; a one-line UnetslError names the
    path and the culprit."""
    for path in paths:
        if path is None:
            continue
        if (not folders and os.path.isdir(path)
                and not os.fspath(path).rstrip("/").lower().endswith(".zarr")):
            raise UnetslError(f"{path}: is a folder; give a file name")
        folder = Path(os.path.abspath(path)).parent
        for parent in (folder, *folder.parents):
            if parent.exists():
                if not parent.is_dir():
                    raise UnetslError(f"{path}: cannot write there, {parent} is a file")
                if not os.access(parent, os.W_OK | os.X_OK):
                    raise UnetslError(f"{path}: cannot write there, {parent} is read-only")
                break
