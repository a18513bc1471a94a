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
    """bf16 where the GPU supports it, else fp16. On a CPU only when asked and only where bf16 runs
    natively (AMX / AVX512-BF16): it trains the default iResNet teacher 2.0x faster here and MobileFaceNet
    not at all, and it changes the numbers, so ``auto`` keeps a CPU in fp32. ``bf16`` insists (an error
    on a CPU that would emulate it); ``bf16_if_native`` takes bf16 where it is native and fp32 elsewhere
    (the default preset's teacher: a recipe that must also run on any CPU)."""
    if amp == "bf16_if_native":
        return torch.bfloat16 if native_bf16(device) else None
    if device.type == "cpu" and amp == "bf16":
        if not native_bf16(device):
            from distill.errors import InputError

            raise InputError(
                "train.amp: bf16 on a CPU without native bf16 (no amx_bf16/avx512_bf16 flag) is emulated and "
                "slower than fp32; use auto or off"
            )
        return torch.bfloat16
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # CPU features oneDNN runs bf16 convolutions natively with


def native_bf16(device: torch.device, cpuinfo: str | None = None) -> bool:
    """Whether ``device`` runs bf16 natively: a CUDA GPU that supports it, or a CPU with AMX/AVX512-BF16.

    Elsewhere bf16 is emulated and slower than fp32. ``cpuinfo`` (the text of /proc/cpuinfo) is read
    when not given; where it does not exist (not Linux) the answer is no.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                cpuinfo = fh.read()
        except OSError:
            return False
    flags = next(
        (line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), []
    )
    return any(f in flags for f in BF16_CPU_FLAGS)


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
