"""DyDiT on PixArt-α (flexgen.t2i.dy_pixart): every router on is the dense diffusers model (or the FlexDiT one when
composed); the skipping forward is the masked definition; MACs from the kept counts equal FlopCounterMode; saved
folders reload (also through a plain `PixArtAlphaPipeline.from_pretrained`); conversion from a dense folder;
`flexgen generate` measures the forwards it ran; a tiny pipeline fine-tunes to its λ under the shared loop."""

import dataclasses
import json

import pytest
import torch
from dydit_helpers import dydit_of
from t2i_helpers import CAPTION_DIM, MAX_LENGTH, make_captions, save_tiny_pipeline, tiny_transformer

from flexgen.flops import flop_counter
from flexgen.policies.dydit.routing import set_synthetic_routers
from flexgen.policies.flexdit import DensityConfig, ScheduleConfig
from flexgen.t2i.dy_pixart import DyPixArtTransformer2DModel
from flexgen.t2i.pixart import FlexPixArtTransformer2DModel, PixArtCost
from flexgen.t2i.pixart_io import POLICY_FILE, load_transformer, policy_of

pytest.importorskip("diffusers")
MS = {"use_additional_conditions": True}
CROSS = pytest.mark.parametrize("cross", [True, False])

pytestmark = pytest.mark.usefixtures("float64")           # every test in float64 (tests/conftest.py)


def inputs(batch=2, height=8, width=8, t=500, seed=0, ms=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, height, width, generator=g)
    text = torch.randn(batch, MAX_LENGTH, CAPTION_DIM, generator=g)
    mask = torch.ones(batch, MAX_LENGTH, dtype=torch.long)
    mask[-1, 5:] = 0                                      # the last caption is padded: the mask must matter
    kwargs = {"encoder_attention_mask": mask}
    if ms:                                                # 1024-MS: the size conditions enter the embedding
        kwargs["added_cond_kwargs"] = {"resolution": torch.tensor([[16.0 * height, 16.0 * width]] * batch),
                                       "aspect_ratio": torch.tensor([[height / width]] * batch)}
    return (x, text, torch.full((batch,), t)), kwargs


def arguments(model) -> dict:
    return {k: v for k, v in model.config.items() if not k.startswith("_")}


def routed(parent, cross=True):
    """A DyDiT model on `parent`'s weights (dense or FlexDiT), every router at its initial all-on setting."""
    dy = DyPixArtTransformer2DModel(**{**arguments(parent), "route_cross_attention": cross}).eval()
    missing, unexpected = dy.load_state_dict(parent.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith(("width_routers.", "token_routers.")) for k in missing)
    return dy


@torch.no_grad()
def randomise_routers(dy, seed=0):
    """Routers that turn units and tokens off at random (about half): every skipping path runs."""
    g = torch.Generator().manual_seed(seed)
    for router in dy.width_routers:
        for layer in (router.heads, router.groups):
            layer.weight.normal_(0, 1, generator=g)
            layer.bias.normal_(0, 0.5, generator=g)
    for router in dy.token_routers:
        router.mlp[2].bias.zero_()
    return dy


def composed_parent(dense):
    density = DensityConfig(layout="P GSR D T", schedule=ScheduleConfig(kind="constant", grid=2),
                            fusion_init="sparse")
    flex = FlexPixArtTransformer2DModel.from_dense(dense, density)
    with torch.no_grad():                                 # non-trivial fusions: recovery must use them
        for p in flex.fusions.parameters():
            p.normal_(0, 0.2)
    return flex


@CROSS
@pytest.mark.parametrize("size", [(8, 8), (8, 12)])
@pytest.mark.parametrize("ms", [False, True])
def test_all_routers_on_is_the_dense_diffusers_model(cross, size, ms):
    dense = tiny_transformer(**(MS if ms else {}))
    dy = routed(dense, cross)
    args, kwargs = inputs(height=size[0], width=size[1], ms=ms)
    reference = dense(*args, **kwargs).sample
    for skip in (False, True):                            # the masked and the skipping forward
        dydit_of(dy).skip = skip
        torch.testing.assert_close(dy(*args, **kwargs).sample, reference, rtol=0, atol=1e-10)
    dydit_of(dy).converted()                              # the conversion's reordering changes no function
    torch.testing.assert_close(dy(*args, **kwargs).sample, reference, rtol=0, atol=1e-10)
    assert all(r.heads.min() == 1 and r.groups.min() == 1 and r.tokens.min() == 1 for r in dydit_of(dy).routing)


@CROSS
def test_all_routers_on_composed_is_the_flexdit_model(cross):
    flex = composed_parent(tiny_transformer())
    dy = routed(flex, cross)
    args, kwargs = inputs(height=8, width=12)
    torch.testing.assert_close(dy(*args, **kwargs).sample, flex(*args, **kwargs).sample, rtol=0, atol=1e-12)
    # token routers only where the block sees the dense token set
    assert [dydit_of(dy).token_router(i) is not None for i in range(6)] == [True, False, False, True, True, True]
    assert [r.tokens is None for r in dydit_of(dy).routing] == [False, True, True, False, False, False]


@CROSS
@pytest.mark.parametrize("kind", ["dense", "composed"])
def test_skipping_equals_the_masked_definition(cross, kind):
    dense = tiny_transformer()
    dy = randomise_routers(routed(composed_parent(dense) if kind == "composed" else dense, cross))
    args, kwargs = inputs(height=8, width=12)
    dydit_of(dy).skip = False
    masked = dy(*args, **kwargs).sample
    gates = [(r.heads, r.groups) for r in dydit_of(dy).routing]
    assert 0.2 < torch.cat([h for h, _ in gates], 1).mean() < 0.9       # routers turn units off
    assert all(torch.equal(h[0], h[1]) and torch.equal(g[0], g[1]) for h, g in gates)   # shared by the batch
    dydit_of(dy).skip = True
    torch.testing.assert_close(dy(*args, **kwargs).sample, masked, rtol=0, atol=1e-10)
    assert max(dydit_of(dy).patterns()) == 1 and dydit_of(dy).held_bytes() > 0               # scattered units: copies
    assert (masked - dense(*args, **kwargs).sample).abs().max() > 1e-3     # and the routing changed the output
    # the first k heads and groups on (what importance ordering favours): slices are views, no bytes added
    held = dydit_of(dy).held_bytes()
    set_synthetic_routers(dy.width_routers, dy.token_routers, 0.5)
    dydit_of(dy).skip = False
    masked = dy(*args, **kwargs).sample
    dydit_of(dy).skip = True
    torch.testing.assert_close(dy(*args, **kwargs).sample, masked, rtol=0, atol=1e-10)
    assert max(dydit_of(dy).patterns()) == 2 and dydit_of(dy).held_bytes() == held


def test_width_masks_follow_t_and_the_size_conditions():
    dy = randomise_routers(routed(tiny_transformer(**MS)))
    policy = dydit_of(dy)
    seen, logits = policy.embedded, {}

    def embedded(emb):                                    # the routers' input, and their logits
        logits[key] = torch.cat([torch.cat(r.logits(emb), 1) for r in dy.width_routers], 1)
        return seen(emb)

    policy.embedded = embedded
    for key in ((100, 8), (900, 8), (100, 12)):
        args, kwargs = inputs(t=key[0], height=key[1], width=8, ms=True)
        dy(*args, **kwargs)
        assert torch.equal(logits[key][0], logits[key][1])                 # one mask for both rows (CFG halves)
    assert (logits[100, 8] - logits[900, 8]).abs().max() > 1e-3
    assert (logits[100, 8] - logits[100, 12]).abs().max() > 1e-3           # 1024-MS: per size too
    del policy.embedded
    # two sizes in one batch: no shared mask, so no skipping (and forcing it is an error)
    args, kwargs = inputs(t=100, ms=True)
    kwargs["added_cond_kwargs"]["resolution"][1] = torch.tensor([128.0, 64.0])
    dydit_of(dy).skip = True
    with pytest.raises(ValueError, match="one mask for the batch"):
        dy(*args, **kwargs)


@CROSS
@pytest.mark.parametrize("kind", ["dense", "composed"])
def test_macs_from_the_kept_counts_equal_flop_counter(cross, kind):
    dense = tiny_transformer()
    dy = randomise_routers(routed(composed_parent(dense) if kind == "composed" else dense, cross))
    dydit_of(dy).skip = True
    args, kwargs = inputs(batch=1)
    kwargs["encoder_attention_mask"][:] = 1
    with flop_counter() as counter:
        dy(*args, **kwargs)
    # the cost model with this test's text length (the default counts PixArt-α's 120 T5 tokens)
    cost = dataclasses.replace(PixArtCost.of(dy), text_tokens=MAX_LENGTH)
    shapes = dy.block_shapes(dydit_of(dy).last_grid, text_tokens=MAX_LENGTH)
    other = cost.forward_macs(dydit_of(dy).last_grid).gmacs * 1e9 - sum(b.cost.attention + b.cost.mlp for b in shapes)
    from flexgen.policies.dydit.routing import routed_macs

    measured = routed_macs(shapes, dydit_of(dy).routing, other, dydit_of(dy).token_router_hidden)
    assert float(measured[0]) == pytest.approx(counter.get_total_flops() / 2, rel=1e-9)
    dense_macs = cost.forward_macs(None).gmacs * 1e9
    assert float(measured[0]) < 0.9 * dense_macs
    # the default (120 tokens) is what sample / generate / bench count
    assert dy.policy.forward_macs(PixArtCost.of(dy)).shape == (1,)


def test_the_cross_attention_share_and_the_budget():
    dy = routed(tiny_transformer())
    plain = routed(tiny_transformer(), cross=False)
    with_cross, without = dy.block_shapes(None), plain.block_shapes(None)
    assert all(a.cost.mlp == b.cost.mlp and a.cost.attention > b.cost.attention
               for a, b in zip(with_cross, without, strict=True))
    # the budget counts the tokens of the forward: another size, other costs
    args, kwargs = inputs(height=8, width=12)
    dy(*args, **kwargs)
    assert dydit_of(dy).block_costs()[0].mlp == pytest.approx(dy.block_shapes(None)[0].cost.mlp * 1.5)


def test_save_and_reload_as_a_folder_and_through_a_plain_pipeline(tmp_path):
    from diffusers import PixArtAlphaPipeline

    dy = randomise_routers(routed(composed_parent(tiny_transformer()), cross=False))
    dy.register_to_config(dydit_target=0.6)
    dy.save_pretrained(tmp_path / "transformer")
    saved = json.loads((tmp_path / "transformer" / "config.json").read_text())
    assert saved["_class_name"] == "DyPixArtTransformer2DModel" and saved["route_cross_attention"] is False
    assert saved["layout"] == "P GSR D T" and saved["dydit_target"] == 0.6
    again = load_transformer(tmp_path / "transformer", dtype=torch.float64)
    assert type(again) is DyPixArtTransformer2DModel and not again.route_cross and again.roles == "PGSRDT"
    args, kwargs = inputs()
    torch.testing.assert_close(again(*args, **kwargs).sample, dy(*args, **kwargs).sample, rtol=0, atol=1e-12)

    folder = save_tiny_pipeline(tmp_path / "pipe", transformer=dy)
    pipe = PixArtAlphaPipeline.from_pretrained(folder, local_files_only=True)
    assert type(pipe.transformer) is DyPixArtTransformer2DModel
    assert torch.equal(pipe.transformer.width_routers[0].heads.bias, dy.width_routers[0].heads.bias)


def test_convert_a_dense_folder_and_generate_with_skipping(tmp_path, capsys):
    from flexgen.cli import main
    from flexgen.sampling.manifest import SampleManifest

    torch.set_default_dtype(torch.float32)
    pipe = save_tiny_pipeline(tmp_path / "pipe")
    base = ["model.depth=6", "model.hidden_size=24", "model.num_heads=3", "model.caption_channels=32",
            "data.image_size=16", "autoencoder.downsample=2"]
    assert main(["convert", "--from", str(pipe), "--config", "configs/t2i/pixart/dypixart-xl2-256.yaml", *base,
                 "--out", str(tmp_path / "dy")]) == 0
    assert "DyDiT routers" in capsys.readouterr().out
    dense, dy = load_transformer(pipe), load_transformer(tmp_path / "dy")
    assert type(dy) is DyPixArtTransformer2DModel and dy.config.dydit_target == 0.5
    args, kwargs = inputs()
    args = tuple(a.float() if a.is_floating_point() else a for a in args)
    torch.testing.assert_close(dy(*args, **kwargs).sample, dense(*args, **kwargs).sample, rtol=1e-4, atol=1e-5)
    # heads and groups were put in importance order
    assert not torch.equal(dy.transformer_blocks[0].ff.net[2].weight, dense.transformer_blocks[0].ff.net[2].weight)

    # the export records that its routers are fresh (issue 30: a PixArt-α folder carried no such record)
    assert json.loads((tmp_path / "dy" / POLICY_FILE).read_text())["flexgen_dydit"] == \
        '{"target": 0.5, "trained": false, "steps": null}'
    assert policy_of(dy).label() == "dydit 0.5 (untrained conversion)"
    randomise_routers(dy)                                  # routers set by hand: the folder records nothing of them
    dy.save_pretrained(tmp_path / "dy")
    (tmp_path / "dy" / POLICY_FILE).unlink()
    out = tmp_path / "img.png"
    assert main(["generate", "a red cat", "--model", str(pipe), "--transformer", str(tmp_path / "dy"),
                 "--steps", "4", "--num-images", "2", "--batch-size", "2", "--out", str(out), "--no-progress",
                 "--device", "cpu"]) == 0
    manifest = SampleManifest.read(out.with_suffix(".json"))
    cost = manifest.cost
    assert manifest.method == "dydit 0.5" and manifest.settings["transformer_class"] == "DyPixArtTransformer2DModel"
    assert cost["sampler_steps"] == 4 and 0 < cost["flops_fraction"] < 0.95
    assert cost["gmacs_per_sample"] == pytest.approx(cost["gmacs_per_sample_measured"])
    assert 1 <= max(cost["sliced_weight_patterns"]) <= 4                    # one per distinct step mask at most
    # a re-run draws nothing and keeps the measured cost (not the static dense count)
    assert main(["generate", "a red cat", "--model", str(pipe), "--transformer", str(tmp_path / "dy"),
                 "--steps", "4", "--num-images", "2", "--batch-size", "2", "--out", str(out), "--no-progress",
                 "--device", "cpu"]) == 0
    assert SampleManifest.read(out.with_suffix(".json")).cost == cost


def test_a_tiny_pipeline_fine_tunes_to_its_lambda(tmp_path):
    from flexgen.config import load_config
    from flexgen.train import train

    torch.set_default_dtype(torch.float32)
    pipe = save_tiny_pipeline(tmp_path / "pipe")
    make_captions(tmp_path / "captions")
    cfg = load_config("configs/t2i/pixart/dypixart-xl2-256.yaml", [
        "model.depth=6", "model.hidden_size=24", "model.num_heads=3", "model.caption_channels=32",
        "autoencoder.downsample=2", f"autoencoder.path={pipe}", "autoencoder.scale_factor=1.0",
        f"data.root={tmp_path / 'captions'}", f"data.text_encoder={pipe}", f"data.text_cache={tmp_path / 'cache'}",
        f"data.max_length={MAX_LENGTH}", "data.image_size=16", "data.num_workers=0", f"train.init_from={pipe}",
        "train.batch_size=4", "train.total_samples=640", "train.log_every_samples=4", "train.ckpt_every_samples=640",
        "train.lr=1e-2", "train.bf16=false", "train.grad_checkpointing=false", "dydit.hold_steps=0",
        "dydit.anneal_steps=40", "dydit.complete_steps=20", "dydit.strata=2"])
    summary = train(cfg, tmp_path / "run", device="cpu", progress=False)
    assert summary["finished"] and summary["step"] == 160
    stats = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert stats[0]["flops_fraction"] > 0.95 and "loss_complete" in stats[0]            # all on, warm-up loss
    late = [s["flops_fraction"] for s in stats[-40:]]
    assert sum(late) / len(late) == pytest.approx(0.5, abs=0.08)                        # the budget is met
    assert all(s["flops_target"] == pytest.approx(0.5) for s in stats[-40:])
    exported = load_transformer(tmp_path / "run" / "transformer")
    assert type(exported) is DyPixArtTransformer2DModel and exported.config.dydit_target == 0.5
    assert policy_of(exported).label() == "dydit 0.5" and policy_of(exported).steps == 160


def test_gradient_checkpointing_gives_the_same_gradients():
    """The presets train with gradient checkpointing: the recomputed forward draws the same router noise."""
    dy = randomise_routers(routed(composed_parent(tiny_transformer()))).train()
    args, kwargs = inputs()
    args = (args[0], args[1], torch.tensor([100, 800]))

    def gradients():
        torch.manual_seed(0)
        dy.zero_grad()
        dy(*args, **kwargs).sample.square().mean().backward()
        return {n: p.grad.clone() for n, p in dy.named_parameters() if p.grad is not None}

    plain = gradients()
    dy.enable_gradient_checkpointing()
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and any(n.startswith("width_routers.") for n in plain)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=0, atol=1e-12)


def test_bench_flops_and_plan_measure_a_pixart_dydit_checkpoint(tmp_path, capsys):
    """`bench flops --ckpt` / `bench plan --ckpt` on a PixArt-α DyDiT folder: the MACs of a sampling run from the
    kept counts (text-conditional: example captions), below the dense model's, for each sampler the family offers."""
    from flexgen.cli import main
    from flexgen.config import load_config
    from flexgen.registry import build_denoiser

    overrides = ["model.depth=6", "model.hidden_size=24", "model.num_heads=3", "model.caption_channels=32",
                 "autoencoder.downsample=2", "data.image_size=16", "dydit.target=0.5"]
    run = load_config("configs/t2i/pixart/pixart-xl2-256.yaml", overrides)
    torch.manual_seed(0)
    model = build_denoiser(run)
    randomise_routers(model.net)
    folder = model.export(tmp_path / "transformer")
    args = ["--config", "configs/t2i/pixart/pixart-xl2-256.yaml", *overrides, "--ckpt", str(folder)]
    assert main(["bench", "flops", *args, "--num-samples", "2", "--json"]) == 0
    flops = json.loads(capsys.readouterr().out)
    assert flops["router_setting"] == f"trained ({folder})" and 0 < flops["flops_ratio"] < 1
    assert flops["gmacs_per_sample"] < flops["gmacs_per_sample_dense"]
    assert main(["bench", "plan", *args, "--budget", "0.6", "--num-samples", "1", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    realised = plan["trained"]["realised"]
    assert [r["sampler"] for r in realised] == ["ddpm", "ddim", "dpm-solver++"]       # the papers' samplers it offers
    assert all(0 < r["flops_fraction"] < 1 for r in realised)


def test_a_dydit_folder_into_a_flexdit_run_is_refused_by_name(tmp_path):
    from flexgen.config import load_config
    from flexgen.registry import build_denoiser

    tiny = ["model.depth=6", "model.hidden_size=24", "model.num_heads=3", "model.caption_channels=32",
            "autoencoder.downsample=2", "data.image_size=16"]
    folder = build_denoiser(load_config("configs/t2i/pixart/pixart-xl2-256.yaml", [*tiny, "dydit.target=0.5"])
                            ).export(tmp_path / "transformer")
    flex = build_denoiser(load_config("configs/t2i/pixart/pixart-xl2-256.yaml", [
        *tiny, "density.layout=P GSR DD", "density.schedule.grid_min=1", "density.schedule.grid_max=4"]))
    with pytest.raises(ValueError, match="holds a DyDiT model .* sets dydit.target"):
        flex.load_pretrained(folder)
