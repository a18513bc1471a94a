"""Feeding a model file a batch in pieces: a fixed batch axis gets its last piece zero-padded.

One loop for every file-backed model: the ONNX teacher (``distill/models/onnx_teacher.py``) and the
deployed runtimes (``deploy/runtimes.py``: the ONNX, LiteRT and PyTorch embedders).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def run_in_chunks(
    run: Callable[[np.ndarray], object], x: np.ndarray, batch_size: int | None, step: int | None = None
) -> list[np.ndarray]:
    """``run`` over ``x`` in chunks, one output per chunk (padding rows dropped), in row order.

    A fixed ``batch_size`` (the file's batch axis): chunks of it, the last one zero-padded. A dynamic
    axis (``batch_size`` None): chunks of ``step`` rows, or all rows at once when ``step`` is None.
    """
    n = x.shape[0]
    size = batch_size or step or max(n, 1)
    outputs = []
    for start in range(0, n, size):
        chunk = x[start : start + size]
        real = chunk.shape[0]
        if batch_size is not None and real < batch_size:
            pad = np.zeros((batch_size - real, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        outputs.append(np.asarray(run(chunk))[:real])
    return outputs
