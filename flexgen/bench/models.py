"""The models a bench counts or times: a run's network on the meta device, the dense network with random weights
and the inputs every timed model shares (`bench_setup`), and the dynamic model of a run (`dynamic_plan`: FlexDiT,
DyDiT or both) with the keys it is timed at and how their times average over t."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from flexgen import policies
from flexgen.diffusion import any_scheduler, linear_betas
from flexgen.policies.cost import density_report, grid_at_timestep
from flexgen.policies.dydit.config import DyDiTConfig
from flexgen.policies.flexdit import DensityConfig
from flexgen.policies.flexdit.schedules import mean_over_stages
from flexgen.registry import build_denoiser, family_of


def policy_fields(run) -> dict:
    """What a report says of the run's policy: its FlexDiT `layout` and DyDiT `dydit_target` where it has them."""
    sections = policies.from_run(run).sections()
    fields = {"layout": sections["density"]["layout"]} if "density" in sections else {}
    return {**fields, **({"dydit_target": sections["dydit"]["target"]} if "dydit" in sections else {})}


def meta_denoiser(run):
    """The denoiser of `run` on the meta device: its parameters and MACs, no weights."""
    with torch.device("meta"):
        return build_denoiser(run)


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial weights (a fresh model's zero gates skip no work, but keep the numbers realistic)."""
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return model


@dataclasses.dataclass
class BenchSetup:
    """The dense model and the inputs every timed model of one configuration shares."""
    run: Any
    dense: Any
    x: torch.Tensor
    cond: dict
    device: torch.device
    dtype: torch.dtype
    sampler: str
    steps: int


def bench_setup(run, *, device: str, dtype: torch.dtype, batch: int, seed: int, sampler: str | None,
                steps: int | None) -> BenchSetup:
    """The dense network of `run` (its density and dydit sections dropped) with random weights, and its inputs."""
    dev = torch.device(device)
    torch.manual_seed(seed)
    family = family_of(run.model.preset)
    sampler = sampler or family.default_sampler
    if sampler not in family.samplers:
        raise ValueError(f"{run.model.preset} samples with {', '.join(family.samplers)}, not {sampler!r}")
    dense = build_denoiser(dataclasses.replace(run, density=DensityConfig(), dydit=DyDiTConfig())).to(device=dev)
    if next(dense.parameters()).dtype != dtype:            # (diffusers warns on every dtype cast)
        dense = dense.to(dtype=dtype)
    dense = _randomised(dense.eval())
    x = torch.randn(batch, *dense.latent_shape(), device=dev, dtype=dtype)
    return BenchSetup(run, dense, x, dense.example_condition(batch, dev, dtype), dev, dtype, sampler,
                      steps or family.default_steps)


@dataclasses.dataclass
class DynamicPlan:
    """What the latency bench times of a dynamic model: its forward at each key (a FlexDiT grid, or a DyDiT
    timestep), the timestep of each key, how a sampler step maps to a key, and how key times average into what
    a sampler spending equal time per timestep sees."""
    model: Any
    keys: list
    t_of: dict
    extra: Callable[[Any], dict]                 # key -> forward kwargs
    key_of_t: Callable[[int], Any]               # sampler timestep -> key
    average: Callable[[dict], float]             # {key: seconds} -> time average over t
    gmacs: float                                 # MACs per forward, time average
    gmacs_dense: float
    name: str
    key_name: str                                # what a key is: "grid" or "timestep"


def dynamic_plan(bench: BenchSetup, run, ckpt: str | None = None, target: float | None = None,
                 scattered: bool = False) -> DynamicPlan:
    """The dynamic model of `run` (a variant of the bench's: FlexDiT with a density section, DyDiT or composed
    with a dydit one) on the bench's dense weights; DyDiT's synthetic routers keep a prefix of the units and every
    token, or with `scattered` spread units and some tokens (`set_synthetic_routers`)."""
    policy = policies.from_run(run)
    if policy.gated:
        return _dydit_plan(run, bench.dense, bench.device, bench.dtype, bench.x, bench.cond, ckpt,
                           target or policy_fields(run)["dydit_target"], bench.sampler, bench.steps,
                           scattered=scattered)
    if policy.dense:
        raise ValueError("a dynamic model needs a density layout or a dydit section")
    return _flexdit_plan(run, bench.dense)


def _flexdit_plan(run, dense) -> DynamicPlan:
    flex = dense.converted(run.density).eval()
    stages = flex.cost().stages
    grids = sorted({s.grid for s in stages})
    flops = density_report(flex.cost())
    return DynamicPlan(flex, grids, {s.grid: (s.t_start + s.t_end) // 2 for s in stages},   # a t inside each stage
                       lambda g: {"grid": g}, lambda t: grid_at_timestep(flex.cost(), t),
                       lambda median: mean_over_stages(stages, median.__getitem__), flops["gmacs"],
                       flops["gmacs_dense"], "FlexDiT", "grid")


def on_dense_weights(run, dense, device) -> Any:
    """The model of `run` on `dense`'s weights: FlexDiT-converted where `run` has a density layout, DyDiT's routers
    fresh (every unit on) where it has a dydit section."""
    model = build_denoiser(run).to(device=device)
    source = dense.converted(run.density) if run.density.layout else dense
    sd, _ = model.policy.load_state_dict(source.net.state_dict(), "the dense weights")
    model.net.load_state_dict(sd)
    return model


def _dydit_plan(run, dense, dev, dtype, x, cond, ckpt, target, sampler, steps, points: int = 5,
                scattered: bool = False) -> DynamicPlan:
    """DyDiT: the model with trained routers (`ckpt`) or the synthetic setting for λ = `target` on the dense model's
    weights, timed at `points` timesteps spread over the sampler's (synthetic routers are the same at every t, so one
    suffices). Composed with FlexDiT: as many in every stage of its schedule the sampler visits, and a sampler step
    is timed at the nearest timed timestep of its own stage (so at its own grid)."""
    if ckpt:
        dy = build_denoiser(run).to(device=dev)
        dy.load_pretrained(ckpt, routers_required=True)
        if not dy.cost().stages:                       # (the dense model's time does not depend on its weights)
            dense.net.load_state_dict(dy.net.state_dict(), strict=False)      # (the routers are not its)
    else:
        dy = on_dense_weights(run, dense, dev)
        dy.policy.set_synthetic(target, scattered)
    dy = dy.to(dtype=dtype).eval()
    timesteps = [int(t) for t in any_scheduler(sampler, linear_betas(run.diffusion.num_timesteps), steps).timesteps]

    def stage(t: int):                                 # the FlexDiT grid at t (None: DyDiT alone)
        return grid_at_timestep(dy.cost(), t)

    picked = []
    for grid in dict.fromkeys(stage(t) for t in timesteps):
        inside = [t for t in timesteps if stage(t) == grid]
        count = points if ckpt else 1
        picked += sorted({inside[round(i * (len(inside) - 1) / max(1, count - 1))] for i in range(count)})
    macs = {}
    for t in picked:                                   # the MACs of each timed forward, from its kept counts
        dy(x, torch.full((x.shape[0],), t, device=dev, dtype=torch.long), **cond)
        macs[t] = float(dy.forward_macs().mean()) / 1e9
    dense_gmacs = dense.cost().forward_macs(None).gmacs

    def nearest(t: int) -> int:                        # a sampler step is timed at the nearest timed timestep
        return min((p for p in picked if stage(p) == stage(t)), key=lambda p: abs(p - t))

    weights = {p: sum(1 for t in timesteps if nearest(t) == p) / len(timesteps) for p in picked}
    return DynamicPlan(dy, picked, {p: p for p in picked}, lambda _: {}, nearest,
                       lambda median: sum(weights[p] * median[p] for p in picked),
                       sum(weights[p] * macs[p] for p in picked), dense_gmacs,
                       "FlexDiT ∘ DyDiT" if dy.cost().stages else "DyDiT", "timestep")
