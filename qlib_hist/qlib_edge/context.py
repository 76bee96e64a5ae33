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
from ..context import MARKET_WINDOWS, aux_label_mask, market_figures, market_names, rank_normalise

RETURN = "$close/Ref($close,1)-1"
AMOUNT = "$close*$volume"


def market_expressions() -> list[str]:
    """The qlib expressions of one index's market state, in the order of :func:`qlib_hist.context.market_figures`."""
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
    """float32 ``[len(days), len(indexes) * FEATURES_PER_INDEX]``: each index's state on each day (index-major).
    On a day an index has no bar (no ``$close``) every figure of that index is NaN, so the core gates the day with
    the train mean, and such days are logged per index with the count and the last one; a figure whose window has
    too few days (the provider's first day has no return) is NaN alone.

    Raises :class:`DataError` naming every index the provider has no bar for on any of those days, or an index
    figure that is infinite (a close or an amount of 0 in the provider) with its first such day."""
    expressions = market_expressions()
    start, end = days.min(), days.max()
    try:
        frame = D.features(list(indexes), [*expressions, "$close"], start_time=start, end_time=end, freq="day")
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
    figures = market_figures()
    parts = []
    for name in indexes:
        read = np.array(frame.xs(name, level=0).reindex(days).to_numpy(dtype=np.float64))  # writable
        values, absent = read[:, :-1], np.isnan(read[:, -1])  # [days, figures], [days] no bar that day
        values[absent] = np.nan
        infinite = np.isinf(values)
        if infinite.any():
            day, figure = np.argwhere(infinite)[0]
            raise DataError(
                f"market_context: {name}'s {figures[figure]} is infinite on {days[day].date()}"
                f"{f' (segment {segment})' if segment else ''}: a close or an amount of 0 in the provider's data of "
                f"{name}; repair or drop that index"
            )
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
        parts.append(values.astype(np.float32))
    return np.concatenate(parts, axis=1)


def check_train_market(market: np.ndarray, indexes: Sequence[str]) -> None:
    """Raises :class:`DataError` naming each figure of ``market`` (``[days, M]``, the train segment's state of
    ``indexes``) that has no value on any train day: the gate could not scale it, and it would be a dead input
    (e.g. ``$volume`` missing for an index leaves its amount figures empty)."""
    empty = np.isnan(market).all(axis=0)
    if empty.any():
        names = [name for name, none in zip(market_names(indexes), empty) if none]
        raise DataError(
            f"market_context: {len(names)} figure(s) have no value on any train day: {', '.join(names[:6])}"
            f"{' ...' if len(names) > 6 else ''}; check that the provider holds $close and $volume of "
            f"{', '.join(sorted({name.split(':')[0] for name in names}))} over the train segment"
        )


def aux_labels(index: pd.MultiIndex, horizons: Sequence[int], last_day: pd.Timestamp) -> np.ndarray:
    """float32 ``[rows, len(horizons)]``: each row's ``k``-day forward return, rank-normalised per day, on ``index``
    ((datetime, instrument), day-sorted). A row whose label reads a close after ``last_day`` (the train segment's
    end) is NaN, so no later price reaches the auxiliary heads."""
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
