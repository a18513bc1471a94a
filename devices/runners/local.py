"""This machine as a device: onnxruntime, the LiteRT interpreter (XNNPACK, fixed threads), and a
TensorRT engine when TensorRT and a CUDA GPU are present.

ONNX/TFLite go through deploy.runtimes (the same embedders as the host measurement rows) so a runner
result equals a host row of ``devices.measure`` for the same settings. TensorRT builds the engine with
deploy.tensorrt.build_engine and runs it with the on-device harness's TensorRT backend.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from devices.runners.base import AccuracyResult, DeviceError, LatencyResult, Runner
from distill.errors import InputError


class LocalRunner(Runner):
    def __init__(
        self,
        device_name: str = "host-cpu",
        *,
        threads: int | None = None,
        use_tensorrt: bool = False,
        log_dir: Path | None = None,
    ):
        self.device_name = device_name
        self.threads = threads
        self.use_tensorrt = use_tensorrt
        self.label = device_name
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.embedder: Any = None
        self.trt_model: Any = None
        self.artifact: Path | None = None
        self.notes: list[str] = []
        self._tmp: tempfile.TemporaryDirectory | None = None

    def prepare(self, artifact: Path, *, precision: str | None = None) -> None:
        from deploy.runtimes import load_embedder

        artifact = Path(artifact)
        if not artifact.is_file():
            raise InputError(f"{artifact}: artifact file not found")
        self.artifact = artifact
        self.embedder = self.trt_model = None
        if self.use_tensorrt and artifact.suffix.lower() == ".onnx":
            self._prepare_tensorrt(artifact)
            return
        self.embedder = load_embedder(artifact, num_threads=self.threads)

    def _prepare_tensorrt(self, artifact: Path) -> None:
        from deploy.tensorrt import build_engine, tensorrt_available
        from devices import harness

        ok, why = tensorrt_available()
        if not ok:
            raise DeviceError(f"{self.label}: TensorRT requested but unusable: {why}")
        folder = self.log_dir or Path(self._tempdir())
        engine = folder / f"{artifact.stem}.local.engine"
        build = build_engine(artifact, engine, fp16_onnx=False)
        self.notes.append(f"engine built locally: TensorRT {build.tensorrt_version}, {build.precision}")
        self.trt_model = harness.TensorRTModel(str(engine), threads=1)

    def _tempdir(self) -> str:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="facekd-local-")
        return self._tmp.name

    def run_latency(
        self, *, warmup: int, runs: int, threads: int | None = None, batch_size: int = 1
    ) -> LatencyResult:
        from devices.latency import measure_embedder_latency, stats_from_samples

        if self.trt_model is not None:
            from devices import harness

            data = harness.latency(self.trt_model, warmup, runs, batch_size)
            stats = stats_from_samples(data["samples_ms"], warmup=warmup, batch_size=data["batch_size"])
            tool = f"harness {self.trt_model.runtime}"
        elif self.embedder is not None:
            stats = measure_embedder_latency(self.embedder, warmup=warmup, runs=runs, batch_size=batch_size)
            tool = f"{self.embedder.format} ({type(self.embedder).__name__})"
        else:
            raise RuntimeError("prepare() first")
        return LatencyResult.from_stats(stats, measured_on=self.label, tool=tool)

    def run_accuracy(self, images: np.ndarray) -> AccuracyResult:
        if self.trt_model is not None:
            from devices import harness

            emb = harness.embed(self.trt_model, np.ascontiguousarray(images, dtype=np.float32))
            return AccuracyResult(emb, measured_on=self.label, runtime=self.trt_model.runtime)
        if self.embedder is None:
            raise RuntimeError("prepare() first")
        emb = self.embedder.embed(np.ascontiguousarray(images, dtype=np.float32))
        return AccuracyResult(emb, measured_on=self.label, runtime=type(self.embedder).__name__)

    def collect(self) -> dict[str, Any]:
        return {"measured_on": self.label, "notes": list(self.notes)}

    def close(self) -> None:
        self.embedder = self.trt_model = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
