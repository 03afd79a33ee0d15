"""`flexgen generate`: PixArt-α (dense or FlexDiT) through diffusers' PixArtAlphaPipeline, from local folders only.

Tiny offline components (tests/t2i_helpers.py): 16×16 images, a few sampling steps. Every load runs with the hub
switched off (HF_HUB_OFFLINE=1) and sockets refusing to connect.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import assert_other_pixels, assert_same_pixels
from PIL import Image
from t2i_helpers import (
    MAX_LENGTH,
    save_tiny_pipeline,
    tiny_text_encoder,
    tiny_tokenizer,
    tiny_transformer,
    tiny_transformer_config,
)

from flexgen.cli import main
from flexgen.policies.flexdit import DensityConfig, DensityRecord, ScheduleConfig, grid_at
from flexgen.t2i.generate import (
    SCHEDULERS,
    NonFiniteWarning,
    generate,
    image_files,
    load_pipeline,
    read_prompts,
    set_scheduler,
)
from flexgen.t2i.pixart import FlexPixArtTransformer2DModel, architecture_arguments

SCHEDULE = ScheduleConfig(kind="eq5", grid_min=2, grid_max=4)
LAYOUT = "P GSR DD"                       # one role per block of the tiny transformer
PROMPTS = ["a red cat", "a blue dog over the sea"]
FAST = dict(steps=3, max_sequence_length=MAX_LENGTH, progress=False)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """The hub off, and any attempt to open a connection an error."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def flex_transformer() -> FlexPixArtTransformer2DModel:
    assert len(LAYOUT.replace(" ", "")) == tiny_transformer_config()["num_layers"]
    return FlexPixArtTransformer2DModel.from_dense(tiny_transformer(), DensityConfig(layout=LAYOUT, schedule=SCHEDULE))


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("t2i") / "dense")


@pytest.fixture(scope="module")
def flex_dir(tmp_path_factory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("t2i") / "flex", flex_transformer())


@pytest.fixture(scope="module")
def dense_pipe(dense_dir):
    return load_pipeline(dense_dir)


# ----------------------------------------------------------------------------------------------------------
# Sampling.


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_gives_images_of_the_requested_size(dense_dir, name):
    from diffusers import DPMSolverMultistepScheduler

    pipe = load_pipeline(dense_dir, scheduler=name)
    from flexgen.diffusion import SCHEDULERS as CLASSES

    assert type(pipe.scheduler).__name__ == CLASSES[name]
    folder = DPMSolverMultistepScheduler.from_pretrained(dense_dir / "scheduler")
    assert torch.equal(pipe.scheduler.betas, folder.betas)            # the folder's noise schedule
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteWarning)
        images, records = generate(pipe, PROMPTS, height=16, width=24, **FAST)
    assert images.shape == (2, 3, 16, 24) and images.dtype == torch.uint8
    assert images.float().std() > 5                                   # not a constant image
    assert [r["prompt"] for r in records] == PROMPTS
    native, _ = generate(pipe, PROMPTS[:1], **FAST)
    assert native.shape == (1, 3, 16, 16)                              # sample_size 8 × autoencoder factor 2


def test_seeds(dense_pipe):
    a, records = generate(dense_pipe, PROMPTS, num_images=2, seed=5, **FAST)
    b, _ = generate(dense_pipe, PROMPTS, num_images=2, seed=5, **FAST)
    c, _ = generate(dense_pipe, PROMPTS, num_images=2, seed=6, **FAST)
    assert torch.equal(a, b)
    assert records == [{"prompt": PROMPTS[i // 2], "seed": 5 + i, "index": i} for i in range(4)]
    assert all(not torch.equal(a[i], a[j]) for i in range(4) for j in range(i))    # every image its own noise
    assert not torch.equal(c[0], a[0])                                 # another seed, another image
    # same prompt and seed, same image, though at another place in the batch (rounding aside: helpers.py)
    assert_same_pixels(c[0], a[1])
    assert_same_pixels(c[2], a[3])


@pytest.mark.parametrize("name", ["dpm-solver", "ddpm"])                # deterministic and stochastic sampler
def test_image_independent_of_batch_size(dense_dir, name):
    # float64: in float32, batched matmuls of other shapes round differently and flip a pixel by 1 level now and then
    pipe = load_pipeline(dense_dir, scheduler=name, dtype=torch.float64)
    one, _ = generate(pipe, PROMPTS, num_images=2, batch_size=1, **FAST)
    three, _ = generate(pipe, PROMPTS, num_images=2, batch_size=3, **FAST)
    assert torch.equal(one, three)


class RecordingPipe:
    """Stands in for a pipeline: the transformer config, scheduler config and autoencoder factor `generate`
    reads, and a __call__ that records its arguments."""

    def __init__(self, sample_size: int):
        self.transformer = SimpleNamespace(config=SimpleNamespace(sample_size=sample_size, patch_size=2))
        self.scheduler = SimpleNamespace(config={"num_train_timesteps": 1000})
        self.vae_scale_factor = 8
        self.calls = []

    def set_progress_bar_config(self, **kwargs):
        assert kwargs == {"disable": True}

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        size = (kwargs["height"] or 64, kwargs["width"] or 64)
        return SimpleNamespace(images=torch.zeros(len(kwargs["prompt"]), 3, *size))


@pytest.mark.parametrize("sample_size", [16, 32, 64, 128])
def test_resolution_binning_only_for_pixart_sizes(sample_size):
    pipe = RecordingPipe(sample_size)
    generate(pipe, PROMPTS, **FAST)
    generate(pipe, PROMPTS, height=64, width=128, **FAST)
    assert [c["use_resolution_binning"] for c in pipe.calls] == [sample_size != 16, False]
    assert all(c["clean_caption"] is False and c["output_type"] == "pt" for c in pipe.calls)
    assert [g.initial_seed() for g in pipe.calls[0]["generator"]] == [0, 1]


def test_bad_arguments(dense_pipe):
    with pytest.raises(ValueError, match="height 12 must be a positive multiple of 8"):
        generate(dense_pipe, PROMPTS, height=12, **FAST)
    with pytest.raises(ValueError, match="non-empty list of strings"):
        generate(dense_pipe, "a red cat", **FAST)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        generate(dense_pipe, PROMPTS, steps=0, max_sequence_length=MAX_LENGTH, progress=False)
    with pytest.raises(ValueError, match="at most the scheduler's 1000 training timesteps, got 1001"):
        generate(dense_pipe, PROMPTS, steps=1001, max_sequence_length=MAX_LENGTH, progress=False)
    with pytest.raises(ValueError, match="unknown scheduler 'plms'"):
        set_scheduler(dense_pipe, "plms")


# ----------------------------------------------------------------------------------------------------------
# FlexDiT in the pipeline.


def test_flexdit_uses_the_schedule_grid_of_each_timestep(flex_dir):
    pipe = load_pipeline(flex_dir)
    assert isinstance(pipe.transformer, FlexPixArtTransformer2DModel) and pipe.transformer.roles == "PGSRDD"
    used = []

    def attach_record(module, args, kwargs):
        kwargs["record"] = DensityRecord()
        used.append((int(kwargs["timestep"][0]), kwargs["record"]))
        return args, kwargs

    handle = pipe.transformer.register_forward_pre_hook(attach_record, with_kwargs=True)
    try:
        generate(pipe, PROMPTS[:1], steps=20, max_sequence_length=MAX_LENGTH, progress=False)
    finally:
        handle.remove()
    timesteps = [int(t) for t in pipe.scheduler.timesteps]
    assert len(timesteps) == 20 and [t for t, _ in used] == timesteps
    expected = [grid_at(SCHEDULE, t, 1000) for t in timesteps]
    assert [record.grid for _, record in used] == expected
    assert set(expected) == {2, 3, 4}                                  # the run crosses every stage
    assert [role for role, _ in used[0][1].blocks] == list("PGSRDD")


def test_flex_pipeline_folder_reloads_with_plain_diffusers(flex_dir):
    from diffusers import PixArtAlphaPipeline

    import flexgen.t2i.pixart

    index = json.loads((flex_dir / "model_index.json").read_text())
    assert index["transformer"] == [flexgen.t2i.pixart.__name__, "FlexPixArtTransformer2DModel"]
    # diffusers resolves a component saved from outside its own libraries on the module model_index.json names (which
    # must already be imported) and looks up the loadable base classes (ModelMixin, ...) on that same module
    assert hasattr(flexgen.t2i.pixart, "ModelMixin"), ("flexgen/t2i/pixart.py must have diffusers' ModelMixin in its "
                                                       "namespace for PixArtAlphaPipeline.from_pretrained to load it")
    plain = PixArtAlphaPipeline.from_pretrained(flex_dir, local_files_only=True)
    assert isinstance(plain.transformer, FlexPixArtTransformer2DModel) and plain.transformer.roles == "PGSRDD"
    ours, _ = generate(load_pipeline(flex_dir), PROMPTS, **FAST)
    theirs, _ = generate(plain, PROMPTS, **FAST)
    assert torch.equal(ours, theirs)


def test_transformer_override(dense_dir, flex_dir, dense_pipe):
    for source in (flex_dir, flex_dir / "transformer"):                # a pipeline folder or a transformer folder
        pipe = load_pipeline(dense_dir, transformer=source)
        assert isinstance(pipe.transformer, FlexPixArtTransformer2DModel)
        images, _ = generate(pipe, PROMPTS, **FAST)
        # the tiny folders share autoencoder and text encoder, so the transformer is all that differs
        assert torch.equal(images, generate(load_pipeline(flex_dir), PROMPTS, **FAST)[0])
        assert not torch.equal(images, generate(dense_pipe, PROMPTS, **FAST)[0])


# ----------------------------------------------------------------------------------------------------------
# Loading errors.


def test_missing_pieces_are_named(tmp_path, dense_dir):
    with pytest.raises(FileNotFoundError, match="does not exist; --model expects a diffusers PixArt-α pipeline"):
        load_pipeline(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no model_index.json, no vae/config.json, no scheduler/"):
        load_pipeline(tmp_path / "empty")
    bare = save_tiny_pipeline(tmp_path / "bare", text_encoder=False)
    with pytest.raises(FileNotFoundError, match=r"has no text_encoder/ and tokenizer/ .* give --text-encoder PATH"):
        load_pipeline(bare)
    with pytest.raises(FileNotFoundError, match="no PixArt-α transformer"):
        load_pipeline(dense_dir, transformer=tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="text encoder"):
        load_pipeline(bare, text_encoder=tmp_path / "empty")


def test_text_encoder_from_a_separate_folder(tmp_path, dense_dir, dense_pipe):
    bare = save_tiny_pipeline(tmp_path / "bare", text_encoder=False)
    t5 = tmp_path / "t5"                                               # a T5 folder: encoder + tokenizer files
    tiny_text_encoder().save_pretrained(t5)
    tiny_tokenizer().save_pretrained(t5)
    expected, _ = generate(dense_pipe, PROMPTS, **FAST)
    for source in (t5, dense_dir):                                     # a T5 folder or a pipeline holding one
        images, _ = generate(load_pipeline(bare, text_encoder=source), PROMPTS, **FAST)
        assert torch.equal(images, expected)


# ----------------------------------------------------------------------------------------------------------
# The command line.


def read_png(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)


def test_cli_writes_images_grid_and_json(tmp_path, dense_dir, dense_pipe, capsys):
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("# my prompts\n\n  a blue dog over the sea  \n")
    out = tmp_path / "run" / "cats.png"
    assert main(["generate", "a red cat", "--prompts", str(prompt_file), "--model", str(dense_dir), "--out", str(out),
                 "--num-images", "2", "--steps", "3", "--seed", "7", "--max-length", str(MAX_LENGTH),
                 "--scheduler", "ddim", "--no-progress"]) == 0
    assert "cats-000.png … cats-003.png" in capsys.readouterr().out
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["grid"] == "cats.png"
    assert record["samples"] == [{"file": f"cats-{i:03d}.png", "prompt": PROMPTS[i // 2], "seed": 7 + i, "index": i,
                                  "label": None}
                                for i in range(4)]
    settings = record["settings"]
    assert settings["model"] == settings["transformer"] == settings["text_encoder"] == str(dense_dir.resolve())
    assert (settings["scheduler"], settings["steps"], settings["guidance"]) == ("ddim", 3, 4.5)
    assert (settings["height"], settings["width"], settings["layout"]) == (16, 16, "")
    set_scheduler(dense_pipe, "ddim")
    try:
        expected, _ = generate(dense_pipe, PROMPTS, num_images=2, seed=7, **FAST)
    finally:
        set_scheduler(dense_pipe, "dpm-solver")
    for i in range(4):
        assert torch.equal(read_png(out.parent / f"cats-{i:03d}.png"), expected[i])
    grid = read_png(out)
    assert grid.shape == (3, 2 + 2 * 18, 2 + 2 * 18)                  # one row per prompt, 2 px padding
    assert torch.equal(grid[:, 2:18, 20:36], expected[1])


def test_cli_single_image_and_flexdit_record(tmp_path, dense_dir, flex_dir):
    out = tmp_path / "one.png"
    assert main(["generate", "a red cat", "--model", str(dense_dir), "--transformer", str(flex_dir), "--out",
                 str(out), "--steps", "2", "--max-length", str(MAX_LENGTH), "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.json", "one.png"]
    record = json.loads((tmp_path / "one.json").read_text())
    assert record["grid"] is None and record["samples"][0]["file"] == "one.png"
    assert record["settings"]["transformer_class"] == "FlexPixArtTransformer2DModel"
    assert record["settings"]["layout"] == LAYOUT and record["settings"]["schedule"]["grid_max"] == 4
    assert record["settings"]["transformer"] == str(flex_dir.resolve())
    from flexgen.files import file_sha256
    (weights,) = (flex_dir / "transformer").glob("*.safetensors")     # the manifest names the weights it sampled
    assert record["checkpoint_sha256"] == file_sha256(weights) and record["method"] == f"flexdit {LAYOUT}"
    assert read_png(out).shape == (3, 16, 16)


def test_cli_errors_exit_2(tmp_path, dense_dir, capsys):
    common = ["--steps", "2", "--max-length", str(MAX_LENGTH), "--no-progress", "--out", str(tmp_path / "x.png")]
    assert main(["generate", "a cat", "--model", str(tmp_path / "missing"), *common]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flexgen generate: error: model folder") and "missing does not exist" in err

    bare = save_tiny_pipeline(tmp_path / "bare", text_encoder=False)
    assert main(["generate", "a cat", "--model", str(bare), *common]) == 2
    err = capsys.readouterr().err
    assert "has no text_encoder/ and tokenizer/" in err and "--text-encoder PATH: a T5 v1.1 XXL folder" in err
    assert main(["generate", "a cat", "--model", str(bare), "--text-encoder", str(dense_dir), *common]) == 0
    assert (tmp_path / "x.png").is_file()

    assert main(["generate", "--model", str(dense_dir), *common]) == 2
    assert "no prompts" in capsys.readouterr().err
    assert main(["generate", "a cat", "--prompts", str(tmp_path / "none.txt"), "--model", str(dense_dir),
                 *common]) == 2
    assert "prompt file" in capsys.readouterr().err
    assert main(["generate", "a cat", "--model", str(dense_dir), *common[:-1], str(tmp_path / "x.jpg")]) == 2
    assert "must be a .png file" in capsys.readouterr().err


def test_prompt_file_and_image_names(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a\n\n# b\n  c d \n#\n")
    assert read_prompts(path) == ["a", "c d"]
    assert image_files(Path("o/x.png"), 1) == [Path("o/x.png")]
    assert image_files(Path("o/x.png"), 2) == [Path("o/x-000.png"), Path("o/x-001.png")]
    assert image_files(Path("x.png"), 1001)[-1] == Path("x-1000.png")


def test_data_cache_text_is_wired(tmp_path, dense_dir):
    root = tmp_path / "captions"
    root.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "cat.png")
    (root / "cat.txt").write_text("a red cat")
    assert main(["data", "cache-text", "--root", str(root), "--text-encoder", str(dense_dir), "--cache",
                 str(tmp_path / "cache"), "--max-length", str(MAX_LENGTH)]) == 0
    assert list((tmp_path / "cache").rglob("*.safetensors"))


@pytest.mark.slow
def test_python_m_flexgen_generate_offline(tmp_path, dense_dir):
    """The real entry point in a fresh process with the hub off; --help lists the options."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "flexgen", "generate", "a red cat", "--model", str(dense_dir),
                             "--out", str(tmp_path / "cat.png"), "--steps", "2", "--max-length", str(MAX_LENGTH),
                             "--no-progress"], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cat.png").is_file() and (tmp_path / "cat.json").is_file()
    for command in (["generate"], ["data", "cache-text"]):
        help_text = subprocess.run([sys.executable, "-m", "flexgen", *command, "--help"], capture_output=True,
                                   text=True, timeout=300, env=env)
        assert help_text.returncode == 0 and "usage: flexgen" in help_text.stdout


def test_cli_resumes_refuses_other_runs_and_counts_cost(tmp_path, dense_dir, flex_dir, monkeypatch, capsys):
    """Images are written as they are made; a re-run with the same settings draws only the missing ones, another
    run's folder is refused (unless --overwrite); the grid shows the first images only; FILE.json carries the cost
    of one image (each sampling step at its timestep's grid, doubled by CFG)."""
    import flexgen.t2i.generate as gen
    from flexgen.policies.cost import density_report
    from flexgen.t2i.pixart import PixArtCost

    monkeypatch.setattr(gen, "GRID_IMAGES", 2)
    out = tmp_path / "run" / "img.png"
    def command(steps="4", *extra):
        return ["generate", *PROMPTS, "--model", str(dense_dir), "--transformer", str(flex_dir), "--out", str(out),
                "--num-images", "2", "--steps", steps, "--max-length", str(MAX_LENGTH), "--no-progress", *extra]

    args = command()
    assert main(args) == 0
    first = {p.name: p.read_bytes() for p in out.parent.glob("img-*.png")}
    assert len(first) == 4 and read_png(out).shape == (3, 2 + 18, 2 + 2 * 18)     # grid: the first 2 images
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["complete"] and record["cost"]["seconds_per_sample"] > 0

    flex = load_pipeline(dense_dir, transformer=flex_dir)
    report = density_report(PixArtCost(architecture_arguments(flex.transformer.config), flex.transformer.density))
    set_scheduler(flex, "dpm-solver").scheduler.set_timesteps(4)
    at_grid = {grid: gmacs for _, _, grid, gmacs in report["stages"]}
    expected = 2 * sum(at_grid[grid_at(SCHEDULE, int(t), 1000)] for t in flex.scheduler.timesteps)
    assert record["cost"]["gmacs_per_sample"] == pytest.approx(expected, rel=1e-9)
    assert record["cost"]["gmacs_per_forward"] == pytest.approx(report["gmacs"], rel=1e-9)

    (out.parent / "img-002.png").unlink()                       # an interrupted run: one image missing
    capsys.readouterr()
    assert main(args) == 0
    assert "1 drawn now, 3 were there" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in out.parent.glob("img-*.png")} == first     # same seeds, same image

    assert main(command("3")) == 2                                                     # other settings: refused
    assert "belongs to another run (steps: 4 -> 3)" in capsys.readouterr().err
    assert main(command("3", "--overwrite")) == 0
    assert {p.name: p.read_bytes() for p in out.parent.glob("img-*.png")} != first


@pytest.mark.slow
def test_torchrun_shards_images_over_ranks(tmp_path, dense_dir, free_port):
    """Two CPU ranks (gloo) draw images i ≡ rank (mod 2); the files equal a one-process run's."""
    common = ["generate", *PROMPTS, "--model", str(dense_dir), "--num-images", "2", "--steps", "2",
              "--max-length", str(MAX_LENGTH), "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "one" / "img.png")]) == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={free_port}",
                           "-m", "flexgen", *common, "--out", str(tmp_path / "two" / "img.png")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "two" / "img.json").read_text())
    assert record["complete"] and record["world_size"] == 2
    # The ranks run single-threaded on batches of other shapes than the one-process run, so float32 rounds
    # differently: the same images within one level (helpers.py), and each file is its own seed's image.
    one = [read_png(tmp_path / "one" / f"img-{i:03d}.png") for i in range(4)]
    two = [read_png(tmp_path / "two" / f"img-{i:03d}.png") for i in range(4)]
    assert sorted(p.name for p in (tmp_path / "two").glob("img-*.png")) == [f"img-{i:03d}.png" for i in range(4)]
    for i in range(4):
        assert_same_pixels(two[i], one[i], what=f"image {i}")
        for j in range(i):
            assert_other_pixels(two[i], one[j], what=f"images {i} and {j}")


def test_cli_flexgen_attention_gives_the_same_images(tmp_path, dense_dir, flex_dir):
    """--attention flexgen (flexgen.attention, packed text cross-attention) draws the images diffusers' processors
    draw, up to float rounding."""
    common = ["generate", *PROMPTS, "--model", str(dense_dir), "--transformer", str(flex_dir), "--steps", "3",
              "--max-length", str(MAX_LENGTH), "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "a" / "img.png")]) == 0
    assert main([*common, "--out", str(tmp_path / "b" / "img.png"), "--attention", "flexgen"]) == 0
    assert json.loads((tmp_path / "b" / "img.json").read_text())["settings"]["attention"] == "flexgen"
    for name in ("img-000.png", "img-001.png"):
        a, b = read_png(tmp_path / "a" / name).int(), read_png(tmp_path / "b" / name).int()
        assert (a - b).abs().max() <= 1


def test_cli_with_a_step_cache(tmp_path, dense_dir):
    # --cache teacache:0 runs every step: the images are the uncached ones; fora:2 skips every 2nd step, says so in
    # FILE.json (method, cache settings, a smaller measured cost) and is another run for the same folder.
    common = ["generate", "a red cat", "--model", str(dense_dir), "--steps", "4", "--max-length", str(MAX_LENGTH),
              "--scheduler", "ddim", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "plain.png")]) == 0
    assert main([*common, "--out", str(tmp_path / "tea.png"), "--cache", "teacache:0"]) == 0
    assert torch.equal(read_png(tmp_path / "tea.png"), read_png(tmp_path / "plain.png"))
    assert main([*common, "--out", str(tmp_path / "fora.png"), "--cache", "fora:2"]) == 0
    plain, fora = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("plain", "fora"))
    assert json.loads((tmp_path / "tea.json").read_text())["method"] == "teacache 0"
    assert fora["method"] == "fora 2" and fora["settings"]["cache"]["interval"] == 2
    assert fora["cost"]["gmacs_per_sample"] < 0.8 * plain["cost"]["gmacs_per_sample"]
    assert main([*common, "--out", str(tmp_path / "fora.png"), "--cache", "fora:3"]) == 2     # another run
    assert main([*common, "--out", str(tmp_path / "x.png"), "--cache", "deepcache:2"]) == 2


def test_flexgen_calibrate_on_pixart_records_the_pipelines_runs(tmp_path, dense_dir, capsys):
    # --prompts: TeaCache's calibration through the pipeline flexgen generate runs; at threshold 0 the estimate is the
    # counted cost of every step plus the indicator, and generate takes the coefficients back.
    from diffusers import DDIMScheduler

    from flexgen.policies.cache.config import CacheConfig
    from flexgen.t2i.generate import gmacs_per_image
    from flexgen.t2i.pixart_io import load_transformer, with_step_cache

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\na blue dog\na green tree\na small house\n")
    out = tmp_path / "calib.json"
    assert main(["calibrate", "--model", str(dense_dir), "--prompts", str(prompts), "--out", str(out),
                 "--batch-size", "2", "--steps", "6", "--sampler", "ddim", "--degree", "2",
                 "--max-length", str(MAX_LENGTH)]) == 0
    result = json.loads(out.read_text())
    assert result["runs"] == 2 and result["points"] == 2 * 5 and len(result["coefficients"]) == 3
    assert result["fitted_on"]["policy"] == "dense" and result["fitted_on"]["sampler"] == "ddim"
    transformer = load_transformer(dense_dir / "transformer")
    scheduler = DDIMScheduler.from_pretrained(dense_dir / "scheduler")
    scheduler.set_timesteps(6)
    counted = gmacs_per_image(transformer, 4.5, [int(t) for t in scheduler.timesteps])["gmacs_per_sample"]
    indicator = 2 * 6 * with_step_cache(transformer, CacheConfig("teacache", threshold=0)).indicator_macs() / 1e9
    assert result["thresholds"][0]["gmacs_per_sample"] == pytest.approx(counted + indicator)
    assert result["thresholds"][0]["steps_computed"] == 6
    capsys.readouterr()
    assert main(["generate", "a red cat", "--model", str(dense_dir), "--steps", "6", "--scheduler", "ddim",
                 "--max-length", str(MAX_LENGTH), "--no-progress", "--out", str(tmp_path / "tea.png"),
                 "--cache", "teacache:100", "--cache-calibration", str(out)]) == 0
    record = json.loads((tmp_path / "tea.json").read_text())
    assert record["settings"]["cache"]["coefficients"] == result["coefficients"]
    assert record["cost"]["gmacs_per_sample"] < 0.5 * counted                         # the first and last steps
    capsys.readouterr()
    assert main(["bench", "plan", "--calibration", str(out), "--budget", "0.9", "--json"]) == 0   # a PixArt-α file
    plan = json.loads(capsys.readouterr().out)
    assert plan["teacache"]["fraction_of_dense"] <= 0.9 and plan["fitted_on"]["config"] == str(dense_dir)
    assert main(["calibrate", "--model", str(dense_dir), "--prompts", str(prompts), "--out", str(out),
                 "--config", "x.yaml"]) == 2
    assert "--config, --ckpt and KEY=VALUE overrides calibrate a Latte / DiT run" in capsys.readouterr().err


def test_diffusers_caches_through_generate_and_a_mag_calibration_checked_against_the_transformer(tmp_path, dense_dir,
                                                                                             capsys):
    common = ["generate", "a red cat", "--model", str(dense_dir), "--steps", "6", "--scheduler", "ddim",
              "--max-length", str(MAX_LENGTH), "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "plain.png")]) == 0
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert main([*common, "--out", str(tmp_path / "fbc.png"), "--cache", "first_block:100"]) == 0
    fbc = json.loads((tmp_path / "fbc.json").read_text())
    assert fbc["method"] == "first_block 100" and fbc["settings"]["cache"]["diffusers"] == {"threshold": 100.0}
    assert fbc["cost"]["gmacs_per_sample"] < 0.5 * plain["cost"]["gmacs_per_sample"]       # only the head block
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\na blue dog\n")
    mag = tmp_path / "mag-calibration.json"
    assert main(["calibrate", "--method", "mag", "--model", str(dense_dir), "--prompts", str(prompts), "--out",
                 str(mag), "--batch-size", "1", "--steps", "6", "--sampler", "ddim",
                 "--max-length", str(MAX_LENGTH)]) == 0
    ratios = json.loads(mag.read_text())
    assert ratios["runs"] == 2 and len(ratios["mag_ratios"]) == 6 and ratios["fitted_on"]["resolution"] > 0
    assert main([*common, "--out", str(tmp_path / "mag.png"), "--cache", "mag:0.5", "--cache-calibration",
                 str(mag)]) == 0
    record = json.loads((tmp_path / "mag.json").read_text())
    assert record["settings"]["cache"]["diffusers"]["mag_ratios"] == ratios["mag_ratios"]
    # ratios fitted on another transformer are refused by name
    other = dense_dir.parent / "other"
    save_tiny_pipeline(other, transformer=tiny_transformer(seed=5))
    capsys.readouterr()
    assert main([*common[:3], str(other), *common[4:], "--out", str(tmp_path / "x.png"), "--cache", "mag:0.5",
                 "--cache-calibration", str(mag)]) == 2
    assert "was fitted on another model (checkpoint_sha256: fitted" in capsys.readouterr().err
