"""The ImageNet track end to end on a tiny ImageNet-layout fixture, on the CPU: encode -> train from latents (dense,
FlexDiT, DyDiT) -> flexgen sample --npz -> flexgen eval adm (a tiny TorchScript detector) -> flexgen leaderboard."""

import json

import numpy as np
import pytest
import torch

from flexgen.cli import main
from flexgen.data.base import DataWarning
from flexgen.files import file_sha256
from flexgen.metrics.records import read_records
from tests.metrics_helpers import TinyInceptionScript
from tests.t2i_helpers import tiny_vae


def test_encode_train_sample_evaluate_and_board(imagenet, tmp_path, monkeypatch, capsys):
    vae = tmp_path / "vae"
    tiny_vae().save_pretrained(vae)
    model = ["model.preset=DiT-S/2", "model.depth=5", "model.hidden_size=32", "model.num_heads=2",
             "model.num_classes=3", "model.in_channels=4", "autoencoder.kind=sd-vae", f"autoencoder.path={vae}",
             "autoencoder.downsample=2", "data.image_size=16", "data.num_frames=1", "data.hflip=true"]
    store = tmp_path / "latents"
    with pytest.warns(DataWarning):
        assert main(["data", "encode", "--config", "configs/demo/tiny.yaml", "--out", str(store), "--shard-size",
                     "8", "--no-progress", *model, "data.dataset=imagenet", f"data.root={imagenet}"]) == 0
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["num_skipped"] == 1 and manifest["num_images"] == 14       # the truncated JPEG, named
    assert "truncated.JPEG" in manifest["skipped"][0]["path"]

    train = [*model, "data.dataset=latents", f"data.root={store}", "train.batch_size=4", "train.total_samples=16",
             "train.log_every_samples=8", "train.ckpt_every_samples=1000", "train.lr=1e-3"]
    runs = {"dense": [], "flexdit": ["density.layout=PGSRT", "density.schedule.kind=constant",
                                     "density.schedule.grid=2"], "dydit": ["dydit.target=0.5"]}
    for name, extra in runs.items():
        init = [] if name == "dense" else [f"train.init_from={tmp_path / 'dense' / 'ema.safetensors'}"]
        assert main(["train", "--config", "configs/demo/tiny.yaml", "--run-dir", str(tmp_path / name),
                     "--no-progress", *train, *extra, *init]) == 0
        assert json.loads((tmp_path / name / "data.json").read_text())["vae_sha256"] == manifest["vae_sha256"]

    torch.manual_seed(0)
    script = torch.jit.script(TinyInceptionScript())
    detector = tmp_path / "inception-2015-12-05.pt"
    script.save(str(detector))
    monkeypatch.setattr("flexgen.metrics.inception.INCEPTION_SHA256", file_sha256(detector))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "VIRTUAL_tiny16.npz", arr_0=rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8))
    records = tmp_path / "records.jsonl"
    for name, extra in runs.items():
        out = tmp_path / name / "samples"
        assert main(["sample", "--config", "configs/demo/tiny.yaml", "--ckpt", str(tmp_path / name / "ema.safetensors"),
                     "--out", str(out), "--num-samples", "8", "--sampler", "ddim", "--steps", "2", "--cfg-scale",
                     "1.5", "--batch-size", "4", "--no-progress", "--npz", *train, *extra,
                     "sample.cfg_channels=3"]) == 0
        assert main(["eval", "adm", "--ref", str(tmp_path / "VIRTUAL_tiny16.npz"), "--fake", str(out),
                     "--detector", str(detector), "--records", str(records), "--dataset", "imagenet16",
                     "--batch-size", "4"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["num_samples"] == 8 and result["sfid"] is None and result["fid"] > 0

    rows = read_records(records)
    assert sorted({r.protocol for r in rows}) == ["adm_fid8", "adm_is8", "adm_prec8", "adm_rec8"]
    assert sorted({r.method for r in rows}) == ["baseline", "dydit 0.5", "flexdit PGSRT"]
    assert all(r.reference_sha256 == file_sha256(tmp_path / "VIRTUAL_tiny16.npz") for r in rows)
    flex = [r for r in rows if r.method.startswith("flexdit")][0]
    dense = [r for r in rows if r.method == "baseline"][0]
    assert flex.gflops_per_sample < dense.gflops_per_sample
    assert main(["leaderboard", "--records", str(records), "--out", str(tmp_path / "board"), "--format", "md"]) == 0
    board = (tmp_path / "board" / "leaderboard.md").read_text()
    assert "adm_fid8" in board and "adm_fid50k" in board                     # ours, and the published rows
    assert "dydit 0.5" in board and "flexdit r=[0.61,0.86]" in board


def test_adm_and_clean_fid_never_share_a_table():
    from flexgen.metrics.records import Record, build_tables

    common = dict(metric="fid", dataset="imagenet256", num_samples=50000, detector_sha256="d", reference_sha256="r",
                  model_variant="DiT-XL/2")
    tables = build_tables([Record(protocol="adm_fid50k", value=2.3, **common),
                           Record(protocol="fid50k", value=2.1, **common)])
    assert len(tables) == 2
