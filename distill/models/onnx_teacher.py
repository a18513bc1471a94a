"""A frozen teacher given as an ONNX file, run with onnxruntime.

Most users hold their strong teacher as an exported ONNX model (insightface model packs, arcface_torch's
``torch2onnx.py``, models converted from TensorFlow), not as PyTorch code; this wraps one so distillation
can call it like a module that maps the project's normalised NCHW batch to raw embeddings. How the file
wants to be fed (layout, channel order, scaling, size) is an ``InputContract``; the batch sizes it really
runs at are probed, not read from its declared shape. It never takes gradients.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.batching import run_in_chunks
from distill.config import TeacherInputConfig
from distill.cpu_sharing import EVAL_LANES, run_in_lanes, split_threads, stop_spinning
from distill.data.transforms import IMAGE_SIZE
from distill.errors import InputError
from distill.teacher_input import InputContract, detect_onnx, resolve_contract

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
    """Embeddings from an ONNX model with one image input and one (N, D) output, fed by its contract."""

    def __init__(
        self,
        path: str | os.PathLike,
        input_cfg: TeacherInputConfig | None = None,
        contract: InputContract | None = None,
        providers: list[str | tuple[str, dict[str, int]]] | None = None,
        num_threads: int | None = None,
        spin: bool = False,
    ) -> None:
        """``contract`` (as the teacher stage recorded it) skips detection and probing; else both run.

        ``spin=False``: onnxruntime's idle threads sleep at once (it embeds in batches: cache, evaluation;
        ``distill/cpu_sharing.py``), and on a CPU the file runs in lanes (one single-thread session per
        thread, at most ``EVAL_LANES``, each batch split over them: the same bits, 1.16x and 1.22x for the
        two real teachers on 2 cores); True keeps onnxruntime's default, one session, for a teacher whose
        latency is timed.
        """
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: teacher ONNX file not found")
        if providers is None:
            providers = _default_providers(ort.get_available_providers())
        # evaluation-only on a CPU: one single-thread session per thread, each batch split over them
        cpu_only = [p if isinstance(p, str) else p[0] for p in providers] == ["CPUExecutionProvider"]
        threads = num_threads if num_threads is not None else (os.cpu_count() or 1)
        lanes = min(threads, EVAL_LANES) if cpu_only and not spin else 1
        per_lane = split_threads(threads, lanes) if lanes > 1 else [num_threads]
        self._sessions = [self._open(ort, providers, n, spin) for n in per_lane]
        self.session = self._sessions[0]

        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise InputError(
                f"{self.path}: teacher must have exactly one input and one output, "
                f"found {len(inputs)} inputs and {len(outputs)} outputs"
            )
        inp, out = inputs[0], outputs[0]
        shape = list(inp.shape)
        if inp.type not in _ORT_FLOAT_TYPES:
            raise InputError(
                f"{self.path}: teacher input '{inp.name}' has type {inp.type}, expected a float tensor "
                "(pixels as float32; an integer input cannot be fed by teacher.input)"
            )
        if len(out.shape) != 2:
            raise InputError(
                f"{self.path}: teacher output '{out.name}' has shape {list(out.shape)}, expected [N, D]"
            )
        self._input_name = inp.name
        self._input_dtype = _ORT_FLOAT_TYPES[inp.type]
        declared = shape[0] if len(shape) == 4 and isinstance(shape[0], int) and shape[0] > 0 else None
        if contract is None:
            contract = self._detect(inp.name, shape, input_cfg or TeacherInputConfig())
        self.contract = contract
        self.fixed_batch: int | None = contract.batch if contract.batch is not None else declared
        dim = out.shape[1]
        if isinstance(dim, int) and dim > 0:
            self._embedding_dim = dim
        else:  # symbolic D: learn it from one run
            try:
                self._embedding_dim = int(self._run(self._probe_input(self.fixed_batch or 1)).shape[1])
            except Exception as exc:
                raise InputError(
                    f"{self.path}: teacher fails on {self._fed_as()}: {_first_line(exc)}"
                ) from exc
        if contract.batch is None and contract.origin.get("batch") is None:
            self.contract = self._probe_batch(declared)
            self.fixed_batch = self.contract.batch
        self.providers = self.session.get_providers()

    def _open(self, ort: Any, providers: list, num_threads: int | None, spin: bool) -> Any:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # a failing probe or run is reported by us, on one line
        if not spin:
            stop_spinning(opts)
        if num_threads is not None:
            opts.intra_op_num_threads = num_threads
            opts.inter_op_num_threads = 1
        try:
            return ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises several private exception types for bad files
            raise InputError(f"{self.path}: cannot load as an ONNX model: {_first_line(exc)}") from exc

    @property
    def lanes(self) -> int:
        """How many onnxruntime sessions a batch is split over (``distill/cpu_sharing.py``)."""
        return len(self._sessions)

    def _detect(self, name: str, shape: list, cfg: TeacherInputConfig) -> InputContract:
        import onnx

        where = f"{self.path}: teacher input '{name}'"
        try:  # the graph's first nodes only: external weight files are not needed for that
            proto = onnx.load(str(self.path), load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError and friends
            raise InputError(f"{self.path}: cannot read the ONNX graph: {_first_line(exc)}") from exc
        detected = detect_onnx(proto, name, shape, where)
        return resolve_contract(
            detected, layout=cfg.layout, channels=cfg.channels, mean=cfg.mean, std=cfg.std, size=cfg.size,
            where=where,
        )  # fmt: skip

    def _probe_input(self, n: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        x = torch.from_numpy(rng.uniform(-1, 1, size=(n, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32))
        return self.contract.feed(x).numpy().astype(self._input_dtype, copy=False)

    def _probe_batch(self, declared: int | None) -> InputContract:
        """Run batch 1 (must work) and, for a dynamic batch, batch 2 against two batch-1 runs.

        A file can declare a dynamic batch and still keep a batch-1 Reshape inside (arcface_torch's
        torch2onnx.py with today's exporter): it fails, or silently mixes rows, at batch 2. Such a file
        runs one image per call instead, and ``origin['batch']`` says why.
        """
        from dataclasses import replace

        probe = self._probe_input(2 if declared is None else declared, seed=1)
        try:
            singles = [self._run(probe[i : i + 1]) for i in range(2)] if declared is None else None
        except Exception as exc:
            raise InputError(f"{self.path}: teacher fails on {self._fed_as()}: {_first_line(exc)}") from exc
        if declared is not None:
            try:
                self._run(probe)
            except Exception as exc:
                raise InputError(
                    f"{self.path}: teacher fails at its declared batch {declared}: {_first_line(exc)}"
                ) from exc
            return replace(
                self.contract,
                batch=declared,
                origin={**self.contract.origin, "batch": "declared in the file"},
            )
        why = ""
        try:
            pair = self._run(probe)
            if pair.shape != (2, self._embedding_dim):
                why = f"returns shape {list(pair.shape)} for 2 images"
            elif not np.allclose(
                pair, np.concatenate(singles), rtol=1e-3, atol=1e-3 * float(np.abs(pair).max() or 1)
            ):
                why = "gives other embeddings for 2 images than for each alone"
        except Exception as exc:
            why = f"fails: {_first_line(exc)}"
        if not why:
            return replace(
                self.contract, batch=None, origin={**self.contract.origin, "batch": "probed: runs at batch 2"}
            )
        note = (
            f"declares a dynamic batch but at batch 2 {why}; run one image per call "
            "(every batch of N images costs N calls)"
        )
        return replace(self.contract, batch=1, origin={**self.contract.origin, "batch": note})

    def _fed_as(self) -> str:
        return f"one image fed as {self.contract.summary()}"

    @property
    def embedding_dim(self) -> int:
        return self._embedding_dim

    def eval(self) -> OnnxTeacher:
        """No-op so code written for a torch teacher (``teacher.eval()``) works unchanged."""
        return self

    def _run(self, batch: np.ndarray, session: Any = None) -> np.ndarray:
        (result,) = (session or self.session).run(None, {self._input_name: np.ascontiguousarray(batch)})
        return np.asarray(result)

    def _embed_rows(self, session: Any, batch: np.ndarray) -> np.ndarray:
        """One session's embeddings of ``batch``: at once, or in chunks of the fixed batch (the last one
        padded)."""
        chunks = run_in_chunks(lambda chunk: self._run(chunk, session), batch, self.fixed_batch)
        return np.concatenate(chunks) if chunks else np.zeros((0, self.embedding_dim), np.float32)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N,3,112,112) normalised float -> (N, D) float32 raw embeddings on ``x``'s device."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(
                f"teacher input must be (N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}), got {tuple(x.shape)}"
            )
        fed = self.contract.feed(x.detach().to("cpu", torch.float32))
        batch = fed.numpy().astype(self._input_dtype, copy=False)
        n = batch.shape[0]
        result = run_in_lanes(self._embed_rows, self._sessions, batch, self.fixed_batch)
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


def _first_line(exc: BaseException) -> str:
    """The useful part of an onnxruntime error: the failing node and the kernel's own words."""
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    node = re.search(r"running (\w+) node\. Name:'([^']*)'", text)
    if node:
        tail = (
            text.rsplit(" was false. ", 1)[-1]
            if " was false. " in text
            else text.rsplit("Status Message: ", 1)[-1]
        )
        return f"{node.group(1)} node '{node.group(2)}': {tail[-200:]}"
    return text[:300]
