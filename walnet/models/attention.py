"""Grid attention gate (Schlemper et al., the paper's ref. [18]) as WAL-Net uses it (docs/design.md §3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GridAttentionGate(nn.Module):
    """Gates a feature map ``x`` with a coarser gating map ``g`` (stage 4).

    ``theta = conv1x1(x)``, ``phi = conv1x1(g)`` bilinearly upsampled to x's size,
    ``psi = conv1x1(relu(theta + phi))`` (one channel, with bias); per sample the map
    ``a = (psi - min psi) / sum(psi - min psi)`` sums to 1 over space (uniform where psi is
    constant, so the zero sum never divides). Returns ``(a * x, a)``.
    """

    def __init__(self, in_channels: int, gating_channels: int, inter_channels: int = 2048):
        super().__init__()
        self.theta = nn.Conv2d(in_channels, inter_channels, 1, bias=False)
        self.phi = nn.Conv2d(gating_channels, inter_channels, 1, bias=False)
        self.psi = nn.Conv2d(inter_channels, 1, 1, bias=True)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        phi = F.interpolate(self.phi(g), size=x.shape[-2:], mode="bilinear", align_corners=False)
        psi = self.psi(F.relu(self.theta(x) + phi)).float()
        shifted = psi - psi.amin(dim=(2, 3), keepdim=True)
        total = shifted.sum(dim=(2, 3), keepdim=True)
        informative = total > 0
        uniform = torch.full_like(shifted, 1.0 / (x.shape[-2] * x.shape[-1]))
        a = torch.where(informative, shifted / torch.where(informative, total, torch.ones_like(total)), uniform)
        return x * a.to(x.dtype), a
