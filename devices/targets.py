"""Deployment targets: which artifact formats each one runs and whether a device is reachable.

Only the host is measurable in this version; jetson/android choose their formats, and their rows say
"not measured on device" until the device runners land (ssh / adb).
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.errors import InputError


@dataclass(frozen=True)
class Target:
    name: str
    # (format, precision) pairs the target runs; int8 ones come from stage two (QAT) when it is enabled
    formats: tuple[tuple[str, str], ...]
    runtime: str
    description: str


TARGETS: dict[str, Target] = {
    "host": Target(
        "host",
        (("onnx", "fp32"), ("tflite", "fp32")),
        "onnxruntime + LiteRT interpreter",
        "this machine's CPU",
    ),
    "jetson": Target(
        "jetson",
        (("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8")),
        "TensorRT (engine built on the device from the ONNX)",
        "NVIDIA Jetson over ssh",
    ),
    "android": Target(
        "android",
        (("tflite", "fp32"), ("tflite", "fp16"), ("tflite", "int8")),
        "LiteRT (XNNPACK / GPU / NNAPI delegates)",
        "Android phone over adb",
    ),
}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise InputError(f"--target: unknown target '{name}'; choose one of {', '.join(TARGETS)}")
    return TARGETS[name]


def formats_for(target: str) -> list[tuple[str, str]]:
    """The (format, precision) pairs exported for ``target``."""
    return list(get_target(target).formats)
