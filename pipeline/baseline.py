"""Write a gate baseline from a run: the reference values plus default tolerances, for review in a PR.

The defaults are meant to catch real regressions without flaking on a deterministic CPU pipeline:

- accuracy: drop <= max(0.5 pts, 0.5 x the 10-fold std). Half a fold std is about one standard error
  of the difference of two 10-fold means (std x sqrt(2/10) = 0.45 std): smaller drops are within what a
  different evaluation split would show.
- TAR@FAR: drop <= 2 pts, only where the run could compute it (enough negative pairs).
- latency: +25 % on each chosen percentile, only for rows with a real measurement (never an estimate),
  tied to the row's ``measured_on``; timings on shared CI runners are noisy, so p50 by default.
- size: +5 % over the file's size.

No absolute floors unless asked for (``accuracy_floor``/``tar_floor``): a floor is a product decision.
Every rule that could not be written (metric missing, not computable) is named in the row's ``notes``,
so the reviewer sees what is *not* gated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from devices.rows import ResultRow, rows_from
from devices.rows import finite as _finite
from distill.errors import InputError
from pipeline.gate import BASELINE_VERSION, PERCENTILES, check_baseline, check_results


@dataclass(frozen=True)
class Tolerances:
    accuracy_max_drop: float = 0.005
    accuracy_std_k: float = 0.5
    accuracy_binomial_k: float = 2.0  # drop allowance >= k binomial sd of the accuracy on the set's pairs
    accuracy_floor: float | None = None
    tar_max_drop: float = 0.02
    tar_floor: float | None = None
    latency_max_increase_pct: float = 25.0
    latency_percentiles: tuple[str, ...] = ("p50",)
    latency: bool = True  # False: no latency rules at all (e.g. a CI runner with unstable timing)
    size_max_increase_pct: float = 5.0


def _row_baseline(row: ResultRow, tol: Tolerances, floors: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": row.name, "target": row.target, "measured_on": row.measured_on}
    notes: list[str] = []
    acc = row.accuracy
    if _finite(acc):
        rule: dict[str, Any] = {"reference": float(acc)}  # type: ignore[arg-type]
        std = row.accuracy_std
        if _finite(std) and tol.accuracy_std_k > 0:
            rule["reference_std"] = float(std)
            rule["use_std"] = tol.accuracy_std_k
        rule["max_drop"] = tol.accuracy_max_drop
        pairs = row.set_metrics().get("pairs")
        if isinstance(pairs, int) and pairs > 0 and tol.accuracy_binomial_k > 0:
            rule["pairs"], rule["binomial_k"] = pairs, tol.accuracy_binomial_k
        if tol.accuracy_floor is not None:
            rule["floor"] = tol.accuracy_floor
        pixels = (((floors or {}).get(row.val_set) or {}).get("pixels") or {}).get("accuracy")
        if _finite(pixels) and float(acc) > float(pixels):
            rule["above_pixel_floor"] = True
        elif _finite(pixels):
            notes.append(
                f"accuracy {100 * float(acc):.2f} % is not above raw pixels ({100 * float(pixels):.2f} %): "
                "no pixel-floor rule"
            )
        out["accuracy"] = rule
    else:
        notes.append("accuracy not gated: the run has no accuracy for this row")
    tars: dict[str, Any] = {}
    for far, tar in row.tar_at_far.items():
        if _finite(tar):
            t: dict[str, Any] = {"reference": float(tar), "max_drop": tol.tar_max_drop}
            if tol.tar_floor is not None:
                t["floor"] = tol.tar_floor
            tars[far] = t
        else:
            notes.append(f"TAR@FAR={far} not gated: not computable in this run")
    if tars:
        out["tar_at_far"] = tars
    lat = row.latency_ms.to_dict() if row.latency_ms is not None else None
    if not tol.latency:
        notes.append("latency not gated: disabled when the baseline was written")
    elif lat is not None and not row.trustworthy_latency:
        why = "; ".join(str(r) for r in (row.latency_conditions or {}).get("reasons") or [])
        notes.append(
            f"latency not gated: too noisy when measured to be a reference ({why}); measure it again"
        )
    elif lat is not None and all(_finite(lat.get(p)) for p in tol.latency_percentiles):
        out["latency"] = {
            "measured_on": row.measured_on,
            "reference_ms": {p: float(lat[p]) for p in tol.latency_percentiles},
            "max_increase_pct": tol.latency_max_increase_pct,
        }
    else:
        why = row.latency_note or "no measured latency"
        if row.latency_estimate_ms is not None:
            why += "; estimates are not gated"
        notes.append(f"latency not gated: {why}")
    size = row.size_bytes
    if _finite(size):
        out["size"] = {
            "reference": int(size),
            "max_bytes": int(math.ceil(size * (1 + tol.size_max_increase_pct / 100))),
        }
    else:
        notes.append("size not gated: the run has no size for this row")
    if notes:
        out["notes"] = notes
    return out


def make_baseline(results: dict[str, Any], tolerances: Tolerances | None = None) -> dict[str, Any]:
    """A baseline (see pipeline.gate) gating every row of ``results`` at its current values."""
    tol = tolerances or Tolerances()
    for p in tol.latency_percentiles:
        if p not in PERCENTILES:
            raise InputError(f"latency percentile {p!r} unknown; choose from {list(PERCENTILES)}")
    if tol.latency_max_increase_pct < 0 or tol.size_max_increase_pct < 0:
        raise InputError("tolerances: percentages must be >= 0")
    for name in ("accuracy_max_drop", "tar_max_drop", "accuracy_std_k", "accuracy_binomial_k"):
        if getattr(tol, name) < 0:
            raise InputError(f"tolerances: {name} must be >= 0")
    check_results(results)
    result_rows = rows_from(results)
    rows = [_row_baseline(r, tol, results.get("floors")) for r in result_rows]
    baseline = {
        "tool": "facekd",
        "kind": "baseline",
        "version": BASELINE_VERSION,
        "target": results["target"],
        "rows": rows,
    }
    used = {r.val_set for r in result_rows}
    sets = {name: spec for name, spec in (results.get("val_sets") or {}).items() if name in used}
    if sets:
        baseline["val_sets"] = sets
    check_baseline(baseline, "generated baseline")  # a baseline we write must be one we accept
    return baseline


def summarize(baseline: dict[str, Any]) -> str:
    """A few lines for the terminal: which rows got which rules, and what is not gated."""
    out = []
    for row in baseline["rows"]:
        kinds = [k for k in ("accuracy", "tar_at_far", "latency", "size") if k in row]
        out.append(
            f"{row['name']} @ {row['target']} ({row.get('measured_on')}): {', '.join(kinds) or 'none'}"
        )
        out += [f"    {n}" for n in row.get("notes", [])]
    return "\n".join(out)
