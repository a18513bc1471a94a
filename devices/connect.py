"""How the measure stage reaches a device: the user's connection settings, turned into a runner.

No settings means no device: its rows carry host accuracy and a labelled latency estimate instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.errors import InputError

DEFAULT_DEVICE = {"host": "host-cpu", "jetson": "jetson-orin-nano", "android": "android-arm64-generic"}


@dataclass(frozen=True)
class DeviceConnection:
    """Command-line device settings (all optional; see ``python -m pipeline all --help``)."""

    device: str = ""  # catalogue name; "" = the target's default
    ssh: str = ""  # user@host[:port] of a Jetson
    key: str = ""
    known_hosts: str = ""
    remote_python: str = "python3"
    adb_serial: str = ""
    adb: str = "adb"
    benchmark_model: str = ""
    delegate: str = "xnnpack"
    devices_dirs: tuple[str, ...] = field(default_factory=tuple)

    @property
    def connected(self) -> bool:
        return bool(self.ssh or self.adb_serial)

    def key_fields(self) -> dict[str, Any]:
        """What decides whether a measurement is still current (the stage key)."""
        return {
            "device": self.device,
            "ssh": self.ssh,
            "adb_serial": self.adb_serial,
            "delegate": self.delegate,
        }


def resolve_device(target: str, conn: DeviceConnection) -> Any:
    """The catalogue entry measured for ``target`` (``--device`` or the target's default)."""
    from devices.catalogue import load_catalogue

    catalogue = load_catalogue(conn.devices_dirs)
    name = conn.device or DEFAULT_DEVICE[target]
    if name not in catalogue:
        raise InputError(f"--device: unknown device '{name}'; known: {', '.join(sorted(catalogue))}")
    device = catalogue[name]
    if target != "host" and device.target not in (target, None):
        raise InputError(f"--device: '{name}' is a {device.target} device, not a {target} one")
    return device


def local_device(device: Any) -> bool:
    """A catalogue device measured on this machine through a runner (host-gpu), not the host CPU rows."""
    return getattr(device, "connection", None) == "local" and device.name != "host-cpu"


def device_reachable(device: Any, conn: DeviceConnection) -> bool:
    """Is there a runner for ``device``: ssh/adb settings given, or a local device such as host-gpu."""
    return conn.connected or local_device(device)


def open_runner(device: Any, conn: DeviceConnection, log_dir: Path) -> Any | None:
    """A fresh runner for one artifact, or None when no device is connected.

    A local catalogue device (``--device host-gpu``) gets the local runner: the ONNX becomes a TensorRT
    engine built and timed here; without TensorRT and a CUDA GPU it stops with the reason.
    """
    if conn.ssh:
        from devices.runners.ssh import SshOptions, SshRunner

        options = SshOptions(
            known_hosts=Path(conn.known_hosts) if conn.known_hosts else None,
            key=Path(conn.key) if conn.key else None,
            remote_python=conn.remote_python,
        )
        return SshRunner(device.name, conn.ssh, options, log_dir=log_dir)
    if conn.adb_serial:
        from devices.runners.adb import AdbOptions, AdbRunner

        if not conn.benchmark_model:
            raise InputError("--benchmark-model: LiteRT's benchmark_model binary is needed with --adb-serial")
        options = AdbOptions(
            serial=conn.adb_serial,
            benchmark_model=Path(conn.benchmark_model),
            adb=conn.adb,
            delegate=conn.delegate,
        )
        return AdbRunner(device.name, options, log_dir=log_dir)
    if local_device(device):
        from devices.runners.local import LocalRunner

        return LocalRunner(device.name, use_tensorrt="tensorrt" in device.formats, log_dir=log_dir)
    return None
