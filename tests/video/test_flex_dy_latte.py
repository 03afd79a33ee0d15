"""FlexDiT ∘ DyDiT (`Compose(FlexDiT, DyDiT)` on a Latte): every router on is the FlexDiT model; the skipping forward
is the masked definition on every role (Poolingformer, sparse generation with dense keys, sparse, recovery with
sparse keys, dense, top; per-frame and cross-frame pooling); MACs from the kept counts equal FlopCounterMode of the
skipping forward at each grid; the budget weighs the tokens each block processes; conversion, checkpoints, a short
fine-tune."""

import json

import numpy as np
import pytest
import torch

from flexgen.checkpoint import CheckpointError, load_model, load_weights, save_weights
from flexgen.config import load_config
from flexgen.flops import flop_counter
from flexgen.policies import Compose, DyDiT, FlexDiT
from flexgen.policies.dydit.budget import flops_fraction
from flexgen.registry import build_denoiser
from flexgen.train import train
from flexgen.video.latte import Latte, latte_config
from tests.dydit_helpers import CASES, GRIDS, SynthClips, density, dydit_of, inputs, models, randomise_routers


@pytest.mark.parametrize("case", list(CASES))
def test_all_routers_on_is_the_flexdit_model(case):
    flex, composed = models(case)
    dense_roles = [r not in "GS" for r in composed.policy.part(FlexDiT).roles]
    assert len(composed.token_routers) == sum(dense_roles) + sum(dense_roles[:len(composed.temporal_blocks)])
    with torch.no_grad():
        for grid in GRIDS:
            x, t, y = inputs(flex, 500)
            expected = flex(x, t, y, grid=grid)
            for skip in (False, True):
                dydit_of(composed).skip = skip
                torch.testing.assert_close(composed(x, t, y, grid=grid), expected, rtol=0, atol=1e-12)
            assert dydit_of(composed).last_grid == grid


@pytest.mark.parametrize("case", list(CASES))
def test_the_skipping_forward_is_the_masked_definition_on_every_role(case):
    flex, composed = models(case)
    randomise_routers(composed, seed=3)                         # routers that turn many units and tokens off
    with torch.no_grad():
        for t, grid in ((10, 2), (500, 3), (990, 4), (10, 2)):
            x, tt, y = inputs(flex, t)
            dydit_of(composed).skip = False
            masked = composed(x, tt, y, grid=grid)
            routing = dydit_of(composed).routing
            dydit_of(composed).skip = True
            torch.testing.assert_close(composed(x, tt, y, grid=grid), masked, rtol=0, atol=1e-10)
            assert not torch.allclose(masked, flex(x, tt, y, grid=grid), atol=1e-4)    # the routers did act
            # sparse blocks (and the temporal blocks on their tokens) route no tokens
            spatial = len(composed.spatial_blocks)
            for k, r in enumerate(routing):
                role = composed.policy.part(FlexDiT).roles[k if k < spatial else k - spatial]
                assert (r.tokens is None) == (role in "GS")
            assert float(torch.cat([r.heads for r in routing]).mean()) < 0.95


@pytest.mark.parametrize("case", list(CASES))
def test_macs_from_kept_counts_equal_flop_counter_of_the_skipping_forward(case):
    spec, layout, pool = CASES[case]
    extra = [f"model.preset={spec['name']}", f"model.depth={spec['depth']}", "model.hidden_size=32",
             "data.image_size=8", f"data.num_frames={spec.get('num_frames', 1)}", f"density.layout={layout}",
             f"density.pool_frames={pool}", "density.schedule.kind=eq5", "density.schedule.grid_min=2",
             "density.schedule.grid_max=4", "dydit.target=0.5"]
    model = randomise_routers(build_denoiser(load_config("configs/demo/tiny.yaml", extra)).double().eval())
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, *model.latent_shape(), generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4])
    grids = set()
    for t_value in (50, 600, 990):
        with torch.no_grad(), flop_counter() as counter:
            model(x, torch.full((5,), t_value), y=y)
        grids.add(dydit_of(model.net).last_grid)
        per_sample = model.forward_macs()                         # (5,) from the gates the forward used
        assert per_sample.sum().item() == pytest.approx(counter.get_total_flops() / 2, rel=1e-12)
        flex_macs = model.cost().forward_macs(dydit_of(model.net).last_grid).gmacs * 1e9
        assert float(per_sample.max()) < flex_macs                       # below the FlexDiT forward at its grid
    assert len(grids) >= 2                                               # the schedule changed the grid


def test_the_budget_counts_the_tokens_each_block_processes():
    flex, composed = models("Latte")
    x, t, y = inputs(flex, 500)
    costs = {}
    with torch.no_grad():
        for grid in (4, 2):
            composed(x, t, y, grid=grid)
            costs[grid] = dydit_of(composed).block_costs()
    spatial = len(composed.spatial_blocks)
    # sparse roles cost less at the smaller grid, dense ones the same
    for k, role in enumerate(composed.policy.part(FlexDiT).roles):
        for index in ([k, spatial + k] if k < len(composed.temporal_blocks) else [k]):
            smaller = costs[2][index].mlp < costs[4][index].mlp
            assert smaller == (role in "GS")
    full = sum(c.attention + c.mlp for c in costs[4])
    sparse = sum(c.attention + c.mlp for c in costs[2])
    assert sparse < 0.8 * full
    # every unit and token on: fraction 1 of the forward's own cost, at either grid
    r = dydit_of(composed).routing
    assert float(flops_fraction(costs[2], [b.heads for b in r], [b.groups for b in r],
                                [b.tokens for b in r]).mean()) == pytest.approx(1.0)


@pytest.mark.parametrize("source", ["dense", "flexdit"])
def test_conversion_applies_both_policies(source, tmp_path):
    """A dense file (or a fine-tuned FlexDiT file) into a composed Latte: FlexDiT's conversion, fresh routers (all on)
    and importance ordering: the model is the FlexDiT conversion of those weights to 1e-12; it saves and loads back."""
    spec, layout, pool = CASES["Latte"]
    spec = dict(spec)
    config = latte_config(spec.pop("name"), **spec)
    torch.manual_seed(0)
    dense = Latte(config).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in dense.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2)
    d = density(layout, pool)
    flex = dense.converted(FlexDiT(d)).eval()
    save_weights(dense if source == "dense" else flex, tmp_path / "in.safetensors")
    composed = Latte(config, policy=Compose(FlexDiT(d), DyDiT())).double().eval()
    with torch.no_grad():
        composed.fusions.load_state_dict(flex.fusions.state_dict())     # the same recovery fusion init
    with pytest.raises(CheckpointError, match=r"holds no DyDiT routers \(a model without DyDiT: dense or FlexDiT\)"):
        load_weights(Latte(config, policy=Compose(FlexDiT(d), DyDiT())).double(), tmp_path / "in.safetensors",
                     routers_required=True)                          # sampling: named as what it is (issue 30)
    load_weights(composed, tmp_path / "in.safetensors")
    x, t, y = inputs(flex, 300)
    with torch.no_grad():
        torch.testing.assert_close(composed(x, t, y, grid=2), flex(x, t, y, grid=2), rtol=0, atol=1e-12)
    qkv = composed.spatial_blocks[1].attn.qkv.weight
    assert not torch.equal(qkv, flex.spatial_blocks[1].attn.qkv.weight)          # heads were reordered
    save_weights(composed, tmp_path / "composed.safetensors")
    back = load_model(tmp_path / "composed.safetensors").double().eval()
    assert back.policy.name == "flexdit+dydit" and back.policy.part(FlexDiT).density == d
    with torch.no_grad():           # load_model builds a float32 model: the weights went through float32
        torch.testing.assert_close(back(x, t, y, grid=2), flex(x, t, y, grid=2), rtol=0, atol=1e-5)


def test_a_short_fine_tune_of_the_composed_model_meets_its_target(tmp_path):
    """A FlexDiT tiny Latte -> FlexDiT ∘ DyDiT at λ = 0.6 on the synthetic motions: the eval-mode fraction of each
    FlexDiT forward over t is within ±0.07 of λ, and the composed MACs per forward are below FlexDiT's."""
    small = ["data.num_frames=4", "data.image_size=8", "model.hidden_size=64",
             "density.layout=P GSR T", "density.schedule.kind=eq5", "density.schedule.grid_min=2",
             "density.schedule.grid_max=4"]
    common = [*small, "train.batch_size=8", "train.log_every_samples=80", "train.ckpt_every_samples=100000"]
    data = SynthClips(32)
    run = load_config("configs/demo/tiny.yaml", [*common, "train.total_samples=1200", "train.lr=1e-3",
                                                 "dydit.target=0.6", "dydit.hold_steps=10", "dydit.anneal_steps=60",
                                                 "dydit.complete_steps=20"])
    train(run, tmp_path / "composed", dataset=data, progress=False)
    stats = [json.loads(line) for line in (tmp_path / "composed" / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["flops_target"] == pytest.approx(0.6) and "grid" in stats[-1]
    model = build_denoiser(run)
    model.load_pretrained(tmp_path / "composed" / "ema.safetensors", routers_required=True)
    model.eval()
    fractions, ratios = [], []
    held = SynthClips(8, seed=1)
    with torch.no_grad():
        for t in range(0, 1000, 50):
            model(held.video, torch.full((8,), t), y=held.label)
            dy = dydit_of(model.net)
            r = dy.routing
            fractions.append(flops_fraction(dy.block_costs(), [b.heads for b in r], [b.groups for b in r],
                                            [b.tokens for b in r]).mean().item())
            flex = model.cost().forward_macs(dydit_of(model.net).last_grid).gmacs * 1e9
            ratios.append(float(model.forward_macs().mean()) / flex)
    assert abs(np.mean(fractions) - 0.6) <= 0.07
    assert max(ratios) < 1
