"""Latency of dense vs FlexDiT models, measured in one process on the same inputs.

Dense and dynamic passes alternate inside every repeat (so drifting clocks and other load hit both alike), each
number is a median over repeats, and the dynamic model is timed at every grid of its schedule and averaged with
the stages' shares of timesteps, which is what a sampler spending equal time per timestep sees. Targets are
ratios (dynamic / dense) printed beside the MAC ratio; nothing here is asserted in tests.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from flexgen.attention import backend_counts, reset_backend_counts
from flexgen.density import DensityConfig
from flexgen.density.cost import density_report, grid_at_timestep
from flexgen.density.schedules import mean_over_stages
from flexgen.diffusion import any_scheduler, classifier_free_guidance, linear_betas
from flexgen.registry import build_denoiser, family_of


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    def run(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start
    return run


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial weights (a fresh model's zero gates skip no work, but keep the numbers realistic)."""
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return model


def _models(run, dev: torch.device, dtype: torch.dtype, batch: int, cfg_scale: float | None,
            attention: str = "diffusers"):
    """(dense, FlexDiT, call(model, x, t, grid, cfg), latent x) for a run configuration with a density section.
    `call` runs one forward, or with `cfg` the doubled classifier-free-guidance batch and the guided ε."""
    dense = build_denoiser(dataclasses.replace(run, density=DensityConfig())).to(device=dev)
    if next(dense.parameters()).dtype != dtype:            # (diffusers warns on every dtype cast)
        dense = dense.to(dtype=dtype)
    dense = _randomised(dense.eval())
    flex = dense.converted(run.density).eval()
    dense.set_attention(attention)
    flex.set_attention(attention)
    x = torch.randn(batch, *dense.latent_shape(), device=dev, dtype=dtype)
    cond = dense.example_condition(batch, dev, dtype)

    def call(model, x, t, grid, cfg):
        net = model if not grid else (lambda *a, **k: model(*a, **k, grid=grid))
        if cfg and model.conditional:
            net = classifier_free_guidance(net, cfg_scale, cond, model.null_condition(cond))
            return net(x, t)
        return net(x, t, **cond)
    return dense, flex, call, x


@torch.no_grad()
def latency_report(run, *, device: str = "cpu", dtype: torch.dtype = torch.float32, batch: int = 1,
                   repeats: int = 3, warmup: int = 1, cfg_scale: float | None = None, sampler: str | None = None,
                   steps: int | None = None, seed: int = 0, attention: str = "diffusers") -> dict:
    """Median seconds per forward (and per sampling step with CFG, with `cfg_scale`) of the dense model and of its
    FlexDiT conversion at each grid, their time averages over the schedule, and the ratios beside MAC ratios.
    `run` is a run configuration (`flexgen.config.Config`) with a density section. With `cfg_scale`, the whole
    sampling run of `sampler` (default: the family's, DDPM 250 steps for Latte / DiT, DPM-Solver++ 20 steps for
    PixArt-α) is also timed, as the sum of its steps, each at the grid of its timestep."""
    dev = torch.device(device)
    torch.manual_seed(seed)
    num_timesteps = run.diffusion.num_timesteps
    family = family_of(run.model.preset)
    sampler = sampler or family.default_sampler
    if sampler not in family.samplers:
        raise ValueError(f"{run.model.preset} samples with {', '.join(family.samplers)}, not {sampler!r}")
    steps = steps or family.default_steps
    dense, flex, call, x = _models(run, dev, dtype, batch, cfg_scale, attention)
    flex_stages = flex.cost().stages
    grids = sorted({s.grid for s in flex_stages})
    t_of = {s.grid: (s.t_start + s.t_end) // 2 for s in flex_stages}     # a timestep inside each grid's stage
    timer = _timer(dev)

    def forward(model, grid=None):
        t = torch.full((batch,), t_of[grid] if grid else 500, device=dev, dtype=torch.long)
        return lambda: call(model, x, t, grid, False)

    def cfg_step(model, grid=None):
        # One sampling step: the doubled CFG batch through the model, guidance, then the scheduler's update
        # (a fresh scheduler each time, made outside the timed call: multistep solvers keep state).
        scheduler = any_scheduler(sampler, linear_betas(num_timesteps), steps)
        t_value = t_of[grid] if grid else 500
        t_step = scheduler.timesteps[(scheduler.timesteps - t_value).abs().argmin()]
        t = torch.full((batch,), int(t_step), device=dev, dtype=torch.long)
        latents = x.movedim(-3, 1).float()              # (B, C, F, H, W) for video; images unchanged

        def run():
            eps = call(model, x, t, grid, True).movedim(-3, 1)
            channels = latents.shape[1]
            model_output = eps.float() if sampler == "ddpm" and eps.shape[1] == 2 * channels else eps[:, :channels]
            scheduler.step(model_output.float(), t_step, latents)
        return run

    kinds = {"forward": forward}
    if cfg_scale is not None:
        kinds["cfg_step"] = cfg_step
    times: dict[str, dict] = {k: {"dense": [], **{g: [] for g in grids}} for k in kinds}
    reset_backend_counts()
    for r in range(warmup + repeats):
        for kind, make in kinds.items():
            for key in ["dense", *grids]:
                seconds = timer(make(dense) if key == "dense" else make(flex, key))
                if r >= warmup:
                    times[kind][key].append(seconds)

    flops = density_report(flex.cost())
    flops_ratio = flops["gmacs"] / flops["gmacs_dense"]
    result = {"device": str(dev), "dtype": str(dtype).removeprefix("torch."), "batch": batch, "repeats": repeats,
              "gmacs_dense": flops["gmacs_dense"], "gmacs": flops["gmacs"], "flops_ratio": flops_ratio,
              "attention_calls": backend_counts()}
    processors = dense.attention_processors()    # diffusers' own processors (SDPA) where flexgen.attention is not used
    if processors is not None:
        result["attention_calls"] = processors
    for kind in kinds:
        median = {key: statistics.median(v) for key, v in times[kind].items()}
        dynamic = mean_over_stages(flex_stages, median.__getitem__)
        ratio = dynamic / median["dense"]
        result[kind] = {"dense_s": median["dense"], "dynamic_s": dynamic, "per_grid_s": {g: median[g] for g in grids},
                        "latency_ratio": ratio, "speedup": 1 / ratio, "latency_over_flops": ratio / flops_ratio}
    if cfg_scale is not None:          # a whole sampling run: each step at the grid of its own timestep
        timesteps = any_scheduler(sampler, linear_betas(num_timesteps), steps).timesteps
        step_grids = [grid_at_timestep(flex.cost(), int(t)) for t in timesteps]
        median = result["cfg_step"]
        dense_s = median["dense_s"] * len(step_grids)
        dynamic_s = sum(median["per_grid_s"][g] for g in step_grids)
        result["sampling"] = {"sampler": sampler, "steps": len(step_grids), "dense_s": dense_s,
                              "dynamic_s": dynamic_s, "speedup": dense_s / dynamic_s,
                              "grids": {g: step_grids.count(g) for g in grids if g in step_grids}}
    return result


# ----------------------------------------------------------------------------------------------------------
# `flexgen bench flops | latency`: the model of --config, or of a preset and flags.


def bench_run(args) -> tuple[Any, str]:
    """(run configuration, name) from --config [KEY=VALUE ...] or from --model and the size / density flags."""
    from flexgen.config import load_config
    from flexgen.density import ScheduleConfig
    from flexgen.registry import denoiser_class

    if args.config:
        return load_config(args.config, args.overrides), args.config
    if args.overrides:
        raise ValueError("KEY=VALUE overrides apply to --config only")
    family = denoiser_class(args.model)                  # an unknown preset: an error listing them
    overrides = family.preset_overrides(args.model, image_size=args.image_size, frames=args.frames,
                                        num_classes=args.num_classes, in_channels=args.in_channels,
                                        vae_factor=args.vae_factor)
    run = load_config(None, overrides)
    if args.layout:
        schedule = ScheduleConfig(kind="constant", grid=args.grid) if args.grid else ScheduleConfig(
            kind="eq5", grid_min=args.grid_min, grid_max=args.grid_max, reading=args.reading)
        run = dataclasses.replace(run, density=DensityConfig(layout=args.layout, schedule=schedule,
                                                             pool_frames=args.pool_frames))
    return run, f"{args.model} {run.data.image_size}px"


def _meta_denoiser(run):
    with torch.device("meta"):
        return build_denoiser(run)


def bench_flops(args) -> dict:
    run, name = bench_run(args)
    model = _meta_denoiser(run)
    cost, shape = model.cost(), model.latent_shape()       # forward_macs(None): the dense network, counted once
    result = {"model": name, "latent": list(shape if len(shape) == 4 else (1, *shape)), **model.condition_summary()}
    result.update(cost.forward_macs(None).to_dict())
    if run.density.layout:
        flex = density_report(cost)
        result.update(layout=run.density.layout, params=flex["params"], params_dense=flex["params_dense"],
                      gmacs_dense=flex["gmacs_dense"], gmacs=flex["gmacs"], reduction=flex["reduction"],
                      gmacs_released_code=flex["gmacs_released_code"],
                      reduction_released_code=flex["reduction_released_code"], stages=flex["stages"])
    return result


def print_flops(result: dict) -> None:
    condition = f"text tokens = {result['text_tokens']}" if "text_tokens" in result else \
        f"classes = {result['num_classes']}"
    print(f"{result['model']}: latent (F, C, H, W) = {tuple(result['latent'])}, {condition}")
    dense = result.get("gmacs_dense", result["gmacs"])
    print(f"  parameters  {result.get('params_dense', result['params']) / 1e6:10.2f} M (trainable, dense)")
    print(f"  MACs        {dense:10.2f} G per forward, one sample, dense (papers call these FLOPs)")
    for name, gmacs in result["breakdown"].items():
        print(f"    {name:<18} {gmacs:10.2f} G  {100 * gmacs / dense:5.1f}%")
    print("  by operation: " + ", ".join(f"{op} {g:.2f} G" for op, g in result["by_op"].items()))
    if "layout" in result:
        print(f"FlexDiT layout {result['layout']}: {result['params'] / 1e6:.2f} M parameters")
        for t_start, t_end, grid, gmacs in result["stages"]:
            print(f"    t in [{t_start:4d}, {t_end:4d})  grid {grid:2d}×{grid:<2d} {gmacs:10.2f} G")
        print(f"  time average {result['gmacs']:10.2f} G  ({100 * result['reduction']:.1f}% fewer than dense)")
        print(f"  as the released FlexDiT code counts its Poolingformers: {result['gmacs_released_code']:.2f} G "
              f"({100 * result['reduction_released_code']:.1f}% fewer)")


def bench_latency(args) -> dict:
    run, name = bench_run(args)
    if not run.density.layout:
        raise ValueError("bench latency compares dense with FlexDiT: give --layout (and a schedule) or a --config "
                         "with a density section")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    return {"model": name, "layout": run.density.layout,
            **latency_report(run, device=args.device, dtype=dtype, batch=args.batch, repeats=args.repeats,
                             warmup=args.warmup, cfg_scale=args.cfg_scale, sampler=args.sampler, steps=args.steps,
                             attention=args.attention)}


def print_latency(result: dict) -> None:
    print(f"{result['model']}, layout {result['layout']}, {result['device']} {result['dtype']}, batch "
          f"{result['batch']}, median of {result['repeats']}")
    print(f"  MACs: dense {result['gmacs_dense']:.1f} G, FlexDiT {result['gmacs']:.1f} G "
          f"(ratio {result['flops_ratio']:.3f}); attention backend calls: {result['attention_calls']}")
    for kind in ("forward", "cfg_step"):
        if kind in result:
            r = result[kind]
            grids = ", ".join(f"{g}: {s * 1e3:.0f} ms" for g, s in r["per_grid_s"].items())
            print(f"  {kind}: dense {r['dense_s'] * 1e3:.0f} ms, FlexDiT {r['dynamic_s'] * 1e3:.0f} ms "
                  f"(per grid {grids}); latency ratio {r['latency_ratio']:.3f} = {r['latency_over_flops']:.2f} × "
                  f"the MAC ratio; speed-up {r['speedup']:.2f}×")
    if "sampling" in result:
        r = result["sampling"]
        print(f"  sampling ({r['sampler']}, {r['steps']} steps with CFG, each at its timestep's grid {r['grids']}): "
              f"dense {r['dense_s']:.2f} s, FlexDiT {r['dynamic_s']:.2f} s; speed-up {r['speedup']:.2f}×")
