"""`flexgen bench plan`: the FlexDiT schedules that meet a MACs budget under a sampler and the DyDiT λ for it (the
planner is `flexgen.policies.plan`), and with --ckpt what a trained DyDiT realises under each sampler."""

from __future__ import annotations

import dataclasses

import torch

from flexgen import policies
from flexgen.bench.flops import dydit_flops
from flexgen.bench.models import policy_fields
from flexgen.bench.options import bench_run
from flexgen.policies.plan import plan
from flexgen.registry import family_of

# The samplers and steps the papers evaluate with: DiT / Latte DDPM-250, DDIM-50, DPM-Solver++-20 (PixArt-α).
SAMPLER_PROTOCOLS = (("ddpm", 250), ("ddim", 50), ("dpm-solver++", 20))


def bench_plan(args) -> dict:
    if args.calibration:
        given = [flag for flag, value in (("--config", args.config), ("--sampler", args.sampler),
                                          ("--steps", args.steps), ("--ckpt", args.ckpt)) if value]
        if given:
            raise ValueError(f"--calibration plans on the runs the file recorded (its model, sampler and steps): "
                             f"drop {', '.join(given)}")
        return teacache_plan(args.calibration, args.budget)
    if args.scattered:
        raise ValueError("--scattered applies to bench flops and bench latency (a plan counts the prefix setting's λ)")
    run, name = bench_run(args)
    family = family_of(run.model.preset)
    sampler = args.sampler or family.default_sampler
    if sampler not in family.samplers:
        raise ValueError(f"{run.model.preset} samples with {', '.join(family.samplers)}, not {sampler!r}")
    result = {"model_name": name, **plan(run, args.budget, sampler, args.steps or family.default_steps, top=args.top)}
    if args.ckpt:                  # a trained DyDiT: what each sampler realises, beside the λ it was trained for
        if not policies.from_run(run).gated:
            raise ValueError("--ckpt reports a trained DyDiT's realised fraction: give a config with a dydit section")
        dtype = getattr(torch, args.dtype)
        realised = []
        for name_, steps in SAMPLER_PROTOCOLS:
            if name_ not in family.samplers:
                continue
            sampled = dataclasses.replace(run, sample=dataclasses.replace(run.sample, sampler=name_, steps=steps))
            cost = dydit_flops(sampled, name, ckpt=args.ckpt, num_samples=args.num_samples, device=args.device,
                               dtype=dtype)
            realised.append({"sampler": name_, "steps": steps, "flops_fraction": cost["flops_ratio"],
                             "gmacs_per_sample": cost["gmacs_per_sample"]})
        result["trained"] = {"target": policy_fields(run)["dydit_target"], "checkpoint": args.ckpt,
                             "realised": realised}
    return result


def teacache_plan(path: str, budget: float) -> dict:
    """The TeaCache threshold that meets `budget` on the runs a `flexgen calibrate` file recorded."""
    from flexgen.policies.cache.calibrate import threshold_for_budget
    from flexgen.policies.cache.provenance import read_calibration

    calibration = read_calibration(path, "teacache")
    if "recorded" not in calibration:
        raise ValueError(f"{path}: no recorded runs in it (written by flexgen calibrate before it kept them): "
                         "run flexgen calibrate again")
    result = threshold_for_budget(calibration, budget)
    fitted = calibration["fitted_on"]
    use = None if result["threshold"] is None else (f"cache.method=teacache cache.threshold={result['threshold']} "
                                                     f"cache.calibration={path}")
    return {"calibration": path, "fitted_on": {k: fitted.get(k) for k in ("config", "policy", "sampler", "steps",
                                                                           "cfg_scale")},
            "dense_gmacs_per_sample": calibration["dense_gmacs_per_sample"],
            "uncached_gmacs_per_sample": calibration["uncached_gmacs_per_sample"], "teacache": result, "use": use}


def print_plan(result: dict) -> None:
    if "teacache" in result:
        r, f = result["teacache"], result["fitted_on"]
        print(f"TeaCache on {f['policy']} ({f['config']}, {f['sampler']}-{f['steps']}, CFG {f['cfg_scale']:g}), "
              f"recorded in {result['calibration']}: budget {r['budget']:.3f} of dense "
              f"({result['dense_gmacs_per_sample']:.3f} GMACs per sample; uncached "
              f"{result['uncached_gmacs_per_sample']:.3f})")
        if r["threshold"] is None:
            print(f"  no threshold meets it: the steps TeaCache must compute (the first, the last, and any where the "
                  f"FlexDiT grid or DyDiT width pattern changes) cost {r['fraction_of_dense']:.3f} of dense")
        else:
            print(f"  threshold {r['threshold']}: {r['steps_computed']:.1f} of {f['steps']} steps computed, "
                  f"{r['gmacs_per_sample']:.3f} GMACs per sample ({r['fraction_of_dense']:.3f} of dense), estimated "
                  f"on the recorded runs (flexgen sample measures it)")
            print(f"  use: {result['use']}")
        return
    fit = (f"{result['schedules_within_budget']} of {result['schedules_considered']} FlexDiT schedules fit"
           if result["schedules_considered"] else f"no FlexDiT layout preset has its {result['num_blocks']} blocks "
           "(set density.layout to a role string, e.g. density.layout=PGSRT)")
    print(f"{result['model_name']}: budget {result['budget']:.3f} of dense MACs per sample under {result['sampler']}-"
          f"{result['steps']} (dense {result['gmacs_per_sample_dense']:.2f} G per sample); {fit}")
    if result["flexdit"]:
        print("  layout            grids     reading  pool  tokens kept  MACs / dense  GMACs / sample")
    for r in result["flexdit"]:
        pool = r["pool_frames"] or "-"
        print(f"  {r['layout']:<17} {r['grid_min']:>2}->{r['grid_max']:<2}     {r['reading']:<7}  {pool!s:<4}  "
              f"{r['tokens_kept']:11.3f}  {r['flops_fraction']:12.3f}  {r['gmacs_per_sample']:14.2f}")
    if "trained" in result:
        t = result["trained"]
        print(f"  trained DyDiT (λ = {t['target']:g}, {t['checkpoint']}): realised " + ", ".join(
            f"{r['sampler']}-{r['steps']} {r['flops_fraction']:.3f}" for r in t["realised"]))
    for key, name in (("dydit", "DyDiT"), ("composed", "FlexDiT ∘ DyDiT on the config's schedule")):
        dy = result.get(key)
        if dy is not None:
            lam = f"λ = {dy['target']:.3f}" if dy["reachable"] else "no λ in (0, 1] reaches it"
            print(f"  {name}: {lam} (blocks {dy['blocks_gmacs']:.2f} G, fixed costs and routers "
                  f"{dy['fixed_gmacs']:.2f} G per forward)")
    if result.get("dydit") is not None:
        print("  what a sampler realises depends on how the trained routers spread λ over t: measure it with "
              "flexgen bench flops --ckpt")
