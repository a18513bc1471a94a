"""Pixel conventions shared by training, evaluation and every exported artifact.

Models take NCHW float32 RGB normalised as ``(x / 255 - 0.5) / 0.5`` (arcface_torch's convention), so
numbers compare with published tables and an app knows exactly what to feed the model.
"""

from __future__ import annotations

import numpy as np
import torch

IMAGE_SIZE = 112
PIXEL_MEAN = 127.5
PIXEL_STD = 127.5


def to_model_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NHWC RGB (numpy or torch) -> float32 NCHW in [-1, 1]."""
    t = torch.as_tensor(images)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    return (t.permute(0, 3, 1, 2).float() - PIXEL_MEAN) / PIXEL_STD


def hflip_nchw(x: torch.Tensor) -> torch.Tensor:
    """Horizontal mirror of an NCHW batch (the flip of the verification protocol)."""
    return torch.flip(x, dims=[3])
