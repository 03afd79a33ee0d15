"""Structured width of a transformer block: its attention heads and equal groups of its MLP hidden units, the units
DyDiT's timestep-wise dynamic width turns on and off (Zhao et al. 2024, arXiv 2410.03456, Sec. 3.2).

DyDiT keeps head 0 and MLP group 0 always on, so before fine-tuning the units are put in order of importance: the
most important first (the paper's "importance ordering"; its hooks are absent from the released code, so the
criterion is ours):

- head h: ‖W_v[h]‖_F · ‖W_proj[:, h]‖_F (with the value bias in W_v[h]). Queries and keys only decide how a head
  mixes its values (the softmax weights sum to 1); the size of what the head adds to the residual is set by its
  value rows and its columns of the output projection.
- MLP group g (hidden units g·G … (g+1)·G − 1): ‖W_fc1[g]‖_F · ‖W_fc2[:, g]‖_F (with the fc1 bias in W_fc1[g]).

`reorder_block` permutes heads (the q, k and v rows of each head together, and the matching proj columns) and
groups (fc1 rows and bias, fc2 columns; units keep their order inside a group) into that order. It changes no
function: attention and the MLP are sums over heads and hidden units (tests/test_width.py, float64, 1e-12).
Blocks follow the layout of `flexgen.video.latte.LatteBlock` (timm's fused qkv; a Poolingformer has `attn.v`).

Then the two ways to run part of a block: the masked definition that DyDiT trains with (`masked_attention`,
`masked_mlp`: everything computed, gated by 0/1) and the computation that skips (`SlicedWeights`,
`sliced_attention`, `sliced_mlp`, `packed_tokens_mlp`), equal to it to float64 rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from flexgen.attention import attention


def head_rows(dim: int, num_heads: int, order: torch.Tensor) -> torch.Tensor:
    """Row indices of a (dim, ·) weight whose rows are num_heads consecutive head slices, heads in `order`."""
    head_dim = dim // num_heads
    return (order[:, None] * head_dim + torch.arange(head_dim, device=order.device)).reshape(-1)


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


@torch.no_grad()
def unit_importance(in_weight: torch.Tensor, in_bias: torch.Tensor | None, out_weight: torch.Tensor,
                    num_units: int) -> torch.Tensor:
    """(num_units,) float64: ‖W_in[u] | b_in[u]‖_F · ‖W_out[:, u]‖_F for units of equal consecutive rows of
    `in_weight` (U·R, D) and columns of `out_weight` (D', U·R): a head (value rows, output-projection columns) or
    an MLP group (fc1 rows, fc2 columns)."""
    rows = in_weight if in_bias is None else torch.cat([in_weight, in_bias[:, None]], dim=1)
    if rows.shape[0] % num_units:
        raise ValueError(f"{rows.shape[0]} rows do not split into {num_units} equal units")
    rows = rows.double().reshape(num_units, -1)
    cols = out_weight.double().reshape(out_weight.shape[0], num_units, -1).transpose(0, 1).flatten(1)
    return rows.norm(dim=1) * cols.norm(dim=1)


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


# ----------------------------------------------------------------------------------------------------------------
# Running part of a block: the masked definition (what DyDiT trains) and the skipping computation (what it buys).
# A width mask is one (H,) 0/1 vector per sampler step (a function of t alone), so the skipping path slices the
# active heads' and groups' weights once per distinct mask and reuses them (`SlicedWeights`).


def _active(mask: torch.Tensor) -> torch.Tensor:
    if mask.ndim != 1:
        raise ValueError(f"a width mask is one (units,) 0/1 vector shared by the batch, got shape {tuple(mask.shape)}")
    return mask.nonzero().squeeze(1).cpu()


def take_units(weight: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """`weight`'s entries `index` (ascending) along `dim`: a view when they are one contiguous run (the first k
    heads or groups: the synthetic routers, and what importance ordering favours), else a copy."""
    n = index.numel()
    if n and int(index[-1]) - int(index[0]) == n - 1:                      # ascending and unique: one run
        return weight.narrow(dim, int(index[0]), n)
    return weight.index_select(dim, index.to(weight.device))


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


def _held_bytes(value: Any, shared: set[int]) -> int:
    """Bytes of the tensors in `value` (nested tuples) whose storage is not one of `shared` (views cost none)."""
    if isinstance(value, torch.Tensor):
        return 0 if value.untyped_storage().data_ptr() in shared else value.nbytes
    return sum(_held_bytes(v, shared) for v in value) if isinstance(value, (tuple, list)) else 0


class SliceCache:
    """Slices of one block's weights per distinct (head, group) mask pattern. Where every active set is one
    contiguous run the slices are views of the weights and cost no memory; other patterns (a trained router's) are
    copies, and at most `max_copies` of those are held (least recently used dropped): a sampler walks t in order,
    so consecutive steps share a pattern and a copy is made once per change. `patterns` counts the distinct
    patterns used, `hits` the lookups served from the cache, `nbytes` the bytes held beside the weights.
    `weights()` lists the tensors the slices come from: the cache is dropped when any of them changes (loaded,
    trained, moved or cast), so a slice is never stale. `take(head_index, group_index, num_groups)` makes the
    slices of the active units."""

    def __init__(self, weights: Callable[[], Sequence[torch.Tensor]],
                 take: Callable[[torch.Tensor, torch.Tensor, int], Any], max_copies: int = 1) -> None:
        self._weights, self._take = weights, take
        self._cache: dict[tuple, Any] = {}                  # key -> slices, least recently used first
        self._copied: dict[tuple, int] = {}                 # key -> bytes it holds beside the weights (same order)
        self._seen: set[tuple] = set()
        self._weights_seen: tuple = ()
        self.hits = 0
        self.max_copies = max_copies

    @property
    def max_copies(self) -> int:
        return self._max_copies

    @max_copies.setter
    def max_copies(self, value: int) -> None:
        """Lowering it drops the least recently used copies at once."""
        self._max_copies = value
        self._evict(keep=value)

    def _evict(self, keep: int) -> None:
        while self._copied and len(self._copied) > max(keep, 0):
            oldest = next(iter(self._copied))
            del self._copied[oldest], self._cache[oldest]

    @property
    def patterns(self) -> int:
        return len(self._seen)

    @property
    def nbytes(self) -> int:
        """Bytes the cached slices hold beside the weights (memory a skipping forward keeps)."""
        return sum(self._copied.values())

    def get(self, heads: torch.Tensor, groups: torch.Tensor) -> Any:
        """The slices for 0/1 masks heads (H,) and groups (G,)."""
        head_index, group_index = _active(heads), _active(groups)
        key = (tuple(head_index.tolist()), tuple(group_index.tolist()))
        weights = tuple((w.data_ptr(), w._version, w.dtype) for w in self._weights())
        if weights != self._weights_seen:
            self._cache.clear()
            self._copied.clear()
            self._seen.clear()
            self._weights_seen = weights
        self._seen.add(key)
        if key in self._cache:
            self.hits += 1
            self._cache[key] = self._cache.pop(key)         # most recently used last
            if key in self._copied:
                self._copied[key] = self._copied.pop(key)
            return self._cache[key]
        with torch.no_grad():
            slices = self._take(head_index, group_index, len(groups))
        held = _held_bytes(slices, {w.untyped_storage().data_ptr() for w in self._weights()})
        if held:
            self._evict(keep=self.max_copies - 1)
            if self.max_copies < 1:
                return slices
            self._copied[key] = held
        self._cache[key] = slices
        return slices


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


def packed_tokens(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """`fn` (a per-token map D -> D) on the kept tokens only (gathered over the whole batch, no padding: each sample
    keeps its own count), scattered back into zeros; no call when no token is kept. x (..., N, D), tokens (..., N)
    0/1."""
    flat = x.reshape(-1, x.shape[-1])                                         # (S·N, D)
    index = tokens.reshape(-1).nonzero().squeeze(1)                           # (M,)
    if index.numel() == flat.shape[0]:                                        # every token kept: no gather
        return fn(x)
    out = torch.zeros_like(flat)
    if index.numel():
        out[index] = fn(flat[index])                                          # (M, D) -> rows of (S·N, D)
    return out.reshape(x.shape)


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
    from flexgen.video.latte import modulate

    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.modulation(cond, x.shape[0])
    h = modulate(block.norm1(x), shift_msa, scale_msa)                        # (S, N, D)
    kv = None if context is None else modulate(block.norm1(context), shift_msa, scale_msa)     # (S, M, D)
    weights = None if sliced is None else sliced.get(heads, groups)
    attn = (masked_attention(block.attn, h, heads, kv) if weights is None else
            sliced_attention(block.attn, h, weights, kv))
    x = x + gate_msa * attn                                                   # (S, N, D)
    tokens = None if token_router is None else token_router(x, generator=generator)   # (S, N)
    if tokens is not None and complete is not None:
        tokens = torch.where(complete[:, None], 1.0, tokens).to(tokens.dtype)
    h = modulate(block.norm2(x), shift_mlp, scale_mlp)                        # (S, N, D)
    if weights is None:
        mlp = masked_mlp(block.mlp, h, groups)
        if tokens is not None:
            mlp = mlp * tokens[..., None]
    else:
        kept = torch.ones(h.shape[:-1], dtype=h.dtype, device=h.device) if tokens is None else tokens
        mlp = packed_tokens_mlp(block.mlp, h, kept, weights)
    return x + gate_mlp * mlp, tokens                                         # (S, N, D)
