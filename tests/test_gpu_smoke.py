"""The GPU smoke script's tiny CPU version: it trains, reports its numbers and sees the loss fall."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_smoke  # noqa: E402

pytestmark = pytest.mark.slow


def test_tiny_smoke_on_cpu(tmp_path):
    out = tmp_path / "smoke.json"
    argv = ["--preset", "tiny", "--steps", "20", "--images", "32", "--classes", "4", "--batch", "8"]
    assert gpu_smoke.main([*argv, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["amp_dtype"] == "off (fp32)"
    assert report["steps"] == 20 and report["images_per_second"] > 0 and report["peak_memory_mib"] > 0
    assert report["loss_fell"] and report["finite"]
