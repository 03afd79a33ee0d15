"""The Latte / DiT side of the policies' block protocol (`flexgen.policies`), inherited by `Latte`.

- Structure: `layout_blocks` (the spatial blocks a FlexDiT layout's roles map), `drop_qk` (a Poolingformer),
  `routed_blocks` (DyDiT's block order [*spatial, *temporal] and their module names), `routes_tokens`.
- DyDiT's block adapter: `partial_block` (`latte_width.run_block`), `slice_cache`, `reorder`, and `block_shapes`
  (each block's full-width cost and units at a FlexDiT grid: spatial blocks run F sequences of N tokens, temporal
  blocks N sequences of F frames; by role when composed: query and key / value tokens of each role, the temporal
  blocks over the positions and frames of their spatial block's set).
- FlexDiT's token sets: `walk_layout` runs `flexdit.walk.run_layout` over the spatial blocks. By default each frame
  is pooled on its own grid (every frame keeps the same sparse positions), so the temporal blocks run unchanged
  over the frames at each sparse position; with `pool_frames = n` the clip is pooled across frames to n sparse
  frames (sparse tokens of one sparse frame read the dense tokens of its F/n frames, temporal blocks run over n).
  `flex_state_dict`: a dense state dict -> the FlexDiT model's (Poolingformers keep the value slice of qkv).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from flexgen.policies import FlexDiT
from flexgen.policies.dydit.budget import block_cost, role_block_cost
from flexgen.policies.dydit.policy import BlockGates
from flexgen.policies.dydit.routing import RoutedBlock
from flexgen.policies.flexdit import pool, unpool
from flexgen.policies.flexdit.walk import run_layout
from flexgen.video.latte_width import SlicedWeights, reorder_block, run_block


class LattePolicyHooks:
    """Mixed into `Latte`: what a policy asks of the network (module docstring)."""

    block_modules = ("spatial_blocks", "temporal_blocks", "fusions")    # what a skipped step does not run

    @property
    def hidden_dim(self) -> int:
        return self.config.hidden_size

    @property
    def num_heads(self) -> int:
        return self.config.num_heads

    @property
    def base_grid(self) -> int:
        return self.config.grid_size

    # ---- the step cache --------------------------------------------------------------------------------

    def first_modulated(self, x: torch.Tensor, frames: Any) -> torch.Tensor:
        """TeaCache's indicator: the first spatial block's timestep-modulated input, modulate(LN(x), shift, scale)
        of its attention (DiT's `modulate`: x·(1 + scale) + shift), on the blocks' input tokens (B·FI, N, D)."""
        block = self.spatial_blocks[0]
        shift, scale = block.modulation(frames.cond, x.shape[0])[:2]
        return block.norm1(x) * (1 + scale) + shift                        # (B·FI, N, D)

    def indicator_macs(self) -> int:
        """MACs per sample of `first_modulated`: the first block's adaLN linear (D -> 6D) on each frame's condition."""
        dim, frames = self.config.hidden_size, self.config.num_frames if self.config.temporal else 1
        return frames * dim * 6 * dim

    def _roles(self) -> str:
        flex = self.policy.part(FlexDiT)
        return "D" * len(self.spatial_blocks) if flex is None else flex.roles

    def converted(self, policy: Any) -> nn.Module:
        """This model's weights in a new network running `policy` (from the dense model: FlexDiT's conversion,
        Q/K dropped for Poolingformers and fusions initialised; DyDiT's, fresh routers and importance order);
        same device, dtype and train / eval mode."""
        weight = next(self.parameters())
        new = type(self)(self.config, policy=policy).to(device=weight.device, dtype=weight.dtype)
        sd, converting = policy.load_state_dict(self.state_dict(), "the dense model")
        new.load_state_dict(sd, strict=True)
        if converting:
            policy.converted()
        return new.train(self.training)

    # ---- FlexDiT ----------------------------------------------------------------------------------------

    def layout_blocks(self, density: Any) -> list[nn.Module]:
        c = self.config
        if density.pool_frames and (not c.temporal or c.num_frames % density.pool_frames):
            raise ValueError(f"pool_frames={density.pool_frames} must divide num_frames={c.num_frames} "
                             "of a model with temporal blocks")
        return list(self.spatial_blocks)

    def drop_qk(self, index: int) -> None:
        self.spatial_blocks[index].attn.drop_qk()

    def walk_layout(self, x: torch.Tensor, frames: Any, flex: FlexDiT) -> torch.Tensor:
        """Dense tokens (B·FI, N, D) through the spatial blocks by `flex`'s roles at its grid, each followed by
        its temporal block on the token set it produced."""
        c, side, pool_frames = self.config, flex.side, flex.density.pool_frames
        if pool_frames and frames.images:
            raise ValueError("pooling across frames (pool_frames > 0) does not support joint image-video input")
        fi = frames.video + frames.images
        dense_size, sparse_size = (fi, c.grid_size, c.grid_size), (pool_frames or fi, side, side)
        sparse_frames = frames if sparse_size[0] == fi else \
            dataclasses.replace(frames, video=sparse_size[0], cond=frames.sample_cond)   # conditioned per sample
        group = fi // sparse_size[0]                  # dense frames per sparse frame (1 when pooling per frame)
        if flex.record is not None:
            flex.record.grid, flex.record.sparse_frames = side, sparse_size[0]

        def grid(x, size):                            # (B·T, H·W, D) -> (B, T, H, W, D)
            return x.reshape(frames.batch, *size, x.shape[-1])

        def tokens(x):                                # (B, T, H, W, D) -> (B·T, H·W, D)
            return x.reshape(-1, x.shape[2] * x.shape[3], x.shape[-1])

        def temporal(i, x, sparse):
            return self.temporal(x, i, sparse_frames if sparse else frames) if i < len(self.temporal_blocks) else x

        blocks = [lambda x, cond, context=None, i=i, block=block: self.run_block(block, i, x, cond, context)
                  for i, block in enumerate(self.spatial_blocks)]
        return run_layout(flex.roles, blocks, self.fusions, x, dense_cond=frames.cond,
                          sparse_cond=sparse_frames.cond,
                          to_sparse=lambda x: tokens(pool(grid(x, dense_size), sparse_size)),     # -> (B·F', M, D)
                          to_dense=lambda x: tokens(unpool(grid(x, sparse_size), dense_size)),    # -> (B·FI, N, D)
                          # a sparse frame reads the tokens of its `group` dense frames, and they read it back
                          dense_kv=lambda x: x.reshape(-1, group * x.shape[1], x.shape[2]),
                          sparse_kv=lambda x: x.repeat_interleave(group, dim=0),
                          after_block=temporal, tokens=None if flex.record is None else flex.record.blocks)

    def flex_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A dense state dict (our key layout) -> this FlexDiT model's: Poolingformers keep the value slice of qkv;
        the recovery fusions take this model's initial values."""
        D, out = self.config.hidden_size, dict(sd)
        for i, role in enumerate(self._roles()):
            if role == "P":
                prefix = f"spatial_blocks.{i}.attn."
                out[prefix + "v.weight"] = out.pop(prefix + "qkv.weight")[2 * D:]
                out[prefix + "v.bias"] = out.pop(prefix + "qkv.bias")[2 * D:]
        out.update({k: v for k, v in self.state_dict().items() if k.startswith("fusions.")})
        return out

    # ---- DyDiT ------------------------------------------------------------------------------------------

    def routed_blocks(self) -> list[tuple[str, nn.Module]]:
        return [*((f"spatial_blocks.{i}", b) for i, b in enumerate(self.spatial_blocks)),
                *((f"temporal_blocks.{i}", b) for i, b in enumerate(self.temporal_blocks))]

    def routes_tokens(self, index: int) -> bool:
        """Token routers where the block sees the dense token set: every block of DyDiT alone; composed with
        FlexDiT, the spatial roles P, R, D, T and the temporal block after each of them."""
        spatial = len(self.spatial_blocks)
        return self._roles()[index if index < spatial else index - spatial] not in "GS"

    slice_cache = staticmethod(SlicedWeights)
    reorder = staticmethod(reorder_block)

    def partial_block(self, block: nn.Module, x: torch.Tensor, cond: torch.Tensor, context: torch.Tensor | None,
                      gates: BlockGates) -> tuple[torch.Tensor, torch.Tensor | None]:
        return run_block(block, x, cond, gates.heads, gates.groups, gates.token_router, context=context,
                         sliced=gates.sliced, complete=gates.complete)

    def block_shapes(self, grid: int | None = None, last: bool = False) -> list[RoutedBlock]:
        """Each block's full-width cost per sample and its units at sparse grid `grid` (None: the dense grid)."""
        c = self.config
        flex = self.policy.part(FlexDiT)
        grid = c.grid_size if grid is None else grid
        N, M, D, r, F = c.grid_size ** 2, grid ** 2, c.hidden_size, c.mlp_ratio, c.num_frames
        Fs = flex.density.pool_frames if flex is not None and flex.density.pool_frames else F    # sparse frames
        spatial, temporal = [], []
        for i, role in enumerate(self._roles()):
            cost, tokens, sparse = role_block_cost(role, N, M, D, r, frames=F, sparse_frames=Fs)
            spatial.append(RoutedBlock(cost, c.num_heads, c.num_heads, tokens, D, not sparse))
            if i < len(self.temporal_blocks):
                frames, positions = (Fs, M) if sparse else (F, N)
                temporal.append(RoutedBlock(block_cost(frames, D, positions, r), c.num_heads, c.num_heads,
                                            frames * positions, D, not sparse))
        return spatial + temporal
