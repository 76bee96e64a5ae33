"""A paired test over test days: is one row's daily IC above another's by more than day-to-day noise?

A lead in seed standard deviations measures seed noise only; the daily IC moves far more from day to day than from
seed to seed. The paired test takes, for each test day both rows scored, the difference of their daily IC (each
row's value averaged over the seeds both rows have), and tests its mean against 0 with a Newey–West (HAC) standard
error, so that the autocorrelation of daily ICs (overlapping labels, persistent regimes) does not inflate the t:

    d_t = mean_s ic_mine[s, t] - mean_s ic_theirs[s, t]           t = 1..n, over the days both rows have
    γ_l = (1/n) Σ_{t>l} (d_t - d̄)(d_{t-l} - d̄)                   autocovariance at lag l (population, 1/n)
    V   = γ_0 + 2 Σ_{l=1..L} (1 - l/(L+1)) γ_l                     Bartlett-weighted long-run variance
    t   = d̄ / sqrt(V / n)

With ``L = 0`` this is the plain paired t with the population variance (``d̄ / (σ_pop / sqrt(n))``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

#: the Newey–West lags the reports use: a trading week
NW_LAGS = 5

#: the per-run daily series each margin metric is tested on (``benchmarks.run`` writes them as ``{date: value}``)
DAILY_KEYS = {"IC": "daily_ic", "Rank IC": "daily_rank_ic"}


def newey_west_t(diff: Sequence[float] | np.ndarray, lags: int = NW_LAGS) -> float:
    """The Newey–West t-statistic of the mean of ``diff`` (a daily series, NaNs dropped) with ``lags`` Bartlett lags.

    ``nan`` with fewer than two values or ``lags >= n``; ``±inf`` when the long-run variance is 0 and the mean is not.
    """
    if lags < 0:
        raise ValueError(f"lags must be >= 0, got {lags}")
    d = np.asarray(diff, dtype=float)
    d = d[~np.isnan(d)]
    n = len(d)
    if n < 2 or lags >= n:
        return math.nan
    e = d - d.mean()
    variance = float(e @ e) / n
    for lag in range(1, lags + 1):
        variance += 2.0 * (1.0 - lag / (lags + 1.0)) * float(e[lag:] @ e[:-lag]) / n
    if variance <= 0.0:
        return math.nan if d.mean() == 0 else math.copysign(math.inf, d.mean())
    return float(d.mean() / math.sqrt(variance / n))


def seed_mean_daily(runs: Sequence[dict], key: str) -> pd.Series | None:
    """The mean over ``runs`` (seeds of one row) of their daily series ``key``, indexed by date; ``None`` if any run
    lacks it (a run made before the series was recorded): a mean over some seeds would not pair with the other row's.
    A day some seed lacks (or scored NaN) is NaN, so it is left out, not averaged over the other seeds.
    """
    series = [r.get(key) for r in runs]
    if not series or any(s is None for s in series):
        return None
    frame = pd.concat([pd.Series(s, dtype=float) for s in series], axis=1)
    return frame.mean(axis=1, skipna=False)


def daily_difference(mine: Sequence[dict], theirs: Sequence[dict], key: str) -> pd.Series | None:
    """The daily difference ``mine - theirs`` of the series ``key`` (``d_t`` above), each side averaged over its runs
    (the seeds both rows have), over the days both sides scored, indexed by date (sorted); ``None`` when a side
    lacks the series."""
    a, b = seed_mean_daily(mine, key), seed_mean_daily(theirs, key)
    if a is None or b is None:
        return None
    diff = (a - b).dropna()
    diff.index = pd.to_datetime(diff.index)
    return diff.sort_index()


def paired_t(mine: Sequence[dict], theirs: Sequence[dict], key: str, lags: int = NW_LAGS) -> float:
    """:func:`newey_west_t` of :func:`daily_difference`; ``nan`` when a side lacks the series."""
    diff = daily_difference(mine, theirs, key)
    return math.nan if diff is None else newey_west_t(diff.to_numpy(), lags)


def by_year(diff: pd.Series, lags: int = NW_LAGS) -> list[tuple[int, int, float, float]]:
    """A daily difference (:func:`daily_difference`) cut by calendar year: ``(year, days, mean, t)`` for each year,
    the t being :func:`newey_west_t` over that year's days alone. A lead that holds should hold in most years; one
    carried by a single year is a regime, not an edge."""
    years = diff.groupby(pd.DatetimeIndex(diff.index).year)
    return [(int(year), len(days), float(days.mean()), newey_west_t(days.to_numpy(), lags)) for year, days in years]
