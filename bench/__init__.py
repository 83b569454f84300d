"""Benchmarks: `python -m bench` runs the core benchmark (see bench/core.py).

Speed is measured here, never in timed tests. Every figure is a median over
several repetitions and comes with a ratio to a baseline measured in the same
invocation, because the machines are shared and noisy.
"""

from __future__ import annotations

import argparse


def positive_int(value: str) -> int:
    """An argparse type: an integer of at least 1."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number
