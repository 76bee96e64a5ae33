"""A ``DatasetH`` segment -> :class:`~qlib_hist.batches.DailyBatches`: the rows, their loss and member weights,
their concepts, as views of the handler's own frame where qlib allows it."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pandas as pd
from qlib.data.dataset import DatasetH
from qlib.data.dataset.handler import DataHandlerLP
from qlib.data.dataset.utils import fetch_df_by_index

from ..batches import DailyBatches, DataError, build_daily_batches
from ..concepts import ConceptSource, NoConcepts
from ..config_dates import as_timestamp
from ..member_weights import is_expression, normalize_member_weights, read_weight_table
from .expressions import expression_values

#: a segment name of the dataset (``"train"``) or a date slice
Segment = Union[str, slice]


def _as_date_slice(segment: Any, name: str = "segment") -> Optional[slice]:
    """A dataset segment (``(start, end)`` or a slice) as a step-less slice; None for anything else.

    A ``datetime.date`` bound (a YAML's unquoted ``2017-01-01``, as qrun reads it) becomes a ``pd.Timestamp``:
    pandas 3 refuses a ``date`` against the datetime level. Strings stay strings, for qlib reads a partial date
    (``"2017-03"``) as the whole month."""
    if isinstance(segment, (tuple, list)) and len(segment) == 2:
        segment = slice(*segment)
    if not isinstance(segment, slice) or segment.step is not None:
        return None

    def bound(value: Any, key: str) -> Any:
        return as_timestamp(value, key) if isinstance(value, datetime.date) else value

    return slice(bound(segment.start, f"{name} start"), bound(segment.stop, f"{name} end"))


def segment_frame(dataset: DatasetH, segment: Segment, with_label: bool) -> pd.DataFrame:
    """The rows of ``segment`` with its ``feature`` (and ``label``) columns, indexed by (datetime, instrument).

    ``DatasetH.prepare`` copies a segment out of the handler (180 MB for three years of CSI300 Alpha360). When
    ``dataset`` is a plain ``DatasetH`` whose ``DataHandlerLP`` keeps one date-sorted DataFrame, the same rows are
    taken instead as a positional slice of the handler's own frame, fetched whole through qlib's public
    ``handler.fetch(col_set="__raw")``: under pandas' copy-on-write that slice shares the handler's memory. The rows
    are the ones qlib's own ``fetch_df_by_index`` selects (same bounds, partial dates included). Any other dataset (a
    subclass, ``fetch_kwargs``, a handler with ``fetch_orig=False``, an index selector) goes through ``prepare``.

    Training segments come from the learn data (``DK_L``), inference segments from the infer data (``DK_I``).
    """
    data_key = DataHandlerLP.DK_L if with_label else DataHandlerLP.DK_I
    groups = ["feature", "label"] if with_label else ["feature"]
    name = f"segment {segment_name(segment)}"
    selector = _as_date_slice(dataset.segments.get(segment) if isinstance(segment, str) else segment, name)
    handler = getattr(dataset, "handler", None)
    plain = (
        type(dataset) is DatasetH
        and not getattr(dataset, "fetch_kwargs", None)
        and getattr(handler, "fetch_orig", False)
    )  # fetch_orig: no copy
    if selector is not None and plain and isinstance(handler, DataHandlerLP):
        full = handler.fetch(slice(None), col_set=DataHandlerLP.CS_RAW, data_key=data_key)
        if (
            isinstance(full, pd.DataFrame)
            and isinstance(full.columns, pd.MultiIndex)
            and set(groups) <= set(full.columns.get_level_values(0))
        ):
            # the rows prepare would select, found by qlib's own selection run on row numbers (8 bytes a row)
            numbered = pd.DataFrame({"row": np.arange(len(full))}, index=full.index)
            rows = fetch_df_by_index(numbered, selector, "datetime")["row"].to_numpy()
            if len(rows) and (np.diff(rows) == 1).all():
                return full.iloc[rows[0] : rows[-1] + 1]  # a view
            return full.iloc[rows]
    if isinstance(segment, slice) and selector is not None:
        segment = selector  # its dates as Timestamps
    return dataset.prepare(segment, col_set=groups if with_label else "feature", data_key=data_key)


def segment_name(segment: Segment) -> str:
    """How logs and errors name a segment."""
    return segment if isinstance(segment, str) else f"{segment.start}..{segment.stop}"


def data_source(dataset: DatasetH) -> str:
    """How errors name where a dataset's rows come from: its handler's class, and its data loader's with what that
    reads (a file, a frame), as far as qlib's objects tell."""
    handler = getattr(dataset, "handler", None)
    if handler is None:
        return f"dataset {type(dataset).__module__}.{type(dataset).__qualname__}"
    text = f"handler {type(handler).__module__}.{type(handler).__qualname__}"
    loader = getattr(handler, "data_loader", None)
    if loader is not None:
        text += f" (data loader {type(loader).__name__}"
        config = getattr(loader, "_config", None)  # StaticDataLoader's: a path, a frame or {group: either}
        configs = config.values() if isinstance(config, dict) else [config]
        paths = [str(c) for c in configs if isinstance(c, (str, Path))]
        if paths:
            text += f" reading {', '.join(paths)}"
        elif any(isinstance(c, pd.DataFrame) for c in configs):
            text += " over an in-memory DataFrame"
        text += ")"
    return text


def check_unique_rows(df: pd.DataFrame, dataset: DatasetH, name: str) -> None:
    """A (datetime, instrument) pair twice in a segment: named with the segment and where its rows come from,
    before anything is computed on them."""
    index = df.index
    if not isinstance(index, pd.MultiIndex) or not index.has_duplicates:
        return
    repeated = index.duplicated(keep=False)
    date, instrument = index[repeated][0][:2]
    day = date.date() if isinstance(date, pd.Timestamp) else date
    raise DataError(
        f"segment {name}: {int(index.duplicated().sum())} (datetime, instrument) row(s) appear more than once, "
        f"first ({day}, {instrument}), in the data of {data_source(dataset)}: a qlib "
        "handler holds each stock once a day; look for rows its source repeats (e.g. frames concatenated twice)"
    )


def member_weights(spec: str, index: pd.MultiIndex, name: str) -> pd.Series:
    """The member weights ``concept_weight`` names, on ``index`` (see :mod:`qlib_hist.member_weights`)."""
    raw = expression_values(spec, index) if is_expression(spec) else read_weight_table(Path(spec).expanduser())
    return normalize_member_weights(raw, index, spec, name)


def no_concept_message(batches: DailyBatches, concepts: ConceptSource, name: str) -> str:
    """The error when no row of a segment has a predefined concept: the count, the source, and why."""
    instruments = np.asarray(pd.unique(batches.index.get_level_values(1)), dtype=str)
    why = getattr(concepts, "why_no_concepts", None)
    reason = why(instruments) if callable(why) else ""
    return (
        f"segment {name}: none of its {len(instruments)} stocks ({batches.n_rows} stock-days) has a predefined "
        f"concept in {concepts.describe()}" + (f": {reason}" if reason else "")
    )


def segment_batches(
    dataset: DatasetH,
    segment: Segment,
    with_label: bool,
    concepts: ConceptSource,
    d_feat: int,
    concept_weight: Optional[str] = None,
    reweighter: Any = None,
    logger: Optional[logging.Logger] = None,
) -> DailyBatches:
    """The daily batches of one segment of ``dataset`` (labels with ``with_label``), logging unknown stocks."""
    if not isinstance(dataset, DatasetH):
        raise DataError(f"HIST needs a qlib DatasetH (e.g. over the Alpha360 handler), got {type(dataset).__name__}")
    if not isinstance(segment, (str, slice)):
        raise DataError(f"segment must be a segment name such as 'test' or a slice of dates, got {segment!r}")
    name = segment_name(segment)
    if isinstance(segment, str) and segment not in getattr(dataset, "segments", {segment: None}):
        raise DataError(f"segment {segment!r} is not in the dataset's segments {list(dataset.segments)}")
    df = segment_frame(dataset, segment, with_label)
    empty = df is None or df.empty
    if not empty:
        check_unique_rows(df, dataset, name)
    sample_weights = None if reweighter is None or empty else reweighter.reweight(df)
    weights = None if concept_weight is None or empty else member_weights(concept_weight, df.index, name)
    batches = build_daily_batches(df, concepts, name, d_feat, with_label, sample_weights, weights)
    c = batches.concepts
    off = isinstance(concepts, NoConcepts)  # predefined_concepts off: no row needs a concept
    if batches.n_rows and not off and not (c.matrix != 0).any(axis=1)[c.row_index].any():
        message = no_concept_message(batches, concepts, name)
        if with_label:  # training on it would fit a HIST whose concept module never sees a concept
            raise DataError(message)
        (logger or logging.getLogger("qlib_hist")).warning(message)
    if c.n_unknown and logger is not None:
        shown = ", ".join(c.unknown_instruments[:5]) + (", ..." if len(c.unknown_instruments) > 5 else "")
        logger.info(
            "segment %s: %d of %d stock-days (%d stocks: %s) have no predefined concept",
            name,
            c.n_unknown,
            batches.n_rows,
            len(c.unknown_instruments),
            shown,
        )
    return batches
