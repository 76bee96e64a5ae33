"""Export a membership table to qlib's legacy HIST inputs, as of one date.

qlib's HIST reads a static ``stock2concept.npy`` (float ``[n_stocks, n_concepts]``) and a ``stock_index.npy``
(a pickled dict ``{instrument: row}``). :func:`to_legacy` writes both for one as-of date, plus the same dict as
JSON and the column names as JSON (``<...>stock2concept.concepts.json``, where the legacy loader looks for
them). Files are named ``<prefix>_stock2concept.npy`` etc., or ``<dir>/stock2concept.npy`` etc. when the output
is a directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, NamedTuple, Sequence, Union

import numpy as np
import pandas as pd

from ..atomic_files import PathLike, atomic_write_bytes, atomic_write_text, npy_bytes
from .base import ConceptError
from .legacy import MANIFEST_FORMAT, file_sha256, manifest_path
from .membership import MembershipLike, as_source

DateLike = Union[str, pd.Timestamp, np.datetime64, None]


class LegacyPaths(NamedTuple):
    """Paths written by :func:`to_legacy` (``concepts_json`` lies beside them)."""

    stock2concept: Path
    stock_index_npy: Path
    stock_index_json: Path

    @property
    def concepts_json(self) -> Path:
        """``<...>stock2concept.concepts.json``: where :func:`qlib_hist.concepts.load_concept_source` looks."""
        return self.stock2concept.with_suffix(".concepts.json")


# ----------------------------------------------------------------------------------------------- universe


def read_market_spans(provider_uri: PathLike, market: str) -> pd.DataFrame:
    """Read qlib's ``<provider_uri>/instruments/<market>.txt`` (``INST\\tstart\\tend`` per line) directly.

    Returns a DataFrame ``instrument`` (str), ``start``, ``end`` (``datetime64[ns]``, inclusive), file order.
    """
    path = Path(provider_uri).expanduser() / "instruments" / f"{market}.txt"
    if not path.is_file():
        raise ConceptError(f"{path}: market instrument file not found (provider_uri={provider_uri}, market={market})")
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise ConceptError(f"{path}, line {lineno}: expected 'INSTRUMENT<TAB>start<TAB>end', got {line!r}")
        try:
            start, end = pd.Timestamp(parts[1].strip()), pd.Timestamp(parts[2].strip())
        except ValueError as e:
            raise ConceptError(f"{path}, line {lineno}: cannot parse dates in {line!r}") from e
        rows.append((parts[0].strip(), start, end))
    df = pd.DataFrame(rows, columns=["instrument", "start", "end"])
    return df.astype({"start": "datetime64[ns]", "end": "datetime64[ns]"})


def instruments_in_window(spans: pd.DataFrame, start: DateLike = None, end: DateLike = None) -> List[str]:
    """Sorted unique instruments of ``spans`` (see :func:`read_market_spans`) listed at some day of
    ``[start, end]`` (inclusive; ``None`` = unbounded)."""
    keep = np.ones(len(spans), dtype=bool)
    if end is not None:
        keep &= (spans["start"] <= pd.Timestamp(end)).to_numpy()
    if start is not None:
        keep &= (spans["end"] >= pd.Timestamp(start)).to_numpy()
    return sorted(spans.loc[keep, "instrument"].unique().tolist())


def market_instruments(provider_uri: PathLike, market: str, start: DateLike = None, end: DateLike = None) -> List[str]:
    """Sorted instruments of a qlib market listed at some day of ``[start, end]``, read without ``qlib.init``."""
    return instruments_in_window(read_market_spans(provider_uri, market), start, end)


# ----------------------------------------------------------------------------------------------- export


def _output_paths(out_dir_or_prefix: PathLike) -> LegacyPaths:
    out = Path(out_dir_or_prefix).expanduser()
    if out.is_dir() or str(out_dir_or_prefix).endswith(("/", "\\")):
        name = lambda s: out / s  # noqa: E731
    else:
        name = lambda s: out.with_name(f"{out.name}_{s}")  # noqa: E731
    return LegacyPaths(name("stock2concept.npy"), name("stock_index.npy"), name("stock_index.json"))


def legacy_matrix(membership: MembershipLike, as_of: DateLike, instruments: Sequence[str]) -> pd.DataFrame:
    """The exported matrix: float32 DataFrame ``[sorted unique instruments, concepts with >= 1 member]``."""
    source = as_source(membership)
    universe = sorted(set(map(str, instruments)))
    if not universe:
        raise ConceptError("to_legacy: the instrument universe is empty")
    snap = source.snapshot(as_of, universe)
    snap = snap.loc[:, (snap.to_numpy() != 0).any(axis=0)]
    if snap.shape[1] == 0:
        raise ConceptError(
            f"to_legacy: no concept of {source.source} has a member among the {len(universe)} instruments "
            f"on {pd.Timestamp(as_of).date()} (check the date and the instrument spelling)"
        )
    return snap


def to_legacy(
    membership: MembershipLike, as_of: DateLike, instruments: Sequence[str], out_dir_or_prefix: PathLike
) -> LegacyPaths:
    """Write qlib's legacy ``stock2concept.npy`` / ``stock_index.npy`` (+ ``.json``, concept names ``.json``).

    Args:
        membership: a :class:`MembershipConcepts`, a membership DataFrame, or a membership file path.
        as_of: the day whose membership is exported (``start_date <= as_of <= end_date``).
        instruments: the universe (e.g. :func:`market_instruments`); rows follow its sorted order, and
            instruments without any concept on ``as_of`` keep an all-zero row.
        out_dir_or_prefix: an existing directory (or a path ending in ``/``) -> ``<dir>/stock2concept.npy``...;
            otherwise a prefix -> ``<prefix>_stock2concept.npy``...

    Returns:
        :class:`LegacyPaths` ``(stock2concept, stock_index_npy, stock_index_json)``. ``stock2concept.npy`` is
        float32 ``[n_stocks, n_concepts]`` (weights, 0 = not a member); concepts without a member in the
        universe on ``as_of`` are dropped. ``stock_index.npy`` loads with
        ``np.load(p, allow_pickle=True).item()`` as ``{instrument: row}``.
    """
    snap = legacy_matrix(membership, as_of, instruments)
    paths = _output_paths(out_dir_or_prefix)
    index = {inst: i for i, inst in enumerate(snap.index)}
    atomic_write_bytes(paths.stock2concept, npy_bytes(np.ascontiguousarray(snap.to_numpy(np.float32))))
    atomic_write_bytes(paths.stock_index_npy, npy_bytes(index))
    atomic_write_text(paths.stock_index_json, json.dumps(index, indent=0) + "\n")
    atomic_write_text(paths.concepts_json, json.dumps(list(map(str, snap.columns)), indent=0) + "\n")
    files = (paths.stock2concept, paths.stock_index_npy, paths.stock_index_json, paths.concepts_json)
    manifest = {"format": MANIFEST_FORMAT, "files": {path.name: file_sha256(path) for path in files}}
    atomic_write_text(manifest_path(paths.stock2concept), json.dumps(manifest, indent=1) + "\n")  # last: seals the set
    return paths
