"""What changed between two runs, metric by metric: results rows, then the settings that explain them.

Answering "why is B worse than A" needs both halves side by side: the metric deltas per artifact and
target, and the config values, stage keys and tool versions that differ (a changed stage key is where
the two runs stopped sharing work).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from devices.rows import ResultRow, rows_from
from pipeline.gate import check_results, load_json_file
from pipeline.report import paired_of, text_table

FRACTION_METRICS = ("accuracy", "accuracy_std")
LATENCY_PERCENTILES = ("p50", "p90", "p99")
# per row: how many verification pairs only A decided right, and only B (from each row's wrong pairs)
PAIRED_METRIC = "pairs right in one run only"


@dataclass
class Change:
    """One compared value. ``status``: same | changed | added | removed."""

    section: str  # row | config | stage | version
    item: str  # row label, config path, stage name or package
    metric: str  # accuracy, TAR@FAR=0.01, latency p50, size, sha256, measured_on, row, key, value
    a: Any
    b: Any
    status: str
    delta: float | None = None  # b - a for numbers (fractions in 0..1, ms, bytes)
    relative: float | None = None  # (b - a) / a for latency and size
    note: str = ""  # shown instead of a delta (the pair-by-pair line's p-value)


def _num(v: Any) -> float | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def _metric_change(item: str, metric: str, a: Any, b: Any, relative: bool = False) -> Change:
    na, nb = _num(a), _num(b)
    delta = nb - na if na is not None and nb is not None else None
    rel = delta / na if relative and delta is not None and na else None
    return Change("row", item, metric, a, b, "same" if a == b else "changed", delta, rel)


def _row_metrics(row: ResultRow) -> dict[str, tuple[Any, bool]]:
    """metric name -> (value, compare relatively) for one results row."""
    out: dict[str, tuple[Any, bool]] = {}
    for key in FRACTION_METRICS:
        out[key] = (getattr(row, key), False)
    for far, tar in row.tar_at_far.items():
        out[f"TAR@FAR={far}"] = (tar, False)
    for p in LATENCY_PERCENTILES:
        out[f"latency {p}"] = (getattr(row.latency_ms, p, None), True)
    if row.latency_estimate_ms is not None:
        out["latency estimate"] = (row.latency_estimate_ms, True)
    out["size"] = (row.size_bytes, True)
    out["measured_on"] = (row.measured_on, False)
    out["sha256"] = (row.sha256, False)
    return out


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _folder(root: Path) -> Path:
    return root if root.is_dir() else root.parent


def _config(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    run_json = _folder(root) / "run.json"
    if run_json.is_file():
        return load_json_file(run_json, "run").get("config") or {}
    return (manifest.get("run") or {}).get("config") or {}


def _versions(manifest: dict[str, Any]) -> dict[str, Any]:
    for rec in (manifest.get("stages") or {}).values():
        if isinstance(rec, dict) and rec.get("versions"):
            return rec["versions"]
    return {}


def _dict_changes(section: str, metric: str, a: dict[str, Any], b: dict[str, Any]) -> list[Change]:
    out = []
    for key in sorted(set(a) | set(b)):
        if key not in b:
            out.append(Change(section, key, metric, a[key], None, "removed"))
        elif key not in a:
            out.append(Change(section, key, metric, None, b[key], "added"))
        elif a[key] != b[key]:
            out.append(Change(section, key, metric, a[key], b[key], "changed"))
    return out


def same_set_file(res_a: dict[str, Any], res_b: dict[str, Any], name: str | None) -> bool:
    """Whether both results record verification set ``name`` with the same file hash (``val_sets``): pair
    indices mean the same pairs only then (a regenerated set keeps its name and size)."""
    a = (res_a.get("val_sets") or {}).get(name) or {}
    b = (res_b.get("val_sets") or {}).get(name) or {}
    return bool(a.get("sha256")) and a.get("sha256") == b.get("sha256")


def compare_runs(run_a: Path, run_b: Path) -> list[Change]:
    """Every metric of every row (same or not), rows added/removed, and differing config/stages/versions."""
    run_a, run_b = Path(run_a), Path(run_b)
    res_a, res_b = load_json_file(run_a, "results"), load_json_file(run_b, "results")
    check_results(res_a, str(run_a))
    check_results(res_b, str(run_b))
    rows_a = {r.label(): r for r in rows_from(res_a, str(run_a))}
    rows_b = {r.label(): r for r in rows_from(res_b, str(run_b))}
    changes: list[Change] = []
    for label, ra in rows_a.items():
        rb = rows_b.get(label)
        if rb is None:
            changes.append(Change("row", label, "row", "present", None, "removed"))
            continue
        ma, mb = _row_metrics(ra), _row_metrics(rb)
        for metric in list(ma) + [m for m in mb if m not in ma]:
            va, rel = ma.get(metric, (None, False))
            vb, rel_b = mb.get(metric, (None, rel))
            changes.append(_metric_change(label, metric, va, vb, rel or rel_b))
        # the same row in both runs, pair by pair (is B - A more than noise?): only on the very same pairs
        paired = paired_of(ra, rb) if same_set_file(res_a, res_b, ra.val_set) else None
        if paired is not None:
            differ = paired.only_a_right + paired.only_b_right > 0
            changes.append(
                Change(
                    "row",
                    label,
                    PAIRED_METRIC,
                    paired.only_a_right,
                    paired.only_b_right,
                    "changed" if differ else "same",
                    note=f"McNemar p = {paired.p_value:.2f}",
                )
            )
    changes += [Change("row", lb, "row", None, "present", "added") for lb in rows_b if lb not in rows_a]
    man_a = _manifest(run_a)
    man_b = _manifest(run_b)
    changes += _dict_changes(
        "config", "value", _flatten(_config(run_a, man_a)), _flatten(_config(run_b, man_b))
    )
    keys_a = {k: (v or {}).get("key") for k, v in (man_a.get("stages") or {}).items()}
    keys_b = {k: (v or {}).get("key") for k, v in (man_b.get("stages") or {}).items()}
    changes += _dict_changes("stage", "key", keys_a, keys_b)
    changes += _dict_changes("version", "version", _versions(man_a), _versions(man_b))
    return changes


def _manifest(root: Path) -> dict[str, Any]:
    path = _folder(root) / "manifest.json"
    return load_json_file(path, "manifest") if path.is_file() else {}


def _fmt(metric: str, v: Any) -> str:
    if v is None:
        return "-"
    n = _num(v)
    if n is None:
        s = str(v)
        return s[:12] if metric == "sha256" else s
    if metric.startswith(("accuracy", "TAR")):
        return f"{100 * n:.2f} %"
    if metric.startswith("latency"):
        return f"{n:.3f} ms"
    if metric == "size":
        return f"{int(n)} B"
    return f"{n:g}"


def _fmt_delta(c: Change) -> str:
    if c.status == "same":
        return "="
    if c.note:
        return c.note
    if c.delta is None:
        return c.status
    if c.metric.startswith(("accuracy", "TAR")):
        return f"{100 * c.delta:+.2f} pts"
    if c.relative is not None:
        if c.metric.startswith("latency"):
            return f"{c.delta:+.3f} ms ({100 * c.relative:+.1f} %)"
        return f"{int(c.delta):+d} B ({100 * c.relative:+.1f} %)"
    return f"{c.delta:+g}"


def format_compare(changes: list[Change], label_a: str = "A", label_b: str = "B") -> str:
    """Terminal text: the metric table (``=`` where equal), rows added/removed, settings that differ."""
    out = [f"A: {label_a}", f"B: {label_b}", ""]
    metric_rows = [c for c in changes if c.section == "row" and c.metric != "row"]
    if metric_rows:
        out += text_table(
            ["row", "metric", "A", "B", "B - A"],
            [
                [c.item, c.metric, _fmt(c.metric, c.a), _fmt(c.metric, c.b), _fmt_delta(c)]
                for c in metric_rows
            ],
        )
        out.append("")
    for c in changes:
        if c.section == "row" and c.metric == "row":
            out.append(f"row {c.status} in B: {c.item}")
    other = [c for c in changes if c.section != "row"]
    if other:
        out.append("")
        out += text_table(
            ["what", "name", "A", "B"],
            [[c.section, c.item, _short(c.a), _short(c.b)] for c in other],
        )
    else:
        out.append("config, stage keys and versions: identical")
    changed = sum(1 for c in metric_rows if c.status == "changed")
    out += ["", f"{changed} of {len(metric_rows)} metric values differ"]
    return "\n".join(out) + "\n"


def _short(v: Any) -> str:
    s = "-" if v is None else (v if isinstance(v, str) else json.dumps(v))
    return s if len(s) <= 60 else s[:57] + "..."


def changes_json(changes: list[Change]) -> str:
    """Machine-readable form for ``compare --json``."""
    return json.dumps([asdict(c) for c in changes], indent=2, default=str) + "\n"
