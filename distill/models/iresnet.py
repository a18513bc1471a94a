"""iResNet teachers as in insightface arcface_torch (``backbones/iresnet.py``).

Same block, layout and parameter names as arcface_torch, so a state_dict from an arcface_torch
checkpoint (e.g. ``ms1mv3_arcface_r50_fp16/backbone.pth``) loads into ``iresnet50()`` unchanged:

    conv3x3 s1 (3->w) - BN - PReLU
    layer1..4: IBasicBlock stacks with widths w, 2w, 4w, 8w, each stage starting with stride 2
    IBasicBlock: BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN, + identity (1x1 conv + BN if shape changes)
    BN2d - flatten - dropout - Linear(8w*7*7 -> D) - BatchNorm1d ("features", weight fixed to 1)

``base_width`` w = 64 is the published width (iresnet50 512-d: ~43.6M parameters). Smaller widths give a
narrower teacher for CPU presets and tests; they are not published models.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

PUBLISHED_WIDTH = 64
_FEATURE_MAP = 7  # 112 input / 2**4 stride-2 stages


class IBasicBlock(nn.Module):
    """Pre-BN basic block with PReLU between the convs and BN after the last one (arcface_torch)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """iResNet for 112x112 faces; ``forward`` returns the raw (unnormalised) embedding."""

    def __init__(
        self,
        layers: Sequence[int],
        embedding_dim: int = 512,
        base_width: int = PUBLISHED_WIDTH,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"layers must be four positive block counts, got {list(layers)}")
        if base_width < 1 or embedding_dim < 1:
            raise ValueError(
                f"base_width and embedding_dim must be positive, got {base_width}, {embedding_dim}"
            )
        self.embedding_dim = embedding_dim
        w = base_width
        self.conv1 = nn.Conv2d(3, w, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w, eps=1e-5)
        self.prelu = nn.PReLU(w)
        inplanes = w
        stages = []
        for i, n in enumerate(layers):
            planes = w * 2**i
            stages.append(self._make_layer(inplanes, planes, int(n)))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(inplanes * _FEATURE_MAP * _FEATURE_MAP, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)
        self._init_weights()

    @staticmethod
    def _make_layer(inplanes: int, planes: int, blocks: int) -> nn.Sequential:
        # Every stage starts with stride 2, so the first block always needs a projection shortcut.
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes, 1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=1e-5),
        )
        seq = [IBasicBlock(inplanes, planes, stride=2, downsample=downsample)]
        seq += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*seq)

    def _init_weights(self) -> None:
        # arcface_torch: conv weights N(0, 0.1), BN gamma 1 / beta 0, fixed unit gamma on the features BN.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.bn2(x)
        x = self.dropout(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return self.features(x)


def iresnet18(embedding_dim: int = 512, base_width: int = PUBLISHED_WIDTH, dropout: float = 0.0) -> IResNet:
    return IResNet((2, 2, 2, 2), embedding_dim, base_width, dropout)


def iresnet50(embedding_dim: int = 512, base_width: int = PUBLISHED_WIDTH, dropout: float = 0.0) -> IResNet:
    return IResNet((3, 4, 14, 3), embedding_dim, base_width, dropout)


def iresnet100(embedding_dim: int = 512, base_width: int = PUBLISHED_WIDTH, dropout: float = 0.0) -> IResNet:
    return IResNet((3, 13, 30, 3), embedding_dim, base_width, dropout)
