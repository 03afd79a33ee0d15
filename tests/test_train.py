"""The training loop: learning, exact resume, FlexDiT fine-tuning with density stages, DDP, bad resumes."""

import json
from pathlib import Path

import pytest
import torch

from flexgen.checkpoint import load_model
from flexgen.config import load_config
from flexgen.train import epoch_batches, heldout_loss, train
from tests.train_helpers import Clips, params_digest, tiny, torchrun


def logged_steps(run_dir):
    """(steps of stats.jsonl, sample counts of the train/loss TensorBoard scalars as TensorBoard shows them)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    stats = [json.loads(line)["step"] for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run_dir / "tensorboard"), purge_orphaned_data=True)
    events.Reload()
    return stats, [e.step for e in events.Scalars("train/loss")]


def test_epoch_batches_shard_one_permutation():
    one = epoch_batches(20, 4, seed=3, epoch=1, rank=0, world_size=1)
    two = [epoch_batches(20, 2, seed=3, epoch=1, rank=r, world_size=2) for r in range(2)]
    assert len(one) == 5 and all(len(b) == 4 for b in one)
    assert [a + b for a, b in zip(*two, strict=True)] == one          # ranks split each global batch
    assert epoch_batches(20, 4, seed=3, epoch=2, rank=0, world_size=1) != one


def test_training_learns_and_writes_its_run_directory(tmp_path):
    cfg = tiny("train.total_samples=160", "train.lr=2e-3")
    summary = train(cfg, tmp_path / "run", dataset=Clips(n=8), progress=False)
    assert summary["finished"] and summary["samples"] == 160
    stats = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["loss"] < 0.7 * stats[0]["loss"]
    assert load_config(tmp_path / "run" / "config.yaml") == cfg
    assert list((tmp_path / "run" / "tensorboard").iterdir())
    ema = load_model(tmp_path / "run" / "ema.safetensors")            # the EMA weights rebuild their model
    assert params_digest(ema) == params_digest(summary["ema"].net)


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path):
    cfg = tiny("train.total_samples=48")                             # 24 steps, a checkpoint every 8
    full = train(cfg, tmp_path / "full", dataset=Clips(), progress=False)
    with pytest.raises(KeyboardInterrupt):                           # crash during step 13 (after the step-8 save)
        train(cfg, tmp_path / "crash", dataset=Clips(crash_at=2 * 12 + 1), progress=False)
    assert torch.load(tmp_path / "crash" / "checkpoints" / "latest.pt", weights_only=True)["step"] == 8
    assert logged_steps(tmp_path / "crash") == ([4, 8, 12], [8, 16, 24])    # step 12 was logged, then lost
    resumed = train(cfg, tmp_path / "crash", dataset=Clips(), progress=False)   # the same command again
    assert resumed["step"] == full["step"] == 24
    assert params_digest(resumed["model"]) == params_digest(full["model"])
    assert params_digest(resumed["ema"]) == params_digest(full["ema"])
    # The replayed steps 9-12 are logged once: stats.jsonl and TensorBoard read like the uninterrupted run's.
    assert logged_steps(tmp_path / "crash") == logged_steps(tmp_path / "full")
    assert logged_steps(tmp_path / "full") == (list(range(4, 25, 4)), list(range(8, 49, 8)))
    # More samples later extends the same run; a changed model does not fit it.
    longer = train(tiny("train.total_samples=64"), tmp_path / "crash", dataset=Clips(), progress=False)
    assert longer["step"] == 32
    with pytest.raises(ValueError, match="model.hidden_size"):
        train(tiny("train.total_samples=64", "model.hidden_size=32"), tmp_path / "crash", dataset=Clips(),
              progress=False)


def test_the_loss_curve_of_a_resumed_run_is_the_uninterrupted_runs(tmp_path):
    """issue 30: a checkpoint between two log records keeps the steps since the last record, so the record after a
    resume averages the same steps as the uninterrupted run's (it averaged only the resumed ones)."""
    cfg = tiny("train.total_samples=48", "train.log_every_samples=12")   # records at steps 6, 12, ...; saves at 8
    train(cfg, tmp_path / "full", dataset=Clips(), progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "crash", dataset=Clips(crash_at=2 * 12 + 1), progress=False)
    train(cfg, tmp_path / "crash", dataset=Clips(), progress=False)

    def curve(run):
        return [{k: r[k] for k in ("step", "loss", "mse", "grad_norm")}
                for r in map(json.loads, (tmp_path / run / "stats.jsonl").read_text().splitlines())]

    assert [r["step"] for r in curve("full")] == [6, 12, 18, 24]
    assert curve("crash") == curve("full")                           # step 12 averages steps 7-12 in both


def test_a_kill_before_the_final_export_is_repaired_by_the_rerun(tmp_path, monkeypatch):
    from flexgen.backbones.latte import LatteDenoiser

    cfg = tiny("train.total_samples=32")                             # 16 steps, checkpoint + export every 8
    original, calls = LatteDenoiser.export, []

    def killed_at_the_second_export(self, path):
        calls.append(path)
        if len(calls) == 2:                                          # after the final latest.pt was written
            raise KeyboardInterrupt("killed before the final export")
        return original(self, path)

    monkeypatch.setattr(LatteDenoiser, "export", killed_at_the_second_export)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", dataset=Clips(), progress=False)
    assert torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)["step"] == 16
    stale = load_model(tmp_path / "run" / "ema.safetensors")        # the step-8 export
    monkeypatch.setattr(LatteDenoiser, "export", original)
    again = train(cfg, tmp_path / "run", dataset=Clips(), progress=False)   # the same command: nothing to train
    assert again["finished"] and again["step"] == 16
    exported = load_model(tmp_path / "run" / "ema.safetensors")
    assert params_digest(exported) == params_digest(again["ema"].net) != params_digest(stale)


def test_a_run_that_fails_before_its_first_step_does_not_lock_its_directory(tmp_path):
    # Issue 11, item 7: the corrected command must not be refused as "a different configuration".
    bad = tiny("train.total_samples=8", f"train.init_from={tmp_path / 'missing.safetensors'}")
    with pytest.raises(ValueError, match="weights file not found"):
        train(bad, tmp_path / "run", dataset=Clips(), progress=False)
    assert not (tmp_path / "run" / "config.yaml").exists()
    fixed = tiny("train.total_samples=8")
    assert train(fixed, tmp_path / "run", dataset=Clips(), progress=False)["finished"]
    assert load_config(tmp_path / "run" / "config.yaml") == fixed


def test_resume_reads_a_checkpoint_of_the_bare_network(tmp_path):
    # latest.pt files written before the backbone interface hold the network's keys without the Denoiser's "net."
    cfg = tiny("train.total_samples=32")
    full = train(cfg, tmp_path / "full", dataset=Clips(), progress=False)
    train(tiny("train.total_samples=16"), tmp_path / "old", dataset=Clips(), progress=False)
    latest = tmp_path / "old" / "checkpoints" / "latest.pt"
    state = torch.load(latest, weights_only=True)
    for key in ("model", "ema"):
        state[key] = {k.removeprefix("net."): v for k, v in state[key].items()}
    torch.save(state, latest)
    resumed = train(cfg, tmp_path / "old", dataset=Clips(), progress=False)
    assert resumed["step"] == full["step"] and params_digest(resumed["ema"]) == params_digest(full["ema"])


def test_flexdit_fine_tunes_from_a_dense_checkpoint_one_grid_per_step(tmp_path, monkeypatch):
    train(tiny("train.total_samples=16"), tmp_path / "dense2", dataset=Clips(), progress=False)
    mismatched = tiny("train.total_samples=48", "model.depth=10", "density.layout=PGSRT",
                      "density.schedule.grid_min=2", "density.schedule.grid_max=4",
                      f"train.init_from={tmp_path / 'dense2' / 'ema.safetensors'}")
    with pytest.raises(ValueError, match="does not fit"):            # a 2-pair dense model is not a 5-pair one
        train(mismatched, tmp_path / "bad", dataset=Clips(), progress=False)
    dense10 = train(tiny("train.total_samples=16", "model.depth=10"), tmp_path / "dense10", dataset=Clips(),
                    progress=False)
    seen = []
    from flexgen.policies import FlexDiT
    original = FlexDiT.begin

    def spy(self, net, t, **step):                                     # every forward of a FlexDiT network
        seen.append(sorted({self.grid_for(t[i:i + 1]) for i in range(len(t))}))
        return original(self, net, t, **step)

    monkeypatch.setattr(FlexDiT, "begin", spy)
    flex_cfg = tiny("train.total_samples=48", "model.depth=10", "density.layout=PGSRT",
                    "density.schedule.grid_min=2", "density.schedule.grid_max=4",
                    f"train.init_from={tmp_path / 'dense10' / 'ema.safetensors'}", "train.grad_checkpointing=true")
    flex = train(flex_cfg, tmp_path / "flex", dataset=Clips(), progress=False)
    assert flex["model"].net.policy.part(FlexDiT) is not None and len(seen) == 24
    assert all(len(grids) == 1 for grids in seen)                      # one token count per forward
    assert {g[0] for g in seen} > {4}                                  # several stages were visited
    # Converted from the dense EMA: before fine-tuning the transformer weights are the dense ones.
    start = dense10["ema"].net.converted(FlexDiT(flex_cfg.density))
    assert torch.equal(start.spatial_blocks[3].attn.qkv.weight, dense10["ema"].net.spatial_blocks[3].attn.qkv.weight)


def test_bf16_autocast_trains(tmp_path):
    summary = train(tiny("train.total_samples=8", "train.bf16=true"), tmp_path / "bf16", dataset=Clips(),
                    progress=False)
    assert all(torch.isfinite(p).all() for p in summary["model"].parameters())


def test_heldout_loss_is_the_same_measure_for_every_model():
    cfg = tiny()
    from flexgen.diffusion import GaussianDiffusion
    from flexgen.registry import build_denoiser
    model = build_denoiser(cfg)
    x0 = Clips().video[:4]
    kwargs = {"y": torch.tensor([0, 1, 2, 3])}
    a = heldout_loss(model, x0, GaussianDiffusion.from_config(cfg.diffusion), kwargs)
    b = heldout_loss(model, x0, GaussianDiffusion.from_config(cfg.diffusion), kwargs)
    assert a == b and a["mse"] == pytest.approx(1.0, abs=0.2)          # a fresh model predicts ε = 0


@pytest.mark.slow
def test_two_process_ddp_with_gloo(tmp_path, free_port):
    torchrun(tmp_path, port=free_port)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["digest"] == ranks[1]["digest"]                    # DDP keeps the replicas identical
    assert ranks[0]["samples"] == 32 and ranks[0]["step"] == 8        # global batch = 2 ranks × 2 clips
    stats = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["samples"] == 32


@pytest.mark.slow
def test_fsdp_matches_ddp(tmp_path, free_port):
    # Both are exact data parallelism over the same data, timesteps and noise: the same parameters result
    # (up to float summation order), and FSDP's checkpoint holds the full, unsharded weights.
    torchrun(tmp_path / "ddp", port=free_port)                # one after the other: the port is free again
    torchrun(tmp_path / "fsdp", "train.fsdp=true", port=free_port)
    ddp = torch.load(tmp_path / "ddp" / "final.pt", weights_only=True)
    fsdp = torch.load(tmp_path / "fsdp" / "final.pt", weights_only=True)
    assert ddp.keys() == fsdp.keys()
    for key in ddp:
        torch.testing.assert_close(fsdp[key], ddp[key], rtol=1e-4, atol=1e-5)
    # the EMA export works under FSDP too: it loads into the same weights as DDP's
    ddp_ema, fsdp_ema = (load_model(tmp_path / run / "ema.safetensors").state_dict() for run in ("ddp", "fsdp"))
    assert ddp_ema.keys() == fsdp_ema.keys()
    for key in ddp_ema:
        torch.testing.assert_close(fsdp_ema[key], ddp_ema[key], rtol=1e-4, atol=1e-5)


def test_settings_that_do_not_change_the_run_may_change_on_resume():
    from flexgen.cli import default_run_dir
    from flexgen.train import run_identity

    base = tiny()
    for change in ("data.num_workers=2", "train.total_samples=99", "data.root=elsewhere"):
        assert run_identity(tiny(change)) == run_identity(base), change
    assert run_identity(tiny("train.lr=3e-3")) != run_identity(base)
    config = "configs/demo/tiny.yaml"
    assert default_run_dir(config, ["data.num_workers=2"], "results") == Path("results/tiny")
    assert default_run_dir(config, ["train.lr=3e-3"], "results").name.startswith("tiny-")
