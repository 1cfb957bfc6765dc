"""Atomic writes leave either the old file or the new one, never half of one."""

from __future__ import annotations

import os
import stat

import pytest

from unetsl.atomic import atomic_path, atomic_write_text


def test_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "model.json"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]


def test_failure_keeps_old_file(tmp_path):
    target = tmp_path / "model.h5"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.h5"]


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "log.txt", "x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "log.txt").stat().st_mode)
    assert mode == 0o644


def test_temp_keeps_suffix(tmp_path):
    with atomic_path(tmp_path / "a.tif") as tmp:
        assert tmp.suffix == ".tif" and tmp.parent == tmp_path
        tmp.write_bytes(b"1")


def test_two_writers_of_one_file_leave_one_whole_file(tmp_path):
    """Two processes (here threads) writing the same output at once: each writes its own
    temporary file, the last rename wins, and the result is always one writer's whole file."""
    import threading

    target = tmp_path / "out.tif"
    started = threading.Barrier(2)
    contents = {name: name.encode() * 200_000 for name in ("a", "b")}

    def write(name: str) -> None:
        with atomic_path(target) as tmp:
            started.wait()  # both are writing before either renames
            with open(tmp, "wb") as f:
                for i in range(0, len(contents[name]), 4096):
                    f.write(contents[name][i:i + 4096])

    threads = [threading.Thread(target=write, args=(n,)) for n in contents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert target.read_bytes() in contents.values()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]
