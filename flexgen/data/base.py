"""What every dataset of the data layer shares: its errors and warning, the record of a skipped item, the error
describer, the seeded per-item randomness, and `SkipAndReplaceDataset`, the base of the clip and caption datasets.

Randomness of item i in epoch e comes from a numpy Generator seeded with (seed, e, i, ...) (`item_rng`), so items
do not depend on the worker or the order of access; `set_epoch(e)` gives new draws. Bad input never ends an epoch:
an item that fails to decode is recorded in `skipped`, named in a `DataWarning`, not used again by that process, and
replaced by the next index (its draws still depend only on (seed, epoch, index, attempt)).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from torch.utils.data import Dataset

T = TypeVar("T")


# ----------------------------------------------------------------------------------------------------------
# Errors and warnings.


class DatasetLayoutError(ValueError):
    """A dataset root that does not have the layout its preset expects (or does not exist)."""


class VideoDecodeError(RuntimeError):
    """A clip that none of the decoders could read."""


class MissingTextEmbedding(FileNotFoundError):
    """A caption whose T5 embedding is not in the cache (fill it with `flexgen data cache-text`)."""


class DataWarning(UserWarning):
    """A clip or file skipped by the data layer (the message names it and says why)."""


@dataclass(frozen=True)
class Skipped:
    path: str           # the file or folder left out
    reason: str


def describe_error(error: BaseException) -> str:
    """"Type: first line of the message", at most 300 characters: the reason recorded for a skipped item."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


# ----------------------------------------------------------------------------------------------------------
# Seeded per-item randomness.


def item_rng(seed: int, epoch: int, index: int, *streams: int) -> np.random.Generator:
    """The Generator of item `index` in `epoch`; `streams` tell apart the draws of one item (e.g. attempt)."""
    return np.random.default_rng([seed, epoch, index, *streams])


# ----------------------------------------------------------------------------------------------------------
# The base dataset: seeded items, skip-and-replace.


class SkipAndReplaceDataset(Dataset):
    """A map-style dataset whose items are drawn from (seed, epoch, index) and whose bad items are replaced by the
    next index. Subclasses set `root`, fill `skipped` while indexing, and implement `__len__` and `item_path`.

    Attributes: `seed`, `epoch`, `skipped` (every item left out, with its reason; with DataLoader workers,
    decode-time failures are recorded in the worker's copy)."""

    item_name = "item"                              # "clip", "image": named in warnings and errors
    exhausted_error: type[Exception] = OSError      # raised when no item of the dataset can be read

    def __init__(self, root: str | Path, seed: int = 0):
        self.root = Path(root)
        self.seed, self.epoch = seed, 0
        self.skipped: list[Skipped] = []
        self._failed: set[int] = set()              # items that failed to decode in this process

    def item_path(self, j: int) -> str:
        """The file or folder of item `j` (named when it fails)."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """New random draws for every item (same epoch + seed = same items)."""
        self.epoch = int(epoch)

    def rng(self, index: int, *streams: int) -> np.random.Generator:
        """`item_rng` of item `index` in the current epoch."""
        return item_rng(self.seed, self.epoch, index, *streams)

    def warn_skipped(self, kept: str, prefix: str = "", limit: int | None = None, stacklevel: int = 3) -> None:
        """One DataWarning naming the items skipped while indexing (the first `limit` when given; all are in
        `skipped`), e.g. "ffs /data: skipped 2 item(s), kept 5 clips:"."""
        if not self.skipped:
            return
        shown = self.skipped if limit is None else self.skipped[:limit]
        lines = "\n".join(f"  {s.path}: {s.reason}" for s in shown)
        more = f"\n  ... and {len(self.skipped) - len(shown)} more (see dataset.skipped)" \
            if len(shown) < len(self.skipped) else ""
        warnings.warn(f"{prefix}{self.root}: skipped {len(self.skipped)} item(s), kept {kept}:\n{lines}{more}",
                      DataWarning, stacklevel=stacklevel)

    def fail(self, j: int, error: Exception, stacklevel: int = 4) -> None:
        """Record item `j` as undecodable: counted in `skipped`, warned (the warning points `stacklevel` frames
        up), never tried again by this process."""
        self._failed.add(j)
        skipped = Skipped(self.item_path(j), f"decoding failed ({describe_error(error)})")
        self.skipped.append(skipped)
        warnings.warn(f"{skipped.path}: {skipped.reason}; another {self.item_name} is used instead", DataWarning,
                      stacklevel=stacklevel)

    def first_readable(self, index: int, read: Callable[[int, int], T], stacklevel: int = 3) -> tuple[T, int]:
        """`read(j, attempt)` for j = index, index + 1, ... (mod len) until one succeeds, skipping failed items;
        returns its result and j. A failure is recorded (`fail`; its warning points `stacklevel` frames up from
        here: 3 is the caller of `__getitem__` when `__getitem__` calls this) and the next item is tried."""
        n = len(self)
        for attempt in range(n):
            j = (index + attempt) % n
            if j in self._failed:
                continue
            try:
                return read(j, attempt), j
            except Exception as e:                              # counted, warned, replaced by the next item
                self.fail(j, e, stacklevel=stacklevel + 1)
        raise self.exhausted_error(f"none of the {n} {self.item_name}s of {self.root} could be decoded; see "
                                   "dataset.skipped")
