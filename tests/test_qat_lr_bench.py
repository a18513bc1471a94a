"""benchmarks/qat_lr.py's table: one row per (epochs, lr, fp32 anchor), values by hand, old records read."""

from __future__ import annotations

from benchmarks.qat_lr import cell_name, table


def _record(lr: float, seed: int, accuracy: float, anchor: float | None = None, epochs: float | None = None):
    record = {"lr": lr, "seed": seed, "steps": 34, "accuracy": accuracy}
    if anchor is not None:
        record["fp32_anchor"] = anchor
    if epochs is not None:
        record["epochs"] = epochs
    return record


def test_rows_group_by_setting_and_compare_with_ptq_by_hand():
    records = [
        _record(0.0005, 0, 0.85),  # written before the anchor axis: anchor 0, epochs 0.3
        _record(0.0005, 1, 0.86, anchor=0.0),
        _record(0.0005, 0, 0.87, anchor=10.0),
        _record(0.0005, 1, 0.85, anchor=10.0),
    ]
    lines = table(records, {"accuracy": 0.855})
    assert len(lines) == 4  # header, rule, two settings
    plain, anchored = lines[2], lines[3]
    # anchor 0: mean 85.50, sd of (85, 86) = 0.71, 85.50 - 85.50 = +0.00, seed 1 at or above PTQ
    assert plain == "| 0.3 | 34 | 0.0005 | 0 | 2 | 85.50 ± 0.71 | s0 85.00, s1 86.00 | +0.00 | 1 of 2 |"
    # anchor 10: mean 86.00, sd of (87, 85) = 1.41, +0.50 over PTQ 85.50, seed 0 at or above
    assert anchored == "| 0.3 | 34 | 0.0005 | 10 | 2 | 86.00 ± 1.41 | s0 87.00, s1 85.00 | +0.50 | 1 of 2 |"


def test_record_names_keep_the_old_ones_for_the_default_axes():
    assert cell_name(0.0005, 2, 0.3) == "lr0.0005_seed2"
    assert cell_name(0.0005, 2, 0.6) == "ep0.6_lr0.0005_seed2"
    assert cell_name(0.0005, 2, 0.3, anchor=10.0) == "anchor10_lr0.0005_seed2"
