"""The human-readable report of a run: the results table and the facts behind it.

``report.md`` for terminals and pull requests; ``pipeline.html_report`` builds the HTML page from the
same derived values (delta vs fp32, latency kind), so the two never disagree.
"""

from __future__ import annotations

import math
from typing import Any

ESTIMATED = "estimated"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def finite(v: Any) -> bool:
    """A real number that is not NaN/inf (bool excluded): what a results figure must be to be shown."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_finite = finite


def model_of(row: dict[str, Any]) -> str:
    """The model a row belongs to ("student", "teacher"): the name's first dash-separated part."""
    name = str(row.get("name") or "")
    return name.split("-", 1)[0] or str(row.get("role") or "")


def fp32_reference(row: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The fp32 row a row's accuracy is compared with: same model and stage, preferring the PyTorch
    source model, then the same target and format. Falls back to the model's stage-less/distill fp32 row
    (a QAT int8 artifact is judged against the distilled fp32 model when QAT left no fp32 row)."""
    model, stage = model_of(row), row.get("stage")
    fp32 = [
        r
        for r in rows
        if r.get("precision") == "fp32" and model_of(r) == model and _finite(r.get("accuracy"))
    ]
    cands = [r for r in fp32 if r.get("stage") == stage]
    if not cands:
        cands = [r for r in fp32 if r.get("stage") in (None, "distill")]
    if not cands:
        return None

    def score(r: dict[str, Any]) -> tuple[int, int, int]:
        return (
            r.get("format") != "pytorch",
            r.get("target") != row.get("target"),
            r.get("format") != row.get("format"),
        )

    return min(cands, key=score)


def accuracy_delta(row: dict[str, Any], rows: list[dict[str, Any]]) -> float | None:
    """accuracy - accuracy of the fp32 reference (0..1 scale); None when either is missing."""
    ref = fp32_reference(row, rows)
    if ref is None or not _finite(row.get("accuracy")):
        return None
    return float(row["accuracy"]) - float(ref["accuracy"])


def latency_kind(row: dict[str, Any]) -> str:
    """measured | estimated | none — an estimate is never shown as if it were a measurement."""
    lat = row.get("latency_ms")
    if isinstance(lat, dict) and _finite(lat.get("p50")):
        return "measured"
    if row.get("latency_estimate_ms") is not None:
        return ESTIMATED
    return "none"


def _estimate_text(est: Any) -> str:
    if isinstance(est, dict):
        parts = [f"{est[p]:.2f}" for p in ("p50", "p90", "p99") if _finite(est.get(p))]
        if not parts and _finite(est.get("mean")):
            parts = [f"{est['mean']:.2f}"]
        return " / ".join(parts) if parts else "?"
    return f"{est:.2f}" if _finite(est) else "?"


def latency_untrustworthy(row: dict[str, Any]) -> list[str]:
    """Why a measured latency should not be compared (spread, a busy machine); [] when it can be."""
    cond = row.get("latency_conditions")
    if latency_kind(row) != "measured" or not isinstance(cond, dict) or cond.get("trustworthy", True):
        return []
    return [str(r) for r in cond.get("reasons") or ["marked untrustworthy"]]


def latency_text(row: dict[str, Any]) -> str:
    kind = latency_kind(row)
    if kind == "measured":
        lat = row["latency_ms"]
        text = " / ".join("-" if not _finite(lat.get(p)) else f"{lat[p]:.2f}" for p in ("p50", "p90", "p99"))
        return text + (" (noisy)" if latency_untrustworthy(row) else "")
    if kind == ESTIMATED:
        return f"~{_estimate_text(row['latency_estimate_ms'])} ({ESTIMATED})"
    return "not measured on device"


def _delta_text(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    ref = fp32_reference(row, rows)
    if ref is row:
        return "ref"
    d = accuracy_delta(row, rows)
    return "-" if d is None else f"{100 * d:+.2f}"


def results_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: one line per artifact x target, as in results.json."""
    fars = sorted({k for r in rows for k in (r.get("tar_at_far") or {})}, key=float, reverse=True)
    with_stage = any(r.get("stage") for r in rows)
    head = ["model", "format", "precision", "target", "measured on", "accuracy %", "± std", "Δ vs fp32 pts"]
    head += [f"TAR@FAR={f} %" for f in fars]
    head += ["latency p50/p90/p99 ms", "latency", "size MB"]
    head += ["stage"] if with_stage else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.get("role", "") if r.get("role") != "artifact" else r["name"],
            r.get("format", "-"),
            r.get("precision", "-"),
            r.get("target", "-"),
            r.get("measured_on") or "-",
            _pct(r.get("accuracy")),
            _pct(r.get("accuracy_std")),
            _delta_text(r, rows),
        ]
        cells += [_pct((r.get("tar_at_far") or {}).get(f)) for f in fars]
        size = r.get("size_bytes")
        cells += [latency_text(r), latency_kind(r), "-" if size is None else f"{size / 1e6:.2f}"]
        cells += [r.get("stage") or "-"] if with_stage else []
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def notes(rows: list[dict[str, Any]]) -> list[str]:
    """Footnotes of the table: latency notes, why a TAR is missing, what an estimate is."""
    out = sorted({r["latency_note"] for r in rows if r.get("latency_note")})
    for r in rows:
        why = latency_untrustworthy(r)
        if why:
            out.append(
                f"{r.get('name')} ({r.get('target')}): latency noisy, do not compare it: {'; '.join(why)}"
            )
    if any(latency_kind(r) == ESTIMATED for r in rows):
        out.append(
            "latencies marked 'estimated' are not measurements (no device connected); "
            "the gate never accepts them"
        )
    val = rows[0].get("val_set") if rows else None
    not_computable = sorted(
        {s for r in rows for s in ((r.get("sets") or {}).get(val, {}).get("tar_not_computable") or [])}
    )
    out += [f"TAR not computable: {s}" for s in not_computable]
    out.append("Δ vs fp32: accuracy minus that of the same model's fp32 row (same stage), in points")
    return out


def floor_lines(results: dict[str, Any]) -> list[str]:
    """One line per verification set: what raw pixels and the teacher score, beside the models."""
    out = []
    for name, f in (results.get("floors") or {}).items():
        pixels = f.get("pixels") or {}
        line = f"Floor on `{name}`: raw pixels compared by cosine score {_pct(pixels.get('accuracy'))} %"
        if _finite(pixels.get("roc_auc")):
            line += f" (AUC {pixels['roc_auc']:.3f})"
        if _finite(f.get("teacher")):
            line += f"; the teacher {_pct(f['teacher'])} %"
        out.append(line + ". A model at or below the pixels has learned nothing useful.")
    return out


def first_versions(manifest: dict[str, Any]) -> dict[str, Any]:
    for rec in (manifest.get("stages") or {}).values():
        if isinstance(rec, dict) and rec.get("versions"):
            return rec["versions"]
    return {}


def render_markdown(results: dict[str, Any], manifest: dict[str, Any]) -> str:
    rows = results["rows"]
    stages = manifest.get("stages", {})
    out = [f"# facekd run report (target: {results['target']})", ""]
    val = rows[0].get("val_set") if rows else None
    out += [f"Verification set: `{val}` (10-fold accuracy, InsightFace protocol, flip fused).", ""]
    out += [results_table(rows), ""]
    out += [*floor_lines(results), ""] if results.get("floors") else []
    for n in notes(rows):
        out.append(f"- {n}")
    out += ["", "## Stages", "", "| stage | seconds | key |", "|---|---|---|"]
    for name, rec in stages.items():
        out.append(f"| {name} | {rec.get('seconds', '-')} | `{rec.get('key', '')}` |")
    distill = stages.get("distill", {}).get("metrics", {})
    if "images_per_second" in distill:
        out += [
            "",
            f"Student training throughput: {distill['images_per_second']:.1f} img/s "
            "(forward + backward + update, data loading excluded).",
        ]
    hashed = [r for r in rows if r.get("sha256")]
    if hashed:
        out += ["", "## Artifacts", "", "| file | sha256 | bytes |", "|---|---|---|"]
        seen: set[str] = set()
        for r in hashed:
            if r["sha256"] in seen:
                continue
            seen.add(r["sha256"])
            out.append(f"| {r['name']} | `{r['sha256']}` | {r.get('size_bytes', '-')} |")
    versions = first_versions(manifest)
    if versions:
        out += ["", "## Versions", ""] + [f"- {k}: {v}" for k, v in versions.items()]
    return "\n".join(out) + "\n"
