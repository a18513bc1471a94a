"""ArcFace / CosFace heads against a loop-by-loop numpy computation, and gradient checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill.models.heads import ArcFaceHead, CosFaceHead


def _cosines_by_loops(emb: np.ndarray, w: np.ndarray) -> np.ndarray:
    b, c = emb.shape[0], w.shape[0]
    out = np.zeros((b, c))
    for i in range(b):
        for j in range(c):
            dot = sum(float(emb[i, k]) * float(w[j, k]) for k in range(emb.shape[1]))
            ne = math.sqrt(sum(float(v) ** 2 for v in emb[i]))
            nw = math.sqrt(sum(float(v) ** 2 for v in w[j]))
            out[i, j] = dot / (ne * nw)
    return out


def _arcface_by_loops(emb, w, labels, s, m):
    cos = _cosines_by_loops(emb, w)
    out = s * cos
    for i, y in enumerate(labels):
        theta = math.acos(cos[i, y])
        if theta + m <= math.pi:
            out[i, y] = s * math.cos(theta + m)
        else:  # insightface fallback when theta + m would pass pi
            out[i, y] = s * (cos[i, y] - m * math.sin(m))
    return out


def _cosface_by_loops(emb, w, labels, s, m):
    cos = _cosines_by_loops(emb, w)
    out = s * cos
    for i, y in enumerate(labels):
        out[i, y] = s * (cos[i, y] - m)
    return out


def _tiny_case(head):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g, dtype=head.weight.dtype))
    emb = torch.randn(4, head.embedding_dim, generator=g, dtype=head.weight.dtype) * 3.0
    # sample 3 points nearly away from its class centre: theta + m > pi (fallback branch), but not
    # exactly antipodal, where cos would sit at its extremum and the gradient check would say little
    emb[3] = -2.0 * head.weight[2].detach() + 0.2 * torch.randn(
        head.embedding_dim, generator=g, dtype=emb.dtype
    )
    labels = torch.tensor([0, 1, 4, 2])
    return emb, labels


def test_arcface_logits_equal_hand_computation():
    head = ArcFaceHead(5, 6, scale=64.0, margin=0.5).double()
    emb, labels = _tiny_case(head)
    got = head(emb, labels).detach().numpy()
    want = _arcface_by_loops(emb.numpy(), head.weight.detach().numpy(), labels.tolist(), 64.0, 0.5)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    # row 3 really exercises the fallback (theta + m > pi) and rows 0-2 the margin branch
    cos = _cosines_by_loops(emb.numpy(), head.weight.detach().numpy())
    assert -0.999 < cos[3, 2] < math.cos(math.pi - 0.5)
    assert all(cos[i, y] > math.cos(math.pi - 0.5) for i, y in enumerate(labels.tolist()[:3]))


def test_cosface_logits_equal_hand_computation():
    head = CosFaceHead(5, 6, scale=30.0, margin=0.35).double()
    emb, labels = _tiny_case(head)
    got = head(emb, labels).detach().numpy()
    want = _cosface_by_loops(emb.numpy(), head.weight.detach().numpy(), labels.tolist(), 30.0, 0.35)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_defaults_and_cosine_without_margin():
    arc, cos = ArcFaceHead(5, 6), CosFaceHead(5, 6)
    assert (arc.scale, arc.margin) == (64.0, 0.5)
    assert (cos.scale, cos.margin) == (64.0, 0.35)
    assert arc.weight.shape == (6, 5)
    head = arc.double()
    emb, _ = _tiny_case(head)
    want = _cosines_by_loops(emb.numpy(), head.weight.detach().numpy())
    np.testing.assert_allclose(head.cosine(emb).detach().numpy(), want, rtol=1e-12, atol=1e-12)


def test_hand_values_single_sample():
    # embedding at 60 degrees from centre 0 and 90 degrees from centre 1:
    # ArcFace target = s*cos(60deg + m) with m = pi/6 -> s*cos(90deg) = 0; non-target = s*cos(90deg) = 0
    head = ArcFaceHead(2, 2, scale=10.0, margin=math.pi / 6).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    emb = torch.tensor([[0.5, math.sqrt(3) / 2]], dtype=torch.float64) * 7.0
    out = head(emb, torch.tensor([0]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 10.0 * math.sqrt(3) / 2]], dtype=torch.float64))
    # CosFace on the same sample: target 10*(0.5 - 0.2) = 3, other 10*cos(30deg) to centre 1
    cf = CosFaceHead(2, 2, scale=10.0, margin=0.2).double()
    with torch.no_grad():
        cf.weight.copy_(head.weight)
    torch.testing.assert_close(
        cf(emb, torch.tensor([0])), torch.tensor([[3.0, 10.0 * math.sqrt(3) / 2]], dtype=torch.float64)
    )


@pytest.mark.parametrize("cls", [ArcFaceHead, CosFaceHead])
def test_gradcheck_float64(cls):
    head = cls(5, 6, scale=4.0).double()
    emb, labels = _tiny_case(head)
    emb = emb.clone().requires_grad_(True)
    weight = head.weight.detach().clone().requires_grad_(True)

    def fn(e, w):
        # the module's own forward with w substituted for its weight, so gradcheck covers both inputs
        return torch.func.functional_call(head, {"weight": w}, (e, labels))

    assert torch.autograd.gradcheck(fn, (emb, weight), eps=1e-6, atol=1e-6)


def test_bad_shapes():
    head = ArcFaceHead(4, 3)
    with pytest.raises(ValueError, match="embeddings must be"):
        head(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must be"):
        head(torch.randn(2, 4), torch.tensor([0, 1, 2]))
