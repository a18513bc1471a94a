"""The training loop: exact resume from a checkpoint, NaN stop naming the term, throughput reported."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from distill.config import LossSpec, TrainConfig
from distill.engine.train import NonFiniteLoss, TeacherTargets, TrainJob, lr_at, total_steps, train
from distill.losses import LossDims, build_losses


class TinyFaces:
    """20 images of 4 identities; each identity has its own mean colour."""

    def __init__(self, n=20, classes=4, seed=0):
        rng = np.random.default_rng(seed)
        self.labels = np.arange(n) % classes
        base = rng.integers(0, 255, size=(classes, 1, 1, 3))
        noise = rng.integers(-30, 30, size=(n, 112, 112, 3))
        self.images = np.clip(base[self.labels] + noise, 0, 255).astype(np.uint8)
        self.num_classes = classes

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


class TinyNet(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 8, stride=8)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 14 * 14, dim)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def make_job(tmp_path, steps=6, teacher=True, stop=0, specs=None):
    torch.manual_seed(0)
    data = TinyFaces()
    cache = None
    if teacher:
        rng = np.random.default_rng(1)
        cache = TeacherTargets(
            rng.normal(size=(20, 6)).astype(np.float32), rng.normal(size=(20, 6)).astype(np.float32)
        )
    specs = specs or (
        [LossSpec("arcface", 1.0), LossSpec("feature_l2", 2.0)] if teacher else [LossSpec("arcface")]
    )
    terms = build_losses(specs, LossDims(8, 6 if teacher else None, 4))
    cfg = TrainConfig(epochs=100, batch_size=4, lr=0.05, checkpoint_every=2, max_steps=steps, seed=3)
    return TrainJob(
        name="t",
        model=TinyNet(),
        losses=terms,
        weights={k: s.weight for k, s in zip(terms.keys(), specs, strict=True)},
        dataset=data,
        cfg=cfg,
        out_dir=tmp_path,
        teacher=cache,
        progress=False,
        stop_after_step=stop,
    )


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    full = make_job(tmp_path / "full")
    train(full)
    part = make_job(tmp_path / "split", stop=3)  # "crash" after step 3; checkpoint exists at step 2
    s1 = train(part)
    assert s1.steps == 3
    resumed = make_job(tmp_path / "split")
    s2 = train(resumed)
    assert s2.resumed_from_step == 2 and s2.steps == 6
    # per-step compute times cover exactly the steps each call ran, and add up to its compute time
    assert len(s1.step_seconds) == 3 and len(s2.step_seconds) == 4
    assert all(t > 0 for t in s2.step_seconds) and sum(s2.step_seconds) == pytest.approx(s2.seconds)
    # throughput at the median step (batch 4), so one stalled step cannot drag it down
    middle = sorted(s2.step_seconds)[1:3]
    assert s2.images_per_second == pytest.approx(4 / ((middle[0] + middle[1]) / 2))
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    for a, b in zip(full.losses.state_dict().values(), resumed.losses.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_training_reduces_the_loss_on_the_whole_set(tmp_path):
    from distill.data.transforms import to_model_input
    from distill.losses import LossInputs

    job = make_job(
        tmp_path, steps=60, teacher=False, specs=[LossSpec("arcface", 1.0, {"scale": 16.0, "margin": 0.2})]
    )
    job.cfg.lr, job.cfg.batch_size, job.cfg.checkpoint_every = 0.01, 8, 100
    data = job.dataset
    x, y = to_model_input(data.images), torch.as_tensor(data.labels)

    def full_loss():
        job.model.eval()
        with torch.no_grad():
            return job.losses["arcface"](LossInputs(student=job.model(x), labels=y)).item()

    before = full_loss()
    summary = train(job)
    after = full_loss()
    assert after < 0.5 * before
    assert summary.images_per_second > 0


def test_non_finite_loss_names_the_term_and_keeps_the_last_checkpoint(tmp_path):
    job = make_job(tmp_path, steps=6)
    original = job.losses["feature_l2"].forward
    calls = {"n": 0}

    def poisoned(inputs):
        calls["n"] += 1
        value = original(inputs)
        return value * float("nan") if inputs.step == 4 else value

    job.losses["feature_l2"].forward = poisoned
    with pytest.raises(NonFiniteLoss, match=r"'feature_l2' is nan at step 4"):
        train(job)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 4  # the failing step (index 4) is the 5th; the checkpoint after 4 steps is kept
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_schedule_and_step_count():
    cfg = TrainConfig(epochs=2.5, batch_size=4, lr=1.0, warmup_steps=2)
    assert total_steps(cfg, 21) == 13  # 5 full batches per epoch x 2.5 = 12.5 -> 13
    assert lr_at(0, cfg, 10) == pytest.approx(0.5)
    assert lr_at(1, cfg, 10) == pytest.approx(1.0)
    assert lr_at(2, cfg, 10) == pytest.approx(1.0)
    assert lr_at(6, cfg, 10) == pytest.approx((1 - 4 / 8) ** 2)


def test_balanced_batches_feed_the_classifier_only_the_uniform_part(tmp_path):
    job = make_job(tmp_path, steps=3, specs=[LossSpec("arcface", 1.0), LossSpec("ekd", 1.0, {"top_k": 5})])
    job.cfg.batch_size, job.cfg.sampler = 8, "balanced"
    job.cfg.balanced_identities, job.cfg.balanced_images = 2, 2
    seen = {"arcface": [], "ekd": []}
    head = job.losses["arcface"].head
    head_forward = head.forward

    def head_spy(emb, labels):  # what the margin head really receives
        seen["arcface"].append((emb.shape[0], None))
        return head_forward(emb, labels)

    head.forward = head_spy
    ekd = job.losses["ekd"]
    ekd_forward = ekd.forward

    def ekd_spy(inputs):
        seen["ekd"].append((inputs.student.shape[0], inputs.labels[4:].tolist()))
        return ekd_forward(inputs)

    ekd.forward = ekd_spy
    train(job)
    assert [n for n, _ in seen["arcface"]] == [4, 4, 4]  # 8 - 2 identities x 2 images
    assert [n for n, _ in seen["ekd"]] == [8, 8, 8]  # EKD ranks pairs over the whole batch
    for _, balanced_labels in seen["ekd"]:  # the balanced part: 2 identities, 2 images each
        assert balanced_labels[0] == balanced_labels[1] and balanced_labels[2] == balanced_labels[3]


def test_cpu_bf16_autocast_only_when_asked_and_native(tmp_path, monkeypatch):
    import distill.engine.device as device_mod
    from distill.engine.device import resolve_amp_dtype
    from distill.errors import InputError

    cpu = torch.device("cpu")
    assert resolve_amp_dtype("auto", cpu) is None  # a CPU stays fp32 unless bf16 is asked for
    monkeypatch.setattr(device_mod, "native_bf16", lambda _d: False)
    with pytest.raises(InputError, match="train.amp: bf16 on a CPU without native bf16"):
        resolve_amp_dtype("bf16", cpu)
    assert resolve_amp_dtype("bf16_if_native", cpu) is None  # the default preset's teacher on such a CPU
    monkeypatch.setattr(device_mod, "native_bf16", lambda _d: True)
    assert resolve_amp_dtype("bf16", cpu) is torch.bfloat16
    assert resolve_amp_dtype("bf16_if_native", cpu) is torch.bfloat16
    # the engine then really computes in bf16: the loss of a bf16 step differs from the fp32 one
    fp32, bf16 = make_job(tmp_path / "fp32", steps=1), make_job(tmp_path / "bf16", steps=1)
    bf16.cfg.amp = "bf16"
    a, b = train(fp32), train(bf16)
    assert (a.precision, b.precision) == ("fp32", "bf16")  # what the stage records
    assert a.final_losses["total"] != b.final_losses["total"]
    assert a.final_losses["total"] == pytest.approx(b.final_losses["total"], rel=0.05)


@pytest.mark.parametrize("at_end, expected", [(True, [2, 4, 6]), (False, [2, 4])])
def test_eval_every_evaluates_at_the_end_unless_the_caller_does(tmp_path, at_end, expected):
    """A stage that evaluates the written checkpoint itself asks the engine not to do it a second time."""
    job = make_job(tmp_path, steps=6)
    job.cfg.eval_every = 2
    seen = []
    job.evaluate = lambda model: seen.append(model.training) or {"val/accuracy": 0.5}
    job.evaluate_at_end = at_end
    summary = train(job)
    assert [e["step"] for e in summary.evaluations] == expected
    assert seen == [False] * len(expected)  # evaluated in eval mode, then back to training
