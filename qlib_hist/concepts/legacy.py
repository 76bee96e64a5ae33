"""qlib's legacy concept inputs: a static ``stock2concept`` matrix and a ``stock_index`` dict.

``stock2concept.npy``: float ``[n_stocks, n_concepts]`` (1 = member). ``stock_index``: ``{instrument: row}``,
either a ``.npy`` holding a pickled dict (as qlib ships ``qlib_csi300_stock_index.npy``) or a ``.json`` object.

Unlike qlib, which maps every unknown stock to row 733 (a real stock, SZ002958), a stock missing from
``stock_index`` gets no predefined concept: the all-zero row.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

from .base import ConceptError, SegmentConcepts

PathLike = Union[str, Path]


def load_stock_index(path: PathLike) -> Dict[str, int]:
    """Read ``stock_index`` from a pickled-dict ``.npy`` (qlib's format) or a ``.json`` object."""
    path = Path(path)
    if not path.exists():
        raise ConceptError(f"stock_index file not found: {path}")
    try:
        if path.suffix.lower() == ".json":
            mapping = json.loads(path.read_text())
        else:
            loaded = np.load(path, allow_pickle=True)
            mapping = loaded.item() if loaded.dtype == object and loaded.shape == () else None
    except (ValueError, OSError, EOFError, pickle.UnpicklingError) as err:
        raise ConceptError(
            f"stock_index {path}: cannot be read as a .npy pickled dict or a .json object ({err})"
        ) from None
    if not isinstance(mapping, dict) or not mapping:
        raise ConceptError(f"stock_index {path}: expected a non-empty dict {{instrument: row}}")
    try:
        return {str(k): int(v) for k, v in mapping.items()}
    except (TypeError, ValueError):
        raise ConceptError(f"stock_index {path}: every value must be an integer row of stock2concept") from None


def load_stock2concept(path: PathLike) -> np.ndarray:
    """Read the legacy matrix; float32 ``[n_stocks, n_concepts]``, finite."""
    path = Path(path)
    try:
        matrix = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ConceptError(f"stock2concept {path}: not a readable .npy array ({err})") from None
    if matrix.ndim != 2:
        raise ConceptError(f"stock2concept {path}: expected a 2-D [stocks, concepts] array, got shape {matrix.shape}")
    if not (
        np.issubdtype(matrix.dtype, np.integer) or np.issubdtype(matrix.dtype, np.floating) or matrix.dtype == bool
    ):
        raise ConceptError(f"stock2concept {path}: expected numbers (0/1 or weights), got dtype {matrix.dtype}")
    if not np.isfinite(matrix).all():
        raise ConceptError(f"stock2concept {path}: contains NaN or inf")
    return matrix.astype(np.float32, copy=False)


class LegacyConcepts:
    """A static concept matrix: the same concepts for a stock on every day."""

    def __init__(
        self,
        stock2concept: PathLike,
        stock_index: PathLike,
        concept_names: Optional[List[str]] = None,
    ) -> None:
        self.path = Path(stock2concept)
        self.matrix = load_stock2concept(stock2concept)
        self.stock_index = load_stock_index(stock_index)
        rows = np.fromiter(self.stock_index.values(), dtype=np.int64)
        if rows.min() < 0 or rows.max() >= len(self.matrix):
            bad = next(k for k, v in self.stock_index.items() if not 0 <= v < len(self.matrix))
            raise ConceptError(
                f"stock_index {stock_index}: {bad!r} maps to row {self.stock_index[bad]}, but stock2concept "
                f"{stock2concept} has rows 0..{len(self.matrix) - 1}"
            )
        if concept_names is not None and len(concept_names) != self.matrix.shape[1]:
            raise ConceptError(
                f"stock2concept {stock2concept}: {self.matrix.shape[1]} columns but {len(concept_names)} concept names"
            )
        self.names = concept_names

    def for_rows(self, instruments: np.ndarray, dates: np.ndarray) -> SegmentConcepts:
        """Rows of the matrix for each segment row; unknown stocks get the appended zero row."""
        zero_row = len(self.matrix)
        unique, inverse = np.unique(np.asarray(instruments, dtype=str), return_inverse=True)
        unique_rows = np.array([self.stock_index.get(s, zero_row) for s in unique], dtype=np.int64)
        row_index = unique_rows[inverse]
        matrix = np.vstack([self.matrix, np.zeros((1, self.matrix.shape[1]), dtype=np.float32)])
        return SegmentConcepts(
            matrix=matrix,
            row_index=row_index,
            names=self.names,
            n_unknown=int((row_index == zero_row).sum()),
            unknown_instruments=sorted(unique[unique_rows == zero_row].tolist()),
        )

    def describe(self) -> str:
        return f"legacy stock2concept {self.path} ({self.matrix.shape[0]} stocks x {self.matrix.shape[1]} concepts)"
