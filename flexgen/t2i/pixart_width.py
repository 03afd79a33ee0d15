"""The PixArt-α block (diffusers' `BasicTransformerBlock`, norm_type "ada_norm_single") at partial width: DyDiT's
block adapter for this family (DyDiT on PixArt-α is ours; the paper's is DiT).

- Units: the self-attention's heads, the text cross-attention's heads (routed with the same head mask when `cross`),
  equal groups of the MLP's hidden units; `reorder_pixart_block` is the function-preserving importance ordering
  (`flexgen.policies.dydit.width.unit_importance`), the cross-attention's heads in their own order.
- `dy_pixart_block` is `flexgen.t2i.pixart.pixart_block` at partial width: the masked definition with per-sample
  gates, or the skipping computation with this block's `SliceCache` (`block_slices`: views or copies of the active
  rows and columns), the MLP on the kept tokens only.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from flexgen.attention import attention_with_key_bias
from flexgen.policies.dydit.width import SliceCache, head_rows, packed_tokens, take_units, unit_importance


class AttnSlices(NamedTuple):
    """Weights of one attention's active heads: q / k / v rows (q and k None for a Poolingformer), out columns."""
    heads: int
    q: tuple | None
    k: tuple | None
    v: tuple
    out: torch.Tensor


class BlockSlices(NamedTuple):
    self_attn: AttnSlices
    cross_attn: AttnSlices | None           # None: the cross-attention runs whole
    fc1: tuple                              # (weight, bias) rows of the active MLP units
    fc2: torch.Tensor                       # columns of the active MLP units


def _linear_rows(layer: nn.Linear | None, rows: torch.Tensor) -> tuple | None:
    if layer is None:
        return None
    return take_units(layer.weight, 0, rows), None if layer.bias is None else take_units(layer.bias, 0, rows)


def _attn_slices(attn: nn.Module, heads: torch.Tensor) -> AttnSlices:
    rows = head_rows(attn.inner_dim, attn.heads, heads)
    return AttnSlices(len(heads), _linear_rows(attn.to_q, rows), _linear_rows(attn.to_k, rows),
                      _linear_rows(attn.to_v, rows), take_units(attn.to_out[0].weight, 1, rows))


def _mlp_layers(block: nn.Module) -> tuple[nn.Linear, nn.Linear, str]:
    """fc1, fc2 and the GELU approximation of a diffusers `FeedForward` (PixArt-α: "gelu-approximate")."""
    act, fc2 = block.ff.net[0], block.ff.net[2]
    if not hasattr(act, "approximate") or not isinstance(fc2, nn.Linear):
        raise ValueError(f"DyDiT routes a GELU FeedForward's groups; this block's MLP is {type(act).__name__}")
    return act.proj, fc2, act.approximate


def block_tensors(block: nn.Module, cross: bool) -> list[torch.Tensor]:
    """The tensors a block's slices come from (a change of any drops its slice cache)."""
    attns = [block.attn1, block.attn2] if cross else [block.attn1]
    layers = [layer for a in attns for layer in (a.to_q, a.to_k, a.to_v, a.to_out[0]) if layer is not None]
    fc1, fc2, _ = _mlp_layers(block)
    return [p for layer in (*layers, fc1, fc2) for p in layer.parameters(recurse=False)]


def block_slices(block: nn.Module, cross: bool, heads: torch.Tensor, groups: torch.Tensor,
                 num_groups: int) -> BlockSlices:
    fc1, fc2, _ = _mlp_layers(block)
    units = head_rows(fc1.out_features, num_groups, groups)
    return BlockSlices(_attn_slices(block.attn1, heads), _attn_slices(block.attn2, heads) if cross else None,
                       _linear_rows(fc1, units), take_units(fc2.weight, 1, units))


@torch.no_grad()
def reorder_pixart_block(block: nn.Module, cross: bool, num_groups: int) -> None:
    """DyDiT's importance ordering (`policies.dydit.width`: ‖value rows‖·‖output columns‖ per head, ‖fc1 rows‖·‖fc2
    columns‖ per MLP group) of a diffusers PixArt block, in place; the cross-attention's heads in their own order
    when they are routed. Function-preserving (attention and MLP are sums over heads and units)."""
    for attn in (block.attn1, block.attn2) if cross else (block.attn1,):
        out = attn.to_out[0]
        order = torch.argsort(unit_importance(attn.to_v.weight, attn.to_v.bias, out.weight, attn.heads),
                              descending=True, stable=True)
        rows = head_rows(attn.inner_dim, attn.heads, order)
        for layer in (attn.to_q, attn.to_k, attn.to_v):
            if layer is not None:
                layer.weight.copy_(layer.weight[rows])
                if layer.bias is not None:
                    layer.bias.copy_(layer.bias[rows])
        out.weight.copy_(out.weight[:, rows])
    fc1, fc2, _ = _mlp_layers(block)
    order = torch.argsort(unit_importance(fc1.weight, fc1.bias, fc2.weight, num_groups), descending=True,
                          stable=True)
    units = head_rows(fc1.out_features, num_groups, order)
    fc1.weight.copy_(fc1.weight[units])
    fc1.bias.copy_(fc1.bias[units])
    fc2.weight.copy_(fc2.weight[:, units])


def _weights(layer: nn.Linear | None, sliced: tuple | None) -> tuple:
    return (layer.weight, layer.bias) if sliced is None else sliced


def gated_attention(attn: nn.Module, x: torch.Tensor, context: torch.Tensor | None = None,
                    key_bias: torch.Tensor | None = None, *, heads: torch.Tensor | None = None,
                    sliced: AttnSlices | None = None) -> torch.Tensor:
    """A diffusers `Attention` of x (B, N, D) on `context` (B, L, ·) (None: x) with diffusers' additive key bias:
    every head, each gated by `heads` (B, H) or (H,) (the masked definition; None: no gates), or only the heads
    of `sliced` (the skipping forward). A Poolingformer (no Q/K) projects the token mean through V."""
    B, N, _ = x.shape
    h = attn.heads if sliced is None else sliced.heads
    kv = x if context is None else context
    out_bias = attn.to_out[0].bias
    out_weight = attn.to_out[0].weight if sliced is None else sliced.out
    v = F.linear(x.mean(dim=1, keepdim=True) if attn.to_q is None else kv,
                 *_weights(attn.to_v, None if sliced is None else sliced.v))
    v = v.reshape(B, v.shape[1], h, -1)                                                   # (B, L or 1, h, Dh)
    if attn.to_q is None:                                   # Poolingformer: uniform attention = the mean of V
        out = v                                                                           # (B, 1, h, Dh)
    else:
        q = F.linear(x, *_weights(attn.to_q, None if sliced is None else sliced.q)).reshape(B, N, h, -1)
        k = F.linear(kv, *_weights(attn.to_k, None if sliced is None else sliced.k)).reshape(B, -1, h, q.shape[-1])
        out = attention_with_key_bias(q, k, v, key_bias)                                  # (B, N, h, Dh)
    if heads is not None:
        out = out * heads.to(out.dtype).reshape(-1, 1, attn.heads, 1)
    out = F.linear(out.reshape(B, out.shape[1], -1), out_weight, out_bias)               # (B, N or 1, D)
    return out.expand(B, N, out.shape[-1])


def dy_pixart_block(block: nn.Module, x: torch.Tensor, cond: torch.Tensor, context: torch.Tensor | None = None, *,
                    text: torch.Tensor, text_mask: torch.Tensor | None, heads: torch.Tensor, groups: torch.Tensor,
                    token_router: nn.Module | None = None, cross: bool = True, sliced: SliceCache | None = None,
                    complete: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`flexgen.t2i.pixart.pixart_block` at partial width (DyDiT Fig. 2 on PixArt-α's block): self-attention on
    the gated heads, the text cross-attention (on the gated heads when `cross`), then the token router on the
    residual stream and the MLP on the gated groups of the kept tokens. heads (B, H) and groups (B, G) per sample
    (masked), or (H,) / (G,) with `sliced` (this block's `SliceCache`: only the active units and tokens are
    computed). Returns (x, token gates (B, N) or None)."""
    B = x.shape[0]
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
        block.scale_shift_table[None] + cond.reshape(B, 6, -1)).chunk(6, dim=1)           # each (B, 1, D)

    def modulated(tokens):
        return block.norm1(tokens) * (1 + scale_msa) + shift_msa

    weights = None if sliced is None else sliced.get(heads, groups)
    gates = heads if weights is None else None
    h = modulated(x)                                                                       # (B, N, D)
    kv = None if context is None else modulated(context)
    x = x + gate_msa * gated_attention(block.attn1, h, kv, heads=gates,
                                       sliced=None if weights is None else weights.self_attn)
    if cross:
        x = x + gated_attention(block.attn2, x, text, text_mask, heads=gates,
                                sliced=None if weights is None else weights.cross_attn)    # no norm, no gate
    else:
        x = x + gated_attention(block.attn2, x, text, text_mask)
    tokens = None if token_router is None else token_router(x)                             # (B, N)
    if tokens is not None and complete is not None:
        tokens = torch.where(complete[:, None], 1.0, tokens).to(tokens.dtype)
    h = block.norm2(x) * (1 + scale_mlp) + shift_mlp                                       # (B, N, D)
    fc1, fc2, approximate = _mlp_layers(block)
    if weights is None:
        hidden = F.gelu(fc1(h), approximate=approximate)                                   # (B, N, r·D)
        hidden = hidden * groups.to(h.dtype).repeat_interleave(fc1.out_features // groups.shape[-1], -1)[:, None]
        mlp = fc2(hidden)
        if tokens is not None:
            mlp = mlp * tokens[..., None]
    else:
        def mlp_at_width(t):
            return F.linear(F.gelu(F.linear(t, *weights.fc1), approximate=approximate), weights.fc2, fc2.bias)

        kept = torch.ones(h.shape[:-1], dtype=h.dtype, device=h.device) if tokens is None else tokens
        mlp = packed_tokens(mlp_at_width, h, kept)
    return x + gate_mlp * mlp, tokens                                                      # (B, N, D)
