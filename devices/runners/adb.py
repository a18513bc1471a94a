"""Android phone over adb: the exact .tflite timed by LiteRT's ``benchmark_model`` on the phone.

The user gives the ``benchmark_model`` binary (LiteRT's android_aarch64 build; it cannot be downloaded
from this workplace). Sequence, always with ``adb -s SERIAL``: ``get-state``, ``getprop`` (model, Android
version, SoC), ``mktemp -d`` under /data/local/tmp, ``push`` model + binary, ``chmod``, one
``benchmark_model`` run with fixed threads and delegate, ``rm -rf`` of the folder in a ``finally``.
The log is parsed (devices/benchmark_model.py) and checked for a silent fallback to the CPU.

Accuracy on the phone needs a Python with numpy and LiteRT there (e.g. Termux; ``remote_python``);
a stock phone has none, so ``run_accuracy`` raises AccuracyUnavailable and the row keeps the host's
accuracy of the same file, labelled as such. This runner has not been run against a real phone here:
its command sequence is tested with a fake ``adb``.
"""

from __future__ import annotations

import re
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from devices.benchmark_model import DELEGATE_NAMES, check_delegate, parse_benchmark_model
from devices.runners.base import (
    AccuracyResult,
    AccuracyUnavailable,
    CommandResult,
    DeviceError,
    DeviceUnreachable,
    LatencyResult,
    Runner,
    first_line,
    last_line,
    run_command,
    write_log,
)
from distill.errors import InputError

HARNESS = Path(__file__).resolve().parent.parent / "harness.py"
PROPS = {
    "model": "ro.product.model",
    "android": "ro.build.version.release",
    "soc": "ro.soc.model",
    "soc_manufacturer": "ro.soc.manufacturer",
    "abi": "ro.product.cpu.abi",
}
_UNREACHABLE = ("not found", "no devices", "offline", "unauthorized", "no emulators", "device still")


@dataclass
class AdbOptions:
    serial: str
    benchmark_model: Path  # local path of the user's LiteRT benchmark_model binary
    adb: str = "adb"
    delegate: str = "xnnpack"  # cpu | xnnpack | gpu | nnapi
    taskset: str | None = None  # CPU mask for `taskset`, e.g. "f0" for the big cores
    require_full_delegation: bool = False  # make benchmark_model fail instead of falling back
    gpu_precision_loss_allowed: bool | None = None  # None: the tool's default
    remote_base: str = "/data/local/tmp"
    remote_python: str | None = None  # Python with numpy + LiteRT on the phone, for on-device accuracy
    command_timeout: float = 600.0
    transfer_timeout: float = 300.0


def benchmark_flags(delegate: str, options: AdbOptions) -> list[str]:
    """benchmark_model flags selecting the delegate (``cpu`` turns the default XNNPACK off)."""
    if delegate not in DELEGATE_NAMES:
        raise InputError(f"--delegate: '{delegate}' is not one of {', '.join(DELEGATE_NAMES)}")
    flags = {
        "cpu": ["--use_xnnpack=false"],
        "xnnpack": ["--use_xnnpack=true"],
        "gpu": ["--use_gpu=true"],
        "nnapi": ["--use_nnapi=true"],
    }[delegate]
    if delegate == "gpu" and options.gpu_precision_loss_allowed is not None:
        flags.append(f"--gpu_precision_loss_allowed={str(options.gpu_precision_loss_allowed).lower()}")
    if options.require_full_delegation and delegate in ("gpu", "nnapi"):
        flags.append("--require_full_delegation=true")
    return flags


class AdbRunner(Runner):
    def __init__(self, device_name: str, options: AdbOptions, *, log_dir: Path | None = None):
        if not options.serial or options.serial.startswith("-"):
            raise InputError(f"--adb-serial: '{options.serial}' is not a device serial")
        if not Path(options.benchmark_model).is_file():
            raise InputError(f"--benchmark-model: {options.benchmark_model} not found")
        if options.delegate not in DELEGATE_NAMES:
            raise InputError(f"--delegate: '{options.delegate}' is not one of {', '.join(DELEGATE_NAMES)}")
        if options.taskset is not None and not re.fullmatch(r"[0-9a-fA-F]+", options.taskset):
            raise InputError(f"--taskset: '{options.taskset}' is not a hexadecimal CPU mask")
        if not re.fullmatch(r"/[A-Za-z0-9_./-]+", options.remote_base):
            raise InputError(f"remote_base '{options.remote_base}' must be a plain absolute path")
        self.device_name = device_name
        self.options = options
        self.label = f"{device_name} (adb)"
        # Raw logs are kept; without a run folder they go to a temp folder made on first use.
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.props: dict[str, str] | None = None
        self.workdir: str | None = None
        self.artifact: Path | None = None
        self.logs: list[str] = []
        self.notes: list[str] = []

    # ------------------------------------------------------------------------------------------ adb
    def adb(self, *args: str, timeout: float | None = None, check: bool = True) -> CommandResult:
        argv = [self.options.adb, "-s", self.options.serial, *args]
        result = run_command(argv, timeout=timeout or self.options.command_timeout)
        if check and result.returncode != 0:
            text = (result.stderr + result.stdout).strip()
            if any(s in text.lower() for s in _UNREACHABLE) and args and args[0] in ("get-state", "shell"):
                raise DeviceUnreachable(f"adb device '{self.options.serial}': {first_line(text)}")
            raise DeviceError(
                f"adb -s {self.options.serial} {args[0]} failed (exit {result.returncode}): "
                f"{first_line(text)}"
            )
        return result

    def shell(self, command: str, **kw: Any) -> CommandResult:
        """One ``adb shell`` call; the command is a single string run by the phone's sh."""
        return self.adb("shell", command, **kw)

    def device_properties(self) -> dict[str, str]:
        if self.props is None:
            quick = min(30.0, self.options.command_timeout)
            state = self.adb("get-state", timeout=quick).stdout.strip()
            if state != "device":
                raise DeviceUnreachable(f"adb device '{self.options.serial}' is '{state}', not 'device'")
            script = "; ".join(f'echo "{k}=$(getprop {p})"' for k, p in PROPS.items())
            out = self.shell(script, timeout=quick).stdout
            props = {}
            for line in out.splitlines():
                key, sep, value = line.partition("=")
                if sep and key in PROPS:
                    props[key] = value.strip()
            self.props = props
        return self.props

    # -------------------------------------------------------------------------------------- prepare
    def prepare(self, artifact: Path, *, precision: str | None = None) -> None:
        artifact = Path(artifact)
        if not artifact.is_file():
            raise InputError(f"{artifact}: artifact file not found")
        if artifact.suffix.lower() != ".tflite":
            raise InputError(f"{artifact}: the adb runner takes .tflite files, got '{artifact.suffix}'")
        self.device_properties()
        self._cleanup_remote()
        self.artifact = artifact
        out = self.shell(f"mktemp -d {self.options.remote_base}/facekd.XXXXXXXX", timeout=30).stdout.strip()
        if not re.fullmatch(re.escape(self.options.remote_base) + r"/facekd\.[A-Za-z0-9]+", out):
            raise DeviceError(f"adb device '{self.options.serial}': mktemp -d returned {out!r}")
        self.workdir = out
        t = self.options.transfer_timeout
        self.adb("push", str(artifact), f"{out}/model.tflite", timeout=t)
        self.adb("push", str(self.options.benchmark_model), f"{out}/benchmark_model", timeout=t)
        self.shell(f"chmod 755 {out}/benchmark_model", timeout=30)

    # -------------------------------------------------------------------------------------- latency
    def benchmark_argv(self, *, warmup: int, runs: int, threads: int) -> list[str]:
        wd = self.workdir
        argv = [f"{wd}/benchmark_model", f"--graph={wd}/model.tflite", f"--num_threads={int(threads)}"]
        argv += [f"--warmup_runs={int(warmup)}", f"--num_runs={int(runs)}"]
        argv += ["--report_peak_memory_footprint=true"]
        argv += benchmark_flags(self.options.delegate, self.options)
        if self.options.taskset:
            argv = ["taskset", self.options.taskset, *argv]
        return argv

    def run_latency(
        self, *, warmup: int, runs: int, threads: int | None = None, batch_size: int = 1
    ) -> LatencyResult:
        if self.workdir is None or self.artifact is None:
            raise RuntimeError("prepare() first")
        if runs < 1 or warmup < 0:
            raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
        threads = threads or 4
        argv = self.benchmark_argv(warmup=warmup, runs=runs, threads=threads)
        result = self.shell(" ".join(shlex.quote(a) for a in argv), check=False)
        text = result.stdout + result.stderr
        raw = self._log("benchmark_model.log", text)
        if result.returncode != 0:
            raise DeviceError(
                f"benchmark_model failed on '{self.options.serial}' (exit {result.returncode}): "
                f"{_last_error(text)}; see {raw}"
            )
        try:
            parsed = parse_benchmark_model(text)
        except InputError as exc:
            raise DeviceError(f"{exc}; see {raw}") from exc
        lat = parsed.latency_ms()
        if "p50" not in lat or "mean" not in lat:
            raise DeviceError(f"benchmark_model printed no median/avg (a pre-2021 build?); see {raw}")
        delegate = check_delegate(parsed, self.options.delegate)
        if delegate.fell_back_to_cpu:
            self.notes.append(f"delegate fallback: {delegate.detail}")
        return LatencyResult(
            p50=lat["p50"],
            p90=None,
            p99=None,
            p95=lat.get("p95"),
            mean=lat["mean"],
            std=lat.get("std"),
            min=lat.get("min"),
            max=lat.get("max"),
            measured_on=self.label,
            tool="benchmark_model",
            runs=parsed.inference.count,
            warmup=warmup,
            threads=parsed.num_threads or threads,
            batch_size=None,  # the .tflite's own input shape
            peak_memory_mb=parsed.peak_memory_mb or parsed.memory_overall_mb,
            raw_log=raw,
            extra={
                "delegate": delegate.to_dict(),
                "percentiles_note": "benchmark_model prints p5/median/p95 only: no p90/p99",
                "init_ms": None if parsed.init_us is None else parsed.init_us / 1000.0,
                "first_inference_ms": None
                if parsed.first_inference_us is None
                else parsed.first_inference_us / 1000.0,
                "memory_mb": {"init": parsed.memory_init_mb, "overall": parsed.memory_overall_mb},
                "device": dict(self.props or {}),
                "taskset": self.options.taskset,
            },
        )

    # ------------------------------------------------------------------------------------- accuracy
    def run_accuracy(self, images: np.ndarray) -> AccuracyResult:
        if self.workdir is None:
            raise RuntimeError("prepare() first")
        py = self.options.remote_python
        if not py:
            raise AccuracyUnavailable(
                f"{self.label}: benchmark_model cannot return embeddings and no Python is configured on the "
                "phone (remote_python); accuracy is the host's run of the same .tflite"
            )
        x = np.ascontiguousarray(images, dtype=np.float32)
        wd = self.workdir
        t = self.options.transfer_timeout
        with tempfile.TemporaryDirectory() as tmp:
            local_in, local_out = Path(tmp) / "images.npy", Path(tmp) / "embeddings.npy"
            np.save(local_in, x, allow_pickle=False)
            self.adb("push", str(HARNESS), f"{wd}/harness.py", timeout=t)
            self.adb("push", str(local_in), f"{wd}/images.npy", timeout=t)
            cmd = (
                f"cd {wd} && {shlex.quote(py)} harness.py embed --model model.tflite --images images.npy "
                "--out embeddings.npy"
            )
            result = self.shell(cmd, check=False)
            log = self._log("harness-embed.log", result.stdout + result.stderr)
            if result.returncode != 0:
                raise DeviceError(f"{self.label}: harness embed failed: {last_line(result.stderr)}")
            self.adb("pull", f"{wd}/embeddings.npy", str(local_out), timeout=t)
            self.shell(f"rm -f {wd}/images.npy {wd}/embeddings.npy", check=False)
            emb = np.load(local_out, allow_pickle=False)
        if emb.ndim != 2 or emb.shape[0] != x.shape[0]:
            raise DeviceError(f"{self.label}: got embeddings of shape {emb.shape} for {x.shape[0]} images")
        return AccuracyResult(emb, measured_on=self.label, runtime=f"harness via {py}", raw_log=log)

    # -------------------------------------------------------------------------------------- collect
    def collect(self) -> dict[str, Any]:
        info = {
            "measured_on": self.label,
            "serial": self.options.serial,
            "device": dict(self.props or {}),
            "delegate": self.options.delegate,
            "notes": list(self.notes),
            "logs": list(self.logs),
            "log_dir": None if self.log_dir is None else str(self.log_dir),
        }
        self._cleanup_remote()
        return info

    def close(self) -> None:
        self._cleanup_remote()

    def _cleanup_remote(self) -> None:
        if self.workdir is None:
            return
        wd, self.workdir = self.workdir, None
        assert wd.startswith(self.options.remote_base + "/facekd.")
        try:
            self.shell(f"rm -rf {wd}", timeout=60, check=False)
        except DeviceError as exc:  # never mask the error that got us here
            self.notes.append(f"could not remove {wd} on the phone: {exc}")

    def _log(self, name: str, text: str) -> str:
        stem = self.artifact.stem if self.artifact else "artifact"
        if self.log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix="facekd-adb-"))
        path = write_log(self.log_dir, f"{stem}.{self.device_name}.{name}", text)
        assert path is not None
        self.logs.append(path)
        return path


def _last_error(text: str) -> str:
    errors = [ln.strip() for ln in text.splitlines() if "ERROR" in ln or "error" in ln]
    return errors[-1] if errors else first_line(text) or "no output"
