"""``report.html``: one self-contained page (inline CSS, PNGs as data: URIs, no scripts, no network).

Self-contained because the report travels: a CI artifact, an attachment, a file opened on a laptop
without the run folder. A Content-Security-Policy meta tag makes the browser refuse anything external,
so a stray URL would show up as a broken image rather than a silent fetch.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from devices.rows import ResultRow, finite, pct, rows_from
from distill.atomic import write_text
from distill.errors import InputError
from pipeline import plots
from pipeline.gate import load_json_file
from pipeline.report import (
    accuracy_delta,
    first_versions,
    floor_lines,
    fp32_reference,
    int8_choice_line,
    latency_kind,
    latency_untrustworthy,
    notes,
    qat_vs_ptq_line,
    render_markdown,
)

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
HISTORY_STAGES = ("teacher", "distill", "qat")

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1400px;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.85rem; }
.scroll { overflow-x: auto; } td.l { white-space: nowrap; }
th, td { border: 1px solid #d0d0d5; padding: 0.25rem 0.5rem; text-align: right; }
th { background: #f2f2f5; } td.l, th.l { text-align: left; }
tr:nth-child(even) td { background: #fafafb; }
.pos { color: #1a7f37; } .neg { color: #c0392b; } .muted { color: #777; }
.est { font-style: italic; color: #9a6700; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size: 0.82rem; }
pre { background: #f6f8fa; padding: 0.8rem; overflow-x: auto; }
"""


def _e(x: Any) -> str:
    return html.escape("-" if x is None else str(x), quote=True)


def _img(png: bytes | None, alt: str, missing: str) -> str:
    if png is None:
        return f'<p class="muted">{_e(missing)}</p>'
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _table(head: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Cells are already HTML; the first ``left`` columns are left-aligned."""
    th = "".join(f'<th class="{"l" if i < left else ""}">{h}</th>' for i, h in enumerate(head))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _latency_cells(row: ResultRow) -> list[str]:
    kind = latency_kind(row)
    if kind == "measured" and row.latency_ms is not None:
        lat = row.latency_ms
        kind_cell = "measured (noisy)" if latency_untrustworthy(row) else "measured"
        return [_e(f"{v:.2f}") if finite(v) else "-" for v in (lat.p50, lat.p90, lat.p99)] + [kind_cell]
    if kind == "estimated":
        est = row.latency_estimate_ms
        p50 = f'<span class="est">~{est:.2f}</span>' if finite(est) else "-"
        return [p50, "-", "-", '<span class="est">estimated</span>']
    return ["-", "-", "-", f'<span class="muted">{_e(row.latency_note or "not measured")}</span>']


def results_html(rows: list[ResultRow]) -> str:
    # FARs no row could compute are left out here (the notes under the table say why)
    fars = sorted({k for r in rows for k, v in r.tar_at_far.items() if finite(v)}, key=float, reverse=True)
    with_stage = any(r.stage for r in rows)
    head = ["artifact"] + (["stage"] if with_stage else []) + ["format", "precision", "target", "measured on"]
    head += ["accuracy %", "± std"]
    head += ["Δ vs fp32 pts"] + [f"TAR@FAR={_e(f)} %" for f in fars]
    head += ["p50 ms", "p90 ms", "p99 ms", "latency", "size MB"]
    body = []
    for r in rows:
        ref = fp32_reference(r, rows)
        d = accuracy_delta(r, rows)
        if ref is r:
            delta = '<span class="muted">ref</span>'
        elif d is None:
            delta = "-"
        else:
            cls = "pos" if d > 0 else "neg" if d < 0 else ""
            title = f"vs {ref.label()}" if ref is not None else ""
            delta = f'<span class="{cls}" title="{_e(title)}">{100 * d:+.2f}</span>'
        size = r.size_bytes
        cells = [_e(r.name)] + ([_e(r.stage)] if with_stage else [])
        cells += [
            _e(r.format),
            _e(r.precision),
            _e(r.target),
            _e(r.measured_on),
            pct(r.accuracy),
            pct(r.accuracy_std),
            delta,
        ]
        cells += [pct(r.tar_at_far.get(f)) for f in fars]
        cells += _latency_cells(r)
        cells.append("-" if not finite(size) else f"{size / 1e6:.2f}")  # type: ignore[operator]
        body.append(cells)
    return '<div class="scroll">' + _table(head, body, left=6 if with_stage else 5) + "</div>"


def _stages_html(manifest: dict[str, Any]) -> str:
    rows = []
    for name, rec in (manifest.get("stages") or {}).items():
        if not isinstance(rec, dict):
            continue
        outputs = rec.get("outputs") or {}
        files = "<br>".join(f"{_e(f)}: <code>{_e(h)}</code>" for f, h in outputs.items()) or "-"
        rows.append(
            [
                _e(name),
                _e(rec.get("started")),
                _e(rec.get("seconds")),
                f"<code>{_e(rec.get('key'))}</code>",
                f"<details><summary>{len(outputs)} file(s)</summary>{files}</details>",
            ]
        )
    if not rows:
        return '<p class="muted">no manifest</p>'
    return _table(["stage", "started", "seconds", "key", "outputs (sha256)"], rows, left=5)


def _artifacts_html(rows: list[ResultRow]) -> str:
    seen, body = set(), []
    for r in rows:
        h = r.sha256
        if not h or h in seen:
            continue
        seen.add(h)
        body.append([_e(r.name), f"<code>{_e(h)}</code>", _e(r.size_bytes), _e(r.path)])
    if not body:
        return '<p class="muted">no hashed files</p>'
    return _table(["artifact", "sha256", "bytes", "path"], body, left=4)


def render_html(
    results: dict[str, Any],
    manifest: dict[str, Any],
    histories: dict[str, dict[str, Any]],
    config: dict[str, Any] | None,
) -> str:
    """The whole page as a string; ``histories`` maps a training stage name to its history.json."""
    rows = rows_from(results)
    target = results.get("target", "?")
    val = rows[0].val_set if rows else None
    versions = first_versions(manifest)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>facekd report: {_e(target)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>facekd run report <span class='muted'>(target: {_e(target)})</span></h1>",
        f"<p>Verification set <code>{_e(val)}</code>: 10-fold accuracy (InsightFace protocol, flip fused), "
        "TAR at fixed FAR, latency of the exact artifact on the device named in <em>measured on</em>.</p>",
        "<h2>Results</h2>",
        results_html(rows),
        "".join(f"<p><strong>{_e(line.replace('`', ''))}</strong></p>" for line in floor_lines(results)),
        "<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes(rows)) + "</ul>",
        "".join(
            f"<p>{_e(line.replace('`', ''))}</p>"
            for line in [int8_choice_line(manifest), qat_vs_ptq_line(rows)]
            if line
        ),
        "<h2>ROC curves</h2>",
        _img(plots.roc_png(rows), "ROC curves of every artifact", "no ROC data in results.json"),
        "<h2>Accuracy vs latency</h2>",
        "<p>Pareto front per target (dashed): no other artifact is both faster and more accurate. "
        "Hollow triangles are <span class='est'>estimated</span> latencies, not measurements.</p>",
        _img(
            plots.pareto_png(rows),
            "accuracy versus latency per target",
            "no row has both accuracy and latency",
        ),
        "<h2>Training curves</h2>",
        _img(plots.training_png(histories), "training loss terms per stage", "no training history found"),
        "<h2>Stages</h2>",
        _stages_html(manifest),
        "<h2>Artifacts</h2>",
        _artifacts_html(rows),
        "<h2>Versions</h2>",
        _table(["package", "version"], [[_e(k), _e(v)] for k, v in versions.items()], left=2)
        if versions
        else '<p class="muted">no versions recorded</p>',
        "<h2>Config</h2>",
        f"<pre>{_e(json.dumps(config, indent=2, sort_keys=False))}</pre>"
        if config
        else '<p class="muted">no config recorded</p>',
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def load_run(run_root: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]], dict | None]:
    """(results, manifest, histories, config) of a run folder; only results.json is required."""
    root = Path(run_root)
    for cand in (root / "results.json", root / "measure" / "results.json"):
        if cand.is_file():
            results = load_json_file(cand, "results")
            break
    else:
        raise InputError(f"{root}: no results.json (nor measure/results.json); run the measure stage first")
    rows_from(results, f"{root}/results.json")  # one-line error now, not halfway through the page
    man_path = root / "manifest.json"
    manifest = load_json_file(man_path, "manifest") if man_path.is_file() else {}
    histories = {}
    for stage in HISTORY_STAGES:
        h = root / stage / "history.json"
        if h.is_file():
            histories[stage] = load_json_file(h, "history")
    config = None
    if (root / "run.json").is_file():
        config = load_json_file(root / "run.json", "run").get("config")
    if config is None:
        config = (manifest.get("run") or {}).get("config")
    return results, manifest, histories, config


def write_reports(run_root: Path, out_dir: Path) -> list[str]:
    """Write report.md and report.html for a run folder into ``out_dir`` (atomically); return the names."""
    results, manifest, histories, config = load_run(Path(run_root))
    out = Path(out_dir)
    write_text(out / "report.md", render_markdown(results, manifest))
    write_text(out / "report.html", render_html(results, manifest, histories, config))
    return ["report.md", "report.html"]
