"""Stage two's fp32 anchor: the loss by hand; the engine feeds it the frozen model's view (QAT: test_qat)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from compress.config import QatConfig, validate_qat
from distill.config import LossSpec, TrainConfig
from distill.engine.train import TrainJob, train
from distill.errors import InputError
from distill.losses import LossDims, LossInputs, LossTerm, build_losses
from distill.losses.fp32_anchor import FP32AnchorLoss
from tests.helpers.train_job import Net


def test_anchor_value_by_hand():
    q = np.array([[3.0, 4.0], [1.0, 0.0]])
    r = np.array([[0.0, 2.0], [0.0, -5.0]])
    # normalised: (.6,.8) vs (0,1) -> .36+.04 = .40 ; (1,0) vs (0,-1) -> 2  (= 2 - 2 cos)
    loss = FP32AnchorLoss(LossDims(2, None, 3, reference_dim=2))
    got = loss(LossInputs(student=torch.tensor(q), labels=torch.tensor([0, 1]), reference=torch.tensor(r)))
    assert got.item() == pytest.approx((0.40 + 2.0) / 2, abs=1e-6)


def test_stage_one_cannot_name_the_anchor():
    with pytest.raises(InputError, match=r"losses\[1\]: loss 'fp32_anchor' .* only stage two has"):
        build_losses([LossSpec("cosface"), LossSpec("fp32_anchor")], LossDims(8, None, 5))
    with pytest.raises(InputError, match="reference width 4 differs"):
        build_losses([LossSpec("fp32_anchor")], LossDims(8, None, 5, reference_dim=4))
    with pytest.raises(InputError, match="qat.fp32_anchor: a loss weight, must be >= 0"):
        validate_qat(QatConfig(fp32_anchor=-1.0))
    with pytest.raises(InputError, match="qat.keep: ptq trains no QAT model"):
        validate_qat(QatConfig(fp32_anchor=1.0, keep="ptq"))
    validate_qat(QatConfig(fp32_anchor=1.0))  # with training it is fine


class Spy(LossTerm):
    """Records what each step hands the loss terms; its value trains nothing in particular."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        self.seen.append((inputs.student.detach().clone(), inputs.reference.clone()))
        return inputs.student.pow(2).mean()


class Coloured:
    """16 images whose left half differs from the right, so a mirrored view gives another embedding."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 255, size=(16, 112, 112, 3), dtype=np.uint8)
        self.images[:, :, :56] //= 3
        self.labels = np.arange(16) % 4
        self.num_classes = 4

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


def test_the_engine_gives_each_step_the_frozen_models_embedding_of_the_same_view(tmp_path):
    torch.manual_seed(0)
    model = Net().eval()
    spy = Spy()
    job = TrainJob(
        name="anchored",
        model=model,
        losses=torch.nn.ModuleDict({"spy": spy}),
        weights={"spy": 1.0},
        dataset=Coloured(),
        cfg=TrainConfig(epochs=10, batch_size=8, lr=0.1, max_steps=3, freeze_bn=True, seed=2),
        out_dir=tmp_path,
        progress=False,
        reference=copy.deepcopy(model),  # step 0: the student itself, frozen
    )
    train(job)
    assert len(spy.seen) == 3
    first_student, first_ref = spy.seen[0]
    # same weights, same view (flips included, BatchNorm frozen): the same embedding at step 0
    torch.testing.assert_close(first_ref, first_student, rtol=1e-5, atol=1e-5)
    last_student, last_ref = spy.seen[-1]
    assert (last_student - last_ref).abs().max() > 1e-3  # the student moved, the reference did not
    assert job.reference is not None and all(not p.requires_grad for p in job.reference.parameters())
