"""FlexDiT's run-config section (`density:`) and what one FlexDiT forward records."""

from dataclasses import dataclass, field

from flexgen.policies.flexdit.schedules import ScheduleConfig
from flexgen.policies.flexdit.tokens import FUSION_INITS


@dataclass
class DensityConfig:
    layout: str = ""                    # "" = the dense model; a preset of LAYOUTS or a role string ("PPGSSSRD…TT")
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    pool_frames: int = 0                # 0: pool each frame on its own; n > 0: pool across frames to n sparse frames
    fusion_init: str = "paper"          # recovery fusion at conversion: paper (W1=0, W2=I) | sparse (W1=I, W2=0)

    def __post_init__(self):
        if self.fusion_init not in FUSION_INITS:
            raise ValueError(f"fusion_init {self.fusion_init!r} is not one of {', '.join(FUSION_INITS)}")
        if self.pool_frames < 0:
            raise ValueError(f"pool_frames must be >= 0, got {self.pool_frames}")


@dataclass
class DensityRecord:
    """What one forward pass did, for losses, logging and tests (filled by a FlexDiT model's `forward(record=...)`)."""
    grid: int = 0                                   # sparse grid side used (the schedule's side, base grid)
    sparse_frames: int = 0                          # frames of the sparse token grid (1 for images)
    blocks: list[tuple[str, int]] = field(default_factory=list)   # (role, tokens per frame) of each block

