"""`flexgen demo`: the whole loop on embedded data, on a CPU, in about ten minutes, rated by a detector it trains
itself, against what a user could do for free: the dense model sampled with fewer steps.

1. Data: a synthetic clip set (a disc or a square moving right, left, up or down over a plain background: eight
   shape × direction classes) as real mp4 files in the UCF101 layout, plus held-out clips, with `flexgen.synthetic`.
2. The yardstick: a small video classifier of those classes (`flexgen.metrics.synthmotion`), trained on the
   training clips, saved and hashed; its held-out accuracy on real clips is reported.
3. A dense Latte (`flexgen/configs/demo/demo-dense.yaml`; `configs/demo` in a checkout), then each policy of
   `POLICIES` fine-tuned from the run it names (FlexDiT: `demo-flex.yaml` and DyDiT: `demo-dydit.yaml` from the
   dense EMA weights with one budget; the composed `demo-flexdydit.yaml` from FlexDiT's, with less: it only has
   DyDiT's routers to learn).
4. Every model samples the same seeds and labels with one sampler (`SAMPLER`; `flexgen.sampling.run.sample_run`:
   mp4 files + samples.json); the training-free rows follow: FORA every 2nd step on the dense model, and TeaCache
   calibrated on each model of `CACHED` (its polynomial fitted on 8 uncached samples of that model); the dense
   model samples again at 1 and 2 steps and at the step counts whose GMACs per video match each row's
   (`frontier_steps`): the fewer-steps frontier.
5. Every sample folder gets five numbers with 95% intervals (`flexgen.metrics.synthmotion_eval`, what `flexgen eval
   synthmotion` runs): class accuracy, the pixel grades tone and track, the Fréchet distance and KID in the
   classifier's feature space (`fd_synthmotion`, never "FVD"); a second draw of real clips gives the floor row;
   real FVD is added when the standard I3D file is present. Each number is a `Record`.
6. `flexgen leaderboard` renders the board (leaderboard.md / .html / .png: MACs vs quality, rows ranked only beyond
   their intervals, each placed against the frontier); samples.png shows the models' samples side by side for the
   same seeds (the last column: dense at 1 step); demo.json holds the summary.

The design choices (16×16 frames with 4×4 patches, one clip per video, v-prediction, logit-normal timesteps, the
budgets, the sampler), each measured against the one before it, are in DEVELOPERS.md. `--quick` runs the same steps
with tiny budgets (the tests run it). Everything it needs ships inside the package, so it runs from an installed
wheel. Measured: docs/benchmarks.md (the board, the samples).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flexgen.config import Config, load_config
from flexgen.data.video_index import clip_span
from flexgen.files import atomic_write_text
from flexgen.registry import build_denoiser
from flexgen.synthetic import make_synthetic
from flexgen.train import train

CONFIGS = Path(__file__).resolve().parent / "configs" / "demo"        # package data (configs/demo in a checkout)
DATASET = "synthmotion"                                              # the records' dataset name


@dataclass(frozen=True)
class Budget:
    train_per_class: int        # training clips per class
    heldout_per_class: int      # held-out clips per class (the real set: one clip per video; the floor draws
                                # num_samples more from the rest, so at least 2 × num_samples in all)
    dense_samples: int          # clips seen by the dense model
    policy_samples: int         # clips seen by the fine-tuning of FlexDiT and of DyDiT from the dense model
    composed_samples: int       # clips seen by the composed model's fine-tuning from the FlexDiT model
    num_samples: int            # videos sampled per model (the same seeds and labels for every model)
    steps: int                  # sampler steps of every model
    few_steps: tuple[int, ...]  # the cheapest points of the dense model's fewer-steps frontier
    detector_steps: int         # classifier training steps


BUDGETS = {"full": Budget(32, 16, 24000, 4000, 2500, 64, 50, (1, 2), 400),
           "quick": Budget(2, 4, 64, 32, 32, 16, 5, (1,), 20)}
TASK, CLASSES = "shape-motion", 8          # flexgen.synthetic: a disc or a square moving right, left, up or down
SAMPLER = "dpm-solver++"                   # every row's sampler (measured against DDIM at few steps: DEVELOPERS.md)

# The dense model, then one row per density policy: (row name, run folder, config, the run it starts from). A later
# policy adds its line here and is fine-tuned, sampled and rated exactly like the others.
DENSE = ("Latte (dense)", "dense", "demo-dense.yaml", None)
POLICIES = [("FlexDiT-Latte", "flexdit", "demo-flex.yaml", "dense"),
            ("DyDiT-Latte", "dydit", "demo-dydit.yaml", "dense"),
            ("FlexDiT∘DyDiT-Latte", "flexdydit", "demo-flexdydit.yaml", "flexdit")]
CACHED = ("dense", "flexdit", "dydit")     # the runs TeaCache is calibrated on and sampled around (FORA: dense)


def _config(name: str, data_root: Path, out: Path, samples: int, init_from: Path | None = None) -> tuple[Config,
                                                                                                          list[str]]:
    overrides = [f"data.root={data_root / 'train'}", f"train.results_dir={out}", f"train.total_samples={samples}",
                 f"sample.sampler={SAMPLER}"]
    if init_from is not None:
        overrides.append(f"train.init_from={init_from}")
    return load_config(CONFIGS / name, overrides), overrides


def _train_detector(data_root: Path, out: Path, cfg: Config, budget: Budget) -> dict:
    """Train, save and hash the SynthMotion classifier; its accuracy on one seeded clip of every held-out video."""
    from flexgen.metrics import synthmotion as sm

    net = sm.train_classifier(data_root / "train", num_frames=cfg.data.num_frames, stride=cfg.data.frame_interval,
                              size=cfg.data.image_size, steps=budget.detector_steps)
    path = out / "detector" / "synthmotion.safetensors"
    sha256 = sm.save(net, path)
    detector = sm.SynthMotionDetector(path, sha256=sha256)
    videos, labels, _ = sm.read_clip_set(data_root / "heldout")
    clips = sm.random_clips(videos, detector.config, np.random.default_rng(0))
    return {"path": str(path), "sha256": sha256, "heldout_accuracy": detector.accuracy(clips, labels),
            "heldout_videos": len(videos), "detector": detector}


def _sample(config_name: str, overrides: list[str], ckpt: Path, folder: Path, budget: Budget, steps: int,
            progress: bool) -> None:
    from flexgen.config import load_config
    from flexgen.sampling.run import sample_run

    overrides = [*overrides, f"sample.num_samples={budget.num_samples}", f"sample.steps={steps}", "sample.seed=0"]
    sample_run(load_config(CONFIGS / config_name, overrides), ckpt, folder, config=str(CONFIGS / config_name),
               overrides=overrides, device="cpu", progress=progress, overwrite=True)


def _rate(folder: Path, name: str, data_root: Path, out: Path, detector, i3d) -> list:
    """The records of one sample folder: the five SynthMotion numbers with intervals (and fvd with the standard
    I3D)."""
    from flexgen.metrics import synthmotion as sm
    from flexgen.metrics.evaluate import evaluate
    from flexgen.metrics.records import record_from_evaluation
    from flexgen.metrics.synthmotion_eval import evaluate_samples, records_of

    results = evaluate_samples(data_root / "heldout", folder, detector, out / "ref_stats")
    records = records_of(results, DATASET, folder, model_variant=name)
    if i3d is not None:
        protocol = sm.protocol(detector.config, num_real=results[0]["num_fake"])
        fvd = evaluate(dataclasses.replace(protocol, name=protocol.name.replace("synthmotion", "fvd")),
                       data_root / "heldout", folder, i3d, out / "ref_stats", with_kid=False)
        records.append(record_from_evaluation(fvd, DATASET, folder, model_variant=name))
    return records


def _teacache(out: Path, run: str, config: str, overrides: list[str], budget: Budget) -> tuple[float, list[str]]:
    """(threshold, cache overrides) of TeaCache on one trained model: its polynomial fitted here on 8 uncached samples
    (`flexgen calibrate`'s `calibrate`), at the smallest threshold that computes at most half the steps on them."""
    from flexgen.policies.cache.calibrate import THRESHOLDS, calibrate, coefficients_override, recording

    cfg = dataclasses.replace(load_config(CONFIGS / config, overrides), cache=recording())
    model = build_denoiser(cfg)
    model.load_pretrained(out / run / "ema.safetensors", routers_required=True)
    fitted = calibrate(model.eval(), cfg, list(range(8)), sampler=SAMPLER, steps=budget.steps,
                       cfg_scale=cfg.sample.cfg_scale, batch_size=4, thresholds=THRESHOLDS)
    half = [row["threshold"] for row in fitted["thresholds"] if row["steps_computed"] <= budget.steps / 2]
    threshold = min(half) if half else max(THRESHOLDS)
    return threshold, ["cache.method=teacache", f"cache.threshold={threshold:g}",
                       coefficients_override(fitted["coefficients"])]


def _step_caches(out: Path, runs: list[tuple], budget: Budget) -> list[tuple[int, str, str, list[str]]]:
    """The training-free rows: (index of the run in `runs`, row name, folder tag, cache overrides) of FORA every 2nd
    step on the dense model, and of TeaCache (`_teacache`) on each model of `CACHED`."""
    rows = [(0, f"{runs[0][0]} + FORA 2", "fora2", ["cache.method=fora", "cache.interval=2"])]
    for i, (name, run, config, _, overrides) in enumerate(runs):
        if run in CACHED:
            threshold, cache = _teacache(out, run, config, overrides, budget)
            rows.append((i, f"{name} + TeaCache {threshold:g}", f"teacache{threshold:g}", cache))
    return rows


def frontier_steps(steps: int, few: tuple[int, ...], cost_ratios: list[float]) -> list[int]:
    """The dense model's step counts below `steps`: the `few` cheapest, and each count whose cost per video
    matches a row's (its GMACs per video over the dense model's at `steps`), rounded to a multiple of a tenth of
    `steps` (rows of nearly one cost share a point; the board interpolates between points); sorted, no repeats."""
    grain = max(1, steps // 10)
    matched = {min(steps, max(grain, grain * round(steps * ratio / grain))) for ratio in cost_ratios}
    return sorted({*few, *matched} - {steps})


def _standard_i3d():
    """The standard I3D detector when its file is present (it is never downloaded), else None."""
    from flexgen.metrics.i3d import I3DDetector

    try:
        return I3DDetector()
    except FileNotFoundError:
        return None


def _side_by_side(folders: list[Path], path: Path, count: int = 8, zoom: int = 4) -> None:
    """One row per seed, one cell per model (in board order): the same seeds and labels side by side, every frame,
    each pixel shown as zoom × zoom."""
    from flexgen.data.media import read_video, save_grid

    cells = np.stack([read_video(folder / f"{i:04d}.mp4") for i in range(count) for folder in folders])
    cells = cells.repeat(zoom, axis=2).repeat(zoom, axis=3)                  # (N, F, H·zoom, W·zoom, 3)
    save_grid(path, cells, nrow=len(folders), frames_per_video=cells.shape[1], padding=2 * zoom)


def run_demo(out: str | Path = "results/demo", quick: bool = False, progress: bool = True) -> dict:
    from flexgen.metrics.leaderboard import leaderboard_main
    from flexgen.metrics.records import append_record
    from flexgen.metrics.synthmotion_eval import evaluate_floor, records_of

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; the demo writes a folder: give another --out")
    budget = BUDGETS["quick" if quick else "full"]
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    # 1. Data: real mp4 files, decoded by the real loaders. Each video is one training clip long (15 frames for 8
    # frames every 2nd), so every clip shows the whole crossing: where the shape is in a frame follows from the
    # class and the frame, which the model learns far sooner than from clips cut at random points of a longer one.
    data_root = out / "data"
    dense_cfg, dense_overrides = _config(DENSE[2], data_root, out, budget.dense_samples)
    frames = clip_span(dense_cfg.data.num_frames, dense_cfg.data.frame_interval)
    for split, per_class, seed in (("train", budget.train_per_class, 0), ("heldout", budget.heldout_per_class, 1)):
        make_synthetic(data_root / split, num_classes=CLASSES, clips_per_class=per_class, num_frames=frames,
                       seed=seed, task=TASK)
    timings["data_s"] = time.perf_counter() - t0

    # 2. The yardstick.
    t = time.perf_counter()
    detector = _train_detector(data_root, out, dense_cfg, budget)
    timings["detector_s"] = time.perf_counter() - t

    # 3. Dense training, then each policy fine-tuned from the run it names (FlexDiT and DyDiT from the dense EMA
    # weights, the composed model from FlexDiT's: it only has DyDiT's routers left to learn).
    runs = [(DENSE[0], DENSE[1], DENSE[2], dense_cfg, dense_overrides)]
    t = time.perf_counter()
    train(dense_cfg, out / DENSE[1], progress=progress)
    timings["train_dense_s"] = time.perf_counter() - t
    for name, run, config, start in POLICIES:
        samples = budget.policy_samples if start == DENSE[1] else budget.composed_samples
        cfg, overrides = _config(config, data_root, out, samples, init_from=out / start / "ema.safetensors")
        t = time.perf_counter()
        train(cfg, out / run, progress=progress)
        timings[f"train_{run}_s"] = time.perf_counter() - t
        runs.append((name, run, config, cfg, overrides))

    # 4-5. Sample every model with the same seeds and labels at `steps`, then the dense model at fewer steps (the
    # fewest, and the counts whose cost matches each policy's); rate every sample folder, and the real-vs-real floor.
    records_path = out / "records.jsonl"
    records_path.unlink(missing_ok=True)               # the board shows this run's models only
    i3d, rows, folders = _standard_i3d(), [], []

    def sample_and_rate(name: str, run: str, config: str, cfg: Config, overrides: list[str], steps: int,
                        tag: str = "") -> dict:
        folder = out / run / "-".join(["samples", *([str(steps)] if steps != budget.steps else []), *[tag] * bool(tag)])
        t = time.perf_counter()
        _sample(config, overrides, out / run / "ema.safetensors", folder, budget, steps, progress)
        timings[f"sample_{folder.relative_to(out).as_posix().replace('/', '_')}_s"] = time.perf_counter() - t
        records = _rate(folder, name, data_root, out, detector["detector"], i3d)
        for record in records:
            append_record(records_path, record)
        return {"model": name, "run": run, "steps": steps,
                "params_m": sum(p.numel() for p in build_denoiser(cfg).parameters()) / 1e6,
                "gmacs_per_forward": records[0].gflops_per_forward,       # MACs (flexgen sample's count)
                "gmacs_per_video": records[0].gflops_per_sample, "seconds_per_video": records[0].latency_s,
                **{r.metric: r.value for r in records}, **{f"{r.metric}_interval": r.interval for r in records},
                "protocol": records[0].protocol, "sampler": f"{cfg.sample.sampler}-{steps}",
                "cfg_scale": cfg.sample.cfg_scale, "samples": str(folder)}

    for name, run, config, cfg, overrides in runs:
        rows.append(sample_and_rate(name, run, config, cfg, overrides, budget.steps))
        folders.append(Path(rows[-1]["samples"]))
    t = time.perf_counter()
    caches = _step_caches(out, runs, budget)         # FORA, and TeaCache calibrated on each model of CACHED
    timings["calibrate_s"] = time.perf_counter() - t
    for i, name, tag, cache in caches:
        rows.append(sample_and_rate(name, *runs[i][1:4], [*runs[i][4], *cache], budget.steps, tag))
    ratios = [row["gmacs_per_video"] / rows[0]["gmacs_per_video"] for row in rows[1:]]
    for steps in frontier_steps(budget.steps, budget.few_steps, ratios):
        rows.append(sample_and_rate(*runs[0], steps))
    fewest = min(budget.few_steps)
    folders.append(out / DENSE[1] / f"samples-{fewest}")          # the picture's last column: dense at the fewest
    floor = records_of(evaluate_floor(data_root / "heldout", data_root / "heldout", detector["detector"],
                                      out / "ref_stats", budget.num_samples), DATASET, data_root / "heldout")
    for record in floor:
        append_record(records_path, record)

    _place_against_frontier(rows, records_path)

    # 6. The board, the side-by-side picture, the summary.
    _side_by_side(folders, out / "samples.png", count=min(8, budget.num_samples))
    leaderboard_main(argparse.Namespace(records=str(records_path), anchors="", out=str(out), format="md,html,png",
                                        png_size="1280x900"))
    timings["total_s"] = time.perf_counter() - t0
    result = {"rows": rows, "floor": {r.metric: {"value": r.value, "interval": r.interval} for r in floor},
              "timings": timings, "quick": quick, "budget": dataclasses.asdict(budget),
              "detector": {k: v for k, v in detector.items() if k != "detector"}, "standard_fvd": i3d is not None}
    atomic_write_text(out / "demo.json", json.dumps(result, indent=2))
    return result


def _place_against_frontier(rows: list[dict], records_path: Path) -> None:
    """Each row's place against the dense model's fewer-steps frontier, per metric (`flexgen.metrics.frontier`):
    row["vs_frontier"] = {metric: "above" | "on" | "below" | "frontier" | "–"}."""
    from flexgen.metrics.frontier import find_frontier, place
    from flexgen.metrics.records import build_tables, read_records

    for table in build_tables(read_records(records_path)):
        frontier = find_frontier(table.rows)
        for record in table.rows:
            for row in rows:
                if (record.model_variant, record.steps) == (row["model"], row["steps"]):
                    row.setdefault("vs_frontier", {})[table.key.metric] = place(record, frontier,
                                                                                table.higher_is_better)


METRICS = (("acc_synthmotion", "acc ↑", ".2f"), ("tone_synthmotion", "tone ↓", ".1f"),
           ("track_synthmotion", "track ↓", ".2f"), ("fd_synthmotion", "fd ↓", ".0f"))


LEGEND = ("acc: share of samples classified as the class (shape and direction) they were drawn for; tone (% of "
          "the contrast of its two colours) and track (pixels): distance from a flat two-colour clip and from a "
          "straight constant-speed crossing; fd: Fréchet distance of the detector's features to held-out real clips. "
          "[a, b]: 95% interval (bootstrap over samples; for fd re-centred on the estimate). vs fewer steps: above / "
          "on / below the dense model sampled with fewer steps at the same GMACs per video (on: intervals overlap).")


def _cell(value: float | None, interval: list[float] | None, fmt: str) -> str:
    if value is None:
        return "–"
    return f"{value:{fmt}}" + (f" [{interval[0]:{fmt}}, {interval[1]:{fmt}}]" if interval else "")


def summary_markdown(result: dict) -> str:
    """The demo's table: one row per model and step count, its cost, the SynthMotion numbers with their 95%
    intervals, and where it stands against the dense model at fewer steps; then the real-vs-real floor."""
    head = " | ".join(label for _, label, _ in METRICS)
    lines = [f"| model | sampler | GMACs / video | s / video (CPU) | {head} | vs fewer steps (acc · tone · track · "
             "fd) |", "|---|---|---|---|" + "---|" * len(METRICS) + "---|"]
    for r in result["rows"]:
        seconds = "–" if r["seconds_per_video"] is None else f"{r['seconds_per_video']:.2f}"
        cells = " | ".join(_cell(r.get(m), r.get(f"{m}_interval"), fmt) for m, _, fmt in METRICS)
        places = " · ".join(r.get("vs_frontier", {}).get(m, "–") for m, _, _ in METRICS)
        lines.append(f"| {r['model']} | {r['sampler']}, CFG {r['cfg_scale']:g} | {r['gmacs_per_video']:.2f} | "
                     f"{seconds} | {cells} | {places} |")
    floor = result["floor"]
    cells = " | ".join(_cell(floor[m]["value"], floor[m]["interval"], fmt) if m in floor else "–"
                       for m, _, fmt in METRICS)
    lines.append(f"| real clips (floor: a second draw) | – | – | – | {cells} | – |")
    d, t = result["detector"], result["timings"]
    protocol = result["rows"][0]["protocol"]
    lines += ["", f"Detector: SynthMotion classifier (sha256 {d['sha256'][:12]}…), held-out accuracy on real clips "
                  f"{d['heldout_accuracy']:.3f} ({d['heldout_videos']} videos). Protocol {protocol}. " + LEGEND +
              ("" if result["standard_fvd"] else " Standard FVD: the I3D file is absent (flexgen eval fvd)."),
              "", "time: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in t.items())]
    return "\n".join(lines) + "\n"
