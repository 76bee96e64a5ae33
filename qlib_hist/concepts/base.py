"""What every concept source hands to the model: per-row concept vectors for one dataset segment.

A segment's rows are (datetime, instrument) pairs sorted by day. Membership changes rarely, so instead of a
dense ``[rows, concepts]`` matrix the source returns the few *distinct* concept vectors (``matrix``,
``[U, C]``) and, for each row, which of them applies (``row_index``, ``[rows]``). The concept matrix of one
trading day is then ``matrix[row_index[start:start + count]]`` — built on the fly, never stored per day.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Protocol

import numpy as np

from ..errors import QlibHistError


class ConceptError(QlibHistError):
    """A concept input (file, table, matrix) is unusable; the message names the file and what is wrong."""


@dataclass
class SegmentConcepts:
    """Concept vectors for the rows of one segment.

    Attributes:
        matrix: float32 ``[U, C]``, the distinct concept vectors (weights; 0 = not a member). The last row is
            all zeros and serves rows with no concept.
        row_index: int64 ``[rows]``, for each segment row the row of ``matrix`` that applies on its day.
        names: ``C`` concept names (``str``), or ``None`` when the source has none.
        n_unknown: number of rows (stock-days) whose stock the source does not know (they get the zero row).
    """

    matrix: np.ndarray
    row_index: np.ndarray
    names: Optional[List[str]] = None
    n_unknown: int = 0
    unknown_instruments: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        assert self.matrix.ndim == 2 and self.row_index.ndim == 1
        self.matrix = np.ascontiguousarray(self.matrix, dtype=np.float32)
        self.row_index = np.ascontiguousarray(self.row_index, dtype=np.int64)


class ConceptSource(Protocol):
    """Anything that answers "which concepts does stock s belong to on day t" for a whole segment."""

    def for_rows(self, instruments: np.ndarray, dates: np.ndarray) -> SegmentConcepts:
        """Concept vectors for segment rows.

        Args:
            instruments: ``[rows]`` instrument codes (``str``, qlib spelling such as ``SH600000``).
            dates: ``[rows]`` ``datetime64[ns]`` trading days, non-decreasing.
        """
        ...

    def describe(self) -> str:
        """One line for logs: where the concepts come from and their count."""
        ...


class NoConcepts:
    """The concept source of a HIST whose predefined-concept module is off (``predefined_concepts: false``): every
    row gets an empty concept vector (``[rows, 0]``), and no file is read. The network does not read the concepts
    then, so its predictions are those it makes with any concept table."""

    def for_rows(self, instruments: np.ndarray, dates: np.ndarray) -> SegmentConcepts:
        return SegmentConcepts(np.zeros((1, 0), dtype=np.float32), np.zeros(len(instruments), dtype=np.int64))

    def describe(self) -> str:
        return "none (predefined_concepts is off: no concept table is read)"
