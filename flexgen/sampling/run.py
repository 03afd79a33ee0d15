"""One sampling run of a Latte / DiT model into a folder: this rank's shard of the samples, the preview grid, the
record (`manifest.SampleManifest`: checkpoint hash, seeds, labels, sampler, cost per sample, the model and
its policy) and, for one-frame models, ADM's `samples.npz`. Samples are written as they are made: a re-run draws only
the missing ones; another run's folder is refused unless `overwrite`. Under torchrun every rank draws its shard
(`flexgen.dist`); `flexgen sample` and the demo call `sample_run`."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

GRID_SAMPLES = 16                 # samples shown in grid.png


def sample_run(run: Any, ckpt: str | Path, out: str | Path, *, config: str = "", overrides: list[str] = (),
               device: str | None = None, dtype: str = "float32", fps: int = 8, sha256: str | None = None,
               progress: bool = True, overwrite: bool = False, npz: bool = False) -> dict[str, Any] | None:
    """Draw `run.sample`'s samples of the model of `run` with weights `ckpt` into `out`; returns the record on rank 0
    (None on other ranks). `config` and `overrides` are what the record says the run was made from."""
    import torch.distributed as torch_dist

    from flexgen import dist

    own_group = not torch_dist.is_initialized()
    env = dist.init(device)
    try:
        with contextlib.ExitStack() as hold:            # the output folder, held from start_run to the end
            return _sample_run(run, Path(ckpt), Path(out), env, config=config, overrides=list(overrides),
                               dtype=dtype, fps=fps, sha256=sha256, progress=progress, overwrite=overwrite, npz=npz,
                               hold=hold)
    finally:
        if own_group:
            dist.shutdown()


def _barrier(env) -> None:
    import torch.distributed as torch_dist

    if env.world_size > 1:
        torch_dist.barrier(device_ids=[env.device.index] if env.device.type == "cuda" else None)


def _sample_run(run, ckpt: Path, out: Path, env, *, config, overrides, dtype, fps, sha256, progress, overwrite,
                npz, hold) -> dict[str, Any] | None:
    import numpy as np
    import torch

    from flexgen.autoencoder import Autoencoder
    from flexgen.config import config_to_dict
    from flexgen.data.media import save_grid, video_codec
    from flexgen.diffusion import linear_betas
    from flexgen.files import file_sha256
    from flexgen.policies.cache.base import check_batch_bound
    from flexgen.registry import build_denoiser, family_of
    from flexgen.sampling import manifest as mf
    from flexgen.sampling.cost import flops_per_sample, measured_cost, resumed_cost
    from flexgen.sampling.draw import check_options, generate
    from flexgen.sampling.files import ADM_NPZ, read_sample, sample_file, write_adm_npz, write_sample
    from flexgen.sampling.labels import resolve_labels

    s, diffusion, device = run.sample, run.diffusion, env.device
    family = family_of(run.model.preset)
    if family.sample_command != "flexgen sample":
        raise ValueError(f"model.preset {run.model.preset} is sampled with `{family.sample_command}`, "
                         "not `flexgen sample`")
    model = build_denoiser(run)
    model.load_pretrained(ckpt, sha256=sha256, routers_required=True)
    model = model.eval().to(device=device, dtype=getattr(torch, dtype))
    autoencoder = Autoencoder.from_config(run.autoencoder).to(device).eval()
    betas = linear_betas(diffusion.num_timesteps, diffusion.beta_start, diffusion.beta_end)
    video_model = model.config.temporal and model.config.num_frames > 1
    labels = resolve_labels(s.num_samples, s.seed, model.config.num_classes)
    sections = model.policy.sections()
    record = mf.SampleManifest(
        command="flexgen sample", family="latte" if video_model else "dit", model=run.model.preset,
        method=model.policy.label(),
        checkpoint=str(ckpt), checkpoint_sha256=file_sha256(ckpt), sampler=s.sampler, steps=s.steps,
        cfg_scale=s.cfg_scale, seed=s.seed, storage="mp4" if video_model else "png", world_size=env.world_size,
        samples=mf.entries(s.num_samples, s.seed, lambda i: sample_file(out, i, video_model).name, labels),
        settings={"config": config, "overrides": overrides, "clip_denoised": s.clip_denoised,
                  "batch_size": s.batch_size, "dtype": dtype, "fps": fps if video_model else None,
                  "codec": video_codec() if video_model else "png", "model_class": type(model.net).__name__,
                  "model": dataclasses.asdict(model.config),
                  "density": sections.get("density"), "dydit": sections.get("dydit"), "policy": sections,
                  "cfg_channels": s.cfg_channels, "run_config": config_to_dict(run)},
        identity={"model": dataclasses.asdict(model.config), "clip_denoised": s.clip_denoised, "dtype": dtype,
                  "density": sections.get("density"),      # (and any other section that changes the samples)
                  **{k: v for k, v in sections.items() if k not in ("density", "dydit")},
                  "dydit": sections.get("dydit"), "cfg_channels": s.cfg_channels,
                  "diffusion": dataclasses.asdict(diffusion),
                  "fps": fps if video_model else None, "codec": video_codec() if video_model else "png"})
    check_options(model, s.cfg_scale, s.batch_size, s.cfg_channels)
    if run.cache.calibration:                       # fitted on another model or size: refused; another run: warned
        from flexgen.policies.cache.provenance import check_fitted_on, uncached_label

        check_fitted_on(run.cache.calibration, {
            "model": run.model.preset, "checkpoint_sha256": record.checkpoint_sha256,
            "image_size": run.data.image_size, "num_frames": model.config.num_frames,
            "policy": uncached_label(model.policy), "sampler": s.sampler, "steps": s.steps, "cfg_scale": s.cfg_scale})
    if npz and video_model:
        raise ValueError("--npz writes ADM's image batch: it is for one-frame (DiT) models")
    path = out / "samples.json"
    mine = mf.todo(record, out, env.rank, env.world_size, overwrite=overwrite)
    shard = mf.shard_indices(s.num_samples, env.rank, env.world_size)
    found = mf.previous(path, overwrite)               # (what start_run replaces)
    before, had = mf.previous_cost(found, len(shard) - len(mine))
    check_batch_bound(model.policy, env.world_size, 0 < len(mine) < len(shard))
    # ADM's batch of an earlier invocation stays this run's only while no sample changes
    adm_batch = (found or record).settings.get("npz") if not mine else None
    if env.is_main:
        mf.start_run(record, path, overwrite=overwrite, hold=hold)
        if adm_batch is None:
            (out / ADM_NPZ).unlink(missing_ok=True)
    _barrier(env)

    meter = model.policy.meter(model)              # a measured policy (DyDiT) adds up what each forward ran
    started = time.perf_counter()
    for batch in generate(model, autoencoder, num_samples=s.num_samples, seed=s.seed, sampler=s.sampler,
                          steps=s.steps, cfg_scale=s.cfg_scale, batch_size=s.batch_size, indices=mine,
                          betas=betas, clip_denoised=s.clip_denoised, device=device, dtype=getattr(torch, dtype),
                          progress=env.is_main and progress, cfg_channels=s.cfg_channels, meter=meter):
        for index, pixels in zip(batch.indices, batch.videos, strict=True):
            write_sample(sample_file(out, index, video_model), pixels, fps=fps)
    seconds = time.perf_counter() - started
    _barrier(env)
    if not env.is_main:
        return None

    shown = [read_sample(sample_file(out, i, video_model)) for i in range(min(s.num_samples, GRID_SAMPLES))]
    if shown:
        save_grid(out / "grid.png", np.stack(shown), nrow=4)
        record.grid = "grid.png"
    now = {"seconds_per_sample": seconds / len(mine)} if mine else {}    # rank 0's wall time, batch_size samples
    if meter is not None and mine:                                       # DyDiT: the cost of rank 0's samples
        now.update(measured_cost(model, meter, len(mine)))
    record.cost = resumed_cost(flops_per_sample(model, s.sampler, s.steps, s.cfg_scale, betas), now, len(mine),
                               before, had)
    if npz:                                 # recorded in the manifest: eval adm scores only the batch it records
        write_adm_npz(out / ADM_NPZ, [sample_file(out, i, video_model) for i in range(s.num_samples)], labels)
        adm_batch = {"file": ADM_NPZ, "count": s.num_samples, "sha256": file_sha256(out / ADM_NPZ)}
        print(f"wrote {out / ADM_NPZ} ({s.num_samples} samples, ADM's arr_0 layout)")
    if adm_batch is not None:
        record.settings["npz"] = adm_batch
    mf.finish_run(record, path)
    grid = ", grid.png" if record.grid else ""
    print(f"wrote {s.num_samples} samples ({len(mine)} drawn now on rank 0){grid} and samples.json to {out}")
    return dataclasses.asdict(record)
