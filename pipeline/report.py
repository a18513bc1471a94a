"""The human-readable report of a run: the results table and the facts behind it."""

from __future__ import annotations

from typing import Any


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _latency(row: dict[str, Any]) -> str:
    lat = row.get("latency_ms")
    if not lat:
        return "not measured on device"
    return f"{lat['p50']:.2f} / {lat['p90']:.2f} / {lat['p99']:.2f}"


def results_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: one line per artifact x target, as in results.json."""
    fars = sorted({k for r in rows for k in (r.get("tar_at_far") or {})}, key=float, reverse=True)
    head = ["model", "format", "precision", "target", "measured on", "accuracy %", "± std"]
    head += [f"TAR@FAR={f} %" for f in fars]
    head += ["latency p50/p90/p99 ms", "size MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.get("role", "") if r.get("role") != "artifact" else r["name"],
            r["format"],
            r["precision"],
            r["target"],
            r["measured_on"],
            _pct(r.get("accuracy")),
            _pct(r.get("accuracy_std")),
        ]
        cells += [_pct((r.get("tar_at_far") or {}).get(f)) for f in fars]
        size = r.get("size_bytes")
        cells += [_latency(r), "-" if size is None else f"{size / 1e6:.2f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def render_markdown(results: dict[str, Any], manifest: dict[str, Any]) -> str:
    rows = results["rows"]
    stages = manifest.get("stages", {})
    out = [f"# facekd run report (target: {results['target']})", ""]
    val = rows[0].get("val_set") if rows else None
    out += [f"Verification set: `{val}` (10-fold accuracy, InsightFace protocol, flip fused).", ""]
    out += [results_table(rows), ""]
    notes = sorted({r["latency_note"] for r in rows if r.get("latency_note")})
    for n in notes:
        out.append(f"- {n}")
    not_computable = sorted(
        {s for r in rows for s in (r.get("sets", {}).get(val, {}).get("tar_not_computable") or [])}
    )
    for s in not_computable:
        out.append(f"- TAR not computable: {s}")
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
    versions = next(iter(stages.values()), {}).get("versions", {})
    if versions:
        out += ["", "## Versions", ""] + [f"- {k}: {v}" for k, v in versions.items()]
    return "\n".join(out) + "\n"
