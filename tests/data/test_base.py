"""The shared dataset mechanics (flexgen/data/base.py): seeded per-item randomness, skip-and-replace with the failed
items counted and named, and the error describer. The clip and caption datasets are tested on real files in
tests/data/test_video.py and tests/data/test_captions.py."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from flexgen.data.base import DataWarning, SkipAndReplaceDataset, describe_error, item_rng


class Numbers(SkipAndReplaceDataset):
    """Items 0..n-1; the items in `broken` raise when read. An item is (its number, one seeded draw)."""

    item_name = "number"

    def __init__(self, n: int, broken: set[int], seed: int = 0):
        super().__init__("/numbers", seed)
        self.n, self.broken, self.reads = n, broken, []

    def __len__(self) -> int:
        return self.n

    def item_path(self, j: int) -> str:
        return f"/numbers/{j}"

    def read(self, j: int, attempt: int) -> tuple[int, float]:
        self.reads.append(j)
        if j in self.broken:
            raise OSError(f"number {j} is broken\nsecond line")
        return j, float(self.rng(0, attempt).random())

    def __getitem__(self, index: int) -> tuple[tuple[int, float], int]:
        return self.first_readable(index, self.read)


def test_item_rng_is_a_function_of_seed_epoch_index_and_streams():
    a, b = item_rng(3, 1, 7, 0, 2), np.random.default_rng([3, 1, 7, 0, 2])
    assert a.random() == b.random()
    assert item_rng(3, 1, 7).random() != item_rng(3, 2, 7).random() != item_rng(4, 1, 7).random()
    data = Numbers(4, set(), seed=3)
    data.set_epoch(1)
    assert data.epoch == 1 and data.rng(7, 0, 2).random() == item_rng(3, 1, 7, 0, 2).random()


def test_a_broken_item_is_replaced_by_the_next_counted_once_and_named():
    data = Numbers(4, {1, 3})
    with pytest.warns(DataWarning, match=r"/numbers/1: decoding failed \(OSError: number 1 is broken\); another "
                                         r"number is used instead"):
        (value, draw), j = data[1]
    assert (value, j) == (2, 2) and draw == item_rng(0, 0, 0, 1).random()      # attempt 1 of item 1
    with pytest.warns(DataWarning, match="/numbers/3"):
        assert data[3][1] == 0                                                   # wraps around
    assert [(s.path, s.reason) for s in data.skipped] == [
        ("/numbers/1", "decoding failed (OSError: number 1 is broken)"),
        ("/numbers/3", "decoding failed (OSError: number 3 is broken)")]
    data.reads.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                           # not retried, not re-warned
        assert data[1][1] == 2 and data.reads == [2]
    assert len(data.skipped) == 2


def test_no_readable_item_is_an_error_naming_the_root():
    data = Numbers(2, {0, 1})
    with pytest.warns(DataWarning), pytest.raises(OSError, match="none of the 2 numbers of /numbers"):
        data[0]


def test_describe_error_names_the_type_and_the_first_line():
    assert describe_error(ValueError("bad value\nmore detail")) == "ValueError: bad value"
    assert describe_error(RuntimeError()) == "RuntimeError: "
    assert len(describe_error(OSError("x" * 1000))) == 300
