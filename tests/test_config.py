"""Typed YAML configs: presets validate, unknown keys and wrong types are errors naming key and file."""

from pathlib import Path

import pytest

from flexgen.config import Config, ConfigError, load_config, save_config
from flexgen.registry import denoiser_class

CONFIGS = sorted(Path(__file__).parent.parent.joinpath("configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[2])))
def test_every_shipped_config_validates_and_builds_its_model(path):
    cfg = load_config(path)
    family = denoiser_class(cfg.model.preset)
    if family.family == "pixart":
        from flexgen.backbones.pixart import transformer_arguments
        args = transformer_arguments(cfg)
        assert args["sample_size"] * cfg.autoencoder.downsample == cfg.data.image_size
        if cfg.density.layout:                                  # the layout fits, the grids fit the token grid
            from flexgen.policies.flexdit import parse_layout, stages
            parse_layout(cfg.density.layout, args["num_layers"])
            assert max(s.grid for s in stages(cfg.density.schedule)) <= args["sample_size"] // args["patch_size"]
        return
    from flexgen.backbones.latte import latte_config_from_run
    model = latte_config_from_run(cfg)
    assert model.input_size * cfg.autoencoder.downsample == cfg.data.image_size


def test_dataset_presets_carry_the_published_latte_settings():
    for name in ("ffs", "sky", "ucf101", "taichi"):
        cfg = load_config(f"configs/video/{name}/latte-xl2.yaml")
        assert (cfg.data.num_frames, cfg.data.frame_interval, cfg.data.image_size) == (16, 3, 256)
        assert (cfg.train.lr, cfg.train.ema_decay, cfg.model.preset) == (1e-4, 0.9999, "Latte-XL/2")
        assert (cfg.sample.sampler, cfg.sample.steps) == ("ddpm", 250)
    ucf = load_config("configs/video/ucf101/latte-xl2.yaml")
    assert (ucf.model.num_classes, ucf.sample.cfg_scale) == (101, 7.0)
    assert load_config("configs/video/sky/latte-xl2.yaml").data.hflip is False


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, "train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=rf"{path}: unknown key train\.learning_rate"):
        load_config(path)
    path = write(tmp_path, "trian:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key trian \(did you mean train\?\)"):
        load_config(path)


def test_types_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.batch_size: expected int, got str"):
        load_config(write(tmp_path, "train:\n  batch_size: five\n"))
    with pytest.raises(ConfigError, match=r"data\.hflip: expected bool"):
        load_config(write(tmp_path, "data:\n  hflip: 1\n"))
    cfg = load_config(write(tmp_path, "train:\n  lr: 1\ndiffusion:\n  min_snr_gamma: 5\n"))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float) and cfg.diffusion.min_snr_gamma == 5.0


def test_choices_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.preset: 'Latte-XL/3' is not one of .*did you mean 'Latte-XL/"):
        load_config(write(tmp_path, "model:\n  preset: Latte-XL/3\n"))
    with pytest.raises(ConfigError, match=r"data\.dataset"):
        load_config(write(tmp_path, "data:\n  dataset: kinetics\n"))


def test_overrides(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.1\n")
    cfg = load_config(path, ["train.lr=3e-4", "sample.cfg_scale=4", "diffusion.min_snr_gamma=null"])
    assert (cfg.train.lr, cfg.sample.cfg_scale, cfg.diffusion.min_snr_gamma) == (3e-4, 4.0, None)
    with pytest.raises(ConfigError, match=r"with overrides train\.lrr=1: unknown key train\.lrr"):
        load_config(path, ["train.lrr=1"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(path, ["train.lr"])


def test_missing_file_and_round_trip(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    cfg = load_config("configs/demo/tiny.yaml", ["train.seed=7"])
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg
    assert load_config() == Config()


@pytest.mark.parametrize("override,message", [
    ("train.batch_size=-8", r"train\.batch_size: must be >= 1, got -8"),
    ("train.batch_size=0", r"train\.batch_size: must be >= 1, got 0"),
    ("train.total_samples=-5", r"train\.total_samples: must be >= 1"),
    ("train.ema_decay=-1", r"train\.ema_decay: must be in \[0, 1\], got -1\.0"),
    ("train.ema_decay=1.5", r"train\.ema_decay: must be in \[0, 1\]"),
    ("model.class_dropout_prob=2", r"model\.class_dropout_prob: must be in \[0, 1\]"),
    ("model.num_classes=-3", r"model\.num_classes: must be >= 0, got -3"),
    ("sample.steps=0", r"sample\.steps: must be >= 1"),
    ("data.frame_interval=0", r"data\.frame_interval: must be >= 1"),
    ("diffusion.beta_end=1e-5", r"diffusion\.beta_end: must be in"),
])
def test_numbers_are_range_checked_at_load_time(override, message):
    # Issue 11, item 5: a bad number is a load-time error naming the key and the file, not a silent no-op or a
    # traceback later.
    with pytest.raises(ConfigError, match=rf"configs/demo/tiny\.yaml with overrides .*{message}"):
        load_config("configs/demo/tiny.yaml", [override])


def test_an_integral_number_in_float_notation_is_accepted_for_an_int():
    assert load_config("configs/demo/tiny.yaml", ["train.total_samples=1e9"]).train.total_samples == 10 ** 9
    assert load_config("configs/demo/tiny.yaml", ["train.total_samples=4.0e6"]).train.total_samples == 4 * 10 ** 6
    with pytest.raises(ConfigError, match=r"train\.total_samples: expected int, got float 2\.5"):
        load_config("configs/demo/tiny.yaml", ["train.total_samples=2.5"])


def test_base_files_merge_and_a_missing_or_cyclic_base_is_named(tmp_path):
    (tmp_path / "a.yaml").write_text("base: configs.yaml\ntrain:\n  lr: 3.0e-3\n")
    (tmp_path / "configs.yaml").write_text(Path("configs/demo/tiny.yaml").read_text())      # (it has no base)
    assert load_config(tmp_path / "a.yaml").train.lr == 3.0e-3
    (tmp_path / "b.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"config file not found: .*missing\.yaml \(the `base:` of .*b\.yaml\)"):
        load_config(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="form a cycle"):
        load_config(tmp_path / "c.yaml")
