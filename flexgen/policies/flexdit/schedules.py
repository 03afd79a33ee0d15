"""Density schedules: diffusion timestep -> side of the square sparse token grid (FlexDiT, arXiv 2412.06028).

All functions are pure. A schedule is defined on *training* timesteps t ∈ [0, T) (t = 0 clean), so any respaced
sampler maps to the right grid by looking up its own timesteps. A schedule is turned into `stages`: maximal runs
of timesteps sharing one grid. Every forward pass uses one grid (a batch, and both halves of a CFG batch, share
a timestep), and training draws each micro-batch's timesteps from one stage (`draw_stage`).

Eq. 5 of the paper has two readings (see `reference/flexdit.md` §3):
- "B" (default): the fewest sparse tokens are held for the noisiest quarter (t ≥ 3T/4), then the token count
  grows linearly to the most at t = 0. This reading reproduces the paper's FLOPs.
- "A": the most tokens are held for the cleanest quarter (t < T/4), then the count falls linearly to the
  fewest at t = T.
Both are linear in the token count M = s² (the pruning rate r = 1 − M/N is linear in t), rounded to an integer
side s = round(√M).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

SCHEDULES = ("eq5", "constant", "stages")
READINGS = ("B", "A")


@dataclass
class ScheduleConfig:
    kind: str = "eq5"                   # eq5 | constant | stages
    grid_min: int = 6                   # eq5: sparse side at the noisiest steps (fewest tokens)
    grid_max: int = 10                  # eq5: sparse side at the cleanest steps (most tokens)
    reading: str = "B"                  # eq5: "B" (paper FLOPs) or "A" (the equation read literally)
    grid: int = 8                       # constant: one side for every timestep
    stages: list[list[int]] = field(default_factory=list)   # stages: [[t_start, t_end (exclusive), side], ...]

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule kind {self.kind!r} is not one of {', '.join(SCHEDULES)}")
        if self.reading not in READINGS:
            raise ValueError(f"eq5 reading {self.reading!r} is not one of {', '.join(READINGS)}")
        if self.kind == "eq5" and not 1 <= self.grid_min <= self.grid_max:
            raise ValueError(f"eq5 needs 1 <= grid_min <= grid_max, got {self.grid_min}, {self.grid_max}")
        if self.kind == "constant" and self.grid < 1:
            raise ValueError(f"constant grid must be >= 1, got {self.grid}")


@dataclass(frozen=True)
class Stage:
    t_start: int        # first timestep (inclusive)
    t_end: int          # last timestep + 1
    grid: int           # sparse grid side for these timesteps

    @property
    def length(self) -> int:
        return self.t_end - self.t_start


# ----------------------------------------------------------------------------------------------------------
# Eq. 5 and friends: timestep -> side.


def eq5_tokens(t: float, num_timesteps: int, tokens_min: float, tokens_max: float, reading: str = "B") -> float:
    """Sparse token count at timestep t: FlexDiT Eq. 5 (linear pruning rate after a held quarter)."""
    T = num_timesteps
    if reading == "B":      # fewest tokens for t ≥ 3T/4, then linearly more down to t = 0
        return tokens_min if t >= 3 * T / 4 else tokens_max - (tokens_max - tokens_min) * t / (3 * T / 4)
    if reading == "A":      # most tokens for t < T/4, then linearly fewer up to t = T
        return tokens_max if t < T / 4 else tokens_max - (tokens_max - tokens_min) * (t - T / 4) / (3 * T / 4)
    raise ValueError(f"unknown eq5 reading {reading!r}; choose one of {READINGS}")


def grid_at(config: ScheduleConfig, t: int, num_timesteps: int) -> int:
    """Sparse grid side at training timestep t."""
    if not 0 <= t < num_timesteps:
        raise ValueError(f"timestep {t} outside [0, {num_timesteps})")
    if config.kind == "constant":
        return config.grid
    if config.kind == "eq5":
        tokens = eq5_tokens(t, num_timesteps, config.grid_min ** 2, config.grid_max ** 2, config.reading)
        return round(math.sqrt(tokens))
    for t_start, t_end, side in config.stages:
        if t_start <= t < t_end:
            return side
    raise ValueError(f"timestep {t} is in none of the schedule's stages {config.stages}")


def stages(config: ScheduleConfig, num_timesteps: int = 1000) -> list[Stage]:
    """The schedule as maximal runs of timesteps with one grid, ordered by t; they tile [0, T)."""
    if config.kind == "stages":
        spans = sorted((int(a), int(b), int(s)) for a, b, s in config.stages)
        edges = [e for a, b, _ in spans for e in (a, b)]
        tiles = bool(spans) and edges[0] == 0 and edges[-1] == num_timesteps and edges[1:-1:2] == edges[2::2]
        if not tiles or any(a >= b or s < 1 for a, b, s in spans):
            raise ValueError(f"stages {config.stages} must tile [0, {num_timesteps}) with t_start < t_end, "
                             "side >= 1")
    out: list[Stage] = []
    for t in range(num_timesteps):
        side = grid_at(config, t, num_timesteps)
        if out and out[-1].grid == side:
            out[-1] = Stage(out[-1].t_start, t + 1, side)
        else:
            out.append(Stage(t, t + 1, side))
    return out


def grid_for_timesteps(stage_list: list[Stage], t: torch.Tensor) -> int:
    """The one grid of a batch of timesteps; an error if they fall into stages with different grids."""
    values = {int(v) for v in t.reshape(-1).tolist()}
    grids = {s.grid for s in stage_list for v in values if s.t_start <= v < s.t_end}
    if len(grids) != 1:
        raise ValueError(f"timesteps {sorted(values)} map to sparse grids {sorted(grids)}; a forward pass uses "
                         "one grid (draw a batch's timesteps from one stage, see draw_stage)")
    return grids.pop()


def mean_over_stages(stage_list: list[Stage], value) -> float:
    """Time average of value(grid) over t uniform in [0, T): Σ_stage length/T · value(grid), each grid once."""
    total = sum(s.length for s in stage_list)
    per_grid: dict[int, float] = {}
    for s in stage_list:
        per_grid[s.grid] = per_grid.get(s.grid, 0) + s.length / total
    return sum(weight * value(grid) for grid, weight in per_grid.items())


# ----------------------------------------------------------------------------------------------------------
# Training: one stage per micro-batch, timesteps uniform overall.


def draw_stage(stage_list: list[Stage], generator: torch.Generator, rank: int = 0, world_size: int = 1,
               weights: torch.Tensor | None = None) -> Stage:
    """The stage of this rank's micro-batch. All ranks share one uniform offset u (same generator state on every
    rank); rank r takes the stage holding quantile (r + u) / world_size of [0, T). So ranks are spread over the
    stages in proportion to their lengths (rank <-> stage), and for t drawn uniformly inside the stage, t is
    uniform over [0, T) overall — with one grid per forward pass. With `weights` (T,), the training density of t
    (`flexgen.policies.timesteps.timestep_weights`), a stage's share is its weight instead of its length, and t
    drawn inside it with those weights follows that density overall."""
    u = torch.rand((), generator=generator).item()
    masses = [float(weights[s.t_start:s.t_end].sum()) if weights is not None else s.length for s in stage_list]
    target = (rank + u) / world_size * sum(masses)
    acc = 0.0
    for s, mass in zip(stage_list, masses, strict=True):
        acc += mass
        if target < acc:
            return s
    return stage_list[-1]


def sample_timesteps_in_stage(stage: Stage, batch_size: int, generator: torch.Generator,
                              weights: torch.Tensor | None = None) -> torch.Tensor:
    """Integer timesteps in [stage.t_start, stage.t_end), a LongTensor (B,): uniform, or drawn with `weights` (T,)."""
    if weights is None:
        return torch.randint(stage.t_start, stage.t_end, (batch_size,), generator=generator)
    inside = weights[stage.t_start:stage.t_end].double()
    return stage.t_start + torch.multinomial(inside, batch_size, replacement=True, generator=generator)
