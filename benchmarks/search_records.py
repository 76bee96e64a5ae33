"""The recipe search's trial records: one JSON file per trial, committed, so a search outlives its machine.

A Ray experiment folder (``benchmarks/cache/search_ray``) resumes a search on the machine that ran it. The records
carry it further: every epoch a trial reports is written to ``<results>/search/trials/<trial>.json``, and a search
started where no experiment folder exists (a new machine, a fresh clone) takes the *finished* records as its past —
Optuna's TPE is told their scores, ASHA's rungs their epoch scores — and runs only the trials still missing. The
search's table and choice (``benchmarks.search --report``) are made from the records alone.

A record::

    {"trial": "3f2a_00004", "setup": {...}, "params": {"lr": 0.0001, ...}, "status": "finished",
     "history": [{"epoch": 1, "valid_ic": 0.071, "valid_rank_ic": 0.069, "best_valid_ic": 0.077, "best_epoch": 0},
                 ...]}

``status`` is ``running`` until Ray says the trial ended: ``finished`` (its own early stop, its epoch budget or
ASHA's cut) or ``error``. A ``running`` record that no live search owns is a trial cut by a stop; the next search
drops it and runs that trial again as a new one. ``setup`` names the data and budget the trials share: records made
under another setup are refused, never mixed into one table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from qlib_hist._io import atomic_write_text

STATUSES = ("running", "finished", "error")
HISTORY_KEYS = ("epoch", "valid_ic", "valid_rank_ic", "best_valid_ic", "best_epoch")


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
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


def add_epoch(record: dict, result: dict) -> dict:
    """``record`` with the epoch in ``result`` (a trial's report) appended; a repeated epoch replaces the older."""
    entry = {key: result[key] for key in HISTORY_KEYS}
    history = [row for row in record.get("history", []) if row["epoch"] != entry["epoch"]]
    return {**record, "history": sorted([*history, entry], key=lambda row: row["epoch"])}


def load_records(directory: Path, setup: dict | None = None) -> list[dict]:
    """Every record in ``directory`` (none if it does not exist), sorted by trial id.

    Raises :class:`RecordError`, naming the file, for one that is not a record, and — when ``setup`` is given — for
    one made under another setup (other data, budget or space)."""
    records = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise RecordError(f"{path}: not a readable trial record ({err})") from err
        missing = {"trial", "setup", "params", "status", "history"} - set(record if isinstance(record, dict) else {})
        if missing:
            raise RecordError(f"{path}: not a trial record (missing {sorted(missing)})")
        if record["status"] not in STATUSES:
            raise RecordError(f"{path}: status must be one of {STATUSES}, got {record['status']!r}")
        if any(set(HISTORY_KEYS) - set(row) for row in record["history"]):
            raise RecordError(f"{path}: every history entry needs {list(HISTORY_KEYS)}")
        if setup is not None and record["setup"] != setup:
            changed = sorted(k for k in set(setup) | set(record["setup"]) if setup.get(k) != record["setup"].get(k))
            raise RecordError(
                f"{path}: made by a search with another setup ({', '.join(changed)} differ from this one's): move "
                f"the folder {directory} away or pass another --results-dir"
            )
        records.append(record)
    return records


def finished(records: Iterable[dict]) -> list[dict]:
    """The records of trials that ended with at least one reported epoch (the search's past)."""
    return [record for record in records if record["status"] == "finished" and record["history"]]


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
