"""Number types for the command line's options: a bad value is named by argparse before any work starts
(`argument --steps: must be at least 1, got 0`), never a late traceback or a silent default."""

from __future__ import annotations

import argparse
import math


def at_least(minimum: float, kind: type = int):
    """An argparse type: a number of `kind` no smaller than `minimum` (argparse names the option on failure)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {text}")
        return value
    return parse


POSITIVE, COUNT, NON_NEGATIVE = at_least(1), at_least(0), at_least(0.0, float)


def device(text: str) -> str:
    """An argparse type: cpu, cuda (this rank's GPU, cuda:LOCAL_RANK) or cuda:N that this machine has, as torch
    names it (`flexgen.dist.parse_device`)."""
    from flexgen.dist import parse_device

    try:
        return str(parse_device(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(f"--device {text}: ")
                                         .removeprefix(f"--device {text!r}: ")) from None
