"""Digests of JSON-able values: what names a checkpoint, a handler-cache entry, a rolling window or a benchmark run.

One definition (canonical JSON, sha1), so that the same settings give the same name wherever they are named.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def json_sha1(value: Any) -> Any:
    """A sha1 (``hashlib``'s object, for more ``update`` calls) of ``value`` as canonical JSON: sorted keys, and a
    value JSON cannot hold (a Timestamp, a Path) as its ``str``. What names a checkpoint, a cache entry, a rolling
    window or a benchmark run: changing this changes every such name."""
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode())


def json_digest(value: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of :func:`json_sha1`."""
    return json_sha1(value).hexdigest()[:length]
