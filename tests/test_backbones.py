"""The backbone interface: every family answers the engine's questions the same way (the registry builds it, the
batch preparation drops conditions for CFG, the timestep sampler follows the density policy, the cost is counted,
the export loads back), and the config layer refuses what a family cannot use."""

import dataclasses

import pytest
import torch

from flexgen.backbones.base import Denoiser
from flexgen.config import ConfigError, load_config
from flexgen.policies.timesteps import StageTimesteps, StratifiedTimesteps, UniformTimesteps, WeightedTimesteps
from flexgen.registry import FAMILIES, PRESET_FAMILY, build_denoiser, family_of
from flexgen.sampling.manifest import SampleEntry, SampleManifest, find_manifest

TINY = "configs/demo/tiny.yaml"
FLEX = ["density.layout=P GSR T", "density.schedule.grid_min=2", "density.schedule.grid_max=4"]
PIXART = ["model.depth=6", "model.hidden_size=24", "model.num_heads=3", "model.caption_channels=32",
          "autoencoder.downsample=2", "data.image_size=16"]
PIXART_FLEX = ["density.layout=P GSR DD", "density.schedule.grid_min=1", "density.schedule.grid_max=4"]

DIT = ["model.preset=DiT-S/2", "model.depth=5"]
DYDIT = ["dydit.target=0.5"]
CACHE = ["cache.method=fora", "cache.interval=2"]
TEACACHE = ["cache.method=teacache", "cache.threshold=0.2"]
PIXART_RUN = "configs/t2i/pixart/pixart-xl2-256.yaml"

# Every family × every policy: dense, FlexDiT, DyDiT and FlexDiT ∘ DyDiT (the names say family and policy).
RUNS = {
    "Latte": (TINY, []),
    "FlexLatte": (TINY, FLEX),
    "DyLatte": (TINY, DYDIT),
    "FlexDyLatte": (TINY, [*FLEX, *DYDIT]),
    "DiT": (TINY, DIT),
    "FlexDiT": (TINY, [*DIT, *FLEX]),
    "DyDiT": (TINY, [*DIT, *DYDIT]),
    "FlexDyDiT": (TINY, [*DIT, *FLEX, *DYDIT]),
    "PixArt": (PIXART_RUN, PIXART),
    "FlexPixArt": ("configs/t2i/pixart/flexpixart-xl2-256.yaml", [*PIXART, *PIXART_FLEX]),
    "DyPixArt": (PIXART_RUN, [*PIXART, *DYDIT]),
    "FlexDyPixArt": (PIXART_RUN, [*PIXART, *PIXART_FLEX, *DYDIT]),
    "ForaLatte": (TINY, CACHE),                                     # a step cache, alone and on both policies
    "ForaFlexDyPixArt": (PIXART_RUN, [*PIXART, *PIXART_FLEX, *DYDIT, *CACHE]),
    "TeaFlexDyLatte": (TINY, [*FLEX, *DYDIT, *TEACACHE]),
    "TeaPixArt": (PIXART_RUN, [*PIXART, *TEACACHE]),
}


def batch_for(model: Denoiser, n: int = 4) -> dict:
    """A random data-loader batch of the family's dataset (the interface's `example_batch`)."""
    return model.example_batch(n, torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=list(RUNS))
def built(request):
    path, overrides = RUNS[request.param]
    run = load_config(path, overrides)
    torch.manual_seed(0)
    return request.param, run, build_denoiser(run).eval()


@pytest.mark.parametrize("flex", [False, True])
def test_the_timestep_sampler_follows_the_runs_training_density(flex):
    run = load_config(TINY, [*(FLEX if flex else []), "diffusion.timestep_sampling=logit_normal",
                             "diffusion.logit_mean=1.5"])
    sampler = build_denoiser(run).timestep_sampler()
    assert isinstance(sampler, StageTimesteps if flex else WeightedTimesteps) and sampler.weights is not None
    t = torch.cat([sampler(16, torch.Generator().manual_seed(i), torch.Generator().manual_seed(99 + i))
                   for i in range(50)])
    assert float((t >= 500).float().mean()) > 0.85                      # logit mean 1.5: mostly the noisy half


def test_registry_maps_every_preset_to_one_family():
    assert set(PRESET_FAMILY) == {p for f in FAMILIES.values() for p in f.presets}
    assert family_of("Latte-XL/2").name == family_of("DiT-XL/2").name == "latte"
    assert family_of("PixArt-XL/2-512").name == "pixart"
    with pytest.raises(ValueError, match="unknown model preset 'Latte-XXL/2'"):
        family_of("Latte-XXL/2")


def test_the_contract(built, tmp_path):
    name, run, model = built
    assert isinstance(model, Denoiser) and model.family == family_of(run.model.preset).name
    flexdit, dydit, cache = bool(run.density.layout), run.dydit.enabled, run.cache.enabled
    assert bool(model.layout) == flexdit
    # the policy is the run's sections, under one name in records
    setting = run.cache.threshold if run.cache.method == "teacache" else run.cache.interval
    parts = [f"{run.cache.method} {setting:g}"] * cache + [f"flexdit {run.density.layout}"] * flexdit + \
        [f"dydit {run.dydit.target}"] * dydit
    assert model.policy.label() == (" + ".join(parts) or "baseline")
    assert set(model.policy.sections()) == {k for k, on in (("density", flexdit), ("dydit", dydit), ("cache", cache))
                                            if on}
    # batch preparation: a forward on what it returns; with the dropout generator, conditions drop to the null one
    pixels, cond = model.prepare_batch(batch_for(model), torch.device("cpu"))
    x = torch.randn(pixels.shape[0], *model.latent_shape(), generator=torch.Generator().manual_seed(1))
    t = torch.full((x.shape[0],), 999)
    with torch.no_grad():
        out = model(x, t, **cond)
    assert out.shape[0] == x.shape[0] and out.shape[-2:] == x.shape[-2:]
    null = model.null_condition(cond)
    assert null.keys() == cond.keys() and any(not torch.equal(null[k], cond[k]) for k in cond
                                              if isinstance(cond[k], torch.Tensor))
    # the timestep sampler follows the policy: one stage (one grid) per micro-batch with FlexDiT, strata for
    # DyDiT alone, the run's density otherwise
    sampler = model.timestep_sampler()
    expected = StageTimesteps if flexdit else StratifiedTimesteps if dydit else UniformTimesteps
    assert isinstance(sampler, expected)
    for step in range(5):
        ts = sampler(16, torch.Generator().manual_seed(step), torch.Generator().manual_seed(100 + step))
        assert ts.shape == (16,) and 0 <= ts.min() and ts.max() < 1000
        if flexdit:
            assert len({model.step_stats(ts[i:i + 1])["grid"] for i in range(16)}) == 1
    assert bool(model.step_stats(ts)) == flexdit
    # cost: a FlexDiT model costs less on average than its dense model, and each grid is counted once; a DyDiT
    # model's forward is measured from what it ran (fresh routers: every unit on, the dense blocks + the routers)
    cost = model.cost()
    assert bool(cost.stages) == flexdit and cost.forward_macs(None).gmacs > 0
    if flexdit:
        assert min(cost.forward_macs(s.grid).gmacs for s in cost.stages) < cost.forward_macs(None).gmacs
    assert model.policy.measured == (dydit or cache)
    if model.policy.measured:
        grid = model.policy.grid()
        macs = model.forward_macs()
        assert macs.shape == (x.shape[0],)
        counted = cost.forward_macs(grid).gmacs * 1e9 + model.policy.router_macs(grid)
        if run.cache.method == "teacache":                          # TeaCache's indicator runs at every step
            counted += model.net.indicator_macs()
        torch.testing.assert_close(macs, torch.full_like(macs, counted), rtol=1e-9, atol=0)
    assert model.shard_units() and all(isinstance(u, torch.nn.Module) for u in model.shard_units())
    # the export loads back into a freshly built model of the same run: the same function
    path = model.export(tmp_path / model.export_name)
    again = build_denoiser(run).eval()
    again.load_pretrained(path)
    with torch.no_grad():
        torch.testing.assert_close(again(x, t, **cond), out, rtol=1e-5, atol=1e-6)


def test_a_policy_at_its_identity_setting_is_the_model_without_it(built):
    """DyDiT with fresh routers (every unit and token on) runs the model without DyDiT on the same weights."""
    name, run, model = built
    if not run.dydit.enabled:
        pytest.skip("no DyDiT section")
    without = build_denoiser(dataclasses.replace(run, dydit=dataclasses.replace(run.dydit, target=None))).eval()
    missing, unexpected = without.net.load_state_dict(model.net.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith(("width_routers.", "token_routers.")) for k in unexpected)
    pixels, cond = model.prepare_batch(batch_for(model), torch.device("cpu"))
    x = torch.randn(pixels.shape[0], *model.latent_shape(), generator=torch.Generator().manual_seed(2))
    t = torch.full((x.shape[0],), 400)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, **cond), without(x, t, **cond), rtol=1e-5, atol=1e-6)


def test_condition_dropout_lives_in_batch_preparation(built):
    name, run, model = built
    run_all = dataclasses.replace(run, model=dataclasses.replace(run.model, class_dropout_prob=1.0))
    everything = type(model)(model.net, run_all)
    batch = batch_for(model)
    if model.family == "pixart":
        L = batch["text"].shape[1]
        everything.null_text = (torch.zeros(L, model.net.config.caption_channels), torch.tensor([1] + [0] * (L - 1)))
    _, kept = everything.prepare_batch(batch, torch.device("cpu"))           # no generator: nothing dropped
    _, dropped = everything.prepare_batch(batch, torch.device("cpu"), torch.Generator().manual_seed(0))
    if model.family == "pixart":
        assert torch.equal(kept["text"], batch["text"]) and (dropped["text"] == 0).all()
        assert (dropped["text_mask"].sum(dim=1) == 1).all()
    else:
        assert torch.equal(kept["y"], batch["label"]) and (dropped["y"] == 4).all()   # 4 = the null class


def test_a_config_field_the_family_cannot_use_is_an_error():
    with pytest.raises(ConfigError, match="data.text_cache has no meaning for Latte-S/2"):
        load_config(TINY, ["data.text_cache=/cache"])
    with pytest.raises(ConfigError, match="sample.steps has no meaning for PixArt-XL/2-256"):
        load_config("configs/t2i/pixart/pixart-xl2-256.yaml", ["sample.steps=50"])
    with pytest.raises(ConfigError, match="model.num_classes has no meaning for PixArt"):
        load_config("configs/t2i/pixart/pixart-xl2-256.yaml", ["model.num_classes=10"])
    with pytest.raises(ConfigError, match=r"data.dataset \(for PixArt-XL/2-256\): 'ffs' is not one of captions"):
        load_config("configs/t2i/pixart/pixart-xl2-256.yaml", ["data.dataset=ffs"])
    with pytest.raises(ConfigError, match=r"sample.sampler \(for Latte-S/2\): 'euler' is not one of"):
        load_config(TINY, ["sample.sampler=euler"])
    # a resolved config (every field at its default where unused) loads back
    run = load_config("configs/t2i/pixart/pixart-xl2-256.yaml")
    assert load_config("configs/t2i/pixart/pixart-xl2-256.yaml", ["sample.steps=250"]) == run


def test_manifest_schema_is_strict(tmp_path):
    manifest = SampleManifest(command="flexgen sample", family="latte", model="Latte-S/2", method="baseline",
                              checkpoint="x", checkpoint_sha256="", sampler="ddpm", steps=2, cfg_scale=1.0, seed=3,
                              samples=[SampleEntry(0, "0000.mp4", 3)])
    manifest.write(tmp_path / "samples.json")
    assert SampleManifest.read(tmp_path / "samples.json") == manifest
    assert find_manifest(tmp_path)[1] == manifest
    (tmp_path / "other.json").write_text('{"samples": [], "images": []}')
    with pytest.raises(ValueError, match="is not a sample manifest"):
        SampleManifest.read(tmp_path / "other.json")
    changed = dataclasses.replace(manifest, seed=4, samples=[SampleEntry(0, "0000.mp4", 4)])
    assert changed.differences(manifest) == ["seed: 3 -> 4", "other samples (count, seeds, labels or prompts)"]
