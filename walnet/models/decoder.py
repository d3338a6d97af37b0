"""DeepLabV3+ segmentation decoder (Chen et al., the paper's ref. [5]) on WAL-Net's encoder."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """1x1 branch, three 3x3 atrous branches (rates 6/12/18), image pooling; each 256 channels;
    projected 5*256 -> 256. The pooling branch has no BatchNorm (a 1x1 map of batch 1 has no
    batch statistics), so training works at batch size 1."""

    def __init__(self, cin: int, cout: int = 256, rates: tuple[int, ...] = (6, 12, 18)):
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(cin, cout)] + [_conv_bn_relu(cin, cout, 3, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))
        self.project = _conv_bn_relu(cout * (len(rates) + 2), cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=True)
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP on stage 4, upsampled (align_corners=True) to stage 1, concatenated with stage 1
    reduced to 48 channels, two 3x3 conv (256), then 1x1 to `num_classes`: logits at stage-1 size."""

    def __init__(self, low_channels: int, high_channels: int, num_classes: int = 2):
        super().__init__()
        self.aspp = ASPP(high_channels)
        self.reduce = _conv_bn_relu(low_channels, 48)
        self.fuse = nn.Sequential(_conv_bn_relu(256 + 48, 256, 3), _conv_bn_relu(256, 256, 3))
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=True)
        return self.classifier(self.fuse(torch.cat([x, self.reduce(low)], dim=1)))
