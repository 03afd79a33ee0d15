"""The Latte / DiT block (`flexgen.video.latte.LatteBlock`) at partial width: DyDiT's block adapter for this family.

- Importance ordering (`reorder_block`): head h by ‖W_v[h] | b_v[h]‖_F · ‖W_proj[:, h]‖_F, MLP group g by
  ‖W_fc1[g] | b_fc1[g]‖_F · ‖W_fc2[:, g]‖_F (`flexgen.policies.dydit.width.unit_importance`); heads (q, k, v rows
  together, proj columns) and groups (fc1 rows and bias, fc2 columns) permuted into descending order. It changes no
  function: attention and the MLP are sums over heads and hidden units (tests/policies/test_width.py, float64, 1e-12).
- The masked definition DyDiT trains with (`masked_attention`, `masked_mlp`: everything computed, gated by 0/1) and
  the computation that skips (`SlicedWeights`, `sliced_attention`, `sliced_mlp`, `packed_tokens_mlp`), equal to it
  to float64 rounding; `run_block` is the whole block (DyDiT, Fig. 2) either way.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from flexgen.attention import attention
from flexgen.policies.dydit.width import SliceCache, head_rows, packed_tokens, take_units, unit_importance


def _unit_rows(block: nn.Module, heads: torch.Tensor, groups: torch.Tensor, num_groups: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For head indices `heads` and group indices `groups` (in that order): the feature rows of those heads in
    q / k / v and proj's columns (D_h,), the rows of the fused qkv (3·D_h,; a Poolingformer's `v`: D_h,), and the
    MLP hidden units (U,)."""
    dim, H = block.attn.proj.in_features, block.attn.num_heads
    rows = head_rows(dim, H, heads)
    if block.attn.qkv is None:                                                # a Poolingformer: its value rows
        return rows, rows, head_rows(block.mlp.fc1.out_features, num_groups, groups)
    qkv_rows = torch.cat([rows + i * dim for i in range(3)])                  # q, k, v blocks alike
    return rows, qkv_rows, head_rows(block.mlp.fc1.out_features, num_groups, groups)



def _value_rows(attn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the value projection: the last third of the fused qkv, or a Poolingformer's `v`."""
    if attn.qkv is None:
        return attn.v.weight, attn.v.bias
    dim = attn.proj.in_features
    return attn.qkv.weight[2 * dim:], attn.qkv.bias[2 * dim:]



def head_importance(attn: nn.Module) -> torch.Tensor:
    """(num_heads,) float64: ‖W_v[h] | b_v[h]‖_F · ‖W_proj[:, h]‖_F for each head h."""
    weight, bias = _value_rows(attn)
    return unit_importance(weight, bias, attn.proj.weight, attn.num_heads)



def group_importance(mlp: nn.Module, num_groups: int) -> torch.Tensor:
    """(num_groups,) float64: ‖W_fc1[g] | b_fc1[g]‖_F · ‖W_fc2[:, g]‖_F for each group g of hidden units."""
    if mlp.fc1.out_features % num_groups:
        raise ValueError(f"the MLP's {mlp.fc1.out_features} hidden units do not split into {num_groups} equal groups")
    return unit_importance(mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, num_groups)



@torch.no_grad()
def reorder_block(block: nn.Module, num_groups: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Permute `block`'s heads and MLP groups (num_groups defaults to the number of heads, as DyDiT) in place into
    descending importance. Returns (head order, group order): new unit i is old unit order[i]."""
    attn, mlp = block.attn, block.mlp
    groups = attn.num_heads if num_groups is None else num_groups
    heads = torch.argsort(head_importance(attn), descending=True, stable=True)
    group_order = torch.argsort(group_importance(mlp, groups), descending=True, stable=True)

    rows, qkv_rows, units = _unit_rows(block, heads, group_order, groups)     # new -> old index
    if attn.qkv is None:
        attn.v.weight.copy_(attn.v.weight[rows])
        attn.v.bias.copy_(attn.v.bias[rows])
    else:
        attn.qkv.weight.copy_(attn.qkv.weight[qkv_rows])
        attn.qkv.bias.copy_(attn.qkv.bias[qkv_rows])
    attn.proj.weight.copy_(attn.proj.weight[:, rows])

    mlp.fc1.weight.copy_(mlp.fc1.weight[units])
    mlp.fc1.bias.copy_(mlp.fc1.bias[units])
    mlp.fc2.weight.copy_(mlp.fc2.weight[:, units])
    return heads, group_order



class Slices(NamedTuple):
    """The weights of a block's active heads and MLP groups (views of the block's weights where the active units
    are one contiguous run, copies otherwise)."""
    heads: int                  # active heads
    qkv_weight: torch.Tensor    # (3, h·Dh, D): q, k, v rows of the active heads (a Poolingformer: v rows (h·Dh, D))
    qkv_bias: torch.Tensor      # (3, h·Dh) (a Poolingformer: (h·Dh,))
    proj_weight: torch.Tensor   # its input columns of the active heads
    fc1_weight: torch.Tensor
    fc1_bias: torch.Tensor
    fc2_weight: torch.Tensor    # its input columns of the active units



class SlicedWeights(SliceCache):
    """The active slices of one `LatteBlock`'s qkv / proj and fc1 / fc2 (`Slices`), per mask pattern."""

    def __init__(self, block: nn.Module, max_copies: int = 1) -> None:
        self.block = block
        super().__init__(self._tensors, self._slices, max_copies)

    def _tensors(self) -> tuple:
        attn, mlp = self.block.attn, self.block.mlp
        qkv = attn.v if attn.qkv is None else attn.qkv
        return qkv.weight, qkv.bias, attn.proj.weight, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight

    def _slices(self, head_index: torch.Tensor, group_index: torch.Tensor, num_groups: int) -> Slices:
        attn, mlp = self.block.attn, self.block.mlp
        dim = attn.proj.in_features
        rows, _, units = _unit_rows(self.block, head_index, group_index, num_groups)
        if attn.qkv is None:                                                  # a Poolingformer: its value rows
            qkv_weight, qkv_bias = take_units(attn.v.weight, 0, rows), take_units(attn.v.bias, 0, rows)
        else:                                                                 # the q, k and v sections alike
            qkv_weight = take_units(attn.qkv.weight.view(3, dim, -1), 1, rows)
            qkv_bias = take_units(attn.qkv.bias.view(3, dim), 1, rows)
        return Slices(len(head_index), qkv_weight, qkv_bias, take_units(attn.proj.weight, 1, rows),
                      take_units(mlp.fc1.weight, 0, units), take_units(mlp.fc1.bias, 0, units),
                      take_units(mlp.fc2.weight, 1, units))



def _per_sequence(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A mask (U,) shared by every sequence, or (S, U) one per sequence of x (S, N, ·), as (S or 1, 1, U)."""
    mask = mask.to(x.dtype)
    if mask.ndim == 1:
        return mask[None, None]
    if mask.ndim != 2 or mask.shape[0] != x.shape[0]:
        raise ValueError(f"a mask is (units,) or (sequences, units) for {x.shape[0]} sequences, got "
                         f"{tuple(mask.shape)}")
    return mask[:, None]



def masked_attention(attn: nn.Module, x: torch.Tensor, heads: torch.Tensor,
                     context: torch.Tensor | None = None) -> torch.Tensor:
    """The definition: every head computed, each head's output times its gate, then proj. x (S, N, D), heads (H,)
    or (S, H) (training: each sample has its own t, so its own mask); keys and values from `context` (S, M, D)
    when given (FlexDiT's sparse generation and dense recovery)."""
    return attn(x, context, head_gates=_per_sequence(heads, x)[..., None])   # gates (S or 1, 1, H, 1)



def sliced_attention(attn: nn.Module, x: torch.Tensor, sliced: Slices,
                     context: torch.Tensor | None = None) -> torch.Tensor:
    """The same with only the active heads computed (weights from `SlicedWeights.get`). x (S, N, D), context
    (S, M, D) or None; a Poolingformer projects the token mean through its active value rows."""
    S, N, D = x.shape
    h, Dh = sliced.heads, D // attn.num_heads
    w, b = sliced.qkv_weight, sliced.qkv_bias
    if attn.qkv is None:                                                      # Poolingformer: token mean of V
        return F.linear(F.linear(x.mean(dim=1, keepdim=True), w, b), sliced.proj_weight, attn.proj.bias)  # (S, 1, D)
    kv = x if context is None else context
    if w.is_contiguous():                           # a copy (3, h·Dh, D): q, k and v in one product when self-attn
        w, b = w.reshape(3 * h * Dh, D), b.reshape(3 * h * Dh)
        if context is None:
            q, k, v = F.linear(x, w, b).reshape(S, N, 3, h, Dh).unbind(2)    # 3 × (S, N, h, Dh)
        else:
            q = F.linear(x, w[:h * Dh], b[:h * Dh]).reshape(S, N, h, Dh)      # (S, N, h, Dh)
            k, v = F.linear(kv, w[h * Dh:], b[h * Dh:]).reshape(S, kv.shape[1], 2, h, Dh).unbind(2)
    else:                                           # views of the three sections: one product each
        q = F.linear(x, w[0], b[0]).reshape(S, N, h, Dh)                      # (S, N, h, Dh)
        k, v = (F.linear(kv, w[i], b[i]).reshape(S, kv.shape[1], h, Dh) for i in (1, 2))
    return F.linear(attention(q, k, v).reshape(S, N, h * Dh), sliced.proj_weight, attn.proj.bias)



def masked_mlp(mlp: nn.Module, x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """The definition: fc1's output times its group's gate before the activation (GELU(0) = 0), then fc2.
    x (S, N, D), groups (G,) or (S, G)."""
    gate = _per_sequence(groups, x)                                           # (S or 1, 1, G)
    return mlp(x, unit_gates=gate.repeat_interleave(mlp.fc1.out_features // gate.shape[-1], dim=-1))



def sliced_mlp(mlp: nn.Module, x: torch.Tensor, sliced: Slices) -> torch.Tensor:
    """The same with only the active groups' hidden units computed. x (..., D)."""
    hidden = mlp.act(F.linear(x, sliced.fc1_weight, sliced.fc1_bias))
    return F.linear(hidden, sliced.fc2_weight, mlp.fc2.bias)



def packed_tokens_mlp(mlp: nn.Module, x: torch.Tensor, tokens: torch.Tensor, sliced: Slices) -> torch.Tensor:
    """The MLP at its sliced width on the kept tokens only (`packed_tokens`)."""
    return packed_tokens(lambda h: sliced_mlp(mlp, h, sliced), x, tokens)



def run_block(block: nn.Module, x: torch.Tensor, cond: torch.Tensor, heads: torch.Tensor, groups: torch.Tensor,
              token_router: nn.Module | None = None, *, context: torch.Tensor | None = None,
              sliced: SlicedWeights | None = None, complete: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One `LatteBlock` at partial width (DyDiT, Fig. 2): attention on the gated heads, then the token router on
    the residual stream after the attention update, then the MLP on the gated groups of the kept tokens; a token
    it turns off keeps its value through the MLP half. Returns (x, token gates (S, N) or None). Keys and values
    come from `context` (normalised and modulated like x) when given, as in `LatteBlock`'s block protocol.

    With `sliced` (a `SlicedWeights` of this block; width masks (H,) / (G,) shared by the batch) only the active
    heads, groups and tokens are computed; without it, the masked definition (masks may be per sequence)."""
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.modulation(cond, x.shape[0])
    h = block.norm1(x) * (1 + scale_msa) + shift_msa                          # (S, N, D), as `modulate`
    kv = None if context is None else block.norm1(context) * (1 + scale_msa) + shift_msa       # (S, M, D)
    weights = None if sliced is None else sliced.get(heads, groups)
    attn = (masked_attention(block.attn, h, heads, kv) if weights is None else
            sliced_attention(block.attn, h, weights, kv))
    x = x + gate_msa * attn                                                   # (S, N, D)
    tokens = None if token_router is None else token_router(x, generator=generator)   # (S, N)
    if tokens is not None and complete is not None:
        tokens = torch.where(complete[:, None], 1.0, tokens).to(tokens.dtype)
    h = block.norm2(x) * (1 + scale_mlp) + shift_mlp                          # (S, N, D)
    if weights is None:
        mlp = masked_mlp(block.mlp, h, groups)
        if tokens is not None:
            mlp = mlp * tokens[..., None]
    else:
        kept = torch.ones(h.shape[:-1], dtype=h.dtype, device=h.device) if tokens is None else tokens
        mlp = packed_tokens_mlp(block.mlp, h, kept, weights)
    return x + gate_mlp * mlp, tokens                                         # (S, N, D)
