"""Inputs beyond the handler's features, read through qlib: the market's state (``market_context``) and the labels
of other horizons (``aux_horizons``). The core receives plain arrays (:mod:`qlib_hist.context`).

Market state, after MASTER (Li et al., AAAI 2024): for each index instrument and trading day ``t``, its return on
``t`` and, over the last ``d`` days for ``d`` in :data:`~qlib_hist.context.MARKET_WINDOWS`, the mean and the standard
deviation of its daily return, its traded amount (``$close * $volume``) on ``t`` over the amount's ``d``-day mean,
and the amount's ``d``-day standard deviation over that mean: 1 + 4 x 5 = 21 figures an index, MASTER's 63 for three.
qlib's rolling operators read days up to ``t`` only, so the state of day ``t`` uses nothing after it.

Auxiliary labels: the ``k``-day forward return ``Ref($close, -(k+1)) / Ref($close, -1) - 1`` (Alpha360's label is
``k = 1``), rank-normalised per day as the learn processors' ``CSRankNorm`` does the label.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from qlib.data import D

from ..batches import DataError
from ..context import MARKET_WINDOWS, aux_label_mask, rank_normalise

RETURN = "$close/Ref($close,1)-1"
AMOUNT = "$close*$volume"


def market_expressions() -> list[str]:
    """The qlib expressions of one index's market state, in the order of :func:`qlib_hist.context.market_names`."""
    fields = [RETURN]
    for d in MARKET_WINDOWS:
        fields += [
            f"Mean({RETURN},{d})",
            f"Std({RETURN},{d})",
            f"{AMOUNT}/Mean({AMOUNT},{d})",
            f"Std({AMOUNT},{d})/Mean({AMOUNT},{d})",
        ]
    return fields


def market_features(
    indexes: Sequence[str], days: pd.DatetimeIndex, segment: str = "", logger: Optional[logging.Logger] = None
) -> np.ndarray:
    """float32 ``[len(days), len(indexes) * FEATURES_PER_INDEX]``: each index's state on each day (index-major);
    NaN where an index has no bar that day (the core gates such a day with the train mean), which is logged per
    index with the count and the last such day.

    Raises :class:`DataError` naming every index the provider has no bar for on any of those days."""
    expressions = market_expressions()
    start, end = days.min(), days.max()
    try:
        frame = D.features(list(indexes), expressions, start_time=start, end_time=end, freq="day")
    except Exception as err:  # qlib raises many types for an instrument or field it cannot read
        raise DataError(
            f"market_context {list(indexes)}: qlib cannot read them ({type(err).__name__}: {err})"
        ) from None
    found = set(frame.index.get_level_values(0)) if len(frame) else set()
    missing = [name for name in indexes if name not in found]
    if missing:
        raise DataError(
            f"market_context: the provider has no bar of {', '.join(missing)} between {start.date()} and "
            f"{end.date()}{f' (segment {segment})' if segment else ''}: name index instruments the provider holds "
            "(e.g. SH000300 in qlib's cn_data), and check that their data reach the segment's days"
        )
    parts = []
    for name in indexes:
        values = frame.xs(name, level=0).reindex(days).to_numpy(dtype=np.float32)
        absent = np.isnan(values[:, 0])  # no return that day: no bar (or none the day before)
        if absent.any() and logger is not None:
            logger.warning(
                "market_context: %s has no bar on %d of %d days%s (the last %s): those days are gated with the "
                "train days' mean state",
                name,
                int(absent.sum()),
                len(days),
                f" of segment {segment}" if segment else "",
                days[absent][-1].date(),
            )
        parts.append(values)
    return np.concatenate(parts, axis=1)


def aux_labels(index: pd.MultiIndex, horizons: Sequence[int], last_day: pd.Timestamp) -> np.ndarray:
    """float32 ``[rows, len(horizons)]``: each row's ``k``-day forward return, rank-normalised per day, on ``index``
    ((datetime, instrument), day-sorted). A row whose label reads a close after ``last_day`` (the train segment's
    end) is NaN, so no later price reaches training."""
    dates = index.get_level_values(0)
    instruments = sorted(index.get_level_values(1).unique())
    expressions = [f"Ref($close,{-(k + 1)})/Ref($close,-1)-1" for k in horizons]
    frame = D.features(instruments, expressions, start_time=dates.min(), end_time=dates.max(), freq="day")
    frame.index = frame.index.swaplevel().set_names(["datetime", "instrument"])
    raw = np.array(frame.reindex(index).to_numpy(dtype=np.float64))  # writable
    calendar = pd.DatetimeIndex(D.calendar(start_time=dates.min(), freq="day"))
    keep = aux_label_mask(np.asarray(dates), horizons, calendar, last_day)
    raw[~keep] = np.nan
    return rank_normalise(raw, np.asarray(dates)).astype(np.float32)
