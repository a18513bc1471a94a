"""The model contract: what a shipped .onnx/.tflite promises, checked on the file itself.

insightface's model-zoo/challenge tooling (``challenges/iccv21-mfr/onnx_helper.py``, the MFR-Ongoing
rules in shared/research/research-2026.md §E) refuses a submission before scoring it when its input is
not a 4-D image batch, it has more than one output, its weights are below 32 bits, or its feature is too
wide. The same mistakes reach devices here: a file that declares a dynamic batch but hard-codes batch 1
inside (a ``Reshape`` to ``[1, -1]``), fp16 weights in a file sold as fp32, an op the target's delegate
cannot run. :func:`check_model` reads and runs the file and reports one finding per check:

* ``input``: name, shape, layout (NCHW/NHWC), dtype; against the model card when the file carries one;
* ``batch``: a symbolic batch axis is *run* at batch 1 and 2 (random input): batch 2 must work and give
  each row what batch 1 gives it;
* ``output``: the embedding size, finite values, and the card's ``embedding.size``;
* ``normalisation``: inside the model (uint8 input, a pixels card, Sub/Mul at the input) or outside;
* ``precision``: what was promised (the card's ``precision``, else ``_fp32``/``_fp16``/``_int8`` in the
  name) against the stored weights' dtypes;
* ``ops``: the graph's ops against :data:`RUNTIMES`, what the target's runtime/delegate cannot run.

A finding is ``ok``, ``warn`` or ``violation``; the contract passes when there is no violation.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import InputError

SEVERITIES = ("ok", "warn", "violation")
CONTRACT_IMAGE_SIZE = 112  # insightface's recognition crop (onnx_helper.py refuses any other)
BATCH_RTOL = 1e-3  # per-row agreement of batch 2 with batch 1, relative to the output's largest value


@dataclass(frozen=True)
class OpRule:
    """An op a runtime does not run (as the file stores it); ``quantized``: only when the op is int8."""

    op: str  # TFLite builtin name (PRELU) or ONNX op_type (PRelu)
    severity: str  # violation: the runtime cannot run it; warn: it runs, but off the accelerated path
    why: str
    source: str
    quantized: bool = False


@dataclass(frozen=True)
class Runtime:
    name: str
    format: str  # onnx | tflite
    label: str
    rules: tuple[OpRule, ...] = ()
    integer_only: str = ""  # non-empty: the runtime runs 8-bit quantized models only (why, source)
    note: str = ""


SPIKE = "shared/research/spike-tflite-int8.md (tested, ai-edge-litert 2.3.0)"
# Small on purpose: only what a source says, each with it. An op missing here is not known to be fine; it
# is not known to fail. A delegate leaves an op it cannot take to the CPU (the graph is split, each
# partition boundary costs a copy/sync), so for a delegate "cannot run" means the model does not run on it.
RUNTIMES: dict[str, Runtime] = {
    "onnxruntime": Runtime("onnxruntime", "onnx", "onnxruntime (CPU)", note="runs every standard op"),
    "tensorrt": Runtime(
        "tensorrt",
        "onnx",
        "TensorRT (Jetson)",
        rules=(
            OpRule(
                "PRelu",
                "warn",
                "not fused with its Q/DQ pair by TensorRT, so it runs as a separate float layer",
                "NVIDIA/TensorRT#2162 (open); shared/research/research-2026.md §D.5",
                quantized=True,
            ),
        ),
        note="also the Q/DQ and custom-domain rules of deploy/qdq_lint.py (onnx-tensorrt docs/operators.md)",
    ),
    "litert-cpu": Runtime("litert-cpu", "tflite", "LiteRT builtin CPU kernels", note="runs every builtin op"),
    "litert-xnnpack": Runtime(
        "litert-xnnpack",
        "tflite",
        "LiteRT XNNPACK delegate",
        rules=(
            OpRule(
                "PRELU",
                "warn",
                "int8 PRELU is not delegated: the graph splits (MobileFaceNet: 34 partitions, 4.5x slower)",
                SPIKE,
                True,
            ),
            OpRule("RELU", "warn", "a standalone int8 RELU is not delegated: the graph splits", SPIKE, True),
        ),
    ),
    "litert-gpu": Runtime(
        "litert-gpu",
        "tflite",
        "LiteRT GPU delegate",
        rules=(
            OpRule(
                "TRANSPOSE",
                "warn",
                "not in the GPU delegate's documented op list; older delegates leave it to the CPU",
                "tensorflow.org/lite/performance/gpu (supported ops); tensorflow/tensorflow#32832",
            ),
        ),
    ),
    "litert-hexagon": Runtime(
        "litert-hexagon",
        "tflite",
        "LiteRT Hexagon delegate (Qualcomm DSP)",
        rules=(
            OpRule(
                "PRELU",
                "violation",
                "the Hexagon delegate has no PRELU",
                "tensorflow/tensorflow#59030; shared/research/research-2026.md §D.5",
            ),
        ),
        integer_only="the Hexagon delegate runs 8-bit quantized models only "
        "(tensorflow.org/lite/android/delegates/hexagon)",
        note="deprecated by Google in favour of Qualcomm's QNN delegate",
    ),
    "litert-nnapi": Runtime(
        "litert-nnapi",
        "tflite",
        "LiteRT NNAPI delegate",
        note="op support depends on the phone's NNAPI driver: not checked here",
    ),
}
TARGETS = ("host", "jetson", "android")
DELEGATES = ("cpu", "xnnpack", "gpu", "nnapi", "hexagon")


def runtime_for(target: str | None, fmt: str, delegate: str = "xnnpack") -> tuple[str | None, str]:
    """(runtime name or None, why none) of a target for a file format."""
    if target is None:
        return None, "no --target: every runtime of the format is listed, as warnings"
    if target not in TARGETS:
        raise InputError(f"--target: unknown target '{target}'; choose one of {', '.join(TARGETS)}")
    if delegate not in DELEGATES:
        raise InputError(f"--delegate: unknown delegate '{delegate}'; choose one of {', '.join(DELEGATES)}")
    if target == "host":
        return ("onnxruntime" if fmt == "onnx" else "litert-xnnpack"), ""
    if target == "jetson":
        return ("tensorrt", "") if fmt == "onnx" else (None, "a Jetson runs the ONNX (TensorRT), not .tflite")
    return (f"litert-{delegate}", "") if fmt == "tflite" else (None, "Android runs .tflite, not ONNX")


# ------------------------------------------------------------------------------------------- report
@dataclass(frozen=True)
class Finding:
    check: str  # load, input, batch, output, normalisation, precision, ops, card
    severity: str  # ok | warn | violation
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"check": self.check, "severity": self.severity, "message": self.message}


@dataclass
class ContractReport:
    """Every check's finding for one file; passes when none is a violation."""

    model: str
    target: str | None
    runtime: str | None
    findings: list[Finding] = field(default_factory=list)

    def add(self, check: str, severity: str, message: str) -> None:
        assert severity in SEVERITIES, severity
        self.findings.append(Finding(check, severity, message))

    @property
    def violations(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "violation"]

    @property
    def passed(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        """One line: the verdict, and the violations (or the warning count)."""
        where = f" for {RUNTIMES[self.runtime].label}" if self.runtime else ""
        if not self.passed:
            return f"contract VIOLATED{where}: " + "; ".join(
                f"{f.check}: {f.message}" for f in self.violations
            )
        warns = sum(f.severity == "warn" for f in self.findings)
        return f"contract ok{where} ({len(self.findings)} checks, {warns} warning{'s' * (warns != 1)})"

    def table(self) -> str:
        """One line per finding, aligned, for the console."""
        width = max((len(f.check) for f in self.findings), default=5)
        return "\n".join(f"  {f.severity:<9} {f.check:<{width}}  {f.message}" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "target": self.target,
            "runtime": self.runtime,
            "findings": [f.to_dict() for f in self.findings],
        }


# -------------------------------------------------------------------------------------------- check
def check_model(
    path: str | os.PathLike, target: str | None = None, delegate: str = "xnnpack"
) -> ContractReport:
    """Check a .onnx or .tflite against its contract for ``target`` (host, jetson, android; None: any).

    InputError when the file is missing, of another format, or not a model at all (nothing to check).
    """
    path = Path(path)
    fmt = {".onnx": "onnx", ".tflite": "tflite"}.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: the contract check reads .onnx or .tflite files, not '{path.suffix}'")
    if not path.is_file():
        raise InputError(f"{path}: model file not found")
    runtime, why_none = runtime_for(target, fmt, delegate)
    report = ContractReport(path.name, target, runtime)
    graph = _OnnxGraph(path) if fmt == "onnx" else _TfliteGraph(path)  # InputError: not a model
    card = _card(path, report)
    io = _io(path, report)
    if io is not None:
        _check_input(io, card, report)
        run = _check_batch(path, io, report)
        _check_output(io, card, run, report)
        _check_normalisation(io, card, graph, report)
    _check_precision(path, card, graph, report)
    _check_ops(graph, fmt, runtime, why_none, report)
    return report


def _card(path: Path, report: ContractReport) -> dict[str, Any] | None:
    from deploy.model_card import read_metadata

    try:
        card = read_metadata(path)
    except InputError as exc:
        report.add("card", "warn", str(exc))
        return None
    if card is None:
        report.add(
            "card", "warn", "no model card inside: precision from the file name, the rest from the graph"
        )
    else:
        report.add("card", "ok", f"model card inside ({card.get('schema', 'no schema')})")
    return card


def _io(path: Path, report: ContractReport) -> dict[str, Any] | None:
    from deploy.model_card import model_io

    try:
        return model_io(path)
    except InputError as exc:  # a readable file whose I/O is not one image batch in, one vector out
        report.add("input", "violation", str(exc).removeprefix(f"{path}: "))
        return None


def _check_input(io: dict[str, Any], card: dict[str, Any] | None, report: ContractReport) -> None:
    inp = io["input"]
    shape = inp["shape"]
    text = f"'{inp['name']}' {shape} {inp['layout']} {inp['dtype']}"
    side = shape[2] if inp["layout"] == "NCHW" else shape[1]
    promised = (card or {}).get("input") or {}
    differs = [k for k in ("name", "shape", "dtype", "layout") if k in promised and promised[k] != inp[k]]
    if differs:
        report.add(
            "input", "violation", f"{text}; the card says " + ", ".join(f"{k} {promised[k]}" for k in differs)
        )
    elif side != CONTRACT_IMAGE_SIZE:
        report.add(
            "input", "warn", f"{text}: {side}x{side} crops, not insightface's {CONTRACT_IMAGE_SIZE}x112"
        )
    else:
        report.add("input", "ok", text)


@dataclass
class _Run:
    output: np.ndarray  # float32 (N, ...) of the first run


def _check_batch(path: Path, io: dict[str, Any], report: ContractReport) -> _Run | None:
    """Run the file; a symbolic (ONNX) or -1 (LiteRT signature) batch axis at batch 1 and at batch 2."""
    from deploy.runtimes import load_embedder

    dim = io["input"]["shape"][0]
    dynamic = not isinstance(dim, int) or (path.suffix.lower() == ".tflite" and _tflite_dynamic_batch(path))
    try:
        embedder = load_embedder(path, num_threads=1)
        if not dynamic:
            x = embedder.latency_input(seed=1)
            out = _as_float(embedder.run_once(x))
            report.add("batch", "ok", f"fixed batch {x.shape[0]} (runs at that batch only)")
            return _Run(out)
        if path.suffix.lower() == ".tflite":  # the interpreter's batch axis is resized, same file
            from deploy.runtimes import TfliteEmbedder

            one, two = TfliteEmbedder(path, 1, batch=1), TfliteEmbedder(path, 1, batch=2)
        else:
            one = two = embedder
        x = two.latency_input(batch_size=2, seed=1)
        singles = [_as_float(one.run_once(np.ascontiguousarray(x[i : i + 1]))) for i in range(2)]
    except InputError as exc:
        report.add("batch", "violation", f"does not run at batch 1: {exc}")
        return None
    except Exception as exc:  # the runtime's own error types
        report.add("batch", "violation", f"does not run at batch 1: {_first_line(exc)}")
        return None
    try:
        pair = _as_float(two.run_once(x))
    except Exception as exc:
        report.add(
            "batch", "violation", f"declares a dynamic batch ({dim}) but fails at batch 2: {_first_line(exc)}"
        )
        return _Run(singles[0])
    want = np.concatenate(singles)
    if pair.shape != want.shape:
        report.add(
            "batch",
            "violation",
            f"declares a dynamic batch ({dim}) but returns shape {list(pair.shape)} for 2 inputs "
            f"(batch 1 gives {list(singles[0].shape)})",
        )
    elif not np.allclose(pair, want, rtol=BATCH_RTOL, atol=BATCH_RTOL * float(np.abs(want).max() or 1.0)):
        diff = float(np.abs(pair - want).max())
        report.add(
            "batch",
            "violation",
            f"declares a dynamic batch ({dim}) but batch 2 gives other rows than batch 1 "
            f"(max |diff| {diff:.3g})",
        )
    else:
        report.add("batch", "ok", f"dynamic batch ({dim}): runs at 1 and 2, same rows")
    return _Run(singles[0])


def _check_output(
    io: dict[str, Any], card: dict[str, Any] | None, run: _Run | None, report: ContractReport
) -> None:
    out = io["output"]
    size = int(np.prod(run.output.shape[1:])) if run is not None else out["shape"][-1]
    text = f"'{out['name']}' {out['shape']} {out['dtype']}: embedding size {size}"
    promised = ((card or {}).get("embedding") or {}).get("size")
    if promised is not None and promised != size:
        report.add("output", "violation", f"{text}; the card says {promised}")
    elif run is not None and not np.all(np.isfinite(run.output)):
        report.add("output", "violation", f"{text}: non-finite values on a random input")
    elif run is not None and run.output.ndim != 2:
        report.add("output", "warn", f"{text}: rank {run.output.ndim}, expected (N, D)")
    else:
        report.add("output", "ok", text)


def _check_normalisation(
    io: dict[str, Any], card: dict[str, Any] | None, graph: _OnnxGraph | _TfliteGraph, report: ContractReport
) -> None:
    """Inside (the file takes pixels) or outside (the app feeds (x - 127.5) / 127.5); card vs graph."""
    kind = (((card or {}).get("preprocessing")) or {}).get("input_kind")
    dtype = io["input"]["dtype"]
    found = graph.leading_normalisation(io["input"]["name"]) if isinstance(graph, _OnnxGraph) else None
    integer_in = dtype in ("uint8", "int8") and "quantization" not in io["input"]
    if kind == "normalized" and dtype == "uint8" and "quantization" not in io["input"]:
        report.add(
            "normalisation", "violation", "the card says normalised input but the input is uint8 pixels"
        )
    elif kind == "pixels" or integer_in:
        how = found or ("uint8 input" if dtype == "uint8" else "the card")
        report.add("normalisation", "ok", f"inside the model: feed RGB pixels 0..255 ({how})")
    elif kind == "normalized" and found:
        report.add(
            "normalisation",
            "warn",
            f"the card says the app normalises, and the graph opens with {found}: normalised twice?",
        )
    elif kind == "normalized":
        report.add("normalisation", "ok", "outside the model: feed (x - 127.5) / 127.5 (the card)")
    elif found:
        report.add("normalisation", "ok", f"inside the model ({found} at the input; no card)")
    else:
        report.add("normalisation", "warn", "no card and no normalisation at the input: presumably outside")


PRECISION_IN_NAME = re.compile(r"(?:^|[_.-])(fp32|fp16|int8)(?:[_.-]|$)", re.IGNORECASE)


def promised_precision(path: Path, card: dict[str, Any] | None) -> tuple[str | None, str]:
    """(fp32|fp16|int8 or None, where it was promised): the card, else the file name."""
    if card and card.get("precision"):
        return str(card["precision"]), "the card"
    m = PRECISION_IN_NAME.search(path.stem)
    return (m.group(1).lower(), "the file name") if m else (None, "")


def _check_precision(
    path: Path, card: dict[str, Any] | None, graph: _OnnxGraph | _TfliteGraph, report: ContractReport
) -> None:
    """Stored weight dtypes against the promised precision (insightface bans weights below 32 bits)."""
    weights = graph.weight_dtypes()
    promised, where = promised_precision(path, card)
    half = weights.get("float16", 0) + weights.get("bfloat16", 0)
    integer = weights.get("int8", 0) + weights.get("uint8", 0) + weights.get("int4", 0)
    text = ", ".join(f"{n} {t}" for t, n in sorted(weights.items())) or "no stored weights"
    if promised == "fp32" and (half or integer):
        low = f"{half} float16" if half else f"{integer} 8-bit"
        report.add(
            "precision", "violation", f"{low} weight tensors in a file promised fp32 by {where} ({text})"
        )
    elif promised == "fp16" and not half:
        report.add("precision", "warn", f"promised fp16 by {where} but no float16 weights ({text})")
    elif promised == "int8" and not integer:
        report.add("precision", "violation", f"promised int8 by {where} but no integer weights ({text})")
    elif promised is None and half:
        report.add("precision", "warn", f"float16 weights and no precision promised ({text})")
    else:
        report.add("precision", "ok", f"{promised or 'no promise'}{f' ({where})' if where else ''}: {text}")


def _check_ops(
    graph: _OnnxGraph | _TfliteGraph, fmt: str, runtime: str | None, why_none: str, report: ContractReport
) -> None:
    """The graph's ops against the target runtime's table (no runtime: every table, as warnings)."""
    if runtime is None:  # no target, or a format the target does not run: every table, as warnings
        report.add("ops", "warn" if report.target else "ok", why_none)
    names = [runtime] if runtime else [n for n, r in RUNTIMES.items() if r.format == fmt]
    counts = graph.op_counts()
    quantized = graph.quantized_ops()
    found = False
    for name in names:
        rt = RUNTIMES[name]
        severity = "violation" if runtime else "warn"
        for rule in rt.rules:
            n = quantized.get(rule.op, 0) if rule.quantized else counts.get(rule.op, 0)
            if n:
                found = True
                what = f"{n} {'int8 ' if rule.quantized and fmt == 'tflite' else ''}{rule.op}"
                sev = rule.severity if runtime else "warn"
                report.add("ops", sev, f"{what} on {rt.label}: {rule.why} [{rule.source}]")
        if rt.integer_only and not graph.is_quantized():
            found = True
            report.add("ops", severity, f"a float model on {rt.label}: {rt.integer_only}")
        if name == "tensorrt":
            for issue in graph.tensorrt_issues():
                found = True
                report.add("ops", severity, f"TensorRT: {issue}")
    if not found:
        where = RUNTIMES[runtime].label if runtime else "any " + fmt + " runtime listed"
        note = f" ({RUNTIMES[runtime].note})" if runtime and RUNTIMES[runtime].note else ""
        report.add(
            "ops",
            "ok",
            f"{sum(counts.values())} ops of {len(counts)} kinds; none known to fail on {where}{note}",
        )


# ------------------------------------------------------------------------------------------ graphs
class _OnnxGraph:
    """What the checks read from an ONNX graph (weights, ops) without running it."""

    def __init__(self, path: Path) -> None:
        from deploy.onnx_fp16 import load_onnx

        self.model = load_onnx(path)  # InputError when not an ONNX file

    def weight_dtypes(self) -> dict[str, int]:
        import onnx

        graph = self.model.graph
        types = [t.data_type for t in graph.initializer if _elements(t.dims) > 1]
        types += [
            a.t.data_type
            for n in graph.node
            if n.op_type == "Constant"
            for a in n.attribute
            if a.name == "value" and _elements(a.t.dims) > 1
        ]
        names = Counter(
            onnx.helper.tensor_dtype_to_np_dtype(t).name if t != 16 else "bfloat16" for t in types
        )
        return {k: v for k, v in names.items() if k not in ("int64", "int32", "bool")}  # shapes, indices

    def op_counts(self) -> Counter[str]:
        return Counter(n.op_type for n in self.model.graph.node)

    def is_quantized(self) -> bool:
        return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in self.model.graph.node)

    def quantized_ops(self) -> Counter[str]:
        """In a Q/DQ graph every op is (meant to be) int8: all of them."""
        return self.op_counts() if self.is_quantized() else Counter()

    def tensorrt_issues(self) -> list[str]:
        """deploy/qdq_lint.py's TensorRT rules: custom domains always; the Q/DQ rules on Q/DQ graphs."""
        from deploy.qdq_lint import lint_qdq

        keep = {"domain"} if not self.is_quantized() else None
        issues = [
            i for i in lint_qdq(self.model) if i.rule != "qdq_present" and (keep is None or i.rule in keep)
        ]
        shown = [str(i) for i in issues[:3]]
        return shown + ([f"and {len(issues) - 3} more Q/DQ issues"] if len(issues) > 3 else [])

    def leading_normalisation(self, input_name: str) -> str | None:
        from distill.teacher_input import leading_normalisation

        return leading_normalisation(self.model.graph, input_name)[0]


class _TfliteGraph:
    """What the checks read from a .tflite flatbuffer (weights, ops) without running it."""

    def __init__(self, path: Path) -> None:
        from deploy.tflite_int8 import _read_model

        try:
            self.model = _read_model(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable .tflite file ({exc})") from exc

    def _ops(self) -> list[tuple[str, Any, Any]]:
        from deploy.tflite_int8 import _opcode_name

        return [
            (_opcode_name(self.model, op), op, g)
            for g in self.model.subgraphs or []
            for op in g.operators or []
        ]

    def _type(self, graph: Any, index: int) -> str:
        from deploy.tflite_int8 import _type_names

        return _type_names().get(int(graph.tensors[index].type), "?").lower()

    def weight_dtypes(self) -> dict[str, int]:
        names: Counter[str] = Counter()
        for g in self.model.subgraphs or []:
            for i, t in enumerate(g.tensors or []):
                buf = self.model.buffers[t.buffer] if t.buffer else None
                stored = buf is not None and (
                    (buf.data is not None and len(buf.data) > 0) or int(getattr(buf, "offset", 0) or 0) > 1
                )
                if stored and _elements(t.shape if t.shape is not None else []) > 1:
                    names[self._type(g, i)] += 1
        return {k: v for k, v in names.items() if k not in ("int64", "int32", "bool")}

    def op_counts(self) -> Counter[str]:
        return Counter(name for name, _, _ in self._ops())

    def quantized_ops(self) -> Counter[str]:
        """Ops whose first input is an 8-bit tensor (what a delegate's int8 kernel must take)."""
        return Counter(
            name
            for name, op, g in self._ops()
            if op.inputs is not None and len(op.inputs) and op.inputs[0] >= 0
            and self._type(g, op.inputs[0]) in ("int8", "uint8")
        )  # fmt: skip

    def is_quantized(self) -> bool:
        ops = self._ops()
        return bool(ops) and sum(self.quantized_ops().values()) >= len(ops) // 2

    def tensorrt_issues(self) -> list[str]:
        return []


def _tflite_dynamic_batch(path: Path) -> bool:
    """A .tflite input whose shape signature has -1 on the batch axis (LiteRT resizes it)."""
    from deploy.tflite_int8 import _read_model

    model = _read_model(path.read_bytes())
    g = model.subgraphs[0]
    sig = g.tensors[g.inputs[0]].shapeSignature
    return sig is not None and len(sig) > 0 and int(sig[0]) == -1


def _elements(dims: Any) -> int:
    return int(np.prod([int(d) for d in dims])) if len(dims) else 1


def _as_float(y: Any) -> np.ndarray:
    a = np.asarray(y)
    return a.astype(np.float32) if a.dtype != np.float32 else a


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
