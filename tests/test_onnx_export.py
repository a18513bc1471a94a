"""ONNX export: valid graph, same numbers as torch in onnxruntime, dynamic batch, atomic on failure."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from deploy.onnx_export import export_onnx

EMB_DIM = 32


class TinyFaceNet(nn.Module):
    """MobileFaceNet's layer types in miniature: conv-bn-prelu, depthwise, GDConv, linear, BatchNorm1d."""

    def __init__(self, dim: int = EMB_DIM):
        super().__init__()

        def cbp(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> list[nn.Module]:
            conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
            return [conv, nn.BatchNorm2d(cout), nn.PReLU(cout)]

        self.body = nn.Sequential(
            *cbp(3, 8, 3, 2), *cbp(8, 8, 3, 2, groups=8), *cbp(8, 16, 1, 1), *cbp(16, 16, 3, 2, groups=16)
        )
        self.gdc = nn.Sequential(nn.Conv2d(16, 16, 14, groups=16, bias=False), nn.BatchNorm2d(16))
        self.linear = nn.Linear(16, dim, bias=False)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(self.gdc(self.body(x)).flatten(1)))


def make_net(dim: int = EMB_DIM) -> TinyFaceNet:
    torch.manual_seed(0)
    net = TinyFaceNet(dim)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            elif isinstance(m, nn.PReLU):
                m.weight.uniform_(0.05, 0.4)
    return net.eval()


def images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, 3, 112, 112)).astype(np.float32)


def torch_embed(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net.eval()(torch.from_numpy(x)).numpy()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [
        d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim
    ]


@pytest.fixture(scope="module")
def net() -> TinyFaceNet:
    return make_net()


def test_fixed_batch_export_is_valid_and_matches_torch(net, tmp_path):
    path = export_onnx(net, tmp_path / "m.onnx")
    assert path == tmp_path / "m.onnx" and path.is_file()
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    graph = model.graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["embedding"]
    assert dims(graph.input[0]) == [1, 3, 112, 112]
    assert dims(graph.output[0]) == [1, EMB_DIM]
    ops = {n.op_type for n in graph.node}
    assert "PRelu" in ops
    groups = [a.i for n in graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert 8 in groups and 16 in groups  # depthwise convs survive as grouped Conv

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = images(4)
    got = np.concatenate([sess.run(None, {"input": x[i : i + 1]})[0] for i in range(4)])
    ref = torch_embed(net, x)
    assert got.shape == (4, EMB_DIM)
    assert cosines(got, ref).min() >= 0.9999
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_dynamic_batch_accepts_batch_3(net, tmp_path):
    path = export_onnx(net, tmp_path / "dyn.onnx", batch_size=None, input_name="img", output_name="emb")
    graph = onnx.load(path).graph
    assert isinstance(dims(graph.input[0])[0], str) and dims(graph.input[0])[1:] == [3, 112, 112]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (3, 1):
        x = images(n, seed=n)
        got = sess.run(["emb"], {"img": x})[0]
        assert got.shape == (n, EMB_DIM)
        np.testing.assert_allclose(got, torch_embed(net, x), atol=1e-4, rtol=1e-4)


def test_fixed_batch_4_declares_and_runs_batch_4(net, tmp_path):
    path = export_onnx(net, tmp_path / "b4.onnx", batch_size=4, opset=13)
    model = onnx.load(path)
    assert dims(model.graph.input[0]) == [4, 3, 112, 112]
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {13}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = images(4, seed=7)
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], torch_embed(net, x), atol=1e-4, rtol=1e-4)


def test_export_leaves_the_callers_model_untouched(tmp_path):
    net = make_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    export_onnx(net, tmp_path / "m.onnx")
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_failed_check_leaves_no_file_and_keeps_the_old_one(net, tmp_path, monkeypatch):
    def broken_checker(*args, **kwargs):
        raise onnx.checker.ValidationError("simulated failure")

    monkeypatch.setattr(onnx.checker, "check_model", broken_checker)
    with pytest.raises(onnx.checker.ValidationError):
        export_onnx(net, tmp_path / "new.onnx")
    assert list(tmp_path.iterdir()) == []

    old = tmp_path / "old.onnx"
    old.write_bytes(b"previous artifact")
    with pytest.raises(onnx.checker.ValidationError):
        export_onnx(net, old)
    assert old.read_bytes() == b"previous artifact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.onnx"]


def test_rejects_nonpositive_batch(net, tmp_path):
    with pytest.raises(ValueError):
        export_onnx(net, tmp_path / "m.onnx", batch_size=0)
    assert list(tmp_path.iterdir()) == []
