"""The report's plots as PNG bytes: ROC curves, accuracy vs latency (Pareto front), training curves.

Built on ``matplotlib.figure.Figure`` directly (no pyplot): no global figure state and no GUI backend,
so plotting is safe inside the pipeline process and in tests. Each function returns None when there is
nothing to draw, so the report can say so instead of showing an empty frame.
"""

from __future__ import annotations

import io
import math
from typing import Any

from devices.rows import ResultRow
from devices.rows import finite as _finite

ESTIMATED_LABEL = "estimated"
_LOSS_SKIP = {"step", "lr", "epoch", "images", "seconds", "images_per_second"}


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")  # Figure.savefig uses the Agg canvas for PNG; no backend switch
    return buf.getvalue()


def short_name(row: ResultRow) -> str:
    """Artifact name plus its training stage when rows carry one (int8 after PTQ vs after QAT)."""
    return f"{row.name} [{row.stage}]" if row.stage else row.name


def _val_set(row: ResultRow) -> dict[str, Any] | None:
    if not row.sets:
        return None
    return row.sets.get(row.val_set) if row.val_set in row.sets else next(iter(row.sets.values()))


def roc_png(rows: list[ResultRow]) -> bytes | None:
    """Every row's ROC on one log-FPR plot; identical curves (one file, several targets) drawn once."""
    curves: dict[tuple[Any, ...], tuple[list[str], list[float], list[float], Any]] = {}
    for row in rows:
        s = _val_set(row) or {}
        roc = s.get("roc") or {}
        fpr, tpr = roc.get("fpr"), roc.get("tpr")
        if not isinstance(fpr, list) or not isinstance(tpr, list) or len(fpr) != len(tpr) or not fpr:
            continue
        key = (row.sha256 or short_name(row), tuple(fpr), tuple(tpr))
        if key in curves:
            curves[key][0].append(row.target)
        else:
            curves[key] = ([row.target], fpr, tpr, (short_name(row), s.get("roc_auc")))
    if not curves:
        return None
    fig = _figure(7.5, 5.0)
    ax = fig.add_subplot()
    floor = 1e-4
    for targets, fpr, tpr, (name, auc) in curves.values():
        pts = [(max(f, floor), t) for f, t in zip(fpr, tpr, strict=True) if _finite(f) and _finite(t)]
        if not pts:
            continue
        label = f"{name} @ {', '.join(targets)}"
        if _finite(auc):
            label += f" (AUC {auc:.4f})"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, linewidth=1.4)
    ax.set_xscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel(f"false accept rate (log; values below {floor:g} drawn at {floor:g})")
    ax.set_ylabel("true accept rate")
    ax.set_title("ROC on the verification set")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def latency_point(row: ResultRow) -> tuple[float, bool] | None:
    """(p50 ms, is_estimate) for a row: a measurement wins over an estimate; None when neither exists."""
    if row.latency_ms is not None and _finite(row.latency_ms.p50):
        return float(row.latency_ms.p50), False  # type: ignore[arg-type]
    if _finite(row.latency_estimate_ms):
        return float(row.latency_estimate_ms), True  # type: ignore[arg-type]
    return None


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (latency lower-or-equal AND accuracy higher-or-equal,
    one of them strictly), sorted by latency; of identical points only the first. Points: (latency, acc)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_png(rows: list[ResultRow]) -> bytes | None:
    """Accuracy vs p50 latency, one panel per target, Pareto front drawn; estimated latencies marked."""
    by_target: dict[str, list[tuple[float, float, bool, str]]] = {}
    for row in rows:
        lp = latency_point(row)
        if lp is None or not _finite(row.accuracy):
            continue
        by_target.setdefault(row.target, []).append(
            (lp[0], float(row.accuracy), lp[1], short_name(row))  # type: ignore[arg-type]
        )
    if not by_target:
        return None
    n = len(by_target)
    fig = _figure(6.0 * n, 4.5)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (target, pts) in zip(axes, sorted(by_target.items()), strict=True):
        measured = [p for p in pts if not p[2]]
        estimated = [p for p in pts if p[2]]
        if measured:
            ax.scatter([p[0] for p in measured], [100 * p[1] for p in measured], marker="o", label="measured")
        if estimated:
            ax.scatter(
                [p[0] for p in estimated],
                [100 * p[1] for p in estimated],
                marker="^",
                facecolors="none",
                edgecolors="tab:red",
                label=ESTIMATED_LABEL,
            )
        for i, (lat, acc, est, name) in enumerate(sorted(pts)):
            text = f"{name} ({ESTIMATED_LABEL})" if est else name
            offset = (4, 4 if i % 2 == 0 else -10)  # alternate so neighbours' labels do not overprint
            ax.annotate(text, (lat, 100 * acc), fontsize=7, xytext=offset, textcoords="offset points")
        front = [pts[i] for i in pareto_front([(p[0], p[1]) for p in pts])]
        if len(front) > 1:
            ax.plot(
                [p[0] for p in front], [100 * p[1] for p in front], "--", color="gray", label="Pareto front"
            )
        ax.set_xlabel("latency p50 (ms)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"target: {target}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)


def loss_terms(history: dict[str, Any]) -> dict[str, tuple[list[float], list[float]]]:
    """term -> (steps, values) from a history.json ``history`` list; non-numeric entries skipped."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    entries = history.get("history") if isinstance(history, dict) else None
    for i, entry in enumerate(entries or []):
        if not isinstance(entry, dict):
            continue
        step = entry.get("step", i)
        if not _finite(step):
            continue
        for key, value in entry.items():
            if key in _LOSS_SKIP or not _finite(value):
                continue
            steps, values = out.setdefault(key, ([], []))
            steps.append(float(step))
            values.append(float(value))
    return out


def training_png(histories: dict[str, dict[str, Any]]) -> bytes | None:
    """One subplot per training stage (teacher, distill, qat ...), one line per loss term."""
    stages = [(name, loss_terms(h)) for name, h in histories.items()]
    stages = [(name, terms) for name, terms in stages if terms]
    if not stages:
        return None
    n = len(stages)
    fig = _figure(6.0 * n, 4.2)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (name, terms) in zip(axes, stages, strict=True):
        if len(terms) == 2 and "total" in terms:  # a single loss: "total" would hide it exactly
            terms = {k: v for k, v in terms.items() if k != "total"}
        for term, (steps, values) in terms.items():
            marker = "o" if len(steps) < 5 else None  # a one-entry history is still visible
            ax.plot(steps, values, label=term, linewidth=2.0 if term == "total" else 1.2, marker=marker)
        values = [v for _, vals in terms.values() for v in vals]
        if min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")  # terms differ by orders of magnitude (margin loss vs feature L2)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(f"{name}: loss terms")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)
