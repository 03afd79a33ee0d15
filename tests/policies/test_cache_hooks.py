"""diffusers' cache hooks through `cache:` (`flexgen.policies.cache.hooks`): each method's no-op setting is uncached
sampling exactly, a skipping setting runs fewer blocks / attentions and records fewer MACs, first_block on Latte
reuses the residual of the walk in forward order, the refused combinations say why, options are checked by name at
config load, mag's calibration ratios are read back, and the skip decision is the forward's (shared by CFG halves)."""

import pytest
import torch

from flexgen.config import ConfigError, load_config
from flexgen.policies.cache.hooks import DiffusersCache
from flexgen.registry import build_denoiser
from flexgen.sampling.draw import draw
from tests.sample_helpers import SMALL, TINY, random_model

LATTE = ["model.depth=4"]                                   # 2 spatial + 2 temporal blocks, 4 frames
DIT = ["model.preset=DiT-S/2", "model.depth=3"]
PIXART_RUN = "configs/t2i/pixart/pixart-xl2-256.yaml"
PIXART = ["model.depth=3", "model.hidden_size=24", "model.num_heads=3", "model.caption_channels=32",
          "autoencoder.downsample=2", "data.image_size=16"]
STEPS = 5
FLEX = ["model.depth=10", "density.layout=P GSR T", "density.schedule.kind=stages",
        "density.schedule.stages=[[0,850,4],[850,1000,2]]"]


def hooks(method, **options):
    text = ", ".join(f"{k}: {v}" for k, v in options.items())
    return [f"cache.method={method}", f"cache.diffusers={{{text}}}"]


def build(family, *overrides):
    """(cached, uncached) denoisers of one family on the same random weights."""
    if family == "pixart":
        plain = build_denoiser(load_config(PIXART_RUN, PIXART)).eval()
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in plain.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        cached = build_denoiser(load_config(PIXART_RUN, [*PIXART, *overrides])).eval()
        plain, cached = plain.double(), cached.double()      # diffusers' dense forward vs flexgen's walk: 1e-6
    else:
        model = LATTE if family == "latte" else DIT
        plain, _ = random_model(model)
        cached = build_denoiser(load_config(TINY, [*SMALL, *model, *overrides])).eval()
    cached.net.load_state_dict(plain.net.state_dict())
    return cached, plain


def condition(model):
    if "text" not in model.example_condition(1):
        return {"y": torch.tensor([1, 3])}
    with torch.random.fork_rng():                               # (its random caption states: the same each call)
        torch.manual_seed(0)
        cond = model.example_condition(2)
    return {**cond, "text": cond["text"].to(next(model.parameters()).dtype)}


@torch.no_grad()
def sample(model, meter=None):
    """A DDIM run of STEPS steps (CFG 2 for the class-conditional models: both halves in one forward)."""
    cfg = 1.0 if "text" in condition(model) else 2.0
    return draw(model, [0, 1], condition(model), sampler="ddim", steps=STEPS, cfg_scale=cfg, meter=meter)


def computations(model):
    """A counter of what computed: blocks (their last Linear: it runs only when the block's forward does) and
    attentions (their output projection)."""
    seen = {"block": 0, "attention": 0}
    net = model.net
    blocks = [*net.spatial_blocks, *net.temporal_blocks] if hasattr(net, "spatial_blocks") else net.transformer_blocks
    for block in blocks:
        [*_, last] = [m for m in block.modules() if isinstance(m, torch.nn.Linear)]
        last.register_forward_hook(lambda *_: seen.__setitem__("block", seen["block"] + 1))
        for attn in ([block.attn] if hasattr(block, "attn") else [block.attn1, block.attn2]):
            out = attn.proj if hasattr(attn, "proj") else attn.to_out[0]
            out.register_forward_hook(lambda *_: seen.__setitem__("attention", seen["attention"] + 1))
    return seen


NO_OP = [("latte", hooks("first_block", threshold=0)), ("dit", hooks("first_block", threshold=0)),
         ("pixart", hooks("first_block", threshold=0)),
         ("latte", hooks("mag", threshold=0, mag_ratios=[0.9])), ("dit", hooks("mag", threshold=0, mag_ratios=[0.9])),
         ("pixart", hooks("mag", threshold=0, mag_ratios=[0.9])),          # (a ratio of 1 adds no error: it skips)
         ("latte", hooks("taylorseer", cache_interval=1)), ("dit", hooks("taylorseer", disable_cache_before_step=9)),
         ("pixart", hooks("taylorseer", cache_interval=1)),
         ("pixart", hooks("pab", spatial_attention_block_skip_range=1, cross_attention_block_skip_range=1))]


@pytest.mark.parametrize(("family", "cache"), NO_OP, ids=[f"{f}-{c[0][13:]}" for f, c in NO_OP])
def test_the_no_op_setting_is_uncached_sampling_exactly(family, cache):
    cached, plain = build(family, *cache)
    assert isinstance(cached.policy, DiffusersCache)
    out = sample(cached)
    torch.testing.assert_close(out, sample(plain), rtol=1e-6, atol=1e-6) if family == "pixart" else \
        torch.testing.assert_close(out, sample(plain), rtol=0, atol=0)
    assert cached.policy.steps_skipped == 0 and cached.policy.steps_computed == STEPS
    assert torch.equal(sample(cached), out)                 # a new run starts over (the hooks' state reset)


SKIPPING = [("latte", hooks("first_block", threshold=1.0), "block"),
            ("dit", hooks("first_block", threshold=1.0), "block"),
            ("pixart", hooks("first_block", threshold=1.0), "block"),
            ("latte", hooks("mag", threshold=0.5, retention_ratio=0, mag_ratios=[1.0, 0.99]), "block"),
            ("pixart", hooks("mag", threshold=0.5, retention_ratio=0, mag_ratios=[1.0, 0.99]), "block"),
            ("latte", hooks("taylorseer", cache_interval=2, disable_cache_before_step=1), "attention"),
            ("dit", hooks("taylorseer", cache_interval=2, disable_cache_before_step=1), "attention"),
            ("pixart", hooks("taylorseer", cache_interval=2, disable_cache_before_step=1), "attention"),
            ("pixart", hooks("pab", spatial_attention_block_skip_range=2, cross_attention_block_skip_range=2,
                             spatial_attention_timestep_skip_range=[0, 1000],
                             cross_attention_timestep_skip_range=[0, 1000]), "attention")]


@pytest.mark.parametrize(("family", "cache", "unit"), SKIPPING, ids=[f"{f}-{c[0][13:]}" for f, c, _ in SKIPPING])
def test_a_skipping_setting_computes_less_and_records_fewer_macs(family, cache, unit):
    cached, plain = build(family, *cache)
    ran, dense = computations(cached), computations(plain)
    meter, plain_meter = cached.policy.meter(cached), plain.policy.meter(plain) or _DenseMeter(plain)
    out, ref = sample(cached, meter), sample(plain, plain_meter)
    assert ran[unit] < dense[unit] and cached.policy.steps_skipped > 0
    assert torch.isfinite(out).all() and not torch.equal(out, ref)
    report = cached.cost().forward_macs(None)
    blocks = sum(v for k, v in report.breakdown.items() if k in cached.net.block_modules) * 1e9
    rows = meter.forwards
    total = sum(meter.macs_at.values())
    assert rows == plain_meter.forwards
    assert rows * (report.gmacs * 1e9 - blocks) < total < rows * report.gmacs * 1e9 == pytest.approx(
        sum(plain_meter.macs_at.values()))


def test_first_block_counts_the_head_block_and_the_network_outside_the_blocks_on_a_skipped_step():
    cached, _ = build("dit", *hooks("first_block", threshold=100.0))       # every step after the first skips
    meter = cached.policy.meter(cached)
    sample(cached, meter)
    report = cached.cost().forward_macs(None)
    per_block = report.breakdown["spatial_blocks"] * 1e9 / len(cached.net.spatial_blocks)
    skipped = report.gmacs * 1e9 - (len(cached.net.spatial_blocks) - 1) * per_block        # the head block ran
    per_step = [macs / meter.forwards * STEPS for macs in meter.macs_at.values()]            # per row
    assert per_step[0] == pytest.approx(report.gmacs * 1e9) and per_step[1:] == pytest.approx([skipped] * 4)


class _DenseMeter:
    """The uncached model's MACs: every forward the dense count (its policy measures nothing)."""

    def __init__(self, model):
        self.model, self.macs_at, self.forwards = model, {}, 0

    def __call__(self, x, t, **cond):
        self.forwards += x.shape[0]
        self.macs_at[int(t[0])] = self.macs_at.get(int(t[0]), 0.0) + x.shape[0] * \
            self.model.cost().forward_macs(None).gmacs * 1e9
        return self.model(x, t, **cond)


@torch.no_grad()
def test_first_block_reuses_the_tail_residual_after_the_head_block():
    # A skipped step: the first spatial block runs, then its output + (the last temporal block's output − the first
    # block's output) of the step that computed: the walk's residual in forward order, in the dense layout.
    cached, plain = build("latte", *hooks("first_block", threshold=10.0))         # every step after the first skips
    net, y = cached.net, torch.tensor([1, 3])
    x = torch.randn(2, 4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cached.policy.new_run(2)
    head_out = []
    net.spatial_blocks[0].register_forward_hook(lambda m, i, o: head_out.append(o))
    out0 = cached(x, torch.full((2,), 900), y=y)
    assert torch.equal(out0, plain(x, torch.full((2,), 900), y=y)) and cached.policy.computed
    tokens, frames = net.embed(x, torch.full((2,), 900), y, 0, None)
    residual = net.walk(tokens, frames) - head_out[0]                  # tail output − head output, step 0
    x1 = x * 0.9
    out1 = cached(x1, torch.full((2,), 800), y=y)
    assert cached.policy.computed is False and cached.policy.ran() == ["transformer_blocks.0"]
    tokens, frames = net.embed(x1, torch.full((2,), 800), y, 0, None)
    expected = net.head(net.spatial_blocks[0](tokens, frames.cond) + residual, frames)
    torch.testing.assert_close(out1, expected, rtol=1e-6, atol=1e-6)
    view = cached.policy._view.transformer_blocks                       # spatial 0, temporal 0, spatial 1, ...
    assert [(s.temporal, s.index) for s in view] == [(False, 0), (True, 0), (False, 1), (True, 1)]
    assert cached.net.state_dict().keys() == plain.net.state_dict().keys()


@torch.no_grad()
def test_the_decision_is_the_forwards_not_the_samples():
    # diffusers keeps one state per forward call: a sample that would skip alone computes beside one that moved a
    # lot (what the two CFG halves of one forward share), where teacache decides per sample.
    cached, _ = build("latte", *hooks("first_block", threshold=0.1))   # (a's change alone: 0.06, beside b: 0.2)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 4, 3, 16, 16, generator=g), torch.randn(1, 4, 3, 16, 16, generator=g)
    decisions = {}
    for name, batch in (("alone", [a]), ("together", [a, b])):
        cached.policy.new_run(2)
        cached(torch.cat(batch), torch.full((len(batch),), 900), y=torch.ones(len(batch), dtype=torch.long))
        moved = [a * 0.999] + [torch.randn(1, 4, 3, 16, 16, generator=g)] * (len(batch) - 1)
        cached(torch.cat(moved), torch.full((len(batch),), 899), y=torch.ones(len(batch), dtype=torch.long))
        decisions[name] = cached.policy.computed
    assert decisions == {"alone": False, "together": True}


@torch.no_grad()
def test_fastercache_on_pixart_skips_the_unconditional_half():
    # diffusers' batch order [uncond ‖ cond] (its pipelines); every other step the unconditional half is
    # approximated and the attentions skip: half the rows, fewer MACs.
    def run(model):
        cond = condition(model)
        both = {k: torch.cat([model.null_condition(cond)[k], cond[k]]) for k in cond}
        x = torch.randn(2, *model.latent_shape(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        model.policy.new_run(4)
        outs, macs = [], []
        for t in (900, 700, 500, 300):
            out = model(torch.cat([x, x]), torch.full((4,), t), **both)
            outs.append(out)
            macs.append(float(model.forward_macs().sum()) if isinstance(model.policy, DiffusersCache) else 0)
            x = x - 0.1 * out[2:, :4]
        return torch.stack(outs), macs

    same, plain = build("pixart", *hooks("fastercache", unconditional_batch_skip_range=1))
    torch.testing.assert_close(run(same)[0], run(plain)[0], rtol=1e-6, atol=1e-6)
    cached, _ = build("pixart", *hooks("fastercache", unconditional_batch_skip_range=2,
                                       unconditional_batch_timestep_skip_range=[0, 1000],
                                       spatial_attention_timestep_skip_range=[0, 1000]))
    ran = computations(cached)
    out, macs = run(cached)
    assert torch.isfinite(out).all() and cached.policy.steps_skipped == 2
    assert ran["attention"] < 4 * 2 * 3 and macs[1] < macs[0] / 2


def test_mag_calibration_runs_through_the_policy_and_its_ratios_are_read_back():
    cached, plain = build("latte", *hooks("mag", calibrate="true", num_inference_steps=3))
    assert cached.policy.label() == "mag 0.06 calibrate"
    out = sample(cached)                                    # STEPS steps: the run's count, not the config's 3
    assert torch.equal(out, sample(plain))                  # calibration skips nothing
    ratios = cached.policy.mag_ratios
    assert len(ratios) == STEPS and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    ratios_text = "[" + ", ".join(repr(r) for r in ratios) + "]"
    used, _ = build("latte", *hooks("mag", mag_ratios=ratios_text, num_inference_steps=STEPS, threshold=0.5,
                                    retention_ratio=0))
    assert torch.isfinite(sample(used)).all()


def test_options_are_checked_by_name_at_config_load():
    with pytest.raises(ConfigError, match="cache.diffusers: unknown key 'treshold' for diffusers' "
                                          "FirstBlockCacheConfig"):
        load_config(TINY, hooks("first_block", treshold=0.1))
    with pytest.raises(ConfigError, match="current_timestep_callback: is not settable"):
        load_config(TINY, hooks("pab", current_timestep_callback=1))
    with pytest.raises(ConfigError, match="method 'fora' is not one"):
        load_config(TINY, ["cache.method=fora", "cache.diffusers={threshold: 0.1}"])
    with pytest.raises(ConfigError, match="threshold: is an option of fora / teacache"):
        load_config(TINY, ["cache.method=first_block", "cache.threshold=0.3"])
    with pytest.raises(ConfigError, match="MagCacheConfig refuses these options: .*mag_ratios"):
        load_config(TINY, ["cache.method=mag"])
    with pytest.raises(ConfigError, match="taylor_factors_dtype: a torch dtype name"):
        load_config(TINY, hooks("taylorseer", taylor_factors_dtype="fp9"))
    run = load_config(TINY, hooks("taylorseer", taylor_factors_dtype="float32", cache_interval=4))
    assert run.cache.diffusers == {"taylor_factors_dtype": "float32", "cache_interval": 4}
    labels = {m: build_denoiser(load_config(TINY, [*SMALL, *LATTE, f"cache.method={m}", *extra])).policy.label()
              for m, extra in (("first_block", []), ("taylorseer", []),
                               ("mag", ["cache.diffusers={mag_ratios: [1.0]}"]))}
    assert labels == {"first_block": "first_block 0.05", "taylorseer": "taylorseer 5", "mag": "mag 0.06"}


@pytest.mark.parametrize(("family", "cache", "message"), [
    ("latte", hooks("pab", spatial_attention_block_skip_range=2), "hooks only diffusers' Attention classes; Latte "
                                                                  "/ DiT attention is flexgen's own: use first_block"),
    ("dit", hooks("fastercache"), "hooks only diffusers' Attention classes"),
    ("latte", [*hooks("first_block"), *FLEX], "does not compose with flexdit.*teacache or fora"),
    ("latte", [*hooks("first_block"), "dydit.target=0.5"], "does not compose with dydit.*teacache or fora"),
    ("pixart", [*hooks("mag", calibrate="true"), "model.depth=4", "density.layout=P GSR",
                "density.schedule.grid_min=1", "density.schedule.grid_max=4"], "does not compose with flexdit")])
def test_refused_combinations_say_why(family, cache, message):
    with pytest.raises(ValueError, match=message):
        build(family, *cache)


def test_training_forwards_are_refused_and_the_file_keys_do_not_change(tmp_path):
    from flexgen.checkpoint import save_weights

    cached, plain = build("latte", *hooks("first_block"))
    save_weights(cached.net, tmp_path / "w.safetensors")
    fresh, _ = random_model(LATTE)
    fresh.load_pretrained(tmp_path / "w.safetensors")
    assert cached.net.state_dict().keys() == fresh.net.state_dict().keys()
    cached.train()
    with pytest.raises(RuntimeError, match="is for sampling: call model.eval"):
        cached(torch.zeros(1, 4, 3, 16, 16), torch.full((1,), 10), y=torch.ones(1, dtype=torch.long))


def test_a_batch_bound_cache_refuses_sharding_and_partial_resumes(tmp_path):
    # diffusers' hooks decide for a whole forward, so a sample depends on its batch-mates: a re-run that would draw
    # the missing samples in other batches is refused (FORA / TeaCache decide per sample and resume: test_cache.py)
    from flexgen.checkpoint import save_weights
    from flexgen.policies.cache.base import check_batch_bound
    from flexgen.sample import sample_main
    from tests.sample_helpers import parse

    model, _ = random_model(LATTE)
    save_weights(model.net, tmp_path / "w.safetensors")
    command = parse("--config", TINY, "--ckpt", tmp_path / "w.safetensors", "--num-samples", 3, "--batch-size", 2,
                    "--sampler", "ddim", "--steps", 3, "--out", tmp_path / "s", "--no-progress", *SMALL, *LATTE,
                    *hooks("first_block", threshold=0.05))
    assert sample_main(command)["complete"]
    (tmp_path / "s" / "0001.mp4").unlink()
    with pytest.raises(ValueError, match="otherwise than the first run. Draw them all again with --overwrite"):
        sample_main(command)
    cached, _ = build("dit", *hooks("first_block", threshold=0.05))
    with pytest.raises(ValueError, match="over 2 ranks would batch them otherwise than one process"):
        check_batch_bound(cached.policy, world_size=2, resuming=False)
    check_batch_bound(build("dit", "cache.method=teacache")[0].policy, world_size=2, resuming=True)    # per sample
