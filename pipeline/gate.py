"""The CI gate: a run's results.json against a committed baseline; any regression fails the build.

A shipped model that got worse must stop a pull request with a message that says *what* got worse, *by
how much*, on *which artifact and target*. A metric that is missing, not computable, or measured somewhere
else than the baseline is a failure that says which — a gate that silently passes what it cannot check
would let exactly the regressions through that nobody looks at.

Baseline file (JSON; written by ``python -m pipeline baseline`` and reviewed in the pull request)::

    {
      "tool": "facekd", "kind": "baseline", "version": 1,
      "target": "host",
      "rows": [
        {
          "name": "student-onnx-fp32", "target": "host", "measured_on": "host-cpu",
          "accuracy":   {"reference": 0.8492, "reference_std": 0.0347,
                         "floor": 0.80, "max_drop": 0.005, "use_std": 0.5},
          "tar_at_far": {"0.01": {"reference": 0.44, "floor": 0.30, "max_drop": 0.02}},
          "latency":    {"measured_on": "host-cpu", "reference_ms": {"p50": 9.03},
                         "max_increase_pct": 25},
          "size":       {"reference": 4001427, "max_bytes": 4201499},
          "notes": ["free text, ignored by the gate"]
        }
      ]
    }

A row is identified by ``name`` + ``target`` + ``measured_on`` (the same artifact is one row per target).
Every rule section is optional; each check below is one rule (one JUnit test case):

- ``accuracy.floor``: accuracy >= floor.
- ``accuracy.max_drop`` / ``accuracy.use_std``: reference - accuracy <= max(max_drop, use_std x
  reference_std). ``reference_std`` is the baseline's 10-fold std, so the allowed noise is the one reviewed
  in the pull request, not whatever a noisy run reports.
- ``tar_at_far.<far>.floor`` / ``.max_drop``: the same for TAR at that FAR (no std rule: folds do not
  report one).
- ``latency``: for each percentile in ``reference_ms``: latency <= reference x (1 + max_increase_pct/100),
  only comparable when the run's row was measured on ``latency.measured_on``; an estimate never counts.
- ``size.max_bytes``: size_bytes <= max_bytes (a file property: valid wherever it was measured).
- ``accuracy.pairs`` + ``accuracy.binomial_k``: the drop allowance is at least ``binomial_k`` binomial
  standard deviations of an accuracy measured on that many pairs, ``sqrt(ref (1 - ref) / pairs)``.
- top-level ``val_sets`` (``{name: {pairs, sha256}}``): the verification sets the figures came from; a
  results file measured on other sets is not comparable and the gate stops with exit 2.
- ``accuracy.above_pixel_floor: true``: accuracy > the accuracy of raw pixels compared by cosine on the
  same verification set (``results.floors``): a model that learned nothing cannot pass for one that works.
  ``baseline`` sets it for every row that was above that floor when the baseline was written.
- ``contract`` (no baseline key): a gated row whose artifact measure checked against its contract
  (``python -m pipeline check``: batch axis, precision, input, ops for the target) fails on any violation.

Accuracy and TAR rules also require the run's row to have been measured on the row's ``measured_on``.
A baseline row absent from the results fails every one of its rules (a row without rules gets a
single "present" rule, so it cannot vanish silently). Result rows the baseline does not
know are listed as "not gated" (a new artifact is not a regression; add it by refreshing the baseline).
A malformed baseline or results file raises :class:`InputError` (CLI exit code 2).
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devices.rows import ResultRow, finite, pct, rows_from
from distill.errors import InputError
from pipeline.report import text_table

BASELINE_VERSION = 1
_ROW_KEYS = {"name", "target", "measured_on", "accuracy", "tar_at_far", "latency", "size", "notes"}
_SECTION_KEYS = {
    "accuracy": {
        "reference",
        "reference_std",
        "floor",
        "max_drop",
        "use_std",
        "above_pixel_floor",
        "pairs",
        "binomial_k",
    },
    "tar": {"reference", "floor", "max_drop"},
    "latency": {"measured_on", "reference_ms", "max_increase_pct"},
    "size": {"reference", "max_bytes"},
}
PERCENTILES = ("p50", "p90", "p99", "mean")


@dataclass
class RuleResult:
    """One checked rule: a JUnit test case and a line of the summary table."""

    name: str  # unique test-case name: "<row> <metric> <check>"
    row: str  # "student-onnx-fp32 @ host (host-cpu)"
    metric: str  # "accuracy", "TAR@FAR=0.01", "latency p50", "size"
    rule: str  # human rule text: "drop <= 0.50 pts"
    expected: str  # what the rule allows, formatted: ">= 84.42 %"
    actual: str  # what the run has, formatted, or "missing"
    passed: bool
    message: str  # one line: what got worse and by how much, or why it could not be checked
    kind: str = (
        "ok"  # ok | regression | missing | not_computable | measured_elsewhere | row_missing | contract
    )


@dataclass
class GateReport:
    target: str
    rules: list[RuleResult] = field(default_factory=list)
    not_gated: list[str] = field(default_factory=list)  # result rows the baseline does not know
    notes: list[str] = field(default_factory=list)  # warnings that are not rule failures

    @property
    def failures(self) -> list[RuleResult]:
        return [r for r in self.rules if not r.passed]

    @property
    def passed(self) -> bool:
        return not self.failures


def exit_code(report: GateReport) -> int:
    """0 when every rule holds, 1 on any failure (bad input is 2, raised earlier as InputError)."""
    return 0 if report.passed else 1


# ----------------------------------------------------------------------------------------------- input
def load_json_file(path: str | Path, what: str) -> dict[str, Any]:
    """Read a JSON object; a missing, unreadable or non-object file is an InputError naming it."""
    p = Path(path)
    if p.is_dir():
        for cand in (p / f"{what}.json", p / "measure" / f"{what}.json"):
            if cand.is_file():
                p = cand
                break
        else:
            raise InputError(f"{path}: folder has no {what}.json (nor measure/{what}.json)")
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"{p}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read {what} file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise InputError(f"{p}: {what} file must hold a JSON object, got {type(data).__name__}")
    return data


def check_results(results: Any, source: str = "results") -> None:
    """Shape check of a results.json object (values are judged by the rules, not here)."""
    rows_from(results, source)  # every row's fields have their types
    if not isinstance(results.get("target"), str):
        raise InputError(f"{source}: 'target' must be a string")


def _num(value: Any, where: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where} must be a finite number, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise InputError(f"{where} must be in [{lo}, {hi if hi is not None else 'inf'}], got {value!r}")
    return float(value)


def _section(row: dict[str, Any], key: str, kind: str, where: str) -> dict[str, Any] | None:
    sec = row.get(key)
    if sec is None:
        return None
    if not isinstance(sec, dict):
        raise InputError(f"{where}.{key} must be an object")
    unknown = set(sec) - _SECTION_KEYS[kind]
    if unknown:
        raise InputError(
            f"{where}.{key}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_SECTION_KEYS[kind])}"
        )
    return sec


def check_baseline(baseline: Any, source: str = "baseline") -> None:
    """Validate every rule of a baseline; typos and out-of-range tolerances are InputErrors, not passes."""
    if not isinstance(baseline, dict):
        raise InputError(f"{source}: must be a JSON object")
    if baseline.get("version", BASELINE_VERSION) != BASELINE_VERSION:
        raise InputError(f"{source}: baseline version {baseline.get('version')!r} is not supported")
    if not isinstance(baseline.get("target"), str):
        raise InputError(f"{source}: 'target' must be a string")
    rows = baseline.get("rows")
    if not isinstance(rows, list) or not rows:
        raise InputError(f"{source}: 'rows' must be a non-empty list")
    seen: set[tuple[str, str, str | None]] = set()
    n_rules = 0
    for i, row in enumerate(rows):
        where = f"{source}: rows[{i}]"
        if not isinstance(row, dict):
            raise InputError(f"{where} must be an object")
        for key in ("name", "target"):
            if not isinstance(row.get(key), str) or not row[key]:
                raise InputError(f"{where} has no '{key}' string")
        if row.get("measured_on") is not None and not isinstance(row["measured_on"], str):
            raise InputError(f"{where}.measured_on must be a string or null")
        unknown = set(row) - _ROW_KEYS
        if unknown:
            raise InputError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_ROW_KEYS)}")
        key3 = (row["name"], row["target"], row.get("measured_on"))
        if key3 in seen:
            raise InputError(f"{where}: duplicate row {_row_label(row)}")
        seen.add(key3)
        n_rules += _check_accuracy(_section(row, "accuracy", "accuracy", where), f"{where}.accuracy")
        tar = row.get("tar_at_far")
        if tar is not None:
            if not isinstance(tar, dict):
                raise InputError(f"{where}.tar_at_far must be an object keyed by FAR")
            for far in tar:
                _num(_far_value(far, f"{where}.tar_at_far"), f"{where}.tar_at_far key", 0.0, 1.0)
                sec = _section(tar, far, "tar", f"{where}.tar_at_far")
                n_rules += _check_drop_floor(sec, f"{where}.tar_at_far.{far}")
        n_rules += _check_latency(_section(row, "latency", "latency", where), f"{where}.latency")
        size = _section(row, "size", "size", where)
        if size is not None:
            if "max_bytes" not in size:
                raise InputError(f"{where}.size needs 'max_bytes'")
            _num(size["max_bytes"], f"{where}.size.max_bytes", 0)
            if "reference" in size:
                _num(size["reference"], f"{where}.size.reference", 0)
            n_rules += 1
    if n_rules == 0:
        raise InputError(f"{source}: no rules to check (every row is empty)")


def _far_value(far: str, where: str) -> float:
    try:
        return float(far)
    except ValueError:
        raise InputError(f"{where}: key {far!r} is not a FAR number") from None


def _check_drop_floor(sec: dict[str, Any] | None, where: str) -> int:
    if sec is None:
        return 0
    n = 0
    if sec.get("floor") is not None:
        _num(sec["floor"], f"{where}.floor", 0.0, 1.0)
        n += 1
    if sec.get("reference") is not None:
        _num(sec["reference"], f"{where}.reference", 0.0, 1.0)
    if sec.get("max_drop") is not None:
        _num(sec["max_drop"], f"{where}.max_drop", 0.0, 1.0)
        if sec.get("reference") is None:
            raise InputError(f"{where}: 'max_drop' needs a 'reference' value")
        n += 1
    if sec.get("floor") is None and sec.get("max_drop") is None and sec.get("use_std") is None:
        raise InputError(f"{where}: needs 'floor' and/or 'max_drop'")
    return n


def _check_accuracy(sec: dict[str, Any] | None, where: str) -> int:
    if sec is None:
        return 0
    n = _check_drop_floor(sec, where)
    if sec.get("binomial_k") is not None:
        _num(sec["binomial_k"], f"{where}.binomial_k", 0.0)
        if sec.get("reference") is None or not isinstance(sec.get("pairs"), int) or sec["pairs"] < 1:
            raise InputError(f"{where}: 'binomial_k' needs 'reference' and 'pairs' (a positive integer)")
    if sec.get("use_std") is not None:
        _num(sec["use_std"], f"{where}.use_std", 0.0)
        if sec.get("reference") is None or sec.get("reference_std") is None:
            raise InputError(f"{where}: 'use_std' needs 'reference' and 'reference_std'")
        _num(sec["reference_std"], f"{where}.reference_std", 0.0, 1.0)
        if sec.get("max_drop") is None:
            n += 1  # the drop rule exists through use_std alone
    return n


def _check_latency(sec: dict[str, Any] | None, where: str) -> int:
    if sec is None:
        return 0
    if not isinstance(sec.get("measured_on"), str):
        raise InputError(f"{where}.measured_on must name where the reference was measured")
    _num(sec.get("max_increase_pct"), f"{where}.max_increase_pct", 0.0)
    ref = sec.get("reference_ms")
    if not isinstance(ref, dict) or not ref:
        raise InputError(f"{where}.reference_ms must map percentiles (p50, p90, p99) to milliseconds")
    for p, v in ref.items():
        if p not in PERCENTILES:
            raise InputError(f"{where}.reference_ms: unknown percentile {p!r}; allowed: {list(PERCENTILES)}")
        _num(v, f"{where}.reference_ms.{p}", 0.0)
    return len(ref)


# ------------------------------------------------------------------------------------------------ gate
def _row_label(base: dict[str, Any]) -> str:
    """A baseline row's label, as its results row's ``label(place=True)``."""
    return ResultRow(name=base["name"], target=base["target"], measured_on=base.get("measured_on")).label(
        place=True
    )


def _pct(x: float) -> str:
    return pct(x, " %")


def _value(v: Any, key: str) -> tuple[float | None, str]:
    """(value, why-missing) for a numeric metric of a results row (None: missing or null)."""
    if v is None:
        return None, f"'{key}' missing or not computed (null) in the results row"
    if not finite(v):
        return None, f"'{key}' is not a finite number ({v!r})"
    return float(v), ""


def _tar_reason(row: ResultRow, far: str) -> str:
    """The measure stage's reason why a TAR was not computable, when it recorded one."""
    sets, val = row.sets, row.val_set
    candidates = [sets.get(val)] if val in sets else list(sets.values())
    for s in candidates:
        for text in (s or {}).get("tar_not_computable") or []:
            if isinstance(text, str) and text.startswith(f"TAR@FAR={far}"):
                return text.split(":", 1)[1].strip()
    return ""


class _RowGate:
    """Builds the RuleResults of one baseline row against its matching results row (or None)."""

    def __init__(
        self,
        base: dict[str, Any],
        row: ResultRow | None,
        out: list[RuleResult],
        floors: dict[str, Any] | None = None,
    ):
        self.base, self.row, self.out = base, row, out
        self.floors = floors or {}
        self.label = _row_label(base)

    def add(
        self, metric: str, check: str, rule: str, expected: str, actual: str, ok: bool, msg: str, kind: str
    ) -> None:
        name = f"{self.label} {metric} {check}"
        self.out.append(RuleResult(name, self.label, metric, rule, expected, actual, ok, msg, kind))

    def unavailable(self, metric: str, same_place: bool = True) -> tuple[str, str] | None:
        """(kind, message) when the row cannot be checked at all for this metric, else None."""
        if self.row is None:
            return "row_missing", f"{self.label}: row missing from the results (baseline expects it)"
        got, want = self.row.measured_on, self.base.get("measured_on")
        if same_place and got != want:
            return "measured_elsewhere", (
                f"{self.label}: {metric} measured on {got!r}, baseline on {want!r}; not comparable"
            )
        return None

    def fraction_rules(
        self, metric: str, sec: dict[str, Any], actual: float | None, why: str, missing_kind: str
    ) -> None:
        """Floor and drop rules of a 0..1 metric (accuracy, TAR)."""
        checks: list[tuple[str, str, float]] = []  # (check, rule text, lowest allowed value)
        if sec.get("floor") is not None:
            floor = float(sec["floor"])
            checks.append(("floor", f">= {_pct(floor)}", floor))
        if sec.get("max_drop") is not None or sec.get("use_std") is not None:
            ref = float(sec["reference"])
            max_drop = float(sec.get("max_drop") or 0.0)
            k = float(sec.get("use_std") or 0.0)
            std = float(sec.get("reference_std") or 0.0)
            kb, pairs = float(sec.get("binomial_k") or 0.0), int(sec.get("pairs") or 0)
            sigma = math.sqrt(ref * (1 - ref) / pairs) if kb and pairs else 0.0
            allowed = max(max_drop, k * std, kb * sigma)
            parts = [f"{100 * max_drop:.2f}"]
            parts += [f"{k:g} x fold std {100 * std:.2f}"] if k else []
            parts += [f"{kb:g} x binomial sd {100 * sigma:.2f} on {pairs} pairs"] if kb and pairs else []
            detail = f"max of {', '.join(parts)}" if len(parts) > 1 else ""
            rule = f"drop <= {100 * allowed:.2f} pts from {_pct(ref)}" + (f" ({detail})" if detail else "")
            checks.append(("drop", rule, ref - allowed))
        blocked = self.unavailable(metric)
        for check, rule, limit in checks:
            expected = f">= {_pct(limit)}"
            if blocked:
                self.add(metric, check, rule, expected, "-", False, blocked[1], blocked[0])
            elif actual is None:
                self.add(
                    metric, check, rule, expected, "missing", False, f"{self.label}: {why}", missing_kind
                )
            elif actual + 1e-12 >= limit:
                self.add(metric, check, rule, expected, _pct(actual), True, "ok", "ok")
            else:
                if check == "floor":
                    msg = f"{self.label}: {metric} {_pct(actual)} is below the floor {_pct(limit)}"
                else:
                    ref = float(sec["reference"])
                    msg = (
                        f"{self.label}: {metric} dropped {100 * (ref - actual):.2f} pts "
                        f"({_pct(ref)} -> {_pct(actual)}), allowed {100 * (ref - limit):.2f} pts"
                    )
                self.add(metric, check, rule, expected, _pct(actual), False, msg, "regression")

    def accuracy(self) -> None:
        sec = self.base.get("accuracy")
        if sec is None:
            return
        actual, why = _value(self.row.accuracy if self.row else None, "accuracy")
        self.fraction_rules("accuracy", sec, actual, why, "missing")
        if sec.get("above_pixel_floor"):
            self.pixel_floor(actual, why)

    def pixel_floor(self, actual: float | None, why: str) -> None:
        """accuracy > raw pixels compared by cosine on the row's verification set."""
        val = self.row.val_set if self.row else None
        floor = ((self.floors.get(val) or {}).get("pixels") or {}).get("accuracy") if val else None
        rule = "above raw pixels compared by cosine"
        blocked = self.unavailable("accuracy")
        if blocked:
            self.add("accuracy", "pixel_floor", rule, "-", "-", False, blocked[1], blocked[0])
        elif actual is None:
            self.add(
                "accuracy", "pixel_floor", rule, "-", "missing", False, f"{self.label}: {why}", "missing"
            )
        elif not finite(floor):
            msg = f"{self.label}: the results have no pixel floor for '{val}'"
            self.add("accuracy", "pixel_floor", rule, "-", _pct(actual), False, msg, "missing")
        elif actual > float(floor):
            self.add("accuracy", "pixel_floor", rule, f"> {_pct(floor)}", _pct(actual), True, "ok", "ok")
        else:
            msg = (
                f"{self.label}: accuracy {_pct(actual)} is not above raw pixels compared by cosine "
                f"({_pct(floor)} on {val}): the model does no better than no model"
            )
            self.add(
                "accuracy", "pixel_floor", rule, f"> {_pct(floor)}", _pct(actual), False, msg, "regression"
            )

    def tar(self) -> None:
        for far, sec in (self.base.get("tar_at_far") or {}).items():
            metric = f"TAR@FAR={far}"
            tars = self.row.tar_at_far if self.row else {}
            actual: float | None = None
            kind = "missing"
            if far not in tars:
                why = f"{metric} missing from the results row"
            elif tars[far] is None:
                reason = _tar_reason(self.row, far) if self.row else ""
                why = f"{metric} not computable" + (f": {reason}" if reason else " (null)")
                kind = "not_computable"
            else:
                actual, why = _value(tars[far], far)
            self.fraction_rules(metric, sec, actual, why, kind)

    def latency(self) -> None:
        sec = self.base.get("latency")
        if sec is None:
            return
        pct = float(sec["max_increase_pct"])
        for p, ref in sec["reference_ms"].items():
            metric = f"latency {p}"
            limit = float(ref) * (1 + pct / 100)
            rule = f"<= +{pct:g} % over {ref:.3f} ms on {sec['measured_on']}"
            expected = f"<= {limit:.3f} ms"
            blocked = self.unavailable(metric, same_place=False)
            if blocked and blocked[0] == "row_missing":
                self.add(metric, "increase", rule, expected, "-", False, blocked[1], blocked[0])
                continue
            row = self.row
            assert row is not None  # a missing row was handled above
            got_on = row.measured_on
            value = getattr(row.latency_ms, p, None)
            if got_on != sec["measured_on"]:
                msg = (
                    f"{self.label}: latency measured on {got_on!r}, baseline on {sec['measured_on']!r}; "
                    "not comparable"
                )
                self.add(metric, "increase", rule, expected, "-", False, msg, "measured_elsewhere")
            elif value is None:
                why = "latency not measured"
                if row.latency_note:
                    why += f" ({row.latency_note})"
                if row.latency_estimate_ms is not None:
                    why += "; only an estimate, which the gate does not accept"
                self.add(
                    metric, "increase", rule, expected, "missing", False, f"{self.label}: {why}", "missing"
                )
            else:
                actual, why = _value(value, p)
                if actual is None:
                    self.add(
                        metric,
                        "increase",
                        rule,
                        expected,
                        "missing",
                        False,
                        f"{self.label}: {why}",
                        "missing",
                    )
                elif actual <= limit + 1e-9:
                    self.add(metric, "increase", rule, expected, f"{actual:.3f} ms", True, "ok", "ok")
                else:
                    inc = 100 * (actual / float(ref) - 1) if ref else math.inf
                    msg = (
                        f"{self.label}: latency {p} rose {inc:.1f} % ({ref:.3f} -> {actual:.3f} ms "
                        f"on {got_on}), allowed +{pct:g} %"
                    )
                    self.add(metric, "increase", rule, expected, f"{actual:.3f} ms", False, msg, "regression")

    def contract(self) -> None:
        """A row whose artifact broke its contract (``pipeline check``, run by measure) fails the gate."""
        found = (self.row.details.get("contract") if self.row is not None else None) or {}
        if not found:
            return
        broken = [f for f in found.get("findings", []) if f.get("severity") == "violation"]
        rule = f"model contract for {found.get('runtime') or found.get('target') or 'its target'}"
        if not broken:
            self.add("contract", "holds", rule, "no violation", "none", True, "ok", "ok")
            return
        msg = f"{self.label}: " + "; ".join(f"{f.get('check')}: {f.get('message')}" for f in broken)
        self.add(
            "contract", "holds", rule, "no violation", f"{len(broken)} violation(s)", False, msg, "contract"
        )

    def presence(self) -> None:
        blocked = self.unavailable("row", same_place=False)
        msg = blocked[1] if blocked else "ok"
        self.add(
            "row",
            "present",
            "present in results",
            "present",
            "missing" if blocked else "present",
            not blocked,
            msg,
            blocked[0] if blocked else "ok",
        )

    def size(self) -> None:
        sec = self.base.get("size")
        if sec is None:
            return
        limit = int(sec["max_bytes"])
        ref = sec.get("reference")
        rule = f"<= {limit} bytes" + (f" (reference {int(ref)})" if ref is not None else "")
        expected = f"<= {limit / 1e6:.3f} MB"
        blocked = self.unavailable("size", same_place=False)
        if blocked:
            self.add("size", "max", rule, expected, "-", False, blocked[1], blocked[0])
            return
        actual, why = _value(self.row.size_bytes if self.row else None, "size_bytes")
        if actual is None:
            self.add("size", "max", rule, expected, "missing", False, f"{self.label}: {why}", "missing")
        elif actual <= limit:
            self.add("size", "max", rule, expected, f"{actual / 1e6:.3f} MB", True, "ok", "ok")
        else:
            grown = f" ({100 * (actual / ref - 1):+.1f} % vs reference {int(ref)})" if ref else ""
            msg = f"{self.label}: size {int(actual)} bytes exceeds max {limit}{grown}"
            self.add("size", "max", rule, expected, f"{actual / 1e6:.3f} MB", False, msg, "regression")


def _match(base: dict[str, Any], rows: list[ResultRow]) -> ResultRow | None:
    """The results row for a baseline row: same name and target, preferring the same measured_on."""
    same = [r for r in rows if r.name == base["name"] and r.target == base["target"]]
    exact = [r for r in same if r.measured_on == base.get("measured_on")]
    return (exact or same or [None])[0]


def same_verification_sets(results: dict[str, Any], baseline: dict[str, Any]) -> None:
    """InputError unless the baseline's figures came from the verification sets the results used.

    Accuracy on 40 pairs and on 1,200 pairs are different measurements: comparing them says nothing.
    A baseline records each set's name, pair count and file hash (``val_sets``); so do the results.
    """
    want = baseline.get("val_sets")
    if not want:
        return  # a baseline from before sets were recorded: see GateReport.notes
    got = results.get("val_sets") or {}
    for name, spec in want.items():
        have = got.get(name)
        if have is None:
            raise InputError(
                f"baseline figures come from verification set '{name}' ({spec.get('pairs')} pairs), which "
                f"the results do not have (they have: {', '.join(got) or 'none recorded'}); not comparable"
            )
        if have.get("pairs") != spec.get("pairs") or have.get("sha256") != spec.get("sha256"):
            raise InputError(
                f"baseline was made on '{name}' with {spec.get('pairs')} pairs (sha256 "
                f"{str(spec.get('sha256'))[:12]}), the results on '{name}' with {have.get('pairs')} pairs "
                f"(sha256 {str(have.get('sha256'))[:12]}): not comparable; write a baseline from a run on "
                "the same verification set"
            )


def gate(results: dict[str, Any], baseline: dict[str, Any]) -> GateReport:
    """Check every baseline rule against the results; never raises for a regression, only for bad input."""
    check_results(results)
    check_baseline(baseline)
    if results["target"] != baseline["target"]:
        raise InputError(
            f"baseline is for target {baseline['target']!r} but the results are for {results['target']!r}"
        )
    same_verification_sets(results, baseline)
    report = GateReport(target=results["target"])
    rows = rows_from(results)
    matched: set[int] = set()
    for base in baseline["rows"]:
        row = _match(base, rows)
        if row is not None:
            matched.add(id(row))
        before = len(report.rules)
        g = _RowGate(base, row, report.rules, results.get("floors"))
        g.accuracy()
        g.tar()
        g.latency()
        g.size()
        if len(report.rules) == before:  # a row without rules still has to be there
            g.presence()
        g.contract()
    report.not_gated = [r.label(place=True) for r in rows if id(r) not in matched]
    if not baseline.get("val_sets"):
        report.notes.append(
            "the baseline does not record its verification sets (name, pairs, hash): it cannot tell a run on "
            "another set apart; write it again with 'python -m pipeline baseline'"
        )
    return report


# --------------------------------------------------------------------------------------------- outputs
def format_table(report: GateReport) -> str:
    """Plain-text table for the CI log, failures first, then a one-line verdict."""
    rules = sorted(report.rules, key=lambda r: r.passed)
    head = ("status", "row", "metric", "rule", "actual")
    cells = [(("PASS" if r.passed else "FAIL"), r.row, r.metric, r.rule, r.actual) for r in rules]
    out = [*text_table(head, [list(c) for c in cells]), ""]
    for r in report.failures:
        out.append(f"FAIL {r.message}")
    for label in report.not_gated:
        out.append(f"note: not gated (no baseline entry): {label}")
    for note in report.notes:
        out.append(f"note: {note}")
    out.append(_verdict(report))
    return "\n".join(out) + "\n"


def _verdict(report: GateReport) -> str:
    n, bad = len(report.rules), len(report.failures)
    if not bad:
        return f"gate passed: {n} of {n} rules hold (target {report.target})"
    return f"gate FAILED: {bad} of {n} rules failed (target {report.target})"


def junit_xml(report: GateReport) -> str:
    """JUnit XML: one <testcase> per rule, <failure> with the message for each broken one."""
    suites = ET.Element("testsuites", name="facekd gate")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"facekd gate ({report.target})",
        tests=str(len(report.rules)),
        failures=str(len(report.failures)),
        errors="0",
        skipped="0",
    )
    for r in report.rules:
        case = ET.SubElement(suite, "testcase", classname=f"gate.{report.target}.{r.row}", name=r.name)
        detail = f"rule: {r.metric} {r.rule}\nexpected: {r.expected}\nactual: {r.actual}"
        if r.passed:
            ET.SubElement(case, "system-out").text = detail
        else:
            fail = ET.SubElement(case, "failure", message=r.message, type=r.kind)
            fail.text = f"{r.message}\n{detail}"
    if report.not_gated:
        ET.SubElement(suite, "system-out").text = "not gated (no baseline entry): " + ", ".join(
            report.not_gated
        )
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_summary(report: GateReport) -> str:
    """Markdown for a pull-request comment or $GITHUB_STEP_SUMMARY: verdict, failures, all rules."""
    icon = "✅" if report.passed else "❌"
    out = [f"### {icon} facekd {_verdict(report)}", ""]
    if report.failures:
        out += ["| row | metric | rule | actual | problem |", "|---|---|---|---|---|"]
        for r in report.failures:
            problem = r.message.removeprefix(f"{r.row}: ")  # the row is in the first column already
            out.append(
                f"| {_md(r.row)} | {_md(r.metric)} | {_md(r.rule)} | {_md(r.actual)} | {_md(problem)} |"
            )
        out.append("")
    if report.not_gated:
        out += ["Not gated (no baseline entry): " + ", ".join(f"`{x}`" for x in report.not_gated), ""]
    out += [f"Note: {n}" for n in report.notes] + ([""] if report.notes else [])
    out += ["<details><summary>All rules</summary>", ""]
    out += ["| status | row | metric | rule | actual |", "|---|---|---|---|---|"]
    for r in report.rules:
        mark = "pass" if r.passed else "**FAIL**"
        out.append(f"| {mark} | {_md(r.row)} | {_md(r.metric)} | {_md(r.rule)} | {_md(r.actual)} |")
    out += ["", "</details>", ""]
    return "\n".join(out)
