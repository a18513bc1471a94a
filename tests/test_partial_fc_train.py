"""The engine with a class-sharded margin head (``sharded: true``): two gloo processes train exactly like
one process with the full head; shard checkpoints resume on the same or another world size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from distill.config import LossSpec, TrainConfig
from distill.engine.sharded_heads import load_rows, reshard, shard_file
from distill.engine.train import TeacherTargets, TrainJob, train
from distill.losses import LossDims, build_losses
from distill.losses.partial_fc import shard_range
from tests.helpers.gloo import Faces, NoBatchNormNet, become_rank, free_port

CLASSES = 5  # two ranks: shards of 3 and 2 classes
KINDS = ["arcface", "cosface", "teacher_head", "margin_distillation"]


def specs(kind: str, sharded: bool) -> list[LossSpec]:
    extra = {"sharded": True} if sharded else {}
    margin = {"margin_max": 0.4, "margin_min": 0.1} if kind == "margin_distillation" else {"margin": 0.2}
    return [LossSpec(kind, 1.0, {"scale": 16.0, **margin, **extra}), LossSpec("feature_l2", 2.0)]


def run(out_dir, kind="arcface", sharded=True, steps=3, stop_after=0):
    torch.manual_seed(0)
    loss_specs = specs(kind, sharded)
    rng = np.random.default_rng(1)
    teacher = TeacherTargets(
        rng.normal(size=(40, 6)).astype(np.float32), rng.normal(size=(40, 6)).astype(np.float32)
    )
    head = torch.randn(CLASSES, 6, generator=torch.Generator().manual_seed(3))  # a teacher's frozen centres
    terms = build_losses(loss_specs, LossDims(8, 6, CLASSES, teacher_head=head))
    cfg = TrainConfig(
        epochs=10, batch_size=8, lr=0.05, max_steps=steps, checkpoint_every=1, seed=2, channels_last=False
    )
    job = TrainJob(
        name="pfc",
        model=NoBatchNormNet(),
        losses=terms,
        weights={k: s.weight for k, s in zip(terms.keys(), loss_specs, strict=True)},
        dataset=Faces(40, CLASSES),
        cfg=cfg,
        out_dir=out_dir,
        teacher=teacher,
        progress=False,
        stop_after_step=stop_after,
    )
    return job, train(job)


def _worker(rank, world, port, out_dir, kind, stop_after):
    become_rank(rank, world, port)
    job, summary = run(out_dir, kind, stop_after=stop_after)
    if rank == 0:
        state = {
            "model": job.model.state_dict(),
            "losses": job.losses.state_dict(),
            "final": summary.final_losses,
        }
        torch.save(state, out_dir / "rank0.pt")
    torch.distributed.destroy_process_group()


def _spawn(out_dir, kind, stop_after=0, world=2):
    port = free_port()
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(r, world, port, out_dir, kind, stop_after)) for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    return torch.load(out_dir / "rank0.pt", weights_only=True)


def _assert_same(got_model, got_losses, job):
    for k, v in job.model.state_dict().items():
        torch.testing.assert_close(got_model[k], v, rtol=1e-4, atol=1e-5, msg=k)
    for k, v in job.losses.state_dict().items():  # the full head, gathered back after training
        torch.testing.assert_close(got_losses[k], v, rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("kind", KINDS)
def test_one_process_sharded_equals_full_head(tmp_path, kind):
    full, full_summary = run(tmp_path / "full", kind, sharded=False)
    part, part_summary = run(tmp_path / "part", kind, sharded=True)
    for name, value in full_summary.final_losses.items():
        assert part_summary.final_losses[name] == pytest.approx(value, rel=1e-5), name
    _assert_same(part.model.state_dict(), part.losses.state_dict(), full)
    assert (tmp_path / "part" / "checkpoints" / "head-00000003-r0of1.pt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_two_processes_sharded_equal_one_full_head(tmp_path, kind):
    single, summary = run(tmp_path / "single", kind, sharded=False)
    got = _spawn(tmp_path / "ddp", kind)
    for name, value in summary.final_losses.items():
        assert got["final"][name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
    _assert_same(got["model"], got["losses"], single)
    shards = sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").glob("head-*.pt"))
    assert shards == ["head-00000003-r0of2.pt", "head-00000003-r1of2.pt"]  # older steps pruned
    last = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)
    assert not any(k.endswith(".head.weight") for k in last["losses"])  # rows: shard files only


@pytest.mark.slow
def test_resume_on_another_world_size_reshards(tmp_path):
    """Two ranks stop after step 2; one process resumes from their shards and ends like the full head."""
    single, summary = run(tmp_path / "single", "arcface", sharded=False)
    _spawn(tmp_path / "run", "arcface", stop_after=2)
    assert (tmp_path / "run" / "checkpoints" / "head-00000002-r1of2.pt").is_file()
    resumed, resumed_summary = run(tmp_path / "run", "arcface", sharded=True)
    assert resumed_summary.resumed_from_step == 2
    for name, value in summary.final_losses.items():
        assert resumed_summary.final_losses[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
    _assert_same(resumed.model.state_dict(), resumed.losses.state_dict(), single)
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("head-*.pt")] == [
        "head-00000003-r0of1.pt"
    ]


def test_switching_layout_starts_afresh(tmp_path):
    """A checkpoint of the full head is not resumed by a sharded run (nor the other way): no crash."""
    run(tmp_path, "arcface", sharded=False, stop_after=2)
    _, summary = run(tmp_path, "arcface", sharded=True)
    assert summary.resumed_from_step == 0 and summary.steps == 3
    _, summary = run(tmp_path, "arcface", sharded=False)
    assert summary.resumed_from_step == 0


def _write_shards(folder, step, world, weight, momentum):
    for rank in range(world):
        start, end = shard_range(weight.shape[0], rank, world)
        term = {"start": start, "end": end, "num_classes": weight.shape[0], "weight": weight[start:end]}
        term["momentum"] = momentum[start:end]
        state = {
            "format": "facekd-head-shard/1",
            "step": step,
            "rank": rank,
            "world": world,
            "terms": {"a": term},
        }
        torch.save(state, shard_file(folder, step, rank, world))


@pytest.mark.parametrize(("world", "new_world"), [(3, 2), (2, 5), (4, 1), (1, 3)])
def test_reshard_n_to_m_keeps_every_row(tmp_path, world, new_world):
    weight, momentum = torch.randn(11, 4), torch.randn(11, 4)
    _write_shards(tmp_path, 7, world, weight, momentum)
    written = reshard(tmp_path, 7, world, new_world, tmp_path / "out")
    assert len(written) == new_world
    for rank, path in enumerate(written):
        start, end = shard_range(11, rank, new_world)
        term = torch.load(path, weights_only=True)["terms"]["a"]
        assert (term["start"], term["end"]) == (start, end)
        torch.testing.assert_close(term["weight"], weight[start:end], rtol=0, atol=0)
        torch.testing.assert_close(term["momentum"], momentum[start:end], rtol=0, atol=0)
    rows = load_rows(tmp_path, 7, world, "a", 11, 2, 9)  # any row range, across file boundaries
    torch.testing.assert_close(rows.weight, weight[2:9], rtol=0, atol=0)


def test_teacher_head_sharded_refuses_the_kl_term():
    from distill.errors import InputError

    dims = LossDims(8, 6, CLASSES, teacher_head=torch.randn(CLASSES, 6))
    with pytest.raises(InputError, match="kl_weight"):
        build_losses([LossSpec("teacher_head", 1.0, {"sharded": True, "kl_weight": 1.0})], dims)


def test_sampling_needs_the_sharded_head():
    from distill.errors import InputError

    with pytest.raises(InputError, match="sharded"):
        build_losses([LossSpec("arcface", 1.0, {"sample_rate": 0.5})], LossDims(8, None, CLASSES))


def test_ddp_private_ignore_list_is_still_there():
    """ddp_ignore reaches into DDP's private ignore list; this fails loudly when torch renames it."""

    from distill.engine.sharded_heads import ddp_ignore

    module = nn.Sequential(nn.Linear(2, 2))
    head = type("Head", (), {"weight": module[0].weight})()
    ddp_ignore(module, {"arcface": head})
    assert module._ddp_params_and_buffers_to_ignore == ["0.weight"]  # read by DDP's constructor
