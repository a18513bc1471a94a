"""Device and mixed-precision choice, made at run time so CPU and CUDA share one code path."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from distill.errors import InputError

        raise InputError("train.device: 'cuda' asked for, but no CUDA GPU is available")
    return torch.device(name)


def resolve_amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16; never on CPU (CPU autocast is slower here)."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


def channels_last_is_safe(model: torch.nn.Module) -> bool:
    """False when a conv has fewer than 16 output channels.

    torch 2.13's CPU (oneDNN) backward segfaulted on channels-last convs with 8 channels (an iResNet of
    width 8, seen here); nets that narrow train in the default layout instead.
    """
    return all(m.out_channels >= 16 for m in model.modules() if isinstance(m, torch.nn.Conv2d))
