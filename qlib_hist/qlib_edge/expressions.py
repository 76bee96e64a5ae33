"""Member weights from a qlib expression (``concept_weight: "$close * $volume"``), through ``D.features``."""

from __future__ import annotations

import pandas as pd
from qlib.data import D

from ..batches import DataError


def expression_values(expression: str, index: pd.MultiIndex) -> pd.Series:
    """``expression`` evaluated for the instruments and the date range of ``index`` ((datetime, instrument) rows);
    raw values on a (datetime, instrument) index."""
    dates = index.get_level_values(0)
    instruments = sorted(index.get_level_values(1).unique())
    try:
        frame = D.features(instruments, [expression], start_time=dates.min(), end_time=dates.max())
    except Exception as err:  # qlib raises many types for a bad expression or field
        raise DataError(
            f"concept_weight {expression!r}: qlib cannot evaluate it ({type(err).__name__}: {err})"
        ) from None
    values = frame.iloc[:, 0]
    values.index = values.index.swaplevel().set_names(["datetime", "instrument"])
    return values
