"""Concept sources for HIST's predefined-concept module.

``load_concept_source`` picks the source from the ``stock2concept`` argument:

- ``*.csv`` / ``*.parquet``: a membership table, point in time (:mod:`.membership`);
- anything else (``*.npy``): qlib's legacy static matrix with its ``stock_index`` (:mod:`.legacy`),
  downloaded from ``stock2concept_url`` when the file is missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

from .base import ConceptError, ConceptSource, SegmentConcepts
from .download import QLIB_STOCK2CONCEPT_URL, download_stock2concept
from .legacy import LegacyConcepts

TABLE_SUFFIXES = (".csv", ".parquet")

__all__ = [
    "ConceptError",
    "ConceptSource",
    "SegmentConcepts",
    "LegacyConcepts",
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
            "stock2concept .npy together with stock_index"
        )
    path = Path(stock2concept).expanduser()
    if path.suffix.lower() in TABLE_SUFFIXES:
        from .membership import MembershipConcepts

        return MembershipConcepts.from_path(path)
    if stock_index is None:
        raise ConceptError(f"stock2concept {path} is a legacy matrix: stock_index (.npy or .json) must be given too")
    if not path.exists():
        if not stock2concept_url:
            raise ConceptError(f"stock2concept {path} does not exist and stock2concept_url is empty (download off)")
        download_stock2concept(path, stock2concept_url)
    names_file = path.with_suffix(".concepts.json")
    names = json.loads(names_file.read_text()) if names_file.exists() else None
    return LegacyConcepts(path, Path(stock_index).expanduser(), concept_names=names)
