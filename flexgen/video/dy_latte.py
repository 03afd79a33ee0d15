"""DyDiT on Latte and DiT (Zhao et al. 2024, arXiv 2410.03456; DyDiT++ names Latte but publishes no design, so the
Latte part is ours): every spatial and temporal block gets a width router (heads, MLP groups; from the timestep
embedding only) and a token router (which tokens run its MLP).

- Width masks are a function of t: in a spatial block every frame of a sample shares its sample's mask, in a
  temporal block every token position does (one mask per sample, repeated over its sequences). Token masks are
  per token in both kinds of block (a temporal block's token is one frame at one position).
- The masked forward (training, and the definition): everything computed and gated (`flexgen.policies.dydit.width`).
  The skipping forward (inference: eval mode and one t for the whole batch, as every sampler step; or `skip =
  True`): only the active heads, groups and tokens are computed, each block's weight slices taken once per mask
  pattern (`SliceCache`: views where the active units are a prefix, else a bounded number of copies;
  `patterns()` says how many a run used).
- `complete` (B,) bool runs those samples through the complete model (every unit and token on): DyDiT's warm-up
  loss, on the same forward as the dynamic samples.
- Every forward leaves the gates it used in `routing` (one `flexgen.policies.dydit.routing.BlockRouting` per block, in
  [*spatial_blocks, *temporal_blocks] order): the budget loss, the keep-rate statistics and the cost read it.

`FlexDyLatte` composes both policies (ours; neither paper does): FlexDiT's layout and timestep schedule decide
which token set each block sees (`flexgen.video.flex_latte`), DyDiT's width routers how much of every block runs,
and token routers pick tokens only in the blocks that see the dense token set (Poolingformer, recovery, dense and
top blocks, and the temporal blocks after them): sparse blocks have already thinned their tokens. Its λ is a
fraction of the FlexDiT forward at the grid of each forward (the budget loss counts the tokens every block actually
processes), so composed MACs ≈ FlexDiT's × λ; with every router on it is the FlexDiT model.
"""

from __future__ import annotations

import torch
from torch import nn

from flexgen.policies.dydit.budget import BlockCost, block_cost, role_block_cost
from flexgen.policies.dydit.routers import TokenRouter, WidthRouter
from flexgen.policies.dydit.routing import BlockRouting, RoutedBlock
from flexgen.policies.flexdit import DensityConfig, DensityRecord
from flexgen.video.flex_latte import FlexLatte
from flexgen.video.latte import Frames, Latte, LatteBlock, LatteConfig
from flexgen.video.latte_width import SlicedWeights, reorder_block, run_block


class DyLatte(Latte):
    """A Latte / DiT with DyDiT's routers in every block."""

    def __init__(self, config: LatteConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)       # (FlexDyLatte: FlexLatte's density arguments)
        blocks = self.blocks()
        D, H = config.hidden_size, config.num_heads
        self.width_routers = nn.ModuleList(WidthRouter(D, H) for _ in blocks)
        routed = [k for k in range(len(blocks)) if self.routes_tokens(k)]
        self.token_routers = nn.ModuleList(TokenRouter(D) for _ in routed)   # of the blocks that route tokens
        self._token_slot = {k: j for j, k in enumerate(routed)}
        self.skip: bool | None = None       # None: skip in eval mode when the batch shares t; True / False: force
        self._sliced = [SlicedWeights(block) for block in blocks]            # not modules: caches, not weights
        self.routing: list[BlockRouting | None] = []
        self._masks: list | None = None
        self._complete: torch.Tensor | None = None
        self._skipping = False

    def blocks(self) -> list[LatteBlock]:
        """[*spatial_blocks, *temporal_blocks]: the order of the routers, `routing` and `block_shapes`."""
        return [*self.spatial_blocks, *self.temporal_blocks]

    def routes_tokens(self, index: int) -> bool:
        """Whether block `index` has a token router (every block of DyDiT)."""
        return True

    def token_router(self, index: int) -> TokenRouter | None:
        slot = self._token_slot.get(index)
        return None if slot is None else self.token_routers[slot]

    @property
    def token_router_hidden(self) -> int:
        return self.token_routers[0].hidden if len(self.token_routers) else 0

    def slice_caches(self) -> list[SlicedWeights]:
        """Each block's weight slices per mask pattern (the skipping forward's)."""
        return self._sliced

    def patterns(self) -> list[int]:
        """Distinct (head, group) mask patterns each block has sliced weights for."""
        return [cache.patterns for cache in self._sliced]

    def sliced_bytes(self) -> int:
        """Bytes the blocks' sliced-weight caches hold beside the weights (copies; views of a prefix cost none)."""
        return sum(cache.nbytes for cache in self._sliced)

    def order_by_importance(self) -> None:
        """DyDiT's importance ordering (`latte_width.reorder_block`) of every block: function-preserving,
        done once when dense weights are converted, so the always-on head and group are the most important."""
        for block in self.blocks():
            reorder_block(block)

    def block_shapes(self, grid: int | None = None) -> list[RoutedBlock]:
        """Each block's full-width cost per sample and its units: spatial blocks run F sequences of N tokens,
        temporal blocks N sequences of F frames."""
        c = self.config
        N, F = c.grid_size ** 2, c.num_frames
        shapes = [(N, F)] * len(self.spatial_blocks) + [(F, N)] * len(self.temporal_blocks)
        return [RoutedBlock(block_cost(length, c.hidden_size, seqs, c.mlp_ratio), c.num_heads, c.num_heads,
                            length * seqs, c.hidden_size) for length, seqs in shapes]

    def block_costs(self) -> list[BlockCost]:
        """The blocks' full-width costs at the tokens of the last forward (what the budget loss weighs)."""
        return [b.cost for b in self.block_shapes(self.last_grid)]

    last_grid: int | None = None                        # FlexDyLatte: the sparse grid of the last forward

    # ---- forward ----------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, *, num_images: int = 0,
                y_images: torch.Tensor | None = None, complete: torch.Tensor | None = None, **extra) -> torch.Tensor:
        """As `Latte.forward`, each block at the width its routers choose for t; `complete` (B,) bool: samples run
        by the complete model (joint image-video input is not supported yet). `extra`: FlexLatte's arguments."""
        if num_images:
            raise ValueError("DyLatte does not take still images (num_images > 0) yet")
        shared_t = not bool((t != t[0]).any())
        if self.skip and not shared_t:
            raise ValueError("the skipping forward needs one timestep for the whole batch (masks are per step)")
        self._skipping = self.skip if self.skip is not None else (not self.training and shared_t)
        if complete is not None:
            if complete.shape != t.shape:
                raise ValueError(f"complete must be one flag per sample {tuple(t.shape)}, got {tuple(complete.shape)}")
            if self._skipping and bool(complete.any()):
                raise ValueError("the skipping forward runs the routed model: complete=True needs skip=False")
        self._complete, self.routing = complete, [None] * len(self._sliced)
        try:
            return super().forward(x, t, y, **extra)
        finally:
            self._masks = self._complete = None

    def embed(self, x, t, y, num_images, y_images) -> tuple[torch.Tensor, Frames]:
        tokens, frames = super().embed(x, t, y, num_images, y_images)
        on = None if self._complete is None else self._complete[:, None]
        masks = []
        for router in self.width_routers:
            heads, groups = router(frames.t_emb)                              # (B, H), (B, G): a function of t
            masks.append((heads, groups) if on is None else
                         (torch.where(on, 1.0, heads).to(heads.dtype), torch.where(on, 1.0, groups).to(heads.dtype)))
        self._masks = masks
        return tokens, frames

    def run_block(self, block: LatteBlock, index: int, x: torch.Tensor, cond: torch.Tensor,
                  context: torch.Tensor | None = None) -> torch.Tensor:
        heads, groups = self._masks[index]                                    # (B, H), (B, G)
        B = heads.shape[0]
        per = x.shape[0] // B                                                 # sequences per sample
        router = self.token_router(index)
        if self._skipping:                                                    # one t: one mask for the batch
            def partial_width(block, x, cond, context):
                return run_block(block, x, cond, heads[0], groups[0], router, context=context,
                                 sliced=self._sliced[index])
        else:
            complete = None if self._complete is None else self._complete.repeat_interleave(per)   # (S,)

            def partial_width(block, x, cond, context):
                return run_block(block, x, cond, heads.repeat_interleave(per, 0), groups.repeat_interleave(per, 0),
                                 router, context=context, complete=complete)
        out, tokens = block(x, cond, context=context, run=partial_width)             # through the block's hooks
        self.routing[index] = BlockRouting(heads, groups, None if tokens is None else tokens.reshape(B, -1))
        return out


class FlexDyLatte(DyLatte, FlexLatte):
    """FlexDiT ∘ DyDiT: a FlexLatte's layout and schedule with DyDiT's routers (module docstring)."""

    def __init__(self, config: LatteConfig, density: DensityConfig, num_timesteps: int = 1000):
        super().__init__(config, density, num_timesteps)

    def routes_tokens(self, index: int) -> bool:
        """Token routers in the blocks that see the dense token set: spatial roles P, R, D, T, and the temporal
        block after each of them."""
        spatial = len(self.spatial_blocks)
        return self.roles[index if index < spatial else index - spatial] not in "GS"

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, *, num_images: int = 0,
                y_images: torch.Tensor | None = None, complete: torch.Tensor | None = None, grid: int | None = None,
                record: DensityRecord | None = None) -> torch.Tensor:
        """As `FlexLatte.forward` with DyLatte's routing; `last_grid` keeps the grid it ran at."""
        record = DensityRecord() if record is None else record
        out = super().forward(x, t, y, num_images=num_images, y_images=y_images, complete=complete, grid=grid,
                              record=record)
        self.last_grid = record.grid
        return out

    def block_shapes(self, grid: int | None = None) -> list[RoutedBlock]:
        """Each block's full-width cost per sample at sparse grid `grid` (default: the last forward's): query and
        key / value tokens by role (FlexDiT's walk, `flexgen.policies.flexdit.walk`), the temporal blocks over the token
        positions and frames of their spatial block's set."""
        c, d = self.config, self.density
        if grid is None:
            grid = self.last_grid if self.last_grid is not None else c.grid_size
        N, M, D, r = c.grid_size ** 2, grid ** 2, c.hidden_size, c.mlp_ratio
        F = c.num_frames
        Fs = d.pool_frames or F                                               # sparse frames
        spatial, temporal = [], []
        for i, role in enumerate(self.roles):
            cost, tokens, sparse = role_block_cost(role, N, M, D, r, frames=F, sparse_frames=Fs)
            spatial.append(RoutedBlock(cost, c.num_heads, c.num_heads, tokens, D, not sparse))
            if i < len(self.temporal_blocks):
                frames, positions = (Fs, M) if sparse else (F, N)
                temporal.append(RoutedBlock(block_cost(frames, D, positions, r), c.num_heads, c.num_heads,
                                            frames * positions, D, not sparse))
        return spatial + temporal
