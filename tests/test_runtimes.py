"""Host runtimes: batching of fixed-batch artifacts, torch/ONNX agreement, int8 I/O helpers, dispatch."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from deploy import runtimes
from deploy.onnx_export import export_onnx
from deploy.runtimes import (
    OnnxEmbedder,
    TfliteEmbedder,
    TorchEmbedder,
    dequantize_output,
    load_embedder,
    quantize_input,
)
from distill.cpu_sharing import split_rows, split_threads
from distill.errors import InputError

EMB_DIM = 24
REAL_ONNX = Path(__file__).resolve().parents[2] / "shared" / "real" / "teacher_mobileface_nhwc.onnx"


class SmallFaceNet(nn.Module):
    """conv-bn-prelu, depthwise conv, global depthwise conv, linear, BatchNorm1d (MobileFaceNet's pieces)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, 4, 1, bias=False), nn.BatchNorm2d(12), nn.PReLU(12))
        self.dw = nn.Sequential(
            nn.Conv2d(12, 12, 3, 2, 1, groups=12, bias=False), nn.BatchNorm2d(12), nn.PReLU(12)
        )
        self.gdc = nn.Sequential(nn.Conv2d(12, 12, 14, groups=12, bias=False), nn.BatchNorm2d(12))
        self.fc = nn.Linear(12, EMB_DIM)
        self.bn = nn.BatchNorm1d(EMB_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(torch.flatten(self.gdc(self.dw(self.stem(x))), 1)))


@pytest.fixture(scope="module")
def net() -> SmallFaceNet:
    torch.manual_seed(3)
    m = SmallFaceNet()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d | nn.BatchNorm1d):
                mod.running_mean.normal_(0, 0.3)
                mod.running_var.uniform_(0.3, 3.0)
                mod.weight.normal_(1.0, 0.2)
                mod.bias.normal_(0, 0.1)
            elif isinstance(mod, nn.PReLU):
                mod.weight.uniform_(-0.2, 0.5)
    return m.eval()


@pytest.fixture(scope="module")
def onnx_paths(net, tmp_path_factory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("onnx")
    return {
        "b1": export_onnx(net, d / "b1.onnx", batch_size=1),
        "b4": export_onnx(net, d / "b4.onnx", batch_size=4),
        "dyn": export_onnx(net, d / "dyn.onnx", batch_size=None),
    }


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, 3, 112, 112)).astype(np.float32)


def reference(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([net(torch.from_numpy(x[i : i + 1])) for i in range(len(x))]).numpy()


def test_fixed_batch_1_embeds_5_inputs_like_per_sample_calls(net, onnx_paths):
    emb = OnnxEmbedder(onnx_paths["b1"], num_threads=1)
    assert (emb.format, emb.batch_size, emb.num_threads, emb.input_chw) == ("onnx", 1, 1, (3, 112, 112))
    x = images(5)
    got = emb.embed(x)
    sess = ort.InferenceSession(str(onnx_paths["b1"]), providers=["CPUExecutionProvider"])
    per_sample = np.concatenate([sess.run(None, {"input": x[i : i + 1]})[0] for i in range(5)])
    assert got.shape == (5, EMB_DIM) and got.dtype == np.float32
    np.testing.assert_allclose(got, per_sample, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, reference(net, x), rtol=1e-4, atol=1e-4)


def test_fixed_batch_4_pads_the_last_chunk(net, onnx_paths):
    emb = OnnxEmbedder(onnx_paths["b4"], num_threads=1)
    assert emb.batch_size == 4
    x = images(5, seed=1)
    np.testing.assert_allclose(emb.embed(x), reference(net, x), rtol=1e-4, atol=1e-4)
    assert emb.run_once(x[:4]).shape == (4, EMB_DIM)


def test_dynamic_batch_is_chunked(net, onnx_paths, monkeypatch):
    emb = OnnxEmbedder(onnx_paths["dyn"], num_threads=1)
    assert emb.batch_size is None
    seen = []
    real_run = emb._run  # every call of a session goes through it (run_once and embed's lanes)
    monkeypatch.setattr(runtimes, "DYNAMIC_CHUNK", 2)
    monkeypatch.setattr(emb, "_run", lambda session, x: seen.append(len(x)) or real_run(session, x))
    x = images(5, seed=2)
    np.testing.assert_allclose(emb.embed(x), reference(net, x), rtol=1e-4, atol=1e-4)
    assert seen == [2, 2, 1]


def test_rows_and_threads_are_shared_out_evenly_by_whole_chunks():
    assert split_rows(32, 2, None) == [(0, 16), (16, 32)]
    assert split_rows(5, 2, None) == [(0, 3), (3, 5)]
    assert split_rows(1, 4, None) == [(0, 1)]  # fewer rows than lanes: only lanes with rows
    assert split_rows(10, 2, 4) == [(0, 8), (8, 10)]  # 3 chunks of 4: no lane pads a part chunk early
    assert split_rows(9, 3, 1) == [(0, 3), (3, 6), (6, 9)]
    assert split_threads(2, 2) == [1, 1] and split_threads(5, 2) == [3, 2] and split_threads(16, 4) == [4] * 4
    assert split_threads(1, 1) == [1]


@pytest.mark.parametrize("kind", ["dyn", "b1", "b4"])
def test_lanes_split_a_batch_over_sessions_and_give_the_same_bits(net, onnx_paths, kind):
    one = OnnxEmbedder(onnx_paths[kind], num_threads=2, spin=False)
    lanes = OnnxEmbedder(onnx_paths[kind], num_threads=2, spin=False, lanes=2)
    assert (one.lanes, lanes.lanes) == (1, 2)
    assert [s.get_session_options().intra_op_num_threads for s in lanes._sessions] == [1, 1]
    x = images(7, seed=4)  # odd: the lanes get 4 and 3 rows (b4: one whole chunk each, the last padded)
    seen = []
    real_run = lanes._run
    lanes._run = lambda session, c: seen.append((id(session), len(c))) or real_run(session, c)
    got = lanes.embed(x)
    assert {sid for sid, _ in seen} == {id(s) for s in lanes._sessions}  # both sessions did work
    assert sum(n for _, n in seen) == {"dyn": 7, "b1": 7, "b4": 8}[kind]
    assert np.array_equal(got, one.embed(x))  # the same bits as one session
    np.testing.assert_allclose(got, reference(net, x), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not REAL_ONNX.is_file(), reason="../shared/real/ not present")
def test_lanes_are_capped_by_threads():
    path = REAL_ONNX  # a real network nobody here exported: NHWC input, its own layer mix
    assert OnnxEmbedder(path, num_threads=1, spin=False, lanes=runtimes.EVAL_LANES).lanes == 1
    real = OnnxEmbedder(path, num_threads=8, spin=False, lanes=16)
    assert real.lanes == runtimes.EVAL_LANES and sum(split_threads(8, real.lanes)) == 8
    x = np.random.default_rng(5).uniform(-1, 1, size=(6, *real.input_chw)).astype(np.float32)
    assert np.array_equal(real.embed(x), OnnxEmbedder(path, num_threads=8, spin=False).embed(x))


def test_torch_embedder_matches_model_and_leaves_it_alone(net):
    model = SmallFaceNet()
    model.load_state_dict(net.state_dict())
    model.train()
    emb = TorchEmbedder(model, num_threads=1)
    assert (emb.format, emb.batch_size, emb.name) == ("pytorch", None, "SmallFaceNet")
    threads_before = torch.get_num_threads()
    x = images(3, seed=4)
    np.testing.assert_allclose(emb.embed(x), reference(net, x), rtol=1e-5, atol=1e-5)
    assert torch.get_num_threads() == threads_before
    assert model.training  # the embedder evaluated a copy


def test_wrong_input_shape_names_the_artifact(onnx_paths, net):
    emb = OnnxEmbedder(onnx_paths["b1"], num_threads=1)
    with pytest.raises(InputError, match="b1.onnx"):
        emb.embed(np.zeros((2, 3, 96, 96), np.float32))
    with pytest.raises(InputError):
        TorchEmbedder(net).embed(np.zeros((3, 112, 112), np.float32))
    with pytest.raises(InputError, match="b1.onnx"):
        emb.embed(np.zeros((0, 3, 112, 112), np.float32))


def test_latency_input_has_the_artifact_shape(onnx_paths, net):
    fixed = OnnxEmbedder(onnx_paths["b4"], num_threads=1)
    x = fixed.latency_input()
    assert x.shape == (4, 3, 112, 112) and x.dtype == np.float32
    assert x.min() >= -1 and x.max() <= 1
    with pytest.raises(InputError):
        fixed.latency_input(batch_size=2)
    assert OnnxEmbedder(onnx_paths["dyn"], num_threads=1).latency_input(3).shape == (3, 3, 112, 112)
    assert TorchEmbedder(net).latency_input().shape == (1, 3, 112, 112)


def test_quantize_rounds_half_away_from_zero_and_clamps():
    x = np.array([0.25, -0.25, 0.74, 100.0, -100.0], np.float32)
    # scale 0.5, zero point 3: x/0.5 = 0.5, -0.5, 1.48, 200, -200 -> rounded 1, -1, 1, 200, -200 -> +3
    q = quantize_input(x, 0.5, 3, np.int8)
    assert q.dtype == np.int8
    assert q.tolist() == [4, 2, 4, 127, -128]
    qu = quantize_input(x, 0.5, 128, np.uint8)
    assert qu.dtype == np.uint8 and qu.tolist() == [129, 127, 129, 255, 0]
    with pytest.raises(ValueError):
        quantize_input(x, 0.0, 0, np.int8)


def test_dequantize_output():
    q = np.array([[-128, -3, 0, 127]], np.int8)
    got = dequantize_output(q, 0.1, -3)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [[-12.5, 0.0, 0.3, 13.0]], rtol=1e-6)


def test_load_embedder_dispatch(net, onnx_paths, tmp_path, monkeypatch):
    assert isinstance(load_embedder(onnx_paths["b1"], num_threads=1), OnnxEmbedder)
    assert isinstance(load_embedder(net, num_threads=1), TorchEmbedder)

    with pytest.raises(InputError, match="model.h5"):
        load_embedder(tmp_path / "model.h5")
    with pytest.raises(InputError, match="not found"):
        load_embedder(tmp_path / "missing.onnx")
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(InputError, match="garbage.onnx"):
        load_embedder(bad)
    bad_tflite = tmp_path / "garbage.tflite"
    bad_tflite.write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="garbage.tflite"):
        TfliteEmbedder(bad_tflite)

    calls = []

    def fake_load_model(path, map_location="cpu"):
        calls.append(path)
        return net, {"arch": "small"}

    fake = types.ModuleType("distill.models.checkpoint")
    fake.load_model = fake_load_model
    monkeypatch.setitem(sys.modules, "distill.models.checkpoint", fake)
    ckpt = tmp_path / "student.pt"
    ckpt.write_bytes(b"placeholder")
    emb = load_embedder(ckpt, num_threads=1)
    assert isinstance(emb, TorchEmbedder) and emb.name == "student.pt" and calls == [ckpt]
    x = images(2, seed=5)
    np.testing.assert_allclose(emb.embed(x), reference(net, x), rtol=1e-5, atol=1e-5)


class _ChannelLast(nn.Module):
    """A converted-from-TensorFlow style graph: NHWC input, transposed inside."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2))


def test_nhwc_onnx_embeds_nchw_input_like_the_model(net, tmp_path):
    path = tmp_path / "nhwc.onnx"
    torch.onnx.export(
        _ChannelLast(net).eval(), (torch.randn(1, 112, 112, 3),), str(path), input_names=["x"],
        dynamic_axes={"x": {0: "n"}}, dynamo=False,
    )  # fmt: skip
    e = OnnxEmbedder(path, num_threads=1)
    assert e.input_chw == (3, 112, 112) and e.batch_size is None
    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 112, 112)).astype(np.float32)
    with torch.no_grad():
        want = net.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(e.embed(x), want, rtol=1e-4, atol=1e-4)
    assert e.latency_input(1).shape == (1, 112, 112, 3)  # timed in the file's own layout


# ------------------------------------------------------------------------------ batched evaluation twins
def test_onnx_batch1_file_gets_a_batched_twin_that_reproduces_it(net, onnx_paths):
    from deploy.runtimes import EVAL_TWIN_BATCH, evaluation_twin, onnx_with_batch_axis

    emb = OnnxEmbedder(onnx_paths["b1"], num_threads=1)
    twin, how = evaluation_twin(emb, images(16, seed=5))
    assert twin is not emb and twin.batch_size is None and f"(batch-{EVAL_TWIN_BATCH})" in how
    x = images(70, seed=6)  # other images than the sample, more than one batch
    np.testing.assert_allclose(twin.embed(x), emb.embed(x), rtol=1e-5, atol=1e-6)
    # the shipped file is untouched; the copy's batch axis is symbolic
    sess = ort.InferenceSession(onnx_with_batch_axis(onnx_paths["b1"]), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[0] == "batch" and ort.InferenceSession(
        str(onnx_paths["b1"]), providers=["CPUExecutionProvider"]
    ).get_inputs()[0].shape == [1, 3, 112, 112]
    assert evaluation_twin(OnnxEmbedder(onnx_paths["dyn"]), images(4))[1] == "the file itself"


def test_a_twin_that_does_not_reproduce_the_file_is_not_used(tmp_path):
    """A graph that mixes images across the batch axis (a mean over it) equals the file at batch 1 only."""
    import onnx
    from onnx import TensorProto, helper

    from deploy.runtimes import evaluation_twin

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 112, 112])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("ReduceMean", ["m"], ["b"], axes=[0], keepdims=1),  # across the batch
        helper.make_node("Sub", ["m", "b"], ["d"]),
        helper.make_node("Add", ["d", "m"], ["y"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 13)]
    )
    path = tmp_path / "mixes.onnx"
    onnx.save(model, str(path))
    emb = OnnxEmbedder(path)
    twin, how = evaluation_twin(emb, images(16, seed=7))
    assert twin is emb and "differed by" in how


def test_a_float16_file_is_evaluated_with_its_prelu_in_float32_bit_for_bit(net, onnx_paths, tmp_path):
    """The rewrite is exact: the twin's embeddings equal the float16 file's, bit for bit, and that file
    still runs its float16 PRelu (the twin is a copy; the shipped bytes are untouched)."""
    import onnx

    from deploy.onnx_fp16 import convert_onnx_fp16
    from deploy.runtimes import evaluation_twin, prelu_fp16_via_fp32

    path = convert_onnx_fp16(onnx_paths["dyn"], tmp_path / "fp16.onnx")
    before = path.read_bytes()
    emb = OnnxEmbedder(path, num_threads=1)
    twin, how = evaluation_twin(emb, images(8, seed=11))
    assert twin is not emb and "its 2 float16 PRelu run in float32 between casts" in how, how
    x = images(20, seed=12)
    np.testing.assert_array_equal(twin.embed(x), emb.embed(x))
    assert path.read_bytes() == before
    model = onnx.load(str(path))
    assert prelu_fp16_via_fp32(model) == 2
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("PRelu") == 2 and ops.count("Cast") >= 2 + 3 * 2  # I/O casts + three per PRelu
    onnx.checker.check_model(model, full_check=True)
    assert prelu_fp16_via_fp32(onnx.load(str(onnx_paths["dyn"]))) == 0  # float32 PRelu stay as they are


def test_prelu_slopes_shared_through_identity_nodes_are_rewritten_too(tmp_path):
    """The exporter deduplicates equal slopes (fresh PReLUs all start at 0.25) into Identity nodes."""
    import onnx

    from deploy.onnx_fp16 import convert_onnx_fp16
    from deploy.runtimes import evaluation_twin, prelu_fp16_via_fp32

    torch.manual_seed(5)
    fresh = SmallFaceNet().eval()  # both PReLU(12) at their initial 0.25: one constant, shared
    path = convert_onnx_fp16(export_onnx(fresh, tmp_path / "f.onnx", batch_size=None), tmp_path / "h.onnx")
    model = onnx.load(str(path))
    assert "Identity" in [n.op_type for n in model.graph.node]  # what this test is about
    assert prelu_fp16_via_fp32(model) == 2
    emb = OnnxEmbedder(path, num_threads=1)
    twin, how = evaluation_twin(emb, images(4, seed=13))
    assert "its 2 float16 PRelu" in how
    np.testing.assert_array_equal(twin.embed(images(6, seed=14)), emb.embed(images(6, seed=14)))


def test_a_float_module_is_evaluated_through_an_onnxruntime_copy_equal_to_it(net):
    from deploy.runtimes import module_evaluation_twin

    twin, how = module_evaluation_twin(net, images(8, seed=4), num_threads=1, name="student")
    assert twin.format == "onnx" and "onnxruntime copy" in how
    x = images(40, seed=9)  # other images than the sample, and more than one chunk
    np.testing.assert_allclose(twin.embed(x), reference(net, x), rtol=1e-4, atol=1e-5)


class TracedBranch(nn.Module):
    """Data-dependent control flow: tracing bakes in the branch the example input took."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))
        return pooled * 2 if bool(x.min() > -1.5) else pooled - 5  # the exporter's example is in [-1, 1]


class NumpyInside(nn.Module):
    """Leaves torch for numpy mid-forward: nothing an ONNX exporter can trace."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.tanh(x.mean(dim=(2, 3)).detach().numpy())) * self.scale


def test_a_module_whose_copy_differs_or_does_not_export_is_evaluated_itself():
    from deploy.runtimes import module_evaluation_twin

    dark = images(8, seed=5) - 1.0  # below -1.5 somewhere: the branch the trace did not take
    own, how = module_evaluation_twin(TracedBranch(), dark, num_threads=1)
    assert own.format == "pytorch" and "differed by" in how
    np.testing.assert_allclose(own.embed(dark), dark.mean(axis=(2, 3)) - 5, rtol=1e-5)
    own, how = module_evaluation_twin(NumpyInside(), images(4), num_threads=1)
    assert own.format == "pytorch" and "no onnxruntime copy" in how


@pytest.mark.slow
def test_tflite_batch1_file_gets_a_resized_interpreter_twin(net, tmp_path):
    from deploy.runtimes import EVAL_TWIN_BATCH, evaluation_twin
    from deploy.tflite_export import export_tflite_fp32

    path = export_tflite_fp32(net, tmp_path / "b1.tflite")
    emb = TfliteEmbedder(path, num_threads=1)
    twin, how = evaluation_twin(emb, images(16, seed=8))
    assert twin is not emb and twin.batch_size == EVAL_TWIN_BATCH, how
    x = images(40, seed=9)
    np.testing.assert_allclose(twin.embed(x), emb.embed(x), rtol=1e-5, atol=1e-6)
