"""RPSD: values pinned by hand and by a plain-Python loop reference, mining rules, bank update, gradients."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from distill.errors import InputError
from distill.losses.base import LossDims, LossInputs
from distill.losses.rpsd import RPSDLoss, mine_bank

# ----------------------------------------------------------------------------------- loop reference


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def reference(s, t, y, bank_t, bank_y, k_neg, mode="mse", tau=0.1, beta=0.1, bank_s=None, in_batch=True):
    """Per anchor: list the (student, teacher) relation pairs one by one, then reduce."""
    s = [_unit(v) for v in s]
    t = [_unit(v) for v in t]
    rows = []
    for i in range(len(s)):
        pairs = []
        if in_batch:
            pairs += [(_dot(s[i], s[j]), _dot(t[i], t[j])) for j in range(len(s)) if j != i]
        positives = [j for j in range(len(bank_t)) if bank_y[j] == y[i]]
        negatives = [j for j in range(len(bank_t)) if bank_y[j] != y[i]]
        negatives = sorted(negatives, key=lambda j: -_dot(t[i], bank_t[j]))[:k_neg]
        side = bank_s if bank_s is not None else bank_t
        pairs += [(_dot(s[i], side[j]), _dot(t[i], bank_t[j])) for j in positives + negatives]
        rows.append(pairs)
    if mode == "kl":
        total, count = 0.0, 0
        for pairs in rows:
            if not pairs:
                continue
            zs = sum(math.exp(a / tau) for a, _ in pairs)
            zt = sum(math.exp(b / tau) for _, b in pairs)
            for a, b in pairs:
                ps, pt = math.exp(a / tau) / zs, math.exp(b / tau) / zt
                total += pt * math.log(pt / ps)
            count += 1
        return total / count
    flat = [a - b for pairs in rows for a, b in pairs]
    if mode == "mse":
        return sum(x * x for x in flat) / len(flat)
    return sum(0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta for x in flat) / len(flat)


# B = 4, D = 3, bank of 5 unit vectors with known labels
S4 = [[1.0, 0.2, 0.0], [0.1, 1.0, 0.3], [0.5, 0.5, 0.5], [-0.4, 0.1, 1.0]]
T4 = [[1.0, 0.0, 0.1], [0.1, 1.0, -0.05], [0.3, 0.6, 0.4], [-0.2, 0.0, 1.0]]
Y4 = [0, 1, 0, 2]
BANK = [_unit(v) for v in ([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0.2, -1, 0.5])]
BANK_Y = [0, 3, 2, 1, 4]


def _inputs(s, t, y, dtype=torch.float64, step=0) -> LossInputs:
    return LossInputs(
        student=torch.tensor(s, dtype=dtype),
        labels=torch.tensor(y),
        teacher=torch.tensor(t, dtype=dtype),
        step=step,
    )


def _with_bank(loss: RPSDLoss, bank=BANK, bank_y=BANK_Y) -> RPSDLoss:
    loss.bank.enqueue(torch.tensor(bank, dtype=torch.float64), torch.tensor(bank_y))
    return loss.eval()  # eval: the forward leaves the bank as it is


# -------------------------------------------------------------------------------------------- values


def test_mse_value_by_hand():
    # anchor 0: s=(.6,.8) t=(1,0): in-batch (.8 vs 0), bank pos m1 (.6 vs 1), only negative m2 (1 vs .6)
    # anchor 1: s=t=(0,1): in-batch (.8 vs 0); k_neg=1 picks m2 (teacher .8 > 0): (.8 vs .8)
    loss = RPSDLoss(LossDims(2, 2, 6), bank_size=4, k_neg=1).double()
    _with_bank(loss, bank=[[1.0, 0.0], [0.6, 0.8]], bank_y=[0, 5])
    got = loss(_inputs([[0.6, 0.8], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]], [0, 1])).item()
    assert got == pytest.approx((0.64 + 0.16 + 0.16 + 0.64 + 0.0) / 5, abs=1e-12)
    loss.k_neg = 2  # anchor 1 now also takes m1: (0 vs 0)
    got = loss(_inputs([[0.6, 0.8], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]], [0, 1])).item()
    assert got == pytest.approx(1.6 / 6, abs=1e-12)


@pytest.mark.parametrize(
    "mode, knobs",
    [
        ("mse", {}),
        ("smooth_l1", {"smooth_l1_beta": 0.1}),
        ("smooth_l1", {"smooth_l1_beta": 1.0}),
        ("kl", {"tau_r": 0.1}),
        ("kl", {"tau_r": 0.5}),
    ],
)
@pytest.mark.parametrize("k_neg", [0, 2, 10])
def test_modes_match_loop_reference(mode, knobs, k_neg):
    loss = _with_bank(RPSDLoss(LossDims(3, 3, 5), bank_size=8, k_neg=k_neg, loss=mode, **knobs).double())
    got = loss(_inputs(S4, T4, Y4)).item()
    expected = reference(
        S4,
        T4,
        Y4,
        BANK,
        BANK_Y,
        k_neg,
        mode,
        tau=knobs.get("tau_r", 0.1),
        beta=knobs.get("smooth_l1_beta", 0.1),
    )
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-14)
    got32 = loss.float()(_inputs(S4, T4, Y4, dtype=torch.float32)).item()
    assert got32 == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_without_in_batch_pairs_and_with_student_bank():
    loss = _with_bank(RPSDLoss(LossDims(3, 3, 5), bank_size=8, k_neg=2, in_batch=False).double())
    expected = reference(S4, T4, Y4, BANK, BANK_Y, 2, in_batch=False)
    assert loss(_inputs(S4, T4, Y4)).item() == pytest.approx(expected, rel=1e-10)

    student_side = [_unit(v) for v in ([0.9, 0.1, 0], [0, 1, 0.2], [0.1, 0, 1], [1, 0.8, 0], [0, -1, 0.4])]
    loss = RPSDLoss(LossDims(3, 3, 5), bank_size=8, k_neg=2, student_bank=True).double()
    loss.bank.enqueue(torch.tensor(BANK, dtype=torch.float64), torch.tensor(BANK_Y))
    loss.student_bank.enqueue(torch.tensor(student_side, dtype=torch.float64), torch.tensor(BANK_Y))
    expected = reference(S4, T4, Y4, BANK, BANK_Y, 2, bank_s=student_side)
    assert loss.eval()(_inputs(S4, T4, Y4)).item() == pytest.approx(expected, rel=1e-10)


# -------------------------------------------------------------------------------------------- mining


def test_mining_takes_all_positives_and_exactly_the_k_most_teacher_similar_negatives():
    g = torch.Generator().manual_seed(0)
    b, n, k = 6, 40, 5
    sim = torch.rand(b, n, generator=g, dtype=torch.float64) * 2 - 1
    anchor_y = torch.tensor([0, 1, 2, 0, 7, 3])
    bank_y = torch.randint(0, 5, (n,), generator=g)
    mask = mine_bank(sim, anchor_y, bank_y, k)
    for i in range(b):
        pos = {j for j in range(n) if bank_y[j] == anchor_y[i]}
        neg = sorted((j for j in range(n) if bank_y[j] != anchor_y[i]), key=lambda j: -float(sim[i, j]))
        chosen = {j for j in range(n) if mask[i, j]}
        assert chosen == pos | set(neg[:k])
        assert len(chosen - pos) == k


def test_mining_with_fewer_negatives_than_k_keeps_them_all():
    sim = torch.tensor([[0.9, 0.1, 0.5]])
    mask = mine_bank(sim, torch.tensor([4]), torch.tensor([4, 1, 2]), k_neg=10)
    assert mask.tolist() == [[True, True, True]]
    mask = mine_bank(sim, torch.tensor([4]), torch.tensor([4, 1, 2]), k_neg=0)
    assert mask.tolist() == [[True, False, False]]


def test_empty_bank_uses_only_in_batch_pairs_then_enqueues_after_the_loss():
    loss = RPSDLoss(LossDims(3, 3, 5), bank_size=16, k_neg=3).double()  # training mode
    first = loss(_inputs(S4, T4, Y4)).item()
    assert first == pytest.approx(reference(S4, T4, Y4, [], [], 3), rel=1e-10)
    emb, labels = loss.bank.valid()
    assert labels.tolist() == Y4
    np.testing.assert_allclose(emb.numpy(), [_unit(v) for v in T4], atol=1e-12)
    second = loss(_inputs(S4, T4, Y4)).item()  # the bank now holds this batch's teacher embeddings
    assert second == pytest.approx(reference(S4, T4, Y4, [_unit(v) for v in T4], Y4, 3), rel=1e-10)
    assert len(loss.bank) == 8
    loss.eval()
    loss(_inputs(S4, T4, Y4))
    assert len(loss.bank) == 8  # evaluation does not enqueue


def test_nothing_to_relate_gives_zero_with_a_graph():
    loss = RPSDLoss(LossDims(3, 3, 5), in_batch=False)
    s = torch.randn(2, 3, requires_grad=True)
    out = loss(LossInputs(s, torch.tensor([0, 1]), torch.randn(2, 3)))
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))
    assert len(loss.bank) == 2


def test_student_bank_stores_projected_normalised_student():
    torch.manual_seed(0)
    loss = RPSDLoss(LossDims(3, 4, 5), bank_size=8, student_bank=True)
    s, t = torch.randn(3, 3), torch.randn(3, 4)
    loss(LossInputs(s, torch.tensor([0, 1, 2]), t))
    w = loss.projector.proj.weight.detach().numpy()
    expected = [(w @ row) / np.linalg.norm(w @ row) for row in s.numpy()]
    np.testing.assert_allclose(loss.student_bank.valid()[0].numpy(), expected, atol=1e-6)
    assert not loss.student_bank.emb.requires_grad


# ------------------------------------------------------------------------------------ gradients, resume


@pytest.mark.parametrize("mode", ["mse", "smooth_l1", "kl"])
@pytest.mark.parametrize("student_bank", [False, True])
def test_gradcheck_float64_through_module(mode, student_bank):
    g = torch.Generator().manual_seed(5)
    loss = RPSDLoss(LossDims(3, 4, 4), bank_size=6, k_neg=2, loss=mode, tau_r=0.5, student_bank=student_bank)
    loss = loss.double()
    bank_y = torch.tensor([0, 1, 2, 3, 1, 0])
    loss.bank.enqueue(torch.nn.functional.normalize(torch.randn(6, 4, generator=g)), bank_y)
    if student_bank:
        loss.student_bank.enqueue(torch.nn.functional.normalize(torch.randn(6, 4, generator=g)), bank_y)
    loss.eval()  # mining depends on the teacher only; eval keeps the bank fixed across evaluations
    s = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randn(4, 4, dtype=torch.float64, generator=g)
    y = torch.tensor([0, 1, 1, 3])
    w0 = loss.projector.proj.weight.detach().clone().requires_grad_(True)

    def f(x, w):
        return torch.func.functional_call(loss, {"projector.proj.weight": w}, (LossInputs(x, y, t),))

    assert torch.autograd.gradcheck(f, (s, w0))


def test_backward_after_enqueue_and_resume_from_state_dict():
    torch.manual_seed(1)
    dims = LossDims(3, 4, 6)
    a = RPSDLoss(dims, bank_size=10, k_neg=3, student_bank=True)
    opt = torch.optim.SGD(a.parameters(), lr=0.1)
    batches = [(torch.randn(4, 3), torch.randint(0, 6, (4,)), torch.randn(4, 4)) for _ in range(5)]
    for s, y, t in batches[:3]:  # the bank is written in place after the graph was built
        opt.zero_grad()
        a(LossInputs(s, y, t)).backward()
        opt.step()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = RPSDLoss(dims, bank_size=10, k_neg=3, student_bank=True)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert len(b.bank) == 10 and int(b.bank.ptr) == 2
    for s, y, t in batches[3:]:
        va, vb = a(LossInputs(s, y, t)), b(LossInputs(s, y, t))
        assert va.item() == vb.item()
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value), key


def test_bad_knobs_raise_input_error():
    dims = LossDims(3, 3, 2)
    with pytest.raises(InputError, match="rpsd.loss"):
        RPSDLoss(dims, loss="l1")
    with pytest.raises(InputError, match="rpsd.bank_size"):
        RPSDLoss(dims, bank_size=0)
    with pytest.raises(InputError, match="rpsd.tau_r"):
        RPSDLoss(dims, loss="kl", tau_r=0)
    with pytest.raises(ValueError, match="teacher"):
        RPSDLoss(LossDims(3, None, 2))


def test_label_free_mining_takes_the_teacher_nearest_entries_whatever_their_label():
    sim = torch.tensor([[0.9, 0.1, 0.8, 0.3], [0.2, 0.7, 0.1, 0.6]])
    same_label = torch.tensor([1, 1, 1, 1])
    with_labels = mine_bank(sim, torch.tensor([1, 2]), same_label, k_neg=2)
    assert with_labels[0].all() and with_labels[1].tolist() == [False, True, False, True]
    free = mine_bank(sim, None, None, k_neg=2)  # hand-picked: the two largest per row
    assert free.tolist() == [[True, False, True, False], [False, True, False, True]]


def test_rpsd_without_labels_ignores_them():
    torch.manual_seed(0)
    dims = LossDims(student_dim=4, teacher_dim=6, num_classes=3)
    s, t = torch.randn(5, 4), torch.randn(5, 6)
    losses = []
    projector = RPSDLoss(dims, bank_size=8).projector.state_dict()
    for labels in (torch.tensor([0, 0, 1, 1, 2]), torch.tensor([2, 1, 0, 2, 1])):
        term = RPSDLoss(dims, bank_size=8, k_neg=2, use_labels=False)
        term.projector.load_state_dict(projector)
        term.train()
        term(LossInputs(student=s, labels=labels, teacher=t, step=0))  # fills the bank
        losses.append(term(LossInputs(student=s, labels=labels, teacher=t, step=1)))
    torch.testing.assert_close(losses[0], losses[1])
    labelled = RPSDLoss(dims, bank_size=8, k_neg=2)  # with labels the same inputs give another loss
    labelled.projector.load_state_dict(projector)
    labelled.train()
    labelled(LossInputs(student=s, labels=torch.tensor([0, 0, 1, 1, 2]), teacher=t, step=0))
    other = labelled(LossInputs(student=s, labels=torch.tensor([0, 0, 1, 1, 2]), teacher=t, step=1))
    assert not torch.allclose(other, losses[0])
