"""Measure settings: host threads, latency rounds, flip fusion."""

from __future__ import annotations

from dataclasses import dataclass

from distill.errors import InputError


@dataclass
class MeasureConfig:
    """How artifacts are measured on the host."""

    threads: int = 2
    warmup: int = 10
    runs: int = 100
    rounds: int = 5  # latency of all models measured in turns, this many rounds (devices/latency.py)
    latency_budget_s: float = 30.0  # no new round once the host latency pass took this long (0: no limit)
    flip: bool = True


def validate_measure(m: MeasureConfig) -> None:
    if m.runs < 1:
        raise InputError(f"measure.runs: must be >= 1, got {m.runs}")
    if m.latency_budget_s < 0:
        raise InputError(f"measure.latency_budget_s: must be >= 0 (0 = no limit), got {m.latency_budget_s}")
    if m.rounds < 1:
        raise InputError(f"measure.rounds: must be >= 1, got {m.rounds}")
