"""The recipe search's trial records: one JSON file per trial, committed, so a search outlives its machine.

A Ray experiment folder (``benchmarks/cache/search_ray``) resumes a search on the machine that ran it. The records
carry it further: every epoch a trial reports is written to ``<results>/search/trials/<trial>.json``, and a search
started where no experiment folder exists (a new machine, a fresh clone) takes the *finished* records as its past —
Optuna's TPE is told their scores, ASHA's rungs their epoch scores — and runs only the trials still missing. The
search's table and choice (``benchmarks.search --report``) are made from the records alone.

A record::

    {"trial": "5c1e9a0b", "setup": {...}, "params": {"lr": 0.0001, ...}, "status": "finished",
     "history": [{"epoch": 1, "valid_ic": 0.071, "valid_rank_ic": 0.069, "best_valid_ic": 0.077, "best_epoch": 0},
                 ...]}

``status`` is ``running`` until Ray says the trial ended: ``finished`` (its own early stop, its epoch budget or
ASHA's cut) or ``error``. A ``running`` record that no live search owns is a trial cut by a stop; the next search
drops it and runs that trial again as a new one. ``setup`` names the data and budget the trials share: records made
under another setup are refused, never mixed into one table. A score that is not a finite number (a trial whose
predictions were constant) is written as ``null``: such a trial is never the search's past or its choice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable

from qlib_hist.atomic_files import atomic_write_text

STATUSES = ("running", "finished", "error")
SCORE = "best_valid_ic"  # a trial's score: the valid IC of the weights it keeps so far
HISTORY_KEYS = ("epoch", "valid_ic", "valid_rank_ic", SCORE, "best_epoch")


class RecordError(ValueError):
    """A trial record that cannot be used: unreadable, malformed, or made under another search setup."""


def records_dir(results_dir: str | Path) -> Path:
    """Where a search's trial records live under a results folder."""
    return Path(results_dir) / "search" / "trials"


def write_record(directory: Path, record: dict) -> Path:
    """Write (or replace) ``record`` as ``<directory>/<trial>.json``, atomically; returns its path."""
    if record.get("status") not in STATUSES:
        raise RecordError(
            f"trial {record.get('trial')!r}: status must be one of {STATUSES}, got {record.get('status')!r}"
        )
    path = directory / f"{record['trial']}.json"
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, allow_nan=False) + "\n")
    return path


def read_record(path: Path) -> dict | None:
    """The record stored at ``path``, or None where there is none (a trial's first report); a file that is not
    JSON is a :class:`RecordError` naming it."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RecordError(f"{path}: not a readable trial record ({err})") from err


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: a score that is not a finite number is stored as None (``null``)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def add_epoch(record: dict, result: dict) -> dict:
    """``record`` with the epoch in ``result`` (a trial's report) appended; a repeated epoch replaces the older."""
    entry = {key: _finite(result[key]) for key in HISTORY_KEYS}
    history = [row for row in record.get("history", []) if row["epoch"] != entry["epoch"]]
    return {**record, "history": sorted([*history, entry], key=lambda row: row["epoch"])}


def load_records(
    directory: Path, setup: dict | None = None, check_params: Callable[[dict], list[str]] | None = None
) -> list[dict]:
    """Every record in ``directory`` (none if it does not exist), sorted by trial id.

    Raises :class:`RecordError`, naming the file, for one that is not a record (or is stored under another trial's
    name), for one whose params ``check_params`` finds problems with (the search passes its space's check), and —
    when ``setup`` is given — for one made under another setup (other data, budget or space)."""
    records = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        record = read_record(path)
        if not isinstance(record, dict):
            raise RecordError(f"{path}: not a trial record (a JSON object)")
        missing = {"trial", "setup", "params", "status", "history"} - set(record)
        if missing:
            raise RecordError(f"{path}: not a trial record (missing {sorted(missing)})")
        if record["trial"] != path.stem:
            raise RecordError(f"{path}: holds trial {record['trial']!r}, not {path.stem!r}")
        if record["status"] not in STATUSES:
            raise RecordError(f"{path}: status must be one of {STATUSES}, got {record['status']!r}")
        if not isinstance(record["history"], list) or any(
            not isinstance(row, dict) or set(HISTORY_KEYS) - set(row) for row in record["history"]
        ):
            raise RecordError(f"{path}: every history entry needs {list(HISTORY_KEYS)}")
        if any(not _is_epoch(row["epoch"]) or not _is_score(row[SCORE]) for row in record["history"]):
            raise RecordError(f"{path}: a history entry's epoch must be a positive integer and its score a number")
        if not isinstance(record["setup"], dict):
            raise RecordError(f"{path}: setup must be a mapping")
        if setup is not None and record["setup"] != setup:
            changed = sorted(k for k in set(setup) | set(record["setup"]) if setup.get(k) != record["setup"].get(k))
            raise RecordError(
                f"{path}: made by a search with another setup ({', '.join(changed)} differ from this one's): move "
                f"the folder {directory} away or pass another --results-dir"
            )
        problems = check_params(record["params"]) if check_params and isinstance(record["params"], dict) else []
        if problems or not isinstance(record["params"], dict):
            raise RecordError(f"{path}: params {'; '.join(problems) or 'must be a mapping'}")
        records.append(record)
    return records


def _is_epoch(value: Any) -> bool:
    return type(value) is int and value >= 1


def _is_score(value: Any) -> bool:
    return value is None or (type(value) in (int, float) and math.isfinite(value))


def finished(records: Iterable[dict]) -> list[dict]:
    """The records of trials that ended with at least one reported epoch and a score (the search's past)."""
    return [
        record
        for record in records
        if record["status"] == "finished" and record["history"] and record["history"][-1][SCORE] is not None
    ]


# what a table row (and the choice) holds beside the settings; ``confirmed``: the choice's valid IC over seeds
ROW_KEYS = (SCORE, "best_epoch", "epochs", "trial", "confirmed")


def trial_row(record: dict, metric: str) -> dict[str, Any]:
    """A finished trial as one table row: its settings, its score (``metric`` at its last epoch), the epoch of the
    weights it keeps (0: its starting weights), epochs run, and its id."""
    last = record["history"][-1]
    return {
        **record["params"],
        metric: float(last[metric]),
        "best_epoch": int(last["best_epoch"]),
        "epochs": int(last["epoch"]),
        "trial": record["trial"],
    }
