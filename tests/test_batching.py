"""distill/batching.py: the one loop that feeds a model file a batch in pieces."""

from __future__ import annotations

import numpy as np

from distill.batching import run_in_chunks


def test_chunks_padding_and_order_by_hand():
    x = np.arange(5, dtype=np.float32).reshape(5, 1)
    seen = []

    def run(chunk):
        seen.append(chunk[:, 0].tolist())
        return chunk * 10

    out = run_in_chunks(run, x, batch_size=2)  # a fixed batch of 2: the last chunk padded with a zero row
    assert seen == [[0, 1], [2, 3], [4, 0]]
    assert [o[:, 0].tolist() for o in out] == [[0, 10], [20, 30], [40]]  # the padding row dropped
    seen.clear()
    assert len(run_in_chunks(run, x, batch_size=None)) == 1 and seen == [[0, 1, 2, 3, 4]]  # all at once
    seen.clear()
    run_in_chunks(run, x, batch_size=None, step=3)
    assert seen == [[0, 1, 2], [3, 4]]  # a dynamic axis in steps, nothing padded
    assert run_in_chunks(run, x[:0], batch_size=2) == []
