"""Where the benchmarks live, and the repository-relative form of paths that result files record."""

from __future__ import annotations

import os
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent  # benchmarks/
ROOT = HERE.parent  # the repository
#: the real-data folder: ``$QLIB_HIST_SHARED_DATA``, else ``shared/data`` beside the repository (as the tests read it)
SHARED = Path(os.environ.get("QLIB_HIST_SHARED_DATA") or ROOT.parent / "shared" / "data").expanduser()

_TRACEBACK_FILE = re.compile(r'File "([^"]+)"')


def repo_relative(path: str | os.PathLike) -> str:
    """``path`` relative to the repository root, with ``/`` separators: ``../shared/data/cn_csi300``.

    ``~`` is expanded; a relative path is taken as already relative to the repository and returned as is; a path
    with no relative form (another drive) stays absolute.
    """
    path = Path(path).expanduser()
    if not path.is_absolute():
        return path.as_posix()
    try:
        return Path(os.path.relpath(path, ROOT)).as_posix()
    except ValueError:
        return path.as_posix()


def relative_traceback(text: str) -> str:
    """``text`` (a Python traceback) with every ``File "..."`` path in :func:`repo_relative` form."""
    return _TRACEBACK_FILE.sub(lambda m: f'File "{repo_relative(m.group(1))}"', text)
