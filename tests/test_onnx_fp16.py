"""fp16 ONNX: float16 weights in the file, float32 I/O kept, same embeddings as fp32, about half the size."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from deploy import onnx_fp16
from deploy.onnx_export import export_onnx
from deploy.onnx_fp16 import convert_onnx_fp16
from distill.errors import InputError

DIM = 128


class Net(nn.Module):
    """MobileFaceNet's layer types (conv-bn-prelu, depthwise, GDConv, linear, BatchNorm1d), small."""

    def __init__(self) -> None:
        super().__init__()

        def cbp(cin, cout, k, s, g=1):
            return [
                nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False),
                nn.BatchNorm2d(cout),
                nn.PReLU(cout),
            ]

        self.body = nn.Sequential(
            *cbp(3, 32, 3, 2), *cbp(32, 32, 3, 2, 32), *cbp(32, 64, 1, 1), *cbp(64, 64, 3, 2, 64)
        )
        self.gdc = nn.Sequential(nn.Conv2d(64, 64, 14, groups=64, bias=False), nn.BatchNorm2d(64))
        self.linear = nn.Linear(64, DIM, bias=False)
        self.bn = nn.BatchNorm1d(DIM)

    def forward(self, x):
        return self.bn(self.linear(self.gdc(self.body(x)).flatten(1)))


def make_net() -> Net:
    torch.manual_seed(0)
    net = Net()
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


def run(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def cosines(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("fp16") / "student_fp32.onnx"
    net = make_net()
    export_onnx(net, path, batch_size=None)
    return net, path


def test_fp16_file_has_half_weights_float32_io_and_same_embeddings(fp32_onnx, tmp_path):
    net, src = fp32_onnx
    dst = convert_onnx_fp16(src, tmp_path / "student_fp16.onnx")
    assert dst == tmp_path / "student_fp16.onnx"
    assert [p.name for p in tmp_path.iterdir()] == ["student_fp16.onnx"]  # no temp file left

    model = onnx.load(str(dst))
    onnx.checker.check_model(model, full_check=True)
    types = {t.data_type for t in model.graph.initializer}
    assert TensorProto.FLOAT16 in types and TensorProto.FLOAT not in types
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT]
    src_model = onnx.load(str(src))
    assert [i.name for i in model.graph.input] == [i.name for i in src_model.graph.input]
    assert [o.name for o in model.graph.output] == [o.name for o in src_model.graph.output]
    ratio = dst.stat().st_size / src.stat().st_size
    assert 0.4 < ratio < 0.6

    x = np.random.default_rng(3).uniform(-1, 1, (6, 3, 112, 112)).astype(np.float32)
    got = run(dst, x)
    assert got.dtype == np.float32 and got.shape == (6, DIM)
    assert cosines(got, run(src, x)).min() >= 0.999
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert cosines(got, ref).min() >= 0.999


def test_without_keep_io_types_the_io_is_float16(fp32_onnx, tmp_path):
    _, src = fp32_onnx
    dst = convert_onnx_fp16(src, tmp_path / "io16.onnx", keep_io_types=False)
    model = onnx.load(str(dst))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    x = np.random.default_rng(4).uniform(-1, 1, (2, 3, 112, 112)).astype(np.float16)
    out = run(dst, x)
    assert out.dtype == np.float16
    assert cosines(out, run(src, x.astype(np.float32))).min() >= 0.999


def test_refuses_already_fp16_and_unreadable_input(fp32_onnx, tmp_path):
    _, src = fp32_onnx
    half = convert_onnx_fp16(src, tmp_path / "a.onnx")
    with pytest.raises(InputError, match="already holds float16"):
        convert_onnx_fp16(half, tmp_path / "b.onnx")
    with pytest.raises(InputError, match="not found"):
        convert_onnx_fp16(tmp_path / "missing.onnx", tmp_path / "c.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx"]


def test_failed_check_leaves_nothing(fp32_onnx, tmp_path, monkeypatch):
    _, src = fp32_onnx

    def broken_check(*args, **kwargs):
        raise onnx.checker.ValidationError("simulated")

    monkeypatch.setattr(onnx_fp16.onnx.checker, "check_model", broken_check)
    with pytest.raises(onnx.checker.ValidationError):
        convert_onnx_fp16(src, tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_qdq_model_keeps_float32_scales_below_opset_19(tmp_path):
    """QuantizeLinear-13 only takes float32 scales; a naive fp16 cast of them would make the file invalid."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
        numpy_helper.from_array(w, "w"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["xd"]),
        helper.make_node("Conv", ["xd", "w"], ["y"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        initializer=inits,
    )
    src = tmp_path / "qdq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(src))
    dst = convert_onnx_fp16(src, tmp_path / "qdq16.onnx")
    model = onnx.load(str(dst))
    by_name = {t.name: t.data_type for t in model.graph.initializer}
    assert by_name["s"] == TensorProto.FLOAT and by_name["w"] == TensorProto.FLOAT16
    x = rng.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)
    a, b = run(src, x).reshape(1, -1), run(dst, x).reshape(1, -1)
    assert cosines(a, b).min() >= 0.999
