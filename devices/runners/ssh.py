"""Jetson (or any Linux box) over ssh, with the system ``ssh``/``scp`` binaries (no paramiko).

Security and robustness, every call: ``BatchMode=yes`` (key auth only, never a prompt),
``StrictHostKeyChecking=yes`` against the given known_hosts file (an unknown or changed host key is an
error, never accepted), ``ConnectTimeout``/``ServerAliveInterval``, a hard time limit per command (the
process group is killed), bounded retries only when the connection itself failed, and a remote work
folder from ``mktemp -d`` that is removed in a ``finally``.

What runs on the device is decided by a capability probe: with ``trtexec`` (TensorRT 10/11) the engine
is built there from the ONNX and timed with trtexec (command lines and parser from deploy.tensorrt),
with ``nvpmodel -q``, ``jetson_clocks --show`` and ``tegrastats`` power recorded around the run;
otherwise devices/harness.py times the ONNX with onnxruntime. Accuracy always goes through the harness:
images go over as .npy, embeddings come back as .npy.
"""

from __future__ import annotations

import json
import re
import shlex
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devices.runners.base import (
    AccuracyResult,
    AccuracyUnavailable,
    CommandResult,
    DeviceError,
    DeviceUnreachable,
    HostKeyError,
    LatencyResult,
    Runner,
    first_line,
    last_line,
    run_command,
    short_command,
    write_log,
)
from distill.errors import InputError

HARNESS = Path(__file__).resolve().parent.parent / "harness.py"
JETPACK_TRT_DIR = "/usr/src/tensorrt/bin"  # JetPack puts trtexec here, not on PATH
REMOTE_PREFIX = "/tmp/facekd."

_RETRYABLE = (
    "connection refused",
    "connection timed out",
    "operation timed out",
    "no route to host",
    "network is unreachable",
    "connection reset",
    "connection closed",
    "kex_exchange_identification",
    "broken pipe",
)
_HOST_KEY = (
    "host key verification failed",
    "remote host identification has changed",
    "no matching host key",
)


@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str | None = None
    port: int = 22

    @property
    def destination(self) -> str:
        """``user@host`` for ssh (which takes the port separately)."""
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def scp_destination(self) -> str:
        """scp needs brackets around an IPv6 address before ``:path``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" if self.user else host

    def __str__(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"


def parse_ssh_target(text: str) -> SshTarget:
    """``user@host``, ``user@host:port``, ``host``, ``user@[::1]:2222`` -> SshTarget."""
    raw = text.strip()
    user = None
    if "@" in raw:
        user, raw = raw.rsplit("@", 1)
        if not user:
            raise InputError(f"--ssh: empty user name in '{text}'")
    port = 22
    if raw.startswith("["):
        host, _, rest = raw[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise InputError(f"--ssh: cannot read '{text}' (expected user@[v6addr]:port)")
            port = _port(rest[1:], text)
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
        port = _port(port_text, text)
    else:
        host = raw
    if not host or any(c.isspace() for c in host) or host.startswith("-"):
        raise InputError(f"--ssh: '{text}' has no valid host name")
    return SshTarget(host=host, user=user, port=port)


def _port(value: str, text: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise InputError(f"--ssh: port '{value}' in '{text}' is not a number in 1..65535")
    return int(value)


@dataclass
class SshOptions:
    """How to reach the device; every field has a safe default except the host key file."""

    known_hosts: Path | None = None  # None: ~/.ssh/known_hosts (still strict)
    key: Path | None = None
    connect_timeout: int = 10
    command_timeout: float = 600.0  # per remote command (latency runs, harness)
    build_timeout: float = 1800.0  # trtexec engine build on a small Jetson can take minutes
    transfer_timeout: float = 600.0
    retries: int = 2  # extra attempts, only when the connection itself failed
    retry_backoff_s: float = 1.0
    server_alive_interval: int = 5
    config_file: str | None = None  # ssh -F (e.g. "none" to ignore ~/.ssh/config)
    remote_python: str = "python3"
    extra_path: tuple[str, ...] = (JETPACK_TRT_DIR,)  # appended to PATH on the device
    use_trtexec: bool = True
    trtexec_warmup_ms: int = 500
    power_interval_ms: int = 100


class SshClient:
    """ssh/scp with the options above; raises HostKeyError, DeviceUnreachable, DeviceTimeout, DeviceError."""

    def __init__(self, target: SshTarget, options: SshOptions):
        self.target = target
        self.options = options
        for name in ("key", "known_hosts"):
            p = getattr(options, name)
            if p is not None and not Path(p).is_file():
                raise InputError(f"--{name.replace('_', '-')}: {p} not found")
        if options.retries < 0 or options.connect_timeout < 1:
            raise ValueError("retries must be >= 0 and connect_timeout >= 1")

    def _options(self) -> list[str]:
        o = self.options
        args = []
        if o.config_file is not None:
            args += ["-F", str(o.config_file)]
        opts = {
            "BatchMode": "yes",
            "StrictHostKeyChecking": "yes",
            "ConnectTimeout": str(int(o.connect_timeout)),
            "ServerAliveInterval": str(int(o.server_alive_interval)),
            "ServerAliveCountMax": "3",
            "ControlMaster": "no",  # a shared master would outlive our time limits
            "ControlPath": "none",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
        }
        if o.known_hosts is not None:
            opts["UserKnownHostsFile"] = str(Path(o.known_hosts).resolve())
        if o.key is not None:
            opts["IdentityFile"] = str(Path(o.key).resolve())
            opts["IdentitiesOnly"] = "yes"
        for k, v in opts.items():
            args += ["-o", f"{k}={v}"]
        return args

    def ssh_argv(self, command: str) -> list[str]:
        return ["ssh", *self._options(), "-p", str(self.target.port), self.target.destination, "--", command]

    def scp_argv(self, sources: list[str], dest: str) -> list[str]:
        return ["scp", "-q", *self._options(), "-P", str(self.target.port), *sources, dest]

    def remote(self, path: str) -> str:
        return f"{self.target.scp_destination}:{path}"

    def run(
        self, command: str, *, timeout: float | None = None, check: bool = True, input_text: str | None = None
    ) -> CommandResult:
        """Run a shell command on the device (retried only if the connection failed)."""
        if self.options.extra_path:
            path = ":".join(shlex.quote(p) for p in self.options.extra_path)
            command = f'PATH="$PATH:{path}"; export PATH; {command}'
        argv = self.ssh_argv(command)
        result = self._with_retries(argv, timeout or self.options.command_timeout, input_text, is_ssh=True)
        if check and result.returncode != 0:
            raise DeviceError(
                f"{self.target}: remote command failed (exit {result.returncode}): "
                f"{short_command([command], 120)}: {first_line(result.stderr) or first_line(result.stdout)}"
            )
        return result

    def put(self, local: list[Path], remote_dir: str, timeout: float | None = None) -> None:
        argv = self.scp_argv([str(p) for p in local], self.remote(remote_dir.rstrip("/") + "/"))
        self._transfer(argv, timeout)

    def get(self, remote_path: str, local: Path, timeout: float | None = None) -> None:
        self._transfer(self.scp_argv([self.remote(remote_path)], str(local)), timeout)

    def _transfer(self, argv: list[str], timeout: float | None) -> None:
        result = self._with_retries(argv, timeout or self.options.transfer_timeout, None, is_ssh=False)
        if result.returncode != 0:
            raise DeviceError(
                f"{self.target}: scp failed (exit {result.returncode}): {first_line(result.stderr)}"
            )

    def _with_retries(
        self, argv: list[str], timeout: float, input_text: str | None, *, is_ssh: bool
    ) -> CommandResult:
        attempts = 1 + self.options.retries
        for attempt in range(attempts):
            result = run_command(argv, timeout=timeout, input_text=input_text)
            failed = result.returncode == 255 if is_ssh else result.returncode != 0
            if not failed:
                return result
            error = self._classify(result.stderr)
            if error is None:
                return result  # the remote command itself failed: the caller decides
            if not isinstance(error, DeviceUnreachable) or attempt == attempts - 1:
                raise error
            time.sleep(self.options.retry_backoff_s * (2**attempt))
        raise AssertionError("unreachable")

    def _classify(self, stderr: str) -> DeviceError | None:
        """The connection-level error in ssh's stderr, or None if the connection was fine."""
        low = stderr.lower()
        known = self.options.known_hosts or "~/.ssh/known_hosts"
        if any(s in low for s in _HOST_KEY):
            return HostKeyError(
                f"{self.target}: host key verification failed against {known} (the device's key is "
                f"unknown or changed); check the device, then add its key, e.g. "
                f"ssh-keyscan -p {self.target.port} {self.target.host} >> {known}"
            )
        if "permission denied" in low:
            return DeviceError(
                f"{self.target}: key authentication refused ({first_line(stderr)}); "
                "check --key and the device's authorized_keys"
            )
        if "could not resolve hostname" in low:
            return DeviceUnreachable(f"{self.target}: {first_line(stderr)}")
        if any(s in low for s in _RETRYABLE):
            return DeviceUnreachable(
                f"{self.target}: cannot connect after {1 + self.options.retries} attempt(s): "
                f"{first_line(stderr)}"
            )
        return None


# ------------------------------------------------------------------------------------ capabilities
@dataclass
class Capabilities:
    """What the device offers, from one probe round-trip."""

    machine: str = ""
    cpu_count: int | None = None
    python: str | None = None
    harness: dict[str, Any] = field(default_factory=dict)  # harness.py probe output
    harness_error: str = ""
    trtexec: str | None = None
    tensorrt_version: str | None = None  # from trtexec's banner, e.g. "10.3.0"
    tegrastats: str | None = None
    nvpmodel: str | None = None
    jetson_clocks: str | None = None
    l4t: str | None = None
    jetpack: str | None = None

    @property
    def trt_major(self) -> int | None:
        return int(self.tensorrt_version.split(".")[0]) if self.tensorrt_version else None

    def trtexec_usable(self) -> tuple[bool, str]:
        from deploy.tensorrt import SUPPORTED_MAJORS

        if not self.trtexec:
            return False, "no trtexec on the device"
        if self.trt_major not in SUPPORTED_MAJORS:
            return False, (
                f"trtexec reports TensorRT {self.tensorrt_version or '?'}; facekd's trtexec command lines "
                f"support TensorRT {'/'.join(map(str, SUPPORTED_MAJORS))} only"
            )
        return True, f"trtexec (TensorRT {self.tensorrt_version})"

    def can_embed(self, suffix: str) -> str | None:
        """The harness runtime for a model file type, or None."""
        h = self.harness
        if suffix == ".onnx" and h.get("onnxruntime"):
            return f"onnxruntime {h['onnxruntime']}"
        if suffix in (".engine", ".plan") and h.get("tensorrt"):
            return f"TensorRT {h['tensorrt']} (Python)"
        if suffix == ".tflite" and h.get("litert"):
            return str(h["litert"])
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_BANNER_SED = r"s/.*\[TensorRT v\([0-9][0-9]*\)\].*/\1/p"


def probe_script(remote_python: str) -> str:
    """One shell round-trip: tools on PATH, versions, then the harness probe (harness text on stdin)."""
    py = shlex.quote(remote_python)
    return "; ".join(
        [
            'echo "machine=$(uname -m)"',
            'echo "cpu_count=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)"',
            "for t in trtexec tegrastats nvpmodel jetson_clocks; do "
            'echo "$t=$(command -v $t 2>/dev/null)"; done',
            "T=$(command -v trtexec 2>/dev/null)",
            'if [ -n "$T" ]; then echo "trt_banner=$("$T" --help 2>&1 | sed -n '
            + shlex.quote(_BANNER_SED)
            + ' | head -n 1)"; fi',
            'if [ -r /etc/nv_tegra_release ]; then echo "l4t=$(head -n 1 /etc/nv_tegra_release)"; fi',
            "JP=$(dpkg-query -W -f='${Version}' nvidia-jetpack 2>/dev/null) && echo \"jetpack=$JP\"",
            f'echo "python=$(command -v {py} 2>/dev/null)"',
            f'if command -v {py} >/dev/null 2>&1; then echo "harness=$({py} - probe 2>&1 | tr -d "\\n")"; fi',
        ]
    )


def decode_trt_banner(n: int) -> str:
    """trtexec's ``[TensorRT vN]``: 10.x+ encode major*10000 + minor*100 + patch (100300 -> 10.3.0),
    8.x/9.x major*1000 + minor*100 + patch (8502 -> 8.5.2)."""
    if n >= 100000:
        return f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    return f"{n // 1000}.{n // 100 % 10}.{n % 100}"


def parse_probe(stdout: str) -> Capabilities:
    caps = Capabilities()
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if key == "machine":
            caps.machine = value
        elif key == "cpu_count" and value.isdigit():
            caps.cpu_count = int(value)
        elif key in ("trtexec", "tegrastats", "nvpmodel", "jetson_clocks", "python", "l4t", "jetpack"):
            setattr(caps, key, value or None)
        elif key == "trt_banner" and value.isdigit():
            caps.tensorrt_version = decode_trt_banner(int(value))
        elif key == "harness":
            try:
                caps.harness = json.loads(value)
            except json.JSONDecodeError:
                caps.harness_error = value[:300]
    return caps


_MARK = "@@facekd:"


def split_sections(stdout: str) -> dict[str, str]:
    """Split output at ``@@facekd:<name>`` marker lines (several files back in one round-trip)."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in stdout.splitlines(keepends=True):
        if line.startswith(_MARK):
            current = sections.setdefault(line[len(_MARK) :].strip(), [])
        elif current is not None:
            current.append(line)
    return {k: "".join(v) for k, v in sections.items()}


# ------------------------------------------------------------------------------------- tegrastats
_RAIL = re.compile(r"\b((?:VDD|VIN|POM)\w*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
_TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0")


def parse_tegrastats(text: str) -> dict[str, Any]:
    """Mean/max instantaneous power per rail (mW) over the tegrastats lines of a run.

    Orin prints ``VDD_IN 5126mW/5126mW`` (instant/average), Xavier ``VDD_IN 4551/4551``; the first number
    of each sample is used. ``total_rail`` names the board-input rail when one is present.
    """
    samples: dict[str, list[int]] = {}
    for line in text.splitlines():
        for rail, now, _avg in _RAIL.findall(line):
            samples.setdefault(rail, []).append(int(now))
    rails = {
        r: {"mean_mw": round(float(np.mean(v)), 1), "max_mw": int(max(v)), "samples": len(v)}
        for r, v in samples.items()
    }
    total = next((r for r in _TOTAL_RAILS if r in rails), None)
    return {"rails": rails, "total_rail": total, "total_mean_mw": rails[total]["mean_mw"] if total else None}


# ------------------------------------------------------------------------------------------ runner
class SshRunner(Runner):
    """Measure one artifact on a device reachable over ssh (see the module docstring)."""

    def __init__(
        self,
        device_name: str,
        target: SshTarget | str,
        options: SshOptions | None = None,
        *,
        log_dir: Path | None = None,
    ):
        self.device_name = device_name
        self.target = parse_ssh_target(target) if isinstance(target, str) else target
        self.options = options or SshOptions()
        self.client = SshClient(self.target, self.options)
        self.label = f"{device_name} (ssh)"
        # Raw logs are kept; without a run folder they go to a temp folder made on first use.
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.capabilities: Capabilities | None = None
        self.workdir: str | None = None
        self.artifact: Path | None = None
        self.engine: str | None = None  # remote engine path when trtexec built one
        self.precision: str | None = None
        self.notes: list[str] = []
        self.logs: list[str] = []
        self.device_state: dict[str, str] = {}
        self._stem = "artifact"

    # ---------------------------------------------------------------------------------------- probe
    def probe(self) -> Capabilities:
        if self.capabilities is None:
            result = self.client.run(
                probe_script(self.options.remote_python),
                timeout=min(self.options.command_timeout, 120),
                input_text=HARNESS.read_text(encoding="utf-8"),
            )
            self.capabilities = parse_probe(result.stdout)
        return self.capabilities

    def plan(self, suffix: str = ".onnx") -> list[str]:
        """What would run on this device for an artifact of this type, in words."""
        caps = self.probe()
        lines = []
        trt_ok, trt_why = caps.trtexec_usable()
        use_trt = trt_ok and self.options.use_trtexec and suffix == ".onnx"
        if use_trt:
            lines.append(f"latency: engine built on the device and timed with {trt_why}")
        elif caps.can_embed(suffix):
            why = f" ({trt_why})" if suffix == ".onnx" else ""
            lines.append(f"latency: harness with {caps.can_embed(suffix)}{why}")
        else:
            lines.append(f"latency: nothing can run a {suffix} file here ({trt_why}; no harness runtime)")
        acc = caps.can_embed(".engine") if use_trt else None
        acc = acc or caps.can_embed(suffix)
        lines.append(f"accuracy: harness with {acc}" if acc else "accuracy: not possible on the device")
        lines.append(
            "power: tegrastats during the latency run" if caps.tegrastats else "power: no tegrastats"
        )
        return lines

    # -------------------------------------------------------------------------------------- prepare
    def prepare(self, artifact: Path, *, precision: str | None = None) -> None:
        artifact = Path(artifact)
        if not artifact.is_file():
            raise InputError(f"{artifact}: artifact file not found")
        suffix = artifact.suffix.lower()
        if suffix not in (".onnx", ".tflite"):
            raise InputError(f"{artifact}: the ssh runner takes .onnx (or .tflite) files, got '{suffix}'")
        caps = self.probe()
        if not caps.python:
            self.notes.append(f"no '{self.options.remote_python}' on the device: harness unavailable")
        self._cleanup_remote()
        self.artifact, self._stem = artifact, artifact.stem
        self.engine = None
        self.precision = precision
        out = self.client.run(f"mktemp -d {REMOTE_PREFIX}XXXXXXXX", timeout=60).stdout.strip()
        if not re.fullmatch(re.escape(REMOTE_PREFIX) + r"[A-Za-z0-9]+", out):
            raise DeviceError(f"{self.target}: mktemp -d returned an unexpected path {out!r}")
        self.workdir = out
        with tempfile.TemporaryDirectory() as tmp:
            model = Path(tmp) / f"model{suffix}"
            model.symlink_to(artifact.resolve())
            harness = Path(tmp) / "harness.py"
            harness.symlink_to(HARNESS)
            self.client.put([model, harness], self.workdir)
        trt_ok, why = caps.trtexec_usable()
        if suffix == ".onnx" and self.options.use_trtexec and trt_ok:
            self._build_engine()
        elif suffix == ".onnx":
            self.notes.append(f"TensorRT not used: {why}")

    def _build_engine(self) -> None:
        from deploy.tensorrt import onnx_precision, trtexec_command

        caps = self.capabilities
        assert caps is not None and self.artifact is not None and self.workdir is not None
        found = onnx_precision(self.artifact)  # the strongly typed engine computes in the ONNX's types
        self.precision = found
        argv = trtexec_command(
            "model.onnx",
            "model.engine",
            precision="int8" if "int8" in found else found,
            trt_major=caps.trt_major or 10,
            fp16_onnx="fp16" in found,
            benchmark=False,
            trtexec=caps.trtexec or "trtexec",
        )
        cmd = f"cd {self.workdir} || exit 97; " + " ".join(shlex.quote(a) for a in argv)
        result = self.client.run(cmd, timeout=self.options.build_timeout, check=False)
        self._log("trtexec-build.log", result.stdout + result.stderr)
        if result.returncode != 0:
            raise DeviceError(
                f"{self.target}: trtexec could not build the engine (exit {result.returncode}); "
                f"see {self.logs[-1] if self.logs else 'its log'}"
            )
        self.engine = f"{self.workdir}/model.engine"

    # -------------------------------------------------------------------------------------- latency
    def run_latency(
        self, *, warmup: int, runs: int, threads: int | None = None, batch_size: int = 1
    ) -> LatencyResult:
        if self.workdir is None:
            raise RuntimeError("prepare() first")
        if runs < 1 or warmup < 0:
            raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
        if self.engine is not None:
            return self._trtexec_latency(runs, batch_size)
        return self._harness_latency(warmup, runs, threads, batch_size)

    def _timed_run(self, command: str, files: tuple[str, ...]) -> tuple[int, str, dict[str, str]]:
        """One round-trip: power mode and clocks, tegrastats around ``command``, then ``files`` printed.

        Returns (exit status of ``command``, its output, {section: text}); sections are nvpmodel,
        jetson_clocks, tegrastats.log and each of ``files``, each introduced by a marker line.
        """
        caps = self.capabilities
        assert caps is not None
        parts = [f"cd {self.workdir} || exit 97"]
        for key, tool, args in (
            ("nvpmodel", caps.nvpmodel, "-q"),
            ("jetson_clocks", caps.jetson_clocks, "--show"),
        ):
            if tool:  # root-only on some JetPacks: non-interactive sudo first, plain call as fallback
                t = shlex.quote(tool)
                parts.append(f"echo '{_MARK}{key}'; (sudo -n {t} {args} 2>/dev/null || {t} {args}) 2>&1")
        parts.append(f"echo '{_MARK}output'")
        if caps.tegrastats:
            ts, interval = shlex.quote(caps.tegrastats), int(self.options.power_interval_ms)
            parts.append(f"({ts} --interval {interval} > tegrastats.log 2>&1 & echo $! > tegra.pid)")
            files = ("tegrastats.log", *files)
        parts.append(f"{command} 2>&1; rc=$?")
        if caps.tegrastats:
            parts.append("kill $(cat tegra.pid) 2>/dev/null")
        parts += [f"echo '{_MARK}{name}'; cat {name} 2>/dev/null" for name in files]
        parts.append("exit $rc")
        result = self.client.run("; ".join(parts), check=False)
        sections = split_sections(result.stdout)
        for key in ("nvpmodel", "jetson_clocks"):
            if key in sections:
                self.device_state[key] = sections[key].strip()
        return result.returncode, sections.get("output", "") + result.stderr, sections

    def _state_and_power(self, sections: dict[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        mode = re.search(r"NV Power Mode:\s*(\S+)", self.device_state.get("nvpmodel", ""))
        if mode:
            out["power_mode"] = mode.group(1)
        for key in ("nvpmodel", "jetson_clocks"):
            if key in sections:
                out[f"{key}_log"] = self._log(f"{key}.log", sections[key])
        if self.device_state:
            out["device_state"] = dict(self.device_state)
        if "tegrastats.log" in sections:
            out["power"] = parse_tegrastats(sections["tegrastats.log"])
            out["power_log"] = self._log("tegrastats.log", sections["tegrastats.log"])
        return out

    def _trtexec_latency(self, runs: int, batch_size: int) -> LatencyResult:
        from deploy.tensorrt import parse_trtexec_output, trtexec_benchmark_command

        caps = self.capabilities
        assert caps is not None
        argv = trtexec_benchmark_command(
            "model.engine",
            trt_major=caps.trt_major or 10,
            iterations=runs,
            warmup_ms=self.options.trtexec_warmup_ms,
            duration_s=0,
            percentiles=(50, 90, 99),
            export_times="times.json",
            trtexec=caps.trtexec or "trtexec",
        )
        rc, output, sections = self._timed_run(" ".join(shlex.quote(a) for a in argv), ("times.json",))
        raw = self._log("trtexec-latency.log", output)
        if rc != 0:
            raise DeviceError(f"{self.target}: trtexec timing failed (exit {rc}); see {raw}")
        try:
            parsed = parse_trtexec_output(output)
        except InputError as exc:
            raise DeviceError(f"{self.target}: {exc}; see {raw}") from exc
        lat = parsed.get("latency_ms") or parsed.get("gpu_compute_ms") or {}
        if not {"p90", "p99", "mean"} <= set(lat) or not {"p50", "median"} & set(lat):
            raise DeviceError(f"{self.target}: trtexec printed no p50/p90/p99 latency; see {raw}")
        extra: dict[str, Any] = {
            "throughput_qps": parsed.get("throughput_qps"),
            "gpu_compute_ms": parsed.get("gpu_compute_ms"),
            "tensorrt_version": parsed.get("tensorrt_version") or caps.tensorrt_version,
            "engine_precision": self.precision,
            "cuda_graph_and_no_transfers": caps.trt_major == 10,  # 11.x: the default
            **self._state_and_power(sections),
        }
        if sections.get("times.json", "").strip():
            extra["times_log"] = self._log("trtexec-times.json", sections["times.json"])
        return LatencyResult(
            p50=float(lat.get("p50", lat.get("median"))),
            p90=float(lat["p90"]),
            p99=float(lat["p99"]),
            mean=float(lat["mean"]),
            min=lat.get("min"),
            max=lat.get("max"),
            measured_on=self.label,
            tool=f"trtexec (TensorRT {extra['tensorrt_version']})",
            runs=runs,
            warmup=f"{self.options.trtexec_warmup_ms} ms",
            threads=None,
            batch_size=batch_size,
            raw_log=raw,
            extra=extra,
        )

    def _harness_latency(self, warmup: int, runs: int, threads: int | None, batch_size: int) -> LatencyResult:
        from devices.latency import stats_from_samples

        caps = self.capabilities
        assert caps is not None and self.artifact is not None
        suffix = self.artifact.suffix.lower()
        if not caps.python or not caps.can_embed(suffix):
            raise DeviceError(
                f"{self.target}: cannot time {self.artifact.name}: no trtexec usable and the harness has no "
                f"runtime for {suffix} (python: {caps.python or 'missing'}) {caps.harness_error}".rstrip()
            )
        threads = threads or caps.cpu_count or 1
        py = shlex.quote(self.options.remote_python)
        cmd = (
            f"{py} harness.py latency --model model{suffix} --warmup {int(warmup)} --runs {int(runs)} "
            f"--threads {int(threads)} --batch {int(batch_size)} --out latency.json"
        )
        rc, output, sections = self._timed_run(cmd, ("latency.json",))
        self._log("harness-latency.log", output)
        if rc != 0:
            raise DeviceError(f"{self.target}: harness latency failed (exit {rc}): {last_line(output)}")
        text = sections.get("latency.json", "")
        raw = self._log("harness-latency.json", text)
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = {}
        samples = data.get("samples_ms")
        if not samples:
            raise DeviceError(f"{self.target}: the harness returned no latency samples; see {raw}")
        stats = stats_from_samples(samples, warmup=warmup, threads=threads, batch_size=data.get("batch_size"))
        return LatencyResult.from_stats(
            stats,
            measured_on=self.label,
            tool=f"harness {data.get('runtime', '?')}",
            peak_memory_mb=data.get("peak_rss_mb"),
            raw_log=raw,
            extra=self._state_and_power(sections),
        )

    # ------------------------------------------------------------------------------------- accuracy
    def run_accuracy(self, images: np.ndarray) -> AccuracyResult:
        if self.workdir is None or self.artifact is None:
            raise RuntimeError("prepare() first")
        caps = self.probe()
        model = None
        if self.engine is not None and caps.can_embed(".engine"):
            model, runtime = "model.engine", caps.can_embed(".engine")
        elif caps.can_embed(self.artifact.suffix.lower()):
            model = f"model{self.artifact.suffix.lower()}"
            runtime = caps.can_embed(self.artifact.suffix.lower())
            note = "accuracy with onnxruntime on the ONNX: no TensorRT Python bindings on the device"
            if self.engine is not None and note not in self.notes:
                self.notes.append(note)
        if model is None or not caps.python:
            raise AccuracyUnavailable(
                f"{self.target}: no runtime for embeddings on the device "
                f"(python: {caps.python or 'missing'}, "
                f"onnxruntime: {caps.harness.get('onnxruntime')}, tensorrt: {caps.harness.get('tensorrt')})"
            )
        x = np.ascontiguousarray(images, dtype=np.float32)
        if x.ndim != 4:
            raise ValueError(f"images must be float32 NCHW, got shape {x.shape}")
        py = shlex.quote(self.options.remote_python)
        with tempfile.TemporaryDirectory() as tmp:
            local_in, local_out = Path(tmp) / "images.npy", Path(tmp) / "embeddings.npy"
            np.save(local_in, x, allow_pickle=False)
            self.client.put([local_in], self.workdir)
            cmd = (
                f"cd {self.workdir} || exit 97; {py} harness.py embed --model {model} --images images.npy "
                f"--out embeddings.npy --threads {caps.cpu_count or 1}; rc=$?; rm -f images.npy; exit $rc"
            )
            result = self.client.run(cmd, check=False)
            log = self._log("harness-embed.log", result.stdout + result.stderr)
            if result.returncode != 0:
                raise DeviceError(
                    f"{self.target}: harness embed failed (exit {result.returncode}): "
                    f"{last_line(result.stderr)}"
                )
            self.client.get(f"{self.workdir}/embeddings.npy", local_out)  # replaced by the next chunk
            emb = np.load(local_out, allow_pickle=False)
        if emb.ndim != 2 or emb.shape[0] != x.shape[0]:
            raise DeviceError(f"{self.target}: got embeddings of shape {emb.shape} for {x.shape[0]} images")
        return AccuracyResult(embeddings=emb, measured_on=self.label, runtime=str(runtime), raw_log=log)

    # -------------------------------------------------------------------------------------- collect
    def collect(self) -> dict[str, Any]:
        info = {
            "measured_on": self.label,
            "target": str(self.target),
            "capabilities": self.capabilities.to_dict() if self.capabilities else None,
            "device_state": dict(self.device_state),
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
        assert wd.startswith(REMOTE_PREFIX)
        try:
            self.client.run(
                f"if [ -f {wd}/tegra.pid ]; then kill $(cat {wd}/tegra.pid) 2>/dev/null; fi; rm -rf -- {wd}",
                timeout=60,
                check=False,
            )
        except DeviceError as exc:  # never mask the error that got us here
            self.notes.append(f"could not remove {wd} on the device: {exc}")

    # -------------------------------------------------------------------------------------- helpers
    def _log(self, name: str, text: str) -> str:
        if self.log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix="facekd-ssh-"))
        path = write_log(self.log_dir, f"{self._stem}.{self.device_name}.{name}", text)
        assert path is not None
        self.logs.append(path)
        return path


__all__ = [
    "Capabilities",
    "SshClient",
    "SshOptions",
    "SshRunner",
    "SshTarget",
    "parse_probe",
    "parse_ssh_target",
    "parse_tegrastats",
    "probe_script",
    "short_command",
]
