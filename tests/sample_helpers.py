"""A tiny model with random weights (the released init zeroes the output layers) and `flexgen sample`'s argument
parser (test_sample, test_atomic_outputs)."""

import argparse

import torch

from flexgen.config import load_config
from flexgen.registry import build_denoiser
from flexgen.sample import add_sample_arguments

TINY = "configs/demo/tiny.yaml"
SMALL = ["data.num_frames=4"]                   # 4 frames of 16×16×3, 8×8 tokens per frame


def random_model(overrides=(), seed=0, std=0.05):
    run = load_config(TINY, [*SMALL, *overrides])
    model = build_denoiser(run).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model, run


def parse(*argv):
    return add_sample_arguments(argparse.ArgumentParser()).parse_args([str(a) for a in argv])
