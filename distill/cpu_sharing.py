"""OpenMP threads that give their core back when another process needs it.

PyTorch's Linux wheels run their intra-op threads on GNU OpenMP (libgomp), whose threads spin up to
300,000 rounds at every barrier before they sleep. With two such processes on the same cores (a run
beside a test suite, a second run, a colleague's job), each spins through time slices the other needs:
here two 2-thread MobileFaceNet trainings on 2 cores took 5.1x their solo step time each, where sharing
fairly would be 2x (``benchmarks/cpu_sharing.py``). Spinning 10,000 rounds keeps the solo speed (batch-1
latency included, which ``OMP_WAIT_POLICY=PASSIVE`` tripled in a first check: 11 -> 31 ms) and
brings the shared case back to about fair. libgomp reads its settings once, when torch loads it, so
entry points call :func:`share_cores_gracefully` before anything imports torch; a user's own setting
always wins.

Evaluation-only onnxruntime sessions on a CPU also come in **lanes**: one single-thread session per
thread (at most ``EVAL_LANES``), each batch's rows split over them at once (``run_in_lanes``,
``split_threads``; ``deploy.runtimes.OnnxEmbedder`` and ``distill.models.onnx_teacher.OnnxTeacher``).
Small graphs share two threads poorly: two single-thread sessions embedded 1.32-1.38x more images per
second than one two-thread session of the INT8 Q/DQ MobileFaceNet, 1.16x and 1.22x of the two real
ONNX teachers (one run), with the same bits (``benchmarks/eval_lanes.py``).

onnxruntime's thread pool spins the same way; the sessions that only evaluate in batches (evaluation
copies, an ONNX teacher) stop spinning (:func:`stop_spinning`): 4 % slower alone, 12 % faster two at
once. The sessions whose latency is measured keep onnxruntime's default: without spinning, a
batch-1 call took 17 % longer here (MobileFaceNet fp32, 2 threads, 100 calls, two rounds).
"""

from __future__ import annotations

import os
from collections.abc import Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

GOMP_SPINCOUNT = "10000"  # spin rounds before a waiting OpenMP thread sleeps (libgomp's default: 300000)


def share_cores_gracefully(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set libgomp's spin count in ``environ`` (default ``os.environ``) unless the user chose one.

    Nothing is set when ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` is already there (an explicit ACTIVE
    or PASSIVE says what the user wants). Child processes (DataLoader workers, torchrun ranks, the
    pipeline's subprocesses) inherit it. Returns what was set.
    """
    env = os.environ if environ is None else environ
    if "GOMP_SPINCOUNT" in env or "OMP_WAIT_POLICY" in env:
        return {}
    env["GOMP_SPINCOUNT"] = GOMP_SPINCOUNT
    return {"GOMP_SPINCOUNT": GOMP_SPINCOUNT}


ORT_NO_SPIN = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


def stop_spinning(options: Any) -> Any:
    """Make an ``onnxruntime.SessionOptions`` sleep its idle threads at once; returns it."""
    for key, value in ORT_NO_SPIN.items():
        options.add_session_config_entry(key, value)
    return options


EVAL_LANES = 4  # most onnxruntime sessions an evaluation-only wrapper splits a batch over (a model copy each)


def split_threads(num_threads: int, lanes: int) -> list[int]:
    """``num_threads`` shared out over ``lanes`` sessions as evenly as it goes (each gets at least 1)."""
    base, extra = divmod(num_threads, lanes)
    return [max(1, base + (i < extra)) for i in range(lanes)]


def split_rows(n: int, lanes: int, batch_size: int | None) -> list[tuple[int, int]]:
    """[start, stop) row ranges, one per lane with rows, as even as whole ``batch_size`` chunks allow."""
    unit = batch_size or 1
    chunks = -(-n // unit)
    base, extra = divmod(chunks, lanes)
    bounds, start = [], 0
    for i in range(min(lanes, chunks)):
        stop = min(n, start + (base + (i < extra)) * unit)
        bounds.append((start, stop))
        start = stop
    return bounds


def run_in_lanes(
    embed_rows: Callable[[Any, np.ndarray], np.ndarray],
    sessions: list[Any],
    rows: np.ndarray,
    batch_size: int | None,
) -> np.ndarray:
    """``embed_rows(session, part)`` over ``rows`` split between ``sessions`` at once, results in row order.

    One session (or fewer than 2 rows): a plain call. onnxruntime releases the GIL while it runs, so
    threads are enough to keep every lane busy.
    """
    if len(sessions) == 1 or rows.shape[0] < 2:
        return embed_rows(sessions[0], rows)
    parts = split_rows(rows.shape[0], len(sessions), batch_size)
    with ThreadPoolExecutor(len(parts)) as pool:
        futures = [
            pool.submit(embed_rows, session, rows[start:stop])
            for session, (start, stop) in zip(sessions, parts, strict=False)
        ]
        return np.concatenate([f.result() for f in futures])
