"""Replace ``nn.PReLU`` by an exact rewrite that integer runtimes execute without float islands.

litert-torch lowers PReLU to ``relu(x) - a*relu(-x)`` and a native TFLite PRELU is not delegated to
XNNPACK in int8 (shared/research/spike-tflite-int8.md), so an int8 MobileFaceNet would leave 33 float or
non-delegated ops. Written with one MUL (ReLU fused into it) and one ADD instead, every op is int8 and runs
in a single XNNPACK partition:

* all slopes ``a <= 1`` (the usual case): ``prelu(x) = x + relu((a - 1) * x)``  (MUL+RELU, ADD)
* any slope:                             ``prelu(x) = x + (1 - a) * relu(-x)``  (MUL+RELU, MUL, ADD)

Both are exact in real arithmetic (for x >= 0 the ReLU term is 0; for x < 0 it adds (a - 1) * x); in
float32 they differ from ``nn.PReLU`` only by rounding. The slope factor is stored as a buffer, so the
exported graph holds one constant per rewrite (no arithmetic on parameters left for the quantizer).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class RewrittenPReLU(nn.Module):
    """PReLU written as residual ReLU terms; ``form`` is ``"slope_minus_one"`` or ``"one_minus_slope"``."""

    def __init__(self, slope: torch.Tensor, form: str | None = None) -> None:
        super().__init__()
        slope = slope.detach().to(torch.float32).reshape(-1)
        if form is None:
            form = "slope_minus_one" if bool(torch.all(slope <= 1.0)) else "one_minus_slope"
        if form == "slope_minus_one":
            if not bool(torch.all(slope <= 1.0)):
                raise ValueError("form 'slope_minus_one' is exact only when every PReLU slope is <= 1")
            factor = slope - 1.0
        elif form == "one_minus_slope":
            factor = 1.0 - slope
        else:
            raise ValueError(f"unknown PReLU rewrite form {form!r}")
        self.form = form
        self.num_parameters = slope.numel()
        self.register_buffer("factor", factor.clone())

    def _factor_for(self, x: torch.Tensor) -> torch.Tensor:
        # nn.PReLU's slopes act on dim 1 (channels); a single slope broadcasts as a scalar.
        if self.num_parameters == 1 or x.dim() < 2:
            return self.factor.reshape(())
        return self.factor.reshape((1, -1) + (1,) * (x.dim() - 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = self._factor_for(x)
        if self.form == "slope_minus_one":
            return x + torch.relu(x * factor)
        return x + factor * torch.relu(-x)

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}, form={self.form}"


def rewrite_prelu(model: nn.Module, form: str | None = None) -> nn.Module:
    """A copy of ``model`` with every ``nn.PReLU`` swapped for :class:`RewrittenPReLU` (same module path).

    Keeping the module path lets quantizer hooks named after ``<path>/prelu`` (NNCF) be matched to the
    rewrite's output. ``form=None`` picks per layer: the two-op form when all its slopes are <= 1.
    """
    out = copy.deepcopy(model)
    targets = [(name, mod) for name, mod in out.named_modules() if isinstance(mod, nn.PReLU)]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, child, RewrittenPReLU(mod.weight, form))
    return out


def count_prelu(model: nn.Module) -> int:
    """Number of ``nn.PReLU`` modules left (0 after :func:`rewrite_prelu`)."""
    return sum(isinstance(m, nn.PReLU) for m in model.modules())
