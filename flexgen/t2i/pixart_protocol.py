"""The PixArt-α side of the policies' block protocol (`flexgen.policies`), inherited by
`flexgen.t2i.pixart.FlexPixArtTransformer2DModel`.

- Structure: `layout_blocks` (every block: a FlexDiT layout's roles map them), `drop_qk` (a Poolingformer keeps
  only V and the output projection), `routed_blocks` (DyDiT's order: `transformer_blocks.i`), `routes_tokens`
  (every block of DyDiT alone; composed, the blocks on the dense token set).
- FlexDiT's token sets: `walk_layout` pools the (height, width) token grid to the schedule's side per axis
  (`sparse_size`: for the base grid `sample_size / patch`, another grid pooled to the same fraction), and the text
  cross-attention and MLP run on whatever token set a block carries.
- DyDiT's block adapter (`flexgen.t2i.pixart_width`): `partial_block`, `slice_cache`, `reorder` (the
  cross-attention's heads in their own order when routed), and `block_shapes`: each block's full-width cost per
  image and its units at a FlexDiT side, on a token grid with a number of caption tokens (defaults: the native
  square grid and 120 tokens, as `PixArtCost` counts; `last=True`: the last forward's grid and caption length).
  The cross-attention counts in the block's attention when its heads are routed (else it is a fixed cost).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from flexgen.policies import FlexDiT
from flexgen.policies.dydit.budget import BlockCost, block_cost, role_block_cost
from flexgen.policies.dydit.policy import BlockGates
from flexgen.policies.dydit.routing import RoutedBlock
from flexgen.policies.dydit.width import SliceCache
from flexgen.policies.flexdit import pool, unpool
from flexgen.policies.flexdit.walk import run_layout
from flexgen.presets import TEXT_TOKENS
from flexgen.t2i.pixart_width import block_slices, block_tensors, dy_pixart_block, reorder_pixart_block


class PixArtPolicyHooks:
    """Mixed into the PixArt-α transformer: what a policy asks of the network (module docstring)."""

    block_modules = ("transformer_blocks", "fusions")                  # what a skipped step does not run

    @property
    def hidden_dim(self) -> int:
        return self.inner_dim

    @property
    def num_heads(self) -> int:
        return self.config.num_attention_heads

    # ---- the step cache --------------------------------------------------------------------------------

    def first_modulated(self, x: torch.Tensor, ctx: Any) -> torch.Tensor:
        """TeaCache's indicator: the first block's timestep-modulated input, LN(x)·(1 + scale) + shift with
        adaLN-single's shift and scale of its self-attention (as `pixart.pixart_block`), (B, N, D)."""
        block = self.transformer_blocks[0]
        shift, scale = (block.scale_shift_table[None] + ctx.cond.reshape(x.shape[0], 6, -1)).chunk(6, dim=1)[:2]
        return block.norm1(x) * (1 + scale) + shift                        # (B, N, D)

    def indicator_macs(self) -> int:
        """MACs per image of `first_modulated`: none (adaLN-single's table is added, not multiplied by weights)."""
        return 0

    # ---- FlexDiT ----------------------------------------------------------------------------------------

    @property
    def roles(self) -> str:
        """The FlexDiT layout's roles over the blocks ("" without a layout)."""
        flex = self.policy.part(FlexDiT)
        return "" if flex is None else flex.roles

    def layout_blocks(self, density: Any) -> list[nn.Module]:
        if density.pool_frames:
            raise ValueError("pool_frames is for video models; an image model has one frame")
        return list(self.transformer_blocks)

    def drop_qk(self, index: int) -> None:
        attn = self.transformer_blocks[index].attn1
        attn.to_q = None
        attn.to_k = None

    def sparse_size(self, height: int, width: int, side: int) -> tuple[int, int]:
        """Sparse grid for a height×width token grid: side/base_grid of each axis, at least 1, at most the axis."""
        g = self.base_grid
        return (min(height, max(1, round(side * height / g))), min(width, max(1, round(side * width / g))))

    def walk_layout(self, x: torch.Tensor, ctx: Any, flex: FlexDiT) -> torch.Tensor:
        """Tokens (B, N, D) through the blocks by `flex`'s roles at its side."""
        B, D, (height, width) = x.shape[0], x.shape[-1], ctx.token_grid
        sparse = self.sparse_size(height, width, flex.side)
        if flex.record is not None:
            flex.record.grid, flex.record.sparse_frames = flex.side, 1

        def to_sparse(x):                                                    # (B, N, D) -> (B, M, D)
            return pool(x.reshape(B, 1, height, width, D), (1, *sparse)).reshape(B, -1, D)

        def to_dense(x):                                                     # (B, M, D) -> (B, N, D)
            return unpool(x.reshape(B, 1, *sparse, D), (1, height, width)).reshape(B, -1, D)

        return run_layout(flex.roles, self._blocks(), self.fusions, x, dense_cond=ctx.cond, sparse_cond=ctx.cond,
                          to_sparse=to_sparse, to_dense=to_dense,
                          tokens=None if flex.record is None else flex.record.blocks,
                          text=ctx.text, text_mask=ctx.text_mask)

    def flex_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A dense state dict -> this model's: Poolingformers drop Q and K, the fusions take their initial values."""
        state = dict(sd)
        for i, role in enumerate(self.roles):
            if role == "P":
                for name in ("to_q", "to_k"):
                    for kind in ("weight", "bias"):
                        state.pop(f"transformer_blocks.{i}.attn1.{name}.{kind}", None)
        state.update({k: v for k, v in self.state_dict().items() if k.startswith("fusions.")})
        return state

    # ---- DyDiT ------------------------------------------------------------------------------------------

    def routed_blocks(self) -> list[tuple[str, nn.Module]]:
        return [(f"transformer_blocks.{i}", b) for i, b in enumerate(self.transformer_blocks)]

    def routes_tokens(self, index: int) -> bool:
        return not self.roles or self.roles[index] not in "GS"

    def slice_cache(self, block: nn.Module) -> SliceCache:
        cross = self.route_cross
        return SliceCache(partial(block_tensors, block, cross), partial(block_slices, block, cross))

    def reorder(self, block: nn.Module) -> None:
        reorder_pixart_block(block, self.route_cross, self.config.num_attention_heads)

    def partial_block(self, block: nn.Module, x: torch.Tensor, cond: torch.Tensor, context: torch.Tensor | None,
                      gates: BlockGates, *, text: torch.Tensor, text_mask: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return dy_pixart_block(block, x, cond, context, text=text, text_mask=text_mask, heads=gates.heads,
                               groups=gates.groups, token_router=gates.token_router, cross=self.route_cross,
                               sliced=gates.sliced, complete=gates.complete)

    def block_shapes(self, grid: int | None = None, token_grid: tuple[int, int] | None = None,
                     text_tokens: int | None = None, last: bool = False) -> list[RoutedBlock]:
        if last:
            token_grid, text_tokens = self.last_token_grid, self.last_text_tokens
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
