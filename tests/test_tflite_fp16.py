"""fp16 .tflite: float16 weights, float32 I/O, loads in LiteRT, matches torch, smaller than fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from deploy import tflite_export
from deploy.runtimes import TfliteEmbedder
from deploy.tflite_export import export_tflite_fp16, export_tflite_fp32

DIM = 128


class Net(nn.Module):
    """conv-bn-prelu, depthwise, GDConv, linear, BatchNorm1d: the op mix of MobileFaceNet."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.PReLU(32))
        self.dw = nn.Sequential(
            nn.Conv2d(32, 32, 3, 2, 1, groups=32, bias=False), nn.BatchNorm2d(32), nn.PReLU(32)
        )
        self.pw = nn.Sequential(nn.Conv2d(32, 64, 1, 2, bias=False), nn.BatchNorm2d(64))
        self.gdc = nn.Sequential(nn.Conv2d(64, 64, 14, groups=64, bias=False), nn.BatchNorm2d(64))
        self.linear = nn.Linear(64, DIM, bias=False)
        self.bn = nn.BatchNorm1d(DIM)

    def forward(self, x):
        x = self.gdc(self.pw(self.dw(self.stem(x))))
        return self.bn(self.linear(x.flatten(1)))


def make_net() -> Net:
    torch.manual_seed(1)
    net = Net()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.running_mean.uniform_(-0.4, 0.4)
                m.running_var.uniform_(0.4, 2.5)
                m.weight.uniform_(0.6, 1.4)
                m.bias.uniform_(-0.1, 0.1)
            elif isinstance(m, nn.PReLU):
                m.weight.uniform_(0.0, 0.3)
    return net.eval()


def cosines(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tflite16")
    net = make_net().train()  # the export must not flip the caller's model out of training mode
    fp16 = export_tflite_fp16(net, folder / "student_fp16.tflite")
    assert net.training
    fp32 = export_tflite_fp32(net, folder / "student_fp32.tflite")
    return net.eval(), fp16, fp32


@pytest.mark.slow
def test_fp16_tflite_has_float16_weights_float32_io_and_matches_torch(exported):
    from ai_edge_litert.interpreter import Interpreter

    net, fp16, fp32 = exported
    assert sorted(p.name for p in fp16.parent.iterdir()) == ["student_fp16.tflite", "student_fp32.tflite"]
    it = Interpreter(model_path=str(fp16), num_threads=1)
    it.allocate_tensors()
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    assert inp["dtype"] == np.float32 and out["dtype"] == np.float32
    assert tuple(inp["shape"]) == (1, 3, 112, 112) and tuple(out["shape"]) == (1, DIM)
    half = sorted(
        tuple(int(d) for d in t["shape"]) for t in it.get_tensor_details() if t["dtype"] == np.float16
    )
    # Every conv/depthwise/linear weight, in TFLite's layouts (OHWI; depthwise 1HWC; FC out x in).
    expected = [(1, 3, 3, 32), (1, 14, 14, 64), (32, 3, 3, 3), (64, 1, 1, 32), (DIM, 64)]
    assert half == sorted(expected)
    ops = {op["op_name"] for op in it._get_ops_details()}
    assert "DEQUANTIZE" in ops

    ratio = fp16.stat().st_size / fp32.stat().st_size
    assert ratio < 0.65

    x = np.random.default_rng(5).uniform(-1, 1, (4, 3, 112, 112)).astype(np.float32)
    emb = TfliteEmbedder(fp16, num_threads=1)
    got = emb.embed(x)
    assert got.dtype == np.float32 and got.shape == (4, DIM)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert cosines(got, ref).min() >= 0.999
    # fp16 weights really changed the numbers (the test would pass trivially on an fp32 file otherwise).
    assert np.abs(got - TfliteEmbedder(fp32, num_threads=1).embed(x)).max() > 0


def test_failed_fp16_postprocess_leaves_nothing(tmp_path, monkeypatch):
    import litert_torch

    class FakeEdge:
        def export(self, path: str) -> None:
            with open(path, "wb") as fh:
                fh.write(b"fp32 flatbuffer")

    monkeypatch.setattr(litert_torch, "convert", lambda module, sample, **kw: FakeEdge())

    def broken(data: bytes) -> bytes:
        assert data == b"fp32 flatbuffer"
        raise RuntimeError("simulated quantizer failure")

    monkeypatch.setattr(tflite_export, "fp16_weights", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        export_tflite_fp16(make_net(), tmp_path / "m.tflite")
    assert list(tmp_path.iterdir()) == []
