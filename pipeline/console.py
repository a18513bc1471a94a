"""Keep other libraries' noise off the console while a stage runs, and keep it in the stage's log file.

Exporters and runtimes print lines that look like errors and are not ours (torchao's missing optional
kernels, oneDNN/absl start-up lines, tracer and deprecation warnings, LiteRT's ``[START]/[DONE]`` with
temporary paths). While a stage runs, :func:`third_party_to_log`

* points the process's file descriptors 1 and 2 at ``logs/<stage>.log`` (C/C++ writes land there),
* keeps ``sys.stdout``/``sys.stderr`` on the console (our own lines and progress bars stay visible),
* sends Python warnings and log records that reach the root logger to the same file.

Redirecting descriptors is the only way to catch what native code writes; it is done only when
``sys.stdout``/``sys.stderr`` are the process's own descriptors 1 and 2 (a terminal, a pipe, a CI log),
not when a test harness has replaced them, and never with ``--verbose``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

LITERT_PROGRESS_ENV = "LITERT_TORCH_SHOW_PROGRESS"  # litert_torch/_config.py reads it at every print


def _own_descriptor(stream: object, fd: int) -> bool:
    try:
        return stream.fileno() == fd  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


@contextlib.contextmanager
def third_party_to_log(log_path: Path, *, verbose: bool = False) -> Iterator[Path | None]:
    """Within the block, other libraries' output goes to ``log_path`` (appended); yields the path or None."""
    if verbose:
        yield None
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    redirect = _own_descriptor(sys.stdout, 1) and _own_descriptor(sys.stderr, 2)
    try:
        with _capture(log_path, redirect) as path:
            yield path
    finally:
        if log_path.is_file() and log_path.stat().st_size == 0:  # nothing said: leave no empty file
            log_path.unlink()
            with contextlib.suppress(OSError):
                log_path.parent.rmdir()


@contextlib.contextmanager
def _capture(log_path: Path, redirect: bool) -> Iterator[Path]:
    with open(log_path, "a", buffering=1, encoding="utf-8", errors="replace") as log:
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)  # with a handler on the root, logging's last resort (stderr) is not used

        def to_log(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
            log.write(warnings.formatwarning(message, category, filename, lineno, line))

        saved_showwarning = warnings.showwarning
        warnings.showwarning = to_log
        # litert-torch prints its converter steps ([START]/[DONE] with temporary paths) through a rich
        # console on our stdout; its own switch turns them off (the stage prints one line per file)
        saved_litert = os.environ.get(LITERT_PROGRESS_ENV)
        os.environ[LITERT_PROGRESS_ENV] = "n"
        saved_streams = (sys.stdout, sys.stderr)
        saved_fds: tuple[int, int] | None = None
        try:
            if redirect:
                sys.stdout.flush()
                sys.stderr.flush()
                saved_fds = (os.dup(1), os.dup(2))
                # our own prints and progress bars keep writing to the console through copies of 1 and 2
                sys.stdout = open(os.dup(saved_fds[0]), "w", buffering=1, encoding="utf-8", closefd=True)
                sys.stderr = open(os.dup(saved_fds[1]), "w", buffering=1, encoding="utf-8", closefd=True)
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
            yield log_path
        finally:
            if saved_fds is not None:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved_fds[0], 1)
                os.dup2(saved_fds[1], 2)
                os.close(saved_fds[0])
                os.close(saved_fds[1])
                # the console copies stay open: a library may have bound a logging handler to them
                sys.stdout, sys.stderr = saved_streams
            warnings.showwarning = saved_showwarning
            root.removeHandler(handler)
            if saved_litert is None:
                os.environ.pop(LITERT_PROGRESS_ENV, None)
            else:
                os.environ[LITERT_PROGRESS_ENV] = saved_litert
