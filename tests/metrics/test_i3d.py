"""I3D FVD detector: architecture, TF SAME padding, pre-processing, detector contract, weight loading policy."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flexgen.metrics import i3d as i3d_mod
from flexgen.metrics.i3d import (
    I3D,
    I3D_SHA256,
    I3DDetector,
    default_i3d_path,
    load_i3d_torchscript,
    load_weights_from_torchscript,
    ours_name_to_torchscript,
    tf_same_padding,
    torchscript_name_to_ours,
)

MIXED_CHANNELS = {"mixed_3b": 256, "mixed_3c": 480, "mixed_4b": 512, "mixed_4c": 512, "mixed_4d": 512,
                  "mixed_4e": 528, "mixed_4f": 832, "mixed_5b": 832, "mixed_5c": 1024}


class _Stop(Exception):
    """Raised by a hook to end a forward pass early once its input has been captured."""


def randomized(model: I3D, seed: int = 0) -> I3D:
    """Random BN statistics and biases so that a wrong mapping cannot hide behind default values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bn.bias", "logits.bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# Architecture
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def traced() -> dict:
    """One forward of a random-weight I3D on (1, 3, 16, 224, 224), recording every Mixed block's output shape."""
    torch.manual_seed(0)
    model = randomized(I3D())
    shapes: dict[str, tuple[int, ...]] = {}
    for name in MIXED_CHANNELS:
        getattr(model, name).register_forward_hook(lambda m, a, out, name=name: shapes.__setitem__(name, out.shape))
    x = torch.rand(1, 3, 16, 224, 224) * 2 - 1
    with torch.no_grad():
        out = model(x, return_features=True)
    return {"model": model, "shapes": shapes, "out": out, "x": x}


def test_mixed_channels_and_spatial_temporal_sizes(traced):
    shapes = traced["shapes"]
    assert {k: v[1] for k, v in shapes.items()} == MIXED_CHANNELS
    assert shapes["mixed_3b"][2:] == (8, 28, 28)
    assert shapes["mixed_4b"][2:] == (4, 14, 14)
    assert shapes["mixed_5c"][2:] == (2, 7, 7)


def test_output_is_400_logits(traced):
    out = traced["out"]
    assert out.shape == (1, 400) and out.dtype == torch.float32 and torch.isfinite(out).all()
    # return_features=False gives the softmax of the same logits.
    with torch.no_grad():
        probs = traced["model"](traced["x"], return_features=False)
    torch.testing.assert_close(probs, out.softmax(1))


def test_parameter_count_and_structure():
    model = I3D()
    n = sum(p.numel() for p in model.parameters())
    assert 12_000_000 < n < 13_500_000  # I3D RGB with a 400-way head: about 12.7M incl. BN scales
    assert model.logits.bias is not None and model.logits.weight.shape == (400, 1024, 1, 1, 1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert sum(c.bias is None for c in convs) == len(convs) - 1  # only the logits conv has a bias
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm3d)]
    assert len(bns) == 3 + 9 * 6 and all(b.eps == 1e-3 for b in bns)
    assert model.conv3d_1a_7x7.conv.kernel_size == (7, 7, 7) and model.conv3d_1a_7x7.conv.stride == (2, 2, 2)
    assert model.mixed_5b.b2b.conv.kernel_size == (3, 3, 3)


def test_time_steps_are_averaged():
    """T=24 leaves 3 time steps before the head's k=2 pool, 2 after it; the output is their mean."""
    model = randomized(I3D())
    x = torch.rand(1, 3, 24, 193, 193) * 2 - 1  # 193 px is the smallest frame that reaches 7x7; T=24 -> 3 -> 2
    with torch.no_grad():
        feats = model.features(x)
        out = model(x, return_features=True)
    assert feats.shape == (1, 1024, 2, 1, 1)
    torch.testing.assert_close(out, model.logits(feats).flatten(2).mean(2))


# ----------------------------------------------------------------------------------------------------------------
# TF SAME padding
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 7, 8, 9, 15, 16, 112, 113, 193, 224, 225])
@pytest.mark.parametrize(("kernel", "stride"), [(1, 1), (3, 1), (3, 2), (7, 2), (2, 2), (1, 2), (3, 3)])
def test_tf_same_padding_matches_tf_formula(size, kernel, stride):
    # TF documentation: out = ceil(in / s); pad_total = max((out - 1) * s + k - in, 0); front = total // 2.
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    assert tf_same_padding(size, kernel, stride) == (total // 2, total - total // 2)
    front, back = tf_same_padding(size, kernel, stride)
    assert (size + front + back - kernel) // stride + 1 == out


def test_asymmetric_padding_in_a_unit():
    """Stride 2 on an even size pads more at the back, like TF: a 7-tap conv on 8 samples pads (2, 3)."""
    assert tf_same_padding(8, 7, 2) == (2, 3)
    unit = i3d_mod.Unit3D(1, 1, (1, 1, 3), (1, 1, 2)).eval()
    with torch.no_grad():
        unit.conv.weight.fill_(1.0)
    x = torch.arange(1.0, 9.0).view(1, 1, 1, 1, 8)  # pads (0, 1): windows [1,2,3] [3,4,5] [5,6,7] [7,8,0]
    with torch.no_grad():
        y = unit.conv(i3d_mod.pad_same(x, unit.kernel, unit.stride))
    assert y.flatten().tolist() == [6.0, 12.0, 18.0, 15.0]


# ----------------------------------------------------------------------------------------------------------------
# Pre-processing: rescale and resize
# ----------------------------------------------------------------------------------------------------------------


def first_layer_input(model: I3D, videos: torch.Tensor, **kwargs) -> torch.Tensor:
    captured = {}

    def grab(module, args):
        captured["x"] = args[0]
        raise _Stop

    handle = model.conv3d_1a_7x7.register_forward_pre_hook(grab)
    with pytest.raises(_Stop):
        model(videos, **kwargs)
    handle.remove()
    return captured["x"]


def test_rescale_maps_0_255_to_minus1_1():
    model = I3D().eval()
    v = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 3, 1, 1).expand(1, 3, 3, 224, 224)
    x = first_layer_input(model, v, rescale=True, resize=False)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x[0, 0, :, 0, 0], torch.tensor([-1.0, 51 * 2 / 255 - 1, 1.0]))
    # without rescale the input goes in unchanged (it must already be in [-1, 1])
    y = torch.rand(1, 3, 2, 224, 224) * 2 - 1
    torch.testing.assert_close(first_layer_input(model, y), y)


def test_resize_is_per_frame_bilinear_to_224():
    model = I3D().eval()
    v = torch.randint(0, 256, (2, 3, 5, 48, 64), dtype=torch.uint8)
    x = first_layer_input(model, v, rescale=True, resize=True)
    assert x.shape == (2, 3, 5, 224, 224)
    frames = v.permute(0, 2, 1, 3, 4).reshape(10, 3, 48, 64).float() * (2 / 255) - 1
    ref = F.interpolate(frames, size=(224, 224), mode="bilinear", align_corners=False)
    torch.testing.assert_close(x, ref.view(2, 5, 3, 224, 224).permute(0, 2, 1, 3, 4), atol=1e-5, rtol=0)
    assert x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6
    # 224x224 input is left alone
    w = torch.rand(1, 3, 2, 224, 224) * 2 - 1
    assert torch.equal(first_layer_input(model, w, resize=True), w)


def test_bad_layout_is_an_error():
    with pytest.raises(ValueError, match=r"\(N, 3, T, H, W\)"):
        I3D()(torch.zeros(1, 16, 3, 224, 224))


# ----------------------------------------------------------------------------------------------------------------
# Detector wrapper: uint8 (N, T, 3, H, W) in, float64 (N, 400) out
# ----------------------------------------------------------------------------------------------------------------


class _Recorder(nn.Module):
    """Stands in for I3D: records calls, returns per-video channel/time statistics padded to 400."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[tuple[int, ...], torch.dtype, dict]] = []

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        self.calls.append((tuple(x.shape), x.dtype, kwargs))
        stats = x.float().mean(dim=(3, 4)).flatten(1)  # (n, 3 * T), channel-major
        return F.pad(stats, (0, 400 - stats.shape[1]))


def test_detector_contract_layout_and_batching():
    rec = _Recorder()
    det = I3DDetector(model=rec, batch_size=2)
    videos = torch.randint(0, 256, (5, 10, 3, 8, 6), dtype=torch.uint8)  # (N, T, 3, H, W)
    feats = det(videos)
    assert feats.shape == (5, 400) and feats.dtype == torch.float64 and feats.device.type == "cpu"
    assert [c[0] for c in rec.calls] == [(2, 3, 10, 8, 6), (2, 3, 10, 8, 6), (1, 3, 10, 8, 6)]
    assert all(c[2] == {"rescale": True, "resize": True, "return_features": True} for c in rec.calls)
    expected = videos.permute(0, 2, 1, 3, 4).float().mean(dim=(3, 4)).flatten(1).double()
    torch.testing.assert_close(feats[:, :30], expected)
    assert det.sha256 is None  # an injected model carries no verified weight hash


def test_detector_rejects_float_and_channel_first():
    det = I3DDetector(model=_Recorder())
    with pytest.raises(TypeError, match="uint8"):
        det(torch.rand(1, 10, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, T, 3, H, W\)"):
        det(torch.zeros(1, 3, 10, 8, 8, dtype=torch.uint8))


def test_detector_end_to_end_with_random_i3d():
    model = randomized(I3D())
    videos = torch.randint(0, 256, (1, 16, 3, 32, 48), dtype=torch.uint8)
    feats = I3DDetector(model=model)(videos)
    assert feats.shape == (1, 400) and feats.dtype == torch.float64 and torch.isfinite(feats).all()


# ----------------------------------------------------------------------------------------------------------------
# Weight file policy: verify sha256 before torch.jit.load
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def no_jit_load(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("torch.jit.load must not be called before the sha256 check passes")

    monkeypatch.setattr(torch.jit, "load", fail)


def test_missing_file_error(tmp_path, no_jit_load):
    path = tmp_path / "nowhere" / "i3d_torchscript.pt"
    with pytest.raises(FileNotFoundError) as info:
        load_i3d_torchscript(path)
    msg = str(info.value)
    assert str(path) in msg and I3D_SHA256 in msg and "detectors" in msg and "FLEXGEN_I3D" in msg


def test_wrong_sha256_error(tmp_path, no_jit_load):
    path = tmp_path / "i3d_torchscript.pt"
    path.write_bytes(b"not the detector")
    with pytest.raises(ValueError) as info:
        load_i3d_torchscript(path)
    msg = str(info.value)
    assert str(path) in msg and I3D_SHA256 in msg and hashlib.sha256(b"not the detector").hexdigest() in msg
    with pytest.raises(ValueError):  # the detector wrapper goes through the same check
        I3DDetector(path)


def test_matching_sha256_reaches_jit_load(tmp_path, monkeypatch):
    path = tmp_path / "det.pt"
    path.write_bytes(b"stand-in")
    seen = []
    monkeypatch.setattr(torch.jit, "load", lambda p, map_location=None: seen.append(p) or "loaded")
    assert load_i3d_torchscript(path, sha256=hashlib.sha256(b"stand-in").hexdigest()) == "loaded"
    assert seen == [str(path)]


def test_default_path_from_env(monkeypatch, tmp_path):
    monkeypatch.delenv("FLEXGEN_I3D", raising=False)
    monkeypatch.setenv("FLEXGEN_CACHE", str(tmp_path))
    assert default_i3d_path() == tmp_path / "detectors" / "i3d_torchscript.pt"
    monkeypatch.setenv("FLEXGEN_I3D", str(tmp_path / "x.pt"))
    assert default_i3d_path() == tmp_path / "x.pt"


# ----------------------------------------------------------------------------------------------------------------
# Name mapping
# ----------------------------------------------------------------------------------------------------------------


def test_name_mapping_examples():
    cases = {
        "conv3d_1a_7x7.conv3d.weight": "conv3d_1a_7x7.conv.weight",
        "conv3d_2c_3x3.batch3d.running_var": "conv3d_2c_3x3.bn.running_var",
        "mixed_3b.branch_0.batch3d.bias": "mixed_3b.b0.bn.bias",
        "mixed_4f.branch_1.1.conv3d.weight": "mixed_4f.b1b.conv.weight",
        "mixed_5b.branch_2.1.conv3d.weight": "mixed_5b.b2b.conv.weight",
        "mixed_5c.branch_3.1.batch3d.num_batches_tracked": "mixed_5c.b3b.bn.num_batches_tracked",
        "conv3d_0c_1x1.conv3d.bias": "logits.bias",
    }
    for ts, ours in cases.items():
        assert torchscript_name_to_ours(ts) == ours
        assert ours_name_to_torchscript(ours) == ts
    assert torchscript_name_to_ours("mixed_3b.branch_3.0.weight") is None
    assert torchscript_name_to_ours("fc.weight") is None


def test_mapping_round_trip_gives_identical_outputs():
    src = randomized(I3D(), seed=1)
    scripted_sd = {ours_name_to_torchscript(k): v.clone() for k, v in src.state_dict().items()}
    assert all(torchscript_name_to_ours(k) is not None for k in scripted_sd)
    dst = load_weights_from_torchscript(I3D(), scripted_sd).eval()
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    x = torch.rand(1, 3, 9, 193, 193) * 2 - 1
    with torch.no_grad():
        assert torch.equal(src(x, return_features=True), dst(x, return_features=True))


def test_mapping_is_strict():
    good = {ours_name_to_torchscript(k): v for k, v in I3D().state_dict().items()}
    extra = {**good, "mixed_3b.branch_4.conv3d.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"unmapped source tensors \(1\).*branch_4"):
        load_weights_from_torchscript(I3D(), extra)
    wrong = {**good, "conv3d_0c_1x1.conv3d.weight": torch.zeros(600, 1024, 1, 1, 1)}
    with pytest.raises(ValueError, match=r"shape mismatches \(1\).*conv3d_0c_1x1"):
        load_weights_from_torchscript(I3D(), wrong)
    missing = {k: v for k, v in good.items() if k != "mixed_4c.branch_2.0.batch3d.running_mean"}
    with pytest.raises(ValueError, match=r"unfilled \(1\).*mixed_4c.b2a.bn.running_mean"):
        load_weights_from_torchscript(I3D(), missing)
    # BN counters are optional (older files lack them)
    counters_gone = {k: v for k, v in good.items() if not k.endswith("num_batches_tracked")}
    load_weights_from_torchscript(I3D(), counters_gone)


def test_bn_eps_adopted_from_a_module():
    """A module source (like the TorchScript file) passes its BN eps on to ours."""
    src = nn.Module()
    src.conv3d_1a_7x7 = nn.Module()
    src.conv3d_1a_7x7.batch3d = nn.BatchNorm3d(64, eps=1e-5)
    model = I3D()
    full = {ours_name_to_torchscript(k): v for k, v in model.state_dict().items()}

    class Source(nn.Module):
        def state_dict(self, *args, **kwargs):
            return full

        def named_modules(self, *args, **kwargs):
            return src.named_modules()

    load_weights_from_torchscript(model, Source())
    assert model.conv3d_1a_7x7.bn.eps == 1e-5 and model.conv3d_2b_1x1.bn.eps == 1e-3


# ----------------------------------------------------------------------------------------------------------------
# Parity with the real TorchScript file (skipped when it is absent)
# ----------------------------------------------------------------------------------------------------------------


def _real_file() -> Path:
    path = default_i3d_path()
    if not path.is_file():
        reason = (f"real I3D weights absent: {path} (set FLEXGEN_I3D or put i3d_torchscript.pt under "
                  f"$FLEXGEN_CACHE/detectors/; sha256 {I3D_SHA256})")
        print(reason)
        pytest.skip(reason)
    return path


def test_parity_with_torchscript_detector():
    path = _real_file()
    scripted = load_i3d_torchscript(path).eval()
    ours = load_weights_from_torchscript(I3D(), scripted).eval()
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 224, 224) * 2 - 1
    with torch.no_grad():
        ref = scripted(x, rescale=False, resize=False, return_features=True)
        out = ours(x, rescale=False, resize=False, return_features=True)
    assert out.shape == ref.shape == (2, 400)
    assert (out - ref).norm(dim=1).max() < 1e-3  # fvd-comparison saw 2.6e-4 between TF and TorchScript
    # with the detector's own pre-processing on uint8 input of another size (its resize internals are unread)
    v = torch.randint(0, 256, (1, 3, 16, 128, 160), dtype=torch.uint8)
    with torch.no_grad():
        ref = scripted(v, rescale=True, resize=True, return_features=True)
        out = ours(v, rescale=True, resize=True, return_features=True)
    assert (out - ref).norm() < 1e-2 * ref.norm()
