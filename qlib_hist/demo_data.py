"""A deterministic synthetic market with planted concept structure, written as a qlib provider directory.

The demo workflow and the tests need data that (a) qlib reads like its own ``cn_data`` bundle and (b) holds a
signal HIST can find in a few epochs. The generator plants it in the concepts:

* every stock belongs to one or two of ``n_concepts`` concepts (``concept_0`` ...); a handful of stocks switch
  their main concept once, mid-calendar (point-in-time membership);
* daily log return ``r[t, i] = beta_i * market[t] + sum_c member[t, i, c] * f[c, t] + idio[t, i]``;
* each concept factor has momentum, ``f[c, t] = PHI * mean(f[c, t-5:t]) + noise``, so a stock's next-day return
  is forecastable from its concept peers' last five returns. The idiosyncratic noise is large, so a stock's own
  history is a much weaker signal than the average of its peers.

Layout of ``write_demo_provider(out_dir)``::

    out_dir/provider/calendars/day.txt            business days (Mon-Fri), one "YYYY-MM-DD" a line
    out_dir/provider/instruments/<market>.txt     "INSTRUMENT<TAB>first day<TAB>last day", stocks only
    out_dir/provider/instruments/all.txt          the same plus the benchmark index
    out_dir/provider/features/<inst>/<f>.day.bin  little-endian float32: [first calendar index, values...]
    out_dir/stock2concept.npy                     legacy HIST matrix, snapshot as of the last calendar day
    out_dir/stock_index.npy                       pickled dict {instrument: matrix row}, as qlib ships it
    out_dir/concept_membership.csv                point-in-time membership (see ``DemoData.membership``)
    out_dir/demo_meta.json                        marks the directory as demo output (written last)
"""

from __future__ import annotations

import json
import operator
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import numpy as np
import pandas as pd

from .atomic_files import PathLike, atomic_write_bytes, atomic_write_text, npy_bytes
from .errors import QlibHistError

MARKET = "demo"
BENCHMARK = "SH000300"
FIELDS = ("open", "high", "low", "close", "vwap", "volume", "factor", "change")
MARKER = "demo_meta.json"
FORMAT = "qlib_hist demo provider v1"

# Return model, daily log-return units.
PHI = 0.9  # concept momentum: f[t] = PHI * mean of the previous MOMENTUM_DAYS factor values + noise
MOMENTUM_DAYS = 5
SIGMA_MARKET = 0.010  # market factor std
SIGMA_CONCEPT = 0.006  # concept factor innovation std
SIGMA_IDIO = (0.020, 0.035)  # range of per-stock idiosyncratic std
BURN_IN = 100  # factor days simulated and discarded before the calendar starts
STREAMS = ("listing", "membership", "factors", "stocks", "bars")  # independent random streams per seed


def _rng(seed: int, stream: str) -> np.random.Generator:
    """The random stream ``stream`` of ``seed``: changing how much one component draws leaves the others alone."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(STREAMS.index(stream),)))


@dataclass
class DemoData:
    """Where the demo data lies and which stocks exercise the special cases.

    Attributes:
        provider_uri: the qlib provider directory (pass to ``qlib.init(provider_uri=...)``).
        market: instruments file name, e.g. ``"demo"`` (stocks only, not the benchmark).
        benchmark: index instrument ``"SH000300"``, an equal-weight index of the listed stocks (in ``all``).
        start, end: first and last calendar day, ``"YYYY-MM-DD"``.
        stock2concept: ``.npy`` float32 ``[len(stock_index), n_concepts]``, 0/1, membership as of ``end``.
        stock_index: ``.npy`` pickled dict ``{instrument: row of stock2concept}``; load with
            ``np.load(p, allow_pickle=True).item()``. Lacks the ``unindexed`` stocks.
        membership: CSV ``instrument,concept,start_date,end_date``; both dates are inclusive trading days,
            an empty ``end_date`` means still a member. Covers every stock, including ``unindexed``.
        instruments: all stocks of ``market``, in generation order.
        concepts: concept names ``concept_0 .. concept_{C-1}`` (column order of ``stock2concept``).
        late_listed: stocks whose data starts after ``start`` (listing day ~20-33% into the calendar).
        delisted: stocks whose data ends before ``end`` (last day ~67-80% into the calendar).
        unindexed: stocks missing from ``stock_index``/``stock2concept`` ("unknown stock" for legacy HIST).
        switched: stocks that move from one concept to another mid-calendar (empty when ``n_concepts == 1``).
    """

    provider_uri: Path
    market: str
    benchmark: str
    start: str
    end: str
    stock2concept: Path
    stock_index: Path
    membership: Path
    instruments: List[str]
    concepts: List[str] = field(default_factory=list)
    late_listed: List[str] = field(default_factory=list)
    delisted: List[str] = field(default_factory=list)
    unindexed: List[str] = field(default_factory=list)
    switched: List[str] = field(default_factory=list)


@dataclass
class _Market:
    """The simulated market in memory (``T`` days, ``N`` stocks, ``C`` concepts)."""

    calendar: pd.DatetimeIndex  # [T]
    instruments: List[str]  # [N]
    first: np.ndarray  # int [N], calendar index of the first listed day
    last: np.ndarray  # int [N], calendar index of the last listed day (inclusive)
    members: np.ndarray  # bool [T, N, C], point-in-time membership
    membership: pd.DataFrame  # instrument, concept, start_date, end_date
    log_ret: np.ndarray  # float64 [T, N], daily log returns (defined on unlisted days too; not written there)
    unindexed: List[str]
    switched: List[str]


def _stock_names(n: int) -> List[str]:
    """``n`` made-up qlib codes, alternating Shanghai main board and Shenzhen: SH600000, SZ000001, SH600001 ..."""
    return [f"SH{600000 + i // 2}" if i % 2 == 0 else f"SZ{1 + i // 2:06d}" for i in range(n)]


def _concept_factors(n_concepts: int, n_days: int, rng: np.random.Generator) -> np.ndarray:
    """Momentum concept factors, float64 ``[C, T]`` daily log returns (AR on the mean of the last 5 values)."""
    f = np.zeros((n_concepts, n_days + BURN_IN))
    noise = rng.normal(0.0, SIGMA_CONCEPT, size=f.shape)
    for t in range(f.shape[1]):
        past = f[:, max(0, t - MOMENTUM_DAYS) : t]
        f[:, t] = (PHI * past.mean(axis=1) if t else 0.0) + noise[:, t]
    return f[:, BURN_IN:]


def _membership(
    n_stocks: int,
    n_concepts: int,
    calendar: pd.DatetimeIndex,
    first: np.ndarray,
    eligible: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """Point-in-time concept membership.

    Returns ``members`` bool ``[T, N, C]``, the CSV rows, and the indices of the stocks that switch concept.
    Switchers are drawn from ``eligible`` (stocks listed on every day, without a second concept).
    """
    n_days = len(calendar)
    primary = rng.permutation(np.arange(n_stocks) % n_concepts)  # every concept gets >= 2 stocks
    second = np.full(n_stocks, -1)
    if n_concepts > 1:
        has_second = rng.random(n_stocks) < 0.3
        shift = rng.integers(1, n_concepts, size=n_stocks)
        second[has_second] = (primary[has_second] + shift[has_second]) % n_concepts
    # (stock, concept, first day, last day) spans, day indices inclusive
    spans = [(i, int(c), int(first[i]), n_days - 1) for i in range(n_stocks) for c in (primary[i], second[i]) if c >= 0]

    switchers = np.array([], dtype=int)
    if n_concepts > 1:
        pool = np.flatnonzero(eligible & (second < 0))
        switchers = np.sort(rng.choice(pool, size=min(len(pool), max(2, n_stocks // 25)), replace=False))
        for i in switchers:
            day = int(rng.integers(int(0.35 * n_days), int(0.65 * n_days)))
            new = int((primary[i] + rng.integers(1, n_concepts)) % n_concepts)
            k = spans.index((i, int(primary[i]), int(first[i]), n_days - 1))
            spans[k] = (i, int(primary[i]), int(first[i]), day - 1)
            spans.append((i, new, day, n_days - 1))

    members = np.zeros((n_days, n_stocks, n_concepts), dtype=bool)
    for i, c, lo, hi in spans:
        members[lo : hi + 1, i, c] = True

    names = _stock_names(n_stocks)
    dates = calendar.strftime("%Y-%m-%d")
    rows = pd.DataFrame(
        [(names[i], f"concept_{c}", dates[lo], "" if hi == n_days - 1 else dates[hi]) for i, c, lo, hi in spans],
        columns=["instrument", "concept", "start_date", "end_date"],
    ).sort_values(["instrument", "start_date", "concept"], ignore_index=True)
    return members, rows, switchers


def _simulate(n_stocks: int, n_concepts: int, n_days: int, seed: int, start: str) -> _Market:
    """Draw the whole market (no bars yet)."""
    r_list, r_member, r_factor, r_stock = (_rng(seed, s) for s in STREAMS[:4])
    calendar = pd.bdate_range(start=start, periods=n_days)
    names = _stock_names(n_stocks)

    k = max(1, n_stocks // 30)
    late, delisted, unindexed = np.sort(r_list.choice(n_stocks, size=3 * k, replace=False).reshape(3, k), axis=1)
    first = np.zeros(n_stocks, dtype=int)
    last = np.full(n_stocks, n_days - 1)
    first[late] = r_list.integers(n_days // 5, n_days // 3, size=k)
    last[delisted] = r_list.integers(2 * n_days // 3, 4 * n_days // 5, size=k)
    eligible = (first == 0) & (last == n_days - 1)
    eligible[unindexed] = False

    members, rows, switchers = _membership(n_stocks, n_concepts, calendar, first, eligible, r_member)
    market = r_factor.normal(0.0003, SIGMA_MARKET, size=n_days)
    factors = _concept_factors(n_concepts, n_days, r_factor)
    beta = r_stock.uniform(0.6, 1.4, size=n_stocks)
    idio = r_stock.normal(size=(n_days, n_stocks)) * r_stock.uniform(*SIGMA_IDIO, size=n_stocks)
    log_ret = market[:, None] * beta + np.einsum("tnc,ct->tn", members, factors) + idio
    return _Market(
        calendar,
        names,
        first,
        last,
        members,
        rows,
        log_ret,
        unindexed=[names[i] for i in unindexed],
        switched=[names[i] for i in switchers],
    )


def _bars(
    log_ret: np.ndarray, price0: np.ndarray, volume0: np.ndarray, rng: np.random.Generator
) -> Dict[str, np.ndarray]:
    """Daily bars, float64 ``[T, K]`` per field, consistent so that ``low <= open, close, vwap <= high``.

    Args:
        log_ret: ``[T, K]`` close-to-close log returns.
        price0: ``[K]`` close before day 0 (yuan).
        volume0: ``[K]`` typical daily volume (shares).
    """
    close = price0 * np.exp(np.cumsum(log_ret, axis=0))
    prev_close = close * np.exp(-log_ret)
    open_ = prev_close * np.exp(0.25 * log_ret + rng.normal(0.0, 0.002, size=close.shape))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.006, size=close.shape)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.006, size=close.shape)))
    vwap = low + (high - low) * rng.uniform(0.3, 0.7, size=close.shape)
    volume = volume0 * np.exp(rng.normal(0.0, 0.3, size=close.shape)) * (1.0 + 25.0 * np.abs(log_ret))
    return {"open": open_, "high": high, "low": low, "close": close, "vwap": vwap, "volume": volume}


def _bin(first: int, values: np.ndarray) -> bytes:
    """qlib ``.day.bin`` bytes: little-endian float32 ``[first calendar index, *values]``."""
    return np.concatenate([[float(first)], values]).astype("<f4").tobytes()


def _write_provider(root: Path, m: _Market, rng: np.random.Generator) -> None:
    """Write calendar, instruments and feature bins of ``m`` and its benchmark index under ``root``."""
    n_days, n_stocks = m.log_ret.shape
    listed = (np.arange(n_days)[:, None] >= m.first) & (np.arange(n_days)[:, None] <= m.last)  # [T, N]
    index_ret = np.log((np.exp(m.log_ret) * listed).sum(axis=1) / listed.sum(axis=1))  # equal-weight, rebalanced
    bars = _bars(
        np.column_stack([m.log_ret, index_ret]),
        price0=np.append(np.exp(rng.uniform(np.log(4.0), np.log(40.0), size=n_stocks)), 1000.0),
        volume0=np.append(np.exp(rng.uniform(np.log(1e5), np.log(1e7), size=n_stocks)), 1.0),
        rng=rng,
    )
    bars["volume"][:, -1] = (bars["volume"][:, :-1] * listed).sum(axis=1)

    dates = m.calendar.strftime("%Y-%m-%d")
    atomic_write_text(root / "calendars" / "day.txt", "".join(f"{d}\n" for d in dates))
    names = m.instruments + [BENCHMARK]
    first = np.append(m.first, 0)
    last = np.append(m.last, n_days - 1)
    lines = [f"{name}\t{dates[a]}\t{dates[b]}\n" for name, a, b in zip(names, first, last)]
    atomic_write_text(root / "instruments" / f"{MARKET}.txt", "".join(lines[:-1]))
    atomic_write_text(root / "instruments" / "all.txt", "".join(lines))

    for j, name in enumerate(names):
        a, b = int(first[j]), int(last[j]) + 1
        series = {f: bars[f][a:b, j].astype(np.float32) for f in bars}
        series["factor"] = np.ones(b - a, dtype=np.float32)
        close = series["close"].astype(np.float64)
        series["change"] = np.concatenate([[np.nan], close[1:] / close[:-1] - 1.0])
        for f in FIELDS:
            atomic_write_bytes(root / "features" / name.lower() / f"{f}.day.bin", _bin(a, series[f]))


def _check_args(out_dir: Path, n_stocks: int, n_concepts: int, n_days: int, seed: int, start: str) -> None:
    """Raise a :class:`~qlib_hist.errors.QlibHistError` naming the first bad argument."""
    if not 10 <= n_stocks <= 5000:
        raise QlibHistError(f"n_stocks must be in [10, 5000], got {n_stocks}")
    if not 1 <= n_concepts <= n_stocks // 2:
        raise QlibHistError(f"n_concepts must be in [1, n_stocks // 2] (>= 2 stocks each), got {n_concepts}")
    if not 120 <= n_days <= 20000:
        raise QlibHistError(f"n_days must be in [120, 20000] (the model needs a 60-day window), got {n_days}")
    if seed < 0:
        raise QlibHistError(f"seed must be >= 0, got {seed}")
    try:
        ok = not pd.isna(pd.Timestamp(start))
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise QlibHistError(f"start must be a date 'YYYY-MM-DD', got {start!r}")
    if out_dir.exists() and not out_dir.is_dir():
        raise QlibHistError(f"out_dir {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MARKER).is_file():
        raise QlibHistError(f"out_dir {out_dir} is non-empty and not an earlier demo output (no {MARKER})")


def write_demo_provider(
    out_dir: PathLike,
    n_stocks: int = 100,
    n_concepts: int = 8,
    n_days: int = 700,
    seed: int = 0,
    start: str = "2016-01-04",
) -> DemoData:
    """Generate the synthetic market and write it under ``out_dir`` (see the module docstring for the layout).

    Args:
        out_dir: a new or empty directory, or an earlier output of this function (replaced).
        n_stocks: stocks in the market (>= 10). About 1/30 of them each are listed late, delisted early, or
            missing from ``stock_index``; those three groups are disjoint.
        n_concepts: concepts (>= 1, at most ``n_stocks // 2``).
        n_days: calendar length in business days (>= 120).
        seed: the same seed gives byte-identical files.
        start: first calendar day, ``"YYYY-MM-DD"``; a weekend rolls forward to Monday.

    Returns:
        ``DemoData`` with the paths and the stocks of each special case.

    The provider is built in a hidden directory beside ``provider`` and renamed into place; every file is
    written atomically, ``demo_meta.json`` last.
    """
    out_dir = Path(out_dir)
    n_stocks, n_concepts, n_days, seed = (operator.index(v) for v in (n_stocks, n_concepts, n_days, seed))
    _check_args(out_dir, n_stocks, n_concepts, n_days, seed, start)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".provider.*"):  # leftovers of an interrupted earlier call
        shutil.rmtree(stale, ignore_errors=True)

    m = _simulate(n_stocks, n_concepts, n_days, seed, start)
    building = Path(tempfile.mkdtemp(prefix=".provider.new.", dir=out_dir))
    _write_provider(building, m, _rng(seed, "bars"))
    provider = out_dir / "provider"
    if provider.exists():
        old = Path(tempfile.mkdtemp(prefix=".provider.old.", dir=out_dir))
        provider.rename(old / "provider")
        building.rename(provider)
        shutil.rmtree(old)
    else:
        building.rename(provider)

    unindexed = set(m.unindexed)
    indexed = [i for i, name in enumerate(m.instruments) if name not in unindexed]
    stock_index = {m.instruments[i]: row for row, i in enumerate(indexed)}
    matrix = m.members[-1, indexed].astype(np.float32)
    s2c_path, index_path, membership_path = (
        out_dir / name for name in ("stock2concept.npy", "stock_index.npy", "concept_membership.csv")
    )
    atomic_write_bytes(s2c_path, npy_bytes(matrix))
    atomic_write_bytes(index_path, npy_bytes(stock_index))
    atomic_write_text(membership_path, m.membership.to_csv(index=False, lineterminator="\n"))
    first_day, last_day = (str(day.date()) for day in m.calendar[[0, -1]])
    meta = dict(format=FORMAT, n_stocks=n_stocks, n_concepts=n_concepts, n_days=n_days, seed=seed, start=first_day)
    atomic_write_text(out_dir / MARKER, json.dumps(meta, indent=1, sort_keys=True) + "\n")

    names = np.array(m.instruments)
    return DemoData(
        provider_uri=provider,
        market=MARKET,
        benchmark=BENCHMARK,
        start=first_day,
        end=last_day,
        stock2concept=s2c_path,
        stock_index=index_path,
        membership=membership_path,
        instruments=list(m.instruments),
        concepts=[f"concept_{c}" for c in range(n_concepts)],
        late_listed=names[m.first > 0].tolist(),
        delisted=names[m.last < n_days - 1].tolist(),
        unindexed=list(m.unindexed),
        switched=list(m.switched),
    )
