"""The package's edge with files and configs.

- Atomic file output: every file the package writes appears whole or not at all; a write that fails names the
  file the caller asked for, never the temporary file beside it.
- Dates read from a YAML or a task (:func:`as_timestamp`, :func:`config_dates`): PyYAML and ruamel (qrun) read an
  unquoted ``2017-01-01`` as a ``datetime.date``, which pandas 3 refuses against a datetime index level; every
  such date becomes a ``pd.Timestamp`` where it is read, and a bad one is one line naming its key.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, List, Optional, Tuple, Union

from .errors import QlibHistError

#: a path as the package's functions take it: a string or a ``pathlib.Path`` (any ``os.PathLike``)
PathLike = Union[str, os.PathLike]


def json_sha1(value: Any) -> Any:
    """A sha1 (``hashlib``'s object, for more ``update`` calls) of ``value`` as canonical JSON: sorted keys, and a
    value JSON cannot hold (a Timestamp, a Path) as its ``str``. What names a checkpoint, a cache entry, a rolling
    window or a benchmark run: changing this changes every such name."""
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode())


def json_digest(value: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of :func:`json_sha1`."""
    return json_sha1(value).hexdigest()[:length]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(path: Path) -> List[Path]:
    """Remove ``path``'s temporary files or folders (see :func:`atomic_path`) whose writer process is gone."""
    removed = []
    prefix = f".{path.name}."
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
                removed.append(tmp)
    return removed


def _naming(err: OSError, path: Union[Path, str]) -> OSError:
    """``err`` (about the temporary file, or naming no file) as the same error naming ``path``."""
    if err.errno is None or not err.strerror:
        return type(err)(f"cannot write {path}: {err}")
    return type(err)(err.errno, err.strerror, str(path))


def _in_temp(err: OSError, tmp: Path, path: Path) -> Optional[str]:
    """What ``err`` names inside the temporary ``tmp`` (the file, or a file of the folder), said of ``path``;
    None when it names no such file (an error about an input, say, is left as it is)."""
    for name in (err.filename, err.filename2):
        if isinstance(name, (str, os.PathLike)):
            text = os.fspath(name)
            if text == str(tmp):
                return str(path)
            if text.startswith(str(tmp) + os.sep):
                return str(path) + text[len(str(tmp)) :]
    return None


@contextlib.contextmanager
def _atomic(
    path: PathLike,
    make: Callable[[Path], Path],
    place: Callable[[Path, Path], None],
    discard: Callable[[Path], None],
) -> Iterator[Path]:
    """The write-beside-then-rename of :func:`atomic_path` and :func:`atomic_dir`: ``make(prefix path)`` makes the
    temporary entry, ``place(tmp, path)`` moves it onto ``path`` after the block, ``discard(tmp)`` removes it after
    any exception. An ``OSError`` about the temporary entry names ``path`` instead."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    try:
        tmp = make(path.parent / f".{path.name}.{os.getpid()}.")
    except OSError as err:
        raise _naming(err, path) from None
    try:
        try:
            yield tmp
        except OSError as err:
            named = _in_temp(err, tmp, path)
            if named is None:
                raise
            raise _naming(err, named) from None
        try:
            place(tmp, path)
        except OSError as err:
            if err.filename is not None and _in_temp(err, tmp, path) is None:
                raise  # about another file (one of an older entry being replaced), which it names already
            raise _naming(err, path) from None
    except BaseException:
        discard(tmp)
        raise


def _new_file(prefix: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=prefix.name, suffix=".tmp", dir=prefix.parent)
    os.close(fd)
    return Path(tmp)


def _place_file(tmp: Path, path: Path) -> None:
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
    os.replace(tmp, path)


def _remove_file(tmp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()


def _new_dir(prefix: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix.name, suffix=".tmp", dir=prefix.parent))


def _place_dir(tmp: Path, path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)  # its errors name the destination's own files
    os.replace(tmp, path)


def atomic_path(path: PathLike) -> ContextManager[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file lives in the same directory, so the final ``os.replace`` is atomic on POSIX.
    On any exception the temporary file is removed and ``path`` is left untouched. Its name,
    ``.<name>.<pid>.<random>.tmp``, says whose it is: temporary files of ``path`` left by a writer that was killed
    (its process is gone) are removed by the next write to ``path``.

    An ``OSError`` about the temporary file (it cannot be made, written or renamed) is raised as the same error
    naming ``path``: ``[Errno 13] Permission denied: '/x/out.csv'``, not ``'/x/.out.csv.123.ab.tmp'``.
    """
    return _atomic(path, _new_file, _place_file, _remove_file)


def atomic_dir(path: PathLike) -> ContextManager[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (an older entry is removed)."""
    return _atomic(path, _new_dir, _place_dir, lambda tmp: shutil.rmtree(tmp, ignore_errors=True))


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def check_writable(path: PathLike, what: str, folder: bool = False) -> Path:
    """Fail now, naming ``what`` and the user's ``path``, if a file (or, with ``folder``, a folder) cannot be written
    there; creates the missing parent folders, as the write itself would. Returns the expanded path."""
    path = Path(path).expanduser()
    target = path if folder else path.parent
    if path.is_dir() and not folder:
        raise OSError(f"{what} {path} is a folder: give a file name")
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as err:
        raise OSError(f"{what} {path}: cannot write there ({err.strerror or err})") from None
    return path


def npy_bytes(obj: Any) -> bytes:
    """``np.save`` output as bytes (a dict is pickled, as in qlib's ``csi300_stock_index.npy``)."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, obj, allow_pickle=True)
    return buf.getvalue()


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


# ---------------------------------------------------------------------------------------------- dates from configs
#: keys whose string values are dates: a handler's times (qlib's ``Alpha360`` / ``Alpha158`` kwargs) and a
#: backtest's; under ``segments`` every value is a ``[start, end]`` pair of dates
DATE_KEYS = ("start_time", "end_time", "fit_start_time", "fit_end_time")


class ConfigError(QlibHistError):
    """A config (a workflow YAML, a task) cannot be read or lacks what it needs; the message names the file or key."""


class ConfigDateError(ConfigError):
    """A date in a config (a YAML, a task, an argument) is not a date pandas can hold; the message names its key."""


class DateOutOfRange(ConfigDateError):
    """A date pandas cannot hold (before 1677-09-22 or after 2262-04-11, such as ``0001-01-01``)."""


def _out_of_range(key: str, value: Any) -> DateOutOfRange:
    import pandas as pd

    return DateOutOfRange(
        f"{key}: {value!s} is outside the dates pandas can hold ({pd.Timestamp.min.ceil('D').date()} .. "
        f"{pd.Timestamp.max.floor('D').date()})"
    )


def as_timestamp(value: Any, key: str) -> Any:
    """A date read from a config as a ``pd.Timestamp`` (``None`` stays ``None``: an open end).

    Takes what YAML readers and users give: a ``datetime.date`` (PyYAML's and ruamel's unquoted ``2017-01-01``), a
    ``datetime``, a ``pd.Timestamp``, a ``numpy.datetime64`` or a string such as ``"2017-01-01"``. Anything else,
    a string pandas cannot parse, or a date outside the range pandas holds (``0001-01-01``) raises
    :class:`ConfigDateError` naming ``key``.
    """
    import numpy as np
    import pandas as pd

    if value is None:
        return None
    if not isinstance(value, (str, datetime.date, np.datetime64)):
        raise ConfigDateError(f"{key}: expected a date YYYY-MM-DD, got {value!r}")
    try:
        stamp = pd.Timestamp(value)
    except pd.errors.OutOfBoundsDatetime:
        raise _out_of_range(key, value) from None
    except (ValueError, TypeError):
        raise ConfigDateError(f"{key}: expected a date YYYY-MM-DD, got {value!r}") from None
    if stamp is pd.NaT:
        raise ConfigDateError(f"{key}: expected a date YYYY-MM-DD, got {value!r}")
    if stamp.unit != "ns":  # pandas 3 keeps the resolution it parsed at; qlib's calendars are nanoseconds
        try:
            stamp = stamp.as_unit("ns")
        except (pd.errors.OutOfBoundsDatetime, OverflowError, ValueError):
            raise _out_of_range(key, value) from None
    return stamp


def unreadable_yaml(path: PathLike, err: Exception) -> ConfigError:
    """The error for a YAML that its reader cannot read; PyYAML and ruamel both raise a bare ``ValueError`` (``day
    is out of range for month``, no file, no line) for an unquoted date that does not exist, such as 2017-02-30."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    hint = " (an unquoted date that does not exist?)" if "out of range" in reason else ""
    return ConfigError(f"{path}: not a readable YAML: {reason}{hint}")


DateConverter = Callable[[Any, str], Any]


def config_dates(node: Any, source: str = "", where: str = "", convert: DateConverter = as_timestamp) -> Any:
    """A copy of a config (dicts, lists, tuples rebuilt) with every date converted by ``convert(value, key)``
    (default :func:`as_timestamp`): each ``datetime.date`` anywhere, and the strings of :data:`DATE_KEYS` and of a
    ``segments`` mapping's ``[start, end]`` pairs. Errors name the key (``task.dataset.kwargs.segments.test[1]``,
    below ``where``), after ``source`` (the file) when given."""

    def walk(value: Any, key: str, dated: bool) -> Any:
        if isinstance(value, dict):
            return {k: walk_item(k, v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            items = [walk(v, f"{key}[{i}]", dated) for i, v in enumerate(value)]
            return items if isinstance(value, list) else tuple(items)
        if isinstance(value, datetime.date) or (dated and isinstance(value, str)):
            return convert(value, key)
        return value

    def walk_item(name: Any, value: Any, key: str) -> Any:
        if name == "segments" and isinstance(value, dict):
            return {k: walk(v, f"{key}.{k}", dated=True) for k, v in value.items()}
        return walk(value, key, dated=name in DATE_KEYS)

    try:
        return walk(node, where, dated=False)
    except ConfigDateError as err:
        if not source:
            raise
        raise type(err)(f"{source}: {err}") from None


def date_span(pair: Any, key: str) -> Tuple[Any, Any]:
    """A ``[start, end]`` pair of a config (a segment) as two ``pd.Timestamp`` (or ``None``), naming ``key``."""
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        raise ConfigDateError(f"{key}: expected [start, end], got {pair!r}")
    return as_timestamp(pair[0], f"{key}[0]"), as_timestamp(pair[1], f"{key}[1]")
