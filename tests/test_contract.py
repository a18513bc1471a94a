"""The model contract check (`pipeline check`): crafted files that break it, real ones that keep it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from deploy.contract import RUNTIMES, check_model, promised_precision
from deploy.model_card import embed_metadata, sha256_of, write_model_card
from deploy.onnx_export import export_onnx
from deploy.onnx_fp16 import convert_onnx_fp16
from distill.errors import InputError
from pipeline.cli import main

SIDE, EMB = 8, 16


def crafted_onnx(path: Path, *, reshape: list[int], fp16: bool = False, reduce: bool = False) -> Path:
    """input [batch, 3, 8, 8] -> Reshape(``reshape``) -> MatMul (or ReduceMean): a symbolic batch declared.

    ``reshape=[0, -1]`` keeps the batch axis (genuinely dynamic); ``[1, -1]`` hard-codes batch 1 inside
    (the fixed batch in disguise: batch 2 fails); with ``reduce`` ``[1, -1, 3]`` then a mean over axis 1
    gives one row for any batch (batch 2 runs, with the wrong shape).
    """
    rng = np.random.default_rng(0)
    wtype = np.float16 if fp16 else np.float32
    inits = [numpy_helper.from_array(np.array(reshape, np.int64), "shape")]
    nodes, x = [], "input"
    if fp16:  # what a careless fp16 conversion leaves: float16 weights behind float32 I/O
        nodes.append(helper.make_node("Cast", [x], ["x16"], to=TensorProto.FLOAT16))
        x = "x16"
    nodes.append(helper.make_node("Reshape", [x, "shape"], ["flat"]))
    if reduce:
        nodes.append(helper.make_node("ReduceMean", ["flat"], ["emb"], axes=[1], keepdims=0))
        dim = 3
    else:
        inits.append(numpy_helper.from_array(rng.standard_normal((3 * SIDE * SIDE, EMB)).astype(wtype), "W"))
        nodes.append(helper.make_node("MatMul", ["flat", "W"], ["emb"]))
        dim = EMB
    nodes.append(helper.make_node("Cast", ["emb"], ["embedding"], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes,
        "crafted",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def prelu_tflite(path: Path) -> Path:
    """A float .tflite with a native PRELU op (litert-torch decomposes PReLU, so it is written by hand)."""
    from ai_edge_litert import schema_py_generated as schema

    from deploy.tflite_int8 import pack_model

    model = schema.ModelT()
    model.version, model.buffers = 3, [schema.BufferT()]  # buffer 0: the empty sentinel

    def buffer(data: np.ndarray) -> int:
        b = schema.BufferT()
        b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
        model.buffers.append(b)
        return len(model.buffers) - 1

    def tensor(name: str, shape: list[int], ttype: int, buf: int = 0) -> object:
        t = schema.TensorT()
        t.name, t.shape, t.type, t.buffer = name, shape, ttype, buf
        return t

    f32, i32 = schema.TensorType.FLOAT32, schema.TensorType.INT32
    g = schema.SubGraphT()
    g.tensors = [
        tensor("pixels", [1, SIDE, SIDE, 3], f32),
        tensor("alpha", [1, 1, 3], f32, buffer(np.full((1, 1, 3), 0.25, np.float32))),
        tensor("act", [1, SIDE, SIDE, 3], f32),
        tensor("shape", [2], i32, buffer(np.array([1, -1], np.int32))),
        tensor("embedding", [1, SIDE * SIDE * 3], f32),
    ]
    model.operatorCodes = []
    for code in (schema.BuiltinOperator.PRELU, schema.BuiltinOperator.RESHAPE):
        c = schema.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = code, code, 1
        model.operatorCodes.append(c)
    ops = []
    for index, inputs, outputs in ((0, [0, 1], [2]), (1, [2, 3], [4])):
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = index, inputs, outputs
        ops.append(op)
    g.operators, g.inputs, g.outputs, g.name = ops, [0], [4], "main"
    model.subgraphs = [g]
    path.write_bytes(pack_model(model))
    return path


def finding(report, check: str):
    return [f for f in report.findings if f.check == check]


# ------------------------------------------------------------------------------------------ batch
@pytest.mark.parametrize(
    ("reshape", "reduce", "why"),
    [([1, -1], False, "fails at batch 2"), ([1, -1, 3], True, "returns shape [1, 3] for 2 inputs")],
)
def test_a_fixed_batch_in_disguise_is_caught_by_running_batch_2(tmp_path, reshape, reduce, why):
    path = crafted_onnx(tmp_path / "m_fp32.onnx", reshape=reshape, reduce=reduce)
    report = check_model(path, "host")
    (batch,) = finding(report, "batch")
    assert not report.passed and batch.severity == "violation"
    assert "declares a dynamic batch (batch)" in batch.message and why in batch.message


def test_a_genuinely_dynamic_batch_passes(tmp_path):
    report = check_model(crafted_onnx(tmp_path / "m_fp32.onnx", reshape=[0, -1]), "host")
    (batch,) = finding(report, "batch")
    assert report.passed and batch.severity == "ok" and "runs at 1 and 2, same rows" in batch.message
    (out,) = finding(report, "output")
    assert out.severity == "ok" and f"embedding size {EMB}" in out.message
    (inp,) = finding(report, "input")
    assert "'input' ['batch', 3, 8, 8] NCHW float32" in inp.message and inp.severity == "warn"  # not 112


# -------------------------------------------------------------------------------------- precision
def test_fp16_weights_in_a_file_named_fp32_are_a_violation(tmp_path):
    report = check_model(crafted_onnx(tmp_path / "student_fp32.onnx", reshape=[0, -1], fp16=True), "host")
    (precision,) = finding(report, "precision")
    assert precision.severity == "violation" and not report.passed
    assert "float16 weight tensors in a file promised fp32 by the file name" in precision.message
    # the same file named for what it is passes
    renamed = shutil.copy(tmp_path / "student_fp32.onnx", tmp_path / "student_fp16.onnx")
    assert check_model(renamed, "host").passed


def test_the_card_promise_wins_over_the_name(tmp_path):
    """A card inside the file that says fp32 is the promise, whatever the file is called."""
    path = crafted_onnx(tmp_path / "model.onnx", reshape=[0, -1], fp16=True)
    assert promised_precision(path, None) == (None, "")
    assert finding(check_model(path), "precision")[0].severity == "warn"  # no promise: fp16 is only noted
    embed_metadata(path, {"schema": "facekd.model_card/1", "precision": "fp32"})
    (precision,) = finding(check_model(path), "precision")
    assert precision.severity == "violation" and "promised fp32 by the card" in precision.message


# -------------------------------------------------------------------------------------------- ops
def test_an_op_the_delegate_cannot_run_is_a_violation_naming_op_and_runtime(tmp_path):
    path = prelu_tflite(tmp_path / "probe_fp32.tflite")
    hexagon = check_model(path, "android", "hexagon")
    assert not hexagon.passed and hexagon.runtime == "litert-hexagon"
    messages = [f.message for f in hexagon.violations]
    assert any("PRELU" in m and "Hexagon delegate" in m and "#59030" in m for m in messages)
    # XNNPACK takes a float PRELU (only int8 PRELU leaves it): the same file passes there
    xnnpack = check_model(path, "android", "xnnpack")
    assert xnnpack.passed and xnnpack.runtime == "litert-xnnpack"
    # with no target, every table is consulted and reported, as warnings only
    anywhere = check_model(path)
    assert anywhere.passed and any("PRELU" in f.message and f.severity == "warn" for f in anywhere.findings)


def test_every_runtime_rule_names_its_source():
    for rt in RUNTIMES.values():
        assert rt.format in ("onnx", "tflite")
        for rule in rt.rules:
            assert rule.source and rule.why and rule.severity in ("warn", "violation")


# ---------------------------------------------------------------------------------- real artifacts
class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, 4, 1)
        self.act = nn.PReLU(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> dict[str, Path]:
    """fp32 and fp16 ONNX as export writes them: batch 1, a model card inside each."""
    folder = tmp_path_factory.mktemp("export")
    fp32 = export_onnx(Tiny().eval(), folder / "student_fp32.onnx")
    fp16 = convert_onnx_fp16(fp32, folder / "student_fp16.onnx")
    for path, precision in ((fp32, "fp32"), (fp16, "fp16")):
        write_model_card(path.with_suffix(".json"), path, version="t", thresholds=None, precision=precision)
    return {"fp32": fp32, "fp16": fp16}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("target", ["host", "jetson", None])
def test_exported_artifacts_keep_their_contract(shipped, precision, target):
    report = check_model(shipped[precision], target)
    assert report.passed, report.table()
    assert {f.check for f in report.findings} >= {"card", "input", "batch", "output", "precision", "ops"}
    assert finding(report, "batch")[0].message == "fixed batch 1 (runs at that batch only)"
    assert "outside the model" in finding(report, "normalisation")[0].message
    assert f"{precision} (the card)" in finding(report, "precision")[0].message


def test_a_lying_artifact_is_flagged_in_its_measure_row(shipped, tmp_path):
    """measure checks every artifact: a violation becomes the row's first note and the report's footnote."""
    from devices.measure import measure_rows
    from distill.data.verification_bin import VerificationSet
    from pipeline.report import notes

    shutil.copy(shipped["fp32"], tmp_path / "student_fp32.onnx")
    lying = convert_onnx_fp16(shipped["fp32"], tmp_path / "tmp.onnx").rename(tmp_path / "student_fp32b.onnx")
    arts = [
        {"name": n, "format": "onnx", "precision": "fp32", "file": f, "sha256": sha256_of(tmp_path / f)}
        for n, f in (("good", "student_fp32.onnx"), ("lying", lying.name))
    ]
    images = np.random.default_rng(0).integers(0, 256, size=(20, 112, 112, 3), dtype=np.uint8)
    sets = [VerificationSet("v", images, np.arange(10) % 2 == 0)]
    lines: list[str] = []
    rows = measure_rows(
        arts, tmp_path, sets, target="jetson", threads=1, warmup=0, runs=1, latency_queue=[], log=lines.append
    )
    by_name = {(r.name, r.target): r for r in rows}
    good, bad = by_name[("good", "jetson")], by_name[("lying", "jetson")]
    assert good.details["contract"]["passed"] and not good.notes
    assert bad.details["contract"]["passed"] is False and "contract VIOLATED" in bad.notes[0]
    assert by_name[("lying", "host")].details["contract"]["passed"] is False
    assert any("good: contract ok for TensorRT" in line for line in lines)
    assert any("lying (jetson): model contract violated" in n for n in notes(rows))


# -------------------------------------------------------------------------------------------- CLI
def test_check_command_exit_codes(shipped, tmp_path, capsys):
    assert main(["check", "--model", str(shipped["fp32"]), "--target", "jetson"]) == 0
    out = capsys.readouterr().out
    assert "contract ok for TensorRT (Jetson)" in out and "fixed batch 1" in out
    disguised = crafted_onnx(tmp_path / "m_fp32.onnx", reshape=[1, -1])
    assert main(["check", "--model", str(disguised), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] is False and any(f["check"] == "batch" for f in data["findings"])
    assert main(["check", "--model", str(tmp_path / "missing.onnx")]) == 2
    assert "model file not found" in capsys.readouterr().err
    (tmp_path / "m.pt").write_bytes(b"x")
    assert main(["check", "--model", str(tmp_path / "m.pt")]) == 2
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert main(["check", "--model", str(tmp_path / "junk.onnx")]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err
    with pytest.raises(InputError, match="unknown target"):
        check_model(shipped["fp32"], "phone")
