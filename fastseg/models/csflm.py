"""CSFRNet's Consistent-Separable Feature Learning Module (CSFLM, He et al. AAAI 2021, Fig. 1)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fastseg.models.layers import ConvBNReLU

MARGIN_BIAS_INIT = -4.0


class ConsistentSeparableFeatureLearning(nn.Module):
    """CSFLM: A -> 3x3 ConvBNReLU -> A'; A' -> 1x1 -> embeddings B; A' -> 1x1 -> sigmoid -> margins C.

    The embeddings are supervised by the class-aware consistency loss (Eq. 4) and, at inference,
    are the C-S features; the margins c_ij only feed Eq. 3 and the smooth loss (Eq. 5), so they are
    computed in training mode only ("at inference we only generate the feature embeddings").

    Margin activation: Eq. 2 writes the Gaussian's width as 1/(2 m_k^2) and the paper replaces it
    by the scale exp(m_k * delta) with delta = 10, the parametrisation of Neven et al. A sigmoid
    keeps c_ij (and so every m_k, a class mean of them) in (0, 1): a positive, bounded margin whose
    scale exp(10 m_k) spans (1, e^10) -- the range delta = 10 is sized for -- and whose smooth
    loss (Eq. 5) is a bounded squared difference. Unbounded margins (raw or tanh) let the scale fall
    towards 0, where every phi is 0: measured on a 512-channel head they collapse there and the
    CAC loss stalls (1.6-1.8 of its maximum 2).

    Initialisation: the margin conv's bias starts at ``MARGIN_BIAS_INIT`` = -4 (m ~ 0.02, scale
    ~ 1.2, the widest Gaussian the sigmoid allows). Default-init embeddings are ~3 apart (squared)
    within a class, so the sigmoid's midpoint (scale e^5 ~ 148) would put every phi at 1, where Eq. 2
    has no gradient: measured, the CAC loss then stays at 2 for 30 steps; from -4 it trains.

    Shapes: A (B, channels, h, w) -> embeddings (B, embedding_channels, h, w), margins (B, 1, h, w)
    in (0, 1) or None in eval mode.
    """

    def __init__(self, channels: int, embedding_channels: int = 32) -> None:
        super().__init__()
        self.conv = ConvBNReLU(channels, channels, 3)
        self.embedding = nn.Conv2d(channels, embedding_channels, 1)
        self.margin = nn.Conv2d(channels, 1, 1)
        nn.init.constant_(self.margin.bias, MARGIN_BIAS_INIT)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        hidden = self.conv(x)  # A'
        embeddings = self.embedding(hidden)  # B
        margins = torch.sigmoid(self.margin(hidden)) if self.training else None  # C
        return embeddings, margins
