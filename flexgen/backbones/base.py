"""What the engine may ask of a model family: the `Denoiser` interface.

Every family (Latte / DiT, PixArt-α; each dense or with a density policy) is a `Denoiser`: an `nn.Module` around
its network (`self.net`) that maps noisy inputs to the diffusion output, `denoiser(x_t, t, **condition)`, as
k-diffusion's `Denoiser` and EDM2's `Precond` wrap theirs. The training loop, sampling, bench, convert and FLOP
counting speak only to this interface; `flexgen.registry.build_denoiser(run)` picks the family from the
run's preset. The network's policy (`policy`, `flexgen.policies`) answers for its training timesteps, losses,
measured cost, names and settings, so neither the loops nor the commands ask which policy runs.

| method | used by |
|---|---|
| `from_run(run)` | registry (build, random weights) |
| `load_pretrained(path)`, `export(path)`, `export_name` | train (`init_from`, EMA export), convert, sample |
| `training_dataset(run, ...)`, `use_dataset(dataset)` | train: the run's data, what dropout needs from it |
| `shard_units()` | FSDP (train.fsdp) |
| `prepare_batch(batch, device, generator)` | train: data batch -> (pixels, condition); CFG condition dropout |
| `timestep_sampler()`, `training_losses(...)` | train |
| `cost()`, `step_stats(t)` | sample / generate / bench / records cost; train logs |
| `policy`, `forward_macs()` | sample / generate / bench / records: names, measured cost, settings |
| `resident_bytes()` | bench: memory kept between forwards |
| `example_condition(...)`, `sampling_condition(...)`, `null_condition(cond)` | bench, FLOP counts, CFG |
| `example_batch(n, generator)` | tests and checks: a random batch of the family's training set |
| `latent_shape()`, `learned_sigma` | sampling, bench |
| `converted(density)` | bench (dense -> FlexDiT on the same weights) |
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from flexgen.policies import Policy
from flexgen.policies.cost import CostModel
from flexgen.policies.timesteps import TimestepSampler


class Denoiser(nn.Module):
    """Base class of the families' training and sampling views (see the module docstring)."""

    family: str = ""                # registry name of the family

    def __init__(self, net: nn.Module, run: Any):
        super().__init__()
        self.net = net
        self.run = run              # the `flexgen.config.Config` the model was built from

    # ---- construction and weights -------------------------------------------------------------------

    @classmethod
    def from_run(cls, run: Any) -> Denoiser:
        """The model of a run configuration with random weights: dense, or with the run's density policy."""
        raise NotImplementedError

    def load_pretrained(self, path: str | Path, sha256: str | None = None, *, routers_required: bool = False) -> None:
        """Weights from `path` (official release or ours), converted to this model's density policy when the
        file holds the dense model. `routers_required` (sampling): a policy with learned routers (DyDiT) refuses
        a file without them, whose fresh routers would just run the dense model."""
        raise NotImplementedError

    export_name: str = ""           # the export's name in a run directory (a file or a folder)

    def export(self, path: str | Path) -> Path:
        """Write the weights in the family's exchange format (what sampling reads) to `path`; returns it."""
        raise NotImplementedError

    def describe(self) -> str:
        """A few words on the network's shape, for messages."""
        raise NotImplementedError

    def converted(self, density: Any) -> Denoiser:
        """This (dense) model converted to the density policy `density`, on the same weights."""
        raise NotImplementedError

    # ---- training ---------------------------------------------------------------------------------------

    @classmethod
    def training_dataset(cls, run: Any, *, is_main: bool, device: torch.device, progress: bool = True):
        """The run's training set (`data` section). Collective under torchrun: every rank calls it."""
        raise NotImplementedError

    def use_dataset(self, dataset: Any) -> None:
        """Take what the condition dropout needs from the training set (PixArt-α: T5(""))."""

    def shard_units(self) -> list[nn.Module]:
        """Modules that FSDP shards one by one (the transformer blocks) before the whole model."""
        raise NotImplementedError

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        raise NotImplementedError

    def prepare_batch(self, batch: dict, device: torch.device, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, dict]:
        """A data-loader batch -> (pixels, condition keyword arguments), with the classifier-free-guidance
        condition dropout (rate `model.class_dropout_prob`) drawn from `generator` when one is given (training);
        without a generator nothing is dropped (evaluation)."""
        raise NotImplementedError

    def training_losses(self, diffusion: Any, net: nn.Module, x0: torch.Tensor, t: torch.Tensor,
                        noise: torch.Tensor, cond: dict, step: int) -> dict[str, torch.Tensor]:
        """The loss terms of one micro-batch at training step `step`: `loss` (per sample or a scalar) is minimised,
        every other term is logged (its mean). `net` is this model or its DDP / FSDP wrapper: forwards go through
        it. The diffusion loss, or the policy's objective (`Policy.losses`: DyDiT adds its budget)."""
        return self.policy.training_losses(self, diffusion, net, x0, t, noise, cond, step)

    def timestep_sampler(self) -> TimestepSampler:
        """Timesteps from the run's training density (`diffusion.timestep_sampling`: uniform or logit-normal), or the
        policy's choice (FlexDiT: one density stage per micro-batch; DyDiT alone: stratified t)."""
        return self.policy.timestep_sampler(self)

    @property
    def num_timesteps(self) -> int:
        return self.run.diffusion.num_timesteps

    # ---- cost and description ---------------------------------------------------------------------------

    def cost(self) -> CostModel:
        """This model's forward cost per sample (MACs on the meta device; `flexgen.policies.cost`)."""
        raise NotImplementedError

    @property
    def layout(self) -> str:
        """The density layout's role string ("" for a dense model)."""
        return self.cost().layout

    @property
    def policy(self) -> Policy:
        """What runs at each timestep (`flexgen.policies`: dense, FlexDiT, DyDiT or a composition); the commands
        ask it for names, costs and settings instead of asking which policy runs."""
        return self.net.policy

    def forward_macs(self, routing: list | None = None, grid: int | None = None) -> torch.Tensor:
        """(B,) MACs per sample of the last forward from what it ran (a measured policy: DyDiT's gates; or of
        gates `routing` at FlexDiT grid `grid`)."""
        return self.policy.forward_macs(self.cost(), routing, grid)

    def resident_bytes(self) -> int:
        """Bytes the model keeps between forwards: parameters, buffers and the policy's copied weight slices."""
        tensors = {t.data_ptr(): t.nbytes for t in (*self.parameters(), *self.buffers())}
        return sum(tensors.values()) + self.policy.held_bytes()

    def step_stats(self, t: torch.Tensor) -> dict[str, float]:
        """What a training log line records about a forward at timesteps `t` (the sparse grid, for FlexDiT)."""
        from flexgen.policies.cost import grid_at_timestep

        grid = grid_at_timestep(self.cost(), int(t.reshape(-1)[0]))
        return {} if grid is None else {"grid": grid}

    # ---- inputs -----------------------------------------------------------------------------------------

    def latent_shape(self) -> tuple[int, ...]:
        """The shape of one sample's latent, without the batch dimension."""
        raise NotImplementedError

    def example_batch(self, batch: int, generator: torch.Generator | None = None) -> dict:
        """A random data-loader batch of the family's training set (what `prepare_batch` takes)."""
        raise NotImplementedError

    def example_condition(self, batch: int, device: torch.device | str = "cpu",
                          dtype: torch.dtype = torch.float32) -> dict:
        """Condition keyword arguments of `batch` samples (for FLOP counts and timing)."""
        raise NotImplementedError

    def sampling_condition(self, num_samples: int, seed: int, device: torch.device | str = "cpu",
                           dtype: torch.dtype = torch.float32) -> dict:
        """Condition keyword arguments of samples seed, seed + 1, ... (a class model: the label each sample's seed
        draws, as `flexgen sample`; a text model: example embeddings); {} for an unconditional model."""
        return self.example_condition(num_samples, device, dtype) if self.conditional else {}

    @property
    def learned_sigma(self) -> bool:
        """Whether the network predicts the learned-range variance beside ε (its output has twice the channels)."""
        return self.run.model.learn_sigma

    def null_condition(self, cond: dict) -> dict:
        """The unconditional branch of classifier-free guidance for condition `cond`."""
        raise NotImplementedError

    @property
    def conditional(self) -> bool:
        """Whether classifier-free guidance applies (a class- or text-conditional model)."""
        raise NotImplementedError

    def condition_summary(self) -> dict:
        """What conditions the model, for reports ({"num_classes": n} or {"text_tokens": L})."""
        raise NotImplementedError

    @classmethod
    def preset_overrides(cls, preset: str, *, image_size: int | None, frames: int | None, num_classes: int | None,
                         in_channels: int, vae_factor: int) -> list[str]:
        """Run-config overrides for a bare preset (`flexgen bench --model`): the family's defaults where a value is
        None."""
        raise NotImplementedError

    # ---- attention --------------------------------------------------------------------------------------

    def set_attention(self, kind: str) -> None:
        """"flexgen" (flexgen.attention) or "diffusers" (diffusers' processors, PixArt-α); families that always run
        flexgen.attention ignore it."""
        if kind not in ("diffusers", "flexgen"):
            raise ValueError(f"attention must be diffusers or flexgen, got {kind!r}")

    def attention_processors(self) -> dict | None:
        """Counts of diffusers attention processors in use, where attention does not go through flexgen.attention."""
        return None

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        raise NotImplementedError
