"""The timing loop: dense vs a dynamic model (FlexDiT, DyDiT or both), measured in one process on the same inputs.

Dense and dynamic passes alternate inside every repeat (so drifting clocks and other load hit both alike), each
number is a median over repeats, and the dynamic model is timed at every key of its plan (a grid of its schedule,
or a DyDiT timestep) and averaged with the keys' shares of timesteps, which is what a sampler spending equal time
per timestep sees. Targets are ratios (dynamic / dense) printed beside the MAC ratio; nothing here is asserted in
tests.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

import torch

from flexgen.attention import backend_counts, reset_backend_counts
from flexgen.bench.memory import PeakMemory
from flexgen.bench.models import BenchSetup, DynamicPlan
from flexgen.diffusion import any_scheduler, classifier_free_guidance, linear_betas


@contextlib.contextmanager
def no_denormals():
    """Flush denormal floats to zero while timing (PyTorch's default is not to). Random weights can drive a
    sampling run into denormals, which the CPU handles 10-100x slower: a 50-step run of the demo's model with random
    weights took 63 s instead of 2.6 s. Trained weights rarely meet them; flushing changes no result above 1e-38.
    On exit it is off again (torch offers no way to read the setting: a caller that had it on turns it on again)."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """timer(device)(fn): the wall-clock seconds of one call of fn, the device synchronised before and after."""
    def run(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start
    return run


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


def _compiled(model):
    """torch.compile of a model's forward, one graph per input shape or weight-slice pattern (dynamic=False), with
    room for every grid and pattern of a schedule before dynamo gives up recompiling: a DyDiT block breaks the
    graph at its slice lookup, so its pieces compile once per block, grid and batch size (DiT-XL/2 composed: 28 ×
    5 × 2 per code object)."""
    if not getattr(model, "_flexgen_compiled", False):
        allow_recompiles()
        model.forward = torch.compile(model.forward, dynamic=False)
        model._flexgen_compiled = True
    return model


def allow_recompiles(limit: int = 4096) -> None:
    """Room for every grid and weight pattern of a schedule before dynamo gives up recompiling a code object."""
    import torch._dynamo

    config = torch._dynamo.config
    config.cache_size_limit = max(config.cache_size_limit, limit)               # (alias of recompile_limit)
    if hasattr(config, "accumulated_cache_size_limit"):
        config.accumulated_cache_size_limit = max(config.accumulated_cache_size_limit, limit)


def compile_until_stable(every_call: Callable[[], object], rounds: int = 3) -> None:
    """Untimed rounds of every timed call until one builds no graph (the second round may still build some)."""
    for _ in range(rounds):
        built = graphs_compiled()
        every_call()
        if graphs_compiled() == built:
            return


def graphs_compiled() -> int:
    """Graphs torch.compile has built in this process so far (dynamo's counters)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@torch.no_grad()
@no_denormals()
def measure(bench: BenchSetup, plan: DynamicPlan, *, repeats: int = 3, warmup: int = 1,
            cfg_scale: float | None = None, attention: str = "diffusers", compile: bool = False) -> dict:
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
    clock, peak = timer(dev), PeakMemory(dev)

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
        compile_until_stable(every_call, rounds=5)
    # Every key keeps its slices through the interleaved repeats (a sampler walks t in order and copies a trained
    # router's scattered pattern once per change); the memory pass below runs with the sampler's limit again.
    caches = plan.model.policy.slice_caches()
    limits = [cache.max_copies for cache in caches]
    for cache in caches:
        cache.max_copies = max(cache.max_copies, len(plan.keys))
    graphs = graphs_compiled()
    for r in range(warmup + repeats):
        if r == warmup:
            graphs = graphs_compiled()
        for kind, key in order:
            seconds = clock(make(kind, key))
            if r >= warmup:
                times[kind][key].append(seconds)
    calls_per_backend = backend_counts()
    compiled_while_timed = graphs_compiled() - graphs
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
