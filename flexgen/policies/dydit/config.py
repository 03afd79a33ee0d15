"""DyDiT's run-config section (`dydit:`)."""

from __future__ import annotations

from dataclasses import dataclass

from flexgen.schema import check_range


@dataclass
class DyDiTConfig:
    target: float | None = None     # λ, the mean FLOPs fraction of the blocks to train for; None = no DyDiT
    loss_weight: float = 2.0        # w of the budget loss (DyDiT `token_loss_ratio`)
    hold_steps: int = 100           # λ held at 1 for these steps, then annealed linearly ...
    anneal_steps: int = 1000        # ... to `target` over these (DyDiT `warmup_step`)
    complete_steps: int = 0         # steps that add the complete model's diffusion loss (DyDiT's warm-up stage)
    strata: int = 4                 # stratified training t: local sample i draws from stratum i mod strata (1 = off)
    cross_attention: bool = True    # PixArt-α: its text cross-attention's heads routed with the self-attention's

    def __post_init__(self):
        if self.target is not None and not 0 < self.target <= 1:
            raise ValueError(f"target: the FLOPs fraction λ must be in (0, 1], got {self.target!r}")
        check_range(self, loss_weight=(0, None), hold_steps=(0, None), anneal_steps=(0, None),
                    complete_steps=(0, None), strata=(1, None))

    @property
    def enabled(self) -> bool:
        return self.target is not None
