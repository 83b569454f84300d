"""Benchmarks: `python -m bench` runs the core benchmark (see bench/core.py).

Speed is measured here, never in timed tests. Every figure is a median over
several repetitions and comes with a ratio to a baseline measured in the same
invocation, because the machines are shared and noisy.
"""
