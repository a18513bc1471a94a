"""Atomic file writes: a crash never leaves a file that looks complete (temp file + fsync + rename)."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it over ``path``.

    For writers that insist on a file name (torch.save, onnx, litert); the temp name keeps the suffix so
    libraries that dispatch on it still work. On any exception the temp file is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        publish(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def publish(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """fsync a finished temporary file and rename it over ``target`` (the commit step of a write).

    Public for writers whose temporary file several processes fill (the sharded teacher cache).
    """
    tmp_path = Path(tmp)
    with open(tmp_path, "rb+") as fh:
        os.fsync(fh.fileno())
    # mkstemp makes 0600: give the file normal permissions, keeping exec bits a writer set (scripts)
    os.chmod(tmp_path, (stat.S_IMODE(tmp_path.stat().st_mode) | 0o666) & ~_umask())
    os.replace(tmp_path, target)


def _umask() -> int:
    """The process umask (reading it means setting it; put it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars/arrays and paths."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
