"""Device runners: the same prepare -> run_latency -> run_accuracy -> collect steps on this machine
(local), a Jetson over ssh, and an Android phone over adb."""

from devices.runners.base import (
    AccuracyResult,
    AccuracyUnavailable,
    DeviceError,
    DeviceTimeout,
    DeviceUnreachable,
    HostKeyError,
    LatencyResult,
    Runner,
)

__all__ = [
    "AccuracyResult",
    "AccuracyUnavailable",
    "DeviceError",
    "DeviceTimeout",
    "DeviceUnreachable",
    "HostKeyError",
    "LatencyResult",
    "Runner",
]
