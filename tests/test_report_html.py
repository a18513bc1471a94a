"""report.md / report.html: derived columns, plots, and the page rendered by headless Chromium."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import random
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from devices.rows import rows_from
from pipeline.html_report import render_html, write_reports
from pipeline.plots import loss_terms, pareto_front
from pipeline.report import accuracy_delta, fp32_reference, render_markdown

CHROMIUM = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")


def _roc(power):
    fpr = [i / 50 for i in range(51)]
    return {"fpr": fpr, "tpr": [f**power for f in fpr]}


def _row(name, fmt, precision, target="host", acc=0.9, lat=10.0, stage=None, **over):
    row = {
        "name": name,
        "role": "artifact" if fmt != "pytorch" else name.split("-")[0],
        "format": fmt,
        "precision": precision,
        "target": target,
        "measured_on": "host-cpu",
        "val_set": "v",
        "accuracy": acc,
        "accuracy_std": 0.02,
        "tar_at_far": {"0.01": 0.6, "0.001": None},
        "sets": {"v": {"roc": _roc(0.3 + acc / 10), "roc_auc": acc, "tar_not_computable": []}},
        "latency_ms": None if lat is None else {"p50": lat, "p90": lat * 1.1, "p99": lat * 1.5},
        "size_bytes": 4_000_000,
        "sha256": hashlib.sha256(f"{name}/{fmt}/{precision}".encode()).hexdigest(),
    }
    if stage:
        row["stage"] = stage
    row.update(over)
    return row


def crafted_results():
    return {
        "target": "android",
        "rows": [
            _row("teacher-pytorch-fp32", "pytorch", "fp32", acc=0.95, lat=30.0),
            _row("student-pytorch-fp32", "pytorch", "fp32", acc=0.90, lat=10.0, stage="distill"),
            _row("student-tflite-fp32", "tflite", "fp32", acc=0.90, lat=4.0, stage="distill"),
            _row("student-tflite-int8", "tflite", "int8", acc=0.885, lat=2.0, stage="ptq"),
            _row("student-pytorch-fp32", "pytorch", "fp32", acc=0.905, lat=10.5, stage="qat"),
            _row("student-tflite-int8", "tflite", "int8", acc=0.895, lat=2.1, stage="qat"),
            _row(
                "student-tflite-int8",
                "tflite",
                "int8",
                target="android",
                acc=0.895,
                lat=None,
                stage="qat",
                latency_estimate_ms=6.5,
                latency_note="not measured on device: no android device connected",
            ),
        ],
    }


def histories():
    distill = {
        "history": [
            {"step": s, "lr": 0.1, "cosface": 20 / s, "feature_l2": 1 / s, "total": 30 / s}
            for s in range(1, 30)
        ]
    }
    qat = {"history": [{"step": s, "lr": 0.01, "ekd": 2 / s, "total": 2 / s} for s in range(1, 10)]}
    return {"distill": distill, "qat": qat}


def manifest():
    versions = {"python": "3.11.7", "torch": "2.13.0+cpu"}
    return {
        "tool": "facekd",
        "stages": {
            "distill": {
                "key": "abc123",
                "outputs": {"student.pt": "ff" * 32},
                "seconds": 3.5,
                "versions": versions,
            },
            "measure": {"key": "def456", "outputs": {"results.json": "ee" * 32}, "seconds": 1.0},
        },
    }


# ----------------------------------------------------------------------------------------- derived values
def test_delta_is_against_the_fp32_row_of_the_same_stage():
    rows = rows_from(crafted_results())
    # ptq int8 (no ptq fp32 row) -> distilled PyTorch fp32: 0.885 - 0.900
    assert accuracy_delta(rows[3], rows) == pytest.approx(-0.015)
    # qat int8 -> the qat fp32 row: 0.895 - 0.905
    assert fp32_reference(rows[5], rows) is rows[4]
    assert accuracy_delta(rows[5], rows) == pytest.approx(-0.010)
    # the teacher is its own model
    assert fp32_reference(rows[0], rows) is rows[0]
    # the pytorch source wins over the tflite fp32 of the same stage
    assert fp32_reference(rows[2], rows) is rows[1]


def test_markdown_table_has_delta_and_labels_estimates():
    md = render_markdown(crafted_results(), manifest())
    lines = md.splitlines()
    header = next(ln for ln in lines if ln.startswith("| model |"))
    assert "Δ vs fp32 pts" in header and header.rstrip(" |").endswith("stage")
    ptq = next(
        ln
        for ln in lines
        if "| student-tflite-int8 | tflite | int8 | host | host-cpu |" in ln and "ptq" in ln
    )
    assert "| -1.50 |" in ptq
    est = next(ln for ln in lines if "| student-tflite-int8 | tflite | int8 | android |" in ln)
    assert "~6.50 (estimated)" in est and "| estimated |" in est
    assert "not measurements" in md  # the footnote on estimates
    assert "`" + "ff" * 32 + "`" not in md  # stage output hashes are only in the HTML
    assert "torch: 2.13.0+cpu" in md


def test_pareto_front_matches_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        pts = [(rng.randint(1, 8), rng.randint(1, 8)) for _ in range(rng.randint(1, 9))]
        pts = list(dict.fromkeys(pts))  # distinct points
        expected = {
            i
            for i, (lat, acc) in enumerate(pts)
            if not any(l2 <= lat and a2 >= acc and (l2, a2) != (lat, acc) for l2, a2 in pts)
        }
        front = pareto_front([(float(a), float(b)) for a, b in pts])
        assert set(front) == expected
        assert [pts[i][0] for i in front] == sorted(pts[i][0] for i in front)


def test_loss_terms_skip_step_and_lr():
    terms = loss_terms(
        {"history": [{"step": 10, "lr": 0.1, "a": 1.0, "b": None}, {"step": 20, "lr": 0.1, "a": 0.5}]}
    )
    assert terms == {"a": ([10.0, 20.0], [1.0, 0.5])}


# ------------------------------------------------------------------------------------------------ html
class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.urls, self.scripts = [], [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href", "action"):
            if key in a:
                self.urls.append(a[key])


def test_html_is_self_contained_with_decodable_plots():
    page = render_html(crafted_results(), manifest(), histories(), {"distill": {"train": {"lr": 0.1}}})
    p = _Collect()
    p.feed(page)
    assert p.scripts == 0
    assert len(p.imgs) == 3  # ROC, accuracy vs latency, training curves
    assert all(u.startswith("data:image/png;base64,") for u in p.urls)
    for img in p.imgs:
        data = base64.b64decode(img["src"].split(",", 1)[1])
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "PNG" and im.width > 200 and im.height > 200
    assert not re.search(r"https?://", page)
    assert "estimated" in page and "abc123" in page and "ff" * 32 in page and "2.13.0+cpu" in page


def test_write_reports_on_a_run_folder(tmp_path):
    run = tmp_path / "run"
    (run / "measure").mkdir(parents=True)
    (run / "measure" / "results.json").write_text(json.dumps(crafted_results()))
    (run / "manifest.json").write_text(json.dumps(manifest()))
    for stage, h in histories().items():
        (run / stage).mkdir()
        (run / stage / "history.json").write_text(json.dumps(h))
    (run / "run.json").write_text(json.dumps({"config": {"seed_marker": 12345}}))
    names = write_reports(run, tmp_path / "out")
    assert names == ["report.md", "report.html"]
    page = (tmp_path / "out" / "report.html").read_text()
    assert "seed_marker" in page and "qat: loss terms" not in page  # titles live inside the PNG
    assert (tmp_path / "out" / "report.md").read_text().startswith("# facekd run report (target: android)")
    assert not list((tmp_path / "out").glob(".*"))  # no temp files left


# ------------------------------------------------------------------------------------------- chromium
PROBE = """<script>
window.__probe = {errors: []};
window.addEventListener('error', function (e) {
  var t = e.target || {};
  window.__probe.errors.push('error: ' + (e.message || (t.tagName + ' ' + String(t.src || '').slice(0, 60))));
}, true);
document.addEventListener('securitypolicyviolation', function (e) {
  window.__probe.errors.push('csp: ' + e.violatedDirective + ' ' + e.blockedURI);
});
['error', 'warn'].forEach(function (k) {
  var orig = console[k];
  console[k] = function () {
    window.__probe.errors.push(k + ': ' + Array.from(arguments).join(' '));
    orig.apply(console, arguments);
  };
});
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var decoded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var found = {imgs: imgs.length, decoded: decoded, errors: window.__probe.errors};
  document.title = 'PROBE' + JSON.stringify(found);
});
</script>"""


def _render_in_chromium(page: str, tmp_path: Path) -> tuple[dict, str]:
    """Open ``page`` (with the probe added and inline scripts allowed) and return the probe's findings."""
    page = page.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';")
    page = page.replace("<head>", "<head>" + PROBE, 1)
    path = tmp_path / "probe.html"
    path.write_text(page)
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
        "--dump-dom",
        path.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r"<title>PROBE(.*?)</title>", proc.stdout, re.S)
    assert m, f"probe did not run; chromium rc={proc.returncode}\n{proc.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1))), proc.stderr


@pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium not installed (.ci/run installs it: apt-get install chromium)"
)
def test_report_renders_in_headless_chromium_without_errors(tmp_path):
    page = render_html(crafted_results(), manifest(), histories(), {"k": 1})
    probe, stderr = _render_in_chromium(page, tmp_path)
    assert probe == {"imgs": 3, "decoded": 3, "errors": []}
    console = [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]
    assert not console, console


@pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium not installed (.ci/run installs it: apt-get install chromium)"
)
def test_chromium_probe_catches_a_broken_image_and_an_external_url(tmp_path):
    """The control: the probe above must be able to fail."""
    page = render_html(crafted_results(), manifest(), {}, None)  # no history: 2 plots
    page = page.replace(
        "</body>", '<img src="data:image/png;base64,AAAA"><img src="http://127.0.0.1:9/x.png"></body>'
    )
    probe, _ = _render_in_chromium(page, tmp_path)
    assert probe["imgs"] == 4 and probe["decoded"] == 2
    assert any(e.startswith("csp:") for e in probe["errors"])  # the report's CSP blocked the fetch


def test_qat_against_ptq_pair_by_pair():
    """The report says how QAT and PTQ differ on the pairs themselves, from each row's wrong pairs."""
    results = crafted_results()

    def int8_row(stage, wrong):
        sets = {"v": {"roc": _roc(0.4), "pairs": 20, "wrong_pairs": wrong}}
        return _row(
            f"student-{stage}-pytorch-int8",
            "pytorch",
            "int8",
            stage=stage,
            role=f"student-{stage}",
            sets=sets,
        )

    # PTQ wrong on 1, 2, 3; QAT on 3, 4, 5, 6: QAT alone right on 1, 2; PTQ alone right on 4, 5, 6
    results["rows"] += [int8_row("ptq", [1, 2, 3]), int8_row("qat", [3, 4, 5, 6])]
    md = render_markdown(results, manifest())
    line = next(ln for ln in md.splitlines() if ln.startswith("QAT − PTQ"))
    assert "-5.00 points on 20 pairs" in line and "disagree on 5 (QAT right on 2, PTQ on 3)" in line
    assert "p = 1.00 (within noise)" in line  # 2 x P(Bin(5, 1/2) <= 2) = 1
    assert "QAT − PTQ" in render_html(results, manifest(), histories(), {"k": 1})
    for row in results["rows"][-2:]:  # results written before rows kept their wrong pairs: no line
        del row["sets"]["v"]["wrong_pairs"]
    assert "QAT − PTQ" not in render_markdown(results, manifest())
