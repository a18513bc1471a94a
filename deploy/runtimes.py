"""One interface to run any artifact (PyTorch module, .onnx, .tflite) on the host.

Evaluation and latency code call ``embed``/``run_once`` and never care which runtime is behind them, so
the same verification protocol measures the float model and every exported file. Artifacts with a fixed
batch size (the usual mobile export) are fed in chunks of that size, padding the last chunk with zeros.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn

from distill.batching import run_in_chunks
from distill.cpu_sharing import EVAL_LANES, run_in_lanes, split_threads, stop_spinning
from distill.data.transforms import IMAGE_SIZE
from distill.errors import InputError

Format = Literal["pytorch", "onnx", "tflite"]
DYNAMIC_CHUNK = 64  # batch fed per call to runtimes with a dynamic batch axis; bounds host memory
DEFAULT_CHW = (3, IMAGE_SIZE, IMAGE_SIZE)


class Embedder(Protocol):
    """What evaluation and latency measurement need from a runnable model."""

    name: str
    format: Format
    batch_size: int | None  # fixed batch of the artifact, None when the batch axis is dynamic
    num_threads: int
    input_chw: tuple[int, int, int]

    def embed(self, x: np.ndarray) -> np.ndarray:
        """float32 NCHW (N, C, H, W) -> float32 (N, D) embeddings, for any N."""
        ...

    def run_once(self, x: np.ndarray) -> object:
        """One runtime call on an input from ``latency_input`` (for latency timing)."""
        ...

    def latency_input(self, batch_size: int | None = None, seed: int = 0) -> np.ndarray:
        """A random input already in the artifact's shape, layout and dtype, ready for ``run_once``."""
        ...


def resolve_threads(num_threads: int | None) -> int:
    """None -> all cores; recorded explicitly because latency depends on it."""
    if num_threads is None:
        return os.cpu_count() or 1
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return int(num_threads)


def check_input(name: str, x: np.ndarray, input_chw: tuple[int, int, int]) -> np.ndarray:
    """Contiguous float32 (N, C, H, W) or an InputError naming the artifact and the shapes."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(input_chw):
        raise InputError(
            f"{name}: expects input of shape (N, {', '.join(map(str, input_chw))}), got {x.shape}"
        )
    if x.shape[0] == 0:
        raise InputError(f"{name}: got an empty batch (N = 0)")
    return x


def random_images(n: int, input_chw: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """float32 NCHW noise in [-1, 1], the range of real normalised face crops."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, size=(n, *input_chw)).astype(np.float32)


def latency_batch(fixed: int | None, requested: int | None, name: str) -> int:
    """The batch to time: the artifact's fixed batch, else the requested one (default 1)."""
    if fixed is not None:
        if requested is not None and requested != fixed:
            raise InputError(f"{name}: has a fixed batch size {fixed}, cannot time batch {requested}")
        return fixed
    return 1 if requested is None else requested


CARD_METADATA = "facekd_model_card"  # deploy.model_card.METADATA_NAME (that module imports this one)


def pixel_input_dtype(input_type: str, nhwc: bool, card: str | dict | None) -> str | None:
    """ "uint8"/"float32" when a file takes NHWC RGB pixels with the normalisation inside, else None.

    A uint8 NHWC input can only be pixels; a float NHWC input is pixels when the file's model card says
    so (a model converted from TensorFlow may take normalised NHWC floats).
    """
    import json

    if not nhwc:
        return None
    if "uint8" in input_type:
        return "uint8"
    if isinstance(card, str):
        card = json.loads(card) if card else None
    kind = ((card or {}).get("preprocessing") or {}).get("input_kind")
    return "float32" if kind == "pixels" else None


def embed_in_chunks(run: Callable[[np.ndarray], object], x: np.ndarray, batch_size: int | None) -> np.ndarray:
    """Run ``run`` over ``x`` in chunks (``distill/batching.py``; a dynamic axis: ``DYNAMIC_CHUNK`` rows
    each) and return (N, D) float32."""
    outputs = [np.asarray(o, dtype=np.float32) for o in run_in_chunks(run, x, batch_size, DYNAMIC_CHUNK)]
    return np.concatenate([o.reshape(o.shape[0], -1) for o in outputs])


class OnnxEmbedder:
    """onnxruntime session; CUDA provider first when this onnxruntime build has it, else CPU.

    ``lanes > 1`` (the evaluation copies, on a CPU): up to that many sessions of the file, the
    ``num_threads`` shared between them, each batch's rows split over them at once. Two single-thread
    sessions embedded 1.32-1.38x more images per second than one two-thread session of the INT8 Q/DQ
    MobileFaceNet on 2 cores (many small element-wise ops that two threads barely share), 1.05-1.18x of
    the fp32 one and 1.02-1.03x of the default teacher (three runs), with the same output bits
    (``benchmarks/eval_lanes.py``; the splitting: ``distill/cpu_sharing.py``).
    Each lane holds its own copy of the model. ``run_once`` (latency) uses the first session only.
    """

    format: Format = "onnx"

    def __init__(
        self,
        path: str | os.PathLike,
        num_threads: int | None = None,
        name: str | None = None,
        model_bytes: bytes | None = None,
        pixels: str | None = None,
        spin: bool = True,
        lanes: int = 1,
    ):
        """``spin=False`` for a session that only evaluates in batches (``distill/cpu_sharing.py``)."""
        import onnxruntime as ort

        self.path = Path(path)  # with ``model_bytes``: the file these bytes were derived from
        self.name = name or self.path.name
        self.num_threads = resolve_threads(num_threads)
        available = ort.get_available_providers()
        self.providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        if self.providers != ["CPUExecutionProvider"]:
            lanes = 1  # a GPU session batches on the device
        lanes = max(1, min(lanes, self.num_threads, EVAL_LANES))
        source = model_bytes if model_bytes is not None else str(self.path)
        self._sessions = [
            self._open(ort, source, threads, spin) for threads in split_threads(self.num_threads, lanes)
        ]
        self._session = self._sessions[0]
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        self._output_name = self._session.get_outputs()[0].name
        shape = list(inp.shape)
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
            raise InputError(f"{self.path}: expected an NCHW or NHWC input with fixed C, H, W, got {shape}")
        self.batch_size = shape[0] if isinstance(shape[0], int) else None
        # models converted from TensorFlow declare channel-last input; embed() takes NCHW either way
        self._nhwc = shape[1] != 3 and shape[3] == 3
        self.input_chw = (shape[3], shape[1], shape[2]) if self._nhwc else (shape[1], shape[2], shape[3])
        card = self._session.get_modelmeta().custom_metadata_map.get(CARD_METADATA, "")
        self.pixel_dtype = pixels or pixel_input_dtype(inp.type, self._nhwc, card)

    def _open(self, ort: Any, source: str | bytes, threads: int, spin: bool) -> Any:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if not spin:
            stop_spinning(opts)
        try:
            return ort.InferenceSession(source, sess_options=opts, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own pybind error types
            raise InputError(f"{self.path}: not a loadable ONNX model ({_first_line(exc)})") from exc

    @property
    def lanes(self) -> int:
        """How many sessions ``embed`` splits a batch over."""
        return len(self._sessions)

    def embed(self, x: np.ndarray) -> np.ndarray:
        x = check_input(self.name, x, self.input_chw)
        return run_in_lanes(self._embed_rows, self._sessions, x, self.batch_size)

    def _embed_rows(self, session: Any, x: np.ndarray) -> np.ndarray:
        return embed_in_chunks(lambda c: self._run(session, self._layout(c)), x, self.batch_size)

    def _layout(self, x: np.ndarray) -> np.ndarray:
        if self.pixel_dtype is not None:  # a pixels-in file: the normalisation is inside it
            from deploy.pixel_input import pixels_from_normalized

            return pixels_from_normalized(x, self.pixel_dtype)
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if self._nhwc else x

    def run_once(self, x: np.ndarray) -> np.ndarray:
        """Raw call: ``x`` must already be in the model's layout."""
        return self._run(self._session, x)

    def _run(self, session: Any, x: np.ndarray) -> np.ndarray:
        return session.run([self._output_name], {self._input_name: x})[0]

    def latency_input(self, batch_size: int | None = None, seed: int = 0) -> np.ndarray:
        n = latency_batch(self.batch_size, batch_size, self.name)
        return self._layout(random_images(n, self.input_chw, seed))


def quantize_input(x: np.ndarray, scale: float, zero_point: int, dtype: type) -> np.ndarray:
    """float -> int8/uint8 the way TFLite's QUANTIZE kernel does it (round half away from zero, clamp)."""
    if scale <= 0:
        raise ValueError(f"quantized tensor needs a positive scale, got {scale}")
    info = np.iinfo(dtype)
    scaled = x.astype(np.float64) / scale
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
    return np.clip(rounded + zero_point, info.min, info.max).astype(dtype)


def dequantize_output(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """int8/uint8 -> float32 ``(q - zero_point) * scale``."""
    return ((q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


class TfliteEmbedder:
    """LiteRT interpreter (XNNPACK by default); quantizes/dequantizes int8 or uint8 model I/O itself.

    ``batch`` resizes the input's batch axis in the interpreter (``resize_tensor_input``): the same file,
    run many images per call, for evaluation (see :func:`evaluation_twin`).
    """

    format: Format = "tflite"

    def __init__(
        self,
        path: str | os.PathLike,
        num_threads: int | None = None,
        name: str | None = None,
        batch: int | None = None,
        pixels: str | None = None,
    ):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self.name = name or self.path.name
        self.num_threads = resolve_threads(num_threads)
        try:
            self._interpreter = Interpreter(model_path=str(self.path), num_threads=self.num_threads)
            if batch is not None:
                detail = self._interpreter.get_input_details()[0]
                self._interpreter.resize_tensor_input(detail["index"], [batch, *detail["shape"][1:]])
            self._interpreter.allocate_tensors()
        except Exception as exc:  # LiteRT raises ValueError/RuntimeError with multi-line text
            raise InputError(f"{self.path}: not a loadable TFLite model ({_first_line(exc)})") from exc
        inp = self._interpreter.get_input_details()[0]
        out = self._interpreter.get_output_details()[0]
        shape = tuple(int(d) for d in inp["shape"])
        if len(shape) != 4:
            raise InputError(f"{self.path}: expected a 4-D image input, got shape {shape}")
        # litert-torch keeps PyTorch's NCHW; models converted with channel-last I/O declare NHWC.
        self._nhwc = shape[1] != 3 and shape[3] == 3
        self.input_chw = (shape[3], shape[1], shape[2]) if self._nhwc else (shape[1], shape[2], shape[3])
        self.batch_size = shape[0]
        self._in_index, self._out_index = inp["index"], out["index"]
        self._in_dtype, self._out_dtype = inp["dtype"], out["dtype"]
        self._in_quant, self._out_quant = inp["quantization"], out["quantization"]
        from deploy.model_card import read_metadata

        card = read_metadata(self.path) if self._nhwc and not pixels else None
        self.pixel_dtype = pixels or pixel_input_dtype(np.dtype(self._in_dtype).name, self._nhwc, card)

    def embed(self, x: np.ndarray) -> np.ndarray:
        x = check_input(self.name, x, self.input_chw)
        return embed_in_chunks(self._run_float, x, self.batch_size)

    def to_model_input(self, x: np.ndarray) -> np.ndarray:
        """float32 NCHW -> the model's declared layout and dtype (quantized for int8/uint8 inputs)."""
        if self.pixel_dtype is not None:  # a pixels-in file takes the 8-bit pixels themselves
            from deploy.pixel_input import pixels_from_normalized

            return pixels_from_normalized(x, self.pixel_dtype)
        if self._nhwc:
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        if self._in_dtype in (np.int8, np.uint8):
            x = quantize_input(x, self._in_quant[0], self._in_quant[1], self._in_dtype)
        return x

    def latency_input(self, batch_size: int | None = None, seed: int = 0) -> np.ndarray:
        n = latency_batch(self.batch_size, batch_size, self.name)
        return self.to_model_input(random_images(n, self.input_chw, seed))

    def _run_float(self, x: np.ndarray) -> np.ndarray:
        out = self.run_once(self.to_model_input(x))
        if self._out_dtype in (np.int8, np.uint8):
            out = dequantize_output(out, self._out_quant[0], self._out_quant[1])
        return out

    def run_once(self, x: np.ndarray) -> np.ndarray:
        """Raw call: ``x`` must already be in the model's layout and dtype."""
        self._interpreter.set_tensor(self._in_index, x)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._out_index)


class FedEmbedder:
    """A model behind a torch function of the project's input (NCHW float, normalised).

    ``fn`` may be a PyTorch module, or an external teacher that does its own layout, scaling and
    resizing (``Teacher.embed``), so accuracy and latency are those of the model as the pipeline feeds it.
    """

    batch_size: int | None = None

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        fmt: Format,
        name: str,
        num_threads: int | None = None,
        input_chw: tuple[int, int, int] = DEFAULT_CHW,
    ):
        self.fn, self.format, self.name = fn, fmt, name
        self.num_threads = resolve_threads(num_threads)
        self.input_chw = tuple(input_chw)

    def embed(self, x: np.ndarray) -> np.ndarray:
        x = check_input(self.name, x, self.input_chw)
        with _torch_threads(self.num_threads):
            return embed_in_chunks(self._forward, x, None)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.fn(torch.from_numpy(x)).numpy()

    def run_once(self, x: np.ndarray) -> object:
        """Sets torch's (process-wide) thread count to ``num_threads`` if it differs, and leaves it."""
        if torch.get_num_threads() != self.num_threads:
            torch.set_num_threads(self.num_threads)
        with torch.inference_mode():
            return self.fn(torch.from_numpy(x))

    def latency_input(self, batch_size: int | None = None, seed: int = 0) -> np.ndarray:
        return random_images(latency_batch(None, batch_size, self.name), self.input_chw, seed)


class TorchEmbedder(FedEmbedder):
    """A PyTorch module on CPU in eval mode (a private copy, so the caller's model is untouched)."""

    def __init__(
        self,
        model: nn.Module,
        num_threads: int | None = None,
        name: str | None = None,
        input_chw: tuple[int, int, int] = DEFAULT_CHW,
    ):
        self.model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
        super().__init__(self.model, "pytorch", name or type(model).__name__, num_threads, input_chw)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch's thread count is process-wide: set it for the call and put the old value back."""
    old = torch.get_num_threads()
    if old != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if old != n:
            torch.set_num_threads(old)


EVAL_TWIN_BATCH = 32  # images per call of an evaluation twin (the verification protocol's batch)
EVAL_TWIN_SAMPLE = 16  # images the twin must reproduce before it is trusted


def onnx_with_batch_axis(path: str | os.PathLike) -> bytes:
    """The ONNX at ``path`` with a symbolic batch axis (see :func:`free_batch_axis`), serialised."""
    import onnx

    model = onnx.load(str(path))
    free_batch_axis(model)
    return model.SerializeToString()


def free_batch_axis(model: Any) -> None:
    """In place: graph input/output dim 0 named ``batch``, and every Reshape whose constant target shape
    starts with the file's fixed batch told to copy that axis (0)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    fixed = graph.input[0].type.tensor_type.shape.dim[0].dim_value or 1
    for value in (graph.input[0], graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = "batch"
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        shape_name = node.input[1]
        if shape_name in inits:
            shape = numpy_helper.to_array(inits[shape_name]).copy()
            if shape.size and shape[0] == fixed:
                shape[0] = 0
                inits[shape_name].CopyFrom(numpy_helper.from_array(shape, shape_name))
        elif shape_name in consts:
            attr = next((a for a in consts[shape_name].attribute if a.name == "value"), None)
            if attr is not None:
                shape = numpy_helper.to_array(attr.t).copy()
                if shape.size and shape[0] == fixed:
                    shape[0] = 0
                    attr.t.CopyFrom(numpy_helper.from_array(shape, attr.t.name))


def prelu_fp16_via_fp32(model: Any) -> int:
    """In place: every float16 PRelu (slope a float16 constant) computed in float32 between Casts.

    onnxruntime's CPU has no float16 PRelu kernel and runs the op's function body (Less, Mul, Where), half
    of a float16 MobileFaceNet's time. The values are the same: the product of two float16 numbers fits a
    float32 mantissa (11 + 11 bits), so one rounding to float16 gives the float16 product, and x > 0
    passes x unchanged (bit for bit on MobileFaceNet; the twin's sample check decides for any other
    graph). Returns how many PRelu were rewritten.
    """
    from onnx import TensorProto, helper

    graph = model.graph
    fp16_consts = {i.name for i in graph.initializer if i.data_type == TensorProto.FLOAT16}
    for node in graph.node:  # the exporter shares slopes through Identity nodes (graph order: topological)
        if node.op_type == "Identity" and node.input[0] in fp16_consts:
            fp16_consts.add(node.output[0])
    nodes, count = [], 0
    for node in graph.node:
        if node.op_type != "PRelu" or node.input[1] not in fp16_consts:
            nodes.append(node)
            continue
        (x, slope), y = node.input, node.output[0]
        tag = f"{y}__fp32"
        nodes += [
            helper.make_node("Cast", [x], [f"{tag}_x"], to=TensorProto.FLOAT),
            helper.make_node("Cast", [slope], [f"{tag}_slope"], to=TensorProto.FLOAT),
            helper.make_node("PRelu", [f"{tag}_x", f"{tag}_slope"], [f"{tag}_y"]),
            helper.make_node("Cast", [f"{tag}_y"], [y], to=TensorProto.FLOAT16),
        ]
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def evaluation_twin(embedder: Embedder, sample: np.ndarray) -> tuple[Embedder, str]:
    """An embedder that computes what the file computes, faster; or the embedder itself.

    The shipped files have batch 1 (what phones and TensorRT engines want), so evaluating one costs one
    runtime call per image. The twin is the same graph with a batch axis (ONNX: :func:`free_batch_axis`;
    LiteRT: the interpreter's input resized), and for a float16 ONNX its PRelu in float32 between casts
    (:func:`prelu_fp16_via_fp32`). It is used only when it reproduces the file on ``sample``
    (float32 NCHW) to ``TWIN_RTOL``. Returns (embedder to evaluate with, how its accuracy was computed).
    """
    if embedder.format not in ("onnx", "tflite"):
        return embedder, "the file itself"
    batched = embedder.batch_size == 1
    try:
        if embedder.format == "onnx":
            import onnx

            model = onnx.load(str(embedder.path))  # type: ignore[attr-defined]
            if batched:
                free_batch_axis(model)
            prelus = prelu_fp16_via_fp32(model)
            if not (batched or prelus):
                return embedder, "the file itself"
            twin: Embedder = OnnxEmbedder(
                embedder.path,  # type: ignore[attr-defined]
                embedder.num_threads,
                embedder.name,
                model_bytes=model.SerializeToString(),
                pixels=getattr(embedder, "pixel_dtype", None),
                spin=False,
                lanes=EVAL_LANES,
            )
        elif batched:
            prelus = 0
            twin = TfliteEmbedder(
                embedder.path,  # type: ignore[attr-defined]
                embedder.num_threads,
                embedder.name,
                batch=EVAL_TWIN_BATCH,
                pixels=getattr(embedder, "pixel_dtype", None),
            )
            twin.batch_size = EVAL_TWIN_BATCH
        else:
            return embedder, "the file itself"
        reference = embedder.embed(sample)
        got = twin.embed(sample)
    except Exception as exc:  # a graph whose batch axis cannot be freed: evaluate the file as it is
        return embedder, f"the file itself{_per_call(batched)} (no copy: {_first_line(exc)})"
    diff, same = twin_difference(reference, got)
    if not same:
        return embedder, f"the file itself{_per_call(batched)} (a copy differed by {diff:.2e})"
    what = [f"batch-{EVAL_TWIN_BATCH}"] if batched else []
    if prelus:
        what.append(f"its {prelus} float16 PRelu run in float32 between casts")
    equal = f"equal to it on {sample.shape[0]} images (max |diff| {diff:.1e})"
    return twin, f"a copy of the file ({', '.join(what)}), {equal}"


def _per_call(batched: bool) -> str:
    return ", one image per call" if batched else ""


TWIN_RTOL = 1e-5  # a twin's largest difference from the original, relative to the largest |embedding|


def twin_difference(reference: np.ndarray, got: np.ndarray) -> tuple[float, bool]:
    """Largest |got - reference|, and whether it is within ``TWIN_RTOL`` of the embeddings' scale."""
    scale = float(np.abs(reference).max()) or 1.0
    diff = float(np.abs(got - reference).max()) if got.shape == reference.shape else float("inf")
    return diff, diff <= TWIN_RTOL * scale


def module_evaluation_twin(
    model: nn.Module, sample: np.ndarray, num_threads: int | None = None, name: str = "model"
) -> tuple[Embedder, str]:
    """A float PyTorch module as an onnxruntime session, for evaluating it on a CPU; or the module itself.

    onnxruntime fuses what eager PyTorch runs op by op (BatchNorm into the convolutions): on this 2-core
    CPU MobileFaceNet evaluates 1.9x and the iResNet teacher 1.6x faster (benchmarks/eval_twin.py).
    The twin is used only when it reproduces the module on ``sample`` (float32 NCHW) to ``TWIN_RTOL``;
    a module that does not export is evaluated as it is (on the CPU: on a GPU, PyTorch is the fast one).
    Returns (embedder to evaluate with, how its accuracy was computed).
    """
    import tempfile

    from deploy.onnx_export import export_onnx

    own = TorchEmbedder(model, num_threads=num_threads, name=name)

    try:
        with tempfile.TemporaryDirectory(prefix="facekd-twin-") as tmp:
            path = export_onnx(own.model, Path(tmp) / f"{name}.onnx", batch_size=None)
            twin = OnnxEmbedder(
                path, own.num_threads, name, model_bytes=path.read_bytes(), spin=False, lanes=EVAL_LANES
            )
        reference, got = own.embed(sample), twin.embed(sample)
    except Exception as exc:  # an architecture the exporter cannot trace: evaluate the module as it is
        return own, f"the module itself (no onnxruntime copy: {_first_line(exc)})"
    diff, same = twin_difference(reference, got)
    if not same:
        return own, f"the module itself (its onnxruntime copy differed by {diff:.2e})"
    return twin, (
        f"an onnxruntime copy of the module, equal to it on {sample.shape[0]} images (max |diff| {diff:.1e})"
    )


def quantized_evaluation_copy(
    qmodel: nn.Module, sample: np.ndarray, num_threads: int | None = None, name: str = "model"
) -> tuple[Embedder, str]:
    """An NNCF fake-quant module as its INT8 Q/DQ ONNX (the export stage's graph, batch axis free) in
    onnxruntime, for evaluating it on a CPU; or the module itself when it does not export.

    Not a twin: onnxruntime's integer rounding and PyTorch's fake quantization in float part at values on
    a quantization step, so the two differ by a few steps (their agreement on ``sample`` is stated). The
    copy is what ships: the measure stage's INT8 ONNX reproduces it exactly and takes its accuracy instead
    of computing it again, and it runs 1.8x faster here than the fake-quant module.
    """
    import tempfile

    from deploy.onnx_qdq import export_qdq_onnx
    from deploy.parity import row_cosines

    own = TorchEmbedder(qmodel, num_threads=num_threads, name=name)
    try:
        with tempfile.TemporaryDirectory(prefix="facekd-qdq-") as tmp:
            path = export_qdq_onnx(own.model, Path(tmp) / f"{name}_int8.onnx", batch_size=None)
            qdq = OnnxEmbedder(
                path, own.num_threads, name, model_bytes=path.read_bytes(), spin=False, lanes=EVAL_LANES
            )
        cos_min = float(row_cosines(qdq.embed(sample), own.embed(sample)).min())
    except Exception as exc:  # a model the Q/DQ exporter or its linter refuses: evaluate it as it is
        return own, f"the fake-quant module itself (no INT8 Q/DQ ONNX: {_first_line(exc)})"
    return qdq, (
        f"its INT8 Q/DQ ONNX on onnxruntime (the fake-quant module agrees with it to cosine >= "
        f"{cos_min:.4f} on {sample.shape[0]} images: they round differently at quantization steps)"
    )


def load_embedder(
    path_or_model: str | os.PathLike | nn.Module,
    *,
    num_threads: int | None = None,
    name: str | None = None,
    pixels: str | None = None,
) -> Embedder:
    """An Embedder for a module or a file: .onnx, .tflite, or a .pt/.pth checkpoint of this project."""
    if isinstance(path_or_model, nn.Module):
        return TorchEmbedder(path_or_model, num_threads=num_threads, name=name)
    path = Path(path_or_model)
    suffix = path.suffix.lower()
    if suffix not in (".onnx", ".tflite", ".pt", ".pth"):
        raise InputError(f"{path}: unknown model format '{suffix}' (expected .onnx, .tflite, .pt or .pth)")
    if not path.is_file():
        raise InputError(f"{path}: model file not found")
    if suffix == ".onnx":  # ``pixels``: a pixels-in file's dtype, when its card is not inside it yet
        return OnnxEmbedder(path, num_threads=num_threads, name=name, pixels=pixels)
    if suffix == ".tflite":
        return TfliteEmbedder(path, num_threads=num_threads, name=name, pixels=pixels)
    from compress.checkpoint import is_quantized_checkpoint, load_quantized
    from distill.models.checkpoint import load_model  # lazy: only checkpoints need the model zoo

    model = load_quantized(path)[0] if is_quantized_checkpoint(path) else load_model(path)[0]
    return TorchEmbedder(model, num_threads=num_threads, name=name or path.name)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
