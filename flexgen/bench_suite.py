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
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from flexgen import policies
from flexgen.bench import _bench_setup, _dynamic_plan, _meta_denoiser, dydit_flops, measure
from flexgen.config import load_config
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
        return [f"density.layout={self.layout}", "density.schedule.kind=eq5", "density.schedule.reading=B",
                f"density.schedule.grid_min={self.grids[0]}", f"density.schedule.grid_max={self.grids[1]}"]


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

# Dense peak TFLOP/s (no sparsity) from the vendors' datasheets: (name in torch.cuda.get_device_name, bf16 / fp16
# tensor cores, fp32 without TF32). Checked in order (H100 PCIe before H100 SXM).
GPU_PEAKS = (("H200", 989.4, 66.9), ("H100 PCIe", 756.0, 51.2), ("H100", 989.4, 66.9), ("A100", 312.0, 19.5),
             ("L40S", 362.1, 91.6), ("L4", 121.0, 30.3))


def device_peak(device: torch.device, dtype: torch.dtype) -> tuple[str, float | None, str]:
    """(device name, peak TFLOP/s or None where unknown, where the number comes from)."""
    low = dtype in (torch.bfloat16, torch.float16)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, half, single in GPU_PEAKS:
            if key in name:
                return name, half if low else single, "datasheet, dense"
        return name, None, "unknown device"
    flags, mhz, model = set(), None, platform.processor() or "cpu"
    lines = []
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            lines = f.readlines()
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = set(value.split())
        elif key == "cpu MHz" and mhz is None:
            mhz = float(value)
        elif key == "model name":
            model = value.strip()
    if mhz is None:
        return model, None, "unknown clock"
    # FLOPs per cycle per core: two FMA units × vector lanes × 2; AMX tiles for bf16 / fp16 (oneDNN uses them)
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    if low and "amx_bf16" in flags:
        per_cycle = 1024
    threads = torch.get_num_threads()
    return (f"{model} ({threads} threads)", threads * mhz * 1e6 * per_cycle / 1e12,
            "estimate: threads × clock × FLOPs per cycle")


def _calibrate(device: torch.device, dtype: torch.dtype) -> float:
    """GMAC/s of a large matmul: the first guess of how fast a model runs, before one has been timed."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    a @ a
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(3):
        a @ a
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 3 * n ** 3 / (time.perf_counter() - start) / 1e9


def _policies(model: SuiteModel) -> list[tuple[str, list[str]]]:
    """(policy name, config overrides) of every dynamic row."""
    rows = [("FlexDiT", model.density())]
    rows += [(f"DyDiT λ={t:g}", [f"dydit.target={t}"]) for t in DYDIT_TARGETS]
    rows.append((f"FlexDiT ∘ DyDiT λ={model.composed_target:g}",
                 [*model.density(), f"dydit.target={model.composed_target}"]))
    return rows


def _counted(run, name: str) -> tuple[float, list[float]]:
    """(time-average GMACs per forward, GMACs at each key the latency bench times), counted on the meta device."""
    if policies.from_run(run).measured:
        report = dydit_flops(run, name)
        return report["gmacs"], [s[4] for s in report.get("stages", [])] or [report["gmacs"]]
    report = density_report(_meta_denoiser(run).cost())
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
    gmac_per_s = 0.5 * _calibrate(dev, dtype)           # a model runs below a large matmul's rate
    build_s_per_param = None
    overrun = 1.0               # the last row's wall time over its estimate at the new rate (≥ 1), scales the next
    rows, skipped = [], []

    def left() -> float:
        return float("inf") if time_budget is None else time_budget - (time.perf_counter() - start)

    def estimate(gmacs_dense: float, keys: list[float], cfg: bool, params: int) -> float:
        calls = (warmup + repeats + 1) * (3 if cfg else 1)          # + the memory pass; a CFG step runs 2 forwards
        build = params * (build_s_per_param or 0.0)
        return build + calls * batch * (gmacs_dense + sum(keys)) / gmac_per_s

    for model in models:
        base = load_config(None, [*model.overrides(), *overrides])
        dense_meta = _meta_denoiser(base)
        gmacs_dense = dense_meta.cost().forward_macs(None).gmacs
        params = sum(p.numel() for p in dense_meta.parameters())
        runs = {policy: load_config(None, [*model.overrides(), *extra, *overrides])
                for policy, extra in _policies(model)}
        counted = {policy: _counted(run, model.name) for policy, run in runs.items()}
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
        bench = _bench_setup(base, device=device, dtype=dtype, batch=batch, seed=0, sampler=None, steps=None)
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
            plan = _dynamic_plan(bench, run)
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
        del bench
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return {"device": str(dev), "device_name": name, "device_peak_tflops": peak, "device_peak_source": peak_source,
            "dtype": str(dtype).removeprefix("torch."), "batch": batch, "repeats": repeats, "warmup": warmup,
            "compiled": compile, "time_budget_s": time_budget, "elapsed_s": time.perf_counter() - start,
            "torch": torch.__version__, "rows": rows, "skipped": skipped, "targets": targets(rows, dev, dtype, batch)}


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


# ----------------------------------------------------------------------------------------------------------------
# Outputs.


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    peak = report["device_peak_tflops"]
    lines = [f"# flexgen bench suite: {report['device_name']}",
             "",
             f"{report['dtype']}, batch {report['batch']}, median of {report['repeats']} (after {report['warmup']} "
             f"warm-up), {'compiled' if report['compiled'] else 'eager'}, torch {report['torch']}; device peak "
             f"{_fmt(peak, '.1f')} TFLOP/s ({report['device_peak_source']}); {report['elapsed_s']:.0f} s. Dynamic "
             f"rows: synthetic routers on the dense model's random weights, timed beside it in one process; each "
             f"ratio is dynamic / the dense model timed in the same repeats (suite.json has both), the dense row's "
             f"ms the median over those runs. Peak memory: resident weights (and held slice copies) + the "
             f"largest call's growth.",
             "",
             "| model | policy | GMACs / fwd | MAC ratio | ms / fwd | latency ratio (× MAC) | ms / CFG step | "
             "CFG ratio (× MAC) | peak MiB (ratio) | TFLOP/s | % of peak | attention |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        ratio = f"{r['latency_ratio']:.3f} ({r['latency_over_flops']:.2f}×)" if "latency_ratio" in r else "–"
        cfg = f"{r['cfg_latency_ratio']:.3f} ({r['cfg_latency_over_flops']:.2f}×)" if "cfg_latency_ratio" in r else "–"
        memory = _fmt(r.get("peak_mib"), ".0f") + (f" ({r['peak_ratio']:.2f})" if "peak_ratio" in r else "")
        share = _fmt(None if r.get("peak_share") is None else 100 * r["peak_share"], ".1f")
        lines.append(f"| {r['model']} | {r['policy']} | {r['gmacs']:.2f} | {r['flops_ratio']:.3f} | "
                     f"{_fmt(r.get('forward_ms'), '.1f')} | {ratio} | {_fmt(r.get('cfg_step_ms'), '.1f')} | {cfg} | "
                     f"{memory} | {_fmt(r.get('tflops'), '.3g')} | {share} | {r.get('attention', '–')} |")
    lines += ["", "Targets (measured, not asserted):", ""]
    for t in report["targets"]:
        met = {True: "met", False: "not met", None: "not judged"}[t["met"]]
        measured = t["measured"] if not isinstance(t["measured"], float) else f"{t['measured']:.2f}×"
        note = f"; {t['note']}" if t["note"] else ""
        lines.append(f"- {t['target']}: {_fmt(measured, '')} ({met}{note})")
    late = [f"{r['model']} {r['policy']} ({r['graphs_compiled_while_timed']})" for r in report["rows"]
            if r.get("graphs_compiled_while_timed")]
    if late:
        lines += ["", "Compiled graphs built during the timed repeats (those times include compilation; raise "
                      f"--warmup): {', '.join(late)}"]
    if report["skipped"]:
        lines += ["", f"Skipped (time budget {report['time_budget_s']} s; MACs above are counted regardless):", ""]
        lines += [f"- {s['model']} {s['policy']}: {s['why']}" for s in report["skipped"]]
    return "\n".join(lines) + "\n"


def svg(report: dict, size: int = 480) -> str:
    """Latency ratio (forward: filled, CFG step: hollow) against MAC ratio, with the lines y = x and y = 1.1 x."""
    pad, span = 48, size - 72
    def px(v: float) -> float:
        return pad + span * min(max(v, 0.0), 1.2) / 1.2

    def py(v: float) -> float:
        return size - pad - span * min(max(v, 0.0), 1.2) / 1.2

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" font-family="sans-serif" '
             f'font-size="10">', f'<rect width="{size}" height="{size}" fill="white"/>',
             f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(1.2)}" y2="{py(1.2)}" stroke="#888"/>',
             f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(1.2 / 1.1)}" y2="{py(1.2)}" stroke="#888" '
             f'stroke-dasharray="4 3"/>',
             f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(1.2)}" y2="{py(0)}" stroke="black"/>',
             f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(0)}" y2="{py(1.2)}" stroke="black"/>',
             f'<text x="{size / 2}" y="{size - 12}" text-anchor="middle">MAC ratio (dynamic / dense)</text>',
             f'<text x="14" y="{size / 2}" text-anchor="middle" transform="rotate(-90 14 {size / 2})">latency '
             f'ratio</text>',
             f'<text x="{px(1.0)}" y="{py(1.05)}">y = x</text>',
             f'<text x="{px(0.8)}" y="{py(0.97)}">1.1 x</text>']
    for tick in (0.2, 0.4, 0.6, 0.8, 1.0):
        parts += [f'<text x="{px(tick)}" y="{py(0) + 14}" text-anchor="middle">{tick:g}</text>',
                  f'<text x="{px(0) - 6}" y="{py(tick) + 3}" text-anchor="end">{tick:g}</text>']
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    models = list(dict.fromkeys(r["model"] for r in report["rows"]))
    for r in report["rows"]:
        if "latency_ratio" not in r:
            continue
        colour = colours[models.index(r["model"]) % len(colours)]
        x = px(r["flops_ratio"])
        parts.append(f'<circle cx="{x:.1f}" cy="{py(r["latency_ratio"]):.1f}" r="4" fill="{colour}">'
                     f'<title>{r["model"]} {r["policy"]}: forward</title></circle>')
        if "cfg_latency_ratio" in r:
            parts.append(f'<circle cx="{x:.1f}" cy="{py(r["cfg_latency_ratio"]):.1f}" r="4" fill="none" '
                         f'stroke="{colour}"><title>{r["model"]} {r["policy"]}: CFG step</title></circle>')
    for i, model in enumerate(models):
        parts.append(f'<text x="{pad + 8}" y="{pad / 2 + 12 * i}" fill="{colours[i % len(colours)]}">{model}</text>')
    return "\n".join([*parts, "</svg>"]) + "\n"


def write_outputs(report: dict, out: str | Path) -> dict[str, str]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "suite.json", "markdown": out / "suite.md", "plot": out / "suite.svg"}
    files["json"].write_text(json.dumps(report, indent=1) + "\n")
    files["markdown"].write_text(markdown(report))
    files["plot"].write_text(svg(report))
    return {k: str(v) for k, v in files.items()}


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
    report = suite_report(models, device=args.device, dtype=getattr(torch, args.dtype), batch=batch,
                          repeats=args.repeats, warmup=args.warmup, time_budget=budget or None,
                          compile=args.compile, overrides=tuple(args.overrides))
    report["files"] = write_outputs(report, args.out or f"results/bench-suite-{dev.type}-{args.dtype}")
    return report


def print_suite(report: dict) -> None:
    print(markdown(report), end="")
    print("wrote " + ", ".join(report["files"].values()))
