"""`flexgen bench flops`: parameters and MACs per forward, counted on the meta device (no weights). Dense, FlexDiT
(per stage of its schedule and the time average), DyDiT (the synthetic router setting for λ, or a trained
checkpoint's kept counts over a sampling run) and FlexDiT ∘ DyDiT."""

from __future__ import annotations

import dataclasses

import torch

from flexgen import policies
from flexgen.bench.models import meta_denoiser, policy_fields
from flexgen.bench.options import bench_run
from flexgen.diffusion import linear_betas
from flexgen.policies.cost import density_report
from flexgen.policies.dydit.config import DyDiTConfig
from flexgen.policies.flexdit import DensityConfig
from flexgen.policies.flexdit.schedules import mean_over_stages
from flexgen.registry import build_denoiser
from flexgen.sampling.draw import draw


def dydit_flops(run, name: str, *, ckpt: str | None = None, target: float | None = None, num_samples: int = 8,
                device: str = "cpu", dtype: torch.dtype = torch.float32, scattered: bool = False) -> dict:
    """A DyDiT model's cost: parameters and router overhead beside the dense model, and MACs per forward from kept
    counts: of the synthetic router setting for λ = `target` (no weights, counted on the meta device), or of a
    trained checkpoint's sampling run (`run.sample`'s sampler, steps, CFG and guidance channels) on `num_samples`
    fixed seeds and labels (sample i: seed sample.seed + i, its label from that seed, as `flexgen sample`), each
    sampler step's MACs per sample and the total."""
    dense_run = dataclasses.replace(run, dydit=DyDiTConfig(), density=DensityConfig())
    dense, dy = meta_denoiser(dense_run), meta_denoiser(run)
    dense_gmacs = dense.cost().forward_macs(None).gmacs
    stages = dy.cost().stages                          # FlexDiT ∘ DyDiT: its schedule's grids
    grid0 = stages[0].grid if stages else None
    shapes = dy.policy.block_shapes(grid0)
    params_dense, params = (sum(p.numel() for p in m.parameters()) for m in (dense, dy))
    result = {"model": name, "policy": "FlexDiT ∘ DyDiT" if stages else "DyDiT", **policy_fields(run),
              "params_dense": params_dense, "params": params, "router_params": params - params_dense,
              "gmacs_dense": dense_gmacs, "router_gmacs": dy.policy.router_macs(grid0) / 1e9,
              "block_gmacs": [[b.cost.attention / 1e9, b.cost.mlp / 1e9] for b in shapes]}
    if stages:
        flex = density_report(dy.cost())
        result.update(gmacs_flexdit=flex["gmacs"], flexdit_ratio=1 - flex["reduction"])
    if ckpt is None:
        target = target if target is not None else result["dydit_target"]

        def synthetic(grid):                           # GMACs of one forward at `grid` with the λ setting
            return dy.policy.synthetic_macs(dy.cost(), grid, target, scattered) / 1e9

        if stages:
            per_grid = {s.grid: synthetic(s.grid) for s in stages}
            gmacs = mean_over_stages(stages, per_grid.__getitem__)
            result["stages"] = [[s.t_start, s.t_end, s.grid, flex["stages"][i][3], per_grid[s.grid]]
                                for i, s in enumerate(stages)]
        else:
            gmacs = synthetic(None)
        result.update(router_setting=f"synthetic λ={target:g}" + (" scattered" if scattered else ""), gmacs=gmacs,
                      flops_ratio=gmacs / dense_gmacs)
        return result
    s, dev = run.sample, torch.device(device)
    model = build_denoiser(run)
    model.load_pretrained(ckpt, routers_required=True)
    model = model.eval().to(device=dev, dtype=dtype)
    meter = model.policy.meter(model)
    cond = model.sampling_condition(num_samples, s.seed, dev, dtype)   # sample i's label from its seed, or text
    d = run.diffusion
    draw(model, [s.seed + i for i in range(num_samples)], cond, sampler=s.sampler, steps=s.steps,
         cfg_scale=s.cfg_scale, cfg_channels=s.cfg_channels, betas=linear_betas(d.num_timesteps, d.beta_start,
         d.beta_end), clip_denoised=s.clip_denoised, device=dev, dtype=dtype, meter=meter)
    report = meter.report(num_samples, dense_gmacs)
    result.update(router_setting=f"trained ({ckpt})", gmacs=report["gmacs_per_forward_measured"],
                  flops_ratio=report["flops_fraction"], sampler=s.sampler, steps=s.steps, cfg_scale=s.cfg_scale,
                  num_samples=num_samples, gmacs_per_sample=report["gmacs_per_sample_measured"],
                  gmacs_per_sample_dense=report["gmacs_per_sample_dense"],
                  gmacs_per_sample_at_t=report["gmacs_per_sample_at_t"],
                  sliced_weight_patterns=model.policy.patterns())
    return result


def bench_flops(args) -> dict:
    run, name = bench_run(args)
    if policies.from_run(run).gated:
        dtype = getattr(torch, args.dtype)
        return dydit_flops(run, name, ckpt=args.ckpt, target=args.target, num_samples=args.num_samples,
                           device=args.device, dtype=dtype, scattered=args.scattered)
    if args.ckpt:
        raise ValueError("--ckpt measures a DyDiT checkpoint's routers: give a config with a dydit section")
    model = meta_denoiser(run)
    cost, shape = model.cost(), model.latent_shape()       # forward_macs(None): the dense network, counted once
    result = {"model": name, "latent": list(shape if len(shape) == 4 else (1, *shape)), **model.condition_summary()}
    result.update(cost.forward_macs(None).to_dict())
    if cost.layout:
        flex = density_report(cost)
        result.update(layout=policy_fields(run)["layout"], params=flex["params"], params_dense=flex["params_dense"],
                      gmacs_dense=flex["gmacs_dense"], gmacs=flex["gmacs"], reduction=flex["reduction"],
                      gmacs_released_code=flex["gmacs_released_code"],
                      reduction_released_code=flex["reduction_released_code"], stages=flex["stages"])
    return result


def print_dydit_flops(result: dict) -> None:
    layout = f"FlexDiT layout {result['layout']} ∘ " if "layout" in result else ""
    print(f"{result['model']}: {layout}DyDiT λ = {result['dydit_target']:g}, routers {result['router_setting']}")
    print(f"  parameters  {result['params_dense'] / 1e6:10.2f} M dense, {result['params'] / 1e6:.2f} M with routers "
          f"(+{result['router_params'] / 1e6:.2f} M)")
    if "layout" in result:
        print(f"  FlexDiT alone {result['gmacs_flexdit']:8.2f} G per forward (ratio {result['flexdit_ratio']:.3f})")
        for t_start, t_end, grid, flex, composed in result.get("stages", []):
            print(f"    t in [{t_start:4d}, {t_end:4d})  grid {grid:2d}×{grid:<2d} FlexDiT {flex:9.2f} G, "
                  f"composed {composed:9.2f} G")
    print(f"  MACs        {result['gmacs_dense']:10.2f} G per forward dense, {result['gmacs']:.2f} G "
          f"{result['policy']} (ratio {result['flops_ratio']:.3f}, {100 * (1 - result['flops_ratio']):.1f}% fewer; "
          f"routers {result['router_gmacs']:.3f} G)")
    if "gmacs_per_sample" in result:
        at_t = result["gmacs_per_sample_at_t"]
        shown = list(at_t.items())[:: max(1, len(at_t) // 10)]
        print(f"  per sample ({result['sampler']}, {result['steps']} steps, CFG {result['cfg_scale']}, "
              f"{result['num_samples']} seeds): {result['gmacs_per_sample']:.1f} G vs "
              f"{result['gmacs_per_sample_dense']:.1f} G dense")
        print("  at t: " + ", ".join(f"{t}: {g:.2f} G" for t, g in shown))
        print(f"  sliced-weight patterns per block: {result['sliced_weight_patterns']}")


def print_flops(result: dict) -> None:
    if "dydit_target" in result:
        print_dydit_flops(result)
        return
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
