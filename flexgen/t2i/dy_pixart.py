"""DyDiT on PixArt-α (Zhao et al. 2024, arXiv 2410.03456, on DiT; PixArt-α is ours): diffusers'
`PixArtTransformer2DModel` with a width router and (where the block sees the dense token set) a token router in
every block, alone or composed with a FlexDiT layout (`FlexPixArtTransformer2DModel`, its parent).

- Width routers read adaLN-single's timestep embedding (B, D) (for 1024-MS it also carries the resolution and
  aspect-ratio embeddings): masks are a function of t and of the image size, shared by both CFG halves and every
  caption. One head mask per block gates the self-attention's heads and, with `route_cross_attention` (default),
  the text cross-attention's heads too (head h of each, both in their own importance order); MLP groups are
  routed. The cross-attention costs about a fifth of PixArt-α's MACs at 256 px (120 text tokens), so routing it
  buys that share too (README: both choices measured).
- The token router reads the residual stream after both attention updates and picks the image tokens that run
  the MLP (text tokens are never routed: they are keys and values only). Blocks on FlexDiT's sparse token set have
  no token router (they have thinned their tokens already).
- The masked forward (training, and the definition) computes everything and gates it; the skipping forward (eval
  mode, every row of the batch at the same t and size: every scheduler step) computes only the active heads,
  groups and tokens, with each block's sliced weights cached per mask pattern (`SliceCache`: views where the
  active units are a prefix, else a bounded number of copies).
- Every forward leaves `routing` (one `BlockRouting` per block): the budget loss, the keep
  rates and the cost from the real kept counts read it. With every router on the model is its parent: the dense
  diffusers model, or the FlexDiT one (tests/test_t2i_dydit.py, float64).

`route_cross_attention` and `dydit_target` (the λ it was trained for, informational) are config entries, saved by
`save_pretrained` and restored by `from_pretrained`, so a plain `PixArtAlphaPipeline.from_pretrained` of a saved
pipeline folder works once this module is imported.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import NamedTuple

import torch
from diffusers import ModelMixin  # noqa: F401  (diffusers looks up a saved component's base classes on its module)
from diffusers.configuration_utils import register_to_config
from torch import nn
from torch.nn import functional as F

from flexgen.policies.dydit.budget import BlockCost, block_cost, role_block_cost
from flexgen.policies.dydit.routers import TokenRouter, WidthRouter
from flexgen.policies.dydit.routing import BlockRouting, RoutedBlock
from flexgen.policies.dydit.width import SliceCache, head_rows, packed_tokens, take_units, unit_importance
from flexgen.policies.flexdit import DensityRecord
from flexgen.presets import TEXT_TOKENS
from flexgen.t2i.pixart import FlexPixArtTransformer2DModel, attention_with_key_bias

# ----------------------------------------------------------------------------------------------------------
# A diffusers block at partial width: its units, importance ordering, slices, the masked and skipping forward.


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


# ----------------------------------------------------------------------------------------------------------
# The model.


def _with_parent_parameters(init):
    """`init(self, route_cross_attention=..., dydit_target=..., **kwargs)` shows diffusers the whole signature
    (the parent's parameters, then its own), which `register_to_config` and `from_pretrained` read."""
    parent = list(inspect.signature(FlexPixArtTransformer2DModel.__init__).parameters.values())
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for name, p in inspect.signature(init).parameters.items()
           if name not in ("self", "kwargs")]
    init.__signature__ = inspect.Signature(parent + own)
    return init


class DyPixArtTransformer2DModel(FlexPixArtTransformer2DModel):
    """PixArt-α (dense, or with a FlexDiT layout) with DyDiT's routers in every block (module docstring)."""

    walks_blocks = True

    @register_to_config
    @_with_parent_parameters
    def __init__(self, route_cross_attention: bool = True, dydit_target: float | None = None, **kwargs):
        super().__init__(**kwargs)
        D, H, n = self.inner_dim, self.config.num_attention_heads, len(self.transformer_blocks)
        self.route_cross = route_cross_attention
        self.width_routers = nn.ModuleList(WidthRouter(D, H) for _ in range(n))
        routed = [i for i in range(n) if self.routes_tokens(i)]
        self.token_routers = nn.ModuleList(TokenRouter(D) for _ in routed)     # of the blocks that route tokens
        self._token_slot = {k: j for j, k in enumerate(routed)}
        self.skip: bool | None = None       # None: skip in eval mode when the batch shares t and size; or force
        self._sliced = [SliceCache(partial(block_tensors, block, self.route_cross),
                                   partial(block_slices, block, self.route_cross)) for block in self.transformer_blocks]
        self.routing: list[BlockRouting | None] = []
        self.last_grid: int | None = None
        self.last_token_grid: tuple[int, int] = (self.base_grid, self.base_grid)
        self.last_text_tokens = TEXT_TOKENS
        self._masks: list | None = None
        self._complete: torch.Tensor | None = None
        self._skipping = False

    def routes_tokens(self, index: int) -> bool:
        """Token routers in every block of DyDiT; composed with FlexDiT, in the blocks on the dense token set."""
        return not self.roles or self.roles[index] not in "GS"

    def token_router(self, index: int) -> TokenRouter | None:
        slot = self._token_slot.get(index)
        return None if slot is None else self.token_routers[slot]

    @property
    def token_router_hidden(self) -> int:
        return self.token_routers[0].hidden if len(self.token_routers) else 0

    def slice_caches(self) -> list[SliceCache]:
        """Each block's weight slices per mask pattern (the skipping forward's)."""
        return self._sliced

    def patterns(self) -> list[int]:
        """Distinct (head, group) mask patterns each block has sliced weights for."""
        return [cache.patterns for cache in self._sliced]

    def sliced_bytes(self) -> int:
        """Bytes the blocks' sliced-weight caches hold beside the weights (copies; views of a prefix cost none)."""
        return sum(cache.nbytes for cache in self._sliced)

    def order_by_importance(self) -> None:
        """DyDiT's importance ordering of every block (done once, when dense or FlexDiT weights are converted)."""
        for block in self.transformer_blocks:
            reorder_pixart_block(block, self.route_cross, self.config.num_attention_heads)

    # ---- cost -------------------------------------------------------------------------------------------

    def block_shapes(self, grid: int | None = None, token_grid: tuple[int, int] | None = None,
                     text_tokens: int | None = None) -> list[RoutedBlock]:
        """Each block's full-width cost per image and its units, at FlexDiT's sparse side `grid` (None: dense), on
        a (height, width) token grid with `text_tokens` caption tokens (defaults: the native square grid and 120
        tokens, as `PixArtCost` counts). The cross-attention counts in the block's attention when its heads are
        routed (else it is a fixed cost)."""
        height, width = token_grid or (self.base_grid, self.base_grid)
        L = TEXT_TOKENS if text_tokens is None else text_tokens
        N, D, H = height * width, self.inner_dim, self.config.num_attention_heads
        sparse = self.sparse_size(height, width, grid) if self.roles and grid is not None else (height, width)
        M = sparse[0] * sparse[1]
        shapes = []
        for i in range(len(self.transformer_blocks)):
            cost, tokens, on_sparse = role_block_cost(self.roles[i] if self.roles else "D", N, M, D, 4.0)
            if self.route_cross:                       # queries: the block's tokens; keys and values: the text
                cost = BlockCost(cost.attention + block_cost(tokens, D, kv_len=L).attention, cost.mlp)
            shapes.append(RoutedBlock(cost, H, H, tokens, D, not on_sparse))
        return shapes

    def block_costs(self) -> list[BlockCost]:
        """The blocks' full-width costs at the tokens of the last forward (what the budget loss weighs)."""
        return [b.cost for b in self.block_shapes(self.last_grid, self.last_token_grid, self.last_text_tokens)]

    # ---- forward ----------------------------------------------------------------------------------------

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                timestep: torch.Tensor | None = None, added_cond_kwargs: dict | None = None,
                cross_attention_kwargs: dict | None = None, attention_mask: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None, return_dict: bool = True, *,
                grid: int | None = None, record: DensityRecord | None = None, complete: torch.Tensor | None = None):
        """As `FlexPixArtTransformer2DModel.forward`, each block at the width its routers choose; `complete` (B,)
        bool: rows run by the complete model (DyDiT's warm-up loss on the same forward)."""
        if attention_mask is not None:
            raise ValueError("DyDiT routes image tokens; an image-side attention_mask is not supported")
        B = hidden_states.shape[0]
        t = torch.as_tensor(timestep, device=hidden_states.device).reshape(-1).expand(B)
        shared_t = not bool((t != t[0]).any())
        if self.skip and not shared_t:
            raise ValueError("the skipping forward needs one timestep for the whole batch (masks are per step)")
        self._skipping = self.skip if self.skip is not None else (not self.training and shared_t)
        if complete is not None:
            if complete.shape != (B,):
                raise ValueError(f"complete must be one flag per sample ({B},), got {tuple(complete.shape)}")
            if self._skipping and bool(complete.any()):
                raise ValueError("the skipping forward runs the routed model: complete=True needs skip=False")
        self._complete, self.routing = complete, [None] * len(self._sliced)
        record = DensityRecord() if record is None else record
        if encoder_hidden_states is not None:
            self.last_text_tokens = encoder_hidden_states.shape[1]
        try:
            out = super().forward(hidden_states, encoder_hidden_states, timestep, added_cond_kwargs,
                                  cross_attention_kwargs, None, encoder_attention_mask, return_dict, grid=grid,
                                  record=record)
        finally:
            self._masks = self._complete = None
        self.last_grid = record.grid
        return out

    def embedded(self, embedded_timestep: torch.Tensor, token_grid: tuple[int, int]) -> None:
        """The width masks of every block from the timestep embedding (B, D)."""
        self.last_token_grid = token_grid
        if self._skipping and not torch.equal(embedded_timestep, embedded_timestep[:1].expand_as(embedded_timestep)):
            if self.skip:
                raise ValueError("the skipping forward needs one mask for the batch: every row at the same t and "
                                 "size conditions")
            self._skipping = False                     # rows of other sizes (1024-MS): the masked forward
        on = None if self._complete is None else self._complete[:, None]
        masks = []
        for router in self.width_routers:
            heads, groups = router(embedded_timestep)                           # (B, H), (B, G): t (and size)
            masks.append((heads, groups) if on is None else
                         (torch.where(on, 1.0, heads).to(heads.dtype), torch.where(on, 1.0, groups).to(heads.dtype)))
        self._masks = masks

    def _run_block(self, index, x, cond, context=None, *, text, text_mask, run=None):
        heads, groups = self._masks[index]                                      # (B, H), (B, G)
        common = dict(token_router=self.token_router(index), cross=self.route_cross)
        if self._skipping:                                                      # one mask for the batch
            run = partial(dy_pixart_block, heads=heads[0], groups=groups[0], sliced=self._sliced[index], **common)
        else:
            run = partial(dy_pixart_block, heads=heads, groups=groups, complete=self._complete, **common)
        out, tokens = super()._run_block(index, x, cond, context, text=text, text_mask=text_mask, run=run)
        self.routing[index] = BlockRouting(heads, groups, tokens)
        return out
