"""Cost and latency of dense vs FlexDiT and DyDiT models, measured in one process on the same inputs.

Dense and dynamic passes alternate inside every repeat (so drifting clocks and other load hit both alike), each
number is a median over repeats, and the dynamic model is timed at every grid of its schedule and averaged with
the stages' shares of timesteps, which is what a sampler spending equal time per timestep sees. Targets are
ratios (dynamic / dense) printed beside the MAC ratio; nothing here is asserted in tests.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from flexgen import policies
from flexgen.attention import backend_counts, reset_backend_counts
from flexgen.diffusion import any_scheduler, classifier_free_guidance, linear_betas
from flexgen.policies.cost import density_report, grid_at_timestep
from flexgen.policies.dydit.config import DyDiTConfig
from flexgen.policies.flexdit import DensityConfig
from flexgen.policies.flexdit.schedules import mean_over_stages
from flexgen.registry import build_denoiser, family_of


def _fields(run) -> dict:
    """What a report says of the run's policy: its FlexDiT `layout` and DyDiT `dydit_target` where it has them."""
    sections = policies.from_run(run).sections()
    fields = {"layout": sections["density"]["layout"]} if "density" in sections else {}
    return {**fields, **({"dydit_target": sections["dydit"]["target"]} if "dydit" in sections else {})}


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


def _call(model, cond, cfg_scale, cfg_channels=None):
    """call(x, t, extra, cfg): one forward of `model` on condition `cond` (extra: e.g. a FlexDiT grid), or with
    `cfg` the doubled classifier-free-guidance batch and the guided ε."""
    def call(x, t, extra, cfg):
        net = model if not extra else (lambda *a, **k: model(*a, **k, **extra))
        if cfg and model.conditional:
            net = classifier_free_guidance(net, cfg_scale, cond, model.null_condition(cond), cfg_channels)
            return net(x, t)
        return net(x, t, **cond)
    return call


@dataclasses.dataclass
class _Dynamic:
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


def _flexdit_plan(run, dense) -> _Dynamic:
    flex = dense.converted(run.density).eval()
    stages = flex.cost().stages
    grids = sorted({s.grid for s in stages})
    flops = density_report(flex.cost())
    return _Dynamic(flex, grids, {s.grid: (s.t_start + s.t_end) // 2 for s in stages},   # a t inside each stage
                    lambda g: {"grid": g}, lambda t: grid_at_timestep(flex.cost(), t),
                    lambda median: mean_over_stages(stages, median.__getitem__), flops["gmacs"], flops["gmacs_dense"],
                    "FlexDiT", "grid")


def _dydit_plan(run, dense, dev, dtype, x, cond, ckpt, target, sampler, steps, points: int = 5) -> _Dynamic:
    """DyDiT: the model with trained routers (`ckpt`) or the synthetic setting for λ = `target` on the dense model's
    weights, timed at `points` timesteps spread over the sampler's (synthetic routers are the same at every t, so one
    suffices). Composed with FlexDiT: as many in every stage of its schedule the sampler visits, and a sampler step
    is timed at the nearest timed timestep of its own stage (so at its own grid)."""
    dy = build_denoiser(run).to(device=dev)
    if ckpt:
        dy.load_pretrained(ckpt, routers_required=True)
        if not dy.cost().stages:                       # (the dense model's time does not depend on its weights)
            dense.net.load_state_dict(dy.net.state_dict(), strict=False)      # (the routers are not its)
    else:                                              # the dense weights (FlexDiT-converted when composed)
        source = dense.converted(run.density) if dy.cost().stages else dense
        sd, _ = dy.policy.load_state_dict(source.net.state_dict(), "the dense weights")   # + fresh routers
        dy.net.load_state_dict(sd)
        dy.policy.set_synthetic(target)
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
    return _Dynamic(dy, picked, {p: p for p in picked}, lambda _: {}, nearest,
                    lambda median: sum(weights[p] * median[p] for p in picked),
                    sum(weights[p] * macs[p] for p in picked), dense_gmacs,
                    "FlexDiT ∘ DyDiT" if dy.cost().stages else "DyDiT", "timestep")


@dataclasses.dataclass
class _Bench:
    """The dense model and the inputs every timed model of one configuration shares."""
    run: Any
    dense: Any
    x: torch.Tensor
    cond: dict
    device: torch.device
    dtype: torch.dtype
    sampler: str
    steps: int


def _bench_setup(run, *, device: str, dtype: torch.dtype, batch: int, seed: int, sampler: str | None,
                 steps: int | None) -> _Bench:
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
    return _Bench(run, dense, x, dense.example_condition(batch, dev, dtype), dev, dtype, sampler,
                  steps or family.default_steps)


def _dynamic_plan(bench: _Bench, run, ckpt: str | None = None, target: float | None = None) -> _Dynamic:
    """The dynamic model of `run` (a variant of the bench's: FlexDiT with a density section, DyDiT or composed
    with a dydit one) on the bench's dense weights."""
    policy = policies.from_run(run)
    if policy.measured:
        return _dydit_plan(run, bench.dense, bench.device, bench.dtype, bench.x, bench.cond, ckpt,
                           target or _fields(run)["dydit_target"], bench.sampler, bench.steps)
    if policy.name == "dense":
        raise ValueError("a dynamic model needs a density layout or a dydit section")
    return _flexdit_plan(run, bench.dense)


class _MallocInfo(ctypes.Structure):
    """glibc's `struct mallinfo2` (glibc ≥ 2.33, malloc.h)."""
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _heap_in_use() -> Callable[[], int] | None:
    """Bytes malloc has handed out and not taken back (glibc's mallinfo2: arena chunks in use + mmapped chunks),
    where torch's CPU tensors live; None where the C library has no mallinfo2."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallocInfo

    def in_use() -> int:
        info = mallinfo2()
        return info.uordblks + info.hblkhd
    return in_use


class _PeakMemory:
    """Peak memory of one call above what was allocated before it: CUDA's max_memory_allocated, or on the CPU the
    peak of malloc's bytes in use (mallinfo2; where it is missing, the resident set), sampled every 0.2 ms by a
    thread while the call runs. Freed memory the allocator keeps for reuse counts in the resident set but not in
    malloc's bytes in use, so on the CPU only the latter sees a warmed-up call's temporaries."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._heap = _heap_in_use() if device.type != "cuda" else None
        self.measured = ("max_memory_allocated" if device.type == "cuda" else
                         "malloc bytes in use" if self._heap is not None else "resident-set growth")

    def __call__(self, fn) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            fn()
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - before
        if self._heap is not None:
            return self._sampled_growth(fn, self._heap)
        if os.path.exists("/proc/self/statm"):
            return self._sampled_growth(fn, self._rss)
        fn()                                                 # (neither: unmeasured)
        return 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @staticmethod
    def _sampled_growth(fn, read: Callable[[], int]) -> int:
        before, peak, done = read(), [0], threading.Event()

        def watch():
            while not done.is_set():
                peak[0] = max(peak[0], read())
                done.wait(0.0002)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            fn()
        finally:
            done.set()
            watcher.join()
        return max(0, max(peak[0], read()) - before)


def _compiled(model):
    """torch.compile of a model's forward, one graph per input shape or weight-slice pattern (dynamic=False), with
    room for every grid and pattern of a schedule before dynamo gives up recompiling: a DyDiT block breaks the
    graph at its slice lookup, so its pieces compile once per block, grid and batch size (DiT-XL/2 composed: 28 ×
    5 × 2 per code object)."""
    import torch._dynamo

    if not getattr(model, "_flexgen_compiled", False):
        config = torch._dynamo.config
        config.cache_size_limit = max(config.cache_size_limit, 4096)             # (alias of recompile_limit)
        if hasattr(config, "accumulated_cache_size_limit"):
            config.accumulated_cache_size_limit = max(config.accumulated_cache_size_limit, 4096)
        model.forward = torch.compile(model.forward, dynamic=False)
        model._flexgen_compiled = True
    return model


def _graphs_compiled() -> int:
    """Graphs torch.compile has built in this process so far (dynamo's counters)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@torch.no_grad()
def measure(bench: _Bench, plan: _Dynamic, *, repeats: int = 3, warmup: int = 1, cfg_scale: float | None = None,
            attention: str = "diffusers", compile: bool = False) -> dict:
    """Dense vs `plan`'s dynamic model, alternating inside every repeat: median seconds per forward (and per CFG
    sampling step with `cfg_scale`) at each key, their time averages over t, ratios beside the MAC ratio, the peak
    memory of each (resident weights + the largest call's growth, measured after the timed repeats), and the
    achieved TFLOP/s (2 FLOPs per MAC)."""
    dense, x, cond, dev, batch = bench.dense, bench.x, bench.cond, bench.device, bench.x.shape[0]
    sampler, steps, num_timesteps = bench.sampler, bench.steps, bench.run.diffusion.num_timesteps
    dense.set_attention(attention)
    plan.model.set_attention(attention)
    channels = bench.run.sample.cfg_channels
    models = {"dense": dense, "dynamic": plan.model}
    calls = {k: _call(m, cond, cfg_scale, channels) for k, m in models.items()}
    timer, peak = _timer(dev), _PeakMemory(dev)

    def forward(which, key=None):
        t = torch.full((batch,), plan.t_of[key] if key is not None else 500, device=dev, dtype=torch.long)
        return lambda: calls[which](x, t, plan.extra(key) if key is not None else {}, False)

    def cfg_step(which, key=None):
        # One sampling step: the doubled CFG batch through the model, guidance, then the scheduler's update
        # (a fresh scheduler each time, made outside the timed call: multistep solvers keep state).
        scheduler = any_scheduler(sampler, linear_betas(num_timesteps), steps)
        t_value = plan.t_of[key] if key is not None else 500
        t_step = scheduler.timesteps[(scheduler.timesteps - t_value).abs().argmin()]
        t = torch.full((batch,), int(t_step), device=dev, dtype=torch.long)
        latents = x.movedim(-3, 1).float()              # (B, C, F, H, W) for video; images unchanged

        def run():
            eps = calls[which](x, t, plan.extra(key) if key is not None else {}, True).movedim(-3, 1)
            channels = latents.shape[1]
            model_output = eps.float() if sampler == "ddpm" and eps.shape[1] == 2 * channels else eps[:, :channels]
            scheduler.step(model_output.float(), t_step, latents)
        return run

    kinds = {"forward": forward}
    if cfg_scale is not None:
        kinds["cfg_step"] = cfg_step

    def make(kind, key):
        return kinds[kind]("dense") if key == "dense" else kinds[kind]("dynamic", key)

    times: dict[str, dict] = {k: {"dense": [], **{key: [] for key in plan.keys}} for k in kinds}
    reset_backend_counts()
    order = [(kind, key) for kind in kinds for key in ["dense", *plan.keys]]     # one round of every call

    def every_call():
        for kind, key in order:
            make(kind, key)()

    if compile:
        with torch.compiler.set_stance("force_eager"):   # (a model compiled for an earlier row runs eagerly too)
            every_call()   # compiled calls count no attention backend (flexgen.attention): this eager pass does
        for model in models.values():
            _compiled(model)
        for _ in range(5):      # untimed rounds until one builds no graph (the second round may still build some)
            built = _graphs_compiled()
            every_call()
            if _graphs_compiled() == built:
                break
    # Every key keeps its slices through the interleaved repeats (a sampler walks t in order and copies a trained
    # router's scattered pattern once per change); the memory pass below runs with the sampler's limit again.
    caches = plan.model.policy.slice_caches()
    limits = [cache.max_copies for cache in caches]
    for cache in caches:
        cache.max_copies = max(cache.max_copies, len(plan.keys))
    graphs = _graphs_compiled()
    for r in range(warmup + repeats):
        if r == warmup:
            graphs = _graphs_compiled()
        for kind, key in order:
            seconds = timer(make(kind, key))
            if r >= warmup:
                times[kind][key].append(seconds)
    calls_per_backend = backend_counts()
    compiled_while_timed = _graphs_compiled() - graphs
    for cache, limit in zip(caches, limits, strict=True):
        cache.max_copies = limit
    growth = {key: max(peak(make(kind, key)) for kind in kinds) for key in ["dense", *plan.keys]}

    flops_ratio = plan.gmacs / plan.gmacs_dense
    peak_dense = dense.resident_bytes() + growth["dense"]
    peak_dynamic = plan.model.resident_bytes() + max(growth[key] for key in plan.keys)
    result = {"device": str(dev), "dtype": str(bench.dtype).removeprefix("torch."), "batch": batch,
              "repeats": repeats, "compiled": compile, "graphs_compiled_while_timed": compiled_while_timed,
              "policy": plan.name, "gmacs_dense": plan.gmacs_dense,
              "gmacs": plan.gmacs, "flops_ratio": flops_ratio, "attention_calls": calls_per_backend,
              "peak_memory": {"dense_bytes": peak_dense, "dynamic_bytes": peak_dynamic,
                              "ratio": peak_dynamic / peak_dense,
                              "measured": peak.measured}}
    if caches:
        result["sliced_weight_patterns"] = plan.model.policy.patterns()
        result["sliced_weight_bytes"] = plan.model.policy.held_bytes()      # copies held beside the weights
    processors = dense.attention_processors()    # diffusers' own processors (SDPA) where flexgen.attention is not used
    if processors is not None:
        result["attention_calls"] = processors
    for kind in kinds:
        median = {key: statistics.median(v) for key, v in times[kind].items()}
        dynamic = plan.average(median)
        ratio = dynamic / median["dense"]
        passes = 2 if kind == "cfg_step" else 1           # a CFG step runs the model on the doubled batch
        result[kind] = {"dense_s": median["dense"], "dynamic_s": dynamic,
                        f"per_{plan.key_name}_s": {key: median[key] for key in plan.keys},
                        "latency_ratio": ratio, "speedup": 1 / ratio, "latency_over_flops": ratio / flops_ratio,
                        "tflops_dense": 2 * passes * batch * plan.gmacs_dense / median["dense"] / 1e3,
                        "tflops_dynamic": 2 * passes * batch * plan.gmacs / dynamic / 1e3}
    if cfg_scale is not None:          # a whole sampling run: each step at its timestep's key
        timesteps = any_scheduler(sampler, linear_betas(num_timesteps), steps).timesteps
        step_keys = [plan.key_of_t(int(t)) for t in timesteps]
        median = result["cfg_step"]
        dense_s = median["dense_s"] * len(step_keys)
        dynamic_s = sum(median[f"per_{plan.key_name}_s"][key] for key in step_keys)
        result["sampling"] = {"sampler": sampler, "steps": len(step_keys), "dense_s": dense_s,
                              "dynamic_s": dynamic_s, "speedup": dense_s / dynamic_s,
                              f"{plan.key_name}s": {key: step_keys.count(key) for key in plan.keys if key in step_keys}}
    return result


def latency_report(run, *, device: str = "cpu", dtype: torch.dtype = torch.float32, batch: int = 1,
                   repeats: int = 3, warmup: int = 1, cfg_scale: float | None = None, sampler: str | None = None,
                   steps: int | None = None, seed: int = 0, attention: str = "diffusers", ckpt: str | None = None,
                   target: float | None = None, compile: bool = False) -> dict:
    """Median seconds per forward (and per sampling step with CFG, with `cfg_scale`) of the dense model and of its
    dynamic version, their time averages over t, and the ratios beside MAC ratios. `run` is a run configuration
    (`flexgen.config.Config`) with a density section (FlexDiT: timed at each grid of its schedule) or a dydit one
    (DyDiT: the trained routers of `ckpt`, or the synthetic setting for λ = `target`, on the same weights; its MAC
    ratio comes from the kept counts of the timed forwards). With `cfg_scale`, the whole sampling run of `sampler`
    (default: the family's, DDPM 250 steps for Latte / DiT, DPM-Solver++ 20 steps for PixArt-α) is also timed, as
    the sum of its steps, each at its timestep's key."""
    bench = _bench_setup(run, device=device, dtype=dtype, batch=batch, seed=seed, sampler=sampler, steps=steps)
    plan = _dynamic_plan(bench, run, ckpt, target)
    result = measure(bench, plan, repeats=repeats, warmup=warmup, cfg_scale=cfg_scale, attention=attention,
                     compile=compile)
    if plan.model.policy.measured:
        target = target or _fields(run)["dydit_target"]
        result["router_setting"] = f"trained ({ckpt})" if ckpt else f"synthetic λ={target:g}"
    return result


# ----------------------------------------------------------------------------------------------------------
# `flexgen bench flops | latency`: the model of --config, or of a preset and flags.


def bench_run(args) -> tuple[Any, str]:
    """(run configuration, name) from --config [KEY=VALUE ...] or from --model and the size / density flags."""
    from flexgen.config import load_config
    from flexgen.policies.flexdit import ScheduleConfig
    from flexgen.registry import denoiser_class

    if args.config:
        run = load_config(args.config, args.overrides)
        if getattr(args, "target", None) is not None and not policies.from_run(run).measured:
            raise ValueError(f"--target is DyDiT's λ, but {args.config} has no dydit section (dydit.target)")
        return run, args.config
    if args.overrides:
        raise ValueError("KEY=VALUE overrides apply to --config only")
    family = denoiser_class(args.model)                  # an unknown preset: an error listing them
    overrides = family.preset_overrides(args.model, image_size=args.image_size, frames=args.frames,
                                        num_classes=args.num_classes, in_channels=args.in_channels,
                                        vae_factor=args.vae_factor)
    run = load_config(None, overrides)
    if getattr(args, "target", None) is not None:                # DyDiT at λ = --target (synthetic routers)
        run = policies.with_target(run, args.target)
    if args.layout:
        schedule = ScheduleConfig(kind="constant", grid=args.grid) if args.grid else ScheduleConfig(
            kind="eq5", grid_min=args.grid_min, grid_max=args.grid_max, reading=args.reading)
        run = dataclasses.replace(run, density=DensityConfig(layout=args.layout, schedule=schedule,
                                                             pool_frames=args.pool_frames))
    return run, f"{args.model} {run.data.image_size}px"


def _meta_denoiser(run):
    with torch.device("meta"):
        return build_denoiser(run)


def dydit_flops(run, name: str, *, ckpt: str | None = None, target: float | None = None, num_samples: int = 8,
                device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    """A DyDiT model's cost: parameters and router overhead beside the dense model, and MACs per forward from kept
    counts: of the synthetic router setting for λ = `target` (no weights, counted on the meta device), or of a
    trained checkpoint's sampling run (`run.sample`'s sampler, steps, CFG and guidance channels) on `num_samples`
    fixed seeds and labels (sample i: seed sample.seed + i, its label from that seed, as `flexgen sample`), each
    sampler step's MACs per sample and the total."""
    dense_run = dataclasses.replace(run, dydit=DyDiTConfig(), density=DensityConfig())
    dense, dy = _meta_denoiser(dense_run), _meta_denoiser(run)
    dense_gmacs = dense.cost().forward_macs(None).gmacs
    stages = dy.cost().stages                          # FlexDiT ∘ DyDiT: its schedule's grids
    grid0 = stages[0].grid if stages else None
    shapes = dy.policy.block_shapes(grid0)
    params_dense, params = (sum(p.numel() for p in m.parameters()) for m in (dense, dy))
    result = {"model": name, "policy": "FlexDiT ∘ DyDiT" if stages else "DyDiT", **_fields(run),
              "params_dense": params_dense, "params": params, "router_params": params - params_dense,
              "gmacs_dense": dense_gmacs, "router_gmacs": dy.policy.router_macs(grid0) / 1e9,
              "block_gmacs": [[b.cost.attention / 1e9, b.cost.mlp / 1e9] for b in shapes]}
    if stages:
        flex = density_report(dy.cost())
        result.update(gmacs_flexdit=flex["gmacs"], flexdit_ratio=1 - flex["reduction"])
    if ckpt is None:
        target = target if target is not None else result["dydit_target"]

        def synthetic(grid):                           # GMACs of one forward at `grid` with the λ setting
            return dy.policy.synthetic_macs(dy.cost(), grid, target) / 1e9

        if stages:
            per_grid = {s.grid: synthetic(s.grid) for s in stages}
            gmacs = mean_over_stages(stages, per_grid.__getitem__)
            result["stages"] = [[s.t_start, s.t_end, s.grid, flex["stages"][i][3], per_grid[s.grid]]
                                for i, s in enumerate(stages)]
        else:
            gmacs = synthetic(None)
        result.update(router_setting=f"synthetic λ={target:g}", gmacs=gmacs, flops_ratio=gmacs / dense_gmacs)
        return result
    from flexgen.diffusion import sample

    s, dev = run.sample, torch.device(device)
    model = build_denoiser(run)
    model.load_pretrained(ckpt, routers_required=True)
    model = model.eval().to(device=dev, dtype=dtype)
    meter = net = model.policy.meter(model)
    cond = model.sampling_condition(num_samples, s.seed, dev, dtype)   # sample i's label from its seed, or text
    if cond:
        net = classifier_free_guidance(meter, s.cfg_scale, cond, model.null_condition(cond), s.cfg_channels)
    d = run.diffusion
    sample(net, model.latent_shape(), [s.seed + i for i in range(num_samples)], sampler=s.sampler, steps=s.steps,
           betas=linear_betas(d.num_timesteps, d.beta_start, d.beta_end), learned_sigma=model.learned_sigma,
           clip_denoised=s.clip_denoised, prediction=d.prediction, device=dev, dtype=dtype)
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
    if policies.from_run(run).measured:
        dtype = getattr(torch, args.dtype)
        return dydit_flops(run, name, ckpt=args.ckpt, target=args.target, num_samples=args.num_samples,
                           device=args.device, dtype=dtype)
    if args.ckpt:
        raise ValueError("--ckpt measures a DyDiT checkpoint's routers: give a config with a dydit section")
    model = _meta_denoiser(run)
    cost, shape = model.cost(), model.latent_shape()       # forward_macs(None): the dense network, counted once
    result = {"model": name, "latent": list(shape if len(shape) == 4 else (1, *shape)), **model.condition_summary()}
    result.update(cost.forward_macs(None).to_dict())
    if cost.layout:
        flex = density_report(cost)
        result.update(layout=cost.layout, params=flex["params"], params_dense=flex["params_dense"],
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


def bench_latency(args) -> dict:
    run, name = bench_run(args)
    policy = policies.from_run(run)
    if policy.name == "dense":
        raise ValueError("bench latency compares dense with FlexDiT or DyDiT: give --layout (and a schedule) or "
                         "--target, or a --config with a density or dydit section")
    if args.ckpt and not policy.measured:
        raise ValueError("--ckpt times a DyDiT checkpoint's routers: give a config with a dydit section")
    dtype = getattr(torch, args.dtype)
    return {"model": name, **_fields(run),
            **latency_report(run, device=args.device, dtype=dtype, batch=args.batch, repeats=args.repeats,
                             warmup=args.warmup, cfg_scale=args.cfg_scale, sampler=args.sampler, steps=args.steps,
                             attention=args.attention, ckpt=args.ckpt, target=args.target, compile=args.compile)}


def print_latency(result: dict) -> None:
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


# ----------------------------------------------------------------------------------------------------------
# `flexgen bench plan`: schedules that meet a budget (flexgen.policies.plan).


def bench_plan(args) -> dict:
    from flexgen.policies.plan import plan
    from flexgen.registry import family_of

    run, name = bench_run(args)
    family = family_of(run.model.preset)
    sampler = args.sampler or family.default_sampler
    if sampler not in family.samplers:
        raise ValueError(f"{run.model.preset} samples with {', '.join(family.samplers)}, not {sampler!r}")
    result = {"model_name": name, **plan(run, args.budget, sampler, args.steps or family.default_steps, top=args.top)}
    if args.ckpt:                  # a trained DyDiT: what each sampler realises, beside the λ it was trained for
        if not policies.from_run(run).measured:
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
        result["trained"] = {"target": _fields(run)["dydit_target"], "checkpoint": args.ckpt, "realised": realised}
    return result


# The samplers and steps the papers evaluate with: DiT / Latte DDPM-250, DDIM-50, DPM-Solver++-20 (PixArt-α).
SAMPLER_PROTOCOLS = (("ddpm", 250), ("ddim", 50), ("dpm-solver++", 20))


def print_plan(result: dict) -> None:
    print(f"{result['model_name']}: budget {result['budget']:.3f} of dense MACs per sample under {result['sampler']}-"
          f"{result['steps']} (dense {result['gmacs_per_sample_dense']:.2f} G per sample); "
          f"{result['schedules_within_budget']} of {result['schedules_considered']} FlexDiT schedules fit")
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
