"""The human-readable report of a run: the results table and the facts behind it.

``report.md`` for terminals and pull requests; ``pipeline.html_report`` builds the HTML page from the
same derived values (delta vs fp32, latency kind), so the two never disagree.
"""

from __future__ import annotations

from typing import Any

from devices.rows import ResultRow, finite, pct, rows_from
from distill.metrics.paired import PairedDifference, paired_difference

ESTIMATED = "estimated"


def text_table(head: list[str] | tuple[str, ...], rows: list[list[str]], rule: bool = True) -> list[str]:
    """Columns padded to their widest cell, two spaces apart; a dashed line under the head (``rule``)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    out += ["  ".join("-" * w for w in widths)] if rule else []
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return out


def fp32_reference(row: ResultRow, rows: list[ResultRow]) -> ResultRow | None:
    """The fp32 row a row's accuracy is compared with: same model and stage, preferring the PyTorch
    source model, then the same target and format. Falls back to the model's stage-less/distill fp32 row
    (a QAT int8 artifact is judged against the distilled fp32 model when QAT left no fp32 row)."""
    fp32 = [r for r in rows if r.precision == "fp32" and r.model == row.model and finite(r.accuracy)]
    cands = [r for r in fp32 if r.stage == row.stage]
    if not cands:
        cands = [r for r in fp32 if r.stage in (None, "distill")]
    if not cands:
        return None

    def score(r: ResultRow) -> tuple[bool, bool, bool]:
        return (r.format != "pytorch", r.target != row.target, r.format != row.format)

    return min(cands, key=score)


def accuracy_delta(row: ResultRow, rows: list[ResultRow]) -> float | None:
    """accuracy - accuracy of the fp32 reference (0..1 scale); None when either is missing."""
    ref = fp32_reference(row, rows)
    if ref is None or not finite(row.accuracy):
        return None
    return float(row.accuracy) - float(ref.accuracy)  # type: ignore[arg-type]


def latency_kind(row: ResultRow) -> str:
    """measured | estimated | none — an estimate is never shown as if it were a measurement."""
    if row.latency_ms is not None and finite(row.latency_ms.p50):
        return "measured"
    if row.latency_estimate_ms is not None:
        return ESTIMATED
    return "none"


def latency_untrustworthy(row: ResultRow) -> list[str]:
    """Why a measured latency should not be compared (spread, a busy machine); [] when it can be."""
    if latency_kind(row) != "measured" or row.trustworthy_latency:
        return []
    return [str(r) for r in (row.latency_conditions or {}).get("reasons") or ["marked untrustworthy"]]


def latency_text(row: ResultRow) -> str:
    kind = latency_kind(row)
    if kind == "measured":
        lat = row.latency_ms
        text = " / ".join(
            "-" if not finite(v) else f"{v:.2f}"
            for v in (lat.p50, lat.p90, lat.p99)  # type: ignore[union-attr]
        )
        return text + (" (noisy)" if latency_untrustworthy(row) else "")
    if kind == ESTIMATED:
        est = row.latency_estimate_ms
        return f"~{est:.2f} ({ESTIMATED})" if finite(est) else f"~? ({ESTIMATED})"
    return "not measured on device"


def _delta_text(row: ResultRow, rows: list[ResultRow]) -> str:
    ref = fp32_reference(row, rows)
    if ref is row:
        return "ref"
    d = accuracy_delta(row, rows)
    return "-" if d is None else f"{100 * d:+.2f}"


def results_table(rows: list[ResultRow]) -> str:
    """Markdown table: one line per artifact x target, as in results.json."""
    fars = sorted({k for r in rows for k in r.tar_at_far}, key=float, reverse=True)
    with_stage = any(r.stage for r in rows)
    head = ["model", "format", "precision", "target", "measured on", "accuracy %", "± std", "Δ vs fp32 pts"]
    head += [f"TAR@FAR={f} %" for f in fars]
    head += ["latency p50/p90/p99 ms", "latency", "size MB"]
    head += ["stage"] if with_stage else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            (r.role or "") if r.role != "artifact" else r.name,
            r.format or "-",
            r.precision or "-",
            r.target,
            r.measured_on or "-",
            pct(r.accuracy),
            pct(r.accuracy_std),
            _delta_text(r, rows),
        ]
        cells += [pct(r.tar_at_far.get(f)) for f in fars]
        size = r.size_bytes
        cells += [latency_text(r), latency_kind(r), "-" if size is None else f"{size / 1e6:.2f}"]
        cells += [r.stage or "-"] if with_stage else []
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def notes(rows: list[ResultRow]) -> list[str]:
    """Footnotes of the table: latency notes, why a TAR is missing, what an estimate is."""
    out = sorted({r.latency_note for r in rows if r.latency_note})
    for r in rows:
        why = latency_untrustworthy(r)
        if why:
            out.append(f"{r.name} ({r.target}): latency noisy, do not compare it: {'; '.join(why)}")
    if any(latency_kind(r) == ESTIMATED for r in rows):
        out.append(
            "latencies marked 'estimated' are not measurements (no device connected); "
            "the gate never accepts them"
        )
    for r in rows:
        contract = r.details.get("contract") or {}
        if contract.get("passed") is False:
            bad = "; ".join(
                f["message"] for f in contract.get("findings", []) if f["severity"] == "violation"
            )
            out.append(f"{r.name} ({r.target}): model contract violated: {bad}")
    val = rows[0].val_set if rows else None
    not_computable = sorted({s for r in rows for s in (r.set_metrics(val).get("tar_not_computable") or [])})
    out += [f"TAR not computable: {s}" for s in not_computable]
    out.append("Δ vs fp32: accuracy minus that of the same model's fp32 row (same stage), in points")
    return out


def floor_lines(results: dict[str, Any]) -> list[str]:
    """One line per verification set: what raw pixels and the teacher score, beside the models."""
    out = []
    for name, f in (results.get("floors") or {}).items():
        pixels = f.get("pixels") or {}
        line = f"Floor on `{name}`: raw pixels compared by cosine score {pct(pixels.get('accuracy'))} %"
        if finite(pixels.get("roc_auc")):
            line += f" (AUC {pixels['roc_auc']:.3f})"
        if finite(f.get("teacher")):
            line += f"; the teacher {pct(f['teacher'])} %"
        out.append(line + ". A model at or below the pixels has learned nothing useful.")
    return out


def int8_choice_line(manifest: dict[str, Any]) -> str | None:
    """Which INT8 model stage two handed to export and why (qat.keep), or None without stage two."""
    qat = (manifest.get("stages") or {}).get("qat", {}).get("metrics") or {}
    shipped = qat.get("shipped")
    if not shipped:
        return None
    selection = qat.get("selection") or {}
    why = selection.get("why") or f"qat.keep: {selection.get('rule', '?')}"
    sets = ", ".join(selection.get("sets") or [])
    on = f" (dev sets: {sets}; never the reported sets)" if sets else ""
    return f"INT8 artifacts exported from {shipped}.pt: {why}{on}."


def paired_of(a: ResultRow | None, b: ResultRow | None) -> PairedDifference | None:
    """Row ``a`` against row ``b``, pair by pair on their headline set (``wrong_pairs`` of each); None when
    either is missing, they were scored on other sets, or one has no per-pair record (older results)."""
    if a is None or b is None or a.val_set is None or a.val_set != b.val_set:
        return None
    sa, sb = a.sets.get(a.val_set) or {}, b.sets.get(b.val_set) or {}
    if "wrong_pairs" not in sa or "wrong_pairs" not in sb or sa.get("pairs") != sb.get("pairs"):
        return None
    return paired_difference(sa["wrong_pairs"], sb["wrong_pairs"], int(sa["pairs"]))


def paired_rows(rows: list[ResultRow], role_a: str, role_b: str) -> PairedDifference | None:
    """The first ``role_a`` row against the first ``role_b`` row of one run, pair by pair."""
    a = next((r for r in rows if r.role == role_a), None)
    b = next((r for r in rows if r.role == role_b), None)
    return paired_of(a, b)


def qat_vs_ptq_line(rows: list[ResultRow]) -> str | None:
    """QAT against PTQ on the headline set, pair by pair: whether their gap is more than noise."""
    diff = paired_rows(rows, "student-qat", "student-ptq")
    if diff is None:
        return None
    val_set = next(r.val_set for r in rows if r.role == "student-qat")
    return diff.sentence("QAT", "PTQ") + f" on `{val_set}`."


def first_versions(manifest: dict[str, Any]) -> dict[str, Any]:
    for rec in (manifest.get("stages") or {}).values():
        if isinstance(rec, dict) and rec.get("versions"):
            return rec["versions"]
    return {}


def render_markdown(results: dict[str, Any], manifest: dict[str, Any]) -> str:
    rows = rows_from(results)
    stages = manifest.get("stages", {})
    out = [f"# facekd run report (target: {results['target']})", ""]
    val = rows[0].val_set if rows else None
    out += [f"Verification set: `{val}` (10-fold accuracy, InsightFace protocol, flip fused).", ""]
    out += [results_table(rows), ""]
    out += [*floor_lines(results), ""] if results.get("floors") else []
    for n in notes(rows):
        out.append(f"- {n}")
    choice = int8_choice_line(manifest)
    out += ["", choice] if choice else []
    paired = qat_vs_ptq_line(rows)
    out += ["", paired] if paired else []
    out += ["", "## Stages", "", "| stage | seconds | key |", "|---|---|---|"]
    for name, rec in stages.items():
        out.append(f"| {name} | {rec.get('seconds', '-')} | `{rec.get('key', '')}` |")
    distill = stages.get("distill", {}).get("metrics", {})
    if "images_per_second" in distill:
        out += [
            "",
            f"Student training throughput: {distill['images_per_second']:.1f} img/s "
            "(the median step: forward + backward + update, data loading excluded).",
        ]
    hashed = [r for r in rows if r.sha256]
    if hashed:
        out += ["", "## Artifacts", "", "| file | sha256 | bytes |", "|---|---|---|"]
        seen: set[str] = set()
        for r in hashed:
            if r.sha256 in seen:
                continue
            seen.add(r.sha256)  # type: ignore[arg-type]
            out.append(f"| {r.name} | `{r.sha256}` | {r.size_bytes if r.size_bytes is not None else '-'} |")
    versions = first_versions(manifest)
    if versions:
        out += ["", "## Versions", ""] + [f"- {k}: {v}" for k, v in versions.items()]
    return "\n".join(out) + "\n"
