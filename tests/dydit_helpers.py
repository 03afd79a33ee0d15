"""DyDiT test builders shared by several test modules: run configs, routers that switch many units off, the
synthetic motion clips, and the FlexDiT ∘ DyDiT model pairs with their inputs."""

import numpy as np
import torch

from flexgen.config import load_config
from flexgen.policies.flexdit import DensityConfig, ScheduleConfig
from flexgen.synthetic import MOTIONS, render_clip
from flexgen.video.latte import latte_config

SMALL = ["model.depth=4", "data.num_frames=4", "data.image_size=8", "model.hidden_size=64"]


def run_config(*overrides):
    return load_config("configs/demo/tiny.yaml", list(overrides))


def dydit_of(net):
    """The DyDiT part of a network's policy (its routing, skip switch, slice caches, last grid)."""
    from flexgen.policies import DyDiT

    return getattr(net, "net", net).policy.part(DyDiT)


def randomise_routers(model, seed=0, token_bias=-0.05):
    """Routers that turn many heads, groups and tokens off, differently at each t (`model`: a denoiser or its net)."""
    g, net = torch.Generator().manual_seed(seed), getattr(model, "net", model)
    with torch.no_grad():
        for router in net.width_routers:
            for layer in (router.heads, router.groups):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=layer.weight.dtype) * 2)
                layer.bias.zero_()
        for router in net.token_routers:
            router.mlp[2].bias.fill_(token_bias)
    return model


class SynthClips(torch.utils.data.Dataset):
    """The demo's synthetic motions rendered in memory (F frames of size² pixels in [-1, 1]), labelled."""

    def __init__(self, n, frames=4, size=8, seed=0):
        motions = list(MOTIONS)[:4]
        clips, labels = [], []
        for i in range(n):
            rng = np.random.default_rng([seed, i])
            clips.append(render_clip(motions[i % 4], frames, size, rng))
            labels.append(i % 4)
        self.video = torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
        self.label = torch.tensor(labels)

    def __len__(self):
        return len(self.video)

    def set_epoch(self, epoch):
        pass

    def __getitem__(self, i):
        return {"video": self.video[i], "label": int(self.label[i]), "path": f"clip{i}"}


# FlexDiT ∘ DyDiT (test_flex_dy_latte, test_cuda): a FlexDiT Latte with random weights and the composed model on them.

CASES = {   # (preset sizes, layout, pool_frames)
    "DiT": (dict(name="DiT-S/2", depth=6, hidden_size=32, num_heads=4, input_size=8, in_channels=3, num_classes=4),
            "P GSR D T", 0),
    "Latte": (dict(name="Latte-S/2", depth=14, hidden_size=32, num_heads=4, num_frames=4, input_size=8,
                   in_channels=3, num_classes=4), "P GSSR D T", 0),
    "Latte-cross-frame": (dict(name="Latte-S/2", depth=12, hidden_size=32, num_heads=4, num_frames=4,
                               input_size=8, in_channels=3, num_classes=4), "P GSR D T", 2),
}
GRIDS = (4, 2, 3)      # of the 4×4 token grid: full, and two sparse grids (one that does not divide the grid)


def density(layout, pool_frames, grid=2):
    # fusion_init "sparse" (W1 = I, W2 = 0) so a random model's recovery is not trivially the skip
    return DensityConfig(layout=layout, schedule=ScheduleConfig(kind="constant", grid=grid), pool_frames=pool_frames,
                         fusion_init="sparse")


def models(case):
    from flexgen.policies import Compose, DyDiT, FlexDiT
    from flexgen.video.latte import Latte

    spec, layout, pool = CASES[case]
    spec = dict(spec)
    config = latte_config(spec.pop("name"), **spec)
    torch.manual_seed(0)
    flex = Latte(config, policy=FlexDiT(density(layout, pool))).double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():                                       # random weights everywhere (adaLN-Zero would hide bugs)
        for p in flex.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2)
    composed = Latte(config, policy=Compose(FlexDiT(density(layout, pool)), DyDiT())).double().eval()
    missing, unexpected = composed.load_state_dict(flex.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("width_routers.", "token_routers.")) for k in missing)
    return flex, composed


def inputs(model, t, batch=4):
    c = model.config
    g = torch.Generator().manual_seed(2)
    shape = (batch, c.num_frames, 3, 8, 8) if c.temporal else (batch, 3, 8, 8)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    return x, torch.full((batch,), t), torch.tensor([0, 3, 4, 4, 1, 2][:batch])
