"""DyDiT on Latte and DiT (`Latte(config, policy=DyDiT())`): all routers on is the dense model; the skipping
forward is the masked definition; width masks are per step, cached per pattern."""

import pytest
import torch

from flexgen.policies import DyDiT
from flexgen.video.latte import Latte, latte_config
from tests.dydit_helpers import dydit_of, randomise_routers

CONFIGS = {
    "Latte": dict(name="Latte-S/2", depth=4, hidden_size=32, num_heads=4, num_frames=4, input_size=8,
                  in_channels=3, num_classes=4),
    "DiT": dict(name="DiT-S/2", depth=3, hidden_size=32, num_heads=4, input_size=8, in_channels=3, num_classes=4),
}


def models(kind):
    spec = dict(CONFIGS[kind])
    config = latte_config(spec.pop("name"), **spec)
    torch.manual_seed(0)
    dense = Latte(config).double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():                                       # random weights everywhere (adaLN-Zero would hide bugs)
        for p in dense.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2)
    dy = Latte(config, policy=DyDiT()).double().eval()
    missing, unexpected = dy.load_state_dict(dense.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("width_routers.", "token_routers.")) for k in missing)
    return dense, dy


def inputs(dense, t):
    c = dense.config
    g = torch.Generator().manual_seed(2)
    shape = (4, c.num_frames, 3, 8, 8) if c.temporal else (4, 3, 8, 8)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 4, 4])                              # 4: the null class (the CFG half)
    return x, torch.full((4,), t), y


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_all_routers_on_is_the_dense_model(kind):
    dense, dy = models(kind)
    with torch.no_grad():
        for t in (10, 990):
            x, tt, y = inputs(dense, t)
            for skip in (False, True):
                dydit_of(dy).skip = skip
                torch.testing.assert_close(dy(x, tt, y), dense(x, tt, y), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_the_skipping_forward_is_the_masked_definition(kind):
    dense, dy = models(kind)
    randomise_routers(dy, seed=3)                               # routers that turn many units and tokens off
    steps = (990, 500, 500, 10, 10)                             # a sampler's walk: consecutive steps share t
    with torch.no_grad():
        for t in steps:
            x, tt, y = inputs(dense, t)
            dydit_of(dy).skip = False
            masked = dy(x, tt, y)
            dydit_of(dy).skip = True
            torch.testing.assert_close(dy(x, tt, y), masked, rtol=0, atol=1e-10)
            assert not torch.allclose(masked, dense(x, tt, y), atol=1e-4)      # the routers turned things off
    assert all(1 <= n <= 3 for n in dydit_of(dy).patterns())                             # 3 distinct t: at most 3 each
    caches = dydit_of(dy).slice_caches()
    assert sum(cache.hits for cache in caches) >= 2 * len(caches)              # the repeated t reused its slices
    with pytest.raises(ValueError, match="one timestep"):
        dy(x, torch.tensor([10, 10, 500, 500]), y)


def released_layout(dy):
    """A state dict in the released DyDiT key layout (flat `blocks.i`, Latte: blocks[2i] spatial, [2i+1] temporal),
    with DiT's keys and the three routers of each block, built from a DyDiT Latte's own tensors."""
    ns, temporal = len(dy.spatial_blocks), dy.config.temporal
    sd = {}
    for key, value in dy.state_dict().items():
        kind, _, rest = key.partition(".")
        if kind in ("spatial_blocks", "temporal_blocks"):
            i, _, rest = rest.partition(".")
            flat = 2 * int(i) + (kind == "temporal_blocks") if temporal else int(i)
            sd[f"blocks.{flat}.{rest}"] = value
        elif kind in ("width_routers", "token_routers"):
            k, _, rest = rest.partition(".")
            k = int(k)
            flat = (2 * k if k < ns else 2 * (k - ns) + 1) if temporal else k
            part = {"heads": "attn_rate.router", "groups": "mlp_rate.router", "mlp": "token_selection.mlp_head"}
            head, _, rest = rest.partition(".")
            sd[f"blocks.{flat}.{part[head]}.{rest}"] = value
        else:
            sd[key] = value
    return sd


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_the_released_dydit_layout_loads_strictly(kind, tmp_path):
    from flexgen.checkpoint import CheckpointError, load_weights

    _, trained = models(kind)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():                                       # routers that matter
        for p in [*trained.width_routers.parameters(), *trained.token_routers.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    path = tmp_path / "new_dydit0.5.pt"
    torch.save({"model": {k: v * 0 for k, v in released_layout(trained).items()},
                "ema": released_layout(trained)}, path)         # EMA preferred
    loaded = Latte(trained.config, policy=DyDiT()).double().eval()
    load_weights(loaded, path)
    x, t, y = inputs(trained, 500)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y), trained(x, t, y), rtol=0, atol=1e-12)
    # a DyDiT file does not go into a dense model; router shapes that do not fit are named
    with pytest.raises(CheckpointError, match="holds a DyDiT model"):
        load_weights(Latte(trained.config).double(), path)
    other = latte_config(**{**dict(CONFIGS[kind], name=CONFIGS[kind]["name"]), "num_heads": 2})
    with pytest.raises(CheckpointError, match=r"shape mismatches: .*width_routers\.0\.heads\.weight"):
        load_weights(Latte(other, policy=DyDiT()).double(), path)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_dense_weights_convert_with_importance_ordering(kind, tmp_path):
    from flexgen.checkpoint import CheckpointError, load_weights
    from flexgen.video.latte_width import head_importance

    dense, _ = models(kind)
    dense_only = {k: v for k, v in released_layout(dense).items() if "rate" not in k and "token_sel" not in k}
    path = tmp_path / "dense.pt"
    torch.save(dense_only, path)
    converted = Latte(dense.config, policy=DyDiT()).double().eval()
    load_weights(converted, path)                               # fresh routers (all on) + reordering
    for _, block in converted.routed_blocks():
        importance = head_importance(block.attn)
        assert bool((importance[:-1] >= importance[1:]).all())  # most important head first
    x, t, y = inputs(dense, 300)
    with torch.no_grad():
        torch.testing.assert_close(converted(x, t, y), dense(x, t, y), rtol=0, atol=1e-12)
    assert any(not torch.equal(a.attn.qkv.weight, b.attn.qkv.weight)
               for (_, a), b in zip(converted.routed_blocks(), [*dense.spatial_blocks, *dense.temporal_blocks],
                                    strict=True))
    with pytest.raises(CheckpointError, match="holds no DyDiT routers"):   # sampling needs trained routers
        load_weights(Latte(dense.config, policy=DyDiT()).double(), path, routers_required=True)
