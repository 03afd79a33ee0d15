"""Tests for flexgen.diffusion: schedule tables, the hybrid loss, diffusers-backed samplers, seeding and CFG.

Reference values are computed independently here in numpy / scipy from the papers' formulas.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import norm

from flexgen.diffusion import (
    SAMPLERS,
    GaussianDiffusion,
    classifier_free_guidance,
    linear_betas,
    make_generators,
    make_scheduler,
    sample,
    seeded_noise,
)

BETAS_NP = np.linspace(1e-4, 0.02, 1000)
ABAR_NP = np.cumprod(1.0 - BETAS_NP)


# ----------------------------------------------------------------------------------------------------------------
# Helpers.

def iddpm_space_timesteps(num_timesteps: int, count: int) -> list[int]:
    """IDDPM respace.space_timesteps(T, str(count)) for one section: evenly strided, rounded, both ends kept."""
    stride = (num_timesteps - 1) / (count - 1)
    taken, cur = [], 0.0
    for _ in range(count):
        taken.append(round(cur))
        cur += stride
    return taken


def iddpm_ddim_timesteps(num_timesteps: int, count: int) -> list[int]:
    """IDDPM respace.space_timesteps(T, f"ddim{count}"): the integer stride giving exactly `count` steps."""
    for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == count:
            return list(range(0, num_timesteps, stride))
    raise ValueError(count)


class ChannelMix:
    """A fixed random per-pixel linear map over channels, written with elementwise ops only, so one sample's output
    never depends on the other samples in the batch. Optionally also outputs learned-range v channels."""

    def __init__(self, channels: int, learned_sigma: bool, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.w = (0.5 * torch.randn(channels, channels, generator=g)).tolist()
        self.learned_sigma = learned_sigma

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scale = (1.0 + t.to(x.dtype) / 1000.0).reshape(-1, *([1] * (x.ndim - 2)))
        chans = [x.select(-3, c) for c in range(len(self.w))]
        eps = torch.stack([sum(w * xc for w, xc in zip(row, chans, strict=True)) * scale for row in self.w], dim=-3)
        return torch.cat([eps, torch.tanh(eps)], dim=-3) if self.learned_sigma else eps


class GaussianEps:
    """The exact ε-predictor for data x0 ~ N(μ, s²) per element: E[ε | x_t] in closed form."""

    def __init__(self, mu: float, s: float, learned_sigma: bool) -> None:
        self.mu, self.s, self.learned_sigma = mu, s, learned_sigma
        self.abar = torch.from_numpy(ABAR_NP)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.abar[t].reshape(-1, *([1] * (x.ndim - 1)))
        eps = (torch.sqrt(1 - a) * (x.double() - torch.sqrt(a) * self.mu) / (a * self.s**2 + 1 - a)).to(x.dtype)
        return torch.cat([eps, -torch.ones_like(eps)], dim=-3) if self.learned_sigma else eps


class GaussianV(GaussianEps):
    """The exact v-predictor for the same data: v = sqrt(ᾱ) ε - sqrt(1 - ᾱ) E[x_0 | x_t], with E[x_0 | x_t] =
    (x_t - sqrt(1 - ᾱ) ε) / sqrt(ᾱ) (Salimans & Ho 2022), written from ε so both describe one denoiser."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = super().__call__(x, t)
        eps = out[..., :x.shape[-3], :, :].double()
        a = self.abar[t].reshape(-1, *([1] * (x.ndim - 1)))
        x0 = (x.double() - torch.sqrt(1 - a) * eps) / torch.sqrt(a)
        v = (torch.sqrt(a) * eps - torch.sqrt(1 - a) * x0).to(x.dtype)
        return torch.cat([v, out[..., x.shape[-3]:, :, :]], dim=-3) if self.learned_sigma else v


def reference_vb_bits(x0, noise, eps, v, t):
    """VLB term per sample in bits, straight from Ho et al. 2020 Eqs. 5-7, 13 and IDDPM Eq. 15, in numpy."""
    out = []
    for i, ti in enumerate(t):
        abar = ABAR_NP[ti]
        abar_prev = ABAR_NP[ti - 1] if ti > 0 else 1.0
        beta = BETAS_NP[ti]
        x_t = math.sqrt(abar) * x0[i] + math.sqrt(1 - abar) * noise[i]
        post_var_1 = BETAS_NP[1] * (1 - ABAR_NP[0]) / (1 - ABAR_NP[1])
        post_var = beta * (1 - abar_prev) / (1 - abar) if ti > 0 else post_var_1
        frac = (v[i] + 1) / 2
        logvar = frac * np.log(beta) + (1 - frac) * np.log(post_var)
        pred_x0 = (x_t - math.sqrt(1 - abar) * eps[i]) / math.sqrt(abar)
        c1 = beta * math.sqrt(abar_prev) / (1 - abar)
        c2 = (1 - abar_prev) * math.sqrt(1 - beta) / (1 - abar)
        mean = c1 * pred_x0 + c2 * x_t
        if ti > 0:
            true_mean = c1 * x0[i] + c2 * x_t
            kl = 0.5 * (-1 + logvar - np.log(post_var) + post_var / np.exp(logvar)
                        + (true_mean - mean) ** 2 / np.exp(logvar))
            out.append(kl.mean() / np.log(2))
        else:
            sd = np.exp(0.5 * logvar)
            x = x0[i]
            cdf_hi = norm.cdf((x + 1 / 255 - mean) / sd)
            cdf_lo = norm.cdf((x - 1 / 255 - mean) / sd)
            p = np.where(x < -0.999, cdf_hi, np.where(x > 0.999, 1 - cdf_lo, cdf_hi - cdf_lo))
            out.append(-np.log(p).mean() / np.log(2))
    return np.array(out)


def fixed_output_model(eps: torch.Tensor, v: torch.Tensor | None):
    def model(x, t):
        return eps if v is None else torch.cat([eps, v], dim=-3)
    return model


# ----------------------------------------------------------------------------------------------------------------
# Schedule and forward process.

def test_linear_betas_endpoints_and_length():
    b = linear_betas()
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert b[0].item() == pytest.approx(1e-4, rel=1e-12) and b[-1].item() == pytest.approx(0.02, rel=1e-12)
    np.testing.assert_allclose(b.numpy(), BETAS_NP, rtol=1e-12)
    short = linear_betas(10, 0.1, 0.2)
    assert len(short) == 10 and short[0].item() == pytest.approx(0.1) and short[-1].item() == pytest.approx(0.2)


def test_tables_and_from_config():
    cfg = SimpleNamespace(num_timesteps=1000, beta_start=1e-4, beta_end=0.02, min_snr_gamma=5.0)
    d = GaussianDiffusion.from_config(cfg)
    assert d.num_timesteps == 1000 and d.min_snr_gamma == 5.0
    np.testing.assert_allclose(d.alphas_cumprod.numpy(), ABAR_NP, rtol=1e-12)
    post = BETAS_NP[1:] * (1 - ABAR_NP[:-1]) / (1 - ABAR_NP[1:])
    np.testing.assert_allclose(d.posterior_variance[1:].numpy(), post, rtol=1e-10)
    assert d.posterior_variance[0].item() == 0.0
    # IDDPM clipping: log-variance at t=0 takes the t=1 value
    np.testing.assert_allclose(d.posterior_log_variance_clipped.numpy(), np.log(np.r_[post[0], post]), rtol=1e-10)


def test_q_sample_closed_form_and_statistics():
    d = GaussianDiffusion(linear_betas())
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 3, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 420, 999])
    a = ABAR_NP[t.numpy()].reshape(-1, 1, 1, 1, 1)
    expected = np.sqrt(a) * x0.numpy() + np.sqrt(1 - a) * noise.numpy()
    np.testing.assert_allclose(d.q_sample(x0, t, noise).numpy(), expected, rtol=1e-12)

    x0 = torch.full((2000, 1, 2, 2), 0.7)
    t = torch.full((2000,), 300)
    xt = d.q_sample(x0, t, torch.randn(x0.shape, generator=g))
    assert xt.dtype == torch.float32
    assert xt.mean().item() == pytest.approx(math.sqrt(ABAR_NP[300]) * 0.7, abs=0.03)
    assert xt.std().item() == pytest.approx(math.sqrt(1 - ABAR_NP[300]), abs=0.03)


def test_sample_timesteps_uniform_and_reproducible():
    d = GaussianDiffusion(linear_betas(100))
    t = d.sample_timesteps(20000, "cpu", generator=torch.Generator().manual_seed(1))
    assert t.dtype == torch.long and t.min() == 0 and t.max() == 99
    counts = torch.bincount(t, minlength=100).double()
    assert (counts - 200).abs().max() < 70
    assert torch.equal(t, d.sample_timesteps(20000, "cpu", generator=torch.Generator().manual_seed(1)))


# ----------------------------------------------------------------------------------------------------------------
# Hybrid loss.

def test_vb_is_zero_for_true_eps_and_posterior_variance():
    d = GaussianDiffusion(linear_betas())
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 2, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 10, 100, 300])  # β_t and β̃_t nearly coincide at large t, so stay below that
    exact = d.training_losses(fixed_output_model(noise, -torch.ones_like(noise)), x0, t, noise=noise)
    assert exact["vb"].abs().max().item() < 1e-9
    assert exact["mse"].abs().max().item() == 0.0
    # a wrong variance or a wrong ε both cost something
    wrong_var = d.training_losses(fixed_output_model(noise, torch.zeros_like(noise)), x0, t, noise=noise)
    wrong_eps = d.training_losses(fixed_output_model(noise + 0.1, -torch.ones_like(noise)), x0, t, noise=noise)
    assert (wrong_var["vb"] > 1e-6).all() and (wrong_eps["vb"] > 1e-6).all()
    assert (wrong_eps["mse"] - 0.01).abs().max().item() < 1e-12


@pytest.mark.parametrize("t_values", [[1, 37, 500, 999], [0, 0, 0, 3]])
def test_vb_matches_reference_kl_and_decoder_nll(t_values):
    d = GaussianDiffusion(linear_betas())
    g = torch.Generator().manual_seed(2)
    shape = (4, 3, 4, 4)
    # 8-bit data on the [-1, 1] grid, with both edge bins present
    x0 = torch.randint(0, 256, shape, generator=g).double() / 127.5 - 1
    x0[:, 0, 0, 0], x0[:, 0, 0, 1] = -1.0, 1.0
    noise = torch.randn(shape, generator=g, dtype=torch.float64)
    eps = noise + 0.02 * torch.randn(shape, generator=g, dtype=torch.float64)
    v = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    t = torch.tensor(t_values)
    out = d.training_losses(fixed_output_model(eps, v), x0, t, noise=noise)
    expected = reference_vb_bits(x0.numpy(), noise.numpy(), eps.numpy(), v.numpy(), t_values)
    np.testing.assert_allclose(out["vb"].numpy(), expected, rtol=1e-7)
    np.testing.assert_allclose(out["mse"].numpy(), ((noise - eps) ** 2).mean(dim=(1, 2, 3)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(out["loss"].numpy(), (out["mse"] + out["vb"]).numpy(), rtol=1e-12)
    assert "weight" not in out


def test_vb_trains_only_v_and_mse_only_eps():
    d = GaussianDiffusion(linear_betas())
    g = torch.Generator().manual_seed(3)
    shape = (3, 2, 3, 4, 4)
    x0 = torch.rand(shape, generator=g) * 2 - 1
    eps_p = torch.randn(shape, generator=g).requires_grad_()
    v_p = (0.5 * torch.randn(shape, generator=g)).requires_grad_()
    t = torch.tensor([0, 5, 700])
    out = d.training_losses(fixed_output_model(eps_p, v_p), x0, t)

    def grads(y):
        gs = torch.autograd.grad(y.sum(), [eps_p, v_p], retain_graph=True, allow_unused=True)
        return [torch.zeros(shape) if gr is None else gr for gr in gs]

    g_eps, g_v = grads(out["vb"])
    assert g_eps.abs().max().item() == 0.0 and g_v.abs().max().item() > 0
    g_eps, g_v = grads(out["mse"])
    assert g_eps.abs().max().item() > 0 and g_v.abs().max().item() == 0.0


def test_no_learned_sigma_gives_zero_vb():
    d = GaussianDiffusion(linear_betas())
    x0 = torch.zeros(2, 3, 4, 4)
    noise = torch.ones_like(x0)
    out = d.training_losses(fixed_output_model(torch.zeros_like(x0), None), x0, torch.tensor([0, 9]), noise=noise)
    assert torch.equal(out["vb"], torch.zeros(2)) and torch.allclose(out["mse"], torch.ones(2))
    assert torch.equal(out["loss"], out["mse"])


def test_min_snr_gamma_weights():
    gamma = 5.0
    d = GaussianDiffusion(linear_betas(), min_snr_gamma=gamma)
    t_np = np.array([0, 50, 150, 600, 999])
    t = torch.from_numpy(t_np)
    snr_np = ABAR_NP / (1 - ABAR_NP)
    w_np = np.minimum(snr_np, gamma) / snr_np
    assert w_np[t_np][0] < 1e-3 and w_np[t_np][-1] == 1.0  # the chosen t straddle SNR = γ
    np.testing.assert_allclose(d.snr(t).numpy(), snr_np[t_np], rtol=1e-10)
    g = torch.Generator().manual_seed(4)
    x0 = torch.rand(5, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    v = torch.zeros_like(eps)
    out = d.training_losses(fixed_output_model(eps, v), x0, t)
    np.testing.assert_allclose(out["weight"].numpy(), w_np[t_np], rtol=1e-10)
    np.testing.assert_allclose(out["loss"].numpy(), (out["weight"] * out["mse"] + out["vb"]).numpy(), rtol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Schedulers: respacing and the learned-range step.

@pytest.mark.parametrize("steps", [250, 50])
def test_ddpm_timesteps_match_iddpm_respacing(steps):
    s = make_scheduler("ddpm", linear_betas(), steps)
    ts = s.timesteps.tolist()
    assert ts == sorted(iddpm_space_timesteps(1000, steps), reverse=True)
    if steps == 250:
        assert ts[::-1] == [round(i * (999 / 249)) for i in range(250)]
        assert ts[-4:] == [12, 8, 4, 0] and ts[0] == 999
    # each step goes to the next listed timestep, the last one to -1 (x_0)
    for a, b in itertools.pairwise(ts):
        assert int(s.previous_timestep(a)) == b
    assert int(s.previous_timestep(ts[-1])) == -1


@pytest.mark.parametrize("steps", [250, 50])
def test_ddim_timesteps_match_iddpm_ddim_respacing(steps):
    s = make_scheduler("ddim", linear_betas(), steps)
    assert s.timesteps.tolist() == iddpm_ddim_timesteps(1000, steps)[::-1]
    assert s.timesteps.tolist() == list(range(0, 1000, 1000 // steps))[::-1]
    assert s.final_alpha_cumprod.item() == 1.0


@pytest.mark.parametrize("steps", [25, 20])
def test_dpm_solver_timesteps(steps):
    s = make_scheduler("dpm-solver++", linear_betas(), steps)
    assert s.timesteps.tolist() == [round(k * 999 / steps) for k in range(steps, 0, -1)]
    assert s.sigmas[-1].item() == 0.0  # the last step lands on x_0


@pytest.mark.parametrize("index", [0, 10, 49])
def test_ddpm_learned_range_step_matches_iddpm_respaced_formula(index):
    steps, seeds = 50, [3, 7, 11]
    s = make_scheduler("ddpm", linear_betas(), steps)
    ts = s.timesteps.tolist()
    t = ts[index]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 2, 4, 4, generator=g)
    eps = torch.randn(3, 2, 4, 4, generator=g)
    v = torch.rand(3, 2, 4, 4, generator=g) * 2 - 1
    out = s.step(torch.cat([eps, v], dim=1), s.timesteps[index], x, generator=make_generators(seeds)).prev_sample

    # IDDPM respacing: β'_i = 1 - ᾱ_{t_i} / ᾱ_{t_{i-1}}, posterior and learned range from the respaced chain
    abar = ABAR_NP[t]
    abar_prev = ABAR_NP[ts[index + 1]] if index + 1 < steps else 1.0
    beta_r = 1 - abar / abar_prev
    xn, en, vn = x.double().numpy(), eps.double().numpy(), v.double().numpy()
    pred_x0 = (xn - math.sqrt(1 - abar) * en) / math.sqrt(abar)
    mean = (beta_r * math.sqrt(abar_prev) * pred_x0 + (1 - abar_prev) * math.sqrt(1 - beta_r) * xn) / (1 - abar)
    if t == 0:
        expected = mean
    else:
        post_var = beta_r * (1 - abar_prev) / (1 - abar)
        frac = (vn + 1) / 2
        logvar = frac * np.log(beta_r) + (1 - frac) * np.log(post_var)
        # each sample's noise comes from its own generator
        z = np.concatenate([torch.randn((1, 2, 4, 4), generator=torch.Generator().manual_seed(sd)).double().numpy()
                            for sd in seeds])
        expected = mean + np.exp(0.5 * logvar) * z
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=2e-4, atol=2e-5)


# ----------------------------------------------------------------------------------------------------------------
# End-to-end sampling on an analytically solvable model.

@pytest.mark.parametrize(("sampler", "steps", "learned_sigma"), [
    ("ddpm", 250, True),
    ("ddpm", 250, False),
    ("ddim", 100, True),
    ("dpm-solver++", 25, True),
    ("dpm-solver++", 25, False),
])
def test_gaussian_data_is_recovered(sampler, steps, learned_sigma):
    # 8192 elements: the std's sampling error is ~0.004; the rest of the budget is discretization bias (~0.015 for
    # these step counts: DDPM with the posterior variance and DDIM / DPM-Solver all shrink a little)
    mu, s = 0.3, 0.5
    model = GaussianEps(mu, s, learned_sigma)
    seeds = list(range(32))
    x = sample(model, (2, 2, 8, 8), seeds, sampler=sampler, steps=steps, learned_sigma=learned_sigma)
    assert x.shape == (32, 2, 2, 8, 8)
    assert x.mean().item() == pytest.approx(mu, abs=0.03)
    assert x.std().item() == pytest.approx(s, abs=0.03)
    if sampler != "ddpm":
        # deterministic samplers map each sample's noise monotonically (here: affinely) to its x_0
        z = seeded_noise((2, 2, 8, 8), seeds)
        assert torch.corrcoef(torch.stack([x.flatten(), z.flatten()]))[0, 1].item() > 0.9999


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm-solver++"])
def test_v_prediction_samples_like_the_same_denoiser_in_eps(sampler):
    # One denoiser, two parameterisations: with prediction="v_prediction" the sampler must turn v back into the
    # same step; a sampler left on "epsilon" would read v as ε and land far away.
    mu, s, seeds, steps = 0.3, 0.5, list(range(8)), {"ddpm": 50, "ddim": 50, "dpm-solver++": 20}[sampler]
    ref = sample(GaussianEps(mu, s, True), (2, 2, 8, 8), seeds, sampler=sampler, steps=steps, dtype=torch.float64)
    v = sample(GaussianV(mu, s, True), (2, 2, 8, 8), seeds, sampler=sampler, steps=steps, dtype=torch.float64,
               prediction="v_prediction")
    wrong = sample(GaussianV(mu, s, True), (2, 2, 8, 8), seeds, sampler=sampler, steps=steps, dtype=torch.float64)
    np.testing.assert_allclose(v.numpy(), ref.numpy(), atol=1e-6)
    assert (wrong - ref).abs().mean().item() > 0.1


def test_v_prediction_training_loss():
    # The v target, and the VLB computed from the ε the v output implies: the exact v gives mse 0 and the same vb
    # as the exact ε under epsilon prediction; Min-SNR-γ weights v by min(SNR, γ) / (SNR + 1).
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 300, 700, 999])
    var = torch.rand(6, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    abar = torch.from_numpy(ABAR_NP)[t].reshape(-1, 1, 1, 1)
    v_true = abar.sqrt() * noise - (1 - abar).sqrt() * x0
    eps_terms = GaussianDiffusion(linear_betas()).training_losses(fixed_output_model(noise, var), x0, t, noise)
    v_diffusion = GaussianDiffusion(linear_betas(), prediction="v_prediction")
    v_terms = v_diffusion.training_losses(fixed_output_model(v_true, var), x0, t, noise)
    assert v_terms["mse"].abs().max().item() < 1e-20
    np.testing.assert_allclose(v_terms["vb"].numpy(), eps_terms["vb"].numpy(), rtol=1e-6, atol=1e-9)
    off = v_diffusion.training_losses(fixed_output_model(v_true + 0.1, var), x0, t, noise)
    np.testing.assert_allclose(off["mse"].numpy(), 0.01, rtol=1e-9)
    snr = (abar / (1 - abar)).flatten()
    weighted = GaussianDiffusion(linear_betas(), min_snr_gamma=5.0, prediction="v_prediction").training_losses(
        fixed_output_model(v_true + 0.1, var), x0, t, noise)
    np.testing.assert_allclose(weighted["weight"].numpy(), (snr.clamp(max=5.0) / (snr + 1)).numpy(), rtol=1e-9)
    with pytest.raises(ValueError, match="unknown prediction"):
        GaussianDiffusion(linear_betas(), prediction="x0")


def test_ddim_is_the_exact_affine_map_on_gaussian_data():
    # With the exact ε̂, one DDIM step (Song et al. 2021, Eq. 12, η = 0) maps y_t = x_t - sqrt(ᾱ_t) μ to
    # y_s = (sqrt(ᾱ_s ᾱ_t) s² + sqrt((1 - ᾱ_s)(1 - ᾱ_t))) / (ᾱ_t s² + 1 - ᾱ_t) · y_t, so x_0 = μ + K y_T.
    mu, s, steps = 0.3, 0.5, 50
    ts = iddpm_ddim_timesteps(1000, steps)[::-1]
    gain = 1.0
    for i, t in enumerate(ts):
        a, a_prev = ABAR_NP[t], (ABAR_NP[ts[i + 1]] if i + 1 < steps else 1.0)
        gain *= (math.sqrt(a_prev * a) * s**2 + math.sqrt((1 - a_prev) * (1 - a))) / (a * s**2 + 1 - a)
    seeds = list(range(8))
    z = seeded_noise((2, 2, 8, 8), seeds, "cpu", torch.float64)
    expected = mu + gain * (z - math.sqrt(ABAR_NP[999]) * mu)
    x = sample(GaussianEps(mu, s, True), (2, 2, 8, 8), seeds, sampler="ddim", steps=steps)
    np.testing.assert_allclose(x.double().numpy(), expected.numpy(), atol=1e-3)


def test_gaussian_data_recovered_for_images():
    mu, s = -0.2, 0.4
    x = sample(GaussianEps(mu, s, True), (3, 16, 16), list(range(6)), sampler="ddim", steps=50)
    assert x.shape == (6, 3, 16, 16)
    assert x.mean().item() == pytest.approx(mu, abs=0.03)
    assert x.std().item() == pytest.approx(s, abs=0.03)


# ----------------------------------------------------------------------------------------------------------------
# Seeding.

def test_seeded_noise_row_i_comes_from_seed_i():
    shape = (2, 3, 4, 4)
    noise = seeded_noise(shape, [4, 9], "cpu", torch.float64)
    assert noise.shape == (2, *shape) and noise.dtype == torch.float64
    for row, seed in zip(noise, [4, 9], strict=True):
        ref = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(row, ref.double())
    assert torch.equal(seeded_noise(shape, [9], "cpu", torch.float64)[0], noise[1])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_seeded_noise_is_device_independent():
    shape = (2, 3, 4, 4)
    assert torch.equal(seeded_noise(shape, [1, 2], "cuda", torch.float32).cpu(), seeded_noise(shape, [1, 2]))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samples_depend_only_on_their_seed(sampler):
    model = ChannelMix(3, learned_sigma=True)
    shape, seeds = (2, 3, 4, 4), [5, 6, 7, 8]
    batch = sample(model, shape, seeds, sampler=sampler, steps=8)
    alone = torch.cat([sample(model, shape, [sd], sampler=sampler, steps=8) for sd in seeds])
    assert torch.equal(batch, alone)
    assert torch.equal(sample(model, shape, seeds[::-1], sampler=sampler, steps=8), batch.flip(0))
    other = sample(model, shape, [15, 16, 17, 18], sampler=sampler, steps=8)
    assert torch.isfinite(batch).all()
    assert all(not torch.allclose(a, b) for a, b in zip(batch, other, strict=True))
    assert not torch.allclose(batch[0], batch[1])


def test_single_ddpm_step_returns_predicted_x0():
    # one respaced step is the chain {0}: x_0 = x̂_0(x_T) with no noise added, whatever v says
    model = ChannelMix(2, learned_sigma=True)
    x_t = torch.randn((1, 2, 4, 4), generator=torch.Generator().manual_seed(1))
    eps0 = model(x_t, torch.tensor([0]))[:, :2]
    out = sample(model, (2, 4, 4), [1], sampler="ddpm", steps=1)
    abar0 = ABAR_NP[0]
    torch.testing.assert_close(out, (x_t - math.sqrt(1 - abar0) * eps0) / math.sqrt(abar0))


# ----------------------------------------------------------------------------------------------------------------
# Classifier-free guidance.

class LabelModel:
    """Output depends on the class label y; records the batch size of every call."""

    def __init__(self, learned_sigma: bool) -> None:
        self.learned_sigma = learned_sigma
        self.batches: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        yy = y.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        eps = x * (1 + 0.1 * yy) + 0.05 * yy + t.to(x.dtype).reshape(yy.shape) / 1000
        return torch.cat([eps, torch.tanh(x - 0.2 * yy)], dim=-3) if self.learned_sigma else eps


@pytest.mark.parametrize("learned_sigma", [True, False])
def test_cfg_guides_eps_and_keeps_conditional_variance(learned_sigma):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 2, 3, 4, 4, generator=g)
    t = torch.tensor([10, 500, 999])
    y_c, y_u = torch.tensor([1, 2, 3]), torch.tensor([10, 10, 10])
    model = LabelModel(learned_sigma)
    out_c, out_u = model(x, t, y=y_c), model(x, t, y=y_u)
    model.batches.clear()

    scale = 4.0
    guided = classifier_free_guidance(model, scale, {"y": y_c}, {"y": y_u})(x, t)
    assert model.batches == [6]
    assert guided.shape == out_c.shape
    eps_c, eps_u = out_c[:, :, :3], out_u[:, :, :3]
    torch.testing.assert_close(guided[:, :, :3], eps_u + scale * (eps_c - eps_u))
    if learned_sigma:
        assert torch.equal(guided[:, :, 3:], out_c[:, :, 3:])
        assert not torch.allclose(out_c[:, :, 3:], out_u[:, :, 3:])

    model.batches.clear()
    plain = classifier_free_guidance(model, 1.0, {"y": y_c}, {"y": y_u})(x, t)
    assert model.batches == [3] and torch.equal(plain, out_c)


@pytest.mark.parametrize("learned_sigma", [True, False])
def test_cfg_on_the_first_channels_keeps_the_others_conditional(learned_sigma):
    # DiT models.py forward_with_cfg: guides eps[:, :3]; the 4th latent channel and the variance are the
    # conditional half's
    g = torch.Generator().manual_seed(7)
    x, t = torch.randn(3, 4, 4, 4, generator=g), torch.tensor([10, 500, 999])
    y_c, y_u = torch.tensor([1, 2, 3]), torch.tensor([10, 10, 10])
    model = LabelModel(learned_sigma)
    out_c, out_u = model(x, t, y=y_c), model(x, t, y=y_u)
    guided = classifier_free_guidance(model, 4.0, {"y": y_c}, {"y": y_u}, channels=3)(x, t)
    assert guided.shape == out_c.shape
    torch.testing.assert_close(guided[:, :3], out_u[:, :3] + 4.0 * (out_c[:, :3] - out_u[:, :3]))
    assert torch.equal(guided[:, 3:], out_c[:, 3:]) and not torch.allclose(out_c[:, 3:4], out_u[:, 3:4])
    with pytest.raises(ValueError, match="cfg channels 5 > the model's 4"):
        classifier_free_guidance(model, 4.0, {"y": y_c}, {"y": y_u}, channels=5)(x, t)


def test_cfg_model_samples():
    model = LabelModel(True)
    guided = classifier_free_guidance(model, 1.5, {"y": torch.tensor([1, 2])}, {"y": torch.tensor([0, 0])})
    x = sample(guided, (2, 3, 4, 4), [0, 1], sampler="dpm-solver++", steps=5, progress=True)
    assert x.shape == (2, 2, 3, 4, 4) and torch.isfinite(x).all()
    assert model.batches == [4] * 5
    # model_kwargs reach the model at every step; guidance with scale 1 is the same conditional model
    model.batches.clear()
    plain = sample(model, (2, 3, 4, 4), [0, 1], sampler="ddpm", steps=5, model_kwargs={"y": torch.tensor([1, 2])})
    unit = sample(classifier_free_guidance(model, 1.0, {"y": torch.tensor([1, 2])}, {"y": torch.tensor([0, 0])}),
                  (2, 3, 4, 4), [0, 1], sampler="ddpm", steps=5)
    assert torch.equal(plain, unit) and model.batches == [2] * 10


# ----------------------------------------------------------------------------------------------------------------
# Bad inputs.

def test_unknown_sampler_is_rejected():
    with pytest.raises(ValueError, match="ddpm.*ddim.*dpm-solver"):
        make_scheduler("euler", linear_betas(), 10)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(ChannelMix(3, True), (3, 4, 4), [0], sampler="heun")
    with pytest.raises(ValueError, match="num_steps"):
        make_scheduler("ddim", linear_betas(), 1001)


def test_wrong_output_shape_is_rejected():
    d = GaussianDiffusion(linear_betas())
    x0 = torch.zeros(2, 2, 3, 4, 4)
    t = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="channels"):
        d.training_losses(fixed_output_model(torch.zeros(2, 2, 9, 4, 4), None), x0, t)
    with pytest.raises(ValueError, match="channels"):
        d.training_losses(fixed_output_model(torch.zeros(2, 2, 3, 4, 5), None), x0, t)
    with pytest.raises(ValueError, match="learned_sigma"):
        sample(ChannelMix(3, learned_sigma=False), (3, 4, 4), [0], steps=2, learned_sigma=True)
    with pytest.raises(ValueError, match="learned_sigma"):
        sample(ChannelMix(3, learned_sigma=True), (3, 4, 4), [0], steps=2, learned_sigma=False)
    with pytest.raises(ValueError, match="same keys"):
        classifier_free_guidance(ChannelMix(3, True), 2.0, {"y": torch.zeros(1)}, {})


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_clip_denoised_keeps_pixel_samples_in_range(sampler):
    # A model whose ε is badly off at high noise sends unclipped x_0 estimates far outside the data range
    # (what an under-trained pixel-space model does); clipping x_0 to [-1, 1] keeps every sample in range.
    def bad_model(x, t):
        eps = 0.5 * x
        return torch.cat([eps, torch.full_like(x, -1.0)], dim=-3)

    free = sample(bad_model, (2, 3, 4, 4), [0, 1], sampler=sampler, steps=10)
    clipped = sample(bad_model, (2, 3, 4, 4), [0, 1], sampler=sampler, steps=10, clip_denoised=True)
    assert free.abs().max() > 2
    assert clipped.abs().max() <= 1.0 + 1e-5
