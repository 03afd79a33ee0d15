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

import torch
from diffusers import ModelMixin  # noqa: F401  (diffusers looks up a saved component's base classes on its module)
from diffusers.configuration_utils import register_to_config

from flexgen.policies import Compose, DyDiT
from flexgen.policies.dydit.budget import BlockCost, block_cost, role_block_cost
from flexgen.policies.dydit.config import DyDiTConfig
from flexgen.policies.dydit.routing import RoutedBlock
from flexgen.policies.dydit.width import SliceCache
from flexgen.policies.flexdit import DensityRecord
from flexgen.presets import TEXT_TOKENS
from flexgen.t2i.pixart import FlexPixArtTransformer2DModel
from flexgen.t2i.pixart_width import block_slices, block_tensors, dy_pixart_block, reorder_pixart_block

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
        self._dy = DyDiT(DyDiTConfig(target=dydit_target, cross_attention=route_cross_attention))
        self.policy = Compose(self.policy, self._dy) if self.roles else self._dy
        caches = [SliceCache(partial(block_tensors, block, self.route_cross),
                             partial(block_slices, block, self.route_cross)) for block in self.transformer_blocks]
        self._dy.attach(self, [f"transformer_blocks.{i}" for i in range(n)], D, H,
                        [self.routes_tokens(i) for i in range(n)], caches)
        self.last_token_grid: tuple[int, int] = (self.base_grid, self.base_grid)
        self.last_text_tokens = TEXT_TOKENS

    def routes_tokens(self, index: int) -> bool:
        """Token routers in every block of DyDiT; composed with FlexDiT, in the blocks on the dense token set."""
        return not self.roles or self.roles[index] not in "GS"

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
        return [b.cost for b in self.block_shapes(self._dy.last_grid, self.last_token_grid, self.last_text_tokens)]

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
        record = DensityRecord() if record is None else record
        if encoder_hidden_states is not None:
            self.last_text_tokens = encoder_hidden_states.shape[1]
        with self._dy.forward(t, complete, self.training):
            out = super().forward(hidden_states, encoder_hidden_states, timestep, added_cond_kwargs,
                                  cross_attention_kwargs, None, encoder_attention_mask, return_dict, grid=grid,
                                  record=record)
        self._dy.last_grid = record.grid
        return out

    def embedded(self, embedded_timestep: torch.Tensor, token_grid: tuple[int, int]) -> None:
        """The width masks of every block from the timestep embedding (B, D)."""
        self.last_token_grid = token_grid
        self._dy.set_masks(embedded_timestep)                                   # t (and size)

    def _run_block(self, index, x, cond, context=None, *, text, text_mask, run=None):
        g = self._dy.gates(index, x.shape[0])                                   # per sample, or one mask
        run = partial(dy_pixart_block, heads=g.heads, groups=g.groups, token_router=g.token_router,
                      sliced=g.sliced, complete=g.complete, cross=self.route_cross)
        out, tokens = super()._run_block(index, x, cond, context, text=text, text_mask=text_mask, run=run)
        self._dy.record(index, tokens)
        return out
