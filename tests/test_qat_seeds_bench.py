"""benchmarks/qat_seeds.py reads what stage two wrote, pair by pair, without running anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.qat_seeds import held_out_fields, held_out_table, seed_row, summary, table


def _stage_two(run: Path, seed: int, wrong_ptq: list[int], wrong_qat: list[int], shipped: str) -> Path:
    qat = run / "qat"
    qat.mkdir(parents=True)
    pairs = 20

    def fields(wrong: list[int]) -> dict:
        return {
            "val_set": "v",
            "sets": {"v": {"accuracy": 1 - len(wrong) / pairs, "pairs": pairs, "wrong_pairs": wrong}},
        }

    models = {"ptq": fields(wrong_ptq), "qat": fields(wrong_qat)}
    (qat / "evaluation.json").write_text(json.dumps({"models": models}))
    selection = {"rule": "best_on_dev", "dev_accuracy": {"ptq": 0.8, "qat": 0.85}}
    record = {"calibration": {"images": 256, "seed": seed}, "shipped": shipped, "selection": selection}
    (qat / "qat.json").write_text(json.dumps(record))
    return run


def test_rows_and_summary_by_hand(tmp_path):
    # seed 0: QAT wrong on 1, 2, 3; PTQ on 3, 4 -> only PTQ right on 1, 2; only QAT right on 4
    a = seed_row(_stage_two(tmp_path / "a", 0, wrong_ptq=[3, 4], wrong_qat=[1, 2, 3], shipped="qat"))
    assert (a["seed"], a["only_qat_right"], a["only_ptq_right"]) == (0, 1, 2)
    assert a["qat_minus_ptq_points"] == pytest.approx(-5.0)  # 17/20 against 18/20
    assert a["p_value"] == pytest.approx(
        1.0
    )  # 1 against 2 of 3 discordant pairs: 2 * P(X <= 1) = 2 * 4/8 -> 1
    assert (a["dev_ptq"], a["dev_qat"], a["shipped"]) == (0.8, 0.85, "qat")
    b = seed_row(_stage_two(tmp_path / "b", 7, wrong_ptq=[5], wrong_qat=[], shipped="ptq"))
    assert (b["seed"], b["only_qat_right"], b["only_ptq_right"], b["qat_minus_ptq_points"]) == (7, 1, 0, 5.0)
    s = summary([a, b])
    assert s == {
        "seeds": 2,
        "qat_at_least_ptq_on_val": 1,
        "mean_qat_minus_ptq_points": 0.0,
        "only_qat_right_total": 2,
        "only_ptq_right_total": 2,
        "qat_shipped": 1,
    }
    rows = table([a, b])
    assert rows[2].startswith("| 0 | 90.00 | 85.00 | -5.00 | 1 / 2 | 1.000 | 80.00 / 85.00 | qat.pt |")


def test_held_out_columns_by_hand():
    # 10 pairs: PTQ wrong on 0, 1, 2; QAT wrong on 2, 3 -> only QAT right on 0, 1; only PTQ right on 3
    scores = {
        "set": "synth_test",
        "pairs": 10,
        "ptq": {"accuracy": 0.7, "wrong_pairs": [0, 1, 2]},
        "qat": {"accuracy": 0.8, "wrong_pairs": [2, 3]},
    }
    f = held_out_fields(scores)
    assert (f["held_out_only_qat_right"], f["held_out_only_ptq_right"]) == (2, 1)
    assert f["held_out_p_value"] == pytest.approx(1.0)  # 2 against 1 of 3: 2 * P(X <= 1) = 2 * 4/8
    rows = [{"seed": 0, **f}, {"seed": 1, **f, "held_out_qat": 0.65}]
    lines = held_out_table(rows)
    assert lines[2] == "| 0 | 70.00 | 80.00 | +10.00 | 2 / 1 | 1.000 |"
    assert lines[-1] == "On `synth_test` (10 pairs): QAT >= PTQ in 1 of 2 seeds, mean +2.50 points."
