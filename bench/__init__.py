"""Benchmarks: `python -m bench.bench`."""
