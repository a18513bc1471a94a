"""Results rows measured on a device through a runner, and estimated rows where no device is connected.

A device row has the same fields as a host row of devices/measure.py (accuracy fields, ``latency_ms``
with p50/p90/p99/mean, ``latency_settings``, ``measured_on``), plus where each number comes from:

* ``measured_on``: the runner label (``jetson-orin-nano (ssh)``), where the latency was measured;
* ``accuracy_measured_on``: the same label when the device returned the embeddings, or ``host-cpu``
  when it cannot (a stock phone) - then ``accuracy_note`` says so;
* ``raw_logs``: the tool outputs kept in the run folder.

Accuracy reuses ``devices.accuracy.accuracy_fields`` unchanged: a first pass collects the exact batches
it will feed (same preprocessing, flips and batch size) and sends them to the device in chunks; the
second pass replays the device's embeddings batch by batch, each matched by a hash of its input, so
the metrics are computed by the same code as every host row.

An estimated row (:func:`estimate_row`) carries ``latency_ms: None`` and ``latency_estimate_ms`` with
its details labelled ``estimated``: an estimate never sits where a measurement would.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from devices.accuracy import HOST_LABEL, accuracy_fields
from devices.catalogue import Device
from devices.rows import ResultRow, artifact_stage
from devices.runners.base import AccuracyUnavailable, Runner
from distill.evaluation import EVAL_BATCH


@dataclass
class DeviceMeasureSettings:
    warmup: int = 10
    runs: int = 100
    threads: int | None = None
    flip: bool = True
    batch_size: int = 1
    chunk_images: int = 512  # images per transfer to the device (float32 NCHW: 150 KB each at 112x112)


def settings_from(obj: Any) -> DeviceMeasureSettings:
    """DeviceMeasureSettings from itself, a dict, or any object with those attributes (cfg.measure)."""
    if isinstance(obj, DeviceMeasureSettings):
        return obj
    get = obj.get if isinstance(obj, dict) else (lambda k, d=None: getattr(obj, k, d))
    defaults = DeviceMeasureSettings()
    return DeviceMeasureSettings(
        **{k: get(k, getattr(defaults, k)) for k in DeviceMeasureSettings.__dataclass_fields__}
    )


def _digest(x: np.ndarray) -> str:
    x = np.ascontiguousarray(x, dtype=np.float32)
    h = hashlib.blake2b(x.tobytes(), digest_size=16)
    h.update(str(x.shape).encode())
    return h.hexdigest()


class _DeviceBatches:
    """Pass 1: the embed function given to ``embed_pairs``; ships its batches to the device in chunks."""

    def __init__(self, runner: Runner, chunk_images: int):
        self.runner = runner
        self.chunk_images = max(1, int(chunk_images))
        self.pending: list[tuple[str, np.ndarray]] = []
        self.pending_images = 0
        self.embeddings: dict[str, np.ndarray] = {}
        self.runtime = ""

    def __call__(self, x: Any) -> np.ndarray:
        arr = np.ascontiguousarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)
        key = _digest(arr)
        if key not in self.embeddings and all(k != key for k, _ in self.pending):
            self.pending.append((key, arr))
            self.pending_images += arr.shape[0]
            if self.pending_images >= self.chunk_images:
                self.flush()
        return np.zeros((arr.shape[0], 1))

    def flush(self) -> None:
        if not self.pending:
            return
        batch = np.concatenate([a for _, a in self.pending])
        result = self.runner.run_accuracy(batch)
        self.runtime = result.runtime
        start = 0
        for key, arr in self.pending:
            self.embeddings[key] = result.embeddings[start : start + arr.shape[0]]
            start += arr.shape[0]
        self.pending, self.pending_images = [], 0


class _Replay:
    """Pass 2: an Embedder for ``accuracy_fields`` that returns the device's embeddings of each batch."""

    def __init__(self, embeddings: dict[str, np.ndarray]):
        self.embeddings = embeddings

    def embed(self, x: np.ndarray) -> np.ndarray:
        key = _digest(x)
        if key not in self.embeddings:
            raise RuntimeError(
                "device accuracy: accuracy_fields asked for a batch the device did not embed "
                f"(batch of {x.shape[0]}); did its batch size change from {EVAL_BATCH}?"
            )
        return self.embeddings[key]


def device_accuracy(runner: Runner, sets: list, flip: bool, chunk_images: int = 512) -> dict[str, Any]:
    """accuracy_fields computed from embeddings the device returned (see the module docstring)."""
    from distill.metrics.verification import embed_pairs

    batches = _DeviceBatches(runner, chunk_images)
    for vs in sets:
        embed_pairs(batches, vs.images, batch_size=EVAL_BATCH, flip=flip)
    batches.flush()
    fields = accuracy_fields(_Replay(batches.embeddings), sets, flip)
    fields["accuracy_runtime"] = batches.runtime
    return fields


def measure_on_device(
    runner: Runner, artifact: dict[str, Any], path: Path, sets: list, settings: Any
) -> ResultRow:
    """One results row for ``artifact`` (an artifacts.json entry) measured through ``runner``.

    The device's work folder is removed before returning, also on errors.
    """
    s = settings_from(settings)
    path = Path(path)
    row: dict[str, Any] = {
        "name": artifact.get("name", path.stem),
        "format": artifact.get("format"),
        "precision": artifact.get("precision"),
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "sha256": artifact.get("sha256"),
        "parity": artifact.get("parity"),
        "stage": artifact_stage(artifact),  # as devices.measure rows
        "role": "artifact",
        "target": getattr(runner, "device_name", runner.label),
    }
    notes: list[str] = []
    acc_note = ""
    try:
        runner.prepare(path, precision=artifact.get("precision"))
        latency = runner.run_latency(warmup=s.warmup, runs=s.runs, threads=s.threads, batch_size=s.batch_size)
        golden = _golden_on_device(runner, path, notes)
        try:
            if golden is not None and not golden.passed:
                acc = {"val_set": sets[0].name, "accuracy": None, "accuracy_std": None, "tar_at_far": {}}
                notes.insert(
                    0, f"{golden.summary()}: accuracy withheld, the device does not run what was tested"
                )
            else:
                acc = device_accuracy(runner, sets, s.flip, s.chunk_images)
            acc_on = runner.label
        except AccuracyUnavailable as exc:
            from deploy.runtimes import load_embedder

            acc = accuracy_fields(load_embedder(path, num_threads=s.threads), sets, s.flip)
            acc_on = HOST_LABEL
            acc_note = f"accuracy from {HOST_LABEL}, same file: {exc}"
            notes.append(acc_note)
        info = runner.collect()
    finally:
        runner.close()
    notes += info.get("notes", [])
    raw = [p for p in [latency.raw_log, *info.get("logs", [])] if p]
    row.update(acc)
    if golden is not None:
        row["golden"] = golden.to_dict()
    row.update(
        latency_ms=latency.latency_ms(),
        latency_settings={
            "runs": latency.runs,
            "warmup": latency.warmup,
            "threads": latency.threads,
            "batch_size": latency.batch_size,
            "tool": latency.tool,
        },
        measured_on=latency.measured_on,
        accuracy_measured_on=acc_on,
        peak_memory_mb=latency.peak_memory_mb,
        latency_details=latency.extra,
        raw_logs=list(dict.fromkeys(raw)),
        device=info,
    )
    if acc_on != latency.measured_on:
        row["accuracy_note"] = acc_note or f"accuracy measured on {acc_on}"
    if notes:
        row["notes"] = notes
    return ResultRow.from_dict(row, f"row of {row['name']} on {row['target']}")


def _golden_on_device(runner: Runner, path: Path, notes: list[str]) -> Any:
    """The artifact's golden crops run on the device (None when there is no golden file or no way to)."""
    from deploy.golden import compare_golden, golden_path, model_input, read_golden

    gpath = golden_path(path)
    if not gpath.is_file():
        notes.append(
            f"no golden file beside {path.name}: the device's output was not checked against the host's"
        )
        return None
    crops, recorded, meta = read_golden(gpath)
    try:
        got = runner.run_accuracy(model_input(crops)).embeddings
    except AccuracyUnavailable as exc:
        notes.append(f"golden vectors not checked on the device: {exc}")
        return None
    check = compare_golden(recorded, got, float(meta.get("min_cosine", 0.99)), runner.label)
    if not check.passed:
        from deploy.golden import likely_cause

        cause = likely_cause(path, crops, got, check.tolerance)
        check.cause = cause or "none of the usual feeding mistakes reproduces it: a different file or build?"
    return check


def estimate_row(
    host_row: ResultRow,
    device: Device,
    onnx_path: Path,
    *,
    threads: int | None = None,
    precision: str | None = None,
) -> ResultRow:
    """The row for ``device`` when none is connected: host accuracy, no latency, a labelled estimate.

    ``onnx_path`` is the graph to count (for a .tflite row, the ONNX of the same model); the precision
    is the row's (``fp32``/``fp16``/``int8``) unless given.
    """
    from devices.estimate import estimate_latency

    row_precision = precision or host_row.precision
    if row_precision not in device.estimate.peak or row_precision not in device.precisions:
        row_precision = None  # let the estimator read it from the file (and refuse if unsupported)
    est = estimate_latency(onnx_path, device, precision=row_precision, threads=threads)
    return replace(
        host_row,
        target=device.name,
        measured_on=HOST_LABEL,
        accuracy_measured_on=HOST_LABEL,
        latency_ms=None,
        latency_settings=None,
        latency_conditions=None,
        latency_estimate_ms=round(est.ms, 4),
        latency_estimate=est.summary(),
        latency_note=f"not measured: no {device.name} connected; latency_estimate_ms is a roofline "
        "estimate from the graph and the catalogue figures (estimated); accuracy is the same artifact "
        f"on {HOST_LABEL}",
        details=dict(host_row.details),
    )
