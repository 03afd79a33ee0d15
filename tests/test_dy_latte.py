"""DyDiT on Latte and DiT (flexgen.video.dy_latte): all routers on is the dense model; the skipping forward is the
masked definition; width masks are per step, cached per pattern."""

import pytest
import torch

from flexgen.video.dy_latte import DyLatte
from flexgen.video.latte import Latte, latte_config

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
    dy = DyLatte(config).double().eval()
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
                dy.skip = skip
                torch.testing.assert_close(dy(x, tt, y), dense(x, tt, y), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_the_skipping_forward_is_the_masked_definition(kind):
    dense, dy = models(kind)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():                                       # routers that turn many units and tokens off
        for router in dy.width_routers:
            for layer in (router.heads, router.groups):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=torch.float64) * 2)
                layer.bias.zero_()
        for router in dy.token_routers:
            router.mlp[2].bias.fill_(-0.05)
    steps = (10, 500, 990, 500, 10)
    with torch.no_grad():
        for t in steps:
            x, tt, y = inputs(dense, t)
            dy.skip = False
            masked = dy(x, tt, y)
            dy.skip = True
            torch.testing.assert_close(dy(x, tt, y), masked, rtol=0, atol=1e-10)
            assert not torch.allclose(masked, dense(x, tt, y), atol=1e-4)      # the routers turned things off
    assert all(1 <= n <= 3 for n in dy.patterns())                             # 3 distinct t: at most 3 each
    assert sum(cache.hits for cache in dy._sliced) >= 2 * len(dy._sliced)      # t = 500 and 10 came back
    with pytest.raises(ValueError, match="one timestep"):
        dy(x, torch.tensor([10, 10, 500, 500]), y)
