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
