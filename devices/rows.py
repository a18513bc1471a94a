"""The results row: one type written by every producer of ``results.json`` and read by every consumer.

Producers (the measure stage's reference, fake-quant, host, device and estimated rows) build a
:class:`ResultRow`; ``results.json`` holds ``row.to_dict()`` under ``rows`` with ``schema`` =
:data:`RESULTS_SCHEMA`. Consumers (gate, baseline, compare, report.md, report.html, plots) read
``rows_from(results)``: a results file is input from outside (a CI artifact, a colleague's run), so the
types are checked there once, with one-line errors, and nowhere else.

A row's latency is a :class:`LatencySummary` (milliseconds): the one latency shape of the project. A
device tool may not report every percentile (``benchmark_model`` has no p90/p99): those are None.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from distill.errors import InputError

RESULTS_SCHEMA = "facekd.results/2"  # /1: rows were free-form dicts (still read)
PERCENTILES = ("p50", "p90", "p99")


def finite(v: Any) -> bool:
    """A real number that is not NaN/inf (bool excluded): what a results figure must be to be shown."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def pct(x: Any, unit: str = "") -> str:
    """A 0..1 fraction as a percentage with two decimals; ``-`` when it is not a finite number."""
    return "-" if not finite(x) else f"{100 * x:.2f}{unit}"


@dataclass(frozen=True)
class LatencySummary:
    """Milliseconds per call; the statistics a measurement had (a device tool may report fewer)."""

    p50: float | None = None
    p90: float | None = None
    p95: float | None = None  # some device tools report it (trtexec)
    p99: float | None = None
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None

    @classmethod
    def from_stats(cls, stats: Any, digits: int = 4) -> LatencySummary:
        """From a ``devices.latency.LatencyStats`` (or anything with those attributes)."""
        return cls(**{f.name: _round(getattr(stats, f.name, None), digits) for f in fields(cls)})

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "latency_ms") -> LatencySummary:
        known = {f.name for f in fields(cls)}
        for k, v in data.items():
            if k in known and v is not None and not _number(v):
                raise InputError(f"{where}.{k} must be a number or null, got {v!r}")
        return cls(**{k: (None if v is None else float(v)) for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}


# field name -> what from_dict accepts (beyond None)
_STR, _NUM, _DICT, _LIST = "a string", "a number", "an object", "a list"
_KINDS = {
    "name": _STR,
    "target": _STR,
    "format": _STR,
    "precision": _STR,
    "stage": _STR,
    "role": _STR,
    "path": _STR,
    "sha256": _STR,
    "measured_on": _STR,
    "accuracy_measured_on": _STR,
    "val_set": _STR,
    "latency_note": _STR,
    "size_bytes": _NUM,
    "accuracy": _NUM,
    "accuracy_std": _NUM,
    "latency_estimate_ms": _NUM,
    "parity": _DICT,
    "tar_at_far": _DICT,
    "sets": _DICT,
    "latency_settings": _DICT,
    "latency_conditions": _DICT,
    "latency_estimate": _DICT,
    "notes": _LIST,
}


@dataclass
class ResultRow:
    """One model x format x precision x target, with where each number was measured.

    ``details`` keeps what only some producers have (the device's facts, raw log paths, peak memory,
    the host's description, notes on where the accuracy came from): read by the reports as is.
    """

    name: str
    target: str
    format: str | None = None
    precision: str | None = None
    stage: str | None = None  # the stage whose model it is: teacher, distill, ptq, qat
    role: str | None = None  # teacher, student, student-ptq, student-qat, artifact
    path: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    parity: dict[str, Any] | None = None
    measured_on: str | None = None  # where the latency was measured (and the accuracy, unless below)
    accuracy_measured_on: str | None = None
    val_set: str | None = None  # the headline set; ``sets`` has them all
    accuracy: float | None = None
    accuracy_std: float | None = None
    tar_at_far: dict[str, float | None] = field(default_factory=dict)
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    latency_ms: LatencySummary | None = None
    latency_settings: dict[str, Any] | None = None
    latency_conditions: dict[str, Any] | None = None
    latency_note: str | None = None
    latency_estimate_ms: float | None = None  # a labelled estimate, never where a measurement goes
    latency_estimate: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def label(self, *, place: bool = False) -> str:
        """``name @ target``, with where it was measured when ``place``."""
        base = f"{self.name} @ {self.target}"
        return f"{base} ({self.measured_on or 'not measured'})" if place else base

    @property
    def model(self) -> str:
        """The model a row belongs to (teacher, student): the name up to its first dash."""
        return self.name.split("-", 1)[0] or (self.role or "")

    @property
    def trustworthy_latency(self) -> bool:
        return bool((self.latency_conditions or {}).get("trustworthy", True))

    def set_metrics(self, name: str | None = None) -> dict[str, Any]:
        """The per-set metrics of ``name`` (the headline set by default), or an empty dict."""
        return self.sets.get(name or self.val_set or "", {}) if isinstance(self.sets, dict) else {}

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("details", "latency_ms")}
        out["latency_ms"] = None if self.latency_ms is None else self.latency_ms.to_dict()
        if not self.notes:
            del out["notes"]
        out.update(self.details)
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "row") -> ResultRow:
        """Read one row of a results file, checking every known field's type; other keys go to details."""
        if not isinstance(data, dict):
            raise InputError(f"{where} must be an object")
        for key in ("name", "target"):
            if not isinstance(data.get(key), str) or not data.get(key):
                raise InputError(f"{where} has no '{key}' string")
        for key, kind in _KINDS.items():
            v = data.get(key)
            if v is None:
                continue
            ok = {
                _STR: isinstance(v, str),
                _NUM: _number(v),
                _DICT: isinstance(v, dict),
                _LIST: isinstance(v, list),
            }[kind]
            if not ok:
                raise InputError(f"{where}.{key} must be {kind} or null, got {type(v).__name__}")
        lat = data.get("latency_ms")
        if lat is not None and not isinstance(lat, dict):
            raise InputError(f"{where}.latency_ms must be an object or null, got {type(lat).__name__}")
        known = {f.name for f in fields(cls)} - {"details"}
        values = {k: data[k] for k in known & set(data) if data[k] is not None}
        values["latency_ms"] = None if lat is None else LatencySummary.from_dict(lat, f"{where}.latency_ms")
        details = {k: v for k, v in data.items() if k not in known}
        return cls(**values, details=details)


def artifact_stage(artifact: dict[str, Any]) -> str:
    """The stage whose model an ``artifacts.json`` entry holds, as its results row says: the stage it came
    from, except that stage two's files name the model it shipped (``ptq`` when ``ptq.pt`` won on the dev
    set, ``qat`` otherwise: its ``source_file``)."""
    source = artifact.get("source") or "distill"
    if source == "qat" and artifact.get("source_file") in ("ptq.pt", "qat.pt"):
        return artifact["source_file"].removesuffix(".pt")
    return source


def rows_from(results: Any, source: str = "results") -> list[ResultRow]:
    """The rows of a ``results.json`` object, type-checked (InputError with the row's index)."""
    if not isinstance(results, dict):
        raise InputError(f"{source}: must be a JSON object")
    schema = results.get("schema", RESULTS_SCHEMA)
    if not (isinstance(schema, str) and schema.startswith("facekd.results/")):
        raise InputError(f"{source}: not a facekd results file (schema {schema!r})")
    rows = results.get("rows")
    if not isinstance(rows, list):
        raise InputError(f"{source}: 'rows' must be a list of result rows")
    return [ResultRow.from_dict(r, f"{source}: rows[{i}]") for i, r in enumerate(rows)]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _round(v: Any, digits: int) -> float | None:
    return None if v is None else round(float(v), digits)
