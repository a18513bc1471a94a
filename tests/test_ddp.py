"""Two processes (gloo, CPU) train exactly like one process on the same global batch."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from distill.config import LossSpec, TrainConfig
from distill.engine.train import TeacherTargets, TrainJob, train
from distill.losses import LossDims, build_losses
from tests.helpers.gloo import Faces, NoBatchNormNet, become_rank, free_port

pytestmark = pytest.mark.slow

SPECS = [
    LossSpec("arcface", 1.0, {"scale": 16.0, "margin": 0.2}),
    LossSpec("feature_l2", 2.0),
    LossSpec("ekd", 1.0, {"top_k": 20}),
    LossSpec("rpsd", 1.0, {"bank_size": 32, "k_neg": 4}),
]


def run(out_dir, steps=3):
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    teacher = TeacherTargets(
        rng.normal(size=(32, 6)).astype(np.float32), rng.normal(size=(32, 6)).astype(np.float32)
    )
    terms = build_losses(SPECS, LossDims(8, 6, 4))
    cfg = TrainConfig(
        epochs=10, batch_size=8, lr=0.05, max_steps=steps, checkpoint_every=100, seed=2, channels_last=False
    )
    job = TrainJob(
        name="ddp",
        model=NoBatchNormNet(),
        losses=terms,
        weights={k: s.weight for k, s in zip(terms.keys(), SPECS, strict=True)},
        dataset=Faces(),
        cfg=cfg,
        out_dir=out_dir,
        teacher=teacher,
        progress=False,
    )
    summary = train(job)
    return job, summary


def _worker(rank, world, port, out_dir):
    become_rank(rank, world, port)
    job, summary = run(out_dir)
    if rank == 0:
        result = {
            "model": job.model.state_dict(),
            "losses": job.losses.state_dict(),
            "final": summary.final_losses,
        }
        torch.save(result, out_dir / "rank0.pt")
    torch.distributed.destroy_process_group()


def test_two_processes_match_one(tmp_path):
    single, s_summary = run(tmp_path / "single")
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, tmp_path / "ddp")) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    got = torch.load(tmp_path / "ddp" / "rank0.pt", weights_only=True)
    model_state, loss_state, final = got["model"], got["losses"], got["final"]
    # losses of the last step, averaged over ranks, equal the single-process losses of the global batch
    for name, value in s_summary.final_losses.items():
        assert final[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
    # after 3 SGD steps the weights agree, so every gradient did
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(model_state[k], v, rtol=1e-4, atol=1e-5, msg=k)
    for k, v in single.losses.state_dict().items():
        torch.testing.assert_close(loss_state[k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_pipeline_stages_under_torchrun(tmp_path):
    """``torchrun --nproc_per_node=2 -m pipeline distill``: rank 0 runs data, both ranks embed their share
    of the teacher cache and train."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    cfg = tmp_path / "fp32-cache.yaml"  # fp32 so the two-rank cache can be compared to float noise
    cfg.write_text("cache:\n  precision: fp32\n")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "pipeline",
        "distill",
        "--preset",
        "tiny",
        "--config",
        str(cfg),
        "--out",
        str(out),
        "--no-progress",
    ]
    proc = subprocess.run(
        cmd, cwd=root, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("[distill] running") == 1  # logged once, by rank 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["data", "teacher", "cache", "distill"]
    assert (out / "distill" / "student.pt").is_file() and not list(out.glob(".*.work"))
    # the cache two ranks wrote together equals one process embedding every image itself
    assert manifest["stages"]["cache"]["metrics"]["ranks"] == 2
    assert manifest["stages"]["cache"]["metrics"]["precision"] == "fp32"
    from distill.config import TeacherConfig
    from distill.data.faces import open_train_set
    from distill.teacher import cache_teacher_embeddings, load_teacher, open_teacher_cache

    train = open_train_set(out / "data")
    assert len(train) > 64  # more than one batch, so both ranks had rows to write
    teacher = load_teacher(TeacherConfig(), out / "teacher" / "teacher.pt")
    cache_teacher_embeddings(teacher, train, tmp_path / "single-cache", progress=False)
    for got, want in zip(
        open_teacher_cache(out / "cache"), open_teacher_cache(tmp_path / "single-cache"), strict=True
    ):
        # different thread counts sum in different orders: float noise relative to the embedding scale
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(np.abs(want).max()))
    assert not list((out / "cache").glob("*.partial"))
