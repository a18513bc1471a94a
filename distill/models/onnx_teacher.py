"""A frozen teacher given as an ONNX file, run with onnxruntime.

Most users hold their strong teacher as an exported ONNX model (insightface model packs, their own
exports), not as PyTorch code; this wraps one so distillation can call it like a module that maps a
normalised NCHW float batch to raw embeddings. It never takes gradients.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from distill.data.transforms import IMAGE_SIZE
from distill.errors import InputError

_ORT_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _default_providers(available: list[str]) -> list[str | tuple[str, dict[str, int]]]:
    """CUDA first (on this torchrun rank's GPU, LOCAL_RANK), then CPU."""
    preferred: list[str | tuple[str, dict[str, int]]] = []
    if "CUDAExecutionProvider" in available:
        preferred.append(("CUDAExecutionProvider", {"device_id": int(os.environ.get("LOCAL_RANK", "0"))}))
    if "CPUExecutionProvider" in available:
        preferred.append("CPUExecutionProvider")
    return preferred or list(available)


class OnnxTeacher:
    """Embeddings from an ONNX model with one input (N,3,112,112) and one output (N,D)."""

    def __init__(
        self, path: str | os.PathLike, providers: list[str | tuple[str, dict[str, int]]] | None = None
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: teacher ONNX file not found")
        if providers is None:
            providers = _default_providers(ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(self.path), providers=providers)
        except Exception as exc:  # onnxruntime raises several private exception types for bad files
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{self.path}: cannot load as an ONNX model: {msg}") from exc

        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise InputError(
                f"{self.path}: teacher must have exactly one input and one output, "
                f"found {len(inputs)} inputs and {len(outputs)} outputs"
            )
        inp, out = inputs[0], outputs[0]
        shape = list(inp.shape)
        if len(shape) != 4 or shape[1:] != [3, IMAGE_SIZE, IMAGE_SIZE]:
            raise InputError(
                f"{self.path}: teacher input '{inp.name}' has shape {shape}, expected [N, 3, 112, 112] (NCHW)"
            )
        if inp.type not in _ORT_FLOAT_TYPES:
            raise InputError(
                f"{self.path}: teacher input '{inp.name}' has type {inp.type}, expected a float tensor"
            )
        if len(out.shape) != 2:
            raise InputError(
                f"{self.path}: teacher output '{out.name}' has shape {list(out.shape)}, expected [N, D]"
            )
        self._input_name = inp.name
        self._input_dtype = _ORT_FLOAT_TYPES[inp.type]
        # A fixed integer batch dimension (common for mobile exports: 1) means we must feed exactly that many.
        self.fixed_batch: int | None = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        dim = out.shape[1]
        if isinstance(dim, int) and dim > 0:
            self._embedding_dim = dim
        else:  # symbolic D: learn it from one dummy run
            probe = np.zeros((self.fixed_batch or 1, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=self._input_dtype)
            self._embedding_dim = int(self._run(probe).shape[1])
        self.providers = self.session.get_providers()

    @property
    def embedding_dim(self) -> int:
        return self._embedding_dim

    def eval(self) -> OnnxTeacher:
        """No-op so code written for a torch teacher (``teacher.eval()``) works unchanged."""
        return self

    def _run(self, batch: np.ndarray) -> np.ndarray:
        (result,) = self.session.run(None, {self._input_name: batch})
        return np.asarray(result)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N,3,112,112) normalised float -> (N, D) float32 raw embeddings on ``x``'s device."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(
                f"teacher input must be (N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}), got {tuple(x.shape)}"
            )
        batch = x.detach().to("cpu", torch.float32).numpy().astype(self._input_dtype, copy=False)
        n = batch.shape[0]
        if self.fixed_batch is None:
            result = self._run(np.ascontiguousarray(batch))
        else:
            b = self.fixed_batch
            chunks = []
            for start in range(0, n, b):
                chunk = batch[start : start + b]
                real = chunk.shape[0]
                if real < b:  # pad the last chunk to the fixed batch, keep only the real rows
                    pad = np.zeros((b - real, *chunk.shape[1:]), dtype=chunk.dtype)
                    chunk = np.concatenate([chunk, pad])
                chunks.append(self._run(np.ascontiguousarray(chunk))[:real])
            result = np.concatenate(chunks) if chunks else np.zeros((0, self.embedding_dim), np.float32)
        if result.shape != (n, self.embedding_dim):
            raise InputError(
                f"{self.path}: teacher returned shape {list(result.shape)} for a batch of {n}, "
                f"expected [{n}, {self.embedding_dim}]"
            )
        return torch.from_numpy(result.astype(np.float32, copy=False)).to(x.device)

    def __repr__(self) -> str:
        return (
            f"OnnxTeacher({str(self.path)!r}, embedding_dim={self.embedding_dim}, providers={self.providers})"
        )
