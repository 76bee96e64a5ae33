"""Per-stock, per-day member weights for the predefined-concept module (the paper weights by market value).

``concept_weight`` names the source:

- a qlib expression (anything with a ``$``), e.g. ``"$close * $volume"`` or a market-cap field your provider has,
  evaluated with ``qlib.data.D.features`` over the segment's instruments and days;
- a table file (``.csv`` / ``.parquet``) with columns ``instrument, datetime, value``.

Values that are missing, not finite or not positive get the day's median of the valid ones (never another
stock's value); a day with no valid value gets 1 for every stock. Each day is then divided by its mean, so the
weights are scale-free and uniform values give exactly qlib's (unweighted) concept formula.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd

from .data import DataError


def _from_expression(expression: str, index: pd.MultiIndex) -> pd.Series:
    from qlib.data import D

    dates = index.get_level_values(0)
    instruments = sorted(index.get_level_values(1).unique())
    try:
        frame = D.features(instruments, [expression], start_time=dates.min(), end_time=dates.max())
    except Exception as err:  # qlib raises many types for a bad expression or field
        raise DataError(f"concept_weight {expression!r}: qlib cannot evaluate it ({type(err).__name__}: {err})") from None
    values = frame.iloc[:, 0]
    values.index = values.index.swaplevel().set_names(["datetime", "instrument"])
    return values


def _from_table(path: Path, index: pd.MultiIndex) -> pd.Series:
    if not path.exists():
        raise DataError(f"concept_weight table {path} does not exist")
    table = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    missing = {"instrument", "datetime", "value"} - set(table.columns)
    if missing:
        raise DataError(f"concept_weight table {path}: missing columns {sorted(missing)} (has {list(table.columns)})")
    try:
        dates = pd.to_datetime(table["datetime"], format="ISO8601")
    except (ValueError, TypeError) as err:
        raise DataError(f"concept_weight table {path}: column 'datetime' has unparsable dates ({err})") from None
    values = pd.to_numeric(table["value"], errors="coerce")
    return pd.Series(values.to_numpy(), index=pd.MultiIndex.from_arrays([dates, table["instrument"].astype(str)],
                                                                          names=["datetime", "instrument"]))


def stock_weights(spec: Union[str, Path], index: pd.MultiIndex, segment_name: str) -> pd.Series:
    """Member weights on ``index`` ((datetime, instrument) rows of a segment), float32, positive, day mean 1."""
    spec_text = str(spec)
    raw = _from_expression(spec_text, index) if "$" in spec_text else _from_table(Path(spec_text).expanduser(), index)
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
    return (filled / filled.groupby(level=0).transform("mean")).astype(np.float32)
