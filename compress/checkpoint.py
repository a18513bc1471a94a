"""Save and load an NNCF-quantized student: architecture, NNCF config and state dict in one file.

The NNCF config (where each quantizer sits) is stored as JSON text beside the tensors so the file loads
with ``torch.load(weights_only=True)``; no pickled objects are read from disk.
"""

from __future__ import annotations

import json
import os
import pickle  # only for its exception type: files are read with weights_only=True
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.atomic import atomic_path
from distill.errors import InputError
from distill.models.factory import build_backbone

FORMAT = "facekd-quantized/1"
HOOK_PREFIX = "__nncf_hooks"


def save_quantized(
    path: str | os.PathLike,
    qmodel: nn.Module,
    *,
    arch: str,
    arch_kwargs: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``qmodel`` atomically; ``extra`` holds plain values (metrics, settings)."""
    import nncf.torch

    payload = {
        "format": FORMAT,
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "nncf_config": json.dumps(nncf.torch.get_config(qmodel), default=_enum_value),
        "state_dict": {k: v.detach().cpu() for k, v in qmodel.state_dict().items()},
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_quantized(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the quantized model (eval mode) and its meta (arch, arch_kwargs, extra)."""
    import nncf.torch

    from compress.fake_quant import use_torch_kernels

    use_torch_kernels()  # its quantizers run on a CPU without NNCF's C++ build

    payload = _read(path)
    model = build_backbone(payload["arch"], **payload["arch_kwargs"]).eval()
    try:
        qmodel = nncf.torch.load_from_config(model, json.loads(payload["nncf_config"]))
        qmodel.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise InputError(f"{path}: quantized checkpoint does not match its architecture ({exc})") from None
    return qmodel.eval(), {k: payload[k] for k in ("arch", "arch_kwargs", "extra")}


def float_model(path: str | os.PathLike) -> nn.Module:
    """The plain float model carrying the quantized model's (QAT-tuned, bias-corrected) float weights."""
    payload = _read(path)
    model = build_backbone(payload["arch"], **payload["arch_kwargs"])
    weights = {k: v for k, v in payload["state_dict"].items() if not k.startswith(HOOK_PREFIX)}
    model.load_state_dict(weights, strict=True)
    return model.eval()


def is_quantized_checkpoint(path: str | os.PathLike) -> bool:
    """True for a file written by :func:`save_quantized` (False for anything else, unreadable included)."""
    try:
        _read(path)
    except InputError:
        return False
    return True


def _read(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: quantized checkpoint not found")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise InputError(f"{p}: not a readable quantized checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{p}: not a facekd quantized checkpoint (format {FORMAT})")
    return payload


def _enum_value(obj: Any) -> Any:
    value = getattr(obj, "value", None)
    if value is None:
        raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
    return value
