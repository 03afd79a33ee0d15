"""The suite's report as files: suite.json, suite.md (the table and the targets) and suite.svg (latency ratio vs
MAC ratio)."""

from __future__ import annotations

import json
from pathlib import Path

from flexgen.files import atomic_write_text


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
    if report.get("cache_rows"):
        lines += ["", "Whole sampling runs with a step cache (the cached model vs dense timed in turn, the same "
                      "weights; MACs per sample from the steps that ran):", "",
                  "| model | policy | sampler | steps run | GMACs / sample | MAC ratio | s / run (dense) | "
                  "speed-up (latency × MAC) | vs uncached: speed-up, MAC ratio |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in report["cache_rows"]:
            inner = r.get("vs_uncached")
            inner = f"{inner['speedup']:.2f}×, {inner['mac_ratio']:.3f}" if inner else "–"
            lines.append(f"| {r['model']} | {r['policy']} | {r['sampler']} | {r['steps_computed']} | "
                         f"{r['gmacs_per_sample']:.1f} | {r['mac_ratio']:.3f} | {r['seconds_per_run']['cached']:.2f} "
                         f"({r['seconds_per_run']['dense']:.2f}) | {r['speedup']:.2f}× ({r['latency_over_macs']:.2f}×) "
                         f"| {inner} |")
    if report.get("train_rows"):
        lines += ["", "Fine-tuning steps (the policy's objective, backward and AdamW; dense and dynamic in turn on the "
                      "same weights, inputs and timesteps):", "",
                  "| model | policy | forward MAC ratio | ms / step (dense) | step ratio | samples / s (dense) |",
                  "|---|---|---|---|---|---|"]
        for r in report["train_rows"]:
            lines.append(f"| {r['model']} | {r['policy']} | {r['mac_ratio']:.3f} | {1e3 * r['dynamic_s']:.0f} "
                         f"({1e3 * r['dense_s']:.0f}) | {r['ratio']:.3f} | {r['samples_per_s_dynamic']:.2f} "
                         f"({r['samples_per_s_dense']:.2f}) |")
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
    """suite.json, suite.md and suite.svg in `out`, each written atomically (a killed run leaves the last ones)."""
    out = Path(out)
    files = {"json": out / "suite.json", "markdown": out / "suite.md", "plot": out / "suite.svg"}
    for path, text in ((files["json"], json.dumps(report, indent=1) + "\n"), (files["markdown"], markdown(report)),
                       (files["plot"], svg(report))):
        atomic_write_text(path, text)
    return {k: str(v) for k, v in files.items()}
