"""The Latte / DiT backbone: agreement with the released computation, presets, conditioning, bad inputs."""

import pytest
import torch

from flexgen.checkpoint import convert_official_state_dict
from flexgen.video.latte import Latte, latte_config
from tests.conftest import tiny_config
from tests.reference_latte import official_state_dict, reference_forward

tiny = tiny_config


def loaded(cfg, seed=0):
    """A float64 model carrying the weights of a random official-layout state dict."""
    sd = official_state_dict(cfg, seed=seed)
    model = Latte(cfg).double().eval()
    model.load_state_dict(convert_official_state_dict(sd, cfg), strict=True)
    return model, sd


@pytest.mark.parametrize("name,num_classes", [("Latte-S/2", 0), ("Latte-S/2", 5), ("DiT-S/2", 0), ("DiT-S/2", 7)])
def test_matches_released_computation(name, num_classes):
    cfg = tiny(name, num_classes=num_classes)
    model, sd = loaded(cfg)
    g = torch.Generator().manual_seed(1)
    frames = (cfg.num_frames,) if cfg.temporal else ()
    x = torch.randn(3, *frames, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 417, 999])
    y = torch.tensor([0, num_classes - 1, num_classes]) if num_classes else None   # incl. the null class
    ours = model(x, t, y)
    ref = reference_forward(sd, cfg, x, t, y)
    assert ours.shape == (3, *frames, 6, 8, 8)
    assert ref.abs().mean() > 1e-2                       # the weights are not trivial
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


def test_patch_size_4_and_no_learned_sigma():
    cfg = tiny("Latte-S/4", learn_sigma=False)
    model, sd = loaded(cfg)
    x = torch.randn(2, 4, 3, 8, 8, dtype=torch.float64)
    t = torch.tensor([5, 600])
    out = model(x, t)
    assert out.shape == x.shape
    torch.testing.assert_close(out, reference_forward(sd, cfg, x, t), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name,params", [("Latte-S/2", 32.48), ("Latte-B/2", 129.55), ("Latte-L/2", 456.82),
                                         ("Latte-XL/2", 673.68)])
def test_preset_parameter_counts(name, params):
    # Trainable parameters of the unconditional, learned-sigma models (Latte paper table; latte.md §1.9).
    with torch.device("meta"):
        model = Latte(latte_config(name))
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == params


def test_presets_have_paper_names_and_dit_has_no_temporal_blocks():
    cfg = latte_config("DiT-XL/2", num_classes=1000)
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.num_temporal, cfg.num_frames) == (28, 1152, 16, 0, 1)
    latte = latte_config("Latte-XL/2")
    assert (latte.num_spatial, latte.num_temporal) == (14, 14)
    with pytest.raises(ValueError, match="unknown model preset"):
        latte_config("Latte-XXL/2")


def test_fresh_model_outputs_zero():
    # adaLN-Zero: zero modulation and final layer, so an untrained model predicts 0.
    model = Latte(tiny(num_classes=3))
    out = model(torch.randn(2, 4, 3, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1]))
    assert torch.count_nonzero(out) == 0


def test_temporal_blocks_mix_frames_and_spatial_blocks_do_not_for_dit():
    model, _ = loaded(tiny())
    x = torch.randn(1, 4, 3, 8, 8, dtype=torch.float64)
    t = torch.tensor([100])
    x2 = x.clone()
    x2[:, 0] += 1.0
    diff = (model(x2, t) - model(x, t)).abs().flatten(2).amax(-1)[0]
    assert (diff[1:] > 1e-6).all()                       # frame 0 reached the other frames

    dit, _ = loaded(tiny("DiT-S/2"))
    xi = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    xi2 = xi.clone()
    xi2[0] += 1.0
    torch.testing.assert_close(dit(xi2, torch.tensor([3, 3]))[1], dit(xi, torch.tensor([3, 3]))[1])


def test_joint_image_video_images_skip_temporal_blocks():
    cfg = tiny(num_classes=4)
    model, _ = loaded(cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 3, 8, 8, generator=g, dtype=torch.float64)       # 4 video frames + 2 images
    t, y, y_img = torch.tensor([10, 20]), torch.tensor([1, 2]), torch.tensor([[0, 3], [2, 2]])
    out = model(x, t, y, num_images=2, y_images=y_img)
    assert out.shape == (2, 6, 6, 8, 8)
    # The video part is unaffected by the images, and equals a video-only forward.
    torch.testing.assert_close(out[:, :4], model(x[:, :4], t, y), rtol=1e-10, atol=1e-10)
    # An image is unaffected by the video frames and by the other image ...
    x2 = x.clone()
    x2[:, :4] += 1.0
    x2[:, 5] -= 1.0
    torch.testing.assert_close(model(x2, t, y, num_images=2, y_images=y_img)[:, 4], out[:, 4])
    # ... and is conditioned on its own label.
    other = model(x, t, y, num_images=2, y_images=torch.tensor([[1, 3], [2, 2]]))
    assert not torch.allclose(other[0, 4], out[0, 4])
    torch.testing.assert_close(other[1], out[1])


def test_class_dropout_uses_the_null_class():
    # Training drops labels in the family's batch preparation (LatteDenoiser.prepare_batch), to the null class.
    from flexgen.backbones.latte import LatteDenoiser
    from flexgen.config import load_config

    cfg = tiny(num_classes=4, class_dropout_prob=1.0)
    model, _ = loaded(cfg)
    run = load_config("configs/demo/tiny.yaml", ["model.num_classes=4", "model.class_dropout_prob=1.0"])
    denoiser = LatteDenoiser(model, run)
    x, t = torch.randn(2, 4, 3, 8, 8, dtype=torch.float64), torch.tensor([7, 8])
    batch = {"video": x, "label": torch.tensor([0, 1])}
    _, cond = denoiser.prepare_batch(batch, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert cond["y"].tolist() == [4, 4]
    _, kept = denoiser.prepare_batch(batch, torch.device("cpu"))          # no generator: evaluation, nothing dropped
    assert kept["y"].tolist() == [0, 1]
    dropped = denoiser.train()(x, t, **cond)
    null = model.eval()(x, t, torch.tensor([4, 4]))
    torch.testing.assert_close(dropped, null)


@pytest.mark.parametrize("make_args,match", [
    (lambda: (torch.randn(2, 4, 4, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1])), "shape \\(C, H, W\\)"),
    (lambda: (torch.randn(2, 5, 3, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1])), "4 video frames"),
    (lambda: (torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1])), "\\(B, F, C, H, W\\)"),
    (lambda: (torch.randn(2, 4, 3, 8, 8), torch.tensor([1]), torch.tensor([0, 1])), "timesteps t of shape"),
    (lambda: (torch.randn(2, 4, 3, 8, 8), torch.tensor([1, 2]), None), "labels y of shape"),
    (lambda: (torch.randn(2, 4, 3, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 9])), "must lie in \\[0, 4\\]"),
])
def test_bad_inputs_are_clear_errors(make_args, match):
    model = Latte(tiny(num_classes=4))
    with pytest.raises(ValueError, match=match):
        model(*make_args())


def test_unconditional_model_rejects_labels():
    model = Latte(tiny())
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(1, 4, 3, 8, 8), torch.tensor([1]), torch.tensor([0]))


def test_bad_configs():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        tiny(num_heads=5)
    with pytest.raises(ValueError, match="even"):
        tiny(depth=3)
    with pytest.raises(ValueError, match="num_frames=1"):
        latte_config("DiT-S/2", num_frames=4)
