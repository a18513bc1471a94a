"""Atomic writes: the file appears complete or not at all, with the permissions of a normal file."""

from __future__ import annotations

import os
import stat

import pytest

from distill.atomic import atomic_path, write_text


def test_written_file_has_umask_permissions_not_mkstemp_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "report.html", "<p>hi</p>")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o644
    assert (tmp_path / "report.html").read_text() == "<p>hi</p>"


def test_failed_write_leaves_neither_file_nor_temp(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "model.onnx") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("exporter crashed")
    assert list(tmp_path.iterdir()) == []
