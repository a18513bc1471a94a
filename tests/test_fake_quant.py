"""facekd's PyTorch port of NNCF's CPU fake-quantization kernels: same numbers as NNCF's C++, no build."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress import fake_quant
from compress.fake_quant import (
    nncf_quantize_functions,
    quantize_backward,
    quantize_forward,
    reduce_to,
    use_torch_kernels,
)

nncf_qf = pytest.importorskip("nncf.torch.quantization.quantize_functions")
NNCF_CLASSES = (nncf_qf.QuantizeSymmetric, nncf_qf.QuantizeAsymmetric)  # as NNCF ships them (import time)


@pytest.fixture
def nncf_as_shipped():
    """NNCF's own autograd classes in place for the test, facekd's restored after it."""
    from nncf.torch.quantization import quantize_functions as module

    saved = (module.QuantizeSymmetric, module.QuantizeAsymmetric)
    module.QuantizeSymmetric, module.QuantizeAsymmetric = NNCF_CLASSES
    yield module
    module.QuantizeSymmetric, module.QuantizeAsymmetric = saved


def _cpp_kernels():
    """NNCF's compiled CPU kernels (tests/conftest.py builds them once per session)."""
    from nncf.torch.quantization.extensions import QuantizedFunctionsCPU

    from compress.nncf_extension import load_nncf_cpu_kernels

    load_nncf_cpu_kernels()
    return QuantizedFunctionsCPU.get("Quantize_forward"), QuantizedFunctionsCPU.get("Quantize_backward")


def test_forward_and_backward_by_hand():
    # range [-2, 2] on 5 levels: steps of 1.0, zero point 2; alpha = level_low / level_high = -1
    x = torch.tensor([-3.0, -1.2, 0.4, 0.6, 1.9, 2.5])
    low, span = torch.tensor([-2.0]), torch.tensor([4.0])
    out = quantize_forward(x, low, span, 5)
    assert out.tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0, 2.0]
    grad = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    g_in, g_low, g_span = quantize_backward(grad, x, out - x, low, span, -2, 2, asymmetric=True)
    assert g_in.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 0.0]  # straight through inside the range only
    # range gradient: below -> alpha (-1) * g; inside -> (out - x) / span * g; above -> 1 * g
    inside = (0.2 / 4) * 2 + (-0.4 / 4) * 3 + (0.4 / 4) * 4 + (0.1 / 4) * 5
    assert g_span.item() == pytest.approx(-1.0 * 1 + inside + 6, abs=1e-6)
    assert g_low.item() == pytest.approx(1 + 6)  # the gradients that fell outside the range


@pytest.mark.parametrize(
    "shape,ref_shape",
    [((4, 3, 5, 5), (1,)), ((4, 3, 5, 5), (1, 3, 1, 1)), ((6, 2, 3, 3), (6, 1, 1, 1)), ((4, 3, 5), (3, 1))],
)
def test_reduce_to_sums_what_broadcasting_spread(shape, ref_shape):
    """The range gradient's reduction: ``ref``-shaped sums of ``t``, as autograd's ``sum_to_size``
    computes them (a second implementation), exactly for integers, in any layout."""
    t = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)
    want = t.sum_to_size(ref_shape)
    assert torch.equal(reduce_to(t, torch.empty(ref_shape)), want)
    if len(shape) == 4:
        cl = t.contiguous(memory_format=torch.channels_last)
        assert torch.equal(reduce_to(cl, torch.empty(ref_shape)), want)
    assert reduce_to(torch.ones(2, 3, 4, 4), torch.empty(1)).item() == 96.0  # by hand: 2*3*4*4 ones


SHAPES = [
    ((16, 24, 14, 14), (1,), torch.contiguous_format),  # activation, per tensor
    ((16, 24, 14, 14), (1,), torch.channels_last),
    ((16, 24, 14, 14), (1, 24, 1, 1), torch.channels_last),  # per channel of an activation
    ((32, 8, 3, 3), (32, 1, 1, 1), torch.contiguous_format),  # weights, per output channel
]


@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize("shape,param_shape,layout", SHAPES)
def test_matches_nncf_cpp_kernels(shape, param_shape, layout, asymmetric):
    forward_cpp, backward_cpp = _cpp_kernels()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen) * 2
    x.view(-1)[:5] = torch.tensor([-1.5, 1.5, 0.0, -3.0, 4.0])  # on the range's ends and a step
    x = x.contiguous(memory_format=layout)
    grad = torch.randn(shape, generator=gen).contiguous(memory_format=layout)
    low = -torch.rand(param_shape, generator=gen) - 1
    span = torch.rand(param_shape, generator=gen) * 2 + 2
    if param_shape == (1,):
        low, span = torch.tensor([-1.5]), torch.tensor([3.0])
    want = forward_cpp(x, low, span, 256)
    got = quantize_forward(x, low, span, 256)
    assert torch.equal(got, want) and got.stride() == want.stride()
    want_grads = backward_cpp(grad, x, low, span, 256, -128, 127, asymmetric)
    got_grads = quantize_backward(grad, x, got - x, low, span, -128, 127, asymmetric)
    g_in, w_in = got_grads[0], want_grads[0]
    assert torch.equal(g_in, w_in) and g_in.stride() == w_in.stride()  # the layout the next layer sees
    for name, g, w, ref in zip(("low", "span"), got_grads[1:], want_grads[1:], (low, span), strict=True):
        if name == "low" and not asymmetric:
            assert g is None  # NNCF returns an unused placeholder there
            continue
        assert g.shape == ref.shape, name  # NNCF leaves the broadcast dims to autograd: summed here
        assert_same_sum(
            g, w.sum_to_size(ref.shape), terms=range_gradient_terms(name, grad, x, got, low, span)
        )


def range_gradient_terms(name: str, grad, x, out, low, span) -> torch.Tensor:  # noqa: ANN001
    """The per-element products a range gradient sums (NNCF's formula, written out in float64)."""
    g, x, out, low, span = (t.double() for t in (grad, x, out, low, span))
    above, below = x > low + span, x < low
    if name == "low":
        return torch.where(above | below, g, 0.0)
    return torch.where(above, g, torch.where(below, g * (-128 / 127), (out - x) / span * g))


def assert_same_sum(got: torch.Tensor, want: torch.Tensor, terms: torch.Tensor) -> None:
    """Two float32 sums of the same terms in other orders: each within float32 rounding of the float64
    sum (the bound grows with the magnitudes summed, not with the result, which can cancel to ~0)."""
    exact = terms.sum_to_size(got.shape)
    bound = 1e-6 * terms.abs().sum_to_size(got.shape) + 1e-12
    for value in (got, want):
        assert ((value.double() - exact).abs() <= bound).all(), (value, exact)


def test_close_to_nncf_reference_implementation():
    """A second, independent implementation: NNCF's numpy reference (its own formula and op order)."""
    from nncf.torch.quantization.reference import ReferenceBackendType, ReferenceQuantize

    ref = ReferenceQuantize(ReferenceBackendType.NUMPY)
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((8, 6, 5, 5)) * 2).astype(np.float32)
    grad = rng.standard_normal(x.shape).astype(np.float32)
    low = -(rng.random((1, 6, 1, 1)) + 1).astype(np.float32)
    span = (rng.random((1, 6, 1, 1)) * 2 + 2).astype(np.float32)
    want_out = ref.forward(x.copy(), low, span, 256)
    want_in, want_low, want_span = ref.backward(grad, x.copy(), low, span, 256, -128, 127)
    t = torch.from_numpy
    out = quantize_forward(t(x), t(low), t(span), 256)
    g_in, g_low, g_span = quantize_backward(t(grad), t(x), out - t(x), t(low), t(span), -128, 127, True)
    np.testing.assert_allclose(out.numpy(), want_out, atol=1e-6)
    np.testing.assert_array_equal(g_in.numpy(), want_in)
    np.testing.assert_allclose(g_low.numpy(), want_low, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_span.numpy(), want_span, rtol=1e-4, atol=1e-4)


def test_quantized_model_trains_bit_identically_to_nncf(nncf_as_shipped):
    """A whole NNCF-quantized MobileFaceNet: forward output and every weight's gradient, NNCF's classes
    (C++ kernels) against facekd's, bit for bit, in the channels-last layout training uses; the quantizer
    scales' gradients (the same sums in one reduction) to float rounding."""
    from compress.quantize import quantize_model
    from distill.models.mobilefacenet import MobileFaceNet

    torch.manual_seed(0)
    model = MobileFaceNet(embedding_dim=16).train()
    with torch.no_grad():  # BatchNorm statistics from data-like input, then frozen (as QAT does)
        model(torch.rand(8, 3, 112, 112) * 2 - 1)
    batches = [torch.rand(4, 3, 112, 112) * 2 - 1]
    qmodel = quantize_model(model, batches, range_estimator="minmax")
    qmodel = qmodel.to(memory_format=torch.channels_last)
    x = (torch.rand(6, 3, 112, 112) * 2 - 1).contiguous(memory_format=torch.channels_last)

    def step() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        qmodel.zero_grad(set_to_none=True)
        y = qmodel(x)
        y.square().sum().backward()
        return y.detach(), {n: p.grad.clone() for n, p in qmodel.named_parameters() if p.grad is not None}

    nncf_as_shipped.QuantizeSymmetric, nncf_as_shipped.QuantizeAsymmetric = NNCF_CLASSES
    y_nncf, g_nncf = step()
    assert use_torch_kernels()
    y_ours, g_ours = step()
    assert torch.equal(y_ours, y_nncf)
    scales = [n for n in g_nncf if "scale" in n]
    assert len(g_nncf) > 100 and scales, "quantizer scales and weights get gradients"
    assert g_ours.keys() == g_nncf.keys()
    different = [n for n in g_nncf if not torch.equal(g_ours[n], g_nncf[n])]
    assert set(different) <= set(scales), "only range gradients may differ, by rounding"
    for name in scales:  # the per-element bound against a float64 sum: test_matches_nncf_cpp_kernels
        torch.testing.assert_close(g_ours[name], g_nncf[name], rtol=1e-4, atol=1e-10)


def test_nncf_routes_through_facekd_classes():
    use_torch_kernels()
    x = torch.randn(4, 3, requires_grad=True)
    scale = torch.tensor([1.0], requires_grad=True)
    y = nncf_qf.symmetric_quantize(x, 256, -128, 127, scale, 1e-16)
    assert type(y.grad_fn).__name__ == "_SymmetricBackward"


def test_opt_out_leaves_nncf_as_shipped(monkeypatch, nncf_as_shipped):
    monkeypatch.setenv(fake_quant.OPT_OUT_ENV, "1")
    assert use_torch_kernels() is False
    assert nncf_as_shipped.QuantizeSymmetric is NNCF_CLASSES[0]


def test_a_gpu_box_keeps_nncf_as_shipped(monkeypatch, nncf_as_shipped):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert use_torch_kernels() is False
    assert (nncf_as_shipped.QuantizeSymmetric, nncf_as_shipped.QuantizeAsymmetric) == NNCF_CLASSES


def test_fails_loudly_when_nncf_changes(monkeypatch):
    from nncf.torch.quantization import quantize_functions as module

    def symmetric_quantize(*args):  # a future NNCF that calls something else
        return args

    monkeypatch.setattr(module, "symmetric_quantize", symmetric_quantize)
    with pytest.raises(RuntimeError, match="NNCF changed.*no longer calls QuantizeSymmetric"):
        nncf_quantize_functions()
