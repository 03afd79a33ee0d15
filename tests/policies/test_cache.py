"""The step cache (`flexgen.policies.cache`, FORA and TeaCache): interval 1 / threshold 0 is uncached sampling
exactly; a skipped step runs no block and returns its input plus the last computed residual; TeaCache's indicator is
the relative change of the first block's modulated input, rescaled and accumulated; a residual is never reused
across a FlexDiT grid change or a DyDiT width-pattern change; a new sampling run starts over; `flexgen sample`
records what ran."""

import pytest
import torch
from dydit_helpers import randomise_routers

from flexgen.checkpoint import save_weights
from flexgen.config import ConfigError, load_config
from flexgen.policies.cache.policy import StepCache
from flexgen.registry import build_denoiser
from flexgen.sample import sample_main
from tests.sample_helpers import SMALL, TINY, parse, random_model

FLEX = ["density.layout=P GSR T", "density.schedule.kind=stages", "density.schedule.stages=[[0,850,4],[850,1000,2]]"]
STEPS = (900, 800, 700, 600, 500)


def models(*overrides, interval=2, cache=None):
    """(cached, uncached) denoisers of one run on the same random weights (FORA at `interval`, or `cache`)."""
    plain, run = random_model(list(overrides))
    cache = cache or ["cache.method=fora", f"cache.interval={interval}"]
    cached = build_denoiser(load_config(TINY, [*SMALL, *overrides, *cache])).eval()
    cached.net.load_state_dict(plain.net.state_dict())
    return cached, plain


def inputs(model, batch=2):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *model.latent_shape(), generator=g)
    return x, {"y": torch.tensor([1, 3])}


def block_calls(model):
    """A counter of block forwards (every spatial and temporal block, through its module call)."""
    calls = []
    for block in [*model.net.spatial_blocks, *model.net.temporal_blocks]:
        block.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_the_config_section_and_the_method_name():
    with pytest.raises(ConfigError, match="cache.*method.*'teacach' is not one of none, fora, teacache"):
        load_config(TINY, ["cache.method=teacach"])
    with pytest.raises(ConfigError, match="cache.interval"):
        load_config(TINY, ["cache.method=fora", "cache.interval=0"])
    cached, _ = models(*FLEX)
    assert cached.policy.label() == "fora 2 + flexdit P GSR T" and cached.policy.part(StepCache) is not None


@torch.no_grad()
def test_interval_one_is_uncached_sampling_exactly():
    cached, plain = models(interval=1)
    x, cond = inputs(plain)
    for t in STEPS:
        tt = torch.full((2,), t)
        assert torch.equal(cached(x, tt, **cond), plain(x, tt, **cond))
        x = x * 0.9


@torch.no_grad()
def test_a_skipped_step_runs_no_block_and_reuses_the_last_residual():
    cached, plain = models(interval=2)
    calls, cache = block_calls(cached), cached.policy
    x, cond = inputs(plain)
    blocks = len(cached.net.spatial_blocks) + len(cached.net.temporal_blocks)
    residual = None
    for step, t in enumerate(STEPS):
        tt = torch.full((2,), t)
        before = len(calls)
        out = cached(x, tt, **cond)
        if step % 2 == 0:                                   # steps 0, 2, 4 run every block: the uncached output
            assert len(calls) - before == blocks and cache.computed
            torch.testing.assert_close(out, plain(x, tt, **cond), rtol=0, atol=0)
            tokens, frames = cached.net.embed(x, tt, cond["y"], 0, None)
            residual = cached.net.walk(tokens, frames) - tokens          # the blocks' residual at this step
        else:                                               # steps 1, 3: no block, input + the last residual
            assert len(calls) == before and cache.computed is False
            tokens, frames = cached.net.embed(x, tt, cond["y"], 0, None)
            torch.testing.assert_close(out, cached.net.head(tokens + residual, frames), rtol=1e-6, atol=1e-6)
            assert (out - plain(x, tt, **cond)).abs().max() > 1e-4       # (it is not the uncached output)
        x = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(step))
    assert (cache.steps_computed, cache.steps_skipped) == (3, 2)
    before = len(calls)
    cached(x, torch.full((2,), 950), **cond)                # t went up: a new sampling run, step 0 computes
    assert len(calls) - before == blocks
    cached.train()
    for t in (400, 300):                                    # training forwards always run the blocks
        before = len(calls)
        cached(x, torch.full((2,), t), **cond)
        assert len(calls) - before == blocks


@torch.no_grad()
def test_no_reuse_across_a_grid_change_or_a_width_pattern_change():
    cached, _ = models(*FLEX, interval=2)                   # t 900: grid 2, t 800: grid 4
    x, cond = inputs(cached)
    cached(x, torch.full((2,), 900), **cond)
    cached(x, torch.full((2,), 800), **cond)                # due to skip, but the token set changed: it computes
    assert cached.policy.part(StepCache).computed
    cached(x, torch.full((2,), 700), **cond)                # step 2 computes; step 3, the same grid: reused
    cached(x, torch.full((2,), 600), **cond)
    assert cached.policy.part(StepCache).computed is False

    dy, _ = models("dydit.target=0.5", interval=2)
    randomise_routers(dy)                                   # width masks that change with t
    cache, signatures, changed = dy.policy.part(StepCache), [], 0
    for step, t in enumerate((990, 900, 500, 499, 100, 99)):
        dy(x, torch.full((2,), t), **cond)
        signatures.append(dy.policy.signature())
        new_pattern = step > 0 and signatures[-1] != signatures[-2]
        changed += new_pattern and step % 2 == 1
        assert cache.computed == (step % 2 == 0 or new_pattern)          # due, or the pattern changed
    assert changed >= 1                                     # (the routers made at least one due skip compute)
    macs = dy.forward_macs()
    assert macs.shape == (2,) and bool((macs > 0).all())


def test_flexgen_sample_records_the_steps_that_ran(tmp_path):
    model, _ = random_model()
    save_weights(model.net, tmp_path / "dense.safetensors")
    common = ["--config", TINY, "--ckpt", tmp_path / "dense.safetensors", "--num-samples", 2, "--sampler", "ddim",
              "--steps", 4, "--cfg-scale", 2, "--no-progress"]
    plain = sample_main(parse(*common, "--out", tmp_path / "plain", *SMALL))
    record = sample_main(parse(*common, "--out", tmp_path / "fora", *SMALL, "cache.method=fora", "cache.interval=2"))
    assert record["method"] == "fora 2" and record["settings"]["policy"]["cache"]["interval"] == 2
    cost = record["cost"]
    assert len(cost["gmacs_per_sample_at_t"]) == 4
    dense_forward = plain["cost"]["gmacs_per_forward_dense"]
    computed = [g for g in cost["gmacs_per_sample_at_t"].values() if g > dense_forward]   # 2 CFG forwards each
    assert len(computed) == 2 and cost["gmacs_per_sample"] < 0.75 * plain["cost"]["gmacs_per_sample"]
    with pytest.raises(ValueError, match="another run|different|settings"):        # another cache: another run
        sample_main(parse(*common, "--out", tmp_path / "fora", *SMALL, "cache.method=fora", "cache.interval=3"))


def test_a_cache_around_dydit_leaves_dydits_questions_to_dydit():
    cached, _ = models("dydit.target=0.5")
    dydit = cached.policy.parts[1]
    assert [p.name for p in cached.policy.parts] == ["cache", "dydit"]
    assert cached.policy.block_shapes(None) == dydit.block_shapes(None)
    assert cached.policy.set_synthetic(0.5) == pytest.approx(0.5)
    plain, _ = models()
    with pytest.raises(NotImplementedError, match="routes no blocks"):
        plain.policy.block_shapes(None)


@torch.no_grad()
def test_the_sampling_library_starts_a_new_run_whatever_the_first_timestep():
    """A run stopped early, then another started at a lower t: step 0 of the new run still computes."""
    cached, plain = models(interval=2)
    x, cond = inputs(plain)
    cached(x, torch.full((2,), 999), **cond)
    cached.policy.new_run()                                 # what `flexgen.sampling.draw` calls before each run
    out = cached(-x, torch.full((2,), 980), **cond)
    assert cached.policy.computed and torch.equal(out, plain(-x, torch.full((2,), 980), **cond))


def test_a_composition_sorts_its_parts_and_a_policy_runs_one_network():
    from flexgen.policies import Compose, DyDiT, FlexDiT
    from flexgen.policies.cache.config import CacheConfig
    from flexgen.policies.flexdit import DensityConfig, ScheduleConfig
    from flexgen.video.latte import Latte
    from tests.conftest import tiny_config

    density = DensityConfig(layout="PGRT", schedule=ScheduleConfig(kind="constant", grid=2))
    policy = Compose(DyDiT(), FlexDiT(density), StepCache(CacheConfig("fora", 2)))
    assert [p.name for p in policy.parts] == ["cache", "flexdit", "dydit"]          # by order, whatever was given
    config = tiny_config(depth=8)                           # 4 spatial blocks for the 4 roles
    net = Latte(config, policy=policy)
    assert net.policy.label() == "fora 2 + flexdit PGRT + dydit"
    with pytest.raises(ValueError, match="one policy of each kind"):
        Compose(DyDiT(), DyDiT())
    with pytest.raises(ValueError, match="already runs another network"):
        Latte(config, policy=net.policy)


def test_the_bench_refuses_a_step_cache_with_the_reason(capsys):
    from flexgen.cli import main

    assert main(["bench", "flops", "--config", TINY, "cache.method=fora"]) == 2
    err = capsys.readouterr().err
    assert "a step cache saves whole sampler steps" in err and "flexgen bench latency times them" in err


TEA = ["cache.method=teacache"]


def test_teacache_settings():
    with pytest.raises(ConfigError, match="cache.threshold"):
        load_config(TINY, [*TEA, "cache.threshold=-0.1"])
    run = load_config(TINY, [*TEA, "cache.threshold=0.15", "cache.coefficients=[2.0, 0.5]"])
    assert run.cache.coefficients == [2.0, 0.5] and run.cache.rescale(0.1) == pytest.approx(0.7)   # 2x + 0.5
    assert load_config(TINY, [*TEA, "cache.coefficients=[-1.0]"]).cache.rescale(0.3) == 0.0         # never below 0
    cached, _ = models(cache=[*TEA, "cache.threshold=0.15"])
    assert cached.policy.label() == "teacache 0.15"


@torch.no_grad()
def test_teacache_threshold_zero_is_uncached_sampling_exactly():
    cached, plain = models(*FLEX, cache=[*TEA, "cache.threshold=0"])
    x, cond = inputs(plain)
    cached.policy.new_run(len(STEPS))
    for t in STEPS:
        tt = torch.full((2,), t)
        assert torch.equal(cached(x, tt, **cond), plain(x, tt, **cond))
        x = x * 0.9
    assert cached.policy.part(StepCache).steps_skipped == 0


@torch.no_grad()
def test_teacache_accumulates_each_samples_rescaled_change_of_the_first_blocks_modulated_input():
    cached, plain = models(cache=[*TEA, "cache.threshold=0.5", "cache.coefficients=[3.0, 0.0]"])    # 3 × change
    cache, calls = cached.policy.part(StepCache), block_calls(cached)
    blocks = len(cached.net.spatial_blocks) + len(cached.net.temporal_blocks)
    x, cond = inputs(plain)
    cache.new_run(len(STEPS))
    previous, accumulated, ran, residual = None, torch.zeros(2, dtype=torch.float64), [], None
    for step, t in enumerate(STEPS):
        tt = torch.full((2,), t)
        tokens, frames = cached.net.embed(x, tt, cond["y"], 0, None)
        signal = cached.net.first_modulated(tokens, frames).reshape(2, -1)          # each sample's frames
        before = len(calls)
        out = cached(x, tt, **cond)
        if previous is None:
            due = torch.ones(2, dtype=torch.bool)
        else:                                               # each sample's relative L1 change, by hand
            change = ((signal - previous).abs().sum(1) / previous.abs().sum(1)).double()
            accumulated += 3 * change
            due = (accumulated >= 0.5) | (step == len(STEPS) - 1)
        assert (len(calls) - before == blocks) == bool(due.any()) == cache.computed
        dense = cached.net.walk(tokens, frames) - tokens                           # this step's residual
        expected = torch.stack([dense[i * 4:(i + 1) * 4] if due[i] else residual[i * 4:(i + 1) * 4]
                                for i in range(2)]).flatten(0, 1)                  # 4 frames per sample
        torch.testing.assert_close(out, cached.net.head(tokens + expected, frames), rtol=1e-5, atol=1e-5)
        residual = expected
        ran.append(due.tolist())
        accumulated = torch.where(due, 0.0, accumulated)
        previous = signal
        x = x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(step)) * torch.tensor(
            [1.0, 3.0]).view(2, 1, 1, 1, 1)                 # the second sample moves faster: it runs more often
    assert ran[0] == ran[-1] == [True, True] and not all(all(r) for r in ran)
    assert sum(r[1] for r in ran) >= sum(r[0] for r in ran)


@torch.no_grad()
def test_teacache_samples_do_not_depend_on_the_batch_they_share():
    # A sample's skips follow its own indicator: drawn in a batch of two or alone, the same (float tolerance).
    cached, plain = models(cache=[*TEA, "cache.threshold=0.3"])
    x, cond = inputs(plain)
    x = torch.stack([x[0], 3 * x[1]])                      # two samples far apart
    outs = {}
    for name, rows in (("both", [0, 1]), ("first", [0]), ("second", [1])):
        xi, yi, got = x[rows], cond["y"][rows], []
        cached.policy.new_run(len(STEPS))
        for step, t in enumerate(STEPS):
            got.append(cached(xi, torch.full((len(rows),), t), y=yi))
            xi = xi * (0.9 if step % 2 else 0.7)
        outs[name] = torch.stack(got)                       # (steps, rows, ...)
    torch.testing.assert_close(outs["both"][:, 0], outs["first"][:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs["both"][:, 1], outs["second"][:, 0], rtol=1e-5, atol=1e-5)


PIXART = ["model.depth=3", "model.hidden_size=24", "model.num_heads=3", "model.caption_channels=32",
          "autoencoder.downsample=2", "data.image_size=16"]


@torch.no_grad()
def test_teacache_on_pixart_reads_the_modulated_input_the_first_block_attends_over():
    # The indicator restates the first block's "ada_norm_single" modulation (diffusers 0.42 BasicTransformerBlock):
    # it equals what that block's self-attention receives; threshold 0 is the uncached model.
    run = "configs/t2i/pixart/pixart-xl2-256.yaml"
    plain = build_denoiser(load_config(run, PIXART)).eval()
    cached = build_denoiser(load_config(run, [*PIXART, *TEA, "cache.threshold=0"])).eval()
    cached.net.load_state_dict(plain.net.state_dict())
    seen = []
    cached.net.transformer_blocks[0].attn1.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *plain.latent_shape(), generator=g)
    cond = plain.example_condition(2)
    cached.policy.new_run(2)
    for t in (700, 600):
        tt = torch.full((2,), t)
        assert torch.equal(cached(x, tt, **cond), plain(x, tt, **cond))
        torch.testing.assert_close(cached.policy.part(StepCache)._signal, seen[-1].float(), rtol=0, atol=0)


def test_cached_sampling_resumes_like_uncached_sampling(tmp_path, capsys):
    """A killed cached run re-run draws only the missing samples, each as the uninterrupted run drew it (each sample
    decides for itself, so being drawn alone rather than beside another does not change it)."""
    from flexgen.sampling.files import read_sample
    from tests.helpers import assert_other_pixels, assert_same_pixels

    model, _ = random_model()
    save_weights(model.net, tmp_path / "dense.safetensors")
    out = tmp_path / "tea"
    common = ["--config", TINY, "--ckpt", tmp_path / "dense.safetensors", "--num-samples", 4, "--batch-size", 2,
              "--sampler", "ddim", "--steps", 8, "--out", out, "--no-progress", *SMALL, *TEA, "cache.threshold=0.2"]
    first = sample_main(parse(*common))
    assert first["cost"]["flops_fraction"] < 0.9                          # the cache skipped steps
    drawn = {p.name: read_sample(p) for p in out.glob("*.mp4")}
    (out / "0002.mp4").unlink()                                           # an interrupted run: sample 2 missing
    capsys.readouterr()
    sample_main(parse(*common))
    assert "(1 drawn now on rank 0)" in capsys.readouterr().out
    again = read_sample(out / "0002.mp4")
    assert_same_pixels(torch.as_tensor(again), torch.as_tensor(drawn["0002.mp4"]), what="sample 2 redrawn alone")
    assert_other_pixels(torch.as_tensor(again), torch.as_tensor(drawn["0003.mp4"]), what="samples 2 and 3")
