"""`flexgen demo`: the whole loop on embedded data, on a CPU, in minutes, rated by a detector it trains itself.

1. Data: a synthetic clip set (one shape moving right, left, up or down over a plain background: four motion
   classes) as real mp4 files in the UCF101 layout, plus held-out clips, with `flexgen.synthetic`.
2. The yardstick: a small video classifier of the motion classes (`flexgen.metrics.synthmotion`), trained on the
   training clips, saved and hashed; its held-out accuracy on real clips is reported.
3. A dense Latte (`flexgen/configs/demo/demo-dense.yaml`; `configs/demo` in a checkout), then each policy of
   `POLICIES` fine-tuned from the dense EMA weights with the same budget (FlexDiT: `demo-flex.yaml`, DyDiT:
   `demo-dydit.yaml`, the two composed: `demo-flexdydit.yaml`).
4. Every model samples the same seeds and labels (`flexgen.sampling.run.sample_run`: mp4 files + samples.json).
5. Every sample folder goes through `flexgen eval`'s statistics: the Fréchet distance to held-out real clips in
   the classifier's feature space (`fd_synthmotion`, never "FVD"), the class accuracy of the samples
   (`acc_synthmotion`), and real FVD when the standard I3D file is present. Each number is a `Record`.
6. `flexgen leaderboard` renders the board (leaderboard.md / .html / .png: MACs vs quality); samples.png shows the
   models' samples side by side for the same seeds; demo.json holds the summary.

The design choices (16×16 frames with 4×4 patches, one clip per video, v-prediction, logit-normal timesteps, the
budgets), each measured against the one before it, are in DEVELOPERS.md. `--quick` runs the same steps with tiny
budgets (the tests run it). Everything it needs ships inside the package, so it runs from an installed wheel.
Measured: docs/benchmarks.md (the board, the samples).
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
    heldout_per_class: int      # held-out clips per class (the real set: one clip per video)
    dense_samples: int          # clips seen by the dense model
    policy_samples: int         # clips seen by each dynamic model's fine-tuning (the same for every policy)
    num_samples: int            # videos sampled per model (the same seeds and labels for every model)
    steps: int                  # sampler steps
    detector_steps: int         # classifier training steps


BUDGETS = {"full": Budget(32, 16, 34000, 8500, 64, 50, 300), "quick": Budget(4, 4, 64, 32, 16, 5, 20)}

# The dense model, then one row per density policy: (row name, run folder, config). A later policy (DyDiT, the
# composed model) adds its line here and is fine-tuned, sampled and rated exactly like FlexDiT.
DENSE = ("Latte (dense)", "dense", "demo-dense.yaml")
POLICIES = [("FlexDiT-Latte", "flexdit", "demo-flex.yaml"), ("DyDiT-Latte", "dydit", "demo-dydit.yaml"),
            ("FlexDiT∘DyDiT-Latte", "flexdydit", "demo-flexdydit.yaml")]


def _config(name: str, data_root: Path, out: Path, samples: int, init_from: Path | None = None) -> tuple[Config,
                                                                                                          list[str]]:
    overrides = [f"data.root={data_root / 'train'}", f"train.results_dir={out}", f"train.total_samples={samples}"]
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


def _sample(config_name: str, overrides: list[str], ckpt: Path, folder: Path, budget: Budget, progress: bool
            ) -> None:
    from flexgen.config import load_config
    from flexgen.sampling.run import sample_run

    overrides = [*overrides, f"sample.num_samples={budget.num_samples}", f"sample.steps={budget.steps}",
                 "sample.seed=0"]
    sample_run(load_config(CONFIGS / config_name, overrides), ckpt, folder, config=str(CONFIGS / config_name),
               overrides=overrides, device="cpu", progress=progress, overwrite=True)


def _rate(folder: Path, count: int, name: str, data_root: Path, out: Path, detector, i3d) -> list:
    """The records of one sample folder: fd_synthmotion, acc_synthmotion (and fvd with the standard I3D)."""
    from flexgen.metrics import synthmotion as sm
    from flexgen.metrics.evaluate import evaluate
    from flexgen.metrics.records import record_from_evaluation

    protocol = sm.protocol(detector.config, num_real=count)
    result = evaluate(protocol, data_root / "heldout", folder, detector, out / "ref_stats", with_kid=False)
    fd = record_from_evaluation(result, DATASET, folder, model_variant=name)
    accuracy = sm.sample_accuracy(folder, detector, protocol)
    records = [fd, dataclasses.replace(fd, metric="acc_synthmotion", value=accuracy["value"],
                                       extra={"per_class": accuracy["per_class"]})]
    if i3d is not None:
        fvd = evaluate(dataclasses.replace(protocol, name=protocol.name.replace("synthmotion", "fvd")),
                       data_root / "heldout", folder, i3d, out / "ref_stats", with_kid=False)
        records.append(record_from_evaluation(fvd, DATASET, folder, model_variant=name))
    return records


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
    make_synthetic(data_root / "train", clips_per_class=budget.train_per_class, num_frames=frames, seed=0)
    make_synthetic(data_root / "heldout", clips_per_class=budget.heldout_per_class, num_frames=frames, seed=1)
    timings["data_s"] = time.perf_counter() - t0

    # 2. The yardstick.
    t = time.perf_counter()
    detector = _train_detector(data_root, out, dense_cfg, budget)
    timings["detector_s"] = time.perf_counter() - t

    # 3. Dense training, then each policy fine-tuned from the dense EMA weights with the same budget.
    runs = [(DENSE[0], DENSE[1], DENSE[2], dense_cfg, dense_overrides)]
    t = time.perf_counter()
    train(dense_cfg, out / DENSE[1], progress=progress)
    timings["train_dense_s"] = time.perf_counter() - t
    dense_ema = out / DENSE[1] / "ema.safetensors"
    for name, run, config in POLICIES:
        cfg, overrides = _config(config, data_root, out, budget.policy_samples, init_from=dense_ema)
        t = time.perf_counter()
        train(cfg, out / run, progress=progress)
        timings[f"train_{run}_s"] = time.perf_counter() - t
        runs.append((name, run, config, cfg, overrides))

    # 4-5. Sample every model with the same seeds and labels, rate every sample folder.
    records_path = out / "records.jsonl"
    records_path.unlink(missing_ok=True)               # the board shows this run's models only
    i3d, rows, folders = _standard_i3d(), [], []
    for name, run, config, cfg, overrides in runs:
        folder = out / run / "samples"
        t = time.perf_counter()
        _sample(config, overrides, out / run / "ema.safetensors", folder, budget, progress)
        timings[f"sample_{run}_s"] = time.perf_counter() - t
        records = _rate(folder, budget.num_samples, name, data_root, out, detector["detector"], i3d)
        for record in records:
            append_record(records_path, record)
        rows.append({"model": name, "run": run,
                     "params_m": sum(p.numel() for p in build_denoiser(cfg).parameters()) / 1e6,
                     "gmacs_per_forward": records[0].gflops_per_forward,       # MACs (flexgen sample's count)
                     "gmacs_per_video": records[0].gflops_per_sample, "seconds_per_video": records[0].latency_s,
                     **{r.metric: r.value for r in records}, "protocol": records[0].protocol,
                     "sampler": f"{cfg.sample.sampler}-{budget.steps}", "cfg_scale": cfg.sample.cfg_scale,
                     "samples": str(folder)})
        folders.append(folder)

    # 6. The board, the side-by-side picture, the summary.
    _side_by_side(folders, out / "samples.png", count=min(8, budget.num_samples))
    leaderboard_main(argparse.Namespace(records=str(records_path), anchors="", out=str(out), format="md,html,png",
                                        png_size="1280x720"))
    timings["total_s"] = time.perf_counter() - t0
    result = {"rows": rows, "timings": timings, "quick": quick, "budget": dataclasses.asdict(budget),
              "detector": {k: v for k, v in detector.items() if k != "detector"},
              "standard_fvd": i3d is not None}
    atomic_write_text(out / "demo.json", json.dumps(result, indent=2))
    return result


def summary_markdown(result: dict) -> str:
    """The demo's table: one row per model, its cost and the detector's two numbers."""
    lines = ["| model | params | GMACs / forward | GMACs / video | s / video (CPU) | fd_synthmotion ↓ | "
             "acc_synthmotion ↑ | sampler |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        seconds = "–" if r["seconds_per_video"] is None else f"{r['seconds_per_video']:.2f}"
        lines.append(f"| {r['model']} | {r['params_m']:.2f} M | {r['gmacs_per_forward']:.4f} | "
                     f"{r['gmacs_per_video']:.2f} | {seconds} | {r['fd_synthmotion']:.2f} | "
                     f"{r['acc_synthmotion']:.3f} | {r['sampler']}, CFG {r['cfg_scale']} |")
    d, t = result["detector"], result["timings"]
    protocol = result["rows"][0]["protocol"]
    lines += ["", f"Detector: SynthMotion classifier (sha256 {d['sha256'][:12]}…), held-out accuracy on real clips "
                  f"{d['heldout_accuracy']:.3f} ({d['heldout_videos']} videos). Protocol {protocol}"
                  " (fd: Fréchet distance of its features, generated vs held-out real clips; acc: share of samples "
                  "classified as the class they were drawn for)." +
              ("" if result["standard_fvd"] else " Standard FVD: the I3D file is absent (flexgen eval fvd)."),
              "", "time: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in t.items())]
    return "\n".join(lines) + "\n"
