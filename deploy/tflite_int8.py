"""Full-integer INT8 .tflite from an NNCF-quantized (QAT) MobileFaceNet: the Android INT8 artifact.

Route (shared/research/spike-qat-scales.md, spike-tflite-int8.md): the plain float model holding the
QAT-tuned weights goes through litert-torch's PT2E static flow (``prepare_pt2e`` folds BN into conv/linear,
observers, ``convert_pt2e``, ``litert_torch.convert``) with three changes:

* every ``nn.PReLU`` is rewritten (:mod:`deploy.prelu_rewrite`) into MUL(+fused RELU) and ADD, which
  XNNPACK runs in int8 (native int8 PRELU and standalone RELU are not delegated);
* element-wise ops (residual and rewrite ADDs, MULs) are annotated by aten target, because the stock
  litert-torch add/mul annotators find nothing on torch >= 2.10 export graphs (no ``source_fn_stack``);
* ``scales="carry"`` makes the observers return NNCF's learned quantization parameters where NNCF has a
  quantizer on the same tensor (weights: NNCF scale x |gamma/sqrt(var+eps)| of the BN folded in, since
  NNCF quantizes pre-BN weights per channel; activations: NNCF's grid, zero point 0). Tensors NNCF never
  quantized (e.g. the conv outputs feeding a PReLU, the rewrite's MUL output, the model output) keep the
  calibrated PT2E value and are counted. ``scales="calibrate"`` is plain PT2E calibration instead.

litert-torch writes int8 model input and output tensors (scale/zero point in the flatbuffer);
``io_dtype="float32"`` adds a QUANTIZE at the input and a DEQUANTIZE at the output by editing the
flatbuffer, so apps can feed normalised float pixels unchanged.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deploy.prelu_rewrite import RewrittenPReLU, rewrite_prelu
from distill.atomic import atomic_path
from distill.errors import InputError

SCALE_MODES = ("carry", "calibrate")
IO_DTYPES = ("int8", "float32")
QDQ_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})
_FLOAT_TYPES = frozenset({"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16"})
_NNCF_HOOK = re.compile(r"^(pre|post)_hooks\.(.+)__(\d+)\.(\d+)$")
_ELEMENTWISE = {
    torch.ops.aten.add.Tensor,
    torch.ops.aten.mul.Tensor,
    torch.ops.aten.sub.Tensor,
    torch.ops.aten.neg.default,
    torch.ops.aten.relu.default,
    torch.ops.aten.relu_.default,
}
_RELU = {torch.ops.aten.relu.default, torch.ops.aten.relu_.default}
_BATCH_NORM = {
    torch.ops.aten.batch_norm.default,
    torch.ops.aten._native_batch_norm_legit_no_training.default,
}
_WEIGHTED = {torch.ops.aten.conv2d.default: "conv2d", torch.ops.aten.linear.default: "linear"}
_NNCF_FN = {**_WEIGHTED, **dict.fromkeys(_BATCH_NORM, "batch_norm")}  # aten op -> NNCF's name for it


@dataclass
class Int8TfliteReport:
    """What was written and how its quantization parameters were obtained (goes into the manifest)."""

    path: Path
    scales: str  # "carried" (NNCF's where a counterpart exists) or "calibrated" (plain PT2E)
    io_dtype: str
    input_dtype: str
    output_dtype: str
    input_quantization: tuple[float, int]  # (scale, zero point) of an int8 input; (0.0, 0) for float32
    output_quantization: tuple[float, int]
    weights_carried: int  # conv/linear weight observers given NNCF's folded per-channel scales
    weights_calibrated: int  # conv/linear weight observers without an NNCF quantizer (min/max)
    activations_carried: int  # activation observers given NNCF's scale
    activations_calibrated: int  # activation observers without an NNCF counterpart (histogram)
    constants_calibrated: int  # PReLU-rewrite slope constants (per-tensor min/max; NNCF keeps them float)
    nncf_unmatched: list[str]  # NNCF quantizers that found no tensor in the int8 graph
    float_ops: list[str]  # non-Q/DQ ops with a float output: the "float islands" (should be empty)
    op_counts: dict[str, int]
    xnnpack_partitions: int  # DELEGATE nodes on this host's LiteRT: 1 = whole graph on XNNPACK
    size_bytes: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["path"] = str(self.path)
        return out


def export_tflite_int8(
    qmodel: nn.Module | None,
    float_model: nn.Module,
    calib: list[np.ndarray | torch.Tensor],
    out_path: str | os.PathLike,
    *,
    scales: str = "carry",
    io_dtype: str = "int8",
) -> Int8TfliteReport:
    """Write a full-integer INT8 .tflite (batch 1, NCHW) of ``float_model`` and report how it was made.

    ``float_model`` is the plain architecture holding the QAT-tuned float weights (the NNCF state dict
    minus ``__nncf_hooks`` keys); ``qmodel`` is the NNCF model whose learned scales ``scales="carry"``
    imposes (unused, may be None, for ``"calibrate"``). ``calib`` is a list of float NCHW batches
    (normalised like training input); they are fed one image at a time because the batch is baked in.
    """
    start = time.perf_counter()
    if scales not in SCALE_MODES:
        raise InputError(f"tflite int8: scales must be one of {', '.join(SCALE_MODES)}, got {scales!r}")
    if io_dtype not in IO_DTYPES:
        raise InputError(f"tflite int8: io_dtype must be one of {', '.join(IO_DTYPES)}, got {io_dtype!r}")
    if scales == "carry" and qmodel is None:
        raise InputError("tflite int8: scales='carry' needs the NNCF-quantized model, got None")
    images = _batch1_images(calib)
    if scales == "carry":
        _check_same_weights(qmodel, float_model)
        nncf_params = nncf_quant_params(qmodel)
    net = rewrite_prelu(float_model).to(device="cpu", dtype=torch.float32).eval()

    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    sample = images[0]
    exported = torch.export.export(net, (sample,)).module()
    roles = _tensor_roles(exported, net)
    quantizer = _make_quantizer()
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for image in images:
            prepared(image)
    if scales == "carry":
        counts = _carry_scales(prepared, roles, nncf_params, net)
        if counts["weights_carried"] + counts["activations_carried"] == 0:
            raise RuntimeError("tflite int8: no NNCF quantizer matched a tensor of the exported graph")
    else:
        counts = _count_observers(prepared, roles)
    converted = convert_pt2e(prepared, fold_quantize=False)
    for module in converted.modules():  # the graph is already in eval form; silences litert's warning
        module.training = False
    edge = litert_torch.convert(converted, (sample,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
    content = compact(edge.model_content())
    if io_dtype == "float32":
        content = float_io(content)

    target = Path(out_path)
    with atomic_path(target) as tmp:
        tmp.write_bytes(content)
        io = tflite_io_details(tmp)
        expected = "float32" if io_dtype == "float32" else "int8"
        got = {d["dtype"] for d in io["inputs"] + io["outputs"]}
        if got != {expected}:
            raise RuntimeError(
                f"{target}: expected {expected} input/output, the converter gave {sorted(got)}"
            )
        ops = count_float_ops(tmp)
        partitions = xnnpack_partitions(tmp)
    return Int8TfliteReport(
        path=target,
        scales="carried" if scales == "carry" else "calibrated",
        io_dtype=io_dtype,
        input_dtype=io["inputs"][0]["dtype"],
        output_dtype=io["outputs"][0]["dtype"],
        input_quantization=(io["inputs"][0]["scale"], io["inputs"][0]["zero_point"]),
        output_quantization=(io["outputs"][0]["scale"], io["outputs"][0]["zero_point"]),
        weights_carried=counts["weights_carried"],
        weights_calibrated=counts["weights_calibrated"],
        activations_carried=counts["activations_carried"],
        activations_calibrated=counts["activations_calibrated"],
        constants_calibrated=counts["constants_calibrated"],
        nncf_unmatched=counts["nncf_unmatched"],
        float_ops=ops["float_ops"],
        op_counts=ops["op_counts"],
        xnnpack_partitions=partitions,
        size_bytes=len(content),
        seconds=round(time.perf_counter() - start, 2),
    )


# ----------------------------------------------------------------------------------------------------
# Inputs


def _batch1_images(calib: list[np.ndarray | torch.Tensor]) -> list[torch.Tensor]:
    """Split float NCHW batches (or CHW images) into (1, C, H, W) float32 tensors."""
    if not calib:
        raise InputError("tflite int8: the calibration set is empty")
    images: list[torch.Tensor] = []
    for i, batch in enumerate(calib):
        t = torch.as_tensor(np.asarray(batch) if not isinstance(batch, torch.Tensor) else batch)
        t = t.detach().to(device="cpu", dtype=torch.float32)
        if t.ndim == 3:
            t = t.unsqueeze(0)
        if t.ndim != 4 or t.shape[0] == 0:
            raise InputError(f"tflite int8: calibration batch {i} must be NCHW, got shape {tuple(t.shape)}")
        images.extend(t[j : j + 1].contiguous() for j in range(t.shape[0]))
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) != 1:
        raise InputError(f"tflite int8: calibration images differ in shape: {sorted(shapes)}")
    return images


def _check_same_weights(qmodel: nn.Module, float_model: nn.Module) -> None:
    """Carrying scales onto other weights would be silently wrong: demand the QAT float weights."""
    qsd = {k: v for k, v in qmodel.state_dict().items() if not k.startswith("__nncf_hooks")}
    fsd = float_model.state_dict()
    if set(qsd) != set(fsd):
        missing = sorted(set(qsd) ^ set(fsd))[:3]
        raise InputError(f"tflite int8: float model and NNCF model differ in parameters (e.g. {missing})")
    for key, value in fsd.items():
        other = qsd[key]
        if value.shape != other.shape or not torch.equal(value.detach().cpu(), other.detach().cpu()):
            raise InputError(
                f"tflite int8: float model does not hold the NNCF model's weights ({key} differs)"
            )


# ----------------------------------------------------------------------------------------------------
# NNCF side


@dataclass(frozen=True)
class NncfQParams:
    """One NNCF quantizer as torch fake-quant parameters (what ``nncf.strip`` would produce)."""

    scale: torch.Tensor  # (C,) per channel or (1,) per tensor; float32
    zero_point: torch.Tensor  # same shape; int
    quant_min: int
    quant_max: int


def nncf_quant_params(qmodel: nn.Module) -> dict[tuple[str, str, int], NncfQParams]:
    """NNCF quantizers keyed by ``(pre|post, op name, port)``, e.g. ``("pre", "conv1/0/conv2d/0", 1)``.

    NNCF 3.x (torch backend) keeps quantizers in the ``__nncf_hooks`` storage under names
    ``<pre|post>_hooks.<module path with '/'>/<aten fn>/<call index>__<port>.<hook id>``; the model input
    is ``post_hooks.<forward arg>__0.0``. ``get_parameters_for_torch_fq`` gives the exact integer grid.
    """
    from nncf.torch.function_hook import get_hook_storage

    try:
        hooks = list(get_hook_storage(qmodel).named_hooks())
    except AttributeError as exc:
        raise InputError(f"tflite int8: the model given as NNCF model has no NNCF hooks ({exc})") from exc
    out: dict[tuple[str, str, int], NncfQParams] = {}
    with torch.no_grad():
        for name, hook in hooks:
            match = _NNCF_HOOK.match(name)
            if match is None or not hasattr(hook, "get_parameters_for_torch_fq"):
                continue
            if hasattr(hook, "is_enabled_quantization") and not hook.is_enabled_quantization():
                continue  # a disabled quantizer leaves its tensor float in the NNCF model
            kind, op_name, port = match.group(1), match.group(2), int(match.group(3))
            qmin, qmax, scale, zp = hook.get_parameters_for_torch_fq()
            scale = scale.detach().cpu().to(torch.float32).reshape(-1).clone()
            zp = torch.as_tensor(zp).detach().cpu().reshape(-1).to(torch.int64).clone()
            out.setdefault((kind, op_name, port), NncfQParams(scale, zp, int(qmin), int(qmax)))
    return out


# ----------------------------------------------------------------------------------------------------
# PT2E side: which tensor of the exported graph is which NNCF op output


@dataclass(frozen=True)
class _Roles:
    """Per exported-graph node name: the NNCF op whose output it equals after BN folding, and weights."""

    outputs: dict[str, str]  # node name -> NNCF op name ("conv1/2/prelu/0", "x", ...)
    weights: dict[str, tuple[str, str | None]]  # conv/linear node -> (NNCF op name, folded BN path)


def _module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    return str(list(stack.values())[-1][0])


def _op_name(path: str, fn: str, index: int) -> str:
    parts = [p for p in path.split(".") if p] + [fn, str(index)]
    return "/".join(parts)


def _tensor_roles(gm: torch.fx.GraphModule, net: nn.Module) -> _Roles:
    """Name NNCF's view of each tensor before ``prepare_pt2e`` folds BN away (node names survive it).

    NNCF names an op by module path, aten function and call index within that module; a BN output is
    the folded conv/linear output, and a rewritten PReLU's final ADD is NNCF's ``prelu`` output.
    """
    modules = dict(net.named_modules())
    calls: Counter[tuple[str, str]] = Counter()
    outputs: dict[str, str] = {}
    weights: dict[str, tuple[str, str | None]] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            outputs[node.name] = node.name
            continue
        if node.op != "call_function" or not hasattr(node.target, "_opname"):
            continue
        path = _module_path(node)
        fn = _NNCF_FN.get(node.target, node.target._opname)
        index = calls[(path, fn)]
        calls[(path, fn)] += 1
        name = _op_name(path, fn, index)
        outputs[node.name] = name
        if node.target in _WEIGHTED:
            weights[node.name] = (name, None)
        elif node.target in _BATCH_NORM:
            src = node.args[0]
            if isinstance(src, torch.fx.Node) and src.name in weights:
                weights[src.name] = (weights[src.name][0], path)
                outputs[src.name] = name
        if isinstance(modules.get(path), RewrittenPReLU) and node.target == torch.ops.aten.add.Tensor:
            outputs[node.name] = _op_name(path, "prelu", 0)
    return _Roles(outputs, weights)


def _observer_nodes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [
        n
        for n in gm.graph.nodes
        if n.op == "call_module" and str(n.target).startswith("activation_post_process")
    ]


def _is_constant(node: Any) -> bool:
    """A parameter/buffer, or arithmetic on them only (quantized as a constant, not an activation)."""
    if not isinstance(node, torch.fx.Node):
        return True
    if node.op == "get_attr":
        return True
    if node.op == "call_function":
        return all(_is_constant(a) for a in node.all_input_nodes)
    return False


def _classify(gm: torch.fx.GraphModule, roles: _Roles) -> list[tuple[nn.Module, str, Any]]:
    """Unique observers with their role: ("weight", (op, bn)), ("act", op|None) or ("const", None)."""
    seen: dict[int, tuple[nn.Module, str, Any]] = {}
    for node in _observer_nodes(gm):
        observer = getattr(gm, str(node.target))
        src = node.args[0]
        if _is_constant(src):
            consumer = next((u for u in node.users if u.op == "call_function"), None)
            if consumer is not None and consumer.name in roles.weights and consumer.args[1] is node:
                role = ("weight", roles.weights[consumer.name])
            else:
                role = ("const", None)
        else:
            role = ("act", roles.outputs.get(src.name))
        previous = seen.get(id(observer))
        # A shared observer (e.g. flatten shares the GDConv output's) counts once; any NNCF match wins.
        if previous is None or (previous[1] == "act" and previous[2] is None and role[2] is not None):
            seen[id(observer)] = (observer, role[0], role[1])
    return list(seen.values())


def _count_observers(gm: torch.fx.GraphModule, roles: _Roles) -> dict[str, Any]:
    counts = Counter()
    for _obs, kind, _info in _classify(gm, roles):
        counts[
            {"weight": "weights_calibrated", "act": "activations_calibrated"}.get(
                kind, "constants_calibrated"
            )
        ] += 1
    return {
        "weights_carried": 0,
        "weights_calibrated": counts["weights_calibrated"],
        "activations_carried": 0,
        "activations_calibrated": counts["activations_calibrated"],
        "constants_calibrated": counts["constants_calibrated"],
        "nncf_unmatched": [],
    }


def _fixed_qparams(observer: nn.Module, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
    """Make ``convert_pt2e`` use these parameters: it reads only ``calculate_qparams()``."""
    ref_scale, ref_zp = observer.calculate_qparams()
    scale = scale.to(ref_scale.dtype).reshape(ref_scale.shape).clone()
    zero_point = zero_point.to(ref_zp.dtype).reshape(ref_zp.shape).clone()
    observer.calculate_qparams = lambda: (scale, zero_point)


def _carry_scales(
    gm: torch.fx.GraphModule, roles: _Roles, nncf: dict[tuple[str, str, int], NncfQParams], net: nn.Module
) -> dict[str, Any]:
    """Impose NNCF's quantization parameters on every observer that has an NNCF counterpart."""
    counts = Counter()
    used: set[tuple[str, str, int]] = set()
    for observer, kind, info in _classify(gm, roles):
        if kind == "const":
            counts["constants_calibrated"] += 1
            continue
        if kind == "weight":
            op_name, bn_path = info
            key = ("pre", op_name, 1)
            q = nncf.get(key)
            if q is None or bool(torch.any(q.zero_point != 0)):
                counts["weights_calibrated"] += 1
                continue
            scale = q.scale
            if bn_path is not None:
                bn = net.get_submodule(bn_path)
                gain = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().abs().to(torch.float32)
                scale = scale * gain.reshape(-1)
            ref_scale, _ = observer.calculate_qparams()
            if ref_scale.numel() != scale.numel():
                counts["weights_calibrated"] += 1
                continue
            # A channel whose BN gamma is 0 folds to all-zero weights: any scale works, keep the observer's.
            ref_scale = ref_scale.reshape(-1).to(torch.float32)
            scale = torch.where(torch.isfinite(scale) & (scale > 0), scale, ref_scale)
            _fixed_qparams(observer, scale, torch.zeros_like(scale, dtype=torch.int64))
            counts["weights_carried"] += 1
            used.add(key)
            continue
        key = ("post", info, 0) if info is not None else None
        q = nncf.get(key) if key is not None else None
        if q is None or q.scale.numel() != 1 or q.quant_max - q.quant_min != 255:
            counts["activations_calibrated"] += 1
            continue
        # NNCF's signed grid [-128, 127] maps 1:1; an unsigned [0, 255] grid shifts by -128 into int8.
        zero_point = q.zero_point - q.quant_min - 128
        _fixed_qparams(observer, q.scale, zero_point)
        counts["activations_carried"] += 1
        used.add(key)
    return {
        "weights_carried": counts["weights_carried"],
        "weights_calibrated": counts["weights_calibrated"],
        "activations_carried": counts["activations_carried"],
        "activations_calibrated": counts["activations_calibrated"],
        "constants_calibrated": counts["constants_calibrated"],
        "nncf_unmatched": sorted(f"{k[0]}:{k[1]}:{k[2]}" for k in set(nncf) - used),
    }


# ----------------------------------------------------------------------------------------------------
# Quantizer: litert-torch's symmetric int8 config plus element-wise ops annotated by aten target


def _make_quantizer():
    """A litert-torch PT2EQuantizer that also quantizes ADD/MUL/SUB/NEG/RELU (see module docstring)."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.pt2e_quantizer_utils import get_input_act_qspec, get_output_act_qspec
    from torchao.quantization.pt2e.observer import MinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec

    const_spec = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-127,
        quant_max=127,
        qscheme=torch.per_tensor_symmetric,
        is_dynamic=False,
        observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12),
    )

    class ElementwisePT2EQuantizer(PT2EQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            config = self.global_config
            act_in, act_out = get_input_act_qspec(config), get_output_act_qspec(config)
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target not in _ELEMENTWISE:
                    continue
                if "quantization_annotation" in node.meta:
                    continue
                args = [a for a in node.args if isinstance(a, torch.fx.Node)]
                if not args or all(_is_constant(a) for a in args):
                    continue
                inputs = {a: (const_spec if _is_constant(a) else act_in) for a in args}
                users = list(node.users)
                # MUL/NEG feeding only a RELU: no Q/DQ between them, so the converter fuses the RELU.
                fuse = node.target not in _RELU and len(users) == 1 and users[0].target in _RELU
                if fuse:
                    node.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map=inputs, output_qspec=None, _annotated=True
                    )
                    users[0].meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={}, output_qspec=act_out, _annotated=True
                    )
                    continue
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map=inputs, output_qspec=act_out, _annotated=True
                )
            return super().annotate(model)

    return ElementwisePT2EQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    )


# ----------------------------------------------------------------------------------------------------
# Flatbuffer helpers (work on any .tflite)


def _builtin_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _type_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}


def _read_model(content: bytes):
    """The flatbuffer as a mutable ``ModelT`` (ValueError if it is not a TFLite model)."""
    import struct

    from ai_edge_litert.tools import flatbuffer_utils

    if len(content) < 8 or content[4:8] != b"TFL3":
        raise ValueError("no TFL3 file identifier")
    try:
        return flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    except (struct.error, IndexError, TypeError) as exc:
        raise ValueError(f"corrupt flatbuffer ({exc})") from exc


def _opcode_name(model, op) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
    name = _builtin_names().get(builtin, f"BUILTIN_{builtin}")
    if name == "CUSTOM" and code.customCode:
        custom = code.customCode
        return "CUSTOM:" + (custom.decode() if isinstance(custom, bytes) else str(custom))
    return name


def count_float_ops(tflite_path: str | os.PathLike) -> dict[str, Any]:
    """Op statistics of a .tflite: ``op_counts``, ``n_ops``, ``quantize``/``dequantize`` and ``float_ops``.

    ``float_ops`` lists (in graph order) every op other than QUANTIZE/DEQUANTIZE with a float output: in
    an INT8 model these are the float islands that run on slow float kernels between Q/DQ pairs.
    """
    path = Path(tflite_path)
    try:
        model = _read_model(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .tflite file ({exc})") from exc
    types = _type_names()
    counts: Counter[str] = Counter()
    float_ops: list[str] = []
    for subgraph in model.subgraphs or []:
        for op in subgraph.operators or []:
            name = _opcode_name(model, op)
            counts[name] += 1
            outs = [subgraph.tensors[i] for i in (op.outputs or []) if i >= 0]
            if name not in QDQ_OPS and any(types.get(int(t.type)) in _FLOAT_TYPES for t in outs):
                float_ops.append(name)
    return {
        "op_counts": dict(sorted(counts.items())),
        "n_ops": int(sum(counts.values())),
        "quantize": counts["QUANTIZE"],
        "dequantize": counts["DEQUANTIZE"],
        "float_ops": float_ops,
        "n_float_ops": len(float_ops),
    }


def tflite_io_details(path: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs as the LiteRT interpreter sees them: name, shape, dtype, scale, zero point."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)

    def describe(d: dict) -> dict[str, Any]:
        scale, zero_point = d["quantization"]
        return {
            "name": d["name"],
            "index": int(d["index"]),
            "shape": [int(s) for s in d["shape"]],
            "dtype": np.dtype(d["dtype"]).name,
            "scale": float(scale),
            "zero_point": int(zero_point),
        }

    return {
        "inputs": [describe(d) for d in interpreter.get_input_details()],
        "outputs": [describe(d) for d in interpreter.get_output_details()],
    }


def xnnpack_partitions(path: str | os.PathLike, num_threads: int = 1) -> int:
    """Number of DELEGATE nodes after LiteRT applies its default (XNNPACK) delegate; 1 = fully delegated.

    Uses the interpreter's private ``_get_ops_details``; returns -1 if this LiteRT build lacks it.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
    interpreter.allocate_tensors()
    try:
        ops = interpreter._get_ops_details()
    except AttributeError:
        return -1
    return sum(1 for op in ops if op.get("op_name") == "DELEGATE")


def float_io(content: bytes) -> bytes:
    """Give an int8-I/O .tflite float32 I/O: QUANTIZE after each int8 input, DEQUANTIZE before each output.

    The int8 tensors keep their scales, so the integer graph is unchanged; the float edges carry the
    same names (and signature entries), which is what an app binds to.
    """
    from ai_edge_litert import schema_py_generated as schema

    model = _read_model(content)
    if len(model.subgraphs) != 1:
        raise ValueError(f"float_io expects a single-subgraph model, got {len(model.subgraphs)}")
    graph = model.subgraphs[0]
    quantized = {schema.TensorType.INT8, schema.TensorType.UINT8}

    def opcode_index(builtin: int, version: int) -> int:
        for i, code in enumerate(model.operatorCodes):
            if max(int(code.builtinCode), int(code.deprecatedBuiltinCode)) == builtin:
                code.version = max(int(code.version), version)
                return i
        code = schema.OperatorCodeT()
        code.builtinCode = builtin
        code.deprecatedBuiltinCode = min(builtin, 127)
        code.version = version
        model.operatorCodes.append(code)
        return len(model.operatorCodes) - 1

    def float_twin(index: int) -> int:
        old = graph.tensors[index]
        twin = schema.TensorT()
        twin.shape = list(old.shape)
        twin.shapeSignature = list(old.shapeSignature) if old.shapeSignature is not None else None
        twin.type = schema.TensorType.FLOAT32
        twin.buffer = 0  # buffer 0 is the empty sentinel: activations own no data
        twin.name = old.name
        old.name = (old.name.decode() if isinstance(old.name, bytes) else str(old.name)) + "_int8"
        graph.tensors.append(twin)
        return len(graph.tensors) - 1

    def new_op(opcode: int, src: int, dst: int):
        op = schema.OperatorT()
        op.opcodeIndex = opcode
        op.inputs = [src]
        op.outputs = [dst]
        return op

    remap: dict[int, int] = {}
    head, tail = [], []
    for pos, index in enumerate(list(graph.inputs)):
        if graph.tensors[index].type in quantized:
            twin = float_twin(index)
            head.append(new_op(opcode_index(schema.BuiltinOperator.QUANTIZE, 2), twin, index))
            graph.inputs[pos] = twin
            remap[index] = twin
    for pos, index in enumerate(list(graph.outputs)):
        if graph.tensors[index].type in quantized:
            twin = float_twin(index)
            tail.append(new_op(opcode_index(schema.BuiltinOperator.DEQUANTIZE, 2), index, twin))
            graph.outputs[pos] = twin
            remap[index] = twin
    graph.operators = head + list(graph.operators) + tail
    for signature in model.signatureDefs or []:
        for entry in list(signature.inputs or []) + list(signature.outputs or []):
            entry.tensorIndex = remap.get(int(entry.tensorIndex), int(entry.tensorIndex))
    return pack_model(model)


def compact(content: bytes) -> bytes:
    """Same model, smaller file: short tensor names, identical numeric vectors stored once.

    Per-channel quantization writes an int64 zero-point vector (all zeros) per weight and bias tensor
    and litert-torch names every tensor by its full module stack; together about 20% of an int8
    MobileFaceNet file. Names become module paths (``blocks.2.block.1.2``); model I/O names are kept.
    """
    model = _read_model(content)
    for graph in model.subgraphs:
        keep = set(graph.inputs or []) | set(graph.outputs or [])
        for index, tensor in enumerate(graph.tensors or []):
            if index not in keep and tensor.name:
                name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
                tensor.name = _short_name(name)
    return pack_model(model)


def _short_name(name: str) -> str:
    """``pkg.Model/pkg.Seq_blocks/pkg.Block_2;...`` -> ``blocks.2``; other names up to their first ``;``."""
    first, _, rest = name.partition(";")
    fused = rest.rsplit(";", 1)[-1] if rest else ""
    parts = first.split("/")
    attrs = [p.rsplit(".", 1)[-1].partition("_")[2] for p in parts[1:]]
    if len(parts) > 1 and all(attrs):
        short = ".".join(attrs)
    elif first.startswith("torch.export."):
        short = "const"
    else:
        short = first
    return f"{short}:{fused}" if fused.isdigit() else short


def pack_model(model) -> bytes:
    """Serialise a ``ModelT``; byte buffers 16-byte aligned (the schema's force_align), vectors shared."""
    import flatbuffers

    class SharingBuilder(flatbuffers.Builder):
        def __init__(self, size: int) -> None:
            super().__init__(size)
            self._shared: dict[tuple[str, bytes], int] = {}

        def CreateNumpyVector(self, x):  # noqa: N802 - flatbuffers' method name
            x = np.ascontiguousarray(x)
            key = (x.dtype.str, x.tobytes())
            if key not in self._shared:
                self.StartVector(x.itemsize, x.size, 16 if x.dtype == np.uint8 else x.dtype.alignment)
                payload = x.astype(x.dtype.newbyteorder("<"), copy=False).tobytes()
                self.head = self.head - len(payload)
                self.Bytes[self.head : self.head + len(payload)] = payload
                self.vectorNumElems = x.size
                self._shared[key] = self.EndVector()
            return self._shared[key]

    builder = SharingBuilder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
