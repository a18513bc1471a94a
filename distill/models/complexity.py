"""Model size and cost, counted the way mobile-face-recognition papers report them.

``count_macs`` counts multiply-accumulates of Conv2d and Linear layers only, measured with forward hooks
on one real forward pass (so strides, padding and groups are exactly what the model does):

* Conv2d: output elements x (in_channels / groups) x kernel_h x kernel_w   (bias adds not counted)
* Linear: output elements x in_features                                    (bias adds not counted)

Not counted: BatchNorm (folds into the preceding conv at deployment), activations (PReLU/ReLU), residual
adds, pooling. This is the convention behind MobileFaceNet's "221M MAdds" (losses.md §9.2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (all parameters, including BN gamma/beta and PReLU slopes)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _conv_macs(module: nn.Conv2d, output: torch.Tensor) -> int:
    kh, kw = module.kernel_size
    return output.numel() * (module.in_channels // module.groups) * kh * kw


def _linear_macs(module: nn.Linear, output: torch.Tensor) -> int:
    return output.numel() * module.in_features


def count_macs(model: nn.Module, input_shape: Sequence[int] = (1, 3, 112, 112)) -> int:
    """Conv2d + Linear multiply-accumulates of one forward pass on a zero tensor of ``input_shape``.

    The total is for the whole input batch (batch 1 by default). Runs in eval mode under no_grad and
    restores the model's training flag afterwards.
    """
    total = 0

    def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += _conv_macs(module, output)
        else:
            total += _linear_macs(module, output)

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        model.eval()
        with torch.no_grad():
            model(torch.zeros(tuple(input_shape), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total
