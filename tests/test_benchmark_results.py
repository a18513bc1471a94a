"""Benchmark result files: a re-run rewrites the table and keeps a person's notes below the marker."""

from __future__ import annotations

import json

from benchmarks.eval_twin import NOTES_MARKER, write_results


def test_rewrite_keeps_the_notes_below_the_marker(tmp_path, capsys):
    out = tmp_path / "bench"
    write_results(out, {"n": 1}, "# Bench", ["| a |", "|---|", "| 1 |"])
    assert (tmp_path / "bench.md").read_text() == "# Bench\n\n| a |\n|---|\n| 1 |\n"  # no notes yet
    md = tmp_path / "bench.md"
    md.write_text(md.read_text() + f"\n{NOTES_MARKER}\n\n**Reading**: 1 is the default.\n")
    write_results(out, {"n": 2}, "# Bench", ["| a |", "|---|", "| 2 |"])
    text = md.read_text()
    assert text.startswith("# Bench\n\n| a |\n|---|\n| 2 |\n") and "| 1 |" not in text
    assert text.endswith(f"\n{NOTES_MARKER}\n\n**Reading**: 1 is the default.\n")
    assert json.loads((tmp_path / "bench.json").read_text()) == {"n": 2}
    assert "| 2 |" in capsys.readouterr().out
