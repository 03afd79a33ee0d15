"""`flexgen bench plan`: which FlexDiT schedules meet a MACs budget under a given sampler, and the DyDiT λ to train for.

A dynamic model's cost per sample depends on the timesteps its sampler visits (250-step DDPM, 20-step DPM-Solver and
50-step DDIM visit different t, so the same Eq. 5 schedule costs a different share of dense under each). For every
layout preset that fits the model, every grid range (grid_min ≤ grid_max ≤ the token grid side), both readings of
Eq. 5 and, for video, per-frame or cross-frame pooling, the plan sums the MACs of each sampler step at its
timestep's grid (each grid's forward counted once on the meta device) and keeps the schedules within the budget,
those that keep the most tokens first.

For DyDiT the budget is on the blocks' mean FLOPs fraction λ over training timesteps; the plan gives the λ whose
blocks plus the model's fixed costs (embeddings, final layer, routers) meet the budget. How a trained model spreads
that λ over t decides what a sampler realises (the demo's λ = 0.5 model realises 0.57 under DDIM-50): measure a
trained checkpoint with `flexgen bench flops --ckpt`. For a run with a FlexDiT layout and schedule, the plan also
gives the λ of FlexDiT ∘ DyDiT on that schedule (a fraction of each FlexDiT forward) that meets the budget under the
sampler's timesteps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from flexgen.diffusion import any_scheduler, linear_betas
from flexgen.policies.cost import grid_at_timestep
from flexgen.policies.dydit.config import DyDiTConfig
from flexgen.policies.flexdit import DensityConfig, ScheduleConfig
from flexgen.policies.flexdit.layouts import LAYOUTS, parse_layout
from flexgen.policies.flexdit.schedules import grid_at
from flexgen.registry import build_denoiser


def _meta(run):
    with torch.device("meta"):
        return build_denoiser(run)


def sampler_timesteps(run, sampler: str, steps: int) -> list[int]:
    d = run.diffusion
    return [int(t) for t in any_scheduler(sampler, linear_betas(d.num_timesteps, d.beta_start, d.beta_end),
                                          steps).timesteps]


def plan(run, budget: float, sampler: str, steps: int, top: int = 20) -> dict[str, Any]:
    """FlexDiT schedules of `run`'s model within `budget` (a fraction of the dense MACs per sample) under `sampler`
    with `steps` steps, most tokens kept first (the run's own layout when it has one, else every preset that fits);
    and the DyDiT λ for that budget (Latte / DiT)."""
    if not 0 < budget <= 1:
        raise ValueError(f"--budget is a fraction of the dense model's MACs per sample, in (0, 1]; got {budget}")
    plain = dataclasses.replace(run, density=DensityConfig(), dydit=DyDiTConfig())
    dense = _meta(plain)
    dense_gmacs = dense.cost().forward_macs(None).gmacs
    timesteps = sampler_timesteps(run, sampler, steps)
    T = run.diffusion.num_timesteps
    frames = dense.cost().spatial_sequence().frames
    pools = [0] + ([frames // 2] if frames > 1 else [])            # per frame, or across frames to half of them
    rows, considered, seen = [], 0, set()
    layouts = {run.density.layout: run.density.layout} if run.density.layout else LAYOUTS
    for name, roles in layouts.items():
        for pool_frames in pools:
            try:
                flex = _meta(dataclasses.replace(plain, density=DensityConfig(
                    layout=name, schedule=ScheduleConfig(kind="constant", grid=2), pool_frames=pool_frames)))
                roles = parse_layout(roles, flex.cost().num_blocks)
            except ValueError:
                if run.density.layout:
                    raise
                continue                                          # a preset of another depth
            if (roles, pool_frames) in seen:                      # two preset names of one role string
                continue
            seen.add((roles, pool_frames))
            cost = flex.cost()
            seq = cost.spatial_sequence()
            side = seq.side
            per_grid = {g: cost.forward_macs(g).gmacs for g in range(2, side + 1)}
            for grid_min in range(2, side + 1):
                for grid_max in range(grid_min, side + 1):
                    for reading in ("B", "A") if grid_min < grid_max else ("B",):
                        considered += 1
                        schedule = ScheduleConfig(kind="eq5", grid_min=grid_min, grid_max=grid_max, reading=reading)
                        grids = [grid_at(schedule, t, T) for t in timesteps]
                        fraction = sum(per_grid[g] for g in grids) / (dense_gmacs * len(grids))
                        if fraction <= budget:
                            rows.append({"layout": name, "grid_min": grid_min, "grid_max": grid_max,
                                         "reading": reading, "pool_frames": pool_frames,
                                         "tokens_kept": sum(g * g for g in grids) * (pool_frames or frames)
                                         / (len(grids) * side * side * frames),
                                         "flops_fraction": fraction,
                                         "gmacs_per_sample": sum(per_grid[g] for g in grids)})
    rows.sort(key=lambda r: (-r["tokens_kept"], -r["flops_fraction"]))
    result = {"model": run.model.preset, "budget": budget, "sampler": sampler, "steps": len(timesteps),
              "gmacs_per_forward_dense": dense_gmacs, "gmacs_per_sample_dense": dense_gmacs * len(timesteps),
              "schedules_considered": considered, "schedules_within_budget": len(rows), "flexdit": rows[:top],
              "num_blocks": dense.cost().num_blocks}
    result["dydit"] = dydit_target(plain, budget, dense_gmacs)
    if run.density.layout:           # the run's own FlexDiT schedule composed with DyDiT under this sampler
        result["composed"] = dydit_target(dataclasses.replace(run, dydit=DyDiTConfig()), budget, dense_gmacs,
                                          timesteps)
    return result


def dydit_target(run, budget: float, dense_gmacs: float, timesteps: list[int] | None = None
                 ) -> dict[str, Any] | None:
    """The λ (mean FLOPs fraction of the blocks) whose model costs `budget` of dense per forward, routers included;
    None for a family without DyDiT. With `run`'s FlexDiT density (FlexDiT ∘ DyDiT, whose λ is a fraction of each
    FlexDiT forward), blocks and fixed costs are averaged over the sampler's `timesteps` at their grids."""
    try:
        dy = _meta(dataclasses.replace(run, dydit=DyDiTConfig(target=1.0)))
        cost = dy.cost()
        grids = [grid_at_timestep(cost, t) for t in timesteps or range(run.diffusion.num_timesteps)] \
            if cost.stages else [None]
        shapes = {g: dy.policy.block_shapes(g) for g in set(grids)}
    except (ValueError, AttributeError):
        return None
    forward_at = {g: dense_gmacs if g is None else cost.forward_macs(g).gmacs for g in shapes}
    block_at = {g: sum(b.cost.attention + b.cost.mlp for b in sh) / 1e9 for g, sh in shapes.items()}
    blocks = sum(block_at[g] for g in grids) / len(grids)
    fixed = sum(forward_at[g] - block_at[g] + dy.policy.router_macs(g) / 1e9
                for g in grids) / len(grids)
    lam = (budget * dense_gmacs - fixed) / blocks
    return {"target": lam if 0 < lam <= 1 else None, "blocks_gmacs": blocks, "fixed_gmacs": fixed,
            "reachable": 0 < lam <= 1}
