"""Prompts of a text-to-image run: read from a file, and one record {prompt, seed, index} per image (image i of the
run: seed + i, `num_images` consecutive images per prompt)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def image_records(prompts: list[str], num_images: int = 1, seed: int = 0) -> list[dict[str, Any]]:
    """One record {prompt, seed, index} per image: `num_images` consecutive images per prompt, image i seed + i."""
    prompts_per_image = [p for p in prompts for _ in range(num_images)]
    return [{"prompt": p, "seed": seed + i, "index": i} for i, p in enumerate(prompts_per_image)]


def read_prompts(path: str | Path) -> list[str]:
    """Prompts of a text file: one per line; blank lines and lines starting with # are ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} not found; --prompts expects a text file with one prompt per "
                                "line (blank lines and #comments are ignored)")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]
