"""An on-disk cache of a built qlib data handler (e.g. Alpha360 over CSI300), in a format this package owns.

Computing Alpha360 for CSI300 over a decade takes minutes; training runs and benchmarks reuse it. The cache holds
one entry per (provider, handler class, handler kwargs): the handler's *infer* frame (features after the infer
processors, raw labels), stored by :mod:`qlib_hist.frame_store` (a ``.npy`` read with ``allow_pickle=False``, a
parquet index, JSON metadata: nothing in the cache can run code, whoever wrote to its predictable path). Loading
rebuilds a plain ``DataHandlerLP`` from it through qlib's public ``StaticDataLoader`` and re-applies the learn
processors (``DropnaLabel``, ``CSRankNorm``: seconds), so ``fetch(data_key=DK_L)`` and ``DK_I`` give what the
original handler gives.

Not ``DatasetH(handler="file://...")``: that unpickles the handler (qlib after 0.9.7 restricts it and refuses
Alpha360). A damaged or incomplete entry is rebuilt, with a log line.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from qlib.data.dataset.handler import DataHandlerLP

from ..atomic_files import PathLike
from ..config_dates import as_timestamp, config_dates
from ..digests import json_digest
from ..frame_store import FrameStoreError, read_frame, write_frame

CACHE_VERSION = 3  # 3: frame_store folders (2: pandas pickles, no longer read)


def _provider_digest(provider: Path) -> str:
    """sha1 of the provider's calendar and instrument files (their contents, not their modification times).

    A provider re-mounted or touched keeps its key; one with more days or changed universes gets a new one.
    """
    digest = hashlib.sha1()
    files = [provider / "calendars" / "day.txt", *sorted((provider / "instruments").glob("*.txt"))]
    for file in files:
        if file.is_file():
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def _date_text(value: Any, key: str) -> str:
    """A config's date as a YAML string of it reads: ``"2017-01-01"`` for a day (a ``datetime.date``, a midnight
    ``pd.Timestamp``, or that string itself), the Timestamp's text where it has a time of day."""
    stamp = as_timestamp(value, key)
    return str(stamp.date()) if stamp == stamp.normalize() else str(stamp)


def cache_key(handler_config: dict, provider_uri: PathLike) -> str:
    """A stable hash of the provider (path, calendar and instruments) and the full handler config.

    The config's dates (:func:`~qlib_hist.config_dates.config_dates`: the handler's and its processors' times, and any
    ``datetime.date``) count as their ``YYYY-MM-DD`` text, so a date, a Timestamp and a string of the same day give
    one key; a config whose dates are already such strings keeps the key it had before dates were normalised."""
    provider = Path(provider_uri).expanduser().resolve()
    payload = {
        "v": CACHE_VERSION,
        "provider": str(provider),
        "content": _provider_digest(provider),
        "handler": config_dates(handler_config, where="handler", convert=_date_text),
    }
    return json_digest(payload)


def cached_handler(handler_config: dict, provider_uri: PathLike, cache_dir: PathLike) -> Any:
    """A ``DataHandlerLP`` equivalent to ``init_instance_by_config(handler_config)``, built once and cached.

    ``qlib.init(provider_uri=...)`` must have been called. A changed setting (dates, market, processors, label,
    provider) gives a new cache entry; entries are written atomically.
    """
    return DataHandlerLP(**_cached_parts(handler_config, provider_uri, cache_dir))


def ensure_cached(handler_config: dict, provider_uri: PathLike, cache_dir: PathLike) -> Path:
    """Build and cache ``handler_config``'s handler unless an entry exists; its path. Nothing is read back: for a
    process that prepares the cache for others (the workers of a benchmark grid)."""
    path = _entry(handler_config, provider_uri, cache_dir)
    if not path.exists():
        _build(handler_config, path)
    return path


def _entry(handler_config: dict, provider_uri: PathLike, cache_dir: PathLike) -> Path:
    name = f"{handler_config.get('class', 'handler')}_{cache_key(handler_config, provider_uri)}"
    return Path(cache_dir).expanduser() / name


def _build(handler_config: dict, path: Path) -> Any:
    """Build the handler (``qlib.init`` done), write its raw infer frame to ``path``; the frame."""
    from qlib.utils import init_instance_by_config

    tic = time.perf_counter()
    handler = init_instance_by_config(copy.deepcopy(handler_config))  # qlib fills processor kwargs in place
    frame = handler.fetch(col_set=DataHandlerLP.CS_RAW, data_key=DataHandlerLP.DK_I)
    write_frame(frame, path)
    logging.getLogger("qlib_hist").info("handler built in %.1fs and cached at %s", time.perf_counter() - tic, path)
    return frame


def _cached_parts(handler_config: dict, provider_uri: PathLike, cache_dir: PathLike) -> dict:
    """``DataHandlerLP`` keyword arguments that rebuild ``handler_config``'s handler from its cached infer frame."""
    from qlib.contrib.data.handler import check_transform_proc
    from qlib.data.dataset.loader import StaticDataLoader

    log = logging.getLogger("qlib_hist")
    kwargs = handler_config.get("kwargs", {})
    path = _entry(handler_config, provider_uri, cache_dir)
    frame = None
    if path.exists():
        tic = time.perf_counter()
        try:
            frame = read_frame(path)
            log.info("handler cache hit %s (%.1fs)", path, time.perf_counter() - tic)
        except FrameStoreError as err:
            log.warning("handler cache entry %s is damaged (%s): rebuilding it", path, err)
    if frame is None:
        frame = _build(handler_config, path)
    learn = check_transform_proc(
        copy.deepcopy(kwargs.get("learn_processors", [])), kwargs.get("fit_start_time"), kwargs.get("fit_end_time")
    )
    return {"data_loader": StaticDataLoader(config=frame), "infer_processors": [], "learn_processors": learn}


class CachedHandler(DataHandlerLP):
    """A task-config face of :func:`cached_handler`: ``handler_class`` (in ``handler_module``) with the other
    keyword arguments, built once per distinct set of arguments and cached under ``cache_dir``.

    For qlib task dicts, e.g. rolling windows that several runs share (:mod:`qlib_hist.qlib_edge.rolling` moves
    ``fit_start_time`` / ``fit_end_time`` / ``start_time`` / ``end_time`` here as on the handler itself)::

        handler: {class: CachedHandler, module_path: qlib_hist.qlib_edge.handler_cache,
                  kwargs: {handler_class: Alpha360, handler_module: qlib.contrib.data.handler,
                           cache_dir: handler_cache, instruments: csi300, start_time: ..., ...}}
    """

    def __init__(self, handler_class: str, handler_module: str, cache_dir: PathLike, **kwargs: Any) -> None:
        super().__init__(**_cached_parts(*_wrapped(handler_class, handler_module, kwargs), cache_dir))

    @staticmethod
    def prepare(handler_class: str, handler_module: str, cache_dir: PathLike, **kwargs: Any) -> Path:
        """Build (unless cached) the entry that ``CachedHandler(**the same arguments)`` loads, and read nothing
        back (:func:`ensure_cached`): for a process that prepares the windows of runs that others train."""
        return ensure_cached(*_wrapped(handler_class, handler_module, kwargs), cache_dir)


def _wrapped(handler_class: str, handler_module: str, kwargs: dict) -> tuple[dict, PathLike]:
    """The wrapped handler's config and qlib's provider: what :class:`CachedHandler` keys its entry by."""
    from qlib.config import C

    return {"class": handler_class, "module_path": handler_module, "kwargs": kwargs}, C.dpm.get_data_uri()
