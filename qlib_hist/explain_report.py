"""Plots and files made from an explanation table (:func:`qlib_hist.explain.explain_batches`), and the check of its
``top`` (:func:`check_top`, shared with the qrun record).

Drawn with matplotlib's ``Figure`` API (no pyplot: a notebook's backend is left alone). No qlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Union

import numpy as np
import pandas as pd

from ._plotting import new_figure, save_png
from .atomic_files import PathLike, atomic_path
from .config_dates import as_timestamp
from .errors import QlibHistError
from .network import OUTPUT_PARTS as PARTS

COLOURS = {"concept": "tab:blue", "hidden_concept": "tab:orange", "individual": "tab:green", "bias": "tab:grey"}
DPI = 110


def check_top(top: Any) -> int:
    """``top`` (how many concepts, peers and days to list per prediction) as an int >= 0, or a
    :class:`~qlib_hist.errors.QlibHistError` naming it."""
    if isinstance(top, (bool, np.bool_)) or not isinstance(top, (int, np.integer)) or top < 0:
        raise QlibHistError(
            f"top must be a whole number >= 0 (the concepts, peers and days to list per prediction), got {top!r}"
        )
    return int(top)


def plot_day(table: pd.DataFrame, day: Union[str, pd.Timestamp], png_path: PathLike, n: int = 20) -> Path:
    """For one day, the ``n`` highest-scored stocks' predictions split into their parts (stacked bars)."""
    rows = table.xs(pd.Timestamp(day), level=0).nlargest(n, "score")
    fig = new_figure((10, 4.5))
    ax = fig.subplots()
    x = np.arange(len(rows))
    for sign in (1, -1):  # positive parts stack up from 0, negative ones down
        bottom = np.zeros(len(rows))
        for name in PARTS + ("bias",):
            values = rows[name].to_numpy()
            part = np.where(np.sign(values) == sign, values, 0.0)
            ax.bar(x, part, bottom=bottom, label=name if sign == 1 else None, color=COLOURS[name])
            bottom += part
    ax.plot(x, rows["score"].to_numpy(), "k_", markersize=14, label="score")
    ax.set_xticks(x, rows.index, rotation=60, fontsize=7)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_title(f"Top {len(rows)} predictions on {pd.Timestamp(day).date()}: parts of each score")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, png_path, DPI)


def plot_shares(table: pd.DataFrame, png_path: PathLike) -> Path:
    """Over the segment: each day's mean absolute contribution of each part, as a share of their total."""
    daily = table[list(PARTS)].abs().groupby(level=0).mean()
    shares = daily.div(daily.sum(axis=1), axis=0)
    fig = new_figure((10, 4))
    ax = fig.subplots()
    ax.stackplot(shares.index, *[shares[c] for c in PARTS], labels=PARTS, colors=[COLOURS[c] for c in PARTS])
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of mean |part|")
    ax.set_title("Daily mean absolute share of each part of the prediction")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return save_png(fig, png_path, DPI)


def write_explanation(
    table: pd.DataFrame, out_dir: PathLike, day: Optional[Union[str, pd.Timestamp]] = None
) -> List[Path]:
    """Save ``explanations.pkl`` and the two plots (for ``day``, default the last day) in ``out_dir``."""
    out_dir = Path(out_dir)
    days = table.index.get_level_values(0)
    when = pd.Timestamp(days.max()) if day is None else as_timestamp(day, "day")
    if when not in set(days):
        raise QlibHistError(
            f"day {when.date()} is not a day of the explanation ({days.min().date()} .. {days.max().date()})"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [plot_day(table, when, out_dir / "explain_day.png"), plot_shares(table, out_dir / "explain_shares.png")]
    with atomic_path(out_dir / "explanations.pkl") as tmp:  # last: a table on disk always has its plots
        table.to_pickle(tmp)
    return [out_dir / "explanations.pkl", *plots]
