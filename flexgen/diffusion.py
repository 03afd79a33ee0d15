"""Gaussian diffusion: the training objective and samplers, kept apart from any network.

Conventions
-----------
* The channel axis is dim -3 everywhere. Tensors are frame-first video (B, F, C, H, W) or images (B, C, H, W).
* A model is any callable ``model(x, t, **model_kwargs) -> Tensor`` with ``t`` a LongTensor (B,) in training
  timestep units (0 .. T-1). It predicts ε. A model with learned sigma outputs 2C channels on dim -3: the first C
  are ε, the last C the variance interpolation value v ∈ [-1, 1] (IDDPM "learned range"); otherwise C channels.
* Schedule tables are computed in float64, gathered per t, then cast to the data dtype. (diffusers schedulers keep
  their own tables in float32, whatever dtype `trained_betas` has.)
* Training follows DiT / IDDPM: loss = mse(ε) + vb, where vb (only with learned sigma) sees a stop-gradient ε, so
  the VLB trains the variance only. Optional Min-SNR-γ weighting of the mse term.
* Sampling goes through diffusers schedulers (DDPM with learned range, DDIM η=0, DPM-Solver++ 2M). Inside the
  sampler dim -3 is moved to dim 1, which is where diffusers looks for channels. The noise for sample i comes
  from seed i alone (CPU generators), so a sample does not depend on batch size, batch position or device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch import Tensor
from tqdm.auto import tqdm

from flexgen.config import PREDICTIONS

Model = Callable[..., Tensor]

# The one table of sampler names -> diffusers scheduler classes. `make_scheduler` builds the first three as the
# IDDPM / Latte / DiT protocols define them (`SAMPLERS`, what `sample` and `flexgen sample` use); PixArt-α's
# `flexgen generate` builds any of them from its pipeline's scheduler config ("dpm-solver" is PixArt-α's name for
# DPM-Solver++ with the pipeline's settings). Which names a family offers: `flexgen.registry`.
SCHEDULERS: dict[str, str] = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "dpm-solver++": "DPMSolverMultistepScheduler",
    "dpm-solver": "DPMSolverMultistepScheduler",
    "sa-solver": "SASolverScheduler",
    "euler": "EulerDiscreteScheduler",
}
SAMPLERS = ("ddpm", "ddim", "dpm-solver++")


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {', '.join(PREDICTIONS)}")


# ----------------------------------------------------------------------------------------------------------------
# Noise schedule.

def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """The DDPM linear β schedule, float64, endpoints exactly as given (no 1000/T rescaling)."""
    # Ho et al. 2020, Sec. 4: β_1 = 1e-4 ... β_T = 0.02, linear
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps}")
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------------------------
# Small helpers shared by the objective and the samplers.

def _gather(table: Tensor, t: Tensor) -> Tensor:
    """table[t] in float64 on t's device (on the CPU for MPS, which has no float64)."""
    device = t.device if t.device.type != "mps" else torch.device("cpu")
    return table.to(device)[t.to(device)]


def _mean_flat(x: Tensor) -> Tensor:
    """Mean over every dim but the batch dim."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def _split_output(out: Tensor, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """Split a model output into (ε, v) on dim -3; v is None without learned sigma. Raises on a bad shape."""
    c = x.shape[-3]
    ok = out.ndim == x.ndim and out.shape[:-3] == x.shape[:-3] and out.shape[-2:] == x.shape[-2:]
    if not ok or out.shape[-3] not in (c, 2 * c):
        raise ValueError(f"model output must match the input {tuple(x.shape)} with C={c} (ε) or 2C={2 * c} "
                         f"(ε and learned-range v) channels on dim -3; got {tuple(out.shape)}")
    if out.shape[-3] == c:
        return out, None
    eps, v = out.split(c, dim=-3)
    return eps, v


def _normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) of 8-bit data in [-1, 1] under N(mean, e^{2 log_scale}) integrated over its bin, in nats."""
    # Ho et al. 2020, Eq. 13: bins of width 2/255, the outermost bins open to ±∞
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (centered + 1.0 / 255.0)
    lower = inv_std * (centered - 1.0 / 255.0)
    log_cdf_upper = torch.special.log_ndtr(upper)  # left edge bin: P(X <= x + 1/255)
    log_sf_lower = torch.special.log_ndtr(-lower)  # right edge bin: P(X > x - 1/255)
    bin_mass = torch.special.ndtr(upper) - torch.special.ndtr(lower)
    log_bin = torch.log(bin_mass.clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, log_bin))


# ----------------------------------------------------------------------------------------------------------------
# Training objective.

class GaussianDiffusion:
    """Forward process tables and the DiT / IDDPM hybrid loss (ε-prediction MSE + VLB on the learned variance)."""

    def __init__(self, betas: Tensor, min_snr_gamma: float | None = None, prediction: str = "epsilon") -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() < 2 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a 1-D schedule of >= 2 values in (0, 1]")
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be positive, got {min_snr_gamma}")
        self.min_snr_gamma = min_snr_gamma
        _check_prediction(prediction)
        self.prediction = prediction
        self.num_timesteps = int(betas.numel())
        self.betas = betas
        self.log_betas = torch.log(betas)
        alphas = 1.0 - betas
        # Ho et al. 2020, Eq. 4: q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I)
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        # Ho et al. 2020, Eqs. 6-7: posterior q(x_{t-1} | x_t, x_0)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # Nichol & Dhariwal 2021 (IDDPM code): the t=0 posterior variance is 0, so its log takes the t=1 value
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)

    # ------------------------------------------------------------------------------------------------------------
    # Build from a config object (duck-typed flexgen.config.DiffusionConfig).

    @classmethod
    def from_config(cls, cfg: Any) -> GaussianDiffusion:
        """From any object with num_timesteps, beta_start, beta_end, min_snr_gamma (and prediction) attributes."""
        betas = linear_betas(cfg.num_timesteps, cfg.beta_start, cfg.beta_end)
        return cls(betas, min_snr_gamma=cfg.min_snr_gamma, prediction=getattr(cfg, "prediction", "epsilon"))

    # ------------------------------------------------------------------------------------------------------------
    # Table lookup: float64 gather at t, cast to the data dtype, shaped to broadcast against x.

    def _at(self, table: Tensor, t: Tensor, x: Tensor) -> Tensor:
        return _gather(table, t).to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))

    # ------------------------------------------------------------------------------------------------------------
    # Forward process.

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """Draw x_t ~ q(x_t | x_0) as sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε."""
        # Ho et al. 2020, Eq. 4
        if noise is None:
            noise = torch.randn_like(x0)
        signal = self._at(self.sqrt_alphas_cumprod, t, x0)
        return signal * x0 + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def sample_timesteps(self, batch_size: int, device: torch.device | str,
                         generator: torch.Generator | None = None) -> Tensor:
        """Uniform training timesteps in [0, T), a LongTensor (B,) on `device`."""
        draw_device = generator.device if generator is not None else device
        t = torch.randint(0, self.num_timesteps, (batch_size,), generator=generator, device=draw_device)
        return t.to(device)

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 - ᾱ_t), float64, same shape as t."""
        # Kingma et al. 2021, Eq. 2 (VDM): SNR(t) = α_t² / σ_t²
        ac = _gather(self.alphas_cumprod, t)
        return ac / (1.0 - ac)

    # ------------------------------------------------------------------------------------------------------------
    # VLB term of the hybrid loss, per sample, in bits.

    def _vb_bits(self, eps: Tensor, v: Tensor, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        # Nichol & Dhariwal 2021, Eq. 15 (learned range): log Σ = frac log β_t + (1 - frac) log β̃_t, frac = (v+1)/2
        min_log = self._at(self.posterior_log_variance_clipped, t, x_t)
        max_log = self._at(self.log_betas, t, x_t)
        frac = (v + 1.0) / 2.0
        model_log_var = frac * max_log + (1.0 - frac) * min_log
        # Ho et al. 2020, Eq. 15: x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε̂) / sqrt(ᾱ_t), no clipping
        pred_x0 = self._at(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t \
            - self._at(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        coef1 = self._at(self.posterior_mean_coef1, t, x_t)
        coef2 = self._at(self.posterior_mean_coef2, t, x_t)
        model_mean = coef1 * pred_x0 + coef2 * x_t
        true_mean = coef1 * x0 + coef2 * x_t
        # Ho et al. 2020, Eq. 5: L_{t-1} = KL(q(x_{t-1} | x_t, x_0) ‖ p(x_{t-1} | x_t)), bits per dim
        kl = _mean_flat(_normal_kl(true_mean, min_log, model_mean, model_log_var)) / math.log(2.0)
        # Ho et al. 2020, Eq. 13: L_0 = -log p(x_0 | x_1), discretized decoder, bits per dim
        nll = -_mean_flat(_discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    # ------------------------------------------------------------------------------------------------------------
    # Hybrid training loss.

    def training_losses(self, model: Model, x0: Tensor, t: Tensor, noise: Tensor | None = None,
                        model_kwargs: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
        """Per-sample (B,) tensors: loss = weight·mse + vb, mse, vb, and weight when Min-SNR-γ is on.

        Computed in at least float32 (a bf16 / fp16 model output is upcast for the loss).
        """
        # Nichol & Dhariwal 2021, Sec. 3.1: L_hybrid = L_simple + λ L_vlb (λ = 1 with the mse mean, as in DiT)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        out = model(x_t, t, **dict(model_kwargs or {}))
        pred, v = _split_output(out, x0)
        dtype = torch.promote_types(x0.dtype, torch.float32)
        x0, x_t, noise, pred = x0.to(dtype), x_t.to(dtype), noise.to(dtype), pred.to(dtype)
        if self.prediction == "epsilon":
            eps, target = pred, noise
        else:
            # Salimans & Ho 2022, Sec. 4: v = sqrt(ᾱ) ε - sqrt(1 - ᾱ) x_0, hence ε = sqrt(ᾱ) v + sqrt(1 - ᾱ) x_t
            a, b = self._at(self.sqrt_alphas_cumprod, t, x0), self._at(self.sqrt_one_minus_alphas_cumprod, t, x0)
            eps, target = a * pred + b * x_t, a * noise - b * x0
        mse = _mean_flat((target - pred) ** 2)
        if v is None:
            vb = torch.zeros_like(mse)
        else:
            # stop-gradient on ε: the VLB only trains the variance (Nichol & Dhariwal 2021, Sec. 3.1)
            vb = self._vb_bits(eps.detach(), v.to(dtype), x0, x_t, t)
        terms = {"mse": mse, "vb": vb}
        if self.min_snr_gamma is None:
            terms["loss"] = mse + vb
        else:
            # Hang et al. 2023, Min-SNR-γ: w_t = min(SNR_t, γ) / SNR_t for ε, min(SNR_t, γ) / (SNR_t + 1) for v
            snr = self.snr(t)
            weight = snr.clamp(max=self.min_snr_gamma) / (snr if self.prediction == "epsilon" else snr + 1)
            weight = weight.to(device=mse.device, dtype=mse.dtype)
            terms["weight"] = weight
            terms["loss"] = weight * mse + vb
        return terms


# ----------------------------------------------------------------------------------------------------------------
# diffusers schedulers, configured to reproduce the IDDPM / DiT sampling protocol.

def any_scheduler(name: str, betas: Tensor, num_steps: int):
    """Any sampler of SCHEDULERS on `betas`: the protocol constructions of `make_scheduler` for SAMPLERS (and
    "dpm-solver"), diffusers' defaults otherwise (SA-Solver, Euler), with set_timesteps(num_steps) done. For timing
    (`flexgen bench latency`); PixArt-α's `flexgen generate` builds them from its pipeline's config instead."""
    if name in (*SAMPLERS, "dpm-solver"):
        return make_scheduler("dpm-solver++" if name == "dpm-solver" else name, betas, num_steps)
    if name not in SCHEDULERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SCHEDULERS)}")
    import diffusers

    betas_np = torch.as_tensor(betas, dtype=torch.float64).detach().cpu().numpy()
    scheduler = getattr(diffusers, SCHEDULERS[name])(num_train_timesteps=len(betas_np), trained_betas=betas_np,
                                                     prediction_type="epsilon", timestep_spacing="linspace")
    scheduler.set_timesteps(num_steps)
    return scheduler


def make_scheduler(name: str, betas: Tensor, num_steps: int, learned_sigma: bool = True, clip_denoised: bool = False,
                   prediction: str = "epsilon") -> DDPMScheduler | DDIMScheduler | DPMSolverMultistepScheduler:
    """A diffusers scheduler for `betas` (num_train_timesteps = len(betas)) with set_timesteps(num_steps) done.
    `clip_denoised` clips each predicted x_0 to [-1, 1] (IDDPM's clip_denoised, for pixel-space models; latent
    models such as Latte sample without it). `prediction`: what the model predicts, "epsilon" or "v_prediction"
    (diffusers' prediction_type names)."""
    _check_prediction(prediction)
    betas_np = torch.as_tensor(betas, dtype=torch.float64).detach().cpu().numpy()
    num_train = len(betas_np)
    if not 1 <= num_steps <= num_train:
        raise ValueError(f"num_steps must be in [1, {num_train}], got {num_steps}")
    common = {"num_train_timesteps": num_train, "trained_betas": betas_np, "prediction_type": prediction,
              "thresholding": False}
    clip = {"clip_sample": clip_denoised, "clip_sample_range": 1.0}
    if name == "ddpm":
        # Nichol & Dhariwal 2021, Sec. 4: respaced ancestral sampling; "linspace" == IDDPM space_timesteps(T, "N")
        scheduler = DDPMScheduler(**common, variance_type="learned_range" if learned_sigma else "fixed_small",
                                  timestep_spacing="linspace", **clip)
    elif name == "ddim":
        # Song et al. 2021, Eq. 12 with η = 0; "leading" + set_alpha_to_one == IDDPM "ddimN"
        scheduler = DDIMScheduler(**common, set_alpha_to_one=True, timestep_spacing="leading", steps_offset=0,
                                  **clip)
    elif name == "dpm-solver++":
        # Lu et al. 2022b, DPM-Solver++(2M), data-prediction multistep solver
        # It has no static clipping; thresholding with sample_max_value = 1 clips x_0 to [-1, 1] exactly.
        threshold = {"thresholding": True, "sample_max_value": 1.0} if clip_denoised else {}
        scheduler = DPMSolverMultistepScheduler(**{**common, **threshold}, algorithm_type="dpmsolver++",
                                                solver_order=2, lower_order_final=True, timestep_spacing="linspace")
    else:
        raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLERS}")
    scheduler.set_timesteps(num_steps)
    if name == "ddpm" and num_steps > 1:
        # respacing is exact only if a step goes to the next listed timestep (older diffusers stepped to t - T // N)
        ts = scheduler.timesteps
        if int(scheduler.previous_timestep(ts[0])) != int(ts[1]):
            raise RuntimeError("this diffusers DDPMScheduler does not step to the next listed timestep; "
                               "respaced sampling would be wrong")
    return scheduler


# ----------------------------------------------------------------------------------------------------------------
# Per-sample seeding: sample i draws all of its noise from its own CPU generator seeded with seeds[i].

def make_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU torch.Generator per seed."""
    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


def _noise_from(generators: Sequence[torch.Generator], shape_per_sample: Sequence[int],
                device: torch.device | str, dtype: torch.dtype) -> Tensor:
    draws = [torch.randn(tuple(shape_per_sample), generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(draws).to(device=device, dtype=dtype)


def seeded_noise(shape_per_sample: Sequence[int], seeds: Sequence[int], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise (len(seeds), *shape_per_sample); row i is drawn on the CPU from seed i alone."""
    return _noise_from(make_generators(seeds), shape_per_sample, device, dtype)


# ----------------------------------------------------------------------------------------------------------------
# Sampling loop.

@torch.no_grad()
def sample(model: Model, shape: Sequence[int], seeds: Sequence[int], *, sampler: str = "ddpm", steps: int = 250,
           betas: Tensor | None = None, learned_sigma: bool = True, clip_denoised: bool = False,
           prediction: str = "epsilon", model_kwargs: Mapping[str, Any] | None = None,
           device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, progress: bool = False) -> Tensor:
    """Draw len(seeds) samples of per-sample `shape` (channels on dim -3); returns x_0 in the model's layout.

    The DDPM default (250 respaced steps, learned range variance) is the DiT / Latte evaluation protocol.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    if len(seeds) == 0:
        raise ValueError("seeds must name at least one sample")
    if len(shape) < 3:
        raise ValueError(f"shape must be per-sample (..., C, H, W), got {tuple(shape)}")
    betas = linear_betas() if betas is None else betas
    scheduler = make_scheduler(sampler, betas, steps, learned_sigma=learned_sigma, clip_denoised=clip_denoised,
                               prediction=prediction)
    model_kwargs = dict(model_kwargs or {})
    generators = make_generators(seeds)
    x = _noise_from(generators, shape, device, dtype)
    batch = x.shape[0]
    for t in tqdm(scheduler.timesteps, desc=sampler, disable=not progress):
        t_batch = torch.full((batch,), int(t), device=device, dtype=torch.long)
        out = model(x, t_batch, **model_kwargs)
        pred, v = _split_output(out, x)          # ε or v, and the variance channels
        if (v is not None) != learned_sigma:
            raise ValueError(f"learned_sigma={learned_sigma} but the model output has {out.shape[-3]} channels "
                             f"for C={x.shape[-3]}")
        # diffusers wants channels on dim 1: (B, F, C, H, W) -> (B, C, F, H, W); images are unchanged
        x_s = x.movedim(-3, 1)
        if sampler == "ddpm":
            # DDPM splits [ε, v] itself on dim 1; its per-step noise is drawn per sample from the list of generators
            x_s = scheduler.step(out.movedim(-3, 1), t, x_s, generator=generators).prev_sample
        elif sampler == "ddim":
            x_s = scheduler.step(pred.movedim(-3, 1), t, x_s, eta=0.0).prev_sample
        else:
            x_s = scheduler.step(pred.movedim(-3, 1), t, x_s).prev_sample
        x = x_s.movedim(1, -3)
    return x


# ----------------------------------------------------------------------------------------------------------------
# Classifier-free guidance as a model wrapper.

def classifier_free_guidance(model: Model, scale: float, cond_kwargs: Mapping[str, Any],
                             uncond_kwargs: Mapping[str, Any], channels: int | None = None) -> Model:
    """A model(x, t) that returns ε_u + s (ε_c - ε_u) on the ε channels and the conditional variance channels.

    One forward pass on the batch doubled along dim 0 (tensor kwargs concatenated cond ‖ uncond); non-tensor kwargs
    must be equal in both. scale == 1 runs the conditional model alone. `channels` = k guides only the first k ε
    channels, the rest come from the conditional half: DiT's released `forward_with_cfg` (k = 3, "for exact
    reproducibility"), which the DiT, FlexDiT and DyDiT ImageNet numbers use.
    """
    # Ho & Salimans 2022, Eq. 6: ε̃ = ε_u + s (ε_c - ε_u); variance from the conditional half as in DiT / Latte
    if set(cond_kwargs) != set(uncond_kwargs):
        raise ValueError(f"cond_kwargs and uncond_kwargs need the same keys: {sorted(cond_kwargs)} vs "
                         f"{sorted(uncond_kwargs)}")
    doubled: dict[str, Any] = {}
    for key, c in cond_kwargs.items():
        u = uncond_kwargs[key]
        if isinstance(c, Tensor) and isinstance(u, Tensor):
            doubled[key] = torch.cat([c, u], dim=0)
        elif isinstance(c, Tensor) or isinstance(u, Tensor) or c != u:
            raise ValueError(f"kwarg {key!r}: tensors are concatenated, other values must be equal in both")
        else:
            doubled[key] = c

    def guided(x: Tensor, t: Tensor) -> Tensor:
        if scale == 1:
            return model(x, t, **cond_kwargs)
        out = model(torch.cat([x, x], dim=0), torch.cat([t, t], dim=0), **doubled)
        out_c, out_u = out.chunk(2, dim=0)
        eps_c, v_c = _split_output(out_c, x)
        eps_u, _ = _split_output(out_u, x)
        guided_eps = eps_u + scale * (eps_c - eps_u)
        if channels is not None:                         # DiT models.py: guide eps[:, :3], keep the rest conditional
            k = channels
            if k > eps_c.shape[-3]:
                raise ValueError(f"cfg channels {k} > the model's {eps_c.shape[-3]} ε channels")
            guided_eps = torch.cat([guided_eps.narrow(-3, 0, k), eps_c.narrow(-3, k, eps_c.shape[-3] - k)], dim=-3)
        return guided_eps if v_c is None else torch.cat([guided_eps, v_c], dim=-3)

    return guided
