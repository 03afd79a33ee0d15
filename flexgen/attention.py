"""One attention entry point for every backbone.

Layout is (B, N, H, Dh) for queries, keys and values (xformers' layout; SDPA wants heads first, so the
transposes happen here, once). Query and key lengths may differ (cross-attention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(Dh)) v per head: (B, Nq, H, Dh), (B, Nk, H, Dh), (B, Nk, H, Dh) -> (B, Nq, H, Dh)."""
    if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"attention expects (B, N, H, Dh) tensors with matching B, H, Dh; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)
