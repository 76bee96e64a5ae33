"""A DataFrame on disk in a format that cannot run code: ``values.npy`` (read with ``allow_pickle=False``),
``index.parquet`` and ``meta.json``, in one folder that appears whole (renamed into place) or not at all.

Made for the handler cache (:mod:`qlib_hist.qlib_edge.handler_cache`): a built Alpha360 frame (a float32 block with a
(datetime, instrument) row index and (group, field) columns) reads back in a fraction of a second as one block,
and a truncated or tampered entry is an :class:`FrameStoreError`, never code run from a file. No qlib.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic_files import PathLike, atomic_dir
from .errors import QlibHistError

FORMAT = "qlib-hist-frame/1"


class FrameStoreError(QlibHistError):
    """A stored frame is missing, incomplete or does not match its metadata."""


def write_frame(frame: pd.DataFrame, path: PathLike) -> Path:
    """Store ``frame`` (any index; string or tuple column labels) in the folder ``path``."""
    path = Path(path)
    columns = [list(c) if isinstance(c, tuple) else c for c in frame.columns]
    dtypes = [str(t) for t in frame.dtypes]
    meta = {
        "format": FORMAT,
        "shape": list(frame.shape),
        "columns": columns,
        "column_names": list(frame.columns.names),
        "dtypes": dtypes,
    }
    with atomic_dir(path) as tmp:
        np.save(tmp / "values.npy", frame.to_numpy(), allow_pickle=False)
        frame.index.to_frame(index=False).to_parquet(tmp / "index.parquet")
        (tmp / "meta.json").write_text(json.dumps(meta))
    return path


def read_frame(path: PathLike) -> pd.DataFrame:
    """The frame stored by :func:`write_frame`; its values are one block read without any unpickling."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise FrameStoreError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        values = np.load(path / "values.npy", allow_pickle=False)
        index_frame = pd.read_parquet(path / "index.parquet")
    except FrameStoreError:
        raise
    except Exception as err:  # json, numpy and pyarrow raise many types for a damaged file
        raise FrameStoreError(f"{path}: unreadable ({type(err).__name__}: {err})") from None
    if list(values.shape) != meta["shape"] or len(index_frame) != values.shape[0]:
        raise FrameStoreError(
            f"{path}: values {values.shape} and index {len(index_frame)} rows do not match {meta['shape']}"
        )
    if index_frame.shape[1] == 1:
        index = pd.Index(index_frame.iloc[:, 0])
    else:
        index = pd.MultiIndex.from_frame(index_frame)
    labels = [tuple(c) if isinstance(c, list) else c for c in meta["columns"]]
    tuples = bool(labels) and all(isinstance(c, tuple) for c in labels)
    columns = pd.MultiIndex.from_tuples(labels, names=meta["column_names"]) if tuples else pd.Index(labels)
    frame = pd.DataFrame(values, index=index, columns=columns, copy=False)
    if len(set(meta["dtypes"])) > 1:  # a mixed frame was stored in its common type: give each column its own back
        frame = frame.astype(dict(zip(frame.columns, meta["dtypes"])))
    return frame
