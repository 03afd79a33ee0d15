"""`flexgen bench latency`: dense vs FlexDiT or DyDiT latency in one process (`flexgen.bench.measure`), beside the
MAC ratio, per forward, per CFG sampling step and over a whole sampling run."""

from __future__ import annotations

import torch

from flexgen import policies
from flexgen.bench.measure import measure
from flexgen.bench.models import bench_setup, dynamic_plan, policy_fields
from flexgen.bench.options import bench_run


def latency_report(run, *, device: str = "cpu", dtype: torch.dtype = torch.float32, batch: int = 1,
                   repeats: int = 3, warmup: int = 1, cfg_scale: float | None = None, sampler: str | None = None,
                   steps: int | None = None, seed: int = 0, attention: str = "diffusers", ckpt: str | None = None,
                   target: float | None = None, compile: bool = False, scattered: bool = False) -> dict:
    """Median seconds per forward (and per sampling step with CFG, with `cfg_scale`) of the dense model and of its
    dynamic version, their time averages over t, and the ratios beside MAC ratios. `run` is a run configuration
    (`flexgen.config.Config`) with a density section (FlexDiT: timed at each grid of its schedule) or a dydit one
    (DyDiT: the trained routers of `ckpt`, or the synthetic setting for λ = `target`, on the same weights; its MAC
    ratio comes from the kept counts of the timed forwards). With `cfg_scale`, the whole sampling run of `sampler`
    (default: the family's, DDPM 250 steps for Latte / DiT, DPM-Solver++ 20 steps for PixArt-α) is also timed, as
    the sum of its steps, each at its timestep's key."""
    bench = bench_setup(run, device=device, dtype=dtype, batch=batch, seed=seed, sampler=sampler, steps=steps)
    plan = dynamic_plan(bench, run, ckpt, target, scattered=scattered)
    result = measure(bench, plan, repeats=repeats, warmup=warmup, cfg_scale=cfg_scale, attention=attention,
                     compile=compile)
    if plan.model.policy.gated:
        target = target or policy_fields(run)["dydit_target"]
        result["router_setting"] = (f"trained ({ckpt})" if ckpt else
                                    f"synthetic λ={target:g}" + (" scattered" if scattered else ""))
    return result


def bench_latency(args) -> dict:
    run, name = bench_run(args, whole_runs=True)
    policy = policies.from_run(run)
    dtype = getattr(torch, args.dtype)
    if not policy.per_forward:                          # a step cache: whole sampling runs
        from flexgen.bench.cached import cached_report
        return {"model": name, **policy_fields(run),
                **cached_report(run, device=args.device, dtype=dtype, batch=args.batch, repeats=args.repeats,
                                warmup=args.warmup, cfg_scale=args.cfg_scale, sampler=args.sampler, steps=args.steps,
                                ckpt=args.ckpt, target=args.target, compile=args.compile)}
    if policy.dense:
        raise ValueError("bench latency compares dense with FlexDiT or DyDiT: give --layout (and a schedule) or "
                         "--target, or a --config with a density or dydit section")
    if args.ckpt and not policy.gated:
        raise ValueError("--ckpt times a DyDiT checkpoint's routers: give a config with a dydit section (or a "
                         "step cache: then any checkpoint of the run)")
    return {"model": name, **policy_fields(run),
            **latency_report(run, device=args.device, dtype=dtype, batch=args.batch, repeats=args.repeats,
                             warmup=args.warmup, cfg_scale=args.cfg_scale, sampler=args.sampler, steps=args.steps,
                             attention=args.attention, ckpt=args.ckpt, target=args.target, compile=args.compile,
                             scattered=args.scattered)}


def print_latency(result: dict) -> None:
    if "seconds_per_run" in result:                     # a step cache's whole runs
        from flexgen.bench.cached import print_cached
        return print_cached(result)
    parts = [f"layout {result['layout']}"] if "layout" in result else []
    if "dydit_target" in result:
        parts.append(f"DyDiT λ = {result['dydit_target']:g}, routers {result['router_setting']}")
    policy = ", ".join(parts)
    name, key = result["policy"], "timestep" if "dydit_target" in result else "grid"
    print(f"{result['model']}, {policy}, {result['device']} {result['dtype']}, batch {result['batch']}, median of "
          f"{result['repeats']}")
    print(f"  MACs: dense {result['gmacs_dense']:.2f} G, {name} {result['gmacs']:.2f} G "
          f"(ratio {result['flops_ratio']:.3f}); attention backend calls: {result['attention_calls']}")
    if "sliced_weight_patterns" in result:
        print(f"  sliced-weight patterns per block: {result['sliced_weight_patterns']}")
    if result.get("graphs_compiled_while_timed"):
        print(f"  warning: torch.compile built {result['graphs_compiled_while_timed']} graphs during the timed "
              f"repeats, so these times include compilation (raise --warmup)")
    for kind in ("forward", "cfg_step"):
        if kind in result:
            r = result[kind]
            keys = ", ".join(f"{g}: {s * 1e3:.0f} ms" for g, s in r[f"per_{key}_s"].items())
            print(f"  {kind}: dense {r['dense_s'] * 1e3:.0f} ms, {name} {r['dynamic_s'] * 1e3:.0f} ms "
                  f"(per {key} {keys}); latency ratio {r['latency_ratio']:.3f} = {r['latency_over_flops']:.2f} × "
                  f"the MAC ratio; speed-up {r['speedup']:.2f}×")
    if "peak_memory" in result:
        m = result["peak_memory"]
        print(f"  peak memory ({m['measured']} + resident weights): dense {m['dense_bytes'] / 2**20:.0f} MiB, {name} "
              f"{m['dynamic_bytes'] / 2**20:.0f} MiB (ratio {m['ratio']:.3f}); achieved TFLOP/s per forward: dense "
              f"{result['forward']['tflops_dense']:.2f}, {name} {result['forward']['tflops_dynamic']:.2f}")
    if "sampling" in result:
        r = result["sampling"]
        print(f"  sampling ({r['sampler']}, {r['steps']} steps with CFG, each at its timestep's {key} {r[key + 's']}): "
              f"dense {r['dense_s']:.2f} s, {name} {r['dynamic_s']:.2f} s; speed-up {r['speedup']:.2f}×")
