"""Pixels in: NHWC RGB bytes as the input, normalisation inside the file, no input TRANSPOSE."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from deploy.onnx_export import export_onnx
from deploy.pixel_input import onnx_pixel_input, pixels_from_normalized
from deploy.runtimes import OnnxEmbedder, TfliteEmbedder, load_embedder
from distill.data.transforms import to_model_input


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.dw = nn.Conv2d(8, 8, 3, 2, 1, groups=8)
        self.gdc = nn.Conv2d(8, 8, 28, groups=8)  # MobileFaceNet's global depthwise conv, then flatten
        self.fc = nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.gdc(torch.relu(self.dw(torch.relu(self.conv(x))))).flatten(1))


def pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 112, 112, 3), dtype=np.uint8)


def normalized(p: np.ndarray) -> np.ndarray:
    return to_model_input(torch.from_numpy(p)).numpy()


def test_pixels_from_normalized_inverts_the_projects_transform_for_every_value():
    every = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None, None], 3, axis=3).reshape(1, 16, 16, 3)
    np.testing.assert_array_equal(pixels_from_normalized(normalized(every), "uint8"), every)
    assert pixels_from_normalized(normalized(every), "float32").dtype == np.float32


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_onnx_with_pixels_in_equals_the_normalised_file(tmp_path, dtype):
    net = Small().eval()
    plain = export_onnx(net, tmp_path / "plain.onnx")
    px = onnx_pixel_input(export_onnx(net, tmp_path / "px.onnx"), dtype)
    graph = onnx.load(str(px)).graph
    assert graph.input[0].name == "pixels"
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 112, 112, 3]
    p = pixels(3)
    feed = p if dtype == "uint8" else p.astype(np.float32)
    sess = ort.InferenceSession(str(px), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"])
    for i in range(3):
        got = sess.run(None, {"pixels": feed[i : i + 1]})[0]
        want = ref.run(None, {"input": normalized(p[i : i + 1])})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the host embedder feeds it pixels: uint8 from the input type, float32 when told (or by its card)
    emb = OnnxEmbedder(px, pixels=None if dtype == "uint8" else "float32")
    assert emb.pixel_dtype == dtype and emb.input_chw == (3, 112, 112)
    np.testing.assert_allclose(emb.embed(normalized(p)), OnnxEmbedder(plain).embed(normalized(p)), atol=1e-5)


def test_harness_feeds_pixels_like_the_host(tmp_path):
    from devices import harness

    px = onnx_pixel_input(export_onnx(Small().eval(), tmp_path / "px.onnx"), "uint8")
    x = normalized(pixels(4, seed=2))
    np.testing.assert_array_equal(harness.pixels_of(x, np.uint8), pixels_from_normalized(x, "uint8"))
    model = harness.OnnxModel(str(px), threads=1)
    assert model.pixels and model.chw == (3, 112, 112)
    np.testing.assert_allclose(harness.embed(model, x), OnnxEmbedder(px).embed(x), atol=1e-6)


@pytest.mark.slow
def test_tflite_with_pixels_in_has_no_transpose_and_matches_the_model(tmp_path):
    from deploy.tflite_export import export_tflite_fp32
    from deploy.tflite_int8 import count_float_ops

    net = Small().eval()
    plain = count_float_ops(export_tflite_fp32(net, tmp_path / "plain.tflite"))["op_counts"]
    assert plain.get("TRANSPOSE") == 1  # the normalised file turns its NCHW input into NHWC first
    path = export_tflite_fp32(net, tmp_path / "px.tflite", pixels="uint8")
    ops = count_float_ops(path)["op_counts"]
    assert "TRANSPOSE" not in ops and ops.get("CAST") == 1, ops
    emb = load_embedder(path)
    assert isinstance(emb, TfliteEmbedder) and emb.pixel_dtype == "uint8"
    x = normalized(pixels(5, seed=1))
    with torch.no_grad():
        np.testing.assert_allclose(emb.embed(x), net(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)
