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

from flexgen.policies import Compose, DyDiT, FlexDiT, Policy
from flexgen.policies.dydit.budget import BlockCost, block_cost, role_block_cost
from flexgen.policies.dydit.routing import RoutedBlock
from flexgen.policies.flexdit import DensityConfig, DensityRecord
from flexgen.video.flex_latte import FlexLatte
from flexgen.video.latte import Frames, Latte, LatteBlock, LatteConfig
from flexgen.video.latte_width import SlicedWeights, reorder_block, run_block


class DyLatte(Latte):
    """A Latte / DiT with DyDiT's routers in every block (its `policy`: `flexgen.policies.DyDiT`, or a composition
    holding one)."""

    def __init__(self, config: LatteConfig, *args, policy: Policy | None = None, **kwargs):
        super().__init__(config, *args, policy=DyDiT() if policy is None else policy, **kwargs)
        self._dy = self.policy.part(DyDiT)
        blocks = self.blocks()
        names = [f"spatial_blocks.{i}" for i in range(len(self.spatial_blocks))] + \
                [f"temporal_blocks.{i}" for i in range(len(self.temporal_blocks))]
        self._dy.attach(self, names, config.hidden_size, config.num_heads,
                        [self.routes_tokens(k) for k in range(len(blocks))], [SlicedWeights(b) for b in blocks])

    def blocks(self) -> list[LatteBlock]:
        """[*spatial_blocks, *temporal_blocks]: the order of the routers, `routing` and `block_shapes`."""
        return [*self.spatial_blocks, *self.temporal_blocks]

    def routes_tokens(self, index: int) -> bool:
        """Whether block `index` has a token router (every block of DyDiT)."""
        return True

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
        return [b.cost for b in self.block_shapes(self._dy.last_grid)]

    # ---- forward ----------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, *, num_images: int = 0,
                y_images: torch.Tensor | None = None, complete: torch.Tensor | None = None, **extra) -> torch.Tensor:
        """As `Latte.forward`, each block at the width its routers choose for t; `complete` (B,) bool: samples run
        by the complete model (joint image-video input is not supported yet). `extra`: FlexLatte's arguments."""
        if num_images:
            raise ValueError("DyLatte does not take still images (num_images > 0) yet")
        with self._dy.forward(t, complete, self.training):
            return super().forward(x, t, y, **extra)

    def embed(self, x, t, y, num_images, y_images) -> tuple[torch.Tensor, Frames]:
        tokens, frames = super().embed(x, t, y, num_images, y_images)
        self._dy.set_masks(frames.t_emb)                                      # a function of t
        return tokens, frames

    def run_block(self, block: LatteBlock, index: int, x: torch.Tensor, cond: torch.Tensor,
                  context: torch.Tensor | None = None) -> torch.Tensor:
        g = self._dy.gates(index, x.shape[0])                                 # gates per sequence, or one mask

        def partial_width(block, x, cond, context):
            return run_block(block, x, cond, g.heads, g.groups, g.token_router, context=context, sliced=g.sliced,
                             complete=g.complete)

        out, tokens = block(x, cond, context=context, run=partial_width)      # through the block's hooks
        self._dy.record(index, tokens)
        return out


class FlexDyLatte(DyLatte, FlexLatte):
    """FlexDiT ∘ DyDiT: a FlexLatte's layout and schedule with DyDiT's routers (module docstring)."""

    def __init__(self, config: LatteConfig, density: DensityConfig, num_timesteps: int = 1000, *,
                 policy: Policy | None = None):
        if policy is None:
            policy = Compose(FlexDiT(density, num_timesteps), DyDiT())
        super().__init__(config, density, num_timesteps, policy=policy)

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
        self._dy.last_grid = record.grid
        return out

    def block_shapes(self, grid: int | None = None) -> list[RoutedBlock]:
        """Each block's full-width cost per sample at sparse grid `grid` (default: the last forward's): query and
        key / value tokens by role (FlexDiT's walk, `flexgen.policies.flexdit.walk`), the temporal blocks over the token
        positions and frames of their spatial block's set."""
        c, d = self.config, self.density
        if grid is None:
            grid = self._dy.last_grid if self._dy.last_grid is not None else c.grid_size
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


def latte_network(config: LatteConfig, policy: Policy) -> Latte:
    """The Latte / DiT network of `config` running `policy` (dense, FlexDiT, DyDiT or both)."""
    flex, dy = policy.part(FlexDiT), policy.part(DyDiT)
    if flex is None:
        return DyLatte(config, policy=policy) if dy else Latte(config, policy=policy)
    cls = FlexDyLatte if dy else FlexLatte
    return cls(config, flex.density, flex.num_timesteps, policy=policy)
