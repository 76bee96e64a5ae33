"""qlib's legacy concept inputs: a static ``stock2concept`` matrix and a ``stock_index`` dict.

``stock2concept.npy``: float ``[n_stocks, n_concepts]`` (1 = member). ``stock_index``: ``{instrument: row}``,
either a ``.npy`` holding a pickled dict (as qlib ships ``qlib_csi300_stock_index.npy``) or a ``.json`` object.

Unlike qlib, which maps every unknown stock to row 733 (a real stock, SZ002958), a stock missing from
``stock_index`` gets no predefined concept: the all-zero row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..atomic_files import PathLike
from .base import ConceptError, SegmentConcepts

#: all that qlib's pickled-dict ``stock_index.npy`` needs: numpy's array and dtype rebuilders (a dict of str and int
#: needs no global); anything else in the pickle is refused before it can run
SAFE_PICKLE_GLOBALS = frozenset(
    {
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }
)


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _StockIndexUnpickler(pickle.Unpickler):
    """Unpickles only :data:`SAFE_PICKLE_GLOBALS`: a data file never runs code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in SAFE_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise _RefusedGlobal(f"{module}.{name}")


def _read_pickled_npy(path: Path) -> Any:
    """The object a ``.npy`` holds (``np.save(obj, allow_pickle=True)``), read by the restricted unpickler."""
    with path.open("rb") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(fh)
        if dtype != np.dtype(object) or shape != ():
            return None
        try:
            loaded = _StockIndexUnpickler(fh).load()
        except _RefusedGlobal as err:
            raise ConceptError(
                f"stock_index {path}: refused to unpickle {err} (a stock_index .npy may hold only a "
                "{instrument: row} dict; pickles can run code). Write the mapping as a .json object instead, e.g. "
                "`qlib-hist concepts to-legacy` writes stock_index.json"
            ) from None
    return loaded.item() if isinstance(loaded, np.ndarray) and loaded.shape == () else None


def load_stock_index(path: PathLike) -> Dict[str, int]:
    """Read ``stock_index`` from a pickled-dict ``.npy`` (qlib's format) or a ``.json`` object."""
    path = Path(path)
    if not path.exists():
        raise ConceptError(f"stock_index file not found: {path}")
    if path.is_file() and path.stat().st_size == 0:
        raise ConceptError(f"stock_index {path}: the file is empty (0 bytes)")
    try:
        if path.suffix.lower() == ".json":
            mapping = json.loads(path.read_text())
        else:
            mapping = _read_pickled_npy(path)
    except ConceptError:
        raise
    except (ValueError, OSError, EOFError, pickle.UnpicklingError, TypeError) as err:
        raise ConceptError(
            f"stock_index {path}: cannot be read as a .npy pickled dict or a .json object ({err})"
        ) from None
    if not isinstance(mapping, dict) or not mapping:
        raise ConceptError(f"stock_index {path}: expected a non-empty dict {{instrument: row}}")
    rows = {}
    for key, value in mapping.items():
        row = _row_number(value)
        if row is None:
            raise ConceptError(
                f"stock_index {path}: {key!r} maps to {value!r}; every value must be a whole row number of "
                "stock2concept (0, 1, 2, ...)"
            )
        rows[str(key)] = row
    _warn_misspelt_keys(rows, path)
    return rows


def _row_number(value: Any) -> Optional[int]:
    """``value`` as a row number: an integer, an integral float (``3.0``) or its text; None for anything else
    (``3.5``, ``True``, ``"a"``)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if np.isfinite(value) and float(value).is_integer() else None
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _warn_misspelt_keys(rows: Dict[str, int], path: Path) -> None:
    """Log a warning when stock_index keys are A-shares spelt another way than qlib's (``600000.SH``, ``sh600000``):
    their rows would never meet a stock of a qlib dataset (``SH600000``)."""
    from .membership import suggest_instrument

    misspelt = [(key, fix) for key in rows if (fix := suggest_instrument(key)) is not None and fix != key]
    if misspelt:
        key, fix = misspelt[0]
        logging.getLogger("qlib_hist").warning(
            "stock_index %s: %d of %d keys are not spelt as qlib spells instruments (e.g. %r, which qlib spells %r): "
            "those stocks will get no predefined concept; rewrite the keys as %r",
            path, len(misspelt), len(rows), key, fix, fix,
        )  # fmt: skip


def load_stock2concept(path: PathLike) -> np.ndarray:
    """Read the legacy matrix; float32 ``[n_stocks, n_concepts]``, finite, not negative, with some member."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise ConceptError(f"stock2concept {path}: the file is empty (0 bytes); write or download it again")
    try:
        matrix = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ConceptError(f"stock2concept {path}: not a readable .npy array ({err})") from None
    if matrix.ndim != 2:
        raise ConceptError(f"stock2concept {path}: expected a 2-D [stocks, concepts] array, got shape {matrix.shape}")
    if 0 in matrix.shape:
        raise ConceptError(
            f"stock2concept {path}: shape {matrix.shape} has no "
            f"{'stock rows' if matrix.shape[0] == 0 else 'concept columns'}: no stock would get a concept"
        )
    if not (
        np.issubdtype(matrix.dtype, np.integer) or np.issubdtype(matrix.dtype, np.floating) or matrix.dtype == bool
    ):
        raise ConceptError(f"stock2concept {path}: expected numbers (0/1 or weights), got dtype {matrix.dtype}")
    with np.errstate(over="ignore"):  # checked after the cast: 1e300 is finite in float64, not in float32
        matrix = matrix.astype(np.float32, copy=False)
    if not np.isfinite(matrix).all():
        row, col = np.argwhere(~np.isfinite(matrix))[0]
        raise ConceptError(
            f"stock2concept {path}: contains NaN or inf (or a value beyond float32's range), first at row {row} "
            f"column {col}"
        )
    if (matrix < 0).any():
        row, col = np.argwhere(matrix < 0)[0]
        raise ConceptError(
            f"stock2concept {path}: {int((matrix < 0).sum())} negative entries, first {matrix[row, col]:g} at row "
            f"{row} column {col}: a legacy matrix holds 0 (not a member) or a positive weight (1 = member)"
        )
    if not matrix.any():
        raise ConceptError(
            f"stock2concept {path}: every entry is 0, so no stock belongs to any concept (1 = member); "
            "rebuild it, e.g. with `qlib-hist concepts to-legacy`"
        )
    return matrix


MANIFEST_FORMAT = "qlib-hist-legacy-set/1"


def manifest_path(stock2concept: PathLike) -> Path:
    """``<...>stock2concept.manifest.json``: the sha256 of each file one ``to-legacy`` run wrote, written last."""
    return Path(stock2concept).with_suffix(".manifest.json")


def file_sha256(path: PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_manifest(stock2concept: PathLike, *others: PathLike) -> None:
    """When a manifest lies beside ``stock2concept``, refuse files that are not the set it lists (a ``to-legacy`` run
    that stopped part-way, or one file replaced by hand): a new matrix beside an old index would silently give
    stocks other stocks' concepts. Files without a manifest (qlib's own) are not checked."""
    manifest = manifest_path(stock2concept)
    if not manifest.exists():
        return
    try:
        listed = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise ConceptError(f"{manifest}: unreadable manifest ({err}); rerun `qlib-hist concepts to-legacy`") from None
    for path in (Path(stock2concept), *map(Path, others)):
        if path.name in listed and path.exists() and file_sha256(path) != listed[path.name]:
            raise ConceptError(
                f"{path} is not the file that {manifest.name} lists: the legacy files beside it were not written "
                "together (an interrupted `qlib-hist concepts to-legacy`, or a file replaced); rerun to-legacy"
            )


class LegacyConcepts:
    """A static concept matrix: the same concepts for a stock on every day."""

    def __init__(
        self,
        stock2concept: PathLike,
        stock_index: PathLike,
        concept_names: Optional[List[str]] = None,
    ) -> None:
        self.path = Path(stock2concept)
        check_manifest(stock2concept, stock_index, self.path.with_suffix(".concepts.json"))
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

    def why_no_concepts(self, instruments: np.ndarray) -> str:
        """Why none of ``instruments`` gets a concept (for an error that a segment has no concept at all)."""
        from .membership import suggest_instrument

        known = [s for s in map(str, instruments) if s in self.stock_index]
        if known:
            return f"the rows of its {len(known)} stocks in stock_index are all 0"
        key = next(iter(self.stock_index))
        fix = suggest_instrument(key)
        example = str(instruments[0]) if len(instruments) else "SH600000"
        if fix is not None and fix != key:
            return (
                f"no stock_index key is one of its stocks: the keys are spelt like {key!r}, qlib spells it {fix!r} "
                f"(the segment's stocks: {example!r}, ...); rewrite stock_index with qlib's spelling"
            )
        return f"none of its stocks (e.g. {example!r}) is a key of stock_index (its keys: {key!r}, ...)"
