"""Benchmark runners and their committed results; never imported by :mod:`qlib_hist`.

Run each script as a module from the repository root, e.g. ``python -m benchmarks.run --help``.
"""

from __future__ import annotations

import argparse


def script_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The command-line parser a benchmark script starts from: ``python -m <module>``, its docstring as the help's
    description, kept as written."""
    return argparse.ArgumentParser(
        prog=f"python -m {module}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
