"""The density policies' legacy fixtures (tests/fixtures/policies, written by its make_fixtures.py with the code of
commit 19cc29d) still load through the public entry points and give the outputs and MACs recorded then.

Each fixture is loaded by `flexgen.checkpoint.load_model` (our safetensors) or `flexgen.t2i.load_transformer`
(diffusers folders) and run on its recorded inputs in each recorded case (`masked*`, `skipping*`, `plain*`; see
make_fixtures.py). Outputs: float32, batch 2 as recorded, atol 1e-5 (values are O(1); a wrong weight, router or
layout moves them by far more, and every router logit lies at least 1e-4 from its threshold). MACs: rel 1e-9.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flexgen.checkpoint import load_model
from flexgen.policies import DyDiT, FlexDiT
from flexgen.t2i import load_transformer  # the package export (its module may move)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "policies"
LATTE = ["dydit-latte", "dydit-dit", "flexdydit-latte", "flexdit-latte"]          # NAME.safetensors
PIXART = ["dypixart", "flexdypixart", "flexpixart"]                                # NAME/ (diffusers folders)


# ---- The only two places tied to today's API (how a mode is forced, how a routed forward's MACs are computed):
# ---- a refactor that renames those changes these two helpers, nothing else.

def run(net, mode, *args, **kwargs):
    """One forward without gradients in `mode`: "masked" (eval mode, skipping forced off), "skipping" (eval mode,
    forced on) or "plain" (eval mode, a model without routers)."""
    net.eval()
    if mode != "plain":
        net.policy.part(DyDiT).skip = mode == "skipping"
    with torch.no_grad():
        return net(*args, **kwargs)


def forward_macs(net):
    """(B,) float64 MACs per sample of a routed net's last forward, as `Denoiser.forward_macs` gives them."""
    from flexgen.backbones.latte import LatteCost
    from flexgen.t2i.pixart import PixArtCost

    if hasattr(net, "transformer_blocks"):                                         # PixArt-α
        cost = PixArtCost.of(net)
    else:
        flex = net.policy.part(FlexDiT)
        cost = LatteCost(net.config, None if flex is None else flex.density, getattr(net, "num_timesteps", 1000))
    return net.policy.forward_macs(cost)


# ---- The test.


@pytest.fixture(scope="module")
def expected():
    return load_file(FIXTURES / "expected.safetensors")


@pytest.mark.parametrize("name", LATTE + PIXART)
def test_legacy_fixture_outputs_and_macs(name, expected):
    pixart = name in PIXART
    net = load_transformer(FIXTURES / name) if pixart else load_model(FIXTURES / f"{name}.safetensors")
    ours = {k.removeprefix(f"{name}."): v for k, v in expected.items() if k.startswith(f"{name}.")}
    cases = sorted(k.removesuffix(".out") for k in ours if k.endswith(".out"))
    assert len(cases) >= 2, f"{name}: no recorded cases in expected.safetensors"
    for case in cases:
        t, mode = ours[f"{case}.t"], case.split("_")[0]
        extra = {"grid": int(ours[f"{case}.grid"])} if f"{case}.grid" in ours else {}
        if pixart:
            out = run(net, mode, ours["x"], ours["text"], t, encoder_attention_mask=ours["text_mask"],
                      return_dict=False, **extra)[0]
        else:
            out = run(net, mode, ours["x"], t, ours["y"], **extra)
        torch.testing.assert_close(out, ours[f"{case}.out"], rtol=0, atol=1e-5,
                                   msg=lambda m, case=case: f"{name} {case}: {m}")
        if f"{case}.macs" in ours:
            torch.testing.assert_close(forward_macs(net), ours[f"{case}.macs"], rtol=1e-9, atol=0,
                                       msg=lambda m, case=case: f"{name} {case} MACs: {m}")
