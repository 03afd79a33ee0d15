"""Loading released Latte / DiT checkpoints and our safetensors files; the errors a user meets."""

import pytest
import torch

from flexgen.checkpoint import CheckpointError, file_sha256, load_model, load_weights, save_weights
from flexgen.video.latte import Latte
from tests.conftest import tiny_config
from tests.reference_latte import official_state_dict, reference_forward


def tiny(name="Latte-S/2", **kw):
    return tiny_config(name, **{"num_classes": 5, **kw})


@pytest.fixture
def latte_pt(tmp_path):
    """A Latte training checkpoint as released: {"model": raw weights, "ema": EMA weights}, float32."""
    cfg = tiny()
    ema = {k: v.float() for k, v in official_state_dict(cfg, seed=0).items()}
    raw = {k: v.float() for k, v in official_state_dict(cfg, seed=1).items()}
    path = tmp_path / "ucf101.pt"
    torch.save({"model": raw, "ema": ema}, path)
    return cfg, ema, path


def test_official_latte_checkpoint_loads_ema(latte_pt):
    cfg, ema, path = latte_pt
    model = Latte(cfg).eval()
    load_weights(model, path)
    x, t, y = torch.randn(2, 4, 3, 8, 8), torch.tensor([3, 900]), torch.tensor([1, 5])
    ref = reference_forward({k: v.double() for k, v in ema.items()}, cfg, x.double(), t, y)
    torch.testing.assert_close(model(x, t, y).double(), ref, rtol=1e-4, atol=1e-4)


def test_official_dit_checkpoint_is_a_bare_state_dict(tmp_path):
    cfg = tiny("DiT-S/2", num_classes=10)
    sd = {k: v.float() for k, v in official_state_dict(cfg, seed=2).items()}
    path = tmp_path / "DiT-XL-2-256x256.pt"
    torch.save(sd, path)
    model = Latte(cfg).eval()
    load_weights(model, path)
    x, t, y = torch.randn(3, 3, 8, 8), torch.tensor([0, 1, 2]), torch.tensor([0, 4, 10])
    ref = reference_forward({k: v.double() for k, v in sd.items()}, cfg, x.double(), t, y)
    torch.testing.assert_close(model(x, t, y).double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_ddp_prefixed_keys_load(tmp_path, prefix):
    """DDP's "module." (torch.compile's "_orig_mod.") key prefix loads the same weights as the bare keys."""
    cfg = tiny()
    sd = {k: v.float() for k, v in official_state_dict(cfg).items()}
    torch.save({"ema": sd}, tmp_path / "bare.pt")
    torch.save({"ema": {prefix + k: v for k, v in sd.items()}}, tmp_path / "prefixed.pt")
    bare, prefixed = Latte(cfg).eval(), Latte(cfg).eval()          # two different random inits before loading
    load_weights(bare, tmp_path / "bare.pt")
    load_weights(prefixed, tmp_path / "prefixed.pt")
    expected, loaded = bare.state_dict(), prefixed.state_dict()
    assert loaded.keys() == expected.keys()
    for key in expected:
        assert torch.equal(loaded[key], expected[key]), key
    x = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([3, 900]), torch.tensor([1, 5])
    with torch.no_grad():
        assert torch.equal(prefixed(x, t, y), bare(x, t, y))


@pytest.mark.parametrize("edit,match", [
    (lambda sd: sd.pop("blocks.3.mlp.fc2.bias"), r"missing keys: temporal_blocks\.1\.mlp\.fc2\.bias"),
    (lambda sd: sd.__setitem__("blocks.4.attn.qkv.weight", torch.zeros(96, 32)), r"unexpected keys: spatial_blocks\.2"),
    (lambda sd: sd.__setitem__("blocks.0.attn.proj.weight", torch.zeros(32, 31)),
     r"shape mismatches: spatial_blocks\.0\.attn\.proj\.weight"),
    (lambda sd: sd.__setitem__("pos_embed", torch.zeros(1, 16, 32)), r"pos_embed .* wrong input_size"),
])
def test_checkpoint_that_does_not_fit_is_a_clear_error(latte_pt, edit, match):
    cfg, ema, path = latte_pt
    edit(ema)
    torch.save({"ema": ema}, path)
    with pytest.raises(CheckpointError, match=match):
        load_weights(Latte(cfg), path)


def test_missing_file_names_the_file_its_source_and_place(tmp_path):
    with pytest.raises(CheckpointError) as e:
        load_weights(Latte(tiny()), tmp_path / "ffs.pt")
    msg = str(e.value)
    assert "ffs.pt" in msg and "maxin-cn/Latte" in msg and str(tmp_path.resolve()) in msg and "sha256" in msg


def test_sha256_is_checked(latte_pt):
    cfg, _, path = latte_pt
    load_weights(Latte(cfg), path, sha256=file_sha256(path))
    with pytest.raises(CheckpointError, match="does not match the expected"):
        load_weights(Latte(cfg), path, sha256="0" * 64)


class NotATensor:
    pass


def test_pickled_code_is_refused(tmp_path):
    torch.save({"ema": {"w": torch.zeros(1)}, "extra": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_weights(Latte(tiny()), tmp_path / "evil.pt")


def test_safetensors_round_trip_rebuilds_the_model(latte_pt, tmp_path):
    cfg, _, path = latte_pt
    model = Latte(cfg).eval()
    load_weights(model, path)
    save_weights(model, tmp_path / "m.safetensors")
    again = load_model(tmp_path / "m.safetensors").eval()
    assert again.config == cfg
    x, t, y = torch.randn(1, 4, 3, 8, 8), torch.tensor([5]), torch.tensor([2])
    assert torch.equal(again(x, t, y), model(x, t, y))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_weights(Latte(tiny(hidden_size=64)), tmp_path / "m.safetensors")


def test_atomic_write_and_visible_walk(tmp_path):
    from flexgen.files import atomic_write, walk_visible

    target = tmp_path / "sub" / "a.json"
    with atomic_write(target) as tmp:
        tmp.write_text("one")
        assert not target.exists() and tmp.name.startswith(".")       # nothing under the final name yet
    assert target.read_text() == "one"
    plain = tmp_path / "b" / "plain.txt"
    plain.parent.mkdir()
    plain.write_text("x")
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777      # not mkstemp's 0600
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "one" and sorted(p.name for p in target.parent.iterdir()) == ["a.json"]
    (tmp_path / "sub" / ".hidden").mkdir()
    (tmp_path / "sub" / ".hidden" / "x.txt").write_text("")
    (tmp_path / "sub" / ".a.json.123.tmp").write_text("")
    walked = [(folder.relative_to(tmp_path).as_posix(), dirs, files) for folder, dirs, files in walk_visible(tmp_path)]
    assert walked == [(".", ["b", "sub"], []), ("b", [], ["plain.txt"]), ("sub", [], ["a.json"])]


def test_a_dit_checkpoint_is_refused_by_a_video_config(tmp_path):
    """issue 30 (8): DiT's released file has no temp_embed; under a Latte config of the same size its odd blocks
    would become temporal blocks."""
    dit = tiny("DiT-S/2", num_classes=5)
    sd = {k: v.float() for k, v in official_state_dict(dit, seed=2).items()}
    torch.save(sd, tmp_path / "DiT.pt")
    with pytest.raises(CheckpointError, match="no temp_embed: it is a DiT \\(image\\) checkpoint"):
        load_weights(Latte(tiny()), tmp_path / "DiT.pt")


def test_a_training_checkpoint_of_the_released_train_py_loads(tmp_path):
    """DiT's / DyDiT's train.py save {"model", "ema", "opt", "args"} with args an argparse.Namespace: plain data,
    loaded; any other global is still refused by name."""
    import argparse
    import pathlib

    cfg = tiny("DiT-S/2", num_classes=10)
    ema = {k: v.float() for k, v in official_state_dict(cfg, seed=3).items()}
    torch.save({"model": ema, "ema": ema, "opt": {}, "args": argparse.Namespace(model="DiT-S/2", lr=1e-4)},
               tmp_path / "0400000.pt")
    model = Latte(cfg).eval()
    load_weights(model, tmp_path / "0400000.pt")
    assert torch.equal(model.x_embedder.proj.bias, ema["x_embedder.proj.bias"])
    torch.save({"ema": ema, "args": pathlib.PurePosixPath("/x")}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="PurePosixPath"):
        load_weights(Latte(cfg), tmp_path / "other.pt")


def test_flexgens_own_training_checkpoint_loads_its_ema(tmp_path):
    """issue 30: an unfinished run has only checkpoints/latest.pt (the Denoiser's `net.` keys, EMA beside the raw
    weights and the optimizer): it loads as a weights file, EMA preferred."""
    cfg = tiny("DiT-S/2", num_classes=10)
    raw, ema = Latte(cfg), Latte(cfg)
    with torch.no_grad():
        for p in ema.parameters():
            p.normal_()
    torch.save({"model": {f"net.{k}": v for k, v in raw.state_dict().items()},
                "ema": {f"net.{k}": v for k, v in ema.state_dict().items()}, "opt": {"state": {}}, "step": 3},
               tmp_path / "latest.pt")
    loaded = Latte(cfg)
    load_weights(loaded, tmp_path / "latest.pt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), ema.state_dict().values(),
                                                 strict=True))


def test_a_file_of_another_size_is_named_by_the_config_keys_that_differ(tmp_path):
    """issue 30: one line naming the config keys in which the file's recorded model differs (not 2-4 lines with
    the internal config repr); a folder given as a weights file is named as one."""
    save_weights(Latte(tiny(hidden_size=64)), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError) as e:
        load_weights(Latte(tiny()), tmp_path / "w.safetensors")
    assert "\n" not in str(e.value)
    assert "(model.hidden_size 64 in the file, 32 here): shape mismatches: " in str(e.value)
    (tmp_path / "pipeline").mkdir()
    with pytest.raises(CheckpointError, match=r"pipeline is a folder, not a weights file"):
        load_weights(Latte(tiny()), tmp_path / "pipeline")
