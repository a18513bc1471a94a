"""Measure artifacts where they run: accuracy on the verification sets and latency, one row each.

Every row says where its numbers come from (``measured_on``). A target with no device attached gets a
row whose accuracy is the host's run of the same file and whose latency is absent with a note, never a
host number passed off as a device number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from deploy.runtimes import EVAL_TWIN_SAMPLE, evaluation_twin, load_embedder, twin_difference
from devices.accuracy import HOST_LABEL, accuracy_fields, host_description
from devices.latency import interleaved_latency, latency_conditions, load_snapshot
from devices.rows import LatencySummary, ResultRow, artifact_stage
from distill.data.transforms import to_model_input
from distill.data.verification_bin import VerificationSet
from distill.errors import InputError

HOST_RUNTIMES = ("onnx", "tflite")  # formats this machine runs (onnxruntime, LiteRT interpreter)


LatencyQueue = list[tuple[ResultRow, Any]]  # (row, embedder): rows whose host latency is still to come


@dataclass(frozen=True)
class SourceEvaluation:
    """An earlier stage's evaluation of the model an artifact was made from, for the file to reuse when it
    computes the same embeddings (checked on a sample, as an evaluation twin is)."""

    fields: dict[str, Any]  # the verification fields of that model (flip as measure.flip, the same sets)
    plain: np.ndarray  # its unmirrored embeddings of the first set's images, in order
    what: str  # e.g. "the distill stage's evaluation of student.pt (sha256 checked)"


def host_accuracy(
    source: Path | Any,
    sets: list[VerificationSet],
    *,
    threads: int,
    flip: bool = True,
    name: str | None = None,
    saved: tuple[dict[str, Any], str] | None = None,
    made_from: SourceEvaluation | None = None,
) -> tuple[dict[str, Any], Any]:
    """Accuracy fields of one artifact file, module or ready Embedder on this machine, and its Embedder.

    ``saved``: (fields, who computed them) when an earlier stage already evaluated this very file the
    same way; they are used as they are, not computed twice. ``made_from``: the evaluation of the model
    the file was exported from; used when the file reproduces that model's embeddings on the first
    ``EVAL_TWIN_SAMPLE`` images to ``TWIN_RTOL`` (the standard an evaluation twin meets), else the file is
    evaluated. The latency comes later, from :func:`add_host_latency`, interleaved with every other model.
    """
    is_embedder = hasattr(source, "run_once") and hasattr(source, "latency_input")
    embedder = source if is_embedder else load_embedder(source, num_threads=threads, name=name)
    sample = to_model_input(torch.from_numpy(np.ascontiguousarray(sets[0].images[:EVAL_TWIN_SAMPLE])))
    reused = _reuse(embedder, sample.numpy(), made_from) if saved is None else None
    if saved is not None:
        row, how = dict(saved[0]), saved[1]
    elif reused is not None:
        row, how = reused
    else:
        evaluator, how = evaluation_twin(embedder, sample.numpy())  # batch-1 files: a batched copy
        row = accuracy_fields(evaluator, sets, flip)
    row["accuracy_via"] = how
    row["measured_on"] = HOST_LABEL
    row["host"] = host_description()  # kept in the row's details
    return row, embedder


def _reuse(
    embedder: Any, sample: np.ndarray, made_from: SourceEvaluation | None
) -> tuple[dict[str, Any], str] | None:
    """(fields, how) of ``made_from`` when the file reproduces its embeddings on ``sample``, else None."""
    if made_from is None or len(made_from.plain) < len(sample):
        return None
    diff, same = twin_difference(made_from.plain[: len(sample)], embedder.embed(sample))
    if not same:
        return None
    fields = {k: v for k, v in made_from.fields.items() if k != "accuracy_via"}
    how = f"{made_from.what}, which this file reproduces on {len(sample)} images (max |diff| {diff:.1e})"
    return fields, how


def add_host_latency(
    queue: LatencyQueue, *, warmup: int, runs: int, rounds: int, budget_s: float | None = None
) -> None:
    """Time every queued model in the same interleaved rounds and write each row's latency fields.

    Models compared with each other share the machine's moments: a burst of load lands in every
    model's samples, not in one row. The rows' conditions carry the spread, each round's median and
    the load average around the whole pass.
    """
    if not queue:
        return
    before = load_snapshot()
    timed = interleaved_latency(
        [e for _, e in queue], warmup=warmup, runs=runs, rounds=rounds, batch_size=1, budget_s=budget_s
    )
    after = load_snapshot()
    for (row, _), t in zip(queue, timed, strict=True):
        row.latency_conditions = latency_conditions(t.stats, before, after, round_p50=t.round_p50)
        row.latency_ms = LatencySummary.from_stats(t.stats)
        row.latency_settings = {
            "runs": t.stats.runs,
            "warmup": t.stats.warmup,
            "threads": t.stats.threads,
            "batch_size": t.stats.batch_size,
            "rounds": t.rounds,
            "rounds_asked": rounds,
            "budget_s": budget_s,
            "interleaved_with": len(queue) - 1,
        }


def accuracy_line(row: ResultRow) -> str:
    """The console line of a row's accuracy on each verification set."""
    sets = row.sets
    return ", ".join(f"{name} {100 * s['accuracy']:.2f} %" for name, s in sets.items()) or "no accuracy"


def device_row_without_device(host_row: ResultRow, target: str) -> ResultRow:
    """The row for a target with no device connected: host accuracy labelled so, no latency."""
    return replace(
        host_row,
        target=target,
        measured_on=HOST_LABEL,
        latency_ms=None,
        latency_settings=None,
        latency_conditions=None,
        latency_note=f"not measured on device: no {target} device connected; "
        f"accuracy is the same artifact run on {HOST_LABEL}",
        details=dict(host_row.details),
    )


def measure_rows(
    artifacts: list[dict[str, Any]],
    export_dir: Path,
    sets: list[VerificationSet],
    *,
    target: str,
    threads: int,
    warmup: int,
    runs: int,
    latency_queue: LatencyQueue,
    flip: bool = True,
    progress: bool = True,
    device: Any = None,
    connect: Callable[[], Any] | None = None,
    estimate_graphs: dict[str, Path] | None = None,
    log: Callable[[str], None] = lambda _: None,
    delegate: str = "xnnpack",
    made_from: dict[str, SourceEvaluation] | None = None,
) -> list[ResultRow]:
    """One row per artifact x target: the host always; the chosen device target as well.

    Host rows go into ``latency_queue`` without latency: the caller times the queue in one interleaved
    pass (:func:`add_host_latency`). A device row is timed on the device, artifact by artifact.

    The device row is measured through ``connect()`` (a fresh runner per artifact) when a device is
    connected; otherwise it carries the host's accuracy and, where the catalogue ``device`` has the
    figures, a latency estimate labelled as such. ``estimate_graphs`` maps an artifact's source stage to
    an ONNX of the same model, for estimating formats that are not ONNX themselves.

    Every .onnx/.tflite is first checked against its contract for ``target`` (``delegate`` on Android):
    the result goes in each of its rows (``contract``); a violation is the rows' first note, as a golden
    mismatch is (the numbers stay: they are those of the file, which is not what it says it is).

    ``made_from`` maps an artifact's source stage ("distill", "qat") to that model's saved evaluation: a
    file that reproduces it on a sample takes its accuracy (:func:`host_accuracy`) instead of evaluating.
    """
    rows: list[ResultRow] = []
    for art in tqdm(artifacts, desc="measure", unit="artifact", disable=not progress):
        path = export_dir / art["file"]
        base = {
            "name": art["name"],
            "format": art["format"],
            "precision": art["precision"],
            "path": str(path),
            "size_bytes": path.stat().st_size,
            "sha256": art["sha256"],
            "parity": art.get("parity"),
            "stage": artifact_stage(art),
        }
        contract = _contract(path, art, target, delegate, log)
        if contract is not None:
            base["contract"] = contract.to_dict()
            if not contract.passed:
                base["notes"] = [contract.summary()]
        if art["format"] not in HOST_RUNTIMES:
            note = f"{art['format']} artifacts are measured by the device runner"
            rows.append(
                ResultRow.from_dict({**base, "role": "artifact", "target": target, "latency_note": note})
            )
            continue
        source = (made_from or {}).get(art.get("source", "distill"))
        fields, embedder = host_accuracy(path, sets, threads=threads, flip=flip, made_from=source)
        host = ResultRow.from_dict({**base, "role": "artifact", "target": "host", **fields})
        rows.append(host)
        latency_queue.append((host, embedder))
        log(f"[measure] {art['name']} on {HOST_LABEL}: {accuracy_line(host)}")
        if connect is not None and device is not None and art["format"] not in device.formats:
            continue  # e.g. a .tflite on host-gpu: the device does not run it, the host row stands alone
        if target == "host" and connect is None:
            continue
        if connect is not None:
            from devices.device_measure import measure_on_device

            settings = {"warmup": warmup, "runs": runs, "threads": threads, "flip": flip}
            on_device = measure_on_device(connect(), art, path, sets, settings)
            on_device.target = device.name if target == "host" else target
            if contract is not None:
                on_device.details["contract"] = contract.to_dict()
                on_device.notes[:0] = [] if contract.passed else [contract.summary()]
            rows.append(on_device)
            log(f"[measure] {art['name']} on {on_device.measured_on}: {accuracy_line(on_device)}")
            continue
        rows.append(_estimated_row(host, target, device, path, art, threads, estimate_graphs or {}))
    return rows


def _contract(path: Path, art: dict[str, Any], target: str, delegate: str, log: Callable[[str], None]) -> Any:
    """The artifact's contract report for the target (None for formats it does not read), logged."""
    if art["format"] not in HOST_RUNTIMES:
        return None
    from deploy.contract import check_model

    report = check_model(path, target, delegate)
    log(f"[measure] {art['name']}: {report.summary()}")
    return report


def _estimated_row(
    host: ResultRow,
    target: str,
    device: Any,
    path: Path,
    art: dict[str, Any],
    threads: int,
    graphs: dict[str, Path],
) -> ResultRow:
    """No device connected: host accuracy, no latency, and a roofline estimate where one can be made."""
    row = device_row_without_device(host, target)
    # The fp32 graph of the same model, counted at the row's precision: an INT8 Q/DQ file keeps its
    # BatchNorms and Q/DQ pairs apart, which TensorRT fuses, so counting its nodes would overstate it.
    graph = graphs.get(art.get("source", "distill")) or (path if art["format"] == "onnx" else None)
    if device is None or graph is None:
        return row
    from devices.device_measure import estimate_row

    try:
        est = estimate_row(host, device, graph, threads=threads, precision=art["precision"])
    except InputError as exc:  # the catalogue lacks a figure for this precision: say so, estimate nothing
        row.details["latency_estimate_note"] = f"no estimate: {exc}"
        return row
    est.target = target
    est.details["device"] = {"name": device.name, "catalogue": str(device.path)}
    return est
