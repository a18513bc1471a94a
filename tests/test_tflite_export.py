"""TFLite export with litert-torch: loads in LiteRT, float32 I/O as declared, same numbers as torch.

One real conversion per module (module-scoped fixture, marked slow); the atomicity tests replace the
converter with a fake so they run fast.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from deploy import tflite_export
from deploy.runtimes import TfliteEmbedder
from deploy.tflite_export import export_tflite_fp32

EMB_DIM = 64


class MiniFaceNet(nn.Module):
    """Stem conv-bn-prelu, inverted-residual-like depthwise block, GDConv, linear, BatchNorm1d."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.PReLU(16))
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.PReLU(32))
        self.dw = nn.Sequential(
            nn.Conv2d(32, 32, 3, 4, 1, groups=32, bias=False), nn.BatchNorm2d(32), nn.PReLU(32)
        )
        self.project = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.gdc = nn.Sequential(nn.Conv2d(16, 16, 14, groups=16, bias=False), nn.BatchNorm2d(16))
        self.linear = nn.Linear(16, EMB_DIM, bias=False)
        self.bn = nn.BatchNorm1d(EMB_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(self.dw(self.expand(self.stem(x))))
        return self.bn(self.linear(self.gdc(x).view(x.shape[0], -1)))


def make_net() -> MiniFaceNet:
    torch.manual_seed(11)
    net = MiniFaceNet()
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


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, 3, 112, 112)).astype(np.float32)


def torch_embed(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net.eval()(torch.from_numpy(x)).numpy()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    net = make_net().train()  # export must evaluate in eval mode without changing the caller's model
    path = tmp_path_factory.mktemp("tflite") / "student_fp32.tflite"
    out = export_tflite_fp32(net, path)
    assert net.training
    return net.eval(), out


@pytest.mark.slow
def test_tflite_loads_with_declared_float32_io_and_matches_torch(converted):
    from ai_edge_litert.interpreter import Interpreter

    net, path = converted
    assert path.is_file() and path.suffix == ".tflite"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    (out,) = interp.get_output_details()
    assert inp["dtype"] == np.float32 and out["dtype"] == np.float32
    assert tuple(inp["shape"]) == (1, 3, 112, 112)
    assert tuple(out["shape"]) == (1, EMB_DIM)
    x = images(4, seed=21)
    got = []
    for i in range(4):
        interp.set_tensor(inp["index"], x[i : i + 1])
        interp.invoke()
        got.append(interp.get_tensor(out["index"]))
    got = np.concatenate(got)
    ref = torch_embed(net, x)
    assert cosines(got, ref).min() >= 0.9999
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_tflite_embedder_batches_a_batch_1_model(converted):
    net, path = converted
    emb = TfliteEmbedder(path, num_threads=1)
    assert (emb.format, emb.batch_size, emb.input_chw) == ("tflite", 1, (3, 112, 112))
    x = images(5, seed=22)
    got = emb.embed(x)
    assert got.shape == (5, EMB_DIM) and got.dtype == np.float32
    per_sample = np.concatenate([emb.run_once(x[i : i + 1]) for i in range(5)])
    np.testing.assert_array_equal(got, per_sample)
    assert cosines(got, torch_embed(net, x)).min() >= 0.9999
    lat_x = emb.latency_input()
    assert lat_x.shape == (1, 3, 112, 112) and lat_x.dtype == np.float32


class _FakeEdgeModel:
    def __init__(self, payload: bytes, fail: bool):
        self.payload, self.fail = payload, fail

    def export(self, path: str) -> None:
        with open(path, "wb") as fh:
            fh.write(self.payload)
        if self.fail:
            raise RuntimeError("simulated crash while writing")


@pytest.mark.parametrize("fail", [True, False], ids=["writer-crash", "unloadable-output"])
def test_failed_export_leaves_nothing(tmp_path, monkeypatch, fail):
    import litert_torch

    seen = {}

    def fake_convert(module, sample_args, **kwargs):
        seen["training"] = module.training
        seen["shape"] = tuple(sample_args[0].shape)
        return _FakeEdgeModel(b"not a flatbuffer" * 8, fail)

    monkeypatch.setattr(litert_torch, "convert", fake_convert)
    target = tmp_path / "m.tflite"
    with pytest.raises(Exception):  # noqa: B017 - writer error or interpreter load error, both must abort
        tflite_export.export_tflite_fp32(make_net().train(), target, batch_size=2)
    assert seen == {"training": False, "shape": (2, 3, 112, 112)}
    assert list(tmp_path.iterdir()) == []
