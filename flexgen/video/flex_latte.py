"""FlexDiT on Latte and DiT: the dense backbone's blocks walked by a layout, with a timestep-dependent sparse grid.

Roles (FlexDiT, arXiv 2412.06028; `flexgen.policies.flexdit.layouts`): Poolingformer (P), sparse generation (G), sparse
block (S), dense recovery (R), dense (D) and top (T) blocks. Everything but the recovery fusion reuses the
pretrained weights: G and R slice the block's qkv into q and kv and share its norm and modulation for both token
sets; P keeps only the value slice.

Video: by default each frame is pooled on its own spatial grid (every frame keeps the same sparse positions),
so the temporal blocks run unchanged over the frames at each sparse position. With `pool_frames = n` the clip
is pooled across frames too, to n sparse frames (the cross-frame extension): sparse tokens of one sparse frame
read the dense tokens of its F/n frames, and the temporal blocks run over n frames.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from flexgen.policies import FlexDiT, Policy
from flexgen.policies.flexdit import DensityConfig, DensityRecord, pool, unpool
from flexgen.policies.flexdit.schedules import grid_for_timesteps
from flexgen.policies.flexdit.walk import run_layout
from flexgen.video.latte import Frames, Latte, LatteConfig


class FlexLatte(Latte):
    """A Latte / DiT whose blocks play the roles of a FlexDiT layout."""

    def __init__(self, config: LatteConfig, density: DensityConfig, num_timesteps: int = 1000, *,
                 policy: Policy | None = None):
        super().__init__(config, policy=FlexDiT(density, num_timesteps) if policy is None else policy)
        flex = self.policy.part(FlexDiT)
        flex.attach(self, config.hidden_size, config.num_spatial)           # the recovery fusions
        self.density, self.num_timesteps, self.roles, self.stages = flex.density, flex.num_timesteps, flex.roles, \
            flex.stages
        if max(s.grid for s in self.stages) > config.grid_size:
            raise ValueError(f"schedule grids up to {max(s.grid for s in self.stages)} exceed the token grid "
                             f"{config.grid_size}×{config.grid_size}")
        if density.pool_frames and (not config.temporal or config.num_frames % density.pool_frames):
            raise ValueError(f"pool_frames={density.pool_frames} must divide num_frames={config.num_frames} "
                             "of a model with temporal blocks")
        for role, block in zip(self.roles, self.spatial_blocks, strict=True):
            if role == "P":
                block.attn.drop_qk()

    @classmethod
    def from_dense(cls, dense: Latte, density: DensityConfig, num_timesteps: int = 1000) -> FlexLatte:
        """Conversion: the dense model's weights, Q/K dropped for Poolingformers, fusions initialised; the new
        model is in the dense model's train / eval mode."""
        weight = next(dense.parameters())
        flex = cls(dense.config, density, num_timesteps).to(device=weight.device, dtype=weight.dtype)
        flex.load_state_dict(dense_to_flex_state_dict(dense.state_dict(), flex), strict=True)
        return flex.train(dense.training)

    def grid_for(self, t: torch.Tensor) -> int:
        return grid_for_timesteps(self.stages, t)

    def flex_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A dense state dict (our key layout) -> this model's (`dense_to_flex_state_dict`)."""
        return dense_to_flex_state_dict(sd, self)

    # ---- forward ----------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, *, num_images: int = 0,
                y_images: torch.Tensor | None = None, grid: int | None = None,
                record: DensityRecord | None = None) -> torch.Tensor:
        """As `Latte.forward`; the sparse grid side comes from the schedule at t (one grid per batch) unless
        `grid` is given. `record`, if given, is filled with the grid and the tokens each block processed."""
        c = self.config
        x, frames = self.embed(x, t, y, num_images, y_images)                 # (B·FI, N, D)
        side = self.grid_for(t) if grid is None else grid
        if not 1 <= side <= c.grid_size:
            raise ValueError(f"sparse grid {side} outside [1, {c.grid_size}]")
        if self.density.pool_frames and num_images:
            raise ValueError("pooling across frames (pool_frames > 0) does not support joint image-video input")
        fi = frames.video + frames.images
        dense_size = (fi, c.grid_size, c.grid_size)
        sparse_size = (self.density.pool_frames or fi, side, side)
        sparse_frames = self._sparse_frames(frames, sparse_size[0])
        group = fi // sparse_size[0]                  # dense frames per sparse frame (1 when pooling per frame)
        if record is not None:
            record.grid, record.sparse_frames = side, sparse_size[0]

        def to_sparse(x):                             # (B·FI, N, D) -> (B·F', M, D)
            return self._grid(pool(self._grid(x, frames.batch, dense_size), sparse_size))

        def to_dense(x):                              # (B·F', M, D) -> (B·FI, N, D)
            return self._grid(unpool(self._grid(x, frames.batch, sparse_size), dense_size))

        def temporal(i, x, sparse):
            return self.temporal(x, i, sparse_frames if sparse else frames) if i < len(self.temporal_blocks) else x

        # each spatial block through `run_block` (index i of [*spatial, *temporal]), the hook DyDiT's routing uses
        blocks = [functools.partial(self.run_block, block, i) for i, block in enumerate(self.spatial_blocks)]
        x = run_layout(self.roles, blocks, self.fusions, x, dense_cond=frames.cond,
                       sparse_cond=sparse_frames.cond, to_sparse=to_sparse, to_dense=to_dense,
                       # a sparse frame reads the tokens of its `group` dense frames, and they read it back
                       dense_kv=lambda x: x.reshape(-1, group * x.shape[1], x.shape[2]),
                       sparse_kv=lambda x: x.repeat_interleave(group, dim=0),
                       after_block=temporal, tokens=None if record is None else record.blocks)
        return self.head(x, frames)

    @staticmethod
    def _grid(x: torch.Tensor, batch: int | None = None, size: tuple[int, int, int] | None = None) -> torch.Tensor:
        """(B·T, H·W, D) tokens <-> (B, T, H, W, D) grid (the direction follows from the arguments)."""
        if size is None:
            B, T, H, W, D = x.shape
            return x.reshape(B * T, H * W, D)
        return x.reshape(batch, *size, x.shape[-1])

    @staticmethod
    def _sparse_frames(frames: Frames, sparse_frames: int) -> Frames:
        """Frames of the sparse token set; across-frame pooling conditions each sparse frame per sample."""
        if sparse_frames == frames.video + frames.images:
            return frames
        return dataclasses.replace(frames, video=sparse_frames, cond=frames.sample_cond)


# ----------------------------------------------------------------------------------------------------------
# Conversion of weights.


def dense_to_flex_state_dict(sd: dict[str, torch.Tensor], flex: FlexLatte) -> dict[str, torch.Tensor]:
    """A dense Latte / DiT state dict (our key layout) -> the FlexLatte's: Poolingformers keep the value slice
    of qkv; the recovery fusions take their initial values from `flex`."""
    D = flex.config.hidden_size
    out = dict(sd)
    for i, role in enumerate(flex.roles):
        if role == "P":
            prefix = f"spatial_blocks.{i}.attn."
            out[prefix + "v.weight"] = out.pop(prefix + "qkv.weight")[2 * D:]
            out[prefix + "v.bias"] = out.pop(prefix + "qkv.bias")[2 * D:]
    for key, value in flex.state_dict().items():
        if key.startswith("fusions."):
            out[key] = value
    return out
