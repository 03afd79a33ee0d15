"""Which diffusion timesteps a training micro-batch uses: chosen by the model, so the loop never asks whether a
model is dynamic (the pattern of DiT's `diffusion/timestep_sampler.py`).

- `UniformTimesteps`: t uniform in [0, T) per sample (a dense model).
- `WeightedTimesteps`: t drawn with a training density over [0, T) (`timestep_weights`: logit-normal).
- `StratifiedTimesteps`: sample i of a micro-batch draws from stratum i mod k of the density (DyDiT), so every
  batch covers t evenly.
- `StageTimesteps`: one density stage per micro-batch (`draw_stage`: rank <-> stage, shared offset), t uniform
  inside it (or with the density's weights), so every forward pass has one token count while t follows the
  training density over all ranks and steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from flexgen.policies.flexdit.schedules import Stage, draw_stage, sample_timesteps_in_stage


class TimestepSampler(Protocol):
    def __call__(self, batch_size: int, own: torch.Generator, shared: torch.Generator, rank: int = 0,
                 world_size: int = 1) -> torch.Tensor:
        """(batch_size,) long timesteps of this rank's micro-batch. `own` is this rank's generator for the step,
        `shared` one that every rank seeds alike for the step."""


def timestep_weights(diffusion) -> torch.Tensor | None:
    """The training density of t over [0, T) as float64 weights (T,) summing to 1, or None for uniform t.
    `diffusion`: a flexgen.config.DiffusionConfig (num_timesteps, timestep_sampling, logit_mean, logit_std)."""
    if diffusion.timestep_sampling == "uniform":
        return None
    if diffusion.timestep_sampling != "logit_normal":
        raise ValueError(f"unknown timestep_sampling {diffusion.timestep_sampling!r}")
    # Esser et al. 2024 (SD3), Eq. 19: π_ln(u; m, s) = exp(-(logit u - m)² / 2s²) / (s sqrt(2π) u (1 - u)),
    # here u = (t + 1/2) / T, the midpoint of timestep t's cell of [0, 1]
    T, m, std = diffusion.num_timesteps, diffusion.logit_mean, diffusion.logit_std
    u = (torch.arange(T, dtype=torch.float64) + 0.5) / T
    logit = torch.log(u) - torch.log1p(-u)
    density = torch.exp(-((logit - m) ** 2) / (2 * std ** 2)) / (std * math.sqrt(2 * math.pi) * u * (1 - u))
    return density / density.sum()


@dataclass(frozen=True)
class UniformTimesteps:
    num_timesteps: int

    def __call__(self, batch_size: int, own: torch.Generator, shared: torch.Generator, rank: int = 0,
                 world_size: int = 1) -> torch.Tensor:
        return torch.randint(0, self.num_timesteps, (batch_size,), generator=own)


@dataclass(frozen=True, eq=False)
class WeightedTimesteps:
    weights: torch.Tensor                # (T,) float64, from timestep_weights

    def __call__(self, batch_size: int, own: torch.Generator, shared: torch.Generator, rank: int = 0,
                 world_size: int = 1) -> torch.Tensor:
        return torch.multinomial(self.weights, batch_size, replacement=True, generator=own)


@dataclass(frozen=True, eq=False)
class StageTimesteps:
    stages: tuple[Stage, ...]
    weights: torch.Tensor | None = None  # (T,) the training density of t; None: uniform

    def __call__(self, batch_size: int, own: torch.Generator, shared: torch.Generator, rank: int = 0,
                 world_size: int = 1) -> torch.Tensor:
        stage = draw_stage(list(self.stages), shared, rank, world_size, self.weights)   # the same on every rank
        return sample_timesteps_in_stage(stage, batch_size, own, self.weights)


@dataclass(frozen=True, eq=False)
class StratifiedTimesteps:
    num_timesteps: int
    strata: int
    weights: torch.Tensor | None = None  # (T,) the training density of t; None: uniform

    def __call__(self, batch_size: int, own: torch.Generator, shared: torch.Generator, rank: int = 0,
                 world_size: int = 1) -> torch.Tensor:
        # DyDiT train.py (--t_sample): local sample i draws t ~ U[T/k · (i mod k), T/k · (i mod k + 1)); here the
        # strata are quantiles of the training density, equal slices of [0, T) for uniform t
        u = (torch.arange(batch_size) % self.strata + torch.rand(batch_size, generator=own, dtype=torch.float64))
        u = u / self.strata                                                   # (B,) in [0, 1)
        if self.weights is None:
            return (u * self.num_timesteps).long().clamp(max=self.num_timesteps - 1)
        cdf = self.weights.cumsum(0)
        return torch.searchsorted(cdf, u * cdf[-1], right=True).clamp(max=self.num_timesteps - 1)
