"""One training loop for every backbone and policy. The loop speaks to the model only through
`flexgen.backbones.base.Denoiser`: the family builds its dataset, prepares each batch (with the
classifier-free-guidance condition dropout), and its policy chooses the training timesteps and the objective.

    flexgen train --config configs/video/ffs/latte-xl2.yaml
    torchrun --nproc_per_node=8 -m flexgen train --config configs/video/ffs/flexlatte-xl2.yaml

- AdamW, EMA, optional bf16 autocast, gradient checkpointing, gradient clipping once `clip_after_samples` clips
  were seen; progress counted in samples; tqdm on rank 0; scalars to TensorBoard and `stats.jsonl`.
- The run directory holds the resolved `config.yaml`, `checkpoints/latest.pt` (model, EMA, optimizer, step) and the
  EMA export (`ema.safetensors`, or PixArt-α's `transformer/` folder). Re-running resumes.
- PixArt-α trains on images with cached T5 embeddings (missing captions are encoded once, on rank 0).
- Randomness is re-seeded every step from (seed, step) for what all ranks share and (seed, rank, step) for what
  each rank draws, and the data order is a function of (seed, epoch), so a resumed run reaches exactly the
  parameters of an uninterrupted one.
- `train.fsdp` (under torchrun) shards every block and the model with FSDP2 instead of replicating it (DDP);
  checkpoints hold full, unsharded state either way.
- `timestep_sampler()` and `training_losses` come from the policy (FlexDiT: one density stage per micro-batch;
  DyDiT: stratified t, its FLOPs budget and warm-up loss); every term the objective returns is logged (DyDiT's
  realised fraction, λ target, keep rates per block). `train.skip_on_spike` skips an update whose pre-clip
  gradient norm exceeds `grad_clip` (DyDiT's rule) and logs the share skipped.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from flexgen import dist
from flexgen.autoencoder import Autoencoder, vae_folder
from flexgen.backbones.base import Denoiser
from flexgen.checkpoint import load_torch_checkpoint
from flexgen.config import Config, config_from_dict, config_to_dict, save_config
from flexgen.diffusion import GaussianDiffusion
from flexgen.files import atomic_write, atomic_write_text, folder_lock
from flexgen.registry import build_denoiser, denoiser_class

# Keys that may change between the first run and a resume (everything else must match the saved config).
RESUMABLE_CHANGES = {("train", "total_samples"), ("train", "log_every_samples"), ("train", "ckpt_every_samples"),
                     ("data", "num_workers"), ("data", "root")}


def run_identity(cfg: Config) -> dict:
    """What makes a run this run: the resolved configuration without the keys a resume may change (and without
    where results go). The default run directory is named by it, so extending a run or reordering overrides finds
    the same directory."""
    data = config_to_dict(cfg)
    for section, key in (*RESUMABLE_CHANGES, ("train", "results_dir")):
        data[section].pop(key, None)
    return data


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers (a simple polynomial mix; distinct tuples give distinct streams)."""
    h = 0
    for p in parts:
        h = (h * 1_000_003 + int(p) + 1) % (2 ** 63 - 1)
    return h


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(*parts))


# ----------------------------------------------------------------------------------------------------------
# Data order: a permutation per (seed, epoch), sharded over ranks, resumable at any step.


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int, rank: int,
                  world_size: int) -> list[list[int]]:
    """This rank's batches of epoch `epoch`: one shared permutation, global batches of batch_size·world_size
    items (the last incomplete one dropped), rank r taking its slice of each."""
    order = torch.randperm(num_items, generator=_generator(seed, epoch)).tolist()
    global_batch = batch_size * world_size
    return [order[i + rank * batch_size: i + (rank + 1) * batch_size]
            for i in range(0, num_items - global_batch + 1, global_batch)]


def _batches(dataset: Dataset, batches: list[list[int]], num_workers: int) -> Iterator[dict]:
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                        persistent_workers=False, pin_memory=torch.cuda.is_available())
    yield from loader


# ----------------------------------------------------------------------------------------------------------
# Run directory, checkpoints.


def _check_resumable(run_dir: Path, cfg: Config) -> None:
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = config_to_dict(config_from_dict(yaml.safe_load(saved_path.read_text()), str(saved_path)))
    current = config_to_dict(cfg)
    changed = [f"{section}.{key}: {saved[section][key]!r} -> {current[section][key]!r}"
               for section in current for key in current[section]
               if saved[section][key] != current[section][key] and (section, key) not in RESUMABLE_CHANGES]
    if changed:
        raise ValueError(f"{run_dir} holds a run with a different configuration ({'; '.join(changed)}); "
                         "use another run directory, or the same configuration to resume")


def _save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:         # a crash never leaves a half-written latest.pt
        torch.save(state, tmp)


def drop_logged_after(path: Path, step: int) -> None:
    """Remove the records of steps after `step` from a stats.jsonl (rewritten atomically; a torn last line of a
    killed write goes too)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _denoiser_keys(state: dict) -> dict:
    """Checkpoints hold the Denoiser's state (`net.` + the network's keys); a latest.pt written before the
    backbone interface held the bare network (Latte) or `transformer.` + its keys (PixArt-α): renamed on load."""
    if any(k.startswith("net.") for k in state):
        return state
    return {"net." + k.removeprefix("transformer."): v for k, v in state.items()}


# ----------------------------------------------------------------------------------------------------------
# FSDP (train.fsdp under torchrun): every transformer block is a shard unit, then the whole model.


def shard(model: Denoiser) -> None:
    from torch.distributed.fsdp import fully_shard

    for block in model.shard_units():
        fully_shard(block)
    fully_shard(model)


def full_state_dicts(model: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     fsdp: bool) -> dict:
    """Unsharded model, EMA and optimizer state on the CPU (under FSDP every rank must call this)."""
    if not fsdp:
        return {"model": model.state_dict(), "ema": ema.state_dict(), "opt": optimizer.state_dict()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {"model": get_model_state_dict(model, options=full), "ema": get_model_state_dict(ema, options=full),
            "opt": get_optimizer_state_dict(model, optimizer, options=full)}


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict, fsdp: bool) -> None:
    if not fsdp:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
            p_ema.lerp_(p, 1.0 - decay)


# ----------------------------------------------------------------------------------------------------------
# The loop.


def train(cfg: Config, run_dir: str | Path, *, dataset: Dataset | None = None, device: str | None = None,
          stop_after_steps: int | None = None, progress: bool = True) -> dict:
    """Train (or resume) the run in `run_dir`. `dataset` overrides the configured one (tests, demo);
    `stop_after_steps` ends this call early as if interrupted. Returns a summary of the run. The run directory is
    held for the run (`files.folder_lock`, by rank 0): a second training into it is refused."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"run directory {run_dir} is a file, not a folder; pass another --run-dir")
    held = folder_lock(run_dir, "flexgen train") if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext()
    with held:
        return _train(cfg, run_dir, dataset=dataset, device=device, stop_after_steps=stop_after_steps,
                      progress=progress)


def _train(cfg: Config, run_dir: Path, *, dataset: Dataset | None, device: str | None,
           stop_after_steps: int | None, progress: bool) -> dict:
    env = dist.init(device)
    tc = cfg.train
    ckpt_dir = run_dir / "checkpoints"                  # (run_dir itself: checked by `train` before it is held)
    if ckpt_dir.exists() and not ckpt_dir.is_dir():
        raise NotADirectoryError(f"run directory {ckpt_dir} is a file, not a folder; pass another --run-dir")
    if env.is_main:                             # (checkpoints/ is made by the first checkpoint)
        _check_resumable(run_dir, cfg)
    dist.barrier()

    # The VAE's folder, then the data: a wrong folder is reported before a large model is built.
    if cfg.autoencoder.kind == "sd-vae":
        vae_folder(cfg.autoencoder)
    family = denoiser_class(cfg.model.preset)
    if dataset is None:
        dataset = family.training_dataset(cfg, is_main=env.is_main, device=env.device, progress=progress)
    torch.manual_seed(tc.seed)                            # identical initial weights on every rank
    model = build_denoiser(cfg).to(env.device)
    model.use_dataset(dataset)
    if tc.init_from:                                      # dense -> FlexDiT conversion happens here
        model.load_pretrained(tc.init_from)
    timesteps = model.timestep_sampler()
    model.set_grad_checkpointing(tc.grad_checkpointing)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    # A latent store (data.dataset latents) brings its own encoder: stored posteriors, no VAE is loaded.
    autoencoder = getattr(dataset, "encoder", None) or Autoencoder.from_config(cfg.autoencoder)
    autoencoder = autoencoder.to(env.device)

    global_batch = tc.batch_size * env.world_size
    total_steps = math.ceil(tc.total_samples / global_batch)
    step, state = 0, None
    latest = ckpt_dir / "latest.pt"
    if latest.is_file():                                  # resume: full weights are loaded before any sharding
        state = load_torch_checkpoint(latest, env.device, hint=(
            f"; latest.pt is written atomically, so the file was damaged or replaced after it was written: restore "
            f"it from a copy, or move it away to start this run again from step 0 ({ema.export_name} beside it "
            f"holds the EMA weights of the last checkpoint, usable as train.init_from)"))
        model.load_state_dict(_denoiser_keys(state["model"]))
        ema.load_state_dict(_denoiser_keys(state["ema"]))
        step = state["step"]
    # the steps since the last logged record (checkpoints before issue 30 did not keep them: the first record
    # after resuming from one averages fewer steps)
    window: list[dict] = [{k: torch.tensor(v, device=env.device) for k, v in w.items()}
                          for w in (state or {}).get("log_window", [])]
    carried = len(window)
    if step >= total_steps and env.is_main:
        # A finished run: its export is its final EMA, written again (a kill between the last checkpoint and
        # the export would otherwise leave an older export, or none, for sampling and init_from).
        ema.policy.trained_for(step)
        ema.export(run_dir / ema.export_name)
    fsdp = tc.fsdp and env.world_size > 1
    if fsdp:
        shard(model)
        shard(ema)
        net = model
    elif env.world_size > 1:
        net = DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    else:
        net = model
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    if state is not None:
        load_optimizer_state(model, optimizer, state["opt"], fsdp)

    steps_per_epoch = len(dataset) // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"the dataset has {len(dataset)} clips, fewer than one global batch of {global_batch}")
    last_step = total_steps if stop_after_steps is None else min(total_steps, step + stop_after_steps)
    log_every = max(1, tc.log_every_samples // global_batch)
    ckpt_every = max(1, tc.ckpt_every_samples // global_batch)

    writer = None
    if env.is_main:
        from torch.utils.tensorboard import SummaryWriter

        # A run killed after logging past its last checkpoint replays those steps: their first records go.
        drop_logged_after(run_dir / "stats.jsonl", step)
        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step * global_batch + 1 if step else None)
    bar = None
    if env.is_main and progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total_steps * global_batch, initial=step * global_batch, unit="clip", desc="train")

    autocast = torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=tc.bf16)
    if env.is_main:
        print(f"resuming {run_dir} from step {step} ({step * global_batch} clips)" if step
              else f"starting a new run in {run_dir}")
        save_config(cfg, run_dir / "config.yaml")    # the run's identity, committed once training starts
        if hasattr(dataset, "describe"):             # e.g. which VAE made a latent store
            atomic_write_text(run_dir / "data.json", json.dumps(dataset.describe(), indent=1))
    model.train()
    started = time.perf_counter()
    while step < last_step:
        epoch, offset = divmod(step, steps_per_epoch)
        dataset.set_epoch(epoch)
        batches = epoch_batches(len(dataset), tc.batch_size, tc.seed, epoch, env.rank, env.world_size)[offset:]
        for batch in _batches(dataset, batches, cfg.data.num_workers):
            torch.manual_seed(_seed(tc.seed, 3, env.rank, step))          # anything that draws from the global RNG
            pixels, kwargs = model.prepare_batch(batch, env.device, _generator(tc.seed, 6, env.rank, step))
            x0 = autoencoder.encode(pixels, generator=_generator(tc.seed, 4, env.rank, step))
            t = timesteps(x0.shape[0], _generator(tc.seed, 1, env.rank, step), _generator(tc.seed, 2, step),
                          env.rank, env.world_size)                       # (B,): one density stage per micro-batch
            noise = torch.randn(x0.shape, generator=_generator(tc.seed, 5, env.rank, step)).to(env.device, x0.dtype)
            with autocast:                                                # the model's objective (DyDiT: + budget)
                terms = model.training_losses(diffusion, net, x0, t.to(env.device), noise, kwargs, step)
            loss = terms["loss"].mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip = tc.grad_clip if tc.grad_clip > 0 and step * global_batch >= tc.clip_after_samples else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            if isinstance(grad_norm, DTensor):                             # under FSDP
                grad_norm = grad_norm.full_tensor()
            # DyDiT train_without_completemodel.py: a gradient whose pre-clip norm exceeds the limit is not applied
            skipped = tc.skip_on_spike and bool(grad_norm > clip)
            if not skipped:
                optimizer.step()
                # EMA warm-up (diffusers' EMAModel default): early averages do not drag the zero-initialised
                # output layers along for thousands of steps; negligible for Latte's 1M-step runs.
                update_ema(ema, model, min(tc.ema_decay, (1 + step) / (10 + step)))
            step += 1

            logged = {k: v.detach().float().mean() for k, v in terms.items()}
            logged.update(grad_norm=grad_norm.detach(), skipped=torch.tensor(float(skipped), device=grad_norm.device))
            window.append(logged)
            if bar is not None:
                bar.update(global_batch)
            if step % log_every == 0 or step == last_step:
                keys = dict.fromkeys(k for w in window for k in w)              # a term may start or stop mid-window
                stats = {k: dist.all_reduce_mean(torch.stack([w[k] for w in window if k in w]).mean()).item()
                         for k in keys}
                stats.update(step=step, samples=step * global_batch, epoch=epoch, lr=tc.lr,
                             samples_per_s=(len(window) - carried) * global_batch / (time.perf_counter() - started))
                stats.update(model.step_stats(t))
                window, carried, started = [], 0, time.perf_counter()
                if env.is_main:
                    with open(run_dir / "stats.jsonl", "a") as f:
                        f.write(json.dumps(stats) + "\n")
                    for key, value in stats.items():
                        writer.add_scalar(f"train/{key}", value, step * global_batch)
                    if bar is not None:
                        bar.set_postfix(loss=f"{stats['loss']:.4f}")
            if step % ckpt_every == 0 or step == last_step:
                states = full_state_dicts(model, ema, optimizer, fsdp)          # collective under FSDP
                # the unlogged steps, averaged over ranks (collective), so a resumed run logs what this one would
                pending = [{k: dist.all_reduce_mean(v).item() for k, v in w.items()} for w in window]
                if env.is_main:
                    _save_checkpoint(latest, {**states, "step": step, "samples": step * global_batch,
                                              "config": config_to_dict(cfg), "log_window": pending})
                    export = build_denoiser(cfg) if fsdp else ema
                    if fsdp:
                        export.load_state_dict(states["ema"])
                    export.policy.trained_for(step)                 # (what its file records of the training)
                    export.export(run_dir / export.export_name)     # ema.safetensors, PixArt-α: transformer/
                dist.barrier()
            if step >= last_step:
                break
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    return {"run_dir": str(run_dir), "step": step, "samples": step * global_batch, "total_steps": total_steps,
            "finished": step >= total_steps, "model": model, "ema": ema}


# ----------------------------------------------------------------------------------------------------------
# Held-out loss (the demo's measure of dense vs FlexDiT), on fixed timesteps and noise.


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, x0: torch.Tensor, diffusion: GaussianDiffusion, kwargs: dict | None = None,
                 timesteps: int = 10, seed: int = 0) -> dict:
    """Mean ε-MSE and total loss over `timesteps` evenly spaced t, each forward on one t (so one density grid),
    with noise fixed by the seed: the same numbers for every model it is given."""
    model.eval()
    ts = torch.linspace(0, diffusion.num_timesteps - 1, timesteps).round().long()
    total = {"mse": 0.0, "loss": 0.0}
    for i, t_value in enumerate(ts.tolist()):
        noise = torch.randn(x0.shape, generator=_generator(seed, i)).to(x0.device, x0.dtype)
        t = torch.full((x0.shape[0],), t_value, device=x0.device, dtype=torch.long)
        terms = diffusion.training_losses(model, x0, t, noise, kwargs or {})
        for key in total:
            total[key] += terms[key].mean().item() / timesteps
    return total
