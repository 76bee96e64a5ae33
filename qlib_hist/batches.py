"""Daily batches: one dataset segment turned, once, into tensors grouped by trading day.

HIST's attention runs across the stocks of one day, so a batch is a day. A segment becomes:

- ``features``  float32 ``[rows, F]`` (Alpha360: ``F = 360 = 6 fields x 60 days``), rows sorted by day;
- ``labels``    float32 ``[rows]`` (NaN where unknown), training segments only;
- ``day_start`` / ``day_count`` int64 ``[days]``: day ``d`` is rows ``day_start[d] : day_start[d] + day_count[d]``;
- the concept vectors of every row (:class:`qlib_hist.concepts.SegmentConcepts`), gathered per day on demand.

No pandas and no file reads happen after construction: the epoch loop only slices tensors. The features are a
read-only view of the frame's float32 block where it has one (the qlib edge hands in views of the handler's frame).
This module imports no qlib.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import warnings
from dataclasses import dataclass
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import pandas as pd
import torch

from .concepts import ConceptSource, SegmentConcepts
from .errors import QlibHistError


class DataError(QlibHistError):
    """The dataset segment cannot be used by HIST; the message names the segment and the problem."""


class Day(NamedTuple):
    """One trading day's tensors on the training device (``n`` stocks)."""

    x: torch.Tensor  # [n, F] features
    concepts: torch.Tensor  # [n, C] concept vectors on that day
    label: Optional[torch.Tensor]  # [n] (NaN = unknown)
    sample_weight: Optional[torch.Tensor]  # [n] loss weights (a qlib Reweighter's)
    member_weight: Optional[torch.Tensor]  # [n] weights as members of the predefined concepts (e.g. market value)
    mask: Optional[torch.Tensor] = None  # [n] bool: False on padding rows (a day padded to a static size)
    market: Optional[torch.Tensor] = None  # [M] the day's market state (market_context)
    aux_label: Optional[torch.Tensor] = None  # [n, K] labels of the auxiliary horizons (NaN = none), training only


@dataclass
class DailyBatches:
    """One segment as daily batches. See the module docstring for shapes."""

    features: torch.Tensor
    labels: Optional[torch.Tensor]
    sample_weights: Optional[torch.Tensor]  # [rows] loss weights
    day_start: np.ndarray
    day_count: np.ndarray
    index: pd.MultiIndex
    concept_matrix: torch.Tensor  # [U, C] distinct concept vectors, last row all zero
    concept_rows: torch.Tensor  # [rows] row of concept_matrix for each row
    concepts: SegmentConcepts
    order: Optional[np.ndarray] = None  # our row k is the dataset's row order[k]; None when already sorted
    member_weights: Optional[torch.Tensor] = None  # [rows] weights as members of the predefined concepts
    market: Optional[torch.Tensor] = None  # [days, M] each day's market state (market_context; NaN = no bar)
    aux_labels: Optional[torch.Tensor] = None  # [rows, K] the auxiliary horizons' labels (NaN = none)

    @property
    def n_days(self) -> int:
        return len(self.day_start)

    @property
    def n_rows(self) -> int:
        return len(self.features)

    def day_slice(self, day: int) -> slice:
        start = int(self.day_start[day])
        return slice(start, start + int(self.day_count[day]))

    def day(self, day: int, device: torch.device) -> Day:
        """The tensors of trading day ``day`` on ``device``."""
        rows = self.day_slice(day)

        def take(values: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if values is None else values[rows].to(device, non_blocking=True)

        concepts = self.concept_matrix[self.concept_rows[rows]].to(device, non_blocking=True)
        return Day(
            self.features[rows].to(device, non_blocking=True),
            concepts,
            take(self.labels),
            take(self.sample_weights),
            take(self.member_weights),
            market=None if self.market is None else self.market[day].to(device, non_blocking=True),
            aux_label=take(self.aux_labels),
        )

    def to(self, device: torch.device) -> "DailyBatches":
        """The segment with its tensors moved to ``device`` once (features, labels, weights, concept rows), so
        that each day is a view there and an epoch copies nothing from the host. The same object on the CPU."""
        if self.features.device == torch.device(device):
            return self

        def move(values: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if values is None else values.to(device)

        return dataclasses.replace(
            self,
            features=self.features.to(device),
            labels=move(self.labels),
            sample_weights=move(self.sample_weights),
            member_weights=move(self.member_weights),
            market=move(self.market),
            aux_labels=move(self.aux_labels),
            concept_matrix=self.concept_matrix.to(device),
            concept_rows=self.concept_rows.to(device),
        )

    def days(self, device: torch.device, order: Optional[np.ndarray] = None) -> Iterator[Tuple[int, Day]]:
        """Yield ``(day, day_tensors)`` in ``order`` (default: calendar order)."""
        for day in range(self.n_days) if order is None else order:
            yield int(day), self.day(int(day), device)

    def fingerprint(self) -> str:
        """A cheap, stable hash of the segment's content (shapes, days, every 97th row, labels, concepts)."""
        digest = hashlib.sha1()
        for part in (
            np.array(self.features.shape),
            self.day_start,
            self.day_count,
            self.features[::97].numpy(),
            self.concept_matrix.numpy(),
            self.concept_rows.numpy(),
            np.array([]) if self.labels is None else self.labels.numpy(),
        ):
            digest.update(np.ascontiguousarray(part).tobytes())
        for extra in (self.market, self.aux_labels):  # only where present: other segments keep their fingerprint
            if extra is not None:
                digest.update(np.ascontiguousarray(extra.cpu().numpy()).tobytes())
        digest.update("|".join(map(str, self.index[[0, -1]])).encode())
        return digest.hexdigest()[:16]

    def in_dataset_order(self, frame: Union[pd.Series, pd.DataFrame]) -> Union[pd.Series, pd.DataFrame]:
        """Rows of ``frame`` (on ``self.index``, day-sorted) put back in the dataset's own row order."""
        return frame if self.order is None else frame.iloc[np.argsort(self.order)]


_LAGGED = re.compile(r"([A-Za-z_]+?)(\d+)")


def check_feature_layout(names: List[str], d_feat: int, segment_name: str) -> None:
    """Refuse feature columns that are not ``d_feat`` fields x ``T`` days in Alpha360's field-major layout.

    Alpha360 names its columns ``CLOSE59 .. CLOSE0, OPEN59 .. OPEN0, ...``: the names give the field count. Names
    with one prefix (``f0 .. f59``) or none that end in a number say nothing and pass; a mix of lagged and plain
    names (Alpha158's ``KMID, KLEN, ..., ROC5``) or a ragged grid is refused.
    """
    parsed = [_LAGGED.fullmatch(name) for name in names]
    n_lagged = sum(m is not None for m in parsed)
    fields: Dict[str, List[int]] = {}
    for m in parsed:
        if m is not None:
            fields.setdefault(m.group(1), []).append(int(m.group(2)))
    if n_lagged == 0 or (n_lagged == len(names) and len(fields) == 1):
        return
    lags = {tuple(sorted(v)) for v in fields.values()}
    blocks = [m.group(1) for m in parsed if m is not None]
    contiguous = 1 + sum(blocks[i] != blocks[i - 1] for i in range(1, len(blocks))) == len(fields)
    if n_lagged < len(names) or len(lags) != 1 or not contiguous:
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise DataError(
            f"segment {segment_name}: the {len(names)} feature columns ({shown}) are not a time series of fields x "
            "days, which HIST's RNN encoder reads (Alpha360: CLOSE59..CLOSE0, OPEN59..OPEN0, ...). A factor set such "
            "as Alpha158 has one value per factor: use the Alpha360 handler (or a handler with the same layout)"
        )
    if len(fields) != d_feat:
        raise DataError(
            f"segment {segment_name}: d_feat={d_feat}, but the feature columns hold {len(fields)} fields "
            f"({', '.join(fields)}) x {len(next(iter(lags)))} days: use d_feat={len(fields)}"
        )
    backwards = [name for name, lags_in_order in fields.items() if any(np.diff(lags_in_order) >= 0)]
    if backwards:
        raise DataError(
            f"segment {segment_name}: the columns of field {backwards[0]} do not run from the oldest day to the newest "
            f"({backwards[0]}59 .. {backwards[0]}0 in Alpha360), so the encoder would read time backwards"
        )


def check_labels(batches: DailyBatches, segment_name: str, need_daily_variation: bool = False) -> None:
    """Refuse a segment that cannot train or score: no finite label at all, or (for correlation metrics, with
    ``need_daily_variation``) labels that never differ within a day."""
    if batches.labels is None:
        raise DataError(f"segment {segment_name}: built without labels")
    labels = batches.labels.numpy()
    if not np.isfinite(labels).any():
        raise DataError(
            f"segment {segment_name}: every label is NaN ({len(labels)} rows): check the handler's label expression "
            "and the segment's dates (a forward return is NaN on the last days of the data)"
        )
    if need_daily_variation:
        with warnings.catch_warnings():  # all-NaN days give NaN here, which is what they mean
            warnings.simplefilter("ignore", RuntimeWarning)
            spread = np.fmax.reduceat(labels, batches.day_start) - np.fmin.reduceat(labels, batches.day_start)
        if not (spread > 0).any():
            raise DataError(
                f"segment {segment_name}: the labels never differ between the stocks of a day, so a correlation "
                "metric (ic, rank_ic) is undefined on it: use metric 'loss', or check the label"
            )


def _day_bounds(dates: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``dates [rows]`` sorted -> (day_start, day_count), int64 ``[days]``."""
    change = np.flatnonzero(dates[1:] != dates[:-1]) + 1
    day_start = np.concatenate([[0], change]).astype(np.int64)
    day_count = np.diff(np.concatenate([day_start, [len(dates)]])).astype(np.int64)
    return day_start, day_count


def _check_finite(
    features: np.ndarray, index: pd.MultiIndex, columns: pd.Index, segment_name: str, chunk: int = 16384
) -> None:
    """Raise a DataError naming the count and first place of NaN/inf values; scans in row chunks (low memory)."""
    n_bad = n_rows = 0
    first = None
    for start in range(0, len(features), chunk):
        bad = ~np.isfinite(features[start : start + chunk])
        if bad.any():
            n_bad += int(bad.sum())
            n_rows += int(bad.any(1).sum())
            if first is None:
                row, col = np.argwhere(bad)[0]
                first = (start + row, col)
    if first is not None:
        row, col = first
        raise DataError(
            f"segment {segment_name}: {n_bad} NaN/inf feature values in {n_rows} rows; first at {index[row]} "
            f"column {columns[col]!r}. Add a Fillna processor (e.g. infer_processors: Fillna) to the handler."
        )


def build_daily_batches(
    df: pd.DataFrame,
    concept_source: ConceptSource,
    segment_name: str,
    d_feat: int,
    with_label: bool,
    sample_weights: Optional[pd.Series] = None,
    member_weights: Optional[pd.Series] = None,
) -> DailyBatches:
    """Convert a segment's frame (what ``DatasetH.prepare`` returns) into :class:`DailyBatches`.

    Args:
        df: rows indexed by (datetime, instrument); ``feature`` columns, plus ``label`` when ``with_label``.
        concept_source: gives each row's concept vector on its own day (point in time where it can).
        segment_name: used in error messages and logs.
        d_feat: features per time step; the feature count must be a multiple of it.
        with_label: read the first ``label`` column.
        sample_weights: optional per-row loss weights (a qlib ``Reweighter``'s output) on ``df``'s index.
        member_weights: optional per-row member weights for the predefined concepts, on ``df``'s index.
    """
    if df is None or len(df) == 0:
        raise DataError(f"segment {segment_name} is empty: check the dataset's segments and the handler's time range")
    if not isinstance(df.index, pd.MultiIndex) or df.index.nlevels != 2:
        raise DataError(f"segment {segment_name}: expected a (datetime, instrument) MultiIndex, got {df.index.names}")
    dates = df.index.get_level_values(0).values
    if not np.issubdtype(dates.dtype, np.datetime64):
        raise DataError(
            f"segment {segment_name}: index level 0 must hold dates, got {df.index.names[0]!r} ({dates.dtype})"
        )
    order = None
    if not (dates[1:] >= dates[:-1]).all():
        order = np.argsort(dates, kind="stable")
        df = df.iloc[order]
        dates = dates[order]
        sample_weights = None if sample_weights is None else sample_weights.iloc[order]
        member_weights = None if member_weights is None else member_weights.iloc[order]

    if df.index.has_duplicates:
        first = df.index[df.index.duplicated()][0]
        raise DataError(f"segment {segment_name}: (datetime, instrument) row {first} appears more than once")
    feature_frame = df["feature"] if isinstance(df.columns, pd.MultiIndex) else df
    check_feature_layout([str(c) for c in feature_frame.columns], d_feat, segment_name)
    # no copy when the frame already holds one float32 block: the tensors share the handler's memory (read only)
    features = feature_frame.to_numpy(dtype=np.float32)
    if features.shape[1] % d_feat:
        raise DataError(
            f"segment {segment_name}: {features.shape[1]} feature columns is not a multiple of d_feat={d_feat} "
            "(Alpha360 has 360 = 6 x 60: use d_feat=6)"
        )
    _check_finite(features, df.index, feature_frame.columns, segment_name)

    labels = None
    if with_label:
        label_frame = df["label"]
        if label_frame.shape[1] != 1:
            raise DataError(f"segment {segment_name}: HIST trains on one label column, got {list(label_frame.columns)}")
        labels = torch.from_numpy(label_frame.to_numpy(dtype=np.float32).reshape(-1).copy())

    concepts = concept_source.for_rows(df.index.get_level_values(1).values.astype(str), dates)
    day_start, day_count = _day_bounds(dates)

    def as_tensor(values: Optional[pd.Series]) -> Optional[torch.Tensor]:
        return None if values is None else torch.from_numpy(values.to_numpy(dtype=np.float32).copy())

    with warnings.catch_warnings():  # a read-only view is fine: the batches never write into their features
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        features_tensor = torch.from_numpy(features)
    return DailyBatches(
        features=features_tensor,
        labels=labels,
        sample_weights=as_tensor(sample_weights),
        day_start=day_start,
        day_count=day_count,
        index=df.index,
        concept_matrix=torch.from_numpy(concepts.matrix),
        concept_rows=torch.from_numpy(concepts.row_index),
        concepts=concepts,
        order=order,
        member_weights=as_tensor(member_weights),
    )
