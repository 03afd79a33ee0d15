"""Walking a backbone's blocks by a FlexDiT layout: the data flow of the five roles, for any backbone.

A block is called as `block(x, cond, context=None, **extra)`: attention queries come from `x`, keys and values
from `context` (default `x`), with the block's own norm and modulation for both; a Poolingformer block has
dropped its Q/K and attends by the token mean of V. The backbone supplies how tokens are pooled and unpooled
(`to_sparse`, `to_dense`), how dense tokens are grouped as keys/values for the sparse queries and back
(`dense_kv`, `sparse_kv`: identity when each sparse sequence comes from one dense sequence), the conditions of
dense and sparse sequences, and a hook run after each block (Latte: its temporal block).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


def run_layout(roles: str, blocks: Sequence[nn.Module], fusions: Iterable[nn.Module], x: torch.Tensor, *,
               dense_cond: torch.Tensor, sparse_cond: torch.Tensor,
               to_sparse: Callable[[torch.Tensor], torch.Tensor], to_dense: Callable[[torch.Tensor], torch.Tensor],
               dense_kv: Callable[[torch.Tensor], torch.Tensor] = _same,
               sparse_kv: Callable[[torch.Tensor], torch.Tensor] = _same,
               after_block: Callable[[int, torch.Tensor, bool], torch.Tensor] | None = None,
               tokens: list | None = None, **extra) -> torch.Tensor:
    """Dense tokens x (S, N, D) through the blocks; returns dense tokens. `tokens`, if given, receives
    (role, tokens per sequence) for every block. `extra` goes to every block (e.g. text for cross-attention)."""
    fusions = iter(fusions)
    skip = None
    for i, (role, block) in enumerate(zip(roles, blocks, strict=True)):
        if role == "G":        # sparse generation: pooled queries read the dense tokens (FlexDiT Eq. 2)
            skip = x
            x = block(to_sparse(x), sparse_cond, context=dense_kv(x), **extra)
        elif role == "R":      # dense recovery: fused queries read the sparse tokens (FlexDiT Eqs. 3-4)
            x = block(next(fusions)(to_dense(x), skip), dense_cond, context=sparse_kv(x), **extra)
        else:                  # Poolingformer, sparse, dense and top blocks: their own token set
            x = block(x, sparse_cond if role == "S" else dense_cond, **extra)
        if tokens is not None:
            tokens.append((role, x.shape[1]))
        if after_block is not None:
            x = after_block(i, x, role in "GS")
    return x
