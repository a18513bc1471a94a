"""Portable model checkpoint ("facekd-model/1") passed between stages.

A checkpoint is a plain ``torch.save`` of a dict that ``torch.load(weights_only=True)`` can read, so
loading a file from someone else never runs pickled code:

    {"format": "facekd-model/1", "arch": str, "arch_kwargs": dict, "state_dict": {name: tensor},
     "extra": dict | None}

``arch`` + ``arch_kwargs`` rebuild the module through ``factory.build_backbone(arch, **arch_kwargs)``
(``arch_kwargs`` therefore holds ``embedding_dim``). ``extra`` carries anything else a stage needs later
(head weights, metrics, the config) restricted to tensors, numbers, strings, None, lists and str-keyed dicts.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.atomic import atomic_path
from distill.errors import InputError
from distill.models.factory import BACKBONES, build_backbone

FORMAT = "facekd-model/1"
# Prefixes added by wrappers (DataParallel/DDP, torch.compile) that must not leak into the file.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DataParallel/DDP or torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _check_plain(value: Any, where: str) -> None:
    """Reject values weights_only loading would refuse (the file would save but never load)."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"checkpoint {where}: dict keys must be str, got {type(k).__name__}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(
        f"checkpoint {where}: {type(value).__name__} is not allowed "
        "(use tensors, numbers, strings, None, lists, dicts)"
    )


def save_model(
    path: str | os.PathLike,
    model: nn.Module,
    arch: str,
    arch_kwargs: dict,
    extra: dict | None = None,
) -> None:
    """Write ``model``'s weights and how to rebuild it, atomically, as a facekd checkpoint."""
    if arch not in BACKBONES:
        raise InputError(f"{path}: unknown model '{arch}'; choose one of {', '.join(sorted(BACKBONES))}")
    arch_kwargs = dict(arch_kwargs)
    _check_plain(arch_kwargs, "arch_kwargs")
    if extra is not None:
        _check_plain(extra, "extra")
    state = {}
    for key, tensor in _unwrap(model).state_dict().items():
        state[key] = tensor.detach().cpu().clone()
    payload = {
        "format": FORMAT,
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "state_dict": state,
        "extra": extra,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _few(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _read(p: Path, map_location: str | torch.device) -> Any:
    """``torch.load(weights_only=True)`` with every failure as one InputError line."""
    if not p.is_file():
        raise InputError(f"{p}: checkpoint file not found")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{p}: not a facekd checkpoint (cannot be read as weights: {first_line})") from exc


def is_plain_state_dict(payload: Any) -> bool:
    """A bare ``{name: tensor}`` mapping, as arcface_torch (and most training code) saves a backbone."""
    return (
        isinstance(payload, dict)
        and bool(payload)
        and "format" not in payload
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items())
    )


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model from a facekd checkpoint; returns (model in eval mode, meta).

    meta = {"format", "arch", "arch_kwargs", "extra"}. Every problem with the file is an InputError.
    """
    p = Path(path)
    payload = _read(p, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        hint = (
            " - it is a plain state_dict: name its architecture (teacher.arch, teacher.embedding_dim)"
            if is_plain_state_dict(payload)
            else ""
        )
        raise InputError(f"{p}: not a facekd checkpoint (format {found!r}, expected {FORMAT!r}){hint}")
    arch = payload.get("arch")
    arch_kwargs = payload.get("arch_kwargs")
    state = payload.get("state_dict")
    if not isinstance(arch_kwargs, dict) or not isinstance(state, dict):
        raise InputError(f"{p}: corrupt facekd checkpoint (arch_kwargs/state_dict missing)")
    model = _build_and_load(p, arch, dict(arch_kwargs), state, map_location)
    meta = {"format": FORMAT, "arch": arch, "arch_kwargs": dict(arch_kwargs), "extra": payload.get("extra")}
    return model, meta


def load_weights_file(
    path: str | os.PathLike, arch: str, arch_kwargs: dict, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict]:
    """A facekd checkpoint as ``load_model`` does, or a plain state_dict of ``arch(**arch_kwargs)``.

    The plain form is what arcface_torch writes (``backbone.pth``), also with DDP's ``module.`` prefix;
    it is loaded strictly, so weights of another architecture or width are refused with the keys named.
    """
    p = Path(path)
    payload = _read(p, map_location)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return load_model(p, map_location)
    if not is_plain_state_dict(payload):
        found = (
            f"a dict with keys {_few(sorted(map(str, payload)))}"
            if isinstance(payload, dict)
            else type(payload).__name__
        )
        raise InputError(
            f"{p}: neither a facekd checkpoint nor a plain state_dict of tensors (found {found})"
        )
    kwargs = dict(arch_kwargs)
    model = _build_and_load(p, arch, kwargs, payload, map_location)
    return model, {"format": "state_dict", "arch": arch, "arch_kwargs": kwargs, "extra": None}


def _width_hint(arch: str, kwargs: dict, state: dict[str, torch.Tensor]) -> str:
    """For an iResNet whose first conv has another width than configured, the setting that fits it."""
    conv = state.get("conv1.weight")
    if not arch.startswith("iresnet") or not isinstance(conv, torch.Tensor) or conv.ndim != 4:
        return ""
    hints = []
    width = int(conv.shape[0])
    if width != kwargs.get("base_width", 64):
        hints.append(f"base_width: {width}")
    features = state.get("features.weight")
    if isinstance(features, torch.Tensor) and int(features.shape[0]) != kwargs.get("embedding_dim"):
        hints.append(f"embedding_dim: {int(features.shape[0])}")
    return f" (the file looks like {arch} with {', '.join(hints)})" if hints else ""


def _build_and_load(
    p: Path, arch: Any, kwargs: dict, state: dict, map_location: str | torch.device
) -> nn.Module:
    """Build ``arch(**kwargs)`` and load ``state`` strictly; every mismatch named on one line."""
    if arch not in BACKBONES:
        raise InputError(f"{p}: unknown model '{arch}'; choose one of {', '.join(sorted(BACKBONES))}")
    if "embedding_dim" not in kwargs:
        raise InputError(f"{p}: arch_kwargs lacks 'embedding_dim'")
    try:
        model = build_backbone(arch, **kwargs)
    except InputError as exc:
        raise InputError(f"{p}: {exc}") from exc

    state = _strip_prefixes(state)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {_shape(state[k])} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and (not isinstance(state[k], torch.Tensor) or state[k].shape != v.shape)
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        if wrong_shape:
            parts.append(f"shape mismatch (file vs {arch}): {_few(wrong_shape)}")
        hint = _width_hint(arch, kwargs, state) if not missing and not unexpected else ""
        raise InputError(f"{p}: weights do not fit {arch}({kwargs}): " + "; ".join(parts) + hint)
    model.load_state_dict(state, strict=True)
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    model.eval()
    return model
