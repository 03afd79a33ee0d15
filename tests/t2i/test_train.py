"""PixArt-α fine-tuning through the shared training loop: an image–caption folder, T5 embeddings cached once,
dense -> FlexDiT conversion from a local pipeline folder, one density stage per step, bf16 and gradient
checkpointing, caption dropout, the exported diffusers folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from t2i_helpers import make_captions, save_tiny_pipeline, tiny_config

from flexgen.config import load_config
from flexgen.policies.flexdit import grid_at
from flexgen.registry import build_denoiser
from flexgen.t2i.pixart import FlexPixArtTransformer2DModel
from flexgen.t2i.pixart_io import load_transformer
from flexgen.train import train

pytest.importorskip("diffusers")


def tiny_run(tmp_path, *extra):
    save_tiny_pipeline(tmp_path / "pipe")
    make_captions(tmp_path / "captions")
    return tiny_config(tmp_path, *extra)


def test_flexdit_fine_tunes_pixart_from_a_dense_folder(tmp_path):
    cfg = tiny_run(tmp_path)
    assert cfg.train.bf16 and cfg.train.grad_checkpointing                     # the preset's recipe
    summary = train(cfg, tmp_path / "run", device="cpu", progress=False)
    assert summary["finished"] and summary["step"] == 6
    model = summary["model"]
    assert model.net.gradient_checkpointing and model.layout == "PGSRDD"

    # started from the converted dense weights, then trained
    dense = load_transformer(tmp_path / "pipe")
    start = FlexPixArtTransformer2DModel.from_dense(dense, model.net.density)
    moved = [n for n, p in model.net.named_parameters() if not torch.equal(p, start.state_dict()[n])]
    assert len(moved) > 0.9 * len(list(model.parameters()))

    # one density stage per step: the logged grid is the schedule's grid of that step's timesteps
    stats = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert len(stats) == 6 and all(torch.isfinite(torch.tensor(s["loss"])) for s in stats)
    assert {s["grid"] for s in stats} <= {grid_at(model.net.density.schedule, t, 1000) for t in range(1000)}

    # T5 embeddings were cached once (6 captions + ""), and the EMA exported as a FlexDiT diffusers folder
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 7
    exported = load_transformer(tmp_path / "run" / "transformer")
    assert type(exported) is FlexPixArtTransformer2DModel and exported.config.layout == "P GSR DD"
    ema = summary["ema"].net.state_dict()
    assert all(torch.equal(v, ema[k]) for k, v in exported.state_dict().items())
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "PixArt-XL/2-256" in saved and "P GSR DD" in saved


def test_caption_dropout_uses_the_null_embedding():
    cfg = load_config("configs/t2i/pixart/pixart-xl2-256.yaml", ["model.class_dropout_prob=0.5"])
    text, mask = torch.randn(64, 4, 3), torch.ones(64, 4, dtype=torch.long)
    null = (torch.zeros(4, 3), torch.tensor([1, 0, 0, 0]))
    batch = {"image": torch.zeros(64, 3, 8, 8), "text": text, "text_mask": mask}
    with torch.device("meta"):
        model = build_denoiser(cfg)          # the family's view drops captions (no weights needed)
    model.null_text = null
    _, kwargs = model.prepare_batch(batch, torch.device("cpu"), torch.Generator().manual_seed(0))
    dropped = (kwargs["text"] == 0).all(dim=(1, 2))
    assert 16 < dropped.sum() < 48                                            # about half
    assert torch.equal(kwargs["text_mask"][dropped], null[1].expand(int(dropped.sum()), 4))
    assert torch.equal(kwargs["text"][~dropped], text[~dropped])


def test_init_from_a_folder_of_another_size_is_a_clear_error(tmp_path):
    cfg = tiny_run(tmp_path, "model.depth=4", "density.layout=P GSR")
    with pytest.raises(ValueError, match="does not fit the configured model.*num_layers: 6 there, 4 here"):
        train(cfg, tmp_path / "run", device="cpu", progress=False)


def test_captions_dataset_needs_its_folders(tmp_path):
    pipe = save_tiny_pipeline(tmp_path / "pipe")                   # (the VAE is checked first)
    cfg = load_config("configs/t2i/pixart/pixart-xl2-256.yaml", ["data.text_cache=''", f"autoencoder.path={pipe}"])
    with pytest.raises(ValueError, match="data.text_cache"):
        train(cfg, tmp_path / "run", device="cpu", progress=False)


def test_convert_cli_and_clear_errors_for_video_commands(tmp_path, capsys):
    """`flexgen convert` turns a dense PixArt-α folder into a FlexDiT transformer folder (the config's layout);
    the video-only commands name `flexgen generate` instead of failing obscurely."""
    from flexgen.cli import main

    pipe = save_tiny_pipeline(tmp_path / "pipe")
    sizes = ["model.depth=6", "model.hidden_size=24", "model.num_heads=3", "model.caption_channels=32",
             "autoencoder.downsample=2", "data.image_size=16", "density.layout=P GSR DD",
             "density.schedule.grid_min=1", "density.schedule.grid_max=4"]
    out = tmp_path / "flex"
    assert main(["convert", "--from", str(pipe), "--config", "configs/t2i/pixart/flexpixart-xl2-256.yaml",
                 "--out", str(out), *sizes]) == 0
    assert "FlexDiT layout PGSRDD" in capsys.readouterr().out
    flex = load_transformer(out)
    expected = FlexPixArtTransformer2DModel.from_dense(load_transformer(pipe), flex.density)
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in flex.state_dict().items())
    assert main(["sample", "--config", "configs/t2i/pixart/pixart-xl2-256.yaml", "--ckpt", "x.pt", "--out",
                 str(tmp_path / "s")]) == 2
    assert "flexgen generate" in capsys.readouterr().err


WORKER = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from flexgen import dist
from flexgen.train import train
from t2i_helpers import tiny_config

summary = train(tiny_config(Path({tmp!r}), *{extra!r}), {run!r}, device="cpu", progress=False)
if dist.init("cpu").is_main:
    Path({run!r}, "summary.json").write_text(json.dumps({{"step": summary["step"]}}))
dist.barrier()
dist.shutdown()
"""


@pytest.mark.slow
def test_fsdp_and_ddp_fine_tune_pixart_alike(tmp_path, free_port):
    """Two CPU ranks (gloo): FlexDiT PixArt fine-tuning under FSDP2 (every block a shard unit) reaches the same
    parameters as under DDP — the density walk goes through the blocks' module calls, so FSDP gathers them."""
    save_tiny_pipeline(tmp_path / "pipe")
    make_captions(tmp_path / "captions", n=8)
    tiny_run_args = ["train.batch_size=1", "train.total_samples=8", "train.bf16=false"]
    results = {}
    for name, extra in (("ddp", tiny_run_args), ("fsdp", [*tiny_run_args, "train.fsdp=true"])):
        script = tmp_path / f"{name}.py"
        script.write_text(WORKER.format(tests=str(Path(__file__).resolve().parents[1]), tmp=str(tmp_path), extra=extra,
                                        run=str(tmp_path / name)))
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                               f"--master_port={free_port}", str(script)], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        results[name] = json.loads((tmp_path / name / "summary.json").read_text())
    assert results["ddp"]["step"] == results["fsdp"]["step"] == 4
    ddp = load_transformer(tmp_path / "ddp" / "transformer")
    fsdp = load_transformer(tmp_path / "fsdp" / "transformer")
    for key, value in ddp.state_dict().items():
        torch.testing.assert_close(fsdp.state_dict()[key], value, rtol=1e-4, atol=1e-6)
