"""Fetching qlib's published ``stock2concept`` matrix when the file is missing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Union

import requests

from ..atomic_files import atomic_path
from ..settings import QLIB_STOCK2CONCEPT_URL
from .base import ConceptError
from .legacy import load_stock2concept

BUILD_HINT = (
    "Build a concept file instead: `qlib-hist concepts from-sw SW.csv members.csv` then pass members.csv as "
    "stock2concept (point in time), or `qlib-hist concepts to-legacy members.csv --as-of DATE ...` for a legacy .npy."
)


def download_stock2concept(path: Union[str, Path], url: str = QLIB_STOCK2CONCEPT_URL, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``path``: one retry, checked to load as a 2-D array, then written atomically.

    Raises:
        ConceptError: on network or HTTP errors, or when the body is not a 2-D ``.npy`` array.
    """
    path = Path(path)
    log = logging.getLogger("qlib_hist")
    errors = []
    for attempt in (1, 2):
        try:
            response = requests.get(url, timeout=timeout)
            response.raise_for_status()
            body = response.content
            with atomic_path(path) as tmp:
                tmp.write_bytes(body)
                matrix = load_stock2concept(tmp)  # a 2-D numeric finite array, or ConceptError
        except (requests.RequestException, ConceptError, OSError) as err:
            errors.append(f"attempt {attempt}: {type(err).__name__}: {err}")
            log.warning("download of %s failed (%s)", url, errors[-1])
            continue
        log.info("downloaded stock2concept %s from %s (%d x %d)", path, url, *matrix.shape)
        return path
    raise ConceptError(
        f"stock2concept {path} is missing and could not be downloaded from {url}: {'; '.join(errors)}. {BUILD_HINT}"
    )
