"""Q/DQ linter: hand-built ONNX graphs that break one TensorRT rule each, and one that passes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploy.qdq_lint import LintIssue, format_issues, lint_qdq
from distill.errors import InputError

C_IN, C_OUT = 3, 4


def build(
    *,
    act_zp: np.ndarray | None = None,
    act_scale: np.ndarray | None = None,
    act_axis: int | None = None,
    w_axis: int | None = 0,
    w_via_q: bool = False,
    opset: int = 17,
    extra_nodes: tuple = (),
    extra_opsets: tuple = (),
    scale_as_input: bool = False,
) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv(W from a weight DQ) -> y; defaults are the TensorRT-clean form."""
    act_zp = np.array(0, dtype=np.int8) if act_zp is None else act_zp
    act_scale = np.array(0.02, dtype=np.float32) if act_scale is None else act_scale
    rng = np.random.default_rng(0)
    w_scale = np.linspace(0.01, 0.04, C_OUT).astype(np.float32)
    inits = [
        numpy_helper.from_array(act_zp, "act_zp"),
        numpy_helper.from_array(w_scale, "w_scale"),
        numpy_helper.from_array(np.zeros(C_OUT, dtype=np.int8), "w_zp"),
    ]
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C_IN, 8, 8])]
    if scale_as_input:
        graph_inputs.append(helper.make_tensor_value_info("act_scale", TensorProto.FLOAT, []))
    else:
        inits.append(numpy_helper.from_array(act_scale, "act_scale"))
    act_attrs = {} if act_axis is None else {"axis": act_axis}
    w_attrs = {} if w_axis is None else {"axis": w_axis}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "act_scale", "act_zp"], ["xq"], name="act_q", **act_attrs),
        helper.make_node(
            "DequantizeLinear", ["xq", "act_scale", "act_zp"], ["xd"], name="act_dq", **act_attrs
        ),
    ]
    if w_via_q:
        w = rng.normal(0, 0.5, (C_OUT, C_IN, 3, 3)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, "w"))
        nodes.append(
            helper.make_node("QuantizeLinear", ["w", "w_scale", "w_zp"], ["wq"], name="w_q", **w_attrs)
        )
    else:
        wq = rng.integers(-127, 128, (C_OUT, C_IN, 3, 3)).astype(np.int8)
        inits.append(numpy_helper.from_array(wq, "wq"))
    nodes.append(
        helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zp"], ["wd"], name="w_dq", **w_attrs)
    )
    nodes.append(helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv", pads=[1, 1, 1, 1]))
    nodes.extend(extra_nodes)
    out_name = extra_nodes[-1].output[0] if extra_nodes else "y"
    graph = helper.make_graph(
        nodes,
        "qdq",
        graph_inputs,
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [1, C_OUT, 8, 8])],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", opset), *extra_opsets]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def rules(issues: list[LintIssue]) -> set[tuple[str, str]]:
    return {(i.node, i.rule) for i in issues}


def test_clean_graph_passes_and_is_a_real_runnable_model():
    model = build()
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).uniform(-1, 1, (1, C_IN, 8, 8)).astype(np.float32)
    assert sess.run(None, {"x": x})[0].shape == (1, C_OUT, 8, 8)
    assert lint_qdq(model) == []


def test_clean_graph_with_weight_quantize_node_passes():
    assert lint_qdq(build(w_via_q=True)) == []


def test_uint8_activations_are_flagged_on_both_q_and_dq():
    issues = lint_qdq(build(act_zp=np.array(0, dtype=np.uint8)))
    assert rules(issues) == {("act_q", "dtype"), ("act_dq", "dtype")}
    assert all("uint8" in i.message for i in issues)


def test_quantize_without_zero_point_defaults_to_uint8():
    model = build()
    q = model.graph.node[0]
    del q.input[2]  # QuantizeLinear(x, scale) -> uint8 output by the ONNX spec
    dq = model.graph.node[1]
    del dq.input[2]
    assert rules(lint_qdq(model)) == {("act_q", "dtype"), ("act_dq", "dtype")}


def test_nonzero_zero_point_is_flagged():
    issues = lint_qdq(build(act_zp=np.array(3, dtype=np.int8)))
    assert rules(issues) == {("act_q", "zero_point"), ("act_dq", "zero_point")}


def test_per_channel_activation_is_flagged():
    scale = np.full(C_IN, 0.02, dtype=np.float32)
    zp = np.zeros(C_IN, dtype=np.int8)
    issues = lint_qdq(build(act_scale=scale, act_zp=zp, act_axis=1))
    assert rules(issues) == {("act_q", "activation_per_tensor"), ("act_dq", "activation_per_tensor")}


@pytest.mark.parametrize("axis", [1, None], ids=["axis-1", "default-axis-is-1"])
def test_per_channel_weight_on_wrong_axis_is_flagged(axis):
    assert rules(lint_qdq(build(w_axis=axis))) == {("w_dq", "weight_axis")}
    assert rules(lint_qdq(build(w_axis=axis, w_via_q=True))) == {
        ("w_q", "weight_axis"),
        ("w_dq", "weight_axis"),
    }


def test_custom_domain_op_is_flagged():
    fq = helper.make_node("FakeQuantize", ["y"], ["z"], name="nncf_fq", domain="org.openvinotoolkit")
    model = build(extra_nodes=(fq,), extra_opsets=(helper.make_opsetid("org.openvinotoolkit", 1),))
    issues = lint_qdq(model)
    assert rules(issues) == {("nncf_fq", "domain")}
    assert "org.openvinotoolkit::FakeQuantize" in issues[0].message


def test_old_opset_is_flagged():
    assert rules(lint_qdq(build(opset=10))) == {("<model>", "opset")}


@pytest.mark.parametrize("bad", [0.0, -0.5, np.inf])
def test_non_positive_or_non_finite_scale_is_flagged(bad):
    assert rules(lint_qdq(build(act_scale=np.array(bad, dtype=np.float32)))) == {
        ("act_q", "scale"),
        ("act_dq", "scale"),
    }


def test_runtime_scale_is_flagged():
    assert rules(lint_qdq(build(scale_as_input=True))) == {("act_q", "scale"), ("act_dq", "scale")}


def test_model_without_qdq_is_not_int8():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "float",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert rules(lint_qdq(model)) == {("<model>", "qdq_present")}


def test_constant_node_zero_point_counts_as_constant():
    model = build()
    # Move the activation zero point from an initializer into a Constant node (what some exporters emit).
    zp = next(i for i in model.graph.initializer if i.name == "act_zp")
    model.graph.initializer.remove(zp)
    const = helper.make_node("Constant", [], ["act_zp"], value=numpy_helper.from_array(np.array(5, np.int8)))
    model.graph.node.insert(0, const)
    assert rules(lint_qdq(model)) == {("act_q", "zero_point"), ("act_dq", "zero_point")}


def test_lints_a_file_and_reports_unreadable_ones(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(build(act_zp=np.array(0, dtype=np.uint8)), str(path))
    issues = lint_qdq(path)
    assert rules(issues) == {("act_q", "dtype"), ("act_dq", "dtype")}
    text = format_issues(issues)
    assert text.count("\n") == 1 and "act_q: [dtype]" in text
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not a protobuf")
    with pytest.raises(InputError, match="bad.onnx"):
        lint_qdq(bad)
    with pytest.raises(InputError, match="not found"):
        lint_qdq(tmp_path / "missing.onnx")


def _zero_point_through_identity(model: onnx.ModelProto, value: np.ndarray) -> onnx.ModelProto:
    """Route the activation zero point through Identity nodes, as the TorchScript exporter does."""
    g = model.graph
    for init in list(g.initializer):
        if init.name == "act_zp":
            g.initializer.remove(init)
    g.initializer.append(numpy_helper.from_array(value, "shared_zp"))
    g.node.insert(0, helper.make_node("Identity", ["shared_zp"], ["zp_hop"], name="id1"))
    g.node.insert(1, helper.make_node("Identity", ["zp_hop"], ["act_zp"], name="id2"))
    return model


def test_zero_point_shared_through_identity_counts_as_constant():
    model = _zero_point_through_identity(build(), np.array(0, dtype=np.int8))
    onnx.checker.check_model(model, full_check=True)
    assert lint_qdq(model) == []


def test_nonzero_zero_point_behind_identity_is_still_flagged():
    model = _zero_point_through_identity(build(), np.array(3, dtype=np.int8))
    assert rules(lint_qdq(model)) == {("act_q", "zero_point"), ("act_dq", "zero_point")}
