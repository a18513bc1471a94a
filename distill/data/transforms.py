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
    # one float copy, normalised in place: the same values as (x - mean) / std with two fewer temporaries
    return t.permute(0, 3, 1, 2).to(torch.float32, copy=True).sub_(PIXEL_MEAN).div_(PIXEL_STD)


def train_input(images: torch.Tensor, flip: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """A training batch: uint8 NHWC ``images``, mirrored where ``flip`` (bool, N), on ``device``, normalised.

    On the CPU bit for bit ``where(flip, hflip_nchw(to_model_input(images)), to_model_input(images))`` (the
    mirror commutes with the per-pixel normalisation; on a GPU, within an ulp). The uint8 batch moves first,
    the mirror and the float work run where the model is: on a GPU box the host CPU only decodes, and a
    quarter of the bytes cross to the GPU. Before, the float mirror and normalisation cost the main process
    more than a JPEG decode (``benchmarks/results/data_throughput.md``).
    """
    images, flip = images.to(device, non_blocking=True), flip.to(device)
    return to_model_input(torch.where(flip[:, None, None, None], images.flip(2), images))


def hflip_nchw(x: torch.Tensor) -> torch.Tensor:
    """Horizontal mirror of an NCHW batch (the flip of the verification protocol)."""
    return torch.flip(x, dims=[3])
