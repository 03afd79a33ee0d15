"""FlexDiT (arXiv 2412.06028): token density per block and timestep. Schedules (timestep -> sparse grid), layouts
(block -> role), token pooling and the recovery fusion, and the walk of the roles over any family's blocks (the
block protocol: `block(x, cond, context=None, **extra)`, keys / values from `context`)."""

from flexgen.policies.flexdit.config import DensityConfig, DensityRecord
from flexgen.policies.flexdit.layouts import LAYOUTS, ROLES, parse_layout
from flexgen.policies.flexdit.schedules import ScheduleConfig, Stage, draw_stage, grid_at, stages
from flexgen.policies.flexdit.tokens import FUSION_INITS, Fusion, pool, unpool
from flexgen.policies.flexdit.walk import run_layout

__all__ = ["FUSION_INITS", "LAYOUTS", "ROLES", "DensityConfig", "DensityRecord", "Fusion", "ScheduleConfig", "Stage",
           "draw_stage", "grid_at", "parse_layout", "pool", "run_layout", "stages", "unpool"]
