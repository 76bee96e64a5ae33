"""Coverage report of a membership table over a qlib market, per calendar year.

For sampled trading days (month-ends by default) the universe of the day is every instrument of
``instruments/<market>.txt`` listed on it; its concept vectors come from :meth:`MembershipConcepts.for_rows`
(the one place that decides membership on a day). Per year, averaged over the sampled days unless noted:

* ``universe``: stocks in the market; ``coverage``: share of them with at least one concept;
* ``concepts_per_stock``: mean number of concepts per stock (stocks without concept count as 0);
* ``active_concepts``: concepts with >= 1 member; ``members_median`` / ``members_max``: median / max members
  per active concept, pooled over all (day, concept) pairs of the year;
* ``single_member``: concepts with exactly one member.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd

from .._plotting import new_figure, save_png
from ..atomic_files import PathLike
from .base import ConceptError
from .legacy_export import read_market_spans
from .membership import MembershipLike, as_source

REPORT_COLUMNS = [
    "days",
    "universe",
    "coverage",
    "concepts_per_stock",
    "active_concepts",
    "members_median",
    "members_max",
    "single_member",
]


def read_calendar(provider_uri: PathLike, freq: str = "day") -> pd.DatetimeIndex:
    """Trading days of ``<provider_uri>/calendars/<freq>.txt`` (one date per line)."""
    path = Path(provider_uri).expanduser() / "calendars" / f"{freq}.txt"
    if not path.is_file():
        raise ConceptError(f"{path}: calendar file not found (provider_uri={provider_uri})")
    text = [s.strip() for s in path.read_text().splitlines() if s.strip()]
    try:
        return pd.DatetimeIndex(pd.to_datetime(text, format="ISO8601")).astype("datetime64[ns]")
    except ValueError as e:
        raise ConceptError(f"{path}: cannot parse calendar dates ({e})") from e


def sample_days(calendar: pd.DatetimeIndex, sample: Union[str, int] = "month_end") -> pd.DatetimeIndex:
    """``'month_end'``: last trading day of each month; an int ``k``: every k-th trading day."""
    if sample == "month_end":
        s = pd.Series(calendar, index=calendar)
        return pd.DatetimeIndex(s.groupby(calendar.to_period("M")).max().to_numpy())
    if isinstance(sample, int) and sample >= 1:
        return calendar[::sample]
    raise ConceptError(f"sample must be 'month_end' or a positive int, got {sample!r}")


def coverage_report(
    membership: MembershipLike, provider_uri: PathLike, market: str, sample: Union[str, int] = "month_end"
) -> pd.DataFrame:
    """Per-year coverage of ``membership`` over ``market`` (columns: :data:`REPORT_COLUMNS`, index: year).

    Only ``calendars/day.txt`` and ``instruments/<market>.txt`` of ``provider_uri`` are read.
    """
    source = as_source(membership)
    days = sample_days(read_calendar(provider_uri), sample)
    spans = read_market_spans(provider_uri, market)
    start, end = spans["start"].to_numpy(), spans["end"].to_numpy()
    inst = spans["instrument"].to_numpy()
    per_day, pairs = [], []
    for day in days.to_numpy():
        members = np.unique(inst[(start <= day) & (end >= day)])
        if len(members) == 0:
            continue
        sc = source.for_rows(members, np.full(len(members), day))
        present = (sc.matrix != 0).astype(np.int64)  # [U, C]
        n_concepts = present.sum(axis=1)[sc.row_index]  # [stocks]
        counts = np.bincount(sc.row_index, minlength=len(sc.matrix)) @ present  # [C] members
        active = counts[counts > 0]
        year = pd.Timestamp(day).year
        per_day.append(
            (
                year,
                len(members),
                float((n_concepts > 0).mean()),
                float(n_concepts.mean()),
                len(active),
                int((active == 1).sum()),
            )
        )
        pairs.append(pd.DataFrame({"year": year, "members": active}))
    if not per_day:
        raise ConceptError(f"{provider_uri}: market {market!r} has no instrument on any sampled calendar day")
    daily = pd.DataFrame(
        per_day, columns=["year", "universe", "coverage", "concepts_per_stock", "active_concepts", "single_member"]
    )
    out = daily.groupby("year").mean()
    out.insert(0, "days", daily.groupby("year").size())
    sizes = pd.concat(pairs).groupby("year")["members"]
    out["members_median"] = sizes.median()
    out["members_max"] = sizes.max()
    return out[REPORT_COLUMNS]


def format_report(df: pd.DataFrame) -> str:
    """Plain-text table of a :func:`coverage_report` result."""
    fmt = {
        "days": "{:.0f}".format,
        "universe": "{:.1f}".format,
        "coverage": "{:.1%}".format,
        "concepts_per_stock": "{:.2f}".format,
        "active_concepts": "{:.1f}".format,
        "members_median": "{:.1f}".format,
        "members_max": "{:.0f}".format,
        "single_member": "{:.1f}".format,
    }
    return df.to_string(formatters={k: v for k, v in fmt.items() if k in df.columns})


def plot_report(df: pd.DataFrame, png_path: PathLike) -> Path:
    """Write a 2x2-panel PNG of a :func:`coverage_report` result (matplotlib Agg, atomic). Returns the path."""
    if Path(png_path).suffix.lower() != ".png":
        raise ConceptError(f"{png_path}: the coverage plot is written as a PNG: give a .png path")
    fig = new_figure((9, 6))
    axes = fig.subplots(2, 2, sharex=True)
    years = df.index.to_numpy()
    panels = [
        (axes[0, 0], [("coverage", "share with >= 1 concept")], "coverage"),
        (axes[0, 1], [("concepts_per_stock", "concepts per stock")], "concepts / stock"),
        (axes[1, 0], [("members_median", "median"), ("members_max", "max")], "members per active concept"),
        (axes[1, 1], [("active_concepts", "active"), ("single_member", "single-member")], "concepts"),
    ]
    for ax, series, title in panels:
        for col, label in series:
            ax.plot(years, df[col].to_numpy(), marker="o", ms=3, label=label)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    axes[0, 0].set_ylim(0, 1.05)
    axes[0, 1].set_ylim(0, max(1.0, float(df["concepts_per_stock"].max()) * 1.15))
    for ax in axes[1]:
        ax.set_xlabel("year")
    fig.suptitle("Concept coverage per year", fontsize=11)
    fig.tight_layout()
    return save_png(fig, png_path)
