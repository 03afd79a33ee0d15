"""What a model costs: MACs per forward at each timestep's sparse grid, and per sample of a sampler run.

A backbone family gives a `CostModel` of one sample's forward (its MACs counted on the meta device by
`flexgen.flops.count_macs`); these functions turn it into the numbers every command reports (`flexgen sample`,
`flexgen generate`, `flexgen bench`, result records), so there is one definition of "GMACs per sample".
Papers call MACs "FLOPs"; we keep the name MACs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from flexgen.flops import FlopReport
from flexgen.policies.flexdit.layouts import parse_layout
from flexgen.policies.flexdit.schedules import Stage, grid_for_timesteps, mean_over_stages, stages


@dataclass(frozen=True)
class SpatialSequence:
    """The spatial token sequence of one sample, for the released FlexDiT code's Poolingformer count."""
    frames: int         # spatial sequences per sample (video frames; 1 for images)
    side: int           # token grid side (N = side²)
    width: int          # hidden size C
    blocks: int         # spatial blocks (the layout's length)


class CostModel(Protocol):
    """One family's forward cost for one sample. `stages` is empty for a dense model."""
    stages: list[Stage]
    layout: str

    def forward_macs(self, grid: int | None = None) -> FlopReport:
        """MACs of one forward for one sample: the dense model (grid None) or its FlexDiT version at `grid`."""

    def spatial_sequence(self) -> SpatialSequence: ...


class CountedCost:
    """What the families' cost models share (mixed into their dataclasses, which have the fields `density`,
    `num_timesteps` and `_counted`): the schedule's stages and the layout's roles from `density`, and each grid's
    MAC count done once (`_count(grid)`, the family's meta-device count; `num_blocks`, its spatial blocks)."""

    density: Any                    # flexgen.policies.flexdit.DensityConfig, or None for the dense model
    num_timesteps: int
    _counted: dict                  # grid -> FlopReport (and the stages, under a tuple key)

    @property
    def num_blocks(self) -> int:
        raise NotImplementedError

    @property
    def stages(self) -> list[Stage]:
        if self.density is None:
            return []
        key = ("stages", repr(self.density.schedule), self.num_timesteps)   # (the schedule is a mutable dataclass)
        if key not in self._counted:                   # one pass over [0, T) per schedule, not per lookup
            self._counted[key] = stages(self.density.schedule, self.num_timesteps)
        return list(self._counted[key])

    @property
    def layout(self) -> str:
        return parse_layout(self.density.layout, self.num_blocks) if self.density is not None else ""

    def forward_macs(self, grid: int | None = None) -> FlopReport:
        if grid not in self._counted:
            self._counted[grid] = self._count(grid)
        return self._counted[grid]

    def _count(self, grid: int | None) -> FlopReport:
        raise NotImplementedError


def grid_at_timestep(cost: CostModel, t: int) -> int | None:
    """The sparse grid a FlexDiT model uses at timestep t (None for a dense model)."""
    import torch

    return grid_for_timesteps(cost.stages, torch.tensor([int(t)])) if cost.stages else None


def forward_gmacs(cost: CostModel) -> float:
    """GMACs of one forward for one sample: the dense model's, or a FlexDiT model's time average over t uniform in
    [0, T) (what the papers quote as a dynamic model's FLOPs)."""
    if not cost.stages:
        return cost.forward_macs(None).gmacs
    return mean_over_stages(cost.stages, lambda g: cost.forward_macs(g).gmacs)


def sampling_cost(cost: CostModel, timesteps: Sequence[int], passes: int = 1) -> dict[str, Any]:
    """GMACs to draw one sample: one forward per sampler timestep at that timestep's grid, `passes` forwards per
    step (2 with classifier-free guidance's doubled batch); `gmacs_per_forward` is `forward_gmacs`. Dense numbers
    beside; the autoencoder is excluded. `forward_macs` should cache per grid (it is asked once per step)."""
    dense = cost.forward_macs(None).gmacs
    grids = [grid_at_timestep(cost, t) for t in timesteps]
    per_grid = {g: cost.forward_macs(g).gmacs for g in sorted({g for g in grids if g is not None})}
    per_step = [dense if g is None else per_grid[g] for g in grids]
    report: dict[str, Any] = {"model_evaluations": len(grids) * passes, "gmacs_per_forward_dense": dense,
                              "gmacs_per_sample_dense": dense * len(grids) * passes,
                              "gmacs_per_sample": sum(per_step) * passes,
                              "gmacs_per_forward": forward_gmacs(cost)}
    if per_grid:
        report["gmacs_per_forward_by_grid"] = per_grid
        report["steps_per_grid"] = {g: grids.count(g) for g in per_grid}
        report["reduction"] = 1 - report["gmacs_per_sample"] / report["gmacs_per_sample_dense"]
    return report


def released_poolingformer_extra_gmacs(cost: CostModel) -> float:
    """GMACs the released FlexDiT code spends beyond ours on its Poolingformers: it projects V for all N tokens,
    multiplies an N×N all-ones softmax with V and projects all N outputs (2NC² + N²C per sequence), where we
    project the token mean once (2C²). Per sample: one spatial sequence per frame."""
    seq = cost.spatial_sequence()
    N, C = seq.side ** 2, seq.width
    return cost.layout.count("P") * seq.frames * (2 * N * C * C + N * N * C - 2 * C * C) / 1e9


def density_report(cost: CostModel) -> dict:
    """Dense vs FlexDiT MACs: per grid of the schedule, the time average over t uniform in [0, T), the reduction,
    and the same average as the released code would count it."""
    if not cost.stages:
        raise ValueError("density_report needs a FlexDiT model (a density layout); this one is dense")
    per_grid = {s.grid: cost.forward_macs(s.grid) for s in cost.stages}
    dense = cost.forward_macs(None)
    gmacs = mean_over_stages(cost.stages, lambda g: per_grid[g].gmacs)
    released = gmacs + released_poolingformer_extra_gmacs(cost)
    return {"params": per_grid[cost.stages[0].grid].params, "params_dense": dense.params,
            "gmacs_dense": dense.gmacs, "gmacs": gmacs, "reduction": 1 - gmacs / dense.gmacs,
            "gmacs_released_code": released, "reduction_released_code": 1 - released / dense.gmacs,
            "stages": [[s.t_start, s.t_end, s.grid, per_grid[s.grid].gmacs] for s in cost.stages]}


class CostMeter:
    """A model with a measured policy as a sampler's `model(x, t, **cond)` that adds up the MACs of every forward
    from what it ran (`Denoiser.forward_macs`: DyDiT's kept counts, a step cache's skipped steps): the cost of a
    sampling run. With `model` None, forwards are added with `add` (`flexgen generate`'s hook on the pipeline's
    transformer)."""

    def __init__(self, model: Any = None):
        self.model = model
        self.macs_at: dict[int, float] = {}         # timestep -> MACs of every forward at it (all rows, all calls)
        self.forwards = 0                           # sample rows forwarded (a CFG step forwards 2 per sample)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        out = self.model(x, t, **cond)
        self.add(int(t[0]), self.model.forward_macs())
        return out

    def add(self, t: int, macs: torch.Tensor) -> None:
        """A forward at timestep t whose rows cost `macs` (B,) (a forward hook can call this directly)."""
        self.macs_at[t] = self.macs_at.get(t, 0.0) + float(macs.sum())
        self.forwards += macs.shape[0]

    def cost(self, num_samples: int, dense_gmacs_per_forward: float, patterns: list[int]) -> dict[str, Any]:
        """`report` as a sample record's cost: the measured GMACs per sample and per forward replace the dense
        count; the realised reduction and the sliced-weight patterns per block beside them."""
        report = self.report(num_samples, dense_gmacs_per_forward)
        report.update(gmacs_per_sample=report["gmacs_per_sample_measured"],
                      gmacs_per_forward=report["gmacs_per_forward_measured"], reduction=1 - report["flops_fraction"],
                      sliced_weight_patterns=patterns)
        return report

    def report(self, num_samples: int, dense_gmacs_per_forward: float) -> dict[str, Any]:
        """GMACs per sample of the run (and at each sampler timestep), per forward, and against the dense model."""
        total = sum(self.macs_at.values())
        per_sample = total / num_samples / 1e9
        steps = len(self.macs_at)
        dense = dense_gmacs_per_forward * self.forwards / num_samples
        return {"gmacs_per_sample_measured": per_sample, "gmacs_per_forward_measured": total / self.forwards / 1e9,
                "gmacs_per_sample_dense": dense, "flops_fraction": per_sample / dense, "sampler_steps": steps,
                "gmacs_per_sample_at_t": {t: m / num_samples / 1e9 for t, m in sorted(self.macs_at.items())}}
