"""MobileFaceNet (Chen et al., arXiv 1804.07573): the student the whole toolkit is built around.

Layout follows the paper's table (shared/research/losses.md §9.1), input 112x112x3:

    conv3x3 s2 -> 64            (BN + PReLU)
    depthwise conv3x3 s1 64     (BN + PReLU)
    bottleneck t=2 c=64  n=5 s=2
    bottleneck t=4 c=128 n=1 s=2
    bottleneck t=2 c=128 n=6 s=1
    bottleneck t=4 c=128 n=1 s=2
    bottleneck t=2 c=128 n=2 s=1
    conv1x1 -> 512              (BN + PReLU)
    GDConv: depthwise 7x7 on 7x7 maps, no padding (BN, linear)
    Linear 512 -> D, no bias    (BatchNorm1d, affine)

Bottleneck = 1x1 expand (BN+PReLU) -> 3x3 depthwise (BN+PReLU, stride s) -> 1x1 linear projection (BN),
with a residual add whenever stride is 1 and in/out channels match (the MobileNetV2 rule, which is what
the public implementations do). Per-channel PReLU everywhere except the linear layers.

The paper's 128-d embedding gives ~1.00M parameters and ~221M multiply-adds at 112x112 (losses.md §9.2);
the 512-d variant used by the KD papers gives ~1.20M / ~221.2M. The forward pass has no data-dependent
Python control flow, so it exports with torch.export / ONNX / LiteRT unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

# (expansion t, output channels c, repeats n, stride of the first repeat s) — the paper's table.
BOTTLENECK_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)


class ConvBNPReLU(nn.Sequential):
    """Conv (no bias, BN follows) + BatchNorm + per-channel PReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
        )


class ConvBN(nn.Sequential):
    """Linear conv (no activation) + BatchNorm: the projection and GDConv layers."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, padding: int = 0
    ) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        )


class Bottleneck(nn.Module):
    """Inverted residual: expand 1x1, depthwise 3x3, linear project 1x1; shortcut when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            ConvBNPReLU(cin, hidden, 1),
            ConvBNPReLU(hidden, hidden, 3, stride=stride, groups=hidden),
            ConvBN(hidden, cout, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        # use_residual is fixed at construction, so tracing/export sees a static graph.
        if self.use_residual:
            out = out + x
        return out


class MobileFaceNet(nn.Module):
    """MobileFaceNet; ``forward`` maps NCHW float (N,3,112,112) to raw (unnormalised) (N, embedding_dim)."""

    def __init__(self, embedding_dim: int = 128) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be positive, got {embedding_dim}")
        self.embedding_dim = embedding_dim
        self.conv1 = ConvBNPReLU(3, 64, 3, stride=2)
        self.conv2_dw = ConvBNPReLU(64, 64, 3, stride=1, groups=64)
        blocks: list[nn.Module] = []
        cin = 64
        for t, c, n, s in BOTTLENECK_SETTINGS:
            for i in range(n):
                blocks.append(Bottleneck(cin, c, stride=s if i == 0 else 1, expansion=t))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.conv_sep = ConvBNPReLU(cin, 512, 1)
        # GDConv: a 7x7 depthwise kernel covering the whole 7x7 map, so each position gets its own weight
        # (unlike global average pooling, which treats the face centre and corners alike).
        self.gdconv = ConvBN(512, 512, 7, groups=512)
        self.linear = nn.Linear(512, embedding_dim, bias=False)
        self.bn_out = nn.BatchNorm1d(embedding_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.conv2_dw(x)
        x = self.blocks(x)
        x = self.conv_sep(x)
        x = self.gdconv(x)
        x = torch.flatten(x, 1)
        x = self.linear(x)
        return self.bn_out(x)
