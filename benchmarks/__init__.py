"""Benchmark runners and their committed results; never imported by :mod:`qlib_hist`.

Run each script as a module from the repository root, e.g. ``python -m benchmarks.run --help``.
"""
