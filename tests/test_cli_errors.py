"""Every subcommand turns an expected failure (a missing, corrupt or wrong file, a bad value, a wrong layout) into
one line `flexgen COMMAND: error: ...` that names the file or key, exit status 2, no traceback; `--debug` or
FLEXGEN_DEBUG=1 shows the traceback; a bug keeps its traceback. Issue 11 ("poor messages")."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flexgen import cli
from flexgen.config import load_config
from flexgen.registry import build_denoiser
from flexgen.schema import ConfigError
from flexgen.synthetic import make_synthetic

TINY = str(Path("configs/demo/tiny.yaml").resolve())
SMALL = ["data.num_frames=4"]


class Payload:
    """A pickled object that weights_only refuses (a real attack would name os.system here)."""

    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_errors")
    build_denoiser(load_config(TINY, SMALL)).export(d / "weights.safetensors")
    build_denoiser(load_config(TINY, [*SMALL, "model.num_classes=0"])).export(d / "unconditional.safetensors")
    (d / "junk.safetensors").write_bytes(b"\x05not a safetensors file")
    torch.save({"ema": {"w": torch.zeros(2)}}, d / "good.pt")
    (d / "truncated.pt").write_bytes((d / "good.pt").read_bytes()[:40])
    torch.save({"ema": Payload()}, d / "payload.pt")          # weights_only refuses to unpickle it
    (d / "bad.yaml").write_text("model:\n  preset: Latte-S/2\n   depth: 3\n")
    (d / "a_file").write_text("not a folder")
    (d / "bad.jsonl").write_text("{not json\n")
    make_synthetic(d / "data", num_classes=4, clips_per_class=2, num_frames=12, size=16)
    return d


def run_cli(capsys, *argv):
    """(exit status, stderr) of `flexgen ARGV` in this process."""
    capsys.readouterr()
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as e:                 # argparse's own refusals (a bad option value)
        status = e.code
    return status, capsys.readouterr().err


def assert_one_line_error(status, err, command, *named):
    lines = [line for line in err.splitlines() if line.startswith("flexgen ")]
    assert status == 2, err
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith(f"flexgen {command}: error: "), err
    for text in named:
        assert str(text) in err, f"{text!r} not named in: {err}"


def train_args(files, *extra):
    return ["train", "--config", TINY, "--no-progress", *SMALL, f"data.root={files / 'data'}",
            "train.batch_size=2", "train.total_samples=4", *extra]


def test_config_and_bench(files, capsys):
    assert_one_line_error(*run_cli(capsys, "config", files / "bad.yaml"), "config", files / "bad.yaml",
                          "not valid YAML", "line 3")
    assert_one_line_error(*run_cli(capsys, "config", TINY, "train.batch_size=-8"), "config", "tiny.yaml",
                          "train.batch_size", ">= 1")
    assert_one_line_error(*run_cli(capsys, "config", TINY, "train.total_samples=0"), "config",   # (issue 30: it
                          "train.total_samples", ">= 1")                       # exported an untrained model)
    assert_one_line_error(*run_cli(capsys, "config", TINY, "train.lr=["), "config", "train.lr=[", "not valid YAML")
    assert_one_line_error(*run_cli(capsys, "config", files / "missing.yaml"), "config", files / "missing.yaml")
    assert_one_line_error(*run_cli(capsys, "bench", "flops", "--model", "Nope/2"), "bench flops", "'Nope/2'")
    assert_one_line_error(*run_cli(capsys, "bench", "latency", "--config", files / "missing.yaml"), "bench latency",
                          files / "missing.yaml")
    # issue 30: counts and scales below their range are refused by the parser, naming the option (no silent default)
    for argv, text in ((["bench", "latency", "--steps", "0"], "argument --steps: must be at least 1, got 0"),
                       (["bench", "plan", "--budget", "0.5", "--steps", "0"], "argument --steps: must be at least 1"),
                       (["bench", "suite", "--batch", "0"], "argument --batch: must be at least 1, got 0"),
                       (["bench", "latency", "--repeats", "0"], "argument --repeats: must be at least 1"),
                       (["bench", "latency", "--cfg-scale", "-2"], "argument --cfg-scale: must be at least 0, got -2"),
                       (["bench", "latency", "--cfg-scale", "nan"], "--cfg-scale: must be at least 0, got nan"),
                       (["bench", "latency", "--batch", "two"], "argument --batch: expected an integer, got 'two'")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2 and text in capsys.readouterr().err
    # the bench commands map --device as sample and train do, before measuring anything
    for what in ("suite", "latency", "flops"):
        assert_one_line_error(*run_cli(capsys, "bench", what, "--device", "gpu0"), f"bench {what}",
                              "argument --device: expected cpu, cuda (this rank's GPU) or cuda:N")
        if not torch.cuda.is_available():
            assert_one_line_error(*run_cli(capsys, "bench", what, "--device", "cuda"), f"bench {what}",
                                  "argument --device: this machine has 0 CUDA device(s)")
    # a bad --out is named at once, not after the measurements
    assert_one_line_error(*run_cli(capsys, "bench", "suite", "--out", files / "a_file" / "x"), "bench suite",
                          files / "a_file" / "x")


def test_a_typo_in_a_required_option_is_named(capsys):
    assert_one_line_error(*run_cli(capsys, "train", "--confg", TINY), "train",
                          "required: --config; unrecognized --confg (did you mean --config?)")
    assert_one_line_error(*run_cli(capsys, "sample", "--config", TINY, "--ckp", "w", "--out", "o"), "sample",
                          "unrecognized --ckp (did you mean --ckpt?)")


def test_eval_adm_batches(tmp_path, capsys):
    """issue 30: eval adm names a truncated .npz, an .npy, a batch at another resolution, --num-fake beyond the
    batch, and the options it has no use for, in one line each."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "ref.npz", arr_0=rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8))
    np.savez(tmp_path / "big.npz", arr_0=rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8))
    np.save(tmp_path / "one.npy", rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8))
    data = (tmp_path / "ref.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:len(data) // 2])
    (tmp_path / "page.npz").write_text("<html>not found</html>")               # a failed download
    np.savez(tmp_path / "objects.npz", arr_0=np.array([{"a": 1}], dtype=object))
    base = ["eval", "adm", "--ref", tmp_path / "ref.npz"]
    for fake, extra, named in (("cut.npz", [], "is not a readable .npz batch"),
                               ("page.npz", [], "page.npz is not a readable .npz batch"),
                               ("objects.npz", [], "objects.npz is not a readable .npz batch"),
                               ("one.npy", [], "is one array ((6, 16, 16, 3)), not an ADM batch"),
                               ("big.npz", [], "holds 32×32 images but the reference batch"),
                               ("ref.npz", ["--num-fake", "7"], "--num-fake 7"),
                               ("ref.npz", ["--num-fake", "1"], "at least 2 samples, got 1"),
                               ("ref.npz", ["--protocol", "fid10k", "--num-real", "3"],
                                "--protocol, --num-real do not apply to eval adm")):
        assert_one_line_error(*run_cli(capsys, *base, "--fake", tmp_path / fake, *extra), "eval", named)
    assert_one_line_error(*run_cli(capsys, "eval", "fid", "--real", tmp_path, "--fake", tmp_path, "--num-fake", "1"),
                          "eval", "--num-real and --num-fake need at least 2")


def test_convert(files, capsys):
    base = ["convert", "--config", TINY, "--out", files / "out.safetensors", *SMALL]
    assert_one_line_error(*run_cli(capsys, *base, "--from", files / "junk.safetensors"), "convert",
                          files / "junk.safetensors", "not a readable safetensors file")
    assert_one_line_error(*run_cli(capsys, *base, "--from", files / "truncated.pt"), "convert",
                          files / "truncated.pt", "truncated or damaged")
    assert_one_line_error(*run_cli(capsys, *base, "--from", files / "payload.pt"), "convert",
                          files / "payload.pt", "weights_only")
    assert_one_line_error(*run_cli(capsys, *base, "--from", files / "ffs.pt"), "convert", files / "ffs.pt",
                          "huggingface.co/maxin-cn/Latte")
    assert not (files / "out.safetensors").exists()


def test_train(files, capsys, tmp_path):
    assert_one_line_error(*run_cli(capsys, *train_args(files, "--run-dir", files / "a_file")), "train",
                          files / "a_file")
    assert_one_line_error(*run_cli(capsys, *train_args(files, "--run-dir", tmp_path / "r1", "model.num_classes=2")),
                          "train", "model.num_classes=2", "4 classes", files / "data")
    assert_one_line_error(*run_cli(capsys, *train_args(files, "--run-dir", tmp_path / "r2", "train.total_samples=-1")),
                          "train", "train.total_samples")
    assert_one_line_error(*run_cli(capsys, *train_args(files, "--run-dir", tmp_path / "r3", f"data.root={tmp_path}")),
                          "train", tmp_path)
    assert not any((tmp_path / name).exists() for name in ("r1", "r2", "r3"))   # refused: nothing left behind
    latest = tmp_path / "r4" / "checkpoints" / "latest.pt"         # damaged after it was written: resume names it
    latest.parent.mkdir(parents=True)
    latest.write_bytes((files / "good.pt").read_bytes()[:100])
    assert_one_line_error(*run_cli(capsys, *train_args(files, "--run-dir", tmp_path / "r4")), "train", latest,
                          "move it away", "ema.safetensors")


def test_sample(files, capsys, tmp_path):
    base = ["sample", "--config", TINY, "--ckpt", files / "weights.safetensors", "--num-samples", "1", "--steps", "2",
            "--no-progress", *SMALL]
    assert_one_line_error(*run_cli(capsys, *base, "--out", files / "a_file"), "sample", files / "a_file")
    assert_one_line_error(*run_cli(capsys, *base, "--out", tmp_path / "s1", "--ckpt", files / "junk.safetensors"),
                          "sample", files / "junk.safetensors")
    # Invalid values are refused before the output folder exists (nothing is left behind).
    for option, key in (("--steps=5000", "sample.steps"), ("--sampler=euler", "sample.sampler"),
                        ("--num-samples=0", "argument --num-samples: must be at least 1")):
        assert_one_line_error(*run_cli(capsys, *base, option, "--out", tmp_path / "s2"), "sample", key)
    assert_one_line_error(*run_cli(capsys, *base, "--out", tmp_path / "s2", "model.num_classes=0", "--ckpt",
                                   files / "unconditional.safetensors", "--cfg-scale", "2"), "sample", "cfg_scale")
    assert_one_line_error(*run_cli(capsys, *base, "--out", tmp_path / "s2", "--device", "gpu0"), "sample",
                          "--device 'gpu0': expected cpu, cuda (this rank's GPU) or cuda:N")
    if not torch.cuda.is_available():
        assert_one_line_error(*run_cli(capsys, *base, "--out", tmp_path / "s2", "--device", "cuda"), "sample",
                              "--device cuda: this machine has 0 CUDA device(s)")
    assert not (tmp_path / "s2").exists()


def test_eval_and_leaderboard(files, capsys, tmp_path):
    assert_one_line_error(*run_cli(capsys, "eval", "fvd", "--real", tmp_path, "--fake", tmp_path, "--protocol",
                                   "fvd9999"), "eval", "fvd9999", "fvd2048_16f")
    assert_one_line_error(*run_cli(capsys, "eval", "fvd", "--real", tmp_path, "--fake", tmp_path, "--detector",
                                   files / "i3d.pt"), "eval", files / "i3d.pt", "sha256")
    assert_one_line_error(*run_cli(capsys, "eval", "fid", "--fake", tmp_path), "eval", "--real")
    assert_one_line_error(*run_cli(capsys, "leaderboard", "--records", files / "bad.jsonl", "--out", tmp_path / "lb"),
                          "leaderboard", files / "bad.jsonl")


def test_generate_demo_and_data(files, capsys, tmp_path):
    from tests.t2i_helpers import save_tiny_pipeline

    assert_one_line_error(*run_cli(capsys, "generate", "a cat", "--model", tmp_path / "none", "--out",
                                   tmp_path / "g" / "x.png"), "generate", tmp_path / "none")
    pipe = save_tiny_pipeline(tmp_path / "pipe")
    assert_one_line_error(*run_cli(capsys, "generate", "a cat", "--model", pipe, "--steps", "0", "--no-progress",
                                   "--out", tmp_path / "g" / "x.png"), "generate", "steps")
    assert not (tmp_path / "g").exists()
    assert_one_line_error(*run_cli(capsys, "demo", "--quick", "--no-progress", "--out", files / "a_file"), "demo",
                          files / "a_file")
    assert_one_line_error(*run_cli(capsys, "data", "prepare", "ffs", "--src", tmp_path / "none"), "data prepare",
                          tmp_path / "none")
    assert_one_line_error(*run_cli(capsys, "data", "cache-text", "--root", tmp_path / "none", "--text-encoder", pipe,
                                   "--cache", tmp_path / "cache"), "data cache-text", tmp_path / "none")


def test_debug_shows_the_traceback_and_bugs_keep_theirs(files, capsys, monkeypatch):
    with pytest.raises(ConfigError, match="not valid YAML"):
        cli.main(["--debug", "config", str(files / "bad.yaml")])
    monkeypatch.setenv("FLEXGEN_DEBUG", "1")
    with pytest.raises(ConfigError):
        cli.main(["config", str(files / "bad.yaml")])
    monkeypatch.delenv("FLEXGEN_DEBUG")

    def bug(args):
        raise TypeError("a bug, not bad input")

    monkeypatch.setattr(cli, "show_config", bug)
    with pytest.raises(TypeError):
        cli.main(["config", TINY])


@pytest.mark.slow
def test_the_installed_command_prints_one_line(files):
    env = {**os.environ, "FLEXGEN_DEBUG": ""}
    done = subprocess.run([sys.executable, "-m", "flexgen", "config", str(files / "bad.yaml")], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("flexgen config: error: ")
    debug = subprocess.run([sys.executable, "-m", "flexgen", "--debug", "config", str(files / "bad.yaml")],
                           capture_output=True, text=True, env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_skipped_input_is_one_warning_line_while_a_command_runs():
    import warnings

    from flexgen.data.base import DataWarning

    before = warnings.formatwarning
    with cli._data_warnings_as_lines("data encode"):
        line = warnings.formatwarning(DataWarning("a.JPEG: unreadable"), DataWarning, "latents.py", 99, "src")
        other = warnings.formatwarning(UserWarning("u"), UserWarning, "x.py", 1, "src")
    assert line == "flexgen data encode: warning: a.JPEG: unreadable\n"
    assert "x.py:1: UserWarning: u" in other and warnings.formatwarning is before


def test_an_image_size_that_does_not_patch_is_named_in_config_keys(capsys):
    assert_one_line_error(*run_cli(capsys, "bench", "flops", "--config", TINY, "data.image_size=15"), "bench flops",
                          "data.image_size 15 gives latents of side 15 (autoencoder.downsample 1), not divisible by "
                          "Latte-S/2's patch size 2")


@pytest.mark.slow
def test_a_diffusers_command_prints_only_its_own_lines(tmp_path):
    """issue 30: xformers' six-line import warning (its kernels do not match this torch) and diffusers' accelerate
    notice no longer precede a command's output."""
    from tests.t2i_helpers import save_tiny_pipeline

    pipe = save_tiny_pipeline(tmp_path / "pipe")
    result = subprocess.run([sys.executable, "-m", "flexgen", "convert", "--from", str(pipe), "--config",
                             "configs/t2i/pixart/flexpixart-xl2-256.yaml", "--out", str(tmp_path / "flex"),
                             "model.depth=6", "model.hidden_size=24", "model.num_heads=3", "model.caption_channels=32",
                             "autoencoder.downsample=2", "data.image_size=16", "density.layout=P GSR DD",
                             "density.schedule.grid_min=1", "density.schedule.grid_max=4"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout.startswith("wrote ")
