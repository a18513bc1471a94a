"""SIGKILL in the middle of training, resume, and end with the same weights as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _start(out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.train_job", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _checkpoint_step(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["step"])
    except Exception:  # noqa: BLE001 - not there yet
        return -1


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    reference = _start(tmp_path / "ref")
    victim = _start(tmp_path / "killed")
    ckpt = tmp_path / "killed" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while _checkpoint_step(ckpt) < 6:
        assert victim.poll() is None, victim.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = _checkpoint_step(ckpt)
    assert 6 <= killed_at < 14 and not (tmp_path / "killed" / "final.pt").exists()
    resumed = _start(tmp_path / "killed")
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read().decode()
    assert reference.wait(timeout=120) == 0, reference.stderr.read().decode()
    a = torch.load(tmp_path / "ref" / "final.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "final.pt", weights_only=True)
    for part in ("model", "losses"):  # losses include the RPSD memory bank and EKD thresholds
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k}"
