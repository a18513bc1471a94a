"""Training-state checkpoints: everything needed to resume a run exactly, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distill.atomic import atomic_path
from distill.errors import InputError

FORMAT = "facekd-train-state/1"


def save_train_state(path: Path, state: dict[str, Any]) -> None:
    """torch.save through a temp file + rename: a kill mid-write leaves the previous checkpoint intact."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load_train_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user problem
        raise InputError(f"{path}: cannot read training checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path}: not a facekd training checkpoint")
    return state
