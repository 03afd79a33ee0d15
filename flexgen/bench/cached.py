"""`flexgen bench latency` of a run with a step cache: whole sampling runs, because a cache saves whole sampler steps
and one forward's time says nothing of it.

Three models share one process and one input batch: the dense model, the run's model without its cache (FlexDiT,
DyDiT or both; none apart when the run has no other policy) and the run's model with it, on the same weights
(`--ckpt`'s, the dense model its block weights, else random). Each repeat draws one whole sampling run of each in
turn (`flexgen.sampling.draw`, the sampler, steps and CFG of the run's `sample:` section unless given), so drifting
clocks hit all alike; the times are medians. The MACs per sample are what ran: the cache's steps that ran the
blocks and the indicator it computes on every step (through the policy's meter, as `flexgen sample` records them);
the counted cost for the models without a measured policy. Denormal floats are flushed while timing
(`measure.no_denormals`). With `--compile`, the same region of every model is compiled: the walk over the blocks
(`net.walk`, and FlexDiT's `net.walk_layout`), so the cache's decision stays outside the traced region.
"""

from __future__ import annotations

import dataclasses
import statistics

import torch

from flexgen import policies
from flexgen.bench.measure import allow_recompiles, compile_until_stable, graphs_compiled, no_denormals, timer
from flexgen.bench.models import bench_setup, dynamic_plan
from flexgen.diffusion import SAMPLERS
from flexgen.policies.cache.config import CacheConfig
from flexgen.policies.cache.provenance import uncached_label
from flexgen.policies.cost import CostMeter
from flexgen.registry import build_denoiser, family_of
from flexgen.sampling.cost import flops_per_sample
from flexgen.sampling.draw import draw, run_options


def uncached(run):
    """The run without its step cache."""
    return dataclasses.replace(run, cache=CacheConfig())


def _models(run, bench, ckpt: str | None, target: float | None) -> dict:
    """{"dense", "uncached", "cached"}: the run's model without and with its cache on the same weights; with a
    checkpoint the dense model takes its block weights too (random weights ran a fifth slower than trained ones
    here, so the dense row would not be comparable); a dense run's uncached model is the dense model itself."""
    base = uncached(run)
    if policies.from_run(base).dense:
        model = bench.dense
        if ckpt:
            model.load_pretrained(ckpt)
    elif ckpt:
        model = build_denoiser(base).to(device=bench.device)
        model.load_pretrained(ckpt, **({"routers_required": True} if model.policy.gated else {}))
        model = model.to(dtype=bench.dtype).eval()
        bench.dense.net.load_state_dict(model.net.state_dict(), strict=False)   # (not its fusions or routers)
    else:
        model = dynamic_plan(bench, base, None, target).model
    cached = build_denoiser(run).to(device=bench.device)
    cached.net.load_state_dict(model.net.state_dict())          # (a step cache adds no weights)
    return {"dense": bench.dense, "uncached": model, "cached": cached.to(dtype=bench.dtype).eval()}


def _compile_walks(model) -> None:
    """torch.compile of the network's walks over its blocks (one graph per shape, grid or width pattern)."""
    allow_recompiles()
    net = model.net
    if getattr(net, "_flexgen_walks_compiled", False):
        return
    for name in ("walk", "walk_layout"):
        if hasattr(net, name):
            setattr(net, name, torch.compile(getattr(net, name), dynamic=False))
    net._flexgen_walks_compiled = True


@torch.no_grad()
@no_denormals()
def cached_report(run, *, device: str = "cpu", dtype: torch.dtype = torch.float32, batch: int = 1,
                  repeats: int = 3, warmup: int = 1, cfg_scale: float | None = None, sampler: str | None = None,
                  steps: int | None = None, seed: int = 0, ckpt: str | None = None, target: float | None = None,
                  compile: bool = False) -> dict:
    """Median seconds of a whole sampling run of `batch` samples: dense, the run's model uncached (when it is not
    the dense model), and cached;
    MACs per sample of each from what ran; speed-ups beside the MAC ratios (module docstring)."""
    family = family_of(run.model.preset)
    if "sample" in family.unused:                   # PixArt-α: flexgen generate's defaults
        from flexgen.t2i.generate import GUIDANCE

        sampler, steps = sampler or family.default_sampler, steps or family.default_steps
        cfg_scale = GUIDANCE if cfg_scale is None else cfg_scale
    else:
        sampler, steps = sampler or run.sample.sampler, steps or run.sample.steps
        cfg_scale = run.sample.cfg_scale if cfg_scale is None else cfg_scale
    sampler = "dpm-solver++" if sampler == "dpm-solver" else sampler      # (PixArt-α's name for it)
    if sampler not in SAMPLERS:
        raise ValueError(f"the cached bench draws with flexgen's samplers ({', '.join(SAMPLERS)}), not {sampler!r}")
    if run.cache.method == "fastercache":
        raise ValueError("cache.method=fastercache assumes diffusers' pipeline batch order [uncond, cond], which "
                         "the bench's sampler does not use: time it in flexgen generate")
    bench = bench_setup(uncached(run), device=device, dtype=dtype, batch=batch, seed=seed, sampler=sampler,
                        steps=steps)
    models = _models(run, bench, ckpt, target)
    names = [k for k in models if not (k == "uncached" and models[k] is models["dense"])]
    cond = bench.cond if bench.dense.conditional else {}
    meters = {k: CostMeter(m) for k, m in models.items() if m.policy.measured}
    cache = next(p for p in models["cached"].policy.parts if not p.per_forward)     # the step cache
    seeds, options = list(range(seed, seed + batch)), run_options(run)

    def run_of(name):
        def sample():
            if name == "cached":
                cache.steps_computed = cache.steps_skipped = 0
            draw(models[name], seeds, cond, sampler=sampler, steps=steps, cfg_scale=cfg_scale, device=bench.device,
                 dtype=dtype, meter=meters.get(name), **options)
        return sample

    if compile:
        for name in names:
            _compile_walks(models[name])
        compile_until_stable(lambda: [run_of(name)() for name in names])
    clock, times = timer(bench.device), {name: [] for name in names}
    graphs = graphs_compiled()
    for r in range(warmup + repeats):
        if r == warmup:
            graphs = graphs_compiled()
            for meter in meters.values():           # MACs of the timed runs only
                meter.macs_at, meter.forwards = {}, 0
        for name in names:
            seconds = clock(run_of(name))
            if r >= warmup:
                times[name].append(seconds)
    computed = cache.steps_computed                  # of the last run
    gmacs = {}
    for name in names:
        if name in meters:
            dense_forward = models[name].cost().forward_macs(None).gmacs
            gmacs[name] = meters[name].report(batch * repeats, dense_forward)["gmacs_per_sample_measured"]
        else:
            gmacs[name] = flops_per_sample(models[name], sampler, steps, cfg_scale)["gmacs_per_sample"]
    seconds = {name: statistics.median(times[name]) for name in names}
    result = {"device": str(bench.device), "dtype": str(dtype).removeprefix("torch."), "batch": batch,
              "repeats": repeats, "compiled": compile, "graphs_compiled_while_timed": graphs_compiled() - graphs,
              "policy": models["cached"].policy.label(), "uncached_policy": uncached_label(models["uncached"].policy),
              "sampler": sampler, "steps": steps, "cfg_scale": cfg_scale, "weights": ckpt or "random",
              "steps_computed": computed, "seconds_per_run": seconds, "gmacs_per_sample": gmacs}
    for name in names[1:]:
        result[f"{name}_vs_dense"] = _ratios(seconds, gmacs, name, "dense")
    if "uncached" in names:
        result["cached_vs_uncached"] = _ratios(seconds, gmacs, "cached", "uncached")
    return result


def _ratios(seconds: dict, gmacs: dict, a: str, b: str) -> dict:
    latency, macs = seconds[a] / seconds[b], gmacs[a] / gmacs[b]
    return {"latency_ratio": latency, "speedup": 1 / latency, "mac_ratio": macs, "latency_over_macs": latency / macs}


def print_cached(result: dict) -> None:
    s, g = result["seconds_per_run"], result["gmacs_per_sample"]
    uncached = f" vs uncached ({result['uncached_policy']})" if "uncached" in s else ""
    print(f"{result['model']}: cached ({result['policy']}){uncached} vs dense, whole sampling runs "
          f"({result['sampler']}, {result['steps']} steps, CFG {result['cfg_scale']:g}, batch {result['batch']}, "
          f"{result['weights']} weights), {result['device']} {result['dtype']}"
          f"{', compiled walks' if result['compiled'] else ''}, median of {result['repeats']}")
    print(f"  the cache ran the blocks at {result['steps_computed']} of {result['steps']} steps")
    for name in s:
        print(f"  {name:9s} {s[name]:8.3f} s per run, {g[name]:10.4f} GMACs per sample")
    for key in ("cached_vs_uncached", "cached_vs_dense", "uncached_vs_dense"):
        if key in result:
            r = result[key]
            print(f"  {key.replace('_', ' ')}: speed-up {r['speedup']:.2f}×, MAC ratio {r['mac_ratio']:.3f} "
                  f"(latency ratio {r['latency_ratio']:.3f} = {r['latency_over_macs']:.2f} × the MAC ratio)")
    if result.get("graphs_compiled_while_timed"):
        print(f"  warning: torch.compile built {result['graphs_compiled_while_timed']} graphs during the timed runs")
