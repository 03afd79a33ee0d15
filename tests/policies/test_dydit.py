"""DyDiT as a policy (flexgen.policies.dydit.routing, the Latte family's DyDiT path): configs, stratified timesteps, the
complete-model rows, MACs from real kept counts = FlopCounterMode of the skipping forward, the published router
overhead, a short fine-tune that meets its λ, and the errors for bad input."""

import json

import numpy as np
import pytest
import torch

from flexgen.config import load_config
from flexgen.diffusion import GaussianDiffusion
from flexgen.flops import flop_counter
from flexgen.policies.dydit.budget import flops_fraction
from flexgen.policies.timesteps import StratifiedTimesteps, timestep_weights
from flexgen.registry import build_denoiser
from flexgen.schema import ConfigError
from flexgen.train import heldout_loss, train
from tests.dydit_helpers import SMALL, SynthClips, dydit_of, randomise_routers, run_config

DIT = ["model.preset=DiT-S/2", "model.depth=3", "data.num_frames=1", "data.image_size=8", "model.hidden_size=32"]


def test_config_section_and_bad_values():
    assert not run_config().dydit.enabled
    run = run_config("dydit.target=0.5")
    assert run.dydit.enabled and build_denoiser(run).policy.name == "dydit"
    for bad in ("0", "1.5", "-0.2"):
        with pytest.raises(ConfigError, match=r"dydit\.target.*\(0, 1\]"):
            run_config(f"dydit.target={bad}")
    with pytest.raises(ConfigError, match="dydit.*unknown|unknown.*dydit|not a field|no field"):
        run_config("dydit.lambda=0.5")
    composed = build_denoiser(run_config("dydit.target=0.5", "density.layout=P GSR T", "density.schedule.kind=constant",
                                         "density.schedule.grid=4")).net
    assert composed.policy.name == "flexdit+dydit"


def test_stratified_timesteps_cover_each_stratum():
    own = torch.Generator().manual_seed(0)
    t = StratifiedTimesteps(1000, 4)(4000, own, own)
    for k in range(4):                                            # sample i lies in [250 k, 250 (k + 1)), k = i mod 4
        stratum = t[k::4]
        assert int(stratum.min()) >= 250 * k and int(stratum.max()) < 250 * (k + 1)
        assert float(stratum.float().std()) > 60                  # spread over its stratum (uniform: 72)
    run = run_config("diffusion.timestep_sampling=logit_normal")
    weights = timestep_weights(run.diffusion)
    t = StratifiedTimesteps(1000, 4, weights)(4000, own, own)
    cdf = weights.cumsum(0)
    for k in range(4):                                            # strata are quantiles of the density
        mass = cdf[t[k::4]]
        assert float(mass.min()) >= k / 4 - 1e-9 and float(mass.max()) <= (k + 1) / 4 + 2e-3


@pytest.mark.parametrize("extra", [SMALL, DIT], ids=["Latte", "DiT"])
def test_complete_rows_run_the_dense_model(extra):
    model = randomise_routers(build_denoiser(run_config(*extra, "dydit.target=0.5")).double().train())
    dense = build_denoiser(run_config(*extra)).double().train()
    dense.net.load_state_dict({k: v for k, v in model.net.state_dict().items() if "routers" not in k})
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, *model.latent_shape(), generator=g, dtype=torch.float64)
    t, y = torch.tensor([900, 900, 10, 10]), torch.tensor([0, 1, 2, 4])
    complete = torch.tensor([False, True, False, True])
    torch.manual_seed(0)
    out = model(x, t, y=y, complete=complete)
    torch.testing.assert_close(out[complete], dense(x, t, y=y)[complete], rtol=0, atol=1e-12)
    heads = torch.stack([r.heads for r in dydit_of(model.net).routing])          # (blocks, B, H)
    tokens = torch.stack([r.tokens.mean(1) for r in dydit_of(model.net).routing])
    assert bool((heads[:, complete] == 1).all()) and bool((tokens[:, complete] == 1).all())
    assert float(heads[:, ~complete].detach().mean()) < 0.9                    # the routed rows did turn heads off


@pytest.mark.parametrize("extra", [SMALL, DIT], ids=["Latte", "DiT"])
def test_macs_from_kept_counts_equal_flop_counter_of_the_skipping_forward(extra):
    model = randomise_routers(build_denoiser(run_config(*extra, "dydit.target=0.5")).double().eval())
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, *model.latent_shape(), generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 4])
    for t_value in (50, 600, 950):
        with torch.no_grad(), flop_counter() as counter:
            model(x, torch.full((6,), t_value), y=y)
        per_sample = model.forward_macs()                         # (6,) from the gates the forward used
        assert per_sample.sum().item() == pytest.approx(counter.get_total_flops() / 2, rel=1e-12)
        kept = torch.stack([r.tokens.sum(1) for r in dydit_of(model.net).routing])
        assert len(set(kept[:, 0].tolist())) > 1 or len(set(kept[0].tolist())) > 1   # counts differ: real data
    dense_macs = model.cost().forward_macs(None).gmacs * 1e9       # counted on the meta device, one sample
    assert float(per_sample.max()) < dense_macs
    dense = build_denoiser(run_config(*extra)).double().eval()
    with torch.no_grad(), flop_counter() as counter:               # the CPU SDPA kernel is counted like meta's
        dense(x, torch.full((6,), 50), y=y)
    assert counter.get_total_flops() / 2 == pytest.approx(6 * dense_macs, rel=1e-12)


def test_router_parameters_match_the_published_count():
    """DyDiT-XL/2: 675 M -> 678 M parameters (paper Table 1)."""
    overrides = ["model.preset=DiT-XL/2", "model.num_classes=1000", "data.num_frames=1", "data.image_size=256",
                 "model.in_channels=4", "autoencoder.kind=sd-vae", "autoencoder.downsample=8"]
    with torch.device("meta"):
        dense = build_denoiser(load_config(None, overrides + ["data.dataset=synthetic"]))
        dy = build_denoiser(load_config(None, overrides + ["data.dataset=synthetic", "dydit.target=0.5"]))
    n_dense = sum(p.numel() for p in dense.parameters())
    n_dy = sum(p.numel() for p in dy.parameters())
    assert round(n_dense / 1e6) == 675 and round(n_dy / 1e6) == 678
    costs = dydit_of(dy.net).block_costs()                                  # the reference's A and P (DyDiT loss.py)
    assert costs[0].attention / 1e9 == pytest.approx(1.5099, abs=1e-4)
    assert costs[0].mlp / 1e9 == pytest.approx(2.7179, abs=1e-4)


def test_a_short_fine_tune_meets_its_target_and_keeps_the_loss(tmp_path):
    """Dense tiny Latte -> DyDiT at λ = 0.5 on the synthetic motions: the eval-mode FLOPs fraction over t is within
    ±0.05 of λ, and the held-out loss within 3% of the dense model's (measured: 0.51 and +0.3% on random clips)."""
    common = [*SMALL, "train.batch_size=8", "train.log_every_samples=80", "train.ckpt_every_samples=100000"]
    data = SynthClips(32)
    train(run_config(*common, "train.total_samples=1600", "train.lr=2e-3"), tmp_path / "dense", dataset=data,
          progress=False)
    dy_run = run_config(*common, "train.total_samples=1600", "train.lr=1e-3", "dydit.target=0.5",
                        "dydit.hold_steps=10", "dydit.anneal_steps=100", "dydit.complete_steps=45",
                        f"train.init_from={tmp_path / 'dense' / 'ema.safetensors'}")
    train(dy_run, tmp_path / "dy", dataset=data, progress=False)
    stats = [json.loads(line) for line in (tmp_path / "dy" / "stats.jsonl").read_text().splitlines()]
    assert stats[0]["flops_target"] == pytest.approx(1.0, abs=0.1) and stats[-1]["flops_target"] == 0.5
    assert "loss_complete" in stats[0] and "loss_complete" not in stats[-1]      # the warm-up stage ended
    assert "keep/h03" in stats[-1] and "skipped" in stats[-1]

    dense = build_denoiser(run_config(*SMALL))
    dense.load_pretrained(tmp_path / "dense" / "ema.safetensors")
    dy = build_denoiser(dy_run)
    dy.load_pretrained(tmp_path / "dy" / "ema.safetensors", routers_required=True)
    held = SynthClips(16, seed=1)
    diffusion = GaussianDiffusion.from_config(dy_run.diffusion)
    dense_loss = heldout_loss(dense, held.video, diffusion, {"y": held.label})["loss"]
    dy_loss = heldout_loss(dy, held.video, diffusion, {"y": held.label})["loss"]
    fractions = []
    with torch.no_grad():
        for t in range(0, 1000, 50):                              # the eval (hard, noiseless) gates at each t
            dy(held.video, torch.full((16,), t), y=held.label)
            r = dydit_of(dy.net).routing
            fractions.append(flops_fraction(dydit_of(dy.net).block_costs(), [b.heads for b in r], [b.groups for b in r],
                                            [b.tokens for b in r]).mean().item())
    assert abs(np.mean(fractions) - 0.5) <= 0.05
    assert fractions[0] > fractions[-1]                           # the model spends more near the data (DyDiT Fig. 1)
    assert dy_loss <= 1.03 * dense_loss
    assert 1 <= max(dydit_of(dy.net).patterns()) <= len(fractions)


# ----------------------------------------------------------------------------------------------------------------
# Conversion, sampling and bench on DyDiT models.


def test_convert_then_sample_a_dydit_model(tmp_path, capsys):
    from flexgen.checkpoint import load_model, save_weights
    from flexgen.cli import main
    from flexgen.policies import DyDiT

    dense = build_denoiser(run_config(*SMALL))
    with torch.no_grad():
        for p in dense.parameters():
            p.normal_(0, 0.05)
    save_weights(dense.net, tmp_path / "dense.safetensors")
    assert main(["convert", "--from", str(tmp_path / "dense.safetensors"), "--config", "configs/demo/tiny.yaml",
                 *SMALL, "dydit.target=0.5", "--out", str(tmp_path / "dy.safetensors")]) == 0
    assert "DyDiT routers" in capsys.readouterr().out
    converted = load_model(tmp_path / "dy.safetensors").eval()
    assert converted.policy.part(DyDiT) is not None
    x = torch.randn(2, 4, 3, 8, 8)
    t, y = torch.tensor([300, 300]), torch.tensor([1, 2])
    with torch.no_grad():                                         # fresh routers all on: the dense model
        torch.testing.assert_close(converted(x, t, y), dense.net.eval()(x, t, y), rtol=0, atol=1e-5)

    trained = randomise_routers(build_denoiser(run_config(*SMALL, "dydit.target=0.5")))
    trained.net.load_state_dict(converted.state_dict(), strict=False)
    randomise_routers(trained)
    save_weights(trained.net, tmp_path / "trained.safetensors")
    out = tmp_path / "samples"
    common = ["--config", "configs/demo/tiny.yaml", "--num-samples", "3", "--sampler", "ddim", "--steps", "4",
              "--cfg-scale", "2", "--batch-size", "2", "--no-progress", *SMALL, "dydit.target=0.5"]
    assert main(["sample", "--ckpt", str(tmp_path / "trained.safetensors"), "--out", str(out), *common]) == 0
    record = json.loads((out / "samples.json").read_text())
    cost = record["cost"]
    assert record["method"] == "dydit 0.5" and record["settings"]["model_class"] == "Latte"
    assert len(cost["gmacs_per_sample_at_t"]) == 4 and 0 < cost["flops_fraction"] < 1
    assert cost["gmacs_per_sample"] == pytest.approx(sum(cost["gmacs_per_sample_at_t"].values()))
    assert cost["gmacs_per_sample_dense"] == pytest.approx(8 * cost["gmacs_per_forward_dense"])   # 4 steps × CFG
    assert all(1 <= n <= 4 for n in cost["sliced_weight_patterns"])   # at most one per step
    # a dense checkpoint under a DyDiT config: its fresh routers would run the dense model
    assert main(["sample", "--ckpt", str(tmp_path / "dense.safetensors"), "--out", str(tmp_path / "no"),
                 *common]) == 2
    assert "holds no DyDiT routers" in capsys.readouterr().err and not (tmp_path / "no").exists()

    # bench flops on the trained checkpoint: the sampler's MACs per step from its kept counts
    assert main(["bench", "flops", "--config", "configs/demo/tiny.yaml", *SMALL, "dydit.target=0.5",
                 "sample.sampler=ddim", "sample.steps=4", "--ckpt", str(tmp_path / "trained.safetensors"),
                 "--num-samples", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # the same seeds, labels and sampler as `flexgen sample` (batch shapes differ: a token gate near 0 may flip;
    # a different protocol, e.g. without clip_denoised, differs by ~6%)
    assert report["gmacs_per_sample"] == pytest.approx(cost["gmacs_per_sample"], rel=0.01)
    assert report["router_params"] > 0 and len(report["gmacs_per_sample_at_t"]) == 4


def test_bench_dydit_without_weights(capsys):
    from flexgen.cli import main

    assert main(["bench", "flops", "--model", "DiT-XL/2", "--target", "0.5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert round(report["params_dense"] / 1e6) == 675 and round(report["params"] / 1e6) == 678
    assert report["router_gmacs"] == pytest.approx(0.6, abs=0.01)       # DyDiT: ~0.6 GMACs of routers (XL)
    blocks = sum(a + p for a, p in report["block_gmacs"])
    expected = report["gmacs_dense"] - blocks / 2 + report["router_gmacs"]   # 8 of 16 heads and groups
    assert report["gmacs"] == pytest.approx(expected, rel=1e-9)
    tiny = ["--config", "configs/demo/tiny.yaml", *SMALL, "dydit.target=0.5"]
    assert main(["bench", "flops", *tiny, "--json"]) == 0
    counted = json.loads(capsys.readouterr().out)                  # the synthetic setting, counted on meta
    assert main(["bench", "latency", *tiny, "--repeats", "1", "--warmup", "0", "--cfg-scale", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)                   # MACs of the timed forwards' kept counts
    assert report["policy"] == "DyDiT" and report["gmacs"] == pytest.approx(counted["gmacs"], rel=1e-9)
    assert report["flops_ratio"] == pytest.approx(counted["flops_ratio"], rel=1e-9)
    assert report["forward"]["dense_s"] > 0 and report["sampling"]["steps"] == 250
    assert report["sliced_weight_patterns"] == [1] * 4
    assert main(["bench", "flops", *tiny, "--scattered", "--json"]) == 0      # a trained router's look (issue 31)
    scattered = json.loads(capsys.readouterr().out)
    assert scattered["router_setting"] == "synthetic λ=0.5 scattered" and scattered["gmacs"] < counted["gmacs"]
    assert main(["bench", "latency", *tiny, "--scattered", "--repeats", "1", "--warmup", "0", "--json"]) == 0
    timed = json.loads(capsys.readouterr().out)
    assert timed["router_setting"] == "synthetic λ=0.5 scattered" and timed["flops_ratio"] < report["flops_ratio"]
    assert main(["bench", "flops", "--config", "configs/demo/tiny.yaml", "--scattered"]) == 2
    assert "--scattered sets DyDiT's synthetic routers" in capsys.readouterr().err
    assert main(["bench", "flops", "--config", "configs/demo/tiny.yaml", "--target", "0.5"]) == 2
    assert "no dydit section" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [SMALL, DIT], ids=["Latte", "DiT"])
def test_the_scattered_synthetic_setting_looks_like_a_trained_router(extra):
    """issue 31: the bench's scattered setting keeps units spread over each block (slices are copies) and 70% of the
    tokens of each MLP; its measured MACs are what the meta count of the setting says, and the skipping forward is
    still the masked definition."""
    from flexgen.policies.dydit.routing import synthetic_units

    model = build_denoiser(run_config(*extra, "dydit.target=0.5")).double().eval()
    policy = dydit_of(model.net)
    policy.set_synthetic(0.5, scattered=True)
    x = torch.randn(2, *model.latent_shape(), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    t, y = torch.tensor([500, 500]), torch.tensor([1, 2])
    with torch.no_grad():
        policy.skip = True
        fast = model(x, t, y=y)                                        # (the first call sets the token thresholds)
        routing = policy.routing
        policy.skip = False
        torch.testing.assert_close(model(x, t, y=y), fast, rtol=0, atol=1e-10)
    for r, router in zip(routing, model.net.width_routers, strict=True):
        on = r.heads[0].nonzero().squeeze(1)
        assert torch.equal(on, synthetic_units(router.num_heads, 0.5, scattered=True))
        assert int(on[-1]) - int(on[0]) >= len(on)                     # not one contiguous run
    kept = [float(r.tokens.mean()) for r in routing if r.tokens is not None]
    assert kept and all(abs(k - 0.7) < 0.02 for k in kept)
    counted = policy.synthetic_macs(model.cost(), None, 0.5, scattered=True)
    assert float(model.forward_macs().mean()) == pytest.approx(counted, rel=0.01)
    assert any(cache.nbytes > 0 for cache in policy.slice_caches())   # copies, as a trained router's patterns


def test_dit_guidance_channels():
    """sample.cfg_channels = 3 guides ε channels 0-2 only (DiT's forward_with_cfg); channel 3 and the variance
    come from the conditional half."""
    from flexgen.diffusion import classifier_free_guidance

    eps_c, eps_u, var = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)

    def model(x, t, y):
        cond = y[:, None, None, None] == 0
        return torch.cat([torch.where(cond, eps_c.repeat(2, 1, 1, 1)[: len(y)], eps_u.repeat(2, 1, 1, 1)[: len(y)]),
                          var.repeat(2, 1, 1, 1)[: len(y)]], dim=1)

    guided = classifier_free_guidance(model, 4.0, {"y": torch.zeros(2, dtype=torch.long)},
                                      {"y": torch.ones(2, dtype=torch.long)}, channels=3)
    out = guided(torch.zeros(2, 4, 4, 4), torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(out[:, :3], eps_u[:, :3] + 4 * (eps_c[:, :3] - eps_u[:, :3]))
    torch.testing.assert_close(out[:, 3], eps_c[:, 3])
    torch.testing.assert_close(out[:, 4:], var)
    with pytest.raises(ConfigError, match="cfg_channels"):
        run_config("sample.cfg_channels=0")


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    model = randomise_routers(build_denoiser(run_config(*SMALL, "dydit.target=0.5")).double().train())
    x = torch.randn(3, *model.latent_shape(), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t, y = torch.tensor([100, 500, 900]), torch.tensor([0, 1, 2])
    results = []
    for enabled in (False, True):
        model.set_grad_checkpointing(enabled)
        model.zero_grad()
        torch.manual_seed(7)                                       # the same Gumbel noise (recomputation keeps it)
        out = model(x, t, y=y, complete=torch.tensor([False, True, False]))
        r = dydit_of(model.net).routing
        fraction = flops_fraction(dydit_of(model.net).block_costs(), [b.heads for b in r], [b.groups for b in r],
                                  [b.tokens for b in r])
        (out.square().mean() + fraction.mean()).backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=1e-12)
    assert grads_a.keys() == grads_b.keys() and any("width_routers" in n for n in grads_a)   # routers learn
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=0, atol=1e-12)


@pytest.mark.slow
def test_ddp_and_fsdp_train_dydit_alike(tmp_path, free_port):
    from tests.train_helpers import torchrun

    dydit = ["dydit.target=0.5", "dydit.hold_steps=0", "dydit.anneal_steps=4", "dydit.complete_steps=4"]
    torchrun(tmp_path / "ddp", *dydit, port=free_port)
    torchrun(tmp_path / "fsdp", *dydit, "train.fsdp=true", port=free_port)
    ddp = torch.load(tmp_path / "ddp" / "final.pt", weights_only=True)
    fsdp = torch.load(tmp_path / "fsdp" / "final.pt", weights_only=True)
    assert ddp.keys() == fsdp.keys() and any("token_routers" in k for k in ddp)
    for key in ddp:
        torch.testing.assert_close(fsdp[key], ddp[key], rtol=1e-4, atol=1e-5)
    stats = [json.loads(line) for line in (tmp_path / "ddp" / "stats.jsonl").read_text().splitlines()]
    assert "flops_fraction" in stats[-1] and "loss_complete" in stats[0]


def test_resume_after_a_crash_matches_and_bf16_runs(tmp_path):
    from tests.train_helpers import Clips, params_digest, tiny

    cfg = tiny("train.total_samples=48", "dydit.target=0.5", "dydit.hold_steps=2", "dydit.anneal_steps=8",
               "dydit.complete_steps=10")                          # 24 steps, a checkpoint every 8
    full = train(cfg, tmp_path / "full", dataset=Clips(), progress=False)
    with pytest.raises(KeyboardInterrupt):                           # crash during step 13 (after the step-8 save)
        train(cfg, tmp_path / "crash", dataset=Clips(crash_at=2 * 12 + 1), progress=False)
    resumed = train(cfg, tmp_path / "crash", dataset=Clips(), progress=False)
    assert params_digest(resumed["model"]) == params_digest(full["model"])       # Gumbel draws re-seeded per step
    bf16 = train(tiny("train.total_samples=8", "train.bf16=true", "dydit.target=0.5"), tmp_path / "bf16",
                 dataset=Clips(), progress=False)
    stats = [json.loads(line) for line in (tmp_path / "bf16" / "stats.jsonl").read_text().splitlines()]
    assert bf16["finished"] and all(np.isfinite(s["loss"]) and 0 < s["flops_fraction"] <= 1 for s in stats)


def _losses(model, dense, weight, step=0, warmup=5):
    """One DyDiT training step's terms (Gumbel noise fixed), and the dense model's loss on the same x0, t, noise."""
    from dataclasses import replace

    policy = dydit_of(model.net)
    policy.config = replace(policy.config, loss_weight=weight, complete_steps=warmup, hold_steps=0, anneal_steps=0)
    diffusion = GaussianDiffusion.from_config(model.run.diffusion)
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(4, *model.latent_shape(), generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t, cond = torch.tensor([50, 300, 600, 950]), {"y": torch.tensor([0, 1, 2, 3])}
    model.zero_grad()
    torch.manual_seed(11)
    terms = model.training_losses(diffusion, model, x0, t, noise, cond, step)
    dense_terms = diffusion.training_losses(dense, x0, t, noise, cond)
    return terms, dense_terms


def test_dydit_loss_is_routed_mse_plus_weighted_budget_plus_the_complete_models_term():
    # DyDiT train.py: loss = diffusion loss of the routed model + w·(mean F − λ)² (+ the complete model's diffusion
    # loss on the same x_t during warm-up). Each term is checked against what it must be independently of the code.
    model = randomise_routers(build_denoiser(run_config(*SMALL, "dydit.target=0.5")).double().train())
    dense = build_denoiser(run_config(*SMALL)).double().train()
    dense.net.load_state_dict({k: v for k, v in model.net.state_dict().items() if "routers" not in k})
    terms, dense_terms = _losses(model, dense, weight=2.0)
    # the complete model's term is the dense model's loss (rows B.. run the complete model)
    torch.testing.assert_close(terms["loss_complete"], dense_terms["loss"].mean(), rtol=0, atol=1e-10)
    # F̄ comes from the routed rows: the randomised routers turn units off there (the complete rows spend 1.0)
    fraction = float(terms["flops_fraction"])
    assert fraction < 0.9
    torch.testing.assert_close(terms["budget_loss"], torch.tensor((fraction - 0.5) ** 2, dtype=torch.float64))
    routed = terms["mse"].mean() + terms["vb"].mean()
    torch.testing.assert_close(terms["loss"].detach(), routed + 2.0 * terms["budget_loss"] + terms["loss_complete"])
    # the weight w is applied: the same step at w = 5 differs by 3·budget
    heavier, _ = _losses(model, dense, weight=5.0)
    torch.testing.assert_close(heavier["loss"] - terms["loss"], 3.0 * terms["budget_loss"], rtol=1e-9, atol=1e-12)
    # the width routers learn during warm-up
    terms["loss"].backward()
    grads = [p.grad for n, p in model.named_parameters() if "width_routers" in n and p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    after, _ = _losses(model, dense, weight=2.0, step=10)          # after warm-up: no complete term
    assert "loss_complete" not in after
    torch.testing.assert_close(after["loss"].detach(), after["mse"].mean() + after["vb"].mean()
                               + 2.0 * after["budget_loss"])
