"""Moving between dense and sparse token sets: pooling, unpooling and the recovery fusion (FlexDiT Eqs. 2-4).

Token grids are (B, T, H, W, D): T frames (1 for images) of H×W tokens of width D. Sparse tokens are the
adaptive average pool of the dense grid (uniform coverage, each sparse token keeps a place; non-divisible sizes
get PyTorch's uneven adaptive windows); recovery upsamples them back with nearest neighbours, as the released
FlexDiT code does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FUSION_INITS = ("paper", "sparse")


def pool(x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Adaptive average pooling of a token grid: (B, T, H, W, D) -> (B, t, h, w, D)."""
    return F.adaptive_avg_pool3d(x.permute(0, 4, 1, 2, 3), size).permute(0, 2, 3, 4, 1)


def unpool(x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Nearest-neighbour upsampling of a token grid: (B, t, h, w, D) -> (B, T, H, W, D)."""
    return F.interpolate(x.permute(0, 4, 1, 2, 3), size=size, mode="nearest").permute(0, 2, 3, 4, 1)


class Fusion(nn.Module):
    """X_merged = W1·up(X_sparse) + W2·X_dense, the queries of dense recovery (FlexDiT Eq. 3).

    `init="paper"`: W1 = 0, W2 = I (the merged tokens start as the dense tokens that entered the SDTM).
    `init="sparse"`: W1 = I, W2 = 0 (they start as the upsampled sparse tokens; with a full sparse grid the
    converted model then computes exactly what the dense model computes)."""

    def __init__(self, dim: int, init: str = "paper"):
        super().__init__()
        if init not in FUSION_INITS:
            raise ValueError(f"fusion init {init!r} is not one of {', '.join(FUSION_INITS)}")
        self.w_sparse = nn.Linear(dim, dim)
        self.w_dense = nn.Linear(dim, dim)
        with torch.no_grad():
            identity, zero = (self.w_dense, self.w_sparse) if init == "paper" else (self.w_sparse, self.w_dense)
            identity.weight.copy_(torch.eye(dim))
            zero.weight.zero_()
            identity.bias.zero_()
            zero.bias.zero_()

    def forward(self, upsampled: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.w_sparse(upsampled) + self.w_dense(dense)
