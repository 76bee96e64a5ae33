"""Point-in-time concept membership: a tidy table and the :class:`ConceptSource` built on it.

Table format (CSV or parquet), one row per membership interval::

    instrument,concept,start_date,end_date[,weight]
    SH600000,sw1_48,2014-02-21,,1.0

* ``instrument``: qlib spelling, ``^(SH|SZ|BJ)\\d{6}$``.
* ``start_date``: first day of membership (inclusive).
* ``end_date``: **last** day of membership (inclusive); empty / NaN = still a member.
  A membership that holds on 2020-01-01 .. 2020-03-31 has ``end_date`` 2020-03-31, and a following
  interval of the same stock may start on 2020-04-01 without overlapping.
* ``weight``: optional positive finite float, default 1 (also for an empty cell).

Membership on day ``t`` is every row with ``start_date <= t <= end_date``: all interval logic lives in
:class:`MembershipConcepts` (``for_rows`` / ``snapshot``), which the other modules call.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from ..atomic_files import PathLike, atomic_path
from .base import ConceptError, SegmentConcepts

REQUIRED_COLUMNS: Tuple[str, ...] = ("instrument", "concept", "start_date", "end_date")
COLUMNS: Tuple[str, ...] = REQUIRED_COLUMNS + ("weight",)
_DATE_DTYPE = "datetime64[ns]"
_INSTRUMENT_RE = re.compile(r"^(SH|SZ|BJ)\d{6}$")
_FIXABLE_RE = re.compile(
    r"^(?:(?P<ex1>SH|SZ|BJ)[._]?(?P<num1>\d{6})|(?P<num2>\d{6})(?:[._](?P<ex2>SH|SZ|BJ|XSHG|XSHE|BSE))?)$",
    re.IGNORECASE,
)
_EXCHANGE_ALIASES = {"XSHG": "SH", "XSHE": "SZ", "BSE": "BJ"}


# ----------------------------------------------------------------------------------------------- locating


class _Locator:
    """Turns a positional row number into ``'file.csv, line 7'`` (CSV, header = line 1) or ``'row 5'``."""

    def __init__(self, source: str, csv_lines: Optional[np.ndarray] = None) -> None:
        self.source = source
        self.csv_lines = csv_lines

    def row(self, pos: int) -> str:
        """``'line 7'`` for a CSV, else ``'row 5'`` (0-based position)."""
        if self.csv_lines is not None:
            return f"line {int(self.csv_lines[pos])}"
        return f"row {pos}"

    def where(self, pos: int) -> str:
        return f"{self.source}, {self.row(pos)}"

    def fail(self, pos: int, what: str) -> ConceptError:
        return ConceptError(f"{self.where(pos)}: {what}")

    def refuse(self, bad: np.ndarray, what: Callable[[int], str]) -> None:
        """Raise :meth:`fail` at the first row where the mask ``bad`` holds, ``what(pos)`` saying why; nothing
        when it holds nowhere."""
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise self.fail(pos, what(pos))


def read_csv_with_lines(path: Path, required: Sequence[str]) -> Tuple[pd.DataFrame, _Locator]:
    """Read a CSV as strings, keeping each row's line number (header = line 1); blank lines are skipped.

    Raises :class:`ConceptError` naming the file when it is missing/unreadable or lacks ``required`` columns.
    """
    check_not_empty(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        too_long = _row_longer_than_header(path) if isinstance(e, pd.errors.ParserError) else None
        raise too_long or ConceptError(f"{path}: cannot read CSV ({' '.join(str(e).split())})") from None
    if not isinstance(df.index, pd.RangeIndex):  # pandas took the first fields of longer rows as an index
        raise _row_longer_than_header(path) or ConceptError(f"{path}: rows have more fields than the header")
    df.columns = [str(c).strip() for c in df.columns]
    require_columns(df, required, str(path))
    lines = np.arange(len(df)) + 2
    blank = (df.astype(str).apply(lambda c: c.str.strip()) == "").all(axis=1).to_numpy()
    df = df.loc[~blank].reset_index(drop=True)
    return df, _Locator(str(path), lines[~blank])


def _row_longer_than_header(path: Path) -> Optional[ConceptError]:
    """The error for the first row with more fields than the header (a stray comma, an unquoted name with a comma),
    which pandas would report as a parser error or read as an index, shifting every column; None if there is none."""
    import csv

    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, [])
            for row in reader:
                if len(row) > len(header):
                    return ConceptError(
                        f"{path}, line {reader.line_num}: has {len(row)} fields, the header has {len(header)} "
                        f"({','.join(header)}); quote a value that holds a comma, or remove the extra field"
                    )
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return None


def check_not_empty(path: Path) -> None:
    """A 0-byte file (an interrupted copy or download) is named as such, not as a parser's complaint."""
    if path.is_file() and path.stat().st_size == 0:
        raise ConceptError(f"{path}: the file is empty (0 bytes); write or copy it again")


def require_columns(df: pd.DataFrame, required: Sequence[str], source: str) -> None:
    """Raise :class:`ConceptError` listing the missing and the found columns."""
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ConceptError(
            f"{source}: missing column(s) {missing}; found columns {list(map(str, df.columns))}; "
            f"expected {list(required)}"
        )


# ----------------------------------------------------------------------------------------------- checks


def suggest_instrument(code: str) -> Optional[str]:
    """The qlib spelling of a common alternative spelling (``600000.SH``, ``sh600000``, ``600000``), or None.

    A bare six-digit code gets its exchange from its first digits (6/9 -> SH, 0/2/3 -> SZ, 4/8/92 -> BJ).
    """
    m = _FIXABLE_RE.match(code.strip())
    if not m:
        return None
    num = m.group("num1") or m.group("num2")
    ex = (m.group("ex1") or m.group("ex2") or "").upper()
    ex = _EXCHANGE_ALIASES.get(ex, ex)
    if not ex:
        if num.startswith("92") or num[0] in "48":
            ex = "BJ"
        elif num[0] in "69":
            ex = "SH"
        elif num[0] in "0123":
            ex = "SZ"
        else:
            return None
    return ex + num


def check_instruments(values: pd.Series, loc: _Locator, column: str = "instrument") -> pd.Series:
    """Strip ``values`` and require qlib spelling; the error offers the fix. Returns the stripped series."""
    values = values.astype(str).str.strip()
    bad = ~values.str.fullmatch(_INSTRUMENT_RE.pattern).to_numpy()

    def why(pos: int) -> str:
        fix = suggest_instrument(values.iloc[pos])
        hint = f"; write it as {fix!r}" if fix else ""
        return (
            f"column {column!r}: {values.iloc[pos]!r} is not a qlib instrument (expected e.g. 'SH600000', "
            f"pattern ^(SH|SZ|BJ)\\d{{6}}$){hint} ({int(bad.sum())} bad value(s) in all)"
        )

    loc.refuse(bad, why)
    return values


OPEN_YEAR = 2262  # end dates from this year on (9999-12-31, ...) mean "still a member"; ns timestamps end in 2262
FIRST_DAY = pd.Timestamp.min.ceil("D")  # 1677-09-22: ns timestamps begin in 1677


def parse_dates(values: pd.Series, loc: _Locator, column: str, allow_empty: bool) -> pd.Series:
    """Parse a date column to ``datetime64[ns]`` at midnight; empty cells are NaT when ``allow_empty``."""
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
        empty = parsed.isna().to_numpy()
        bad = np.zeros(len(values), dtype=bool)
    else:
        text = values.astype(object).where(values.notna(), "").astype(str).str.strip()
        empty = text.isin(["", "nan", "NaN", "NaT", "None"]).to_numpy()
        parsed = pd.to_datetime(text.where(~empty, None), errors="coerce", format="ISO8601")
        bad = parsed.isna().to_numpy() & ~empty
        loc.refuse(bad, lambda pos: f"column {column!r}: cannot parse date {values.iloc[pos]!r} (expected YYYY-MM-DD)")
    if not allow_empty:
        loc.refuse(empty, lambda pos: f"column {column!r}: empty date")
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_localize(None)
    early = (parsed < FIRST_DAY).fillna(False).to_numpy(dtype=bool)  # 0001-01-01: before ns timestamps begin
    loc.refuse(
        early,
        lambda pos: (
            f"column {column!r}: date {str(values.iloc[pos])!r} is before {FIRST_DAY.date()}, the first day "
            f"pandas can hold ({int(early.sum())} such date(s) in all)"
        ),
    )
    far = (parsed.dt.year >= OPEN_YEAR).fillna(False).to_numpy(dtype=bool)  # "9999-12-31": a common "still open"
    if not allow_empty:
        loc.refuse(far, lambda pos: f"column {column!r}: date {values.iloc[pos]!r} is after {OPEN_YEAR - 1}")
    if far.any():
        parsed = parsed.where(~far)
    return parsed.dt.normalize().astype(_DATE_DTYPE)


def _parse_weights(values: pd.Series, loc: _Locator) -> pd.Series:
    text = values.astype(object).where(values.notna(), "").astype(str).str.strip()
    empty = text.isin(["", "nan", "NaN", "None"]).to_numpy()
    weights = pd.to_numeric(text.where(~empty, "1"), errors="coerce").astype("float64")
    with np.errstate(over="ignore"):  # checked as the network will see it: 1e300 overflows float32
        w = weights.to_numpy().astype(np.float32)
    bad = ~(np.isfinite(w) & (w > 0))  # NaN (unparsable) is not finite
    loc.refuse(bad, lambda pos: f"column 'weight': {values.iloc[pos]!r} is not a positive finite float32 number")
    return weights


def _check_overlaps(df: pd.DataFrame, loc: _Locator) -> None:
    """Two rows of one (instrument, concept) must not share a day; the error shows both rows."""
    order = df.sort_values(["instrument", "concept", "start_date"], kind="stable").index.to_numpy()
    inst = df["instrument"].to_numpy()[order]
    conc = df["concept"].to_numpy()[order]
    start = df["start_date"].to_numpy()[order]
    end = df["end_date"].to_numpy()[order]
    same = (inst[1:] == inst[:-1]) & (conc[1:] == conc[:-1])
    prev_end = end[:-1]
    overlap = same & (np.isnat(prev_end) | (start[1:] <= prev_end))
    if overlap.any():
        k = int(np.flatnonzero(overlap)[0])
        a, b = int(order[k]), int(order[k + 1])
        raise ConceptError(
            f"{loc.source}: overlapping memberships of {inst[k]} in {conc[k]!r}: "
            f"{loc.row(a)} ({_span(start[k], end[k])}) and "
            f"{loc.row(b)} ({_span(start[k + 1], end[k + 1])}); "
            f"end_date is the inclusive last day, so the next interval must start after it"
        )


def _span(start: np.datetime64, end: np.datetime64) -> str:
    fmt = lambda d: "open" if np.isnat(d) else str(d)[:10]  # noqa: E731
    return f"{fmt(start)} .. {fmt(end)}"


def validate_membership(
    df: pd.DataFrame, source: str = "<membership table>", loc: Optional[_Locator] = None
) -> pd.DataFrame:
    """Validate a raw membership table and return it normalized.

    Returns a new DataFrame with exactly the columns ``instrument`` (str), ``concept`` (str), ``start_date`` and
    ``end_date`` (``datetime64[ns]``, ``end_date`` NaT = open), ``weight`` (float64), sorted by
    instrument, start_date, concept. Errors name ``source`` and the row (``loc`` gives CSV line numbers).
    """
    loc = loc or _Locator(source)
    require_columns(df, REQUIRED_COLUMNS, loc.source)
    if len(df) == 0:
        raise ConceptError(f"{loc.source}: the membership table is empty (no data rows)")
    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    out["instrument"] = check_instruments(df["instrument"].reset_index(drop=True), loc)
    concept = df["concept"].reset_index(drop=True)
    concept = concept.astype(object).where(concept.notna(), "").astype(str).str.strip()
    loc.refuse((concept == "").to_numpy(), lambda pos: "column 'concept': empty concept name")
    out["concept"] = concept
    out["start_date"] = parse_dates(df["start_date"].reset_index(drop=True), loc, "start_date", allow_empty=False)
    out["end_date"] = parse_dates(df["end_date"].reset_index(drop=True), loc, "end_date", allow_empty=True)
    loc.refuse(
        (out["end_date"] < out["start_date"]).to_numpy(),
        lambda pos: (
            f"end_date {str(out['end_date'].iloc[pos])[:10]} is before start_date "
            f"{str(out['start_date'].iloc[pos])[:10]}"
        ),
    )
    if "weight" in df.columns:
        out["weight"] = _parse_weights(df["weight"].reset_index(drop=True), loc)
    else:
        out["weight"] = 1.0
    _check_overlaps(out, loc)
    return out.sort_values(["instrument", "start_date", "concept"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- files


def load_membership(path: PathLike) -> pd.DataFrame:
    """Load and validate a membership table (``.csv`` or ``.parquet``/``.pq``); see :func:`validate_membership`."""
    path = Path(path)
    if not path.is_file():
        raise ConceptError(f"{path}: membership file not found")
    check_not_empty(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            df = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several unrelated types for a bad file
            raise ConceptError(f"{path}: cannot read parquet ({e})") from e
        return validate_membership(df, loc=_Locator(str(path)))
    df, loc = read_csv_with_lines(path, REQUIRED_COLUMNS)
    return validate_membership(df, loc=loc)


def check_membership_output(path: PathLike) -> Path:
    """``path`` as a membership table to write (``.csv``, ``.parquet``/``.pq``, not a folder), or a
    :class:`ConceptError` naming it; the commands call it before they read their inputs."""
    path = Path(path)
    if path.is_dir():
        raise ConceptError(f"{path} is a directory: give the membership table's file name (a .csv or .parquet)")
    if path.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise ConceptError(
            f"{path}: a membership table is written as .csv or .parquet, not {path.suffix or 'no suffix'!r}"
        )
    return path


def write_membership(df: pd.DataFrame, path: PathLike) -> Path:
    """Validate ``df`` and write it atomically: parquet for ``.parquet``/``.pq``, else CSV (dates ``YYYY-MM-DD``,
    open ``end_date`` empty). Returns the path."""
    path = check_membership_output(path)
    table = validate_membership(df, source=str(path))
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".parquet", ".pq"):
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False, date_format="%Y-%m-%d")
    return path


# ----------------------------------------------------------------------------------------------- source


_DAY_OFFSET = np.int64(2**31)  # keeps (day + offset) positive in the packed key
_NEG_INF_DAY = -_DAY_OFFSET


def _days(dates: np.ndarray) -> np.ndarray:
    """``datetime64`` -> int64 days since 1970-01-01 (time of day dropped)."""
    return np.asarray(dates).astype("datetime64[D]").astype(np.int64)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(starts[i], starts[i] + lengths[i])`` over i, int64, without a Python loop."""
    starts, lengths = np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


def _key(inst_code: np.ndarray, days: np.ndarray) -> np.ndarray:
    return inst_code.astype(np.int64) * np.int64(2**32) + (days + _DAY_OFFSET)


class MembershipConcepts:
    """A :class:`~qlib_hist.concepts.base.ConceptSource` over a membership table, strictly point-in-time.

    Precomputed on construction, per instrument, the piecewise-constant concept vector: the *change points*
    (every ``start_date`` and every ``end_date + 1 day``) cut the time axis into segments, each holding one
    vector. Distinct vectors are stored once, sparse (CSR: ``_vec_ptr``, ``_vec_cols``, ``_vec_vals``). A day
    only ever looks up the segment that *contains* it, so a membership starting after day t cannot affect t.
    """

    def __init__(self, table: pd.DataFrame, source: str = "<membership table>") -> None:
        t = validate_membership(table, source=source)
        self.source = source
        self.table = t
        self.names: List[str] = sorted(t["concept"].unique().tolist())
        self.instruments: List[str] = sorted(t["instrument"].unique().tolist())
        self._inst_index = pd.Index(self.instruments)
        inst = self._inst_index.get_indexer(t["instrument"]).astype(np.int64)
        conc = pd.Index(self.names).get_indexer(t["concept"]).astype(np.int64)
        start = _days(t["start_date"].to_numpy())
        end = t["end_date"].to_numpy()
        stop = np.where(np.isnat(end), np.iinfo(np.int64).max, _days(end) + 1)  # first day not a member
        self._build_segments(inst, conc, start, stop, t["weight"].to_numpy(np.float64))

    @classmethod
    def from_path(cls, path: PathLike) -> "MembershipConcepts":
        """Load a membership file (CSV/parquet) and build the source."""
        return cls(load_membership(path), source=str(path))

    # -- construction ---------------------------------------------------------------------------------------

    def _build_segments(
        self, inst: np.ndarray, conc: np.ndarray, start: np.ndarray, stop: np.ndarray, weight: np.ndarray
    ) -> None:
        n_inst = len(self.instruments)
        open_ = stop == np.iinfo(np.int64).max
        # change points: a leading -inf segment per instrument (no concept), every start, every finite stop
        cp_inst = np.concatenate([np.arange(n_inst), inst, inst[~open_]])
        cp_day = np.concatenate([np.full(n_inst, _NEG_INF_DAY), start, stop[~open_]])
        seg_key = np.unique(_key(cp_inst, cp_day))  # sorted; segment s covers [key[s], key[s+1]) in its instrument
        lo = np.searchsorted(seg_key, _key(inst, start))
        inst_end = np.searchsorted(seg_key, _key(np.arange(n_inst) + 1, np.full(n_inst, _NEG_INF_DAY)))
        hi = np.where(open_, inst_end[inst], np.searchsorted(seg_key, _key(inst, np.where(open_, 0, stop))))
        # expand each membership into the segments it covers: (segment, concept, weight) triples
        lengths = hi - lo
        rep = np.repeat(np.arange(len(inst)), lengths)
        seg = _ranges(lo, lengths)
        order = np.lexsort((conc[rep], seg))
        seg, cols, vals = seg[order], conc[rep][order], weight[rep][order].astype(np.float32)
        # distinct vectors: hash each segment's (concepts, weights) run
        bounds = np.searchsorted(seg, np.arange(len(seg_key) + 1))
        seg_vec = np.full(len(seg_key), -1, dtype=np.int64)  # -1 = no concept
        seen: Dict[bytes, int] = {}
        ptr = [0]
        first_rows: List[int] = []
        for s in np.flatnonzero(bounds[1:] > bounds[:-1]):
            a, b = bounds[s], bounds[s + 1]
            k = cols[a:b].tobytes() + vals[a:b].tobytes()
            v = seen.get(k)
            if v is None:
                v = seen[k] = len(first_rows)
                first_rows.append(a)
                ptr.append(ptr[-1] + b - a)
            seg_vec[s] = v
        take = _ranges(np.asarray(first_rows, dtype=np.int64), np.diff(ptr))
        self._seg_key, self._seg_vec = seg_key, seg_vec
        self._vec_ptr = np.asarray(ptr, dtype=np.int64)
        self._vec_cols, self._vec_vals = cols[take], vals[take]

    # -- queries --------------------------------------------------------------------------------------------

    @property
    def n_vectors(self) -> int:
        """Number of distinct non-zero concept vectors over the whole table."""
        return len(self._vec_ptr) - 1

    def _dense(self, vec_ids: np.ndarray) -> np.ndarray:
        """float32 ``[len(vec_ids), C]`` rows for global vector ids (all >= 0)."""
        out = np.zeros((len(vec_ids), len(self.names)), dtype=np.float32)
        starts, ends = self._vec_ptr[vec_ids], self._vec_ptr[vec_ids + 1]
        lengths = ends - starts
        rows = np.repeat(np.arange(len(vec_ids)), lengths)
        idx = _ranges(starts, lengths)
        out[rows, self._vec_cols[idx]] = self._vec_vals[idx]
        return out

    def for_rows(self, instruments: np.ndarray, dates: np.ndarray) -> SegmentConcepts:
        """Concept vectors of segment rows, as they stood on each row's own day.

        Args:
            instruments: ``[rows]`` qlib instrument codes.
            dates: ``[rows]`` ``datetime64`` days (any order works; time of day is ignored).

        Returns:
            :class:`SegmentConcepts` with ``matrix`` float32 ``[U + 1, C]`` (the U distinct vectors used by the
            rows, then an all-zero row) and ``row_index`` int64 ``[rows]``. ``n_unknown`` counts rows whose
            instrument never occurs in the table (at any date); those rows get the zero row, as do known
            instruments on days without membership.
        """
        instruments = np.asarray(instruments)
        dates = np.asarray(dates)
        if instruments.shape != dates.shape or instruments.ndim != 1:
            raise ValueError(f"instruments {instruments.shape} and dates {dates.shape} must be equal 1-d shapes")
        code = self._inst_index.get_indexer(pd.Index(instruments.astype(str))).astype(np.int64)
        unknown = code < 0
        vec = np.full(len(code), -1, dtype=np.int64)
        known = np.flatnonzero(~unknown)
        if len(known):
            pos = np.searchsorted(self._seg_key, _key(code[known], _days(dates[known])), side="right") - 1
            vec[known] = self._seg_vec[pos]
        used, inverse = np.unique(vec, return_inverse=True)
        has_zero = len(used) and used[0] == -1
        nonzero = used[1:] if has_zero else used
        matrix = np.vstack([self._dense(nonzero), np.zeros((1, len(self.names)), dtype=np.float32)])
        row_index = np.where(vec < 0, len(nonzero), inverse.reshape(-1) - int(bool(has_zero)))
        unknown_names = sorted(pd.unique(instruments[unknown].astype(str)).tolist())
        return SegmentConcepts(
            matrix=matrix,
            row_index=row_index,
            names=list(self.names),
            n_unknown=int(unknown.sum()),
            unknown_instruments=unknown_names,
        )

    def snapshot(self, as_of: Union[str, np.datetime64, pd.Timestamp], instruments: Sequence[str]) -> pd.DataFrame:
        """Dense membership of ``instruments`` on day ``as_of``: float32 DataFrame ``[instruments, C]``.

        Index = ``instruments`` in the given order, columns = :attr:`names` (all concepts, members or not).
        """
        inst = np.asarray(list(instruments), dtype=object)
        day = np.datetime64(pd.Timestamp(as_of).normalize().to_datetime64(), "D")
        sc = self.for_rows(inst, np.full(len(inst), day))
        return pd.DataFrame(
            sc.matrix[sc.row_index],
            index=pd.Index(inst, name="instrument"),
            columns=pd.Index(self.names, name="concept"),
        )

    def why_no_concepts(self, instruments: np.ndarray) -> str:
        """Why none of ``instruments`` gets a concept (for an error that a segment has no concept at all)."""
        known = self._inst_index.isin(np.asarray(instruments, dtype=str))
        example = str(instruments[0]) if len(instruments) else "SH600000"
        if not known.any():
            return (
                f"none of its stocks (e.g. {example!r}) is in the table, which lists {self.instruments[0]!r}, ...: "
                "a table of another market?"
            )
        t = self.table
        last = "open" if t["end_date"].isna().any() else str(t["end_date"].max())[:10]
        return (
            f"no membership of its {int(known.sum())} stocks in the table holds on the segment's days (the table "
            f"spans {str(t['start_date'].min())[:10]} .. {last})"
        )

    def describe(self) -> str:
        t = self.table
        return (
            f"MembershipConcepts({self.source}): {len(self.names)} concepts, {len(self.instruments)} "
            f"instruments, {len(t)} memberships (first start {str(t['start_date'].min())[:10]}), "
            f"{self.n_vectors} distinct vectors"
        )


MembershipLike = Union[MembershipConcepts, pd.DataFrame, str, Path]


def as_source(membership: MembershipLike) -> MembershipConcepts:
    """A :class:`MembershipConcepts` from itself, a membership DataFrame, or a membership file path."""
    if isinstance(membership, MembershipConcepts):
        return membership
    if isinstance(membership, pd.DataFrame):
        return MembershipConcepts(membership)
    return MembershipConcepts.from_path(membership)
