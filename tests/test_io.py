"""Atomic writes: the old file survives a failed write; new files get normal permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from defectdet.io import atomic_open, unique_dir, write_text


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path):
    target = tmp_path / "report.json"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.json"]


def test_written_files_follow_the_umask_not_mkstemps_0600(tmp_path: Path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_unique_dir_never_reuses_a_taken_name(tmp_path: Path):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp2").mkdir()
    assert unique_dir(tmp_path, "exp") == tmp_path / "exp3"
    assert unique_dir(tmp_path, "exp", exist_ok=True) == tmp_path / "exp"
