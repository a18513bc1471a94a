#!/usr/bin/env python3
"""On-device harness: copied to the device and run there, so it imports only the standard library,
numpy and whichever runtime the device has (onnxruntime, TensorRT, LiteRT). It must not import facekd.

Commands (JSON on stdout or in ``--out``):

  probe                                   what this Python can run (versions, providers)
  latency --model M [--warmup W --runs R --threads T --batch B] --out lat.json
                                          per-call times in ms (warm-up untimed, GC paused while timing)
  embed --model M --images x.npy --out emb.npy [--threads T]
                                          embeddings of float32 NCHW images (already normalised)

Models: ``.onnx`` (onnxruntime), ``.tflite`` (LiteRT / tflite_runtime interpreter), ``.engine``/``.plan``
(TensorRT, device buffers through libcudart with ctypes, no pycuda needed).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

DYNAMIC_CHUNK = 32


# ------------------------------------------------------------------------------------------ backends
def pixels_of(x: np.ndarray, dtype) -> np.ndarray:
    """Normalised float NCHW -> the NHWC RGB pixels of a pixels-in model (facekd deploy/pixel_input.py;
    this side of the device boundary keeps its own copy)."""
    p = np.clip(np.rint(np.asarray(x, np.float32) * 127.5 + 127.5), 0, 255).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(p, dtype=dtype)


def card_says_pixels(card_json: str) -> bool:
    try:
        return (json.loads(card_json).get("preprocessing") or {}).get("input_kind") == "pixels"
    except (ValueError, AttributeError):
        return False


class OnnxModel:
    def __init__(self, path: str, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(path, sess_options=opts, providers=providers)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        shape = list(inp.shape)
        self.batch = shape[0] if isinstance(shape[0], int) else None
        self.chw = tuple(int(d) for d in shape[1:])
        self.dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        card = self.session.get_modelmeta().custom_metadata_map.get("facekd_model_card", "")
        self.pixels = shape[-1] == 3 and (inp.type == "tensor(uint8)" or card_says_pixels(card))
        if self.pixels:  # NHWC pixels in: the images still arrive normalised NCHW
            self.dtype = np.uint8 if inp.type == "tensor(uint8)" else np.float32
            self.chw = (3, int(shape[1]), int(shape[2]))
        self.runtime = f"onnxruntime {ort.__version__} ({', '.join(self.session.get_providers())})"

    def prepare(self, x: np.ndarray) -> np.ndarray:
        if self.pixels:
            return pixels_of(x, self.dtype)
        return np.ascontiguousarray(x, dtype=self.dtype)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def to_float(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, dtype=np.float32)


class TfliteModel:
    def __init__(self, path: str, threads: int):
        interpreter_cls, name = _tflite_interpreter()
        self.interpreter = interpreter_cls(model_path=path, num_threads=threads)
        self.interpreter.allocate_tensors()
        inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        shape = tuple(int(d) for d in inp["shape"])
        self.nhwc = shape[1] != 3 and shape[3] == 3
        self.chw = (shape[3], shape[1], shape[2]) if self.nhwc else shape[1:]
        self.batch = shape[0]
        self.in_index, self.out_index = inp["index"], out["index"]
        self.in_dtype, self.out_dtype = inp["dtype"], out["dtype"]
        self.in_quant, self.out_quant = inp["quantization"], out["quantization"]
        # a uint8 NHWC input is a pixels-in file (facekd never writes uint8 for normalised input)
        self.pixels = self.nhwc and self.in_dtype == np.uint8
        self.runtime = name

    def prepare(self, x: np.ndarray) -> np.ndarray:
        if self.pixels:
            return pixels_of(x, np.uint8)
        x = np.asarray(x, dtype=np.float32)
        if self.nhwc:
            x = x.transpose(0, 2, 3, 1)
        if self.in_dtype in (np.int8, np.uint8):
            scale, zero = self.in_quant
            info = np.iinfo(self.in_dtype)
            scaled = x.astype(np.float64) / scale
            rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)  # half away from zero, as TFLite
            x = np.clip(rounded + zero, info.min, info.max)
        return np.ascontiguousarray(x, dtype=self.in_dtype)

    def run(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.in_index, x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.out_index)

    def to_float(self, y: np.ndarray) -> np.ndarray:
        if self.out_dtype in (np.int8, np.uint8):
            scale, zero = self.out_quant
            return ((y.astype(np.float32) - np.float32(zero)) * np.float32(scale)).astype(np.float32)
        return np.asarray(y, dtype=np.float32)


def _tflite_interpreter():
    try:
        from ai_edge_litert import __version__ as v
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, f"ai-edge-litert {v}"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite_runtime"
    except ImportError:
        pass
    import tensorflow as tf  # last resort; raises ImportError with a clear name

    return tf.lite.Interpreter, f"tensorflow.lite {tf.__version__}"


class _CudaRuntime:
    """The five libcudart calls a TensorRT engine needs (no pycuda / cuda-python on a stock Jetson)."""

    H2D, D2H = 1, 2

    def __init__(self):
        names = [ctypes.util.find_library("cudart"), "libcudart.so", "/usr/local/cuda/lib64/libcudart.so"]
        names += [f"libcudart.so.{v}" for v in ("12", "11.0", "13")]
        self.lib = None
        for name in filter(None, names):
            try:
                self.lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        if self.lib is None:
            raise RuntimeError("libcudart not found (needed to run a TensorRT engine)")
        self.lib.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
        self.lib.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.lib.cudaFree.argtypes = [ctypes.c_void_p]
        self.lib.cudaStreamCreate.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        self.lib.cudaStreamSynchronize.argtypes = [ctypes.c_void_p]

    def check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"CUDA {what} failed with error {rc}")

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(ptr), max(1, nbytes)), "cudaMalloc")
        return int(ptr.value)

    def copy(self, dst: int, src: int, nbytes: int, kind: int) -> None:
        self.check(self.lib.cudaMemcpy(dst, src, nbytes, kind), "cudaMemcpy")

    def stream(self) -> int:
        s = ctypes.c_void_p()
        self.check(self.lib.cudaStreamCreate(ctypes.byref(s)), "cudaStreamCreate")
        return int(s.value or 0)

    def sync(self, stream: int) -> None:
        self.check(self.lib.cudaStreamSynchronize(stream), "cudaStreamSynchronize")


class TensorRTModel:
    """A serialized engine with one input and one output (TensorRT 10 named-tensor API)."""

    def __init__(self, path: str, threads: int):
        import tensorrt as trt

        self.trt = trt
        self.cuda = _CudaRuntime()
        logger = trt.Logger(trt.Logger.WARNING)
        with open(path, "rb") as fh:
            self.engine = trt.Runtime(logger).deserialize_cuda_engine(fh.read())
        if self.engine is None:
            raise RuntimeError(f"{path}: TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        self.input_name, self.output_name = inputs[0], outputs[0]
        shape = list(self.engine.get_tensor_shape(self.input_name))
        self.batch = shape[0] if shape[0] > 0 else None
        self.chw = tuple(int(d) for d in shape[1:])
        self.dtype = trt.nptype(self.engine.get_tensor_dtype(self.input_name))
        self.out_dtype = trt.nptype(self.engine.get_tensor_dtype(self.output_name))
        self.pixels = self.dtype == np.uint8 and shape[-1] == 3  # built from a pixels-in ONNX
        if self.pixels:
            self.chw = (3, int(shape[1]), int(shape[2]))
        self.stream = self.cuda.stream()
        self.buffers: dict[tuple, tuple[int, int]] = {}
        self.runtime = f"TensorRT {trt.__version__}"

    def prepare(self, x: np.ndarray) -> np.ndarray:
        if self.pixels:
            return pixels_of(x, np.uint8)
        return np.ascontiguousarray(x, dtype=self.dtype)

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.batch is None:
            self.context.set_input_shape(self.input_name, tuple(x.shape))
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        out = np.empty(out_shape, dtype=self.out_dtype)
        key = (x.shape, out_shape)
        if key not in self.buffers:
            self.buffers[key] = (self.cuda.malloc(x.nbytes), self.cuda.malloc(out.nbytes))
        d_in, d_out = self.buffers[key]
        self.cuda.copy(d_in, x.ctypes.data, x.nbytes, _CudaRuntime.H2D)
        self.context.set_tensor_address(self.input_name, d_in)
        self.context.set_tensor_address(self.output_name, d_out)
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self.cuda.sync(self.stream)
        self.cuda.copy(out.ctypes.data, d_out, out.nbytes, _CudaRuntime.D2H)
        return out

    def to_float(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, dtype=np.float32)


def load_model(path: str, threads: int):
    ext = os.path.splitext(path)[1].lower()
    if ext == ".onnx":
        return OnnxModel(path, threads)
    if ext == ".tflite":
        return TfliteModel(path, threads)
    if ext in (".engine", ".plan", ".trt"):
        return TensorRTModel(path, threads)
    raise SystemExit(f"harness: unknown model type '{ext}' for {path}")


# ----------------------------------------------------------------------------------------- commands
def embed(model, images: np.ndarray) -> np.ndarray:
    """Embeddings of float NCHW images in the model's batch size (last chunk zero-padded)."""
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(model.chw):
        raise SystemExit(f"harness: images have shape {images.shape}, model expects (N, *{model.chw})")
    step = model.batch or DYNAMIC_CHUNK
    outputs = []
    for start in range(0, images.shape[0], step):
        chunk = images[start : start + step]
        real = chunk.shape[0]
        if model.batch is not None and real < model.batch:
            pad = np.zeros((model.batch - real, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        out = model.to_float(model.run(model.prepare(chunk)))
        outputs.append(out.reshape(out.shape[0], -1)[:real])
    return np.concatenate(outputs)


def time_calls(run, x, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        run(x)
    samples = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(runs):
            start = time.perf_counter_ns()
            run(x)
            samples.append((time.perf_counter_ns() - start) / 1e6)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def latency(model, warmup: int, runs: int, batch: int | None, seed: int = 0) -> dict:
    n = model.batch or batch or 1
    rng = np.random.default_rng(seed)
    x = model.prepare(rng.uniform(-1.0, 1.0, size=(n, *model.chw)).astype(np.float32))
    samples = time_calls(model.run, x, warmup, runs)
    peak_kb = _peak_rss_kb()
    return {
        "samples_ms": samples,
        "warmup": warmup,
        "runs": runs,
        "batch_size": n,
        "runtime": model.runtime,
        "peak_rss_mb": None if peak_kb is None else round(peak_kb / 1024.0, 3),
    }


def _peak_rss_kb() -> int | None:
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # kB on Linux
    except (ImportError, OSError):
        return None


def probe() -> dict:
    info: dict = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
    }
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = list(ort.get_available_providers())
    except Exception as exc:  # ImportError, or a broken install raising something else
        info["onnxruntime"] = None
        info["onnxruntime_error"] = f"{type(exc).__name__}: {exc}"
    try:
        import tensorrt as trt

        info["tensorrt"] = trt.__version__
    except Exception as exc:
        info["tensorrt"] = None
        info["tensorrt_error"] = f"{type(exc).__name__}: {exc}"
    try:
        _, name = _tflite_interpreter()
        info["litert"] = name
    except Exception:
        info["litert"] = None
    return info


def _write_atomic(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".harness.", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("probe")
    lat = sub.add_parser("latency")
    emb = sub.add_parser("embed")
    for p in (lat, emb):
        p.add_argument("--model", required=True)
        p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
        p.add_argument("--out", required=True)
    lat.add_argument("--warmup", type=int, default=10)
    lat.add_argument("--runs", type=int, default=100)
    lat.add_argument("--batch", type=int, default=None)
    emb.add_argument("--images", required=True)
    args = parser.parse_args(argv)

    if args.command == "probe":
        print(json.dumps(probe()))
        return 0
    model = load_model(args.model, args.threads)
    if args.command == "latency":
        if args.runs < 1 or args.warmup < 0:
            raise SystemExit("harness: need --runs >= 1 and --warmup >= 0")
        result = latency(model, args.warmup, args.runs, args.batch)
        result["threads"] = args.threads
        text = json.dumps(result)

        def write_json(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)

        _write_atomic(args.out, write_json)
        print(json.dumps({k: v for k, v in result.items() if k != "samples_ms"}))
        return 0
    images = np.load(args.images, allow_pickle=False)
    embeddings = embed(model, images)

    def write_npy(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, embeddings.astype(np.float32), allow_pickle=False)

    _write_atomic(args.out, write_npy)
    print(json.dumps({"embeddings": list(embeddings.shape), "runtime": model.runtime}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
