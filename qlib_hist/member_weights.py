"""Per-stock, per-day member weights ``w_i`` for the predefined-concept module (the paper weights by market value).

``concept_weight`` names the source:

- a qlib expression (anything with a ``$``), e.g. ``"$close * $volume"`` or a market-cap field your provider has,
  evaluated by the qlib edge (:mod:`qlib_hist.qlib_edge.expressions`) over the segment's instruments and days;
- a table file (``.csv`` / ``.parquet``) with columns ``instrument, datetime, value`` (:func:`read_weight_table`).

Values that are missing, not finite or not positive get the day's median of the valid ones (never another
stock's value); a day with no valid value gets 1 for every stock. Each day is then divided by its mean, so the
weights are scale-free and uniform values give exactly qlib's (unweighted) concept formula.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd

from .batches import DataError

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


def read_weight_table(path: Path) -> pd.Series:
    """Raw values of a weight table (``.csv`` or ``.parquet``), on a (datetime, instrument) index."""
    if not path.exists():
        raise DataError(f"concept_weight table {path} does not exist")
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise DataError(
            f"concept_weight table {path}: a weight table is a .csv or .parquet file, not {path.suffix or '(none)'!r}"
        )
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"concept_weight table {path}: the file is empty (0 bytes)")
    try:
        table = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except (ValueError, OSError, UnicodeDecodeError) as err:  # pandas' parser errors are ValueErrors
        raise DataError(f"concept_weight table {path}: cannot be read ({' '.join(str(err).split())})") from None
    missing = {"instrument", "datetime", "value"} - set(table.columns)
    if missing:
        raise DataError(f"concept_weight table {path}: missing columns {sorted(missing)} (has {list(table.columns)})")
    try:
        dates = pd.to_datetime(table["datetime"], format="ISO8601")
    except (ValueError, TypeError) as err:
        raise DataError(f"concept_weight table {path}: column 'datetime' has unparsable dates ({err})") from None
    outside = ((dates < pd.Timestamp.min.ceil("D")) | (dates > pd.Timestamp.max)).to_numpy(dtype=bool)
    if outside.any():  # 0001-01-01: the segment's nanosecond index cannot hold it
        raise DataError(
            f"concept_weight table {path}: column 'datetime' has {int(outside.sum())} date(s) outside the dates "
            f"pandas can hold ({pd.Timestamp.min.ceil('D').date()} .. {pd.Timestamp.max.date()}), first "
            f"{table['datetime'].iloc[int(outside.argmax())]!r}"
        )
    values = pd.to_numeric(table["value"], errors="coerce")
    return pd.Series(
        values.to_numpy(),
        index=pd.MultiIndex.from_arrays([dates, table["instrument"].astype(str)], names=["datetime", "instrument"]),
    )


def is_expression(spec: Union[str, Path]) -> bool:
    """Whether a ``concept_weight`` names a qlib expression (it holds a ``$``) rather than a table file."""
    return "$" in str(spec)


def normalize_member_weights(
    raw: pd.Series, index: pd.MultiIndex, spec: Union[str, Path], segment_name: str
) -> pd.Series:
    """Raw values (any (datetime, instrument) index) -> member weights on ``index`` (a segment's rows): float32,
    positive, each day's mean 1. ``spec`` and ``segment_name`` are for the error message."""
    spec_text = str(spec)
    raw = raw[~raw.index.duplicated(keep="last")]
    values = raw.reindex(index).to_numpy(dtype=np.float64, copy=True)
    values[~(np.isfinite(values) & (values > 0))] = np.nan
    if np.isnan(values).all():
        raise DataError(
            f"concept_weight {spec_text!r} gives no positive value for any stock-day of segment {segment_name}: "
            "check the field exists in your provider (or the table covers these stocks and days)"
        )
    frame = pd.Series(values, index=index)
    by_day = frame.groupby(level=0)
    filled = frame.fillna(by_day.transform("median")).fillna(1.0)
    weights = (filled / filled.groupby(level=0).transform("mean")).astype(np.float32)
    if not (np.isfinite(weights.to_numpy()) & (weights.to_numpy() > 0)).all():  # float32 over- or underflow
        raise DataError(
            f"concept_weight {spec_text!r}: within a day of segment {segment_name}, values differ by more than "
            "float32's range (after dividing by the day's mean); rescale them (e.g. a log or a rank)"
        )
    return weights
