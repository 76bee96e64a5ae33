"""Concept sources for HIST's predefined-concept module.

``load_concept_source`` picks the source from the ``stock2concept`` argument:

- ``*.csv`` / ``*.parquet`` (``*.pq``): a membership table, point in time (:mod:`.membership`);
- ``*.npy`` (or a file in numpy's format under another name): qlib's legacy static matrix with its
  ``stock_index`` (:mod:`.legacy`), downloaded from ``stock2concept_url`` when a ``.npy`` is missing.

Any other file (``.xlsx``, ``.tsv``, ...) is refused with the suffixes that work, rather than read as a matrix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

from .base import ConceptError, ConceptSource, NoConcepts, SegmentConcepts
from .download import QLIB_STOCK2CONCEPT_URL, download_stock2concept
from .legacy import LegacyConcepts

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
LEGACY_SUFFIX = ".npy"
NPY_MAGIC = b"\x93NUMPY"


def _is_npy(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(len(NPY_MAGIC)) == NPY_MAGIC
    except OSError:
        return False


__all__ = [
    "ConceptError",
    "ConceptSource",
    "SegmentConcepts",
    "LegacyConcepts",
    "NoConcepts",
    "QLIB_STOCK2CONCEPT_URL",
    "download_stock2concept",
    "load_concept_source",
]


def load_concept_source(
    stock2concept: Union[str, Path, None],
    stock_index: Union[str, Path, None] = None,
    stock2concept_url: Optional[str] = QLIB_STOCK2CONCEPT_URL,
) -> ConceptSource:
    """The concept source named by HIST's ``stock2concept`` / ``stock_index`` arguments."""
    if stock2concept is None:
        raise ConceptError(
            "stock2concept is not set: give a membership table (.csv/.parquet, point in time) or qlib's legacy "
            "stock2concept .npy together with stock_index (with predefined_concepts false, HIST needs none)"
        )
    path = Path(stock2concept).expanduser()
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        from .membership import MembershipConcepts

        return MembershipConcepts.from_path(path)
    if suffix != LEGACY_SUFFIX and not (path.is_file() and _is_npy(path)):
        found = "does not exist" if not path.exists() else "is not a .npy array"
        raise ConceptError(
            f"stock2concept {path} {found}: its suffix {path.suffix or '(none)'!r} is neither a membership "
            "table's (.csv, .parquet) nor qlib's legacy matrix's (.npy with stock_index)"
        )
    if stock_index is None:
        raise ConceptError(f"stock2concept {path} is a legacy matrix: stock_index (.npy or .json) must be given too")
    if not path.exists():
        if not stock2concept_url:
            raise ConceptError(f"stock2concept {path} does not exist and stock2concept_url is empty (download off)")
        download_stock2concept(path, stock2concept_url)
    names_file = path.with_suffix(".concepts.json")
    names = json.loads(names_file.read_text()) if names_file.exists() else None
    return LegacyConcepts(path, Path(stock_index).expanduser(), concept_names=names)
