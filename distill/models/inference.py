"""Inference-only copies of a trained backbone (never trained, never saved)."""

from __future__ import annotations

import copy

from torch import nn


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """An eval-mode copy of ``module`` with every BatchNorm that directly follows a convolution or a
    Linear folded into its weights; the original is untouched.

    Eager PyTorch runs each BatchNorm as a pass of its own over the activations (30 of them in the
    default iResNet-18 teacher: nearly as long as its convolutions on this CPU), while the folded
    copy computes the same function up to float rounding. torch.fx's ``fuse`` does the graph work (it
    lives in ``torch.fx.experimental``: tests/test_inference_copy.py fails if it stops folding); a
    module fx cannot trace is returned unfolded.
    """
    from torch.fx.experimental.optimization import fuse

    plain = copy.deepcopy(module).eval()
    try:
        return fuse(plain, inplace=True).eval()
    except Exception:  # noqa: BLE001 - any tracing failure: the unfolded copy computes the same
        return plain
