"""`flexgen demo`: the whole loop on embedded data, on a CPU, in minutes.

1. Generate a synthetic clip set (moving shapes, four motion classes) as real mp4 files in the UCF101 layout,
   plus held-out clips, with `flexgen.synthetic`.
2. Train a tiny dense Latte on it (`flexgen/configs/demo/tiny.yaml`, pixel space; `configs/demo` in a checkout).
3. Convert it to FlexDiT (`flexgen/configs/demo/tiny-flex.yaml`) and fine-tune briefly.
4. Sample videos from both EMA models (mp4 + a preview grid).
5. Measure both: held-out loss on fixed timesteps and noise, MACs per forward and per sampled video, and
   latency per video. (FVD needs the standard I3D weights and thousands of videos: `flexgen eval fvd`.)
6. Print and write a small leaderboard (`leaderboard.md`, `leaderboard.json`).

`--quick` runs the same steps with tiny budgets (the CI runs it); the full demo fits in about ten minutes on two
CPU cores. Everything it needs ships inside the package, so it runs from an installed wheel in any folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from flexgen.autoencoder import Autoencoder
from flexgen.config import Config, load_config
from flexgen.diffusion import GaussianDiffusion
from flexgen.files import atomic_write
from flexgen.registry import build_denoiser
from flexgen.sample import flops_per_sample
from flexgen.synthetic import make_synthetic
from flexgen.train import heldout_loss, train

CONFIGS = Path(__file__).resolve().parent / "configs" / "demo"        # package data (configs/demo in a checkout)

# (training clips per class, held-out clips per class, dense clips seen, FlexDiT clips seen, sampled videos, steps)
BUDGETS = {"full": (32, 8, 9600, 2400, 16, 50), "quick": (4, 2, 64, 32, 4, 5)}


def _configs(data_root: Path, out: Path, dense_samples: int, flex_samples: int) -> tuple[Config, Config]:
    common = [f"data.root={data_root / 'train'}", f"train.results_dir={out}"]
    dense = load_config(CONFIGS / "tiny.yaml", [*common, f"train.total_samples={dense_samples}"])
    flex = load_config(CONFIGS / "tiny-flex.yaml", [*common, f"train.total_samples={flex_samples}",
                                                    f"train.init_from={out / 'dense' / 'ema.safetensors'}"])
    return dense, flex


def _heldout(model, cfg: Config) -> dict:
    """Held-out loss of `model` on every clip of cfg.data (one fixed clip window each)."""
    from flexgen.data.video import build_dataset

    data = build_dataset(cfg.data, split="train", seed=12345)
    batch = torch.utils.data.default_collate([data[i] for i in range(len(data))])
    video, kwargs = model.prepare_batch(batch, torch.device("cpu"))           # no generator: nothing dropped
    x0 = Autoencoder.from_config(cfg.autoencoder).encode(video)
    return heldout_loss(model, x0, GaussianDiffusion.from_config(cfg.diffusion), kwargs, timesteps=20)


def _sample(model, cfg: Config, out_dir: Path, num: int, steps: int) -> dict:
    from flexgen.data.media import save_grid, write_video
    from flexgen.sample import generate

    out_dir.mkdir(parents=True, exist_ok=True)
    videos, start = [], time.perf_counter()
    for indices, _labels, batch in generate(model, Autoencoder.from_config(cfg.autoencoder), num_samples=num,
                                            seed=cfg.sample.seed, sampler=cfg.sample.sampler, steps=steps,
                                            cfg_scale=cfg.sample.cfg_scale, batch_size=cfg.sample.batch_size,
                                            clip_denoised=cfg.sample.clip_denoised, device="cpu",
                                            dtype=torch.float32, progress=False):
        for i, video in zip(indices, batch, strict=True):
            write_video(out_dir / f"{int(i):04d}.mp4", video, fps=8)
        videos.append(batch)
    seconds = time.perf_counter() - start
    save_grid(out_dir / "grid.png", torch.cat(videos))
    return {"seconds_per_video": seconds / num, "videos": num}


def run_demo(out: str | Path = "results/demo", quick: bool = False, progress: bool = True) -> dict:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; the demo writes a folder: give another --out")
    per_class, heldout_per_class, dense_samples, flex_samples, num_videos, steps = BUDGETS["quick" if quick else "full"]
    timings = {}
    t0 = time.perf_counter()

    # 1. Data: real mp4 files, decoded by the real loaders.
    data_root = out / "data"
    make_synthetic(data_root / "train", clips_per_class=per_class, seed=0)
    make_synthetic(data_root / "heldout", clips_per_class=heldout_per_class, seed=1)
    timings["data_s"] = time.perf_counter() - t0

    # 2-3. Dense training, then FlexDiT conversion + fine-tuning from the dense EMA weights.
    dense_cfg, flex_cfg = _configs(data_root, out, dense_samples, flex_samples)
    t = time.perf_counter()
    train(dense_cfg, out / "dense", progress=progress)
    timings["train_dense_s"] = time.perf_counter() - t
    t = time.perf_counter()
    train(flex_cfg, out / "flexdit", progress=progress)
    timings["train_flexdit_s"] = time.perf_counter() - t

    # 4-5. Sample and measure both EMA models.
    rows = []
    heldout_cfg = load_config(CONFIGS / "tiny.yaml", [f"data.root={data_root / 'heldout'}", "data.hflip=false"])
    for name, cfg, run in (("Latte (dense)", dense_cfg, "dense"), ("FlexDiT-Latte", flex_cfg, "flexdit")):
        model = build_denoiser(cfg)
        model.load_pretrained(out / run / "ema.safetensors")
        model.eval()
        loss = _heldout(model, heldout_cfg)
        sampled = _sample(model, cfg, out / run / "samples", num_videos, steps)
        macs = flops_per_sample(model, cfg.sample.sampler, steps, cfg.sample.cfg_scale)
        rows.append({"model": name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                     "gmacs_per_forward": macs["gmacs_per_forward"],
                     "gmacs_per_video": macs["gmacs_per_sample"],
                     "seconds_per_video": sampled["seconds_per_video"], "heldout_mse": loss["mse"],
                     "heldout_loss": loss["loss"], "fvd": None,
                     "sampler": f"{cfg.sample.sampler}-{steps}", "cfg_scale": cfg.sample.cfg_scale,
                     "samples": str(out / run / "samples")})
    timings["total_s"] = time.perf_counter() - t0

    result = {"rows": rows, "timings": timings, "quick": quick,
              "note": "Held-out loss is the ε-MSE + VLB on 20 fixed timesteps with fixed noise over held-out "
                      "synthetic clips. FVD is not computed here (it needs the standard I3D weights and thousands of "
                      "videos: flexgen eval fvd)."}
    for name, text in (("leaderboard.json", json.dumps(result, indent=2)), ("leaderboard.md",
                                                                           leaderboard_markdown(result))):
        with atomic_write(out / name) as tmp:
            tmp.write_text(text)
    return result


def leaderboard_markdown(result: dict) -> str:
    lines = ["| model | params | GMACs / forward | GMACs / video | s / video (CPU) | held-out ε-MSE | held-out loss | "
             "FVD | sampler |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        fvd = "–" if r["fvd"] is None else f"{r['fvd']:.1f}"
        lines.append(f"| {r['model']} | {r['params_m']:.2f} M | {r['gmacs_per_forward']:.3f} | "
                     f"{r['gmacs_per_video']:.1f} | {r['seconds_per_video']:.2f} | {r['heldout_mse']:.4f} | "
                     f"{r['heldout_loss']:.4f} | {fvd} | {r['sampler']}, CFG {r['cfg_scale']} |")
    t = result["timings"]
    lines += ["", result["note"], "", "time: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in t.items())]
    return "\n".join(lines) + "\n"
