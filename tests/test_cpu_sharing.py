"""OpenMP spin count set by the entry points before torch loads, read back from libgomp itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.cpu_sharing import GOMP_SPINCOUNT, share_cores_gracefully

ROOT = Path(__file__).resolve().parents[1]


def test_sets_the_spin_count_only_where_the_user_chose_nothing():
    env: dict[str, str] = {"PATH": "/bin"}
    assert share_cores_gracefully(env) == {"GOMP_SPINCOUNT": "10000"}
    assert env == {"PATH": "/bin", "GOMP_SPINCOUNT": "10000"}
    own = {"GOMP_SPINCOUNT": "123"}
    assert share_cores_gracefully(own) == {} and own == {"GOMP_SPINCOUNT": "123"}
    for policy in ("ACTIVE", "PASSIVE"):  # an explicit policy says what the user wants: left alone
        env = {"OMP_WAIT_POLICY": policy}
        assert share_cores_gracefully(env) == {} and env == {"OMP_WAIT_POLICY": policy}


def _tiny_onnx(path: Path) -> Path:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 8, stride=8), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    ).eval()
    torch.onnx.export(net, (torch.zeros(1, 3, 112, 112),), str(path), dynamo=False, input_names=["input"])
    return path


def _libgomp_settings(args: list[str], extra_env: dict[str, str]) -> str:
    """The lines libgomp prints about itself (``OMP_DISPLAY_ENV=VERBOSE``) when ``python -m`` runs."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(extra_env, OMP_DISPLAY_ENV="VERBOSE", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if "SPINCOUNT" in line]
    if not lines:
        pytest.fail(
            f"libgomp printed no settings (torch not loaded?); exit {proc.returncode}: {proc.stderr[-800:]!r}"
        )
    return lines[0]


def test_the_pipeline_entry_point_sets_it_before_libgomp_loads_and_keeps_the_users(tmp_path):
    model = str(_tiny_onnx(tmp_path / "tiny.onnx"))
    args = ["pipeline", "check", "--model", model]
    assert _libgomp_settings(args, {}) == f"GOMP_SPINCOUNT = '{GOMP_SPINCOUNT}'"
    assert _libgomp_settings(args, {"GOMP_SPINCOUNT": "123"}) == "GOMP_SPINCOUNT = '123'"
    # libgomp's own default, when the user asked for a policy: not overridden by us
    assert _libgomp_settings(args, {"OMP_WAIT_POLICY": "PASSIVE"}) == "GOMP_SPINCOUNT = '0'"


def _spins(session) -> bool:
    """Whether an onnxruntime session keeps its default (spinning) idle threads."""
    options = session.get_session_options()
    try:
        return options.get_session_config_entry("session.intra_op.allow_spinning") != "0"
    except RuntimeError:  # not set: onnxruntime's default, which spins
        return True


def test_evaluation_sessions_stop_spinning_and_latency_sessions_do_not(tmp_path):
    from deploy.runtimes import OnnxEmbedder, evaluation_twin, module_evaluation_twin
    from distill.models.factory import build_backbone
    from distill.models.onnx_teacher import OnnxTeacher

    path = _tiny_onnx(tmp_path / "tiny.onnx")  # batch 1: measured for latency, evaluated through a twin
    shipped = OnnxEmbedder(path, num_threads=1)
    sample = np.random.default_rng(0).standard_normal((4, 3, 112, 112)).astype(np.float32)
    twin, how = evaluation_twin(shipped, sample)
    assert twin is not shipped, how
    assert _spins(shipped._session) and not _spins(twin._session)
    np.testing.assert_allclose(twin.embed(sample), shipped.embed(sample), rtol=1e-5, atol=1e-6)

    torch.manual_seed(0)
    student = build_backbone("mobilefacenet", 32).eval()
    copy, how = module_evaluation_twin(student, sample, 1, "student")
    assert not _spins(copy._session), how

    teacher = OnnxTeacher(path, num_threads=1)  # cache and evaluation
    assert not _spins(teacher.session)
    assert _spins(OnnxTeacher(path, num_threads=1, spin=True).session)  # the measure stage's teacher row
