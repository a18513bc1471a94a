"""The runner interface: prepare -> run_latency -> run_accuracy -> collect, the same for every device.

A runner measures one artifact file where it is deployed (this machine, a Jetson over ssh, a phone over
adb). Its results carry ``measured_on`` (e.g. ``jetson-orin-nano (ssh)``) so a number never loses where
it came from, and the raw tool output is kept as files (``raw_log``) in the caller's log folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class DeviceError(RuntimeError):
    """The device could not do what was asked (unreachable, refused, timed out, tool failed)."""


class DeviceUnreachable(DeviceError):
    """No connection to the device (refused, timed out, no route) after the allowed retries."""


class HostKeyError(DeviceError):
    """The ssh host key is unknown or does not match the known_hosts file: refused, never bypassed."""


class DeviceTimeout(DeviceError):
    """A command on (or to) the device did not finish within its time limit and was killed."""


class AccuracyUnavailable(DeviceError):
    """The device has no way to produce embeddings (e.g. no Python on a stock phone)."""


@dataclass
class LatencyResult:
    """Milliseconds per call on the device, plus how they were measured."""

    p50: float
    p90: float | None  # None where the tool does not print it (benchmark_model: p5/median/p95 only)
    p99: float | None
    mean: float
    measured_on: str
    tool: str  # "trtexec", "harness onnxruntime 1.x", "benchmark_model", ...
    runs: int
    warmup: int | str  # a count, or a duration such as "500 ms" for trtexec
    threads: int | None = None
    batch_size: int | None = None
    std: float | None = None
    p95: float | None = None
    min: float | None = None
    max: float | None = None
    peak_memory_mb: float | None = None
    raw_log: str | None = None  # local path of the tool's raw output
    extra: dict[str, Any] = field(default_factory=dict)  # power, clocks, delegate, ...

    @classmethod
    def from_stats(cls, stats: Any, *, measured_on: str, tool: str, **more: Any) -> LatencyResult:
        """From a :class:`devices.latency.LatencyStats` (timed by this project, locally or by the harness)."""
        return cls(
            p50=stats.p50,
            p90=stats.p90,
            p99=stats.p99,
            mean=stats.mean,
            std=stats.std,
            min=stats.min,
            max=stats.max,
            measured_on=measured_on,
            tool=tool,
            runs=stats.runs,
            warmup=stats.warmup,
            threads=stats.threads,
            batch_size=stats.batch_size,
            **more,
        )

    def latency_ms(self) -> dict[str, float]:
        keys = ("p50", "p90", "p95", "p99", "mean", "std", "min", "max")
        return {k: round(float(getattr(self, k)), 4) for k in keys if getattr(self, k) is not None}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AccuracyResult:
    """Embeddings computed on the device for the images given, in order."""

    embeddings: np.ndarray
    measured_on: str
    runtime: str
    raw_log: str | None = None


class Runner(ABC):
    """One device connection measuring one artifact at a time.

    Use as a context manager (or call ``close``) so remote folders are removed even on errors.
    """

    label: str  # measured_on label, e.g. "jetson-orin-nano (ssh)"

    @abstractmethod
    def prepare(self, artifact: Path, *, precision: str | None = None) -> None:
        """Make ``artifact`` ready to run on the device (copy, build an engine, ...)."""

    @abstractmethod
    def run_latency(
        self, *, warmup: int, runs: int, threads: int | None = None, batch_size: int = 1
    ) -> LatencyResult:
        """Time single calls after ``warmup`` untimed ones."""

    @abstractmethod
    def run_accuracy(self, images: np.ndarray) -> AccuracyResult:
        """Embeddings of float32 NCHW images (already normalised) computed on the device."""

    @abstractmethod
    def collect(self) -> dict[str, Any]:
        """Device facts and log paths gathered so far; removes the device-side work folder."""

    def close(self) -> None:
        """Release the device (idempotent); by default the same clean-up as ``collect``."""
        self.collect()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------ subprocesses
@dataclass
class CommandResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run_command(
    argv: Sequence[str], *, timeout: float, input_text: str | None = None, env: dict | None = None
) -> CommandResult:
    """Run ``argv`` with a hard time limit; on timeout the whole process group is killed.

    A new session keeps ``ssh``/``adb`` and anything they spawn in one group, so a hanging command
    cannot outlive its limit. Raises DeviceTimeout naming the command and the limit.
    """
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
            env=env,
        )
    except FileNotFoundError as exc:
        raise DeviceError(f"'{argv[0]}' not found: install it or give its path") from exc
    try:
        out, err = proc.communicate(input=input_text, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        raise DeviceTimeout(
            f"'{short_command(argv)}' did not finish within {timeout:g} s and was killed"
        ) from None
    return CommandResult(list(argv), proc.returncode, out, err, time.monotonic() - start)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this call created (start_new_session)
    except ProcessLookupError:
        pass


def short_command(argv: Sequence[str], limit: int = 160) -> str:
    text = " ".join(str(a) for a in argv)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def last_line(text: str) -> str:
    """The last non-empty line: where a Python traceback says what went wrong."""
    for line in reversed(text.strip().splitlines()):
        if line.strip():
            return line.strip()
    return ""


def write_log(log_dir: Path | None, name: str, text: str) -> str | None:
    """Keep a raw tool output in the run's log folder (atomic write); returns its path."""
    if log_dir is None:
        return None
    from distill.atomic import write_text

    path = Path(log_dir) / name
    write_text(path, text)
    return str(path)
