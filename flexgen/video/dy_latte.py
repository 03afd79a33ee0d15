"""DyDiT on Latte and DiT (Zhao et al. 2024, arXiv 2410.03456; DyDiT++ names Latte but publishes no design, so the
Latte part is ours): every spatial and temporal block gets a width router (heads, MLP groups; from the timestep
embedding only) and a token router (which tokens run its MLP). DyDiT groundwork (issue 13): not yet reachable
from a config, training or sampling.

- Width masks are a function of t: in a spatial block every frame of a sample shares its sample's mask, in a
  temporal block every token position does (one mask per sample, repeated over its sequences).
- `skip = False` (training, and the definition): everything computed and gated (`flexgen.density.width`).
  `skip = True` (inference): the batch must share t; only the active heads, groups and tokens are computed, with
  each block's sliced weights cached per distinct mask pattern (`patterns()` says how many a run used).
"""

from __future__ import annotations

import torch
from torch import nn

from flexgen.density.routers import TokenRouter, WidthRouter
from flexgen.density.width import SlicedWeights, run_block
from flexgen.video.latte import Latte, LatteBlock, LatteConfig


class DyLatte(Latte):
    """A Latte / DiT with DyDiT's routers in every block."""

    def __init__(self, config: LatteConfig):
        super().__init__(config)
        blocks = [*self.spatial_blocks, *self.temporal_blocks]
        D, H = config.hidden_size, config.num_heads
        self.width_routers = nn.ModuleList(WidthRouter(D, H) for _ in blocks)
        self.token_routers = nn.ModuleList(TokenRouter(D) for _ in blocks)
        self.skip = False
        self._sliced = [SlicedWeights(block) for block in blocks]            # not modules: caches, not weights
        self._masks: list | None = None

    def patterns(self) -> list[int]:
        """Distinct (head, group) mask patterns each block has sliced weights for."""
        return [cache.patterns for cache in self._sliced]

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, *, num_images: int = 0,
                y_images: torch.Tensor | None = None) -> torch.Tensor:
        """As `Latte.forward`, each block at the width its routers choose for t (joint image-video input is not
        supported yet)."""
        if num_images:
            raise ValueError("DyLatte does not take still images (num_images > 0) yet")
        if self.skip and bool((t != t[0]).any()):
            raise ValueError("the skipping forward needs one timestep for the whole batch (masks are per step)")
        t_emb = self.t_embedder(t)                                            # (B, D): the routers' input
        self._masks = [router(t_emb) for router in self.width_routers]       # per block: (B, H), (B, G)
        try:
            return super().forward(x, t, y)
        finally:
            self._masks = None

    def run_block(self, block: LatteBlock, index: int, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        heads, groups = self._masks[index]                                    # (B, H), (B, G)
        if self.skip:
            heads, groups, sliced = heads[0], groups[0], self._sliced[index]  # one t: one mask for the batch
        else:
            per = x.shape[0] // heads.shape[0]                                # sequences per sample
            heads, groups, sliced = heads.repeat_interleave(per, 0), groups.repeat_interleave(per, 0), None
        out, _ = run_block(block, x, cond, heads, groups, self.token_routers[index], sliced=sliced)
        return out
