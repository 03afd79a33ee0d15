"""Class labels of samples: sample i's label is a function of its seed (seed + i) alone, so a sample does not depend
on the batch size, the number of ranks or which other samples a run draws."""

from __future__ import annotations

from collections.abc import Sequence

LABEL_STREAM = 0x6C6162656C       # "label" in ASCII: the key that separates label draws from the noise stream


def sample_label(seed: int, index: int, num_classes: int) -> int:
    """The class label of sample `index`: uniform in [0, num_classes), a function of its seed `seed + index`."""
    import numpy as np

    rng = np.random.default_rng([(seed + index) % 2**64, LABEL_STREAM])
    return int(rng.integers(num_classes))


def resolve_labels(num_samples: int, seed: int, num_classes: int,
                   labels: int | Sequence[int] | None = None) -> list[int] | None:
    """One label per sample index for a class-conditional model (None for an unconditional one): drawn per
    sample from its seed, or the given class for every sample, or the given list (one per index)."""
    if not num_classes:
        if labels is not None:
            raise ValueError("the model is unconditional (num_classes = 0) but class labels were given")
        return None
    if labels is None:
        return [sample_label(seed, i, num_classes) for i in range(num_samples)]
    chosen = [int(labels)] * num_samples if isinstance(labels, int) else [int(v) for v in labels]
    if len(chosen) != num_samples:
        raise ValueError(f"expected one label per sample ({num_samples}), got {len(chosen)}")
    bad = sorted({v for v in chosen if not 0 <= v < num_classes})
    if bad:
        raise ValueError(f"labels must lie in [0, {num_classes}); got {bad}")
    return chosen
