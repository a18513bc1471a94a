"""fold_batchnorm: an inference copy with BatchNorm folded into the layer before it (torch.fx's fuse)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.models.factory import build_backbone
from distill.models.inference import fold_batchnorm


def _count(module: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


def _trained_looking(model: nn.Module) -> nn.Module:
    """Running statistics and affine values away from their defaults, so a fold that ignored them shows."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                if m.affine:
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def test_iresnet_keeps_only_the_batchnorms_no_layer_precedes() -> None:
    torch.manual_seed(0)
    model = _trained_looking(build_backbone("iresnet18", 64, base_width=16))
    assert _count(model, nn.BatchNorm2d) == 30 and _count(model, nn.BatchNorm1d) == 1
    folded = fold_batchnorm(model)
    # iResNet-18 has 8 blocks: each block's leading BN (pre-activation, after the residual sum) and the BN
    # before the flatten follow no conv, so 8 + 1 stay; the stem's, bn2/bn3 of every block, the 4
    # shortcut BNs and the features BN1d after the Linear are folded (if fx's fuse stops folding, this fails)
    assert _count(folded, nn.BatchNorm2d) == 9 and _count(folded, nn.BatchNorm1d) == 0
    assert _count(model, nn.BatchNorm2d) == 30  # the original is untouched
    x = torch.rand(4, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        ref, got = model(x), folded(x)
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_mobilefacenet_folds_and_computes_the_same() -> None:
    torch.manual_seed(0)
    model = _trained_looking(build_backbone("mobilefacenet", 128))
    folded = fold_batchnorm(model)
    assert _count(folded, nn.BatchNorm2d) < _count(model, nn.BatchNorm2d) // 4
    x = torch.rand(4, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        ref, got = model(x), folded(x)
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()


class DataDependent(nn.Module):
    """Control flow on tensor values: fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y if y.sum() > 0 else -y


def test_an_untraceable_module_comes_back_unfolded_and_equal() -> None:
    torch.manual_seed(0)
    model = _trained_looking(DataDependent())
    with pytest.raises(Exception):  # noqa: B017 - whatever fx raises: the premise of the test
        torch.fx.symbolic_trace(model)
    folded = fold_batchnorm(model)
    assert folded is not model and _count(folded, nn.BatchNorm2d) == 1 and not folded.training
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(folded(x), model(x))
