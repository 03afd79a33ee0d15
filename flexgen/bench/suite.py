"""`flexgen bench suite`: the standard speed table in one command, on any device.

For each model of a set (the full set: DiT-XL/2 256 and 512, Latte-XL/2 16×256², PixArt-α 256 / 512 / 1024-MS; on
the CPU by default a small set that fits the time budget), dense vs FlexDiT (the paper layout and Eq. 5 schedule)
vs DyDiT (synthetic routers at λ 0.5 and 0.7) vs FlexDiT ∘ DyDiT, each timed against the dense model in one process
by `flexgen.bench.measure` on the same random weights. Per row: MACs per forward, median ms per forward and per CFG
step, the latency ratio beside the MAC ratio, peak memory, attention backend, batch, dtype, achieved TFLOP/s and its
share of the device's peak. Writes suite.json, suite.md and suite.svg (latency ratio vs MAC ratio). Rows whose
estimated time does not fit `time_budget` are skipped and listed (their MACs are still counted); a row is estimated
from its meta-counted MACs at the last measured GMAC/s, scaled by how far the last row ran past its own estimate.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import sys
import time
from typing import NamedTuple

import torch

from flexgen import policies
from flexgen.bench.cached import cached_report
from flexgen.bench.device import calibrate, device_peak
from flexgen.bench.flops import dydit_flops
from flexgen.bench.measure import measure
from flexgen.bench.models import bench_setup, dynamic_plan, meta_denoiser
from flexgen.bench.suite_outputs import markdown, write_outputs
from flexgen.bench.train_speed import train_step_report
from flexgen.config import load_config
from flexgen.files import folder_lock
from flexgen.policies import DyDiT, FlexDiT
from flexgen.policies.cost import density_report
from flexgen.registry import denoiser_class


@dataclasses.dataclass(frozen=True)
class SuiteModel:
    """One model of the table: a preset at a size, its FlexDiT layout and Eq. 5 grid range (reading B), the CFG scale
    of its papers and the composed preset's λ."""
    key: str
    name: str
    preset: str
    layout: str
    grids: tuple[int, int]
    cfg_scale: float
    composed_target: float
    image_size: int | None = None
    frames: int | None = None
    num_classes: int | None = None

    def overrides(self) -> list[str]:
        return denoiser_class(self.preset).preset_overrides(
            self.preset, image_size=self.image_size, frames=self.frames, num_classes=self.num_classes, in_channels=4,
            vae_factor=8)

    def density(self) -> list[str]:
        return FlexDiT.overrides(self.layout, kind="eq5", reading="B", grid_min=self.grids[0], grid_max=self.grids[1])


# The papers' settings: DiT-XL/2 (FlexDiT's ImageNet schedules, CFG 1.5), Latte-XL/2 (class-conditional UCF101,
# CFG 7), PixArt-α (CFG 4.5); the composed λ of configs/*/flexdy*.yaml.
FULL = (
    SuiteModel("dit-xl2-256", "DiT-XL/2 256", "DiT-XL/2", "DiT-XL/2", (6, 10), 1.5, 0.6, image_size=256),
    SuiteModel("dit-xl2-512", "DiT-XL/2 512", "DiT-XL/2", "DiT-XL/2", (12, 20), 1.5, 0.6, image_size=512),
    SuiteModel("latte-xl2", "Latte-XL/2 16×256²", "Latte-XL/2", "Latte-XL/2", (5, 9), 7.0, 0.7, image_size=256,
               frames=16, num_classes=101),
    SuiteModel("pixart-256", "PixArt-α 256", "PixArt-XL/2-256", "PixArt-XL/2", (5, 8), 4.5, 0.6),
    SuiteModel("pixart-512", "PixArt-α 512", "PixArt-XL/2-512", "PixArt-XL/2", (10, 16), 4.5, 0.6),
    SuiteModel("pixart-1024-ms", "PixArt-α 1024-MS", "PixArt-XL/2-1024-MS", "PixArt-XL/2", (20, 32), 4.5, 0.6),
)
# The CPU's default: small presets first (the budget decides how far it gets), then PixArt-α 256.
SMALL = (
    SuiteModel("dit-s2-256", "DiT-S/2 256", "DiT-S/2", "DiT-S/2", (6, 10), 1.5, 0.6, image_size=256),
    SuiteModel("dit-b2-256", "DiT-B/2 256", "DiT-B/2", "DiT-B/2", (6, 10), 1.5, 0.6, image_size=256),
    SuiteModel("latte-s2", "Latte-S/2 16×256²", "Latte-S/2", "Latte-S/2", (5, 9), 7.0, 0.7, image_size=256,
               frames=16, num_classes=101),
    SuiteModel("dit-b2-512", "DiT-B/2 512", "DiT-B/2", "DiT-B/2", (12, 20), 1.5, 0.6, image_size=512),
    FULL[3],
)
MODELS = {m.key: m for m in (*FULL, *SMALL)}
SETS = {"full": FULL, "small": SMALL}
DYDIT_TARGETS = (0.5, 0.7)
# A row whose synthetic routers are set as a trained router's look: units spread over each block (weight slices are
# copies), and 30% of the tokens skip each MLP (gathered and scattered back) (`set_synthetic_routers`).
SCATTERED = "scattered"
# Whole sampling runs with a step cache (a cache saves whole steps, so it is timed over runs): FORA at interval 2,
# whose steps do not depend on the weights (TeaCache's decisions on random weights would say nothing), on the dense
# model and around FlexDiT, under DPM-Solver++ 20 steps with the model's CFG.
CACHE = ("cache.method=fora", "cache.interval=2")
CACHE_SAMPLER = ("dpm-solver++", 20)


class PolicyRow(NamedTuple):
    """A dynamic row: its policy's name and config overrides, whether DyDiT's synthetic routers are scattered, and
    the fine-tuning rows timed for it (one per value: with DyDiT's complete-model rows or not)."""
    name: str
    overrides: list[str]
    scattered: bool = False
    train: tuple[bool, ...] = ()


def _policies(model: SuiteModel) -> list[PolicyRow]:
    """Every dynamic row of `model`; fine-tuning steps for FlexDiT, DyDiT at the first λ (after and during its
    warm-up stage) and the composed model."""
    lam = DYDIT_TARGETS[0]
    return [PolicyRow("FlexDiT", model.density(), train=(False,)),
            *(PolicyRow(f"DyDiT λ={t:g}", DyDiT.overrides(t), train=(False, True) if t == lam else ())
              for t in DYDIT_TARGETS),
            PolicyRow(f"DyDiT λ={lam:g} {SCATTERED}", DyDiT.overrides(lam), scattered=True),
            PolicyRow(f"FlexDiT ∘ DyDiT λ={model.composed_target:g}",
                      [*model.density(), *DyDiT.overrides(model.composed_target)], train=(False,))]


def _counted(run, name: str, scattered: bool = False) -> tuple[float, list[float]]:
    """(time-average GMACs per forward, GMACs at each key the latency bench times), counted on the meta device."""
    if policies.from_run(run).gated:
        report = dydit_flops(run, name, scattered=scattered)
        return report["gmacs"], [s[4] for s in report.get("stages", [])] or [report["gmacs"]]
    report = density_report(meta_denoiser(run).cost())
    return report["gmacs"], list({s[2]: s[3] for s in report["stages"]}.values())


def _row(model: SuiteModel, policy: str, result: dict | None, gmacs: float, gmacs_dense: float,
         peak: float | None) -> dict:
    row = {"model": model.name, "policy": policy, "gmacs": gmacs, "flops_ratio": gmacs / gmacs_dense}
    if result is None:
        return row
    dense = policy == "dense"
    side = "dense" if dense else "dynamic"
    forward, cfg = result["forward"], result.get("cfg_step")
    tflops = forward[f"tflops_{side}"]
    row.update(forward_ms=forward[f"{side}_s"] * 1e3, cfg_step_ms=cfg[f"{side}_s"] * 1e3 if cfg else None,
               peak_mib=result["peak_memory"][f"{side}_bytes"] / 2 ** 20, tflops=tflops,
               peak_share=tflops / peak if peak else None, attention=", ".join(sorted(result["attention_calls"])),
               batch=result["batch"], dtype=result["dtype"], compiled=result["compiled"])
    if not dense:
        row.update(flops_ratio=result["flops_ratio"], gmacs=result["gmacs"], latency_ratio=forward["latency_ratio"],
                   latency_over_flops=forward["latency_over_flops"], speedup=forward["speedup"],
                   paired_dense_forward_ms=forward["dense_s"] * 1e3,
                   peak_ratio=result["peak_memory"]["ratio"])
        if "sliced_weight_bytes" in result:
            row["sliced_weight_bytes"] = result["sliced_weight_bytes"]
        if cfg:
            row.update(cfg_latency_ratio=cfg["latency_ratio"], cfg_latency_over_flops=cfg["latency_over_flops"],
                       paired_dense_cfg_step_ms=cfg["dense_s"] * 1e3)
    if result["compiled"] and not dense:        # (dense and dynamic share one timed loop: counted on its row)
        row["graphs_compiled_while_timed"] = result["graphs_compiled_while_timed"]
    return row


def suite_report(models, *, device: str = "cpu", dtype: torch.dtype = torch.float32, batch: int = 1,
                 repeats: int = 2, warmup: int = 1, time_budget: float | None = None, compile: bool = False,
                 overrides: tuple[str, ...] = (), log=None) -> dict:
    """Every row of `models` (SuiteModel) that fits `time_budget` seconds (None: no limit), in order; `overrides`
    apply to every model's config (tests shrink the models with them)."""
    start, dev = time.perf_counter(), torch.device(device)
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    name, peak, peak_source = device_peak(dev, dtype)
    gmac_per_s = 0.5 * calibrate(dev, dtype)           # a model runs below a large matmul's rate
    build_s_per_param = None
    overrun = 1.0               # the last row's wall time over its estimate at the new rate (≥ 1), scales the next
    rows, skipped, cache_rows, train_rows = [], [], [], []

    def left() -> float:
        return float("inf") if time_budget is None else time_budget - (time.perf_counter() - start)

    def estimate(gmacs_dense: float, keys: list[float], cfg: bool, params: int) -> float:
        calls = (warmup + repeats + 1) * (3 if cfg else 1)          # + the memory pass; a CFG step runs 2 forwards
        build = params * (build_s_per_param or 0.0)
        return build + calls * batch * (gmacs_dense + sum(keys)) / gmac_per_s

    for model in models:
        base = load_config(None, [*model.overrides(), *overrides])
        dense_meta = meta_denoiser(base)
        gmacs_dense = dense_meta.cost().forward_macs(None).gmacs
        params = sum(p.numel() for p in dense_meta.parameters())
        specs = {row.name: row for row in _policies(model)}
        runs = {name: load_config(None, [*model.overrides(), *row.overrides, *overrides])
                for name, row in specs.items()}
        counted = {policy: _counted(run, model.name, specs[policy].scattered) for policy, run in runs.items()}
        cfg = model.cfg_scale if dense_meta.conditional else None
        first = overrun * estimate(gmacs_dense, next(iter(counted.values()))[1], cfg is not None, 2 * params)
        if first > left():
            skipped.append({"model": model.name, "policy": "all",
                            "why": f"estimated {first:.0f} s for its first row, {max(0.0, left()):.0f} s left"})
            rows += [_row(model, "dense", None, gmacs_dense, gmacs_dense, peak)]
            rows += [_row(model, p, None, g, gmacs_dense, peak) for p, (g, _) in counted.items()]
            log(f"skipped {model.name}: {skipped[-1]['why']}")
            continue
        built = time.perf_counter()
        bench = bench_setup(base, device=device, dtype=dtype, batch=batch, seed=0, sampler=None, steps=None)
        build_s_per_param = (time.perf_counter() - built) / params
        results, dense_results = {}, []
        for policy, run in runs.items():
            need = overrun * estimate(gmacs_dense, counted[policy][1], cfg is not None, params)
            if need > left():
                skipped.append({"model": model.name, "policy": policy,
                                "why": f"estimated {need:.0f} s, {max(0.0, left()):.0f} s left"})
                results[policy] = None
                log(f"skipped {model.name} {policy}: {skipped[-1]['why']}")
                continue
            row_start = time.perf_counter()
            plan = dynamic_plan(bench, run, scattered=specs[policy].scattered)
            result = measure(bench, plan, repeats=repeats, warmup=warmup, cfg_scale=cfg, compile=compile)
            del plan
            gc.collect()
            results[policy] = result
            dense_results.append(result)
            gmac_per_s = batch * gmacs_dense / result["forward"]["dense_s"]
            overrun = max(1.0, (time.perf_counter() - row_start) / estimate(gmacs_dense, counted[policy][1],
                                                                           cfg is not None, 0))
            log(f"{model.name} {policy}: MAC ratio {result['flops_ratio']:.3f}, forward latency ratio "
                f"{result['forward']['latency_ratio']:.3f} ({time.perf_counter() - start:.0f} s)")
        rows.append(_row(model, "dense", _dense_summary(dense_results), gmacs_dense, gmacs_dense, peak)
                    if dense_results else _row(model, "dense", None, gmacs_dense, gmacs_dense, peak))
        rows += [_row(model, p, results[p], counted[p][0], gmacs_dense, peak) for p in counted]
        for policy, complete in ((name, c) for name, row in specs.items() for c in row.train):
            # a step: forward, backward (about twice the forward) and the optimizer, dense and dynamic in turn
            need = overrun * 3 * 2 * (warmup + max(3, repeats)) * batch * gmacs_dense / gmac_per_s
            label = policy + (" + complete rows" if complete else "")
            if need > left():
                skipped.append({"model": model.name, "policy": f"train {label}",
                                "why": f"estimated {need:.0f} s, {max(0.0, left()):.0f} s left"})
                log(f"skipped {model.name} train {label}: {skipped[-1]['why']}")
                continue
            try:
                result = train_step_report(bench, runs[policy], repeats=max(3, repeats), warmup=warmup,
                                           complete=complete)     # (a step varies more than a forward)
            except torch.cuda.OutOfMemoryError as e:            # (training holds two models and their optimizers)
                skipped.append({"model": model.name, "policy": f"train {label}", "why": f"out of memory ({e})"})
                log(f"skipped {model.name} train {label}: out of memory")
                torch.cuda.empty_cache()
                continue
            train_rows.append({"model": model.name, "policy": label, "mac_ratio": counted[policy][0] / gmacs_dense,
                               **result})
            log(f"{model.name} train {label}: step time ratio {result['ratio']:.3f} "
                f"({time.perf_counter() - start:.0f} s)")
            gc.collect()
        del bench
        gc.collect()
        for policy, extra in (("dense + FORA 2", []), ("FlexDiT + FORA 2", model.density())):
            passes = 2 if cfg is not None else 1      # dense, the uncached model, FORA's half: about 2.5 dense runs
            need = overrun * 2.5 * (warmup + repeats) * CACHE_SAMPLER[1] * passes * batch * gmacs_dense / gmac_per_s
            if need > left():
                skipped.append({"model": model.name, "policy": policy,
                                "why": f"estimated {need:.0f} s, {max(0.0, left()):.0f} s left"})
                log(f"skipped {model.name} {policy}: {skipped[-1]['why']}")
                continue
            run = load_config(None, [*model.overrides(), *extra, *CACHE, *overrides])
            result = cached_report(run, device=device, dtype=dtype, batch=batch, repeats=repeats, warmup=warmup,
                                   cfg_scale=model.cfg_scale if cfg is not None else 1.0, sampler=CACHE_SAMPLER[0],
                                   steps=CACHE_SAMPLER[1], compile=compile)
            cache_rows.append(_cache_row(model, policy, result))
            log(f"{model.name} {policy}: MAC ratio {cache_rows[-1]['mac_ratio']:.3f}, whole-run latency ratio "
                f"{cache_rows[-1]['latency_ratio']:.3f} ({time.perf_counter() - start:.0f} s)")
            gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return {"device": str(dev), "device_name": name, "device_peak_tflops": peak, "device_peak_source": peak_source,
            "dtype": str(dtype).removeprefix("torch."), "batch": batch, "repeats": repeats, "warmup": warmup,
            "compiled": compile, "time_budget_s": time_budget, "elapsed_s": time.perf_counter() - start,
            "torch": torch.__version__, "rows": rows, "cache_rows": cache_rows, "train_rows": train_rows,
            "skipped": skipped, "targets": targets(rows, dev, dtype, batch)}


def _cache_row(model: SuiteModel, policy: str, result: dict) -> dict:
    """A whole-run row: the cached model against dense (and against itself uncached around FlexDiT)."""
    vs = result["cached_vs_dense"]
    row = {"model": model.name, "policy": policy, "sampler": f"{result['sampler']}-{result['steps']}",
           "steps_computed": result["steps_computed"], "gmacs_per_sample": result["gmacs_per_sample"]["cached"],
           "gmacs_per_sample_dense": result["gmacs_per_sample"]["dense"], "mac_ratio": vs["mac_ratio"],
           "latency_ratio": vs["latency_ratio"], "latency_over_macs": vs["latency_over_macs"],
           "speedup": vs["speedup"], "seconds_per_run": result["seconds_per_run"], "batch": result["batch"],
           "compiled": result["compiled"]}
    if "cached_vs_uncached" in result:
        row["vs_uncached"] = result["cached_vs_uncached"]
    return row


def _dense_summary(results: list[dict]) -> dict:
    """The dense model's numbers over every policy's run (it is timed beside each): medians of their medians, the
    largest peak memory."""
    summary = dict(results[0])
    for kind in ("forward", "cfg_step"):
        if kind in summary:
            summary[kind] = {k: statistics.median([r[kind][k] for r in results]) for k in ("dense_s", "tflops_dense")}
    summary["peak_memory"] = {"dense_bytes": max(r["peak_memory"]["dense_bytes"] for r in results)}
    return summary


def targets(rows: list[dict], device: torch.device, dtype: torch.dtype, batch: int) -> list[dict]:
    """The speed targets of issue 16, as measured here (benchmarks: reported, never asserted)."""
    timed = [r for r in rows if r["policy"] != "dense" and "latency_ratio" in r]
    out = []
    gpu = device.type == "cuda" and dtype == torch.bfloat16 and batch == 8
    for model in ("DiT-XL/2 512", "PixArt-α 512"):
        row = next((r for r in timed if r["model"] == model and r["policy"] == "FlexDiT"), None)
        out.append({"target": f"FlexDiT ≥ 2.5× faster than dense on {model} (GPU bf16, batch 8)",
                    "measured": None if row is None else row["speedup"],
                    "met": None if row is None or not gpu else row["speedup"] >= 2.5,
                    "note": "" if gpu else "this run is not GPU bf16 batch 8"})
    within = [r for r in timed if r["latency_over_flops"] <= 1.1 and r.get("cfg_latency_over_flops", 0) <= 1.1]
    out.append({"target": "every dynamic row's latency ratio within 1.1× of its MAC ratio (forward and CFG step)",
                "measured": f"{len(within)} of {len(timed)}", "met": bool(timed) and len(within) == len(timed),
                "note": ", ".join(f"{r['model']} {r['policy']}" for r in timed if r not in within)})
    memory = [r for r in timed if r["peak_ratio"] <= 1.0]
    out.append({"target": "peak memory of every dynamic row ≤ dense", "measured": f"{len(memory)} of {len(timed)}",
                "met": bool(timed) and len(memory) == len(timed),
                "note": ", ".join(f"{r['model']} {r['policy']} ({r['peak_ratio']:.2f}×)" for r in timed
                                  if r not in memory)})
    return out


def bench_suite(args) -> dict:
    """`flexgen bench suite`: the models of --models or --set (default: full on CUDA, small on the CPU)."""
    dev = torch.device(args.device)
    if args.models:
        unknown = [k for k in args.models if k not in MODELS]
        if unknown:
            raise ValueError(f"unknown suite model(s) {', '.join(unknown)}; expected some of {', '.join(MODELS)}")
        models = [MODELS[k] for k in args.models]
    else:
        models = SETS[args.set or ("full" if dev.type == "cuda" else "small")]
    batch = args.batch or (8 if dev.type == "cuda" else 1)
    budget = args.time_budget if args.time_budget is not None else (None if dev.type == "cuda" else 540.0)
    out = args.out or f"results/bench-suite-{dev.type}-{args.dtype}"
    with folder_lock(out, "flexgen bench suite", clean=False):       # a bad --out is named before minutes of measuring
        report = suite_report(models, device=args.device, dtype=getattr(torch, args.dtype), batch=batch,
                              repeats=args.repeats, warmup=args.warmup, time_budget=budget or None,
                              compile=args.compile, overrides=tuple(args.overrides))
        report["files"] = write_outputs(report, out)
    return report


def print_suite(report: dict) -> None:
    print(markdown(report), end="")
    print("wrote " + ", ".join(report["files"].values()))
