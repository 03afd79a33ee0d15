"""DyDiT's compute budget (Zhao et al. 2024, arXiv 2410.03456; the released `DyDiT/loss.py`): what fraction of a
block's MACs its router masks keep, and the loss that pulls the batch mean of that fraction to a target λ.
`flexgen.policies.dydit.routing.dydit_losses` uses it in training.

Per block l, A_l (attention) and P_l (MLP) are MACs per sample derived from the dimensions (DiT's convention:
qkv and proj, QKᵀ and AV; fc1 and fc2). For sample b,

    F_b = Σ_l [A_l · mean(heads_l,b) + P_l · mean(groups_l,b) · mean(tokens_l,b)] / Σ_l (A_l + P_l),

means over every mask entry, the always-on unit included; token masks do not reduce attention (every token
attends). Loss: (mean_b F_b − λ)², with λ held at 1 for the first steps and then annealed linearly to its target.
For DiT-XL/2 at 256 px (N = 256, D = 1152) this gives the reference's A = 1.5099 and P = 2.7179 GMACs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BlockCost:
    attention: float    # MACs per sample of the attention branch (all heads)
    mlp: float          # MACs per sample of the MLP branch (all hidden units, all tokens)


def block_cost(seq_len: int, dim: int, num_seqs: int = 1, mlp_ratio: float = 4.0, *, kv_len: int | None = None,
               pooled: bool = False) -> BlockCost:
    """MACs per sample of a block over `num_seqs` sequences of `seq_len` query tokens (a Latte temporal block: one
    sequence of F frames per token position; a spatial block: one sequence of N tokens per frame). FlexDiT's roles:
    keys and values from `kv_len` tokens per sequence (sparse generation reads the dense tokens, dense recovery the
    sparse ones); `pooled`, a Poolingformer (V and the output projection of one token mean per sequence)."""
    if seq_len < 1 or dim < 1 or num_seqs < 1:
        raise ValueError(f"seq_len, dim and num_seqs must be >= 1, got {seq_len}, {dim}, {num_seqs}")
    kv = seq_len if kv_len is None else kv_len
    tokens = seq_len * num_seqs
    mlp = float(2 * tokens * dim * round(mlp_ratio * dim))
    if pooled:
        return BlockCost(float(2 * num_seqs * dim ** 2), mlp)
    # DyDiT loss.py: attention 4·N·D² (qkv, proj) + 2·N²·D (QKᵀ, AV); MLP 2·N·D·(r·D). With M keys: q and proj
    # 2·N·D², k and v 2·M·D², QKᵀ and AV 2·N·M·D.
    attention = 2 * tokens * dim ** 2 + 2 * num_seqs * kv * dim ** 2 + 2 * num_seqs * seq_len * kv * dim
    return BlockCost(float(attention), mlp)


def role_block_cost(role: str, dense_len: int, sparse_len: int, dim: int, mlp_ratio: float = 4.0, *,
                    frames: int = 1, sparse_frames: int = 1) -> tuple[BlockCost, int, bool]:
    """A FlexDiT role's spatial block (`flexdit.walk`): (cost per sample, query tokens per sample, whether it
    runs on the sparse set), with `dense_len` / `sparse_len` tokens per frame over `frames` / `sparse_frames`
    frames (pooling across frames: each sparse frame reads the dense tokens of its frames / sparse_frames)."""
    N, M, F, Fs = dense_len, sparse_len, frames, sparse_frames
    if role == "G":                      # sparse queries read the dense tokens of their group of frames
        return block_cost(M, dim, Fs, mlp_ratio, kv_len=F // Fs * N), M * Fs, True
    if role == "S":
        return block_cost(M, dim, Fs, mlp_ratio), M * Fs, True
    if role == "R":                      # dense queries read their frame's sparse tokens
        return block_cost(N, dim, F, mlp_ratio, kv_len=M), N * F, False
    return block_cost(N, dim, F, mlp_ratio, pooled=role == "P"), N * F, False


def flops_fraction(costs: Sequence[BlockCost], heads: Sequence[torch.Tensor], groups: Sequence[torch.Tensor],
                   tokens: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """F_b (B,) from per-block masks: heads (B, H), groups (B, G), tokens (B, ...) or None (every token runs the
    MLP). Gradients flow through the masks (straight-through gates)."""
    if not len(costs) == len(heads) == len(groups) == len(tokens):
        raise ValueError(f"one cost and one mask of each kind per block: got {len(costs)} costs, {len(heads)} "
                         f"head, {len(groups)} group and {len(tokens)} token masks")
    total = sum(c.attention + c.mlp for c in costs)
    kept = 0
    for cost, h, g, tok in zip(costs, heads, groups, tokens, strict=True):
        mlp_share = g.mean(dim=-1) if tok is None else g.mean(dim=-1) * tok.flatten(1).mean(dim=1)
        kept = kept + cost.attention * h.mean(dim=-1) + cost.mlp * mlp_share
    return kept / total


def target_at(step: int, target: float, hold_steps: int = 100, anneal_steps: int = 1000) -> float:
    """λ at a training step: 1 for `hold_steps`, then linear to `target` over `anneal_steps` (DyDiT train.py)."""
    if not 0 < target <= 1:
        raise ValueError(f"the FLOPs target λ must be in (0, 1], got {target}")
    if step < hold_steps:
        return 1.0
    progress = min(1.0, (step - hold_steps) / anneal_steps) if anneal_steps > 0 else 1.0
    return 1.0 + (target - 1.0) * progress


def budget_loss(fraction: torch.Tensor, target: float) -> torch.Tensor:
    """(mean_b F_b − λ)²: the batch mean is held to the target, so some timesteps may spend more than others."""
    return (fraction.mean() - target) ** 2
