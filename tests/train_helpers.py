"""An in-memory clip dataset for training tests, the tiny run config, and the two-rank torchrun launch of this file
(its worker, below)."""

import hashlib
import json
import os
import subprocess
import sys

import torch

from flexgen.config import load_config

TINY = ["train.batch_size=2", "train.log_every_samples=8", "train.ckpt_every_samples=16",
        "model.depth=4", "data.num_frames=4", "data.image_size=8"]


def tiny(*overrides):
    return load_config("configs/demo/tiny.yaml", [*TINY, *overrides])


def torchrun(run_dir, *overrides, port):
    """Train the tiny run on two CPU ranks (this file's worker) into `run_dir`; `port`: the free_port fixture's."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             f"--master_port={port}", "tests/train_helpers.py", str(run_dir), *overrides],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


class Clips(torch.utils.data.Dataset):
    """Random clips (F, 3, H, W) in [-1, 1] with labels; `crash_at` raises on that access to simulate a crash."""

    def __init__(self, n=16, frames=4, size=8, classes=4, crash_at=None):
        g = torch.Generator().manual_seed(0)
        self.video = torch.rand(n, frames, 3, size, size, generator=g) * 2 - 1
        self.label = torch.randint(0, classes, (n,), generator=g)
        self.crash_at, self.calls = crash_at, 0

    def __len__(self):
        return len(self.video)

    def set_epoch(self, epoch):
        """The training datasets' protocol: per-epoch randomness (these clips have none)."""

    def __getitem__(self, i):
        self.calls += 1
        if self.crash_at is not None and self.calls == self.crash_at:
            raise KeyboardInterrupt("simulated crash")
        return {"video": self.video[i], "label": int(self.label[i]), "path": f"clip{i}"}


def params_digest(model) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        p = p.full_tensor() if hasattr(p, "full_tensor") else p      # FSDP: gather the shards (collective)
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


if __name__ == "__main__":      # torchrun --nproc_per_node=2 tests/train_helpers.py RUN_DIR [KEY=VALUE ...]
    from flexgen import dist
    from flexgen.train import train

    run_dir = sys.argv[1]
    cfg = load_config("configs/demo/tiny.yaml", [*TINY, "train.total_samples=32", *sys.argv[2:]])
    summary = train(cfg, run_dir, dataset=Clips(), device="cpu", progress=False)
    rank = dist.init("cpu").rank
    with open(f"{run_dir}/rank{rank}.json", "w") as f:
        json.dump({"digest": params_digest(summary["model"]), "samples": summary["samples"],
                   "step": summary["step"]}, f)
    if rank == 0:       # the full weights as saved (unsharded also under FSDP)
        torch.save(torch.load(f"{run_dir}/checkpoints/latest.pt", weights_only=True)["model"], f"{run_dir}/final.pt")
    dist.barrier()      # both ranks leave together: no rank tears the process group down under the other
    dist.shutdown()
