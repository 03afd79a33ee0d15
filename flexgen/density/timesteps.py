"""Which diffusion timesteps a training micro-batch uses: chosen by the model, so the loop never asks whether a
model is dynamic (the pattern of DiT's `diffusion/timestep_sampler.py`).

- `UniformTimesteps`: t uniform in [0, T) per sample (a dense model).
- `StageTimesteps`: one density stage per micro-batch (`draw_stage`: rank <-> stage, shared offset), t uniform
  inside it, so every forward pass has one token count while t stays uniform over all ranks and steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from flexgen.density.schedules import Stage, draw_stage, sample_timesteps_in_stage


class TimestepSampler(Protocol):
    def __call__(self, batch_size: int, own: torch.Generator, shared: torch.Generator, rank: int = 0,
                 world_size: int = 1) -> torch.Tensor:
        """(batch_size,) long timesteps of this rank's micro-batch. `own` is this rank's generator for the step,
        `shared` one that every rank seeds alike for the step."""


@dataclass(frozen=True)
class UniformTimesteps:
    num_timesteps: int

    def __call__(self, batch_size: int, own: torch.Generator, shared: torch.Generator, rank: int = 0,
                 world_size: int = 1) -> torch.Tensor:
        return torch.randint(0, self.num_timesteps, (batch_size,), generator=own)


@dataclass(frozen=True)
class StageTimesteps:
    stages: tuple[Stage, ...]

    def __call__(self, batch_size: int, own: torch.Generator, shared: torch.Generator, rank: int = 0,
                 world_size: int = 1) -> torch.Tensor:
        stage = draw_stage(list(self.stages), shared, rank, world_size)          # the same draw on every rank
        return sample_timesteps_in_stage(stage, batch_size, own)
