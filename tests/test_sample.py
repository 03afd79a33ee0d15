"""Sampling: per-sample seeds and labels independent of batch size and rank, CFG, the `flexgen sample` command
end to end (mp4 / png files, grid, record), dense -> FlexDiT conversion on load. Video / grid files:
tests/data/test_media.py."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flexgen.autoencoder import Autoencoder
from flexgen.checkpoint import CheckpointError, file_sha256, save_weights
from flexgen.data.media import read_video, video_codec
from flexgen.sample import sample_main
from flexgen.sampling.draw import generate
from flexgen.sampling.labels import resolve_labels, sample_label
from flexgen.sampling.manifest import SampleManifest, shard_indices
from tests.sample_helpers import SMALL, TINY, parse, random_model

FLEX = ["density.layout=PGSRT", "density.schedule.grid_min=2", "density.schedule.grid_max=4"]


# ----------------------------------------------------------------------------------------------------------
# Helpers: every sample `generate` draws (the tiny random model and the parser: tests/sample_helpers.py).


def draw(model, run, **kwargs):
    """{index: (label, uint8 video)} of everything `generate` yields."""
    options = dict(num_samples=5, seed=7, sampler="ddpm", steps=3, cfg_scale=2.0, batch_size=1)
    options.update(kwargs)
    out = {}
    for indices, labels, videos in generate(model, Autoencoder.from_config(run.autoencoder), **options):
        for k, i in enumerate(indices):
            assert i not in out, f"sample {i} drawn twice"
            out[i] = (None if labels is None else labels[k], videos[k])
    return out


@pytest.fixture(scope="module")
def float64_model():
    model, run = random_model()
    return model.double(), run


@pytest.fixture(scope="module")
def reference(float64_model):
    """Five samples, one per batch, one rank, float64: the ground truth for batching and sharding."""
    return draw(*float64_model, batch_size=1)


# ----------------------------------------------------------------------------------------------------------
# Seeds, labels and sharding.


def test_reference_samples_are_non_trivial(reference):
    videos = torch.stack([v for _, v in reference.values()]).float()
    assert videos.shape == (5, 4, 3, 16, 16)
    assert videos.std() > 20 and (videos[0] - videos[1]).abs().mean() > 5
    assert {label for label, _ in reference.values()} <= set(range(4))


@pytest.mark.parametrize("batch_size", [3, 5])
def test_batch_size_does_not_change_samples_or_labels(float64_model, reference, batch_size):
    got = draw(*float64_model, batch_size=batch_size)
    assert sorted(got) == sorted(reference)
    for i, (label, video) in reference.items():
        assert got[i][0] == label
        assert torch.equal(got[i][1], video), f"sample {i} differs with batch_size {batch_size}"


def test_two_ranks_draw_each_sample_once(float64_model, reference):
    shards = [draw(*float64_model, batch_size=2, rank=r, world_size=2) for r in range(2)]
    assert sorted(shards[0]) == [0, 2, 4] and sorted(shards[1]) == [1, 3]
    merged = {**shards[0], **shards[1]}
    for i, (label, video) in reference.items():
        assert merged[i][0] == label and torch.equal(merged[i][1], video)


def test_float32_batching_agrees_within_one_level():
    model, run = random_model()
    one, three = draw(model, run, batch_size=1), draw(model, run, batch_size=3)
    for i in one:
        assert (one[i][1].int() - three[i][1].int()).abs().max() <= 1


def test_shard_indices_partition():
    for n, w in [(10, 3), (2, 4), (0, 2), (7, 1)]:
        shards = [shard_indices(n, r, w) for r in range(w)]
        assert sorted(i for s in shards for i in s) == list(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match="rank"):
        shard_indices(4, 2, 2)


def test_labels_come_from_each_samples_seed():
    labels = resolve_labels(400, seed=3, num_classes=4)
    assert labels[10] == sample_label(3, 10, 4) == sample_label(5, 8, 4)     # a function of seed + index
    assert labels == resolve_labels(400, 3, 4)
    assert min(np.bincount(labels, minlength=4)) > 60                        # uniform over the classes
    assert resolve_labels(400, 4, 4)[:399] == labels[1:]                    # seed 4, index i = seed 3, index i + 1
    assert resolve_labels(3, 0, 4, labels=2) == [2, 2, 2] and resolve_labels(2, 0, 4, labels=[1, 3]) == [1, 3]
    assert resolve_labels(3, 0, 0) is None
    with pytest.raises(ValueError, match="lie in"):
        resolve_labels(2, 0, 4, labels=[0, 4])
    with pytest.raises(ValueError, match="one label per sample"):
        resolve_labels(3, 0, 4, labels=[0, 1])
    with pytest.raises(ValueError, match="unconditional"):
        resolve_labels(3, 0, 0, labels=1)


# ----------------------------------------------------------------------------------------------------------
# Classifier-free guidance.


def model_batches(model, run, **kwargs):
    """(batch size, labels) of every forward pass of the model during generate."""
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args, kw: seen.append((args[0].shape[0], kw["y"].tolist())),
                                             with_kwargs=True)
    try:
        draw(model, run, num_samples=2, batch_size=2, sampler="ddim", steps=2, **kwargs)
    finally:
        handle.remove()
    return seen


def test_cfg_doubles_the_batch_with_the_null_class_and_scale_one_does_not():
    model, run = random_model()
    guided = model_batches(model, run, cfg_scale=4.0)
    assert len(guided) == 2 and all(size == 4 and y[2:] == [4, 4] and max(y[:2]) < 4 for size, y in guided)
    plain = model_batches(model, run, cfg_scale=1.0)
    assert len(plain) == 2 and all(size == 2 and max(y) < 4 for size, y in plain)
    assert guided[0][1][:2] == plain[0][1]                                   # same labels either way


def test_unconditional_model():
    model, run = random_model(["model.num_classes=0"])
    got = draw(model, run, num_samples=2, sampler="ddim", steps=2, cfg_scale=1.0)
    assert got[0][0] is None and got[1][1].shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="class-conditional"):
        draw(model, run, cfg_scale=3.0)


# ----------------------------------------------------------------------------------------------------------
# The `flexgen sample` command.


def test_sample_main_end_to_end(tmp_path):
    model, _ = random_model()
    save_weights(model.net, tmp_path / "dense.safetensors")
    out = tmp_path / "samples"
    args = parse("--config", TINY, "--ckpt", tmp_path / "dense.safetensors", "--num-samples", 3, "--out", out,
                 "--sampler", "ddpm", "--steps", 3, "--cfg-scale", 3.0, "--seed", 11, "--batch-size", 2,
                 "--no-progress", *SMALL, "sample.steps=50")
    assert args.func is sample_main
    record = sample_main(args)

    assert sorted(p.name for p in out.iterdir()) == ["0000.mp4", "0001.mp4", "0002.mp4", "grid.png", "samples.json"]
    for i in range(3):
        assert read_video(out / f"{i:04d}.mp4").shape == (4, 16, 16, 3)
    assert json.loads((out / "samples.json").read_text()) == record
    assert record["steps"] == 3 and record["cfg_scale"] == 3.0 and record["sampler"] == "ddpm"   # options win
    assert record["checkpoint_sha256"] == file_sha256(tmp_path / "dense.safetensors")
    assert [s["seed"] for s in record["samples"]] == [11, 12, 13]
    assert [s["label"] for s in record["samples"]] == resolve_labels(3, 11, 4)
    settings = record["settings"]
    assert settings["model"]["num_frames"] == 4 and settings["density"] is None and settings["codec"] == video_codec()
    assert record["complete"] and record["world_size"] == 1 and record["grid"] == "grid.png"
    assert record["cost"]["model_evaluations"] == 6                           # 3 steps × 2 (CFG)
    assert record["cost"]["gmacs_per_sample"] == pytest.approx(6 * record["cost"]["gmacs_per_forward_dense"])
    assert SampleManifest.read(out / "samples.json").files() == ["0000.mp4", "0001.mp4", "0002.mp4"]
    grid = Image.open(out / "grid.png")
    assert grid.size == (3 * (4 * 16 + 2) + 2, 16 + 4)                       # 3 cells of 4 frames, one row


def test_flexlatte_config_samples_from_a_dense_checkpoint(tmp_path):
    model, _ = random_model()
    save_weights(model.net, tmp_path / "dense.safetensors")
    record = sample_main(parse("--config", TINY, "--ckpt", tmp_path / "dense.safetensors", "--num-samples", 2,
                               "--out", tmp_path / "flex", "--sampler", "ddim", "--steps", 4, "--no-progress",
                               *SMALL, *FLEX))
    assert record["settings"]["model_class"] == "Latte" and record["settings"]["density"]["layout"] == "PGSRT"
    assert record["method"] == "flexdit PGSRT"
    flops = record["cost"]
    assert set(flops["steps_per_grid"]) <= {2, 3, 4} and sum(flops["steps_per_grid"].values()) == 4
    assert 0 < flops["reduction"] < 1
    assert read_video(tmp_path / "flex" / "0001.mp4").shape == (4, 16, 16, 3)


def test_one_frame_model_writes_png(tmp_path):
    model, _ = random_model(["model.preset=DiT-S/2", "model.depth=2"])
    save_weights(model.net, tmp_path / "dit.safetensors")
    record = sample_main(parse("--config", TINY, "--ckpt", tmp_path / "dit.safetensors", "--num-samples", 2,
                               "--out", tmp_path / "dit", "--sampler", "ddim", "--steps", 2, "--no-progress",
                               *SMALL, "model.preset=DiT-S/2", "model.depth=2"))
    assert record["storage"] == "png" and [s["file"] for s in record["samples"]] == ["0000.png", "0001.png"]
    assert Image.open(tmp_path / "dit" / "0001.png").size == (16, 16)
    assert (tmp_path / "dit" / "grid.png").is_file()


def test_npz_for_adms_evaluator(tmp_path):
    dit = ["model.preset=DiT-S/2", "model.depth=2"]
    model, _ = random_model(dit)
    save_weights(model.net, tmp_path / "dit.safetensors")
    out = tmp_path / "dit"
    record = sample_main(parse("--config", TINY, "--ckpt", tmp_path / "dit.safetensors", "--num-samples", 3,
                               "--out", out, "--sampler", "ddim", "--steps", 2, "--batch-size", 2, "--no-progress",
                               "--npz", *SMALL, *dit))
    with np.load(out / "samples.npz") as npz:
        assert npz["arr_0"].dtype == np.uint8 and npz["arr_0"].shape == (3, 16, 16, 3)
        for i in range(3):                                                  # sample-index order, the PNGs' pixels
            assert np.array_equal(npz["arr_0"][i], np.asarray(Image.open(out / f"{i:04d}.png")))
        assert npz["arr_1"].tolist() == [s["label"] for s in record["samples"]]
    with pytest.raises(ValueError, match="one-frame"):                     # a video model has no ADM batch
        video, _ = random_model()
        save_weights(video.net, tmp_path / "video.safetensors")
        sample_main(parse("--config", TINY, "--ckpt", tmp_path / "video.safetensors", "--num-samples", 1, "--out",
                          tmp_path / "v", "--steps", 2, "--no-progress", "--npz", *SMALL))


TORCHRUN_SCRIPT = """
import argparse, sys
from flexgen.sample import add_sample_arguments, sample_main
sample_main(add_sample_arguments(argparse.ArgumentParser()).parse_args(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("cache", [[], ["cache.method=fora", "cache.interval=2"]], ids=["uncached", "fora"])
def test_torchrun_two_ranks_shard_the_samples(tmp_path, free_port, cache):
    # (a step cache decides for each sample from its own steps, so sharding leaves its samples as they are)
    model, _ = random_model()
    save_weights(model.net, tmp_path / "dense.safetensors")
    (tmp_path / "run.py").write_text(TORCHRUN_SCRIPT)
    common = ["--config", TINY, "--ckpt", tmp_path / "dense.safetensors", "--num-samples", 5, "--sampler", "ddpm",
              "--steps", 3, "--batch-size", 2, "--no-progress", *SMALL, *cache]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             f"--master_port={free_port}",
                             *map(str, [tmp_path / "run.py", *common, "--out", tmp_path / "two"])],
                            cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    single = sample_main(parse(*common, "--out", tmp_path / "one"))

    two = json.loads((tmp_path / "two" / "samples.json").read_text())
    assert two["world_size"] == 2 and two["samples"] == single["samples"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    for i in range(5):
        a, b = (read_video(tmp_path / d / f"{i:04d}.mp4").astype(int) for d in ("one", "two"))
        assert a.shape == b.shape and np.abs(a - b).mean() < 1     # same sample (float32 rounding aside)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="weights file not found"):
        sample_main(parse("--config", TINY, "--ckpt", tmp_path / "missing.safetensors", "--out", tmp_path / "x",
                          "--no-progress"))
    assert not (tmp_path / "x").exists()


def test_sample_resumes_and_refuses_another_runs_folder(tmp_path, capsys):
    """Samples are written as they are made: a re-run with the same settings draws only the missing files; another
    run's folder is refused by name unless --overwrite (evaluation would otherwise score two runs as one)."""
    model, _ = random_model()
    save_weights(model.net, tmp_path / "dense.safetensors")
    out = tmp_path / "s"

    def command(*extra):
        return parse("--config", TINY, "--ckpt", tmp_path / "dense.safetensors", "--num-samples", 3, "--out", out,
                     "--sampler", "ddim", "--steps", 2, "--no-progress", *SMALL, *extra)

    first = sample_main(command())
    files = {p.name: p.read_bytes() for p in out.glob("*.mp4")}
    assert first["complete"] and len(files) == 3
    (out / "0001.mp4").unlink()                                     # an interrupted run: one sample missing
    capsys.readouterr()
    again = sample_main(command())
    assert "(1 drawn now on rank 0)" in capsys.readouterr().out
    assert again["samples"] == first["samples"] and sorted(p.name for p in out.glob("*.mp4")) == sorted(files)
    assert (out / "0000.mp4").read_bytes() == files["0000.mp4"]     # kept, not redrawn
    with pytest.raises(ValueError, match=r"belongs to another run \(seed: 0 -> 5"):
        sample_main(command("--seed", 5))
    assert SampleManifest.read(out / "samples.json").seed == 0      # the refused run changed nothing
    replaced = sample_main(command("--seed", 5, "--overwrite"))
    assert [s["seed"] for s in replaced["samples"]] == [5, 6, 7]
    fewer = sample_main(command("--seed", 5, "--overwrite", "--num-samples", 2))   # the third sample is not its
    assert len(fewer["samples"]) == 2 and sorted(p.name for p in out.glob("*.mp4")) == ["0000.mp4", "0001.mp4"]


def test_evaluation_refuses_a_folder_its_manifest_does_not_describe(tmp_path):
    """Issue 11, item 1: samples of two runs in one folder, or of an unfinished run, are never scored as one set."""
    import shutil

    from flexgen.metrics.generated import check_sample_manifest
    from flexgen.metrics.selection import select_fake_clips

    model, _ = random_model()
    save_weights(model.net, tmp_path / "dense.safetensors")
    out = tmp_path / "s"
    sample_main(parse("--config", TINY, "--ckpt", tmp_path / "dense.safetensors", "--num-samples", 2, "--out", out,
                      "--sampler", "ddim", "--steps", 2, "--no-progress", *SMALL))
    check_sample_manifest(out)                                       # exactly its files: accepted
    shutil.copy(out / "0000.mp4", out / "0007.mp4")                  # a file another run left
    with pytest.raises(ValueError, match=r"does not list exactly .*1 not listed \(e.g. 0007.mp4\)"):
        select_fake_clips(out, "fvd2048_16f")
    (out / "0007.mp4").unlink()
    (out / "0001.mp4").unlink()
    with pytest.raises(ValueError, match=r"1 listed but missing \(e.g. 0001.mp4\)"):
        check_sample_manifest(out)
    manifest = SampleManifest.read(out / "samples.json")
    manifest.complete = False
    manifest.write(out / "samples.json")
    with pytest.raises(ValueError, match="did not complete"):
        check_sample_manifest(out)


def test_a_rerun_keeps_the_measured_cost_and_a_resume_weighs_it(tmp_path):
    """A DyDiT run's cost is measured from its kept counts: a re-run that draws nothing keeps it (and the time), a
    resume weighs what it drew with what was there; the static dense count never replaces it."""
    from flexgen.sampling.cost import resumed_cost
    from tests.dydit_helpers import randomise_routers

    model, _ = random_model(["dydit.target=0.5"])
    randomise_routers(model)
    save_weights(model.net, tmp_path / "dy.safetensors")
    out = tmp_path / "s"
    command = parse("--config", TINY, "--ckpt", tmp_path / "dy.safetensors", "--num-samples", 4, "--batch-size", 2,
                    "--sampler", "ddim", "--steps", 3, "--out", out, "--no-progress", *SMALL, "dydit.target=0.5")
    first = sample_main(command)["cost"]
    assert first["flops_fraction"] < 0.95 and first["samples_measured"] == 4 and first["seconds_per_sample"] > 0
    as_written = json.loads(json.dumps(first))                                 # (JSON's keys are strings)
    assert sample_main(command)["cost"] == as_written                          # nothing drawn: kept as it was
    (out / "0003.mp4").unlink()
    resumed = sample_main(command)["cost"]
    assert resumed["samples_measured"] == 4                                    # 3 kept + 1 drawn
    assert resumed["gmacs_per_sample"] == pytest.approx(first["gmacs_per_sample"], rel=0.02)
    assert resumed["gmacs_per_sample"] < 0.95 * resumed["gmacs_per_sample_dense"]
    # the rule itself: measured numbers weighted by samples, counted ones as counted
    counted = {"gmacs_per_sample": 10.0, "gmacs_per_sample_dense": 10.0}
    before = {"gmacs_per_sample": 4.0, "seconds_per_sample": 1.0, "gmacs_per_sample_at_t": {"5": 2.0}}
    now = {"gmacs_per_sample": 7.0, "seconds_per_sample": 3.0, "gmacs_per_sample_at_t": {5: 4.0}}
    assert resumed_cost(counted, now, 1, before, 3) == {
        "gmacs_per_sample": 4.75, "gmacs_per_sample_dense": 10.0, "seconds_per_sample": 1.5,
        "gmacs_per_sample_at_t": {"5": 2.5}, "samples_measured": 4}
    assert resumed_cost(counted, {}, 0, before, 3)["gmacs_per_sample"] == 4.0
    assert resumed_cost(counted, {}, 0, None, 0) == {**counted, "samples_measured": 0}


def test_eval_adm_scores_only_the_batch_the_manifest_records(tmp_path):
    """issue 30 (1): a later run into the folder (another checkpoint, no --npz), a killed --overwrite --npz run, or
    a batch edited after the run: eval adm refuses the batch instead of crediting it to the run the manifest names."""
    from flexgen.metrics.adm import check_sample_batch, read_batch
    from flexgen.sampling.manifest import SampleManifest

    dit = ["model.preset=DiT-S/2", "model.depth=2"]
    for seed, name in ((0, "a"), (1, "b")):
        model, _ = random_model(dit, seed=seed)
        save_weights(model.net, tmp_path / f"{name}.safetensors")
    out = tmp_path / "dit"

    def sample(name, *extra):
        return sample_main(parse("--config", TINY, "--ckpt", tmp_path / f"{name}.safetensors", "--num-samples", 3,
                                 "--out", out, "--sampler", "ddim", "--steps", 2, "--no-progress", *extra, *SMALL,
                                 *dit))

    sample("a", "--npz")
    check_sample_batch(read_batch(out / "samples.npz"))                        # the run's own batch: scored
    sample("a")                                                                # a no-op re-run keeps it
    check_sample_batch(read_batch(out / "samples.npz"))
    sample("b", "--overwrite")                                                 # another checkpoint, no --npz
    assert not (out / "samples.npz").exists()                                  # the stale batch is gone
    sample("b", "--overwrite", "--npz")
    np.savez(out / "samples.npz", arr_0=np.zeros((3, 16, 16, 3), np.uint8))    # replaced after the run
    with pytest.raises(ValueError, match="it changed after the run"):
        check_sample_batch(read_batch(out / "samples.npz"))
    sample("b", "--npz")                                                       # written anew: scored again
    check_sample_batch(read_batch(out / "samples.npz"))
    manifest = SampleManifest.read(out / "samples.json")
    manifest.complete = False                                                  # as a killed run leaves it
    manifest.write(out / "samples.json")
    with pytest.raises(ValueError, match="is not complete"):
        check_sample_batch(read_batch(out / "samples.npz"))
    manifest.complete, manifest.settings = True, {k: v for k, v in manifest.settings.items() if k != "npz"}
    manifest.write(out / "samples.json")
    with pytest.raises(ValueError, match="is not the batch .* records"):
        check_sample_batch(read_batch(out / "samples.npz"))


def test_every_setting_that_changes_a_sample_belongs_to_the_runs_identity(tmp_path):
    """issue 30 (4): a resume or re-run with another cfg_channels, diffusion section or fps is another run (refused
    by name); a folder written before these were recorded still resumes."""
    from flexgen.sampling.manifest import LATER_IDENTITY, SampleManifest

    model, _ = random_model()
    save_weights(model.net, tmp_path / "w.safetensors")
    out = tmp_path / "s"

    def sample(*extra):
        return sample_main(parse("--config", TINY, "--ckpt", tmp_path / "w.safetensors", "--num-samples", 2,
                                 "--out", out, "--sampler", "ddim", "--steps", 2, "--no-progress", *SMALL, *extra))

    sample("sample.cfg_channels=2")
    (out / "0001.mp4").unlink()
    for extra, name in ((["sample.cfg_channels=null"], "cfg_channels"),
                        (["sample.cfg_channels=2", "diffusion.prediction=v_prediction"], "diffusion"),
                        (["sample.cfg_channels=2", "--fps", "4"], "fps")):
        with pytest.raises(ValueError, match=f"belongs to another run .*{name}: "):
            sample(*extra)
    manifest = SampleManifest.read(out / "samples.json")                      # as written before issue 30
    manifest.identity = {k: v for k, v in manifest.identity.items() if k not in LATER_IDENTITY}
    manifest.write(out / "samples.json")
    assert sample("sample.cfg_channels=2")["complete"]                          # resumed


def test_dydit_weights_record_their_lambda_and_an_untrained_conversion_says_so(tmp_path):
    """issue 30 (5): a λ 0.5 model under a λ 0.7 config is refused by name; a file straight from flexgen convert
    (fresh routers, every unit on: the dense model) is labelled an untrained conversion; training makes it a model."""
    from flexgen.checkpoint import read_metadata
    from flexgen.cli import main
    from tests.dydit_helpers import randomise_routers

    dense, _ = random_model()
    save_weights(dense.net, tmp_path / "dense.safetensors")
    assert main(["convert", "--from", str(tmp_path / "dense.safetensors"), "--config", TINY, *SMALL,
                 "dydit.target=0.5", "--out", str(tmp_path / "converted.safetensors")]) == 0
    assert json.loads(read_metadata(tmp_path / "converted.safetensors")["flexgen_dydit"]) == \
        {"target": 0.5, "trained": False, "steps": None}

    def sample(ckpt, target, out):
        return sample_main(parse("--config", TINY, "--ckpt", ckpt, "--num-samples", 1, "--sampler", "ddim",
                                 "--steps", 2, "--out", tmp_path / out, "--no-progress", *SMALL,
                                 f"dydit.target={target}"))

    record = sample(tmp_path / "converted.safetensors", 0.5, "c")
    assert record["method"] == "dydit 0.5 (untrained conversion)"
    with pytest.raises(CheckpointError, match="trained for λ 0.5, and this config sets dydit.target=0.7"):
        sample(tmp_path / "converted.safetensors", 0.7, "c7")
    model, _ = random_model(["dydit.target=0.5"])
    randomise_routers(model)
    model.policy.trained = True                                      # as training leaves it
    save_weights(model.net, tmp_path / "trained.safetensors")
    assert sample(tmp_path / "trained.safetensors", 0.5, "t")["method"] == "dydit 0.5"


def test_more_samples_of_the_same_run_extend_its_folder(tmp_path, capsys):
    """issue 30: `--num-samples 3` into a finished folder of 2 draws the third (the README's resume); fewer, or other
    seeds, are another run."""
    model, _ = random_model()
    save_weights(model.net, tmp_path / "w.safetensors")

    def sample(count, *extra):
        return sample_main(parse("--config", TINY, "--ckpt", tmp_path / "w.safetensors", "--num-samples", count,
                                 "--out", tmp_path / "s", "--sampler", "ddim", "--steps", 2, "--no-progress", *SMALL,
                                 *extra))

    first = sample(2)
    capsys.readouterr()
    more = sample(3)
    assert "(1 drawn now on rank 0)" in capsys.readouterr().out
    assert more["samples"][:2] == first["samples"] and len(more["samples"]) == 3
    with pytest.raises(ValueError, match="other samples"):
        sample(2)


@pytest.fixture(scope="module")
def finished_folder(tmp_path_factory):
    """A finished one-sample folder of the tiny model (ddim 2 steps, cfg 1.5, cfg_channels 2) and its weights."""
    root = tmp_path_factory.mktemp("identity")
    for seed in (0, 1):
        model, _ = random_model(seed=seed)
        save_weights(model.net, root / f"w{seed}.safetensors")
    sample_main(parse(*_identity_argv(root), "--out", root / "s"))
    return root


def _identity_argv(root, ckpt="w0"):
    return ("--config", TINY, "--ckpt", root / f"{ckpt}.safetensors", "--num-samples", 1, "--sampler", "ddim",
            "--steps", 2, "--cfg-scale", 1.5, "--no-progress", *SMALL, "sample.cfg_channels=2")


@pytest.mark.parametrize("change, field", [
    (["--cfg-scale", "2"], "cfg_scale"), (["--seed", "5"], "seed"), (["--sampler", "ddpm"], "sampler"),
    (["--steps", "3"], "steps"), (["--dtype", "float64"], "dtype"), (["sample.clip_denoised=false"], "clip_denoised"),
    (["sample.cfg_channels=null"], "cfg_channels"), (["diffusion.prediction=v_prediction"], "diffusion"),
    (["diffusion.beta_end=0.03"], "diffusion"), (["--fps", "4"], "fps"), (["ckpt=w1"], "checkpoint_sha256"),
    (["cache.method=fora", "cache.interval=2"], "cache"), (["--num-samples", "1", "--seed", "0"], None)])
def test_a_re_run_that_would_change_a_sample_is_another_run(finished_folder, tmp_path, change, field):
    """issue 30: the resume identity covers every setting that changes a sample (each one, changed alone, makes
    the folder another run's, refused by name); the same settings re-run as a no-op."""
    import shutil

    out = tmp_path / "s"
    shutil.copytree(finished_folder / "s", out)
    ckpt = next((c.split("=")[1] for c in change if c.startswith("ckpt=")), "w0")
    argv = [*_identity_argv(finished_folder, ckpt), *(c for c in change if not c.startswith("ckpt=")), "--out", out]
    if field is None:
        assert sample_main(parse(*argv))["complete"]
        return
    with pytest.raises(ValueError, match=f"belongs to another run .*{field}"):
        sample_main(parse(*argv))


def test_a_manifest_with_a_bad_sample_entry_is_named(tmp_path):
    model, _ = random_model()
    save_weights(model.net, tmp_path / "w.safetensors")
    out = tmp_path / "s"
    argv = ("--config", TINY, "--ckpt", tmp_path / "w.safetensors", "--num-samples", 1, "--sampler", "ddim",
            "--steps", 2, "--out", out, "--no-progress", *SMALL)
    sample_main(parse(*argv))
    data = json.loads((out / "samples.json").read_text())
    data["samples"][0]["colour"] = "red"                        # an entry this version does not know
    data["samples"].append({"index": 1, "file": "../outside.mp4", "seed": 1})
    (out / "samples.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"samples.json is not a sample manifest \(a sample entry"):
        SampleManifest.read(out / "samples.json")
    del data["samples"][0]["colour"]
    (out / "samples.json").write_text(json.dumps(data))
    (tmp_path / "outside.mp4").write_bytes(b"not the folder's")
    assert sample_main(parse(*argv, "--overwrite", "--seed", 3))["complete"]
    assert (tmp_path / "outside.mp4").exists()                  # --overwrite removes only the folder's own files
