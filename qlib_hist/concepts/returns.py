"""Predefined concepts from prices alone, point in time: groups of stocks that move together.

At each refresh date ``t`` (the first trading day of every month, by default):

1. the members are the market's stocks listed on ``t`` (``instruments/<market>.txt``);
2. each member's daily returns over the ``window`` trading days that end *before* ``t`` are read from the
   provider's ``close`` bins (returns on day ``d`` use the closes of ``d`` and ``d - 1``: nothing at or after ``t``);
   a stock with returns on fewer than ``min_history`` of those days gets no concept at ``t`` (counted);
3. market-neutral by default: the day's mean return over the members is removed first, otherwise the first split
   is "high beta vs low beta" rather than industries and styles;
4. each series is standardised (mean 0, norm 1), so the Euclidean distance of two series is
   ``sqrt(2 (1 - corr))``; SciPy's hierarchical clustering with Ward's linkage builds one tree, cut at each
   requested number of clusters (``fcluster(..., "maxclust")``): the levels are nested, like the SW levels.
   Ward rather than average linkage: on return correlations, average linkage leaves one giant cluster and many
   singletons, while Ward's variance criterion gives groups of comparable size, which is what a concept needs;
5. names that mean something over time: level ``k``'s clusters at ``t`` take the names of the previous refresh's
   clusters by a maximum-overlap assignment (SciPy's ``linear_sum_assignment`` on the Jaccard overlap of their
   members), so a group that persists keeps its name (``ret40_17``) and a level never has more than ``k`` names;
   a cluster without a counterpart takes a free name. The log counts the clusters whose match shared at least
   ``min_overlap`` of their members.

The output is the membership table format (``instrument, concept, start_date, end_date``): a run of refreshes in the
same concept is one row, from its first refresh to the trading day before the refresh that ends it (empty
``end_date``: still a member at the last refresh). Reads the provider's files directly: no ``qlib.init``, no qlib.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import pandas as pd

from ..atomic_files import PathLike
from .base import ConceptError
from .legacy_export import read_market_spans
from .report import read_calendar

EVERY = ("week", "month", "quarter")
MIN_WINDOW = 20  # trading days: fewer returns give correlations that are mostly noise


@dataclass(frozen=True)
class ReturnConceptSpec:
    """How :func:`concepts_from_returns` builds concepts (see the module docstring)."""

    window: int = 120  # trading days of returns before each refresh
    every: str = "month"  # refresh on the first trading day of each week / month / quarter
    clusters: Tuple[int, ...] = (10, 40, 120)  # clusters per level, coarse to fine
    min_history: float = 0.9  # share of the window's days a stock needs a return on
    market_neutral: bool = True  # remove the day's mean return of the members first
    min_overlap: float = 0.5  # Jaccard overlap that counts as the same group (for the log's figure)

    def __post_init__(self) -> None:
        if int(self.window) != self.window or self.window < MIN_WINDOW:
            raise ConceptError(f"window must be an integer >= {MIN_WINDOW} trading days, got {self.window!r}")
        if self.every not in EVERY:
            raise ConceptError(f"every must be one of {list(EVERY)}, got {self.every!r}")
        levels = list(self.clusters)
        if not levels or any(int(k) != k or k < 2 for k in levels) or levels != sorted(set(levels)):
            raise ConceptError(f"clusters must be increasing integers >= 2 (e.g. 10,40,120), got {self.clusters!r}")
        if not 0 < self.min_history <= 1 or not 0 < self.min_overlap <= 1:
            raise ConceptError("min_history and min_overlap must be in (0, 1]")


@dataclass
class ReturnConceptStats:
    """What a build did: refreshes, members clustered, stocks left out for too little history, labels kept."""

    refreshes: int = 0
    clustered: int = 0  # stock-refreshes that got concepts
    short_history: int = 0  # stock-refreshes left out: too few returns in the window
    clusters_made: int = 0  # (refresh, level, cluster) triples after the first refresh
    names_kept: int = 0  # ... of which kept the previous refresh's name

    def describe(self) -> str:
        kept = self.names_kept / self.clusters_made if self.clusters_made else float("nan")
        return (
            f"{self.refreshes} refreshes, {self.clustered} stock-refreshes clustered, {self.short_history} left out "
            f"for too little history, {kept:.0%} of clusters kept their name from the previous refresh"
        )


def read_closes(provider_uri: PathLike, instruments: Sequence[str], n_days: int) -> np.ndarray:
    """Closes ``[n_days, len(instruments)]`` float64 from ``features/<inst>/close.day.bin`` (qlib's bin format:
    little-endian float32 ``[first calendar index, values...]``); NaN where a stock has no bar."""
    closes = np.full((n_days, len(instruments)), np.nan)
    features = Path(provider_uri).expanduser() / "features"
    for j, inst in enumerate(instruments):
        path = features / inst.lower() / "close.day.bin"
        if not path.exists():
            continue
        raw = np.fromfile(path, dtype="<f4")
        if len(raw) < 2:
            continue
        first = int(raw[0])
        values = raw[1 : 1 + max(0, n_days - first)].astype(np.float64)
        closes[first : first + len(values), j] = values
    return closes


def refresh_days(calendar: pd.DatetimeIndex, start: pd.Timestamp, end: pd.Timestamp, every: str) -> np.ndarray:
    """Calendar positions of the first trading day of each week / month / quarter in ``[start, end]``."""
    inside = np.flatnonzero((calendar >= start) & (calendar <= end))
    freq = {"week": "W", "month": "M", "quarter": "Q"}[every]
    periods = calendar[inside].to_period(freq)
    first = np.r_[True, periods[1:] != periods[:-1]]
    return inside[first]


def cluster_levels(series: np.ndarray, levels: Sequence[int]) -> np.ndarray:
    """Standardised return series ``[n, window]`` -> cluster ids ``[len(levels), n]`` (1..k), one Ward tree."""
    from scipy.cluster.hierarchy import fcluster, linkage

    tree = linkage(series, method="ward")
    return np.stack([fcluster(tree, k, criterion="maxclust") for k in levels])


class _Names:
    """Level ``k``'s concept names across refreshes: ``ret<k>_0 .. ret<k>_<k-1>``, at most ``k`` names.

    Each refresh's clusters take the previous refresh's names by a maximum-overlap assignment, so a group that
    persists keeps its name and its members' rows run on; a cluster without a counterpart takes a free name.
    """

    def __init__(self, k: int, min_overlap: float) -> None:
        self.k, self.min_overlap = k, min_overlap
        self.previous: Dict[str, Set[str]] = {}

    def name(self, groups: List[Set[str]]) -> Tuple[List[str], int]:
        """Names for this refresh's ``groups`` (member sets); returns (names, how many kept a previous name with
        at least ``min_overlap`` Jaccard overlap)."""
        from scipy.optimize import linear_sum_assignment

        names: List[Optional[str]] = [None] * len(groups)
        kept = 0
        if self.previous:
            old = list(self.previous)
            overlap = np.array([[len(g & self.previous[o]) / len(g | self.previous[o]) for o in old] for g in groups])
            for i, j in zip(*linear_sum_assignment(-overlap)):
                names[i] = old[j]
                kept += int(overlap[i, j] >= self.min_overlap)
        free = (f"ret{self.k}_{n}" for n in range(len(groups) + len(self.previous)) if f"ret{self.k}_{n}" not in names)
        for i in sorted(range(len(groups)), key=lambda i: min(groups[i])):  # free names in a stable order
            if names[i] is None:
                names[i] = next(free)
        final = [str(n) for n in names]
        self.previous = dict(zip(final, groups))
        return final, kept


def _window_series(returns: np.ndarray, rows: slice, members: np.ndarray, spec: ReturnConceptSpec) -> tuple:
    """(kept member columns, standardised series ``[n, window]``) for one refresh."""
    block = returns[rows][:, members]  # [window, m]
    enough = np.isfinite(block).sum(0) >= spec.min_history * spec.window
    block = block[:, enough]
    if spec.market_neutral and block.shape[1]:
        block = block - np.nanmean(block, axis=1, keepdims=True)
    block = block - np.nanmean(block, axis=0, keepdims=True)
    block = np.where(np.isfinite(block), block, 0.0)
    norm = np.linalg.norm(block, axis=0)
    moving = norm > 0  # a stock suspended for the whole window has no co-movement to measure
    return members[enough][moving], (block[:, moving] / norm[moving]).T


def concepts_from_returns(
    provider_uri: PathLike,
    market: str,
    start: str,
    end: str,
    spec: ReturnConceptSpec = ReturnConceptSpec(),
    logger: Optional[logging.Logger] = None,
) -> Tuple[pd.DataFrame, ReturnConceptStats]:
    """The membership table of return-based concepts for ``market`` over ``[start, end]`` (see the module docstring)."""
    log = logger or logging.getLogger("qlib_hist")
    calendar = read_calendar(provider_uri)
    first_ok = calendar[min(spec.window + 1, len(calendar) - 1)]
    begin, finish = pd.Timestamp(start), pd.Timestamp(end)
    if not (calendar[0] <= begin <= calendar[-1] and calendar[0] <= finish <= calendar[-1]) or begin > finish:
        raise ConceptError(
            f"start {start} and end {end} must lie in the provider's calendar ({calendar[0].date()} .. "
            f"{calendar[-1].date()}), start first"
        )
    if begin < first_ok:
        raise ConceptError(
            f"start {start}: a {spec.window}-day window needs data before it; start on {first_ok.date()} or later"
        )
    spans = read_market_spans(provider_uri, market)
    instruments = sorted(set(spans["instrument"]))
    closes = read_closes(provider_uri, instruments, len(calendar))
    with np.errstate(invalid="ignore", divide="ignore"):
        returns = np.full_like(closes, np.nan)
        returns[1:] = closes[1:] / closes[:-1] - 1.0  # row d: the return of day d
    returns[~np.isfinite(returns)] = np.nan
    column = {inst: j for j, inst in enumerate(instruments)}
    names = [_Names(k, spec.min_overlap) for k in spec.clusters]
    stats = ReturnConceptStats()
    open_rows: Dict[Tuple[str, str], pd.Timestamp] = {}
    rows: List[Tuple[str, str, pd.Timestamp, Optional[pd.Timestamp]]] = []
    for position in refresh_days(calendar, begin, finish, spec.every):
        day = calendar[position]
        listed = spans[(spans["start"] <= day) & (spans["end"] >= day)]["instrument"].unique()
        members = np.array(sorted(column[i] for i in listed))
        kept, series = _window_series(returns, slice(position - spec.window, position), members, spec)
        stats.refreshes += 1
        stats.short_history += len(members) - len(kept)
        stats.clustered += len(kept)
        if len(kept) <= spec.clusters[-1]:
            raise ConceptError(
                f"market {market!r} has {len(kept)} stocks with enough history on {day.date()}, not more than the "
                f"{spec.clusters[-1]} clusters asked for: ask for fewer clusters (--clusters) or a larger market"
            )
        current: Set[Tuple[str, str]] = set()
        for level, ids in zip(names, cluster_levels(series, spec.clusters)):
            groups = [{instruments[kept[i]] for i in np.flatnonzero(ids == c)} for c in np.unique(ids)]
            labels, n_kept = level.name(groups)
            if stats.refreshes > 1:
                stats.clusters_made, stats.names_kept = stats.clusters_made + len(groups), stats.names_kept + n_kept
            current |= {(inst, label) for label, group in zip(labels, groups) for inst in group}
        last_day = calendar[position - 1]
        for pair in sorted(set(open_rows) - current):  # left the concept: the row ends the day before
            rows.append((*pair, open_rows.pop(pair), last_day))
        for pair in sorted(current - set(open_rows)):
            open_rows[pair] = day
    rows += [(*pair, begun, None) for pair, begun in sorted(open_rows.items())]
    log.info("concepts from returns (%s, %s .. %s): %s", market, start, end, stats.describe())
    table = pd.DataFrame(rows, columns=["instrument", "concept", "start_date", "end_date"])
    return table.sort_values(["concept", "instrument", "start_date"], ignore_index=True), stats


def merge_memberships(tables: Sequence[pd.DataFrame], sources: Sequence[str]) -> pd.DataFrame:
    """Several membership tables as one (e.g. SW industries and return clusters): a concept name may come from
    one source only, so two sources' concepts never silently merge into one."""
    seen: Dict[str, str] = {}
    for table, source in zip(tables, sources):
        for concept in table["concept"].astype(str).unique():
            if concept in seen and seen[concept] != source:
                raise ConceptError(f"concept {concept!r} is in both {seen[concept]} and {source}: rename one source's")
            seen[concept] = source
    return pd.concat(list(tables), ignore_index=True)
