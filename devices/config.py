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
    flip: bool = True


def validate_measure(m: MeasureConfig) -> None:
    if m.runs < 1:
        raise InputError(f"measure.runs: must be >= 1, got {m.runs}")
    if m.rounds < 1:
        raise InputError(f"measure.rounds: must be >= 1, got {m.rounds}")
