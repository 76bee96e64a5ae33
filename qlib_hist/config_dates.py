"""Dates read from a config (a workflow YAML, a task, an argument), and the errors of a config that cannot be read.

PyYAML and ruamel (qrun) read an unquoted ``2017-01-01`` as a ``datetime.date``, which pandas 3 refuses against a
datetime index level; every such date becomes a ``pd.Timestamp`` where it is read (:func:`as_timestamp`,
:func:`config_dates`, :func:`date_span`), and a bad one is one line naming its key (:class:`ConfigDateError`,
:class:`DateOutOfRange`). :func:`unreadable_yaml` words a YAML its reader refuses as a
:class:`~qlib_hist.errors.ConfigError`, the base of both. No qlib; pandas is imported when a date is read.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, Tuple

from .atomic_files import PathLike
from .errors import ConfigError

#: keys whose string values are dates: a handler's times (qlib's ``Alpha360`` / ``Alpha158`` kwargs) and a
#: backtest's; under ``segments`` every value is a ``[start, end]`` pair of dates
DATE_KEYS = ("start_time", "end_time", "fit_start_time", "fit_end_time")


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
