"""Membership table from the Shenwan (SW) industry history: one concept per stock and SW level.

Input CSV: ``instrument,start_date,industry_code[,updated_at]``. A row holds from ``start_date`` until the
stock's next row, so its inclusive ``end_date`` is the next row's ``start_date`` minus one day; a stock's
last row is open-ended. ``industry_code`` has six digits: level 1 = first 2, level 2 = first 4, level 3 = all.

Concepts are named ``sw{level}_{code prefix}`` (``sw1_48``, ``sw2_4803``, ``sw3_480301``), so levels never
collide. Consecutive rows with the same prefix at a level merge into one membership, so a level-3 move inside
one level-1 industry leaves the level-1 membership untouched.

Rows with the same instrument and ``start_date``: the one with the latest ``updated_at`` wins (an empty
``updated_at`` counts as oldest); on equal ``updated_at`` the later line of the file wins.

Caveat: ``updated_at`` is when the publisher last revised a row, which may be after ``start_date``; the table
is "as finally published", not "as known at the time".
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Tuple

import numpy as np
import pandas as pd

from ..atomic_files import PathLike
from .base import ConceptError
from .membership import check_instruments, parse_dates, read_csv_with_lines, validate_membership

SW_COLUMNS: Tuple[str, ...] = ("instrument", "start_date", "industry_code")
_PREFIX_LEN = {1: 2, 2: 4, 3: 6}


def _check_levels(levels: Iterable[int]) -> Tuple[int, ...]:
    try:
        out = tuple(int(v) for v in levels)
    except (TypeError, ValueError) as e:
        raise ConceptError(f"SW levels must be integers among 1, 2, 3; got {levels!r}") from e
    if not out or len(set(out)) != len(out) or not set(out) <= set(_PREFIX_LEN):
        raise ConceptError(f"SW levels must be a non-empty set of distinct values among 1, 2, 3; got {levels!r}")
    return tuple(sorted(out))


def read_sw_history(sw_csv: PathLike) -> pd.DataFrame:
    """Validated SW history: ``instrument``, ``start_date`` (datetime64[ns]), ``industry_code`` (6-digit str),
    ``end_date`` (inclusive, NaT = open), one row per instrument and start_date (tie rule in module doc)."""
    path = Path(sw_csv)
    if not path.is_file():
        raise ConceptError(f"{path}: SW industry history file not found")
    raw, loc = read_csv_with_lines(path, SW_COLUMNS)
    if len(raw) == 0:
        raise ConceptError(f"{path}: the SW industry history is empty (no data rows)")
    df = pd.DataFrame(
        {
            "instrument": check_instruments(raw["instrument"], loc),
            "start_date": parse_dates(raw["start_date"], loc, "start_date", allow_empty=False),
            "industry_code": raw["industry_code"].astype(str).str.strip(),
        }
    )
    loc.refuse(
        ~df["industry_code"].str.fullmatch(r"\d{6}").to_numpy(),
        lambda pos: f"column 'industry_code': {raw['industry_code'].iloc[pos]!r} is not six digits",
    )
    if "updated_at" in raw.columns:
        df["updated_at"] = parse_dates(raw["updated_at"], loc, "updated_at", allow_empty=True)
    else:
        df["updated_at"] = pd.Series(pd.NaT, index=df.index, dtype="datetime64[ns]")
    df["line"] = np.arange(len(df))
    df = (
        df.sort_values(["instrument", "start_date", "updated_at", "line"], na_position="first", kind="stable")
        .drop_duplicates(["instrument", "start_date"], keep="last")
        .reset_index(drop=True)
    )
    nxt = df.groupby("instrument", sort=False)["start_date"].shift(-1)
    df["end_date"] = nxt - pd.Timedelta(days=1)
    return df[["instrument", "start_date", "end_date", "industry_code"]]


def from_sw(sw_csv: PathLike, levels: Iterable[int] = (1, 2, 3)) -> pd.DataFrame:
    """Build a membership table (see :mod:`qlib_hist.concepts.membership`) from the SW history CSV.

    Args:
        sw_csv: path of the SW history CSV.
        levels: SW levels to emit, a non-empty subset of ``(1, 2, 3)``.

    Returns:
        Validated membership table with columns ``instrument, concept, start_date, end_date, weight``
        (weight 1.0), one row per merged run of an instrument in one industry at one level.
    """
    levels = _check_levels(levels)
    hist = read_sw_history(sw_csv)
    parts = []
    for level in levels:
        concept = "sw" + str(level) + "_" + hist["industry_code"].str.slice(0, _PREFIX_LEN[level])
        inst = hist["instrument"]
        first = ((concept != concept.shift()) | (inst != inst.shift())).to_numpy()
        last = np.append(first[1:], True)  # a run ends where the next one starts
        parts.append(
            pd.DataFrame(
                {
                    "instrument": inst.to_numpy()[first],
                    "concept": concept.to_numpy()[first],
                    "start_date": hist["start_date"].to_numpy()[first],
                    "end_date": hist["end_date"].to_numpy()[last],  # NaT (open) when the run's last row is open
                }
            )
        )
    table = pd.concat(parts, ignore_index=True)
    table["weight"] = 1.0
    return validate_membership(table, source=f"{sw_csv} (SW levels {list(levels)})")
