"""Copy a qlib provider folder with every feature file cut to start at a date, and optionally to end at one: a
smaller provider that returns the same values between those dates (qlib's ``.day.bin`` is float32 little-endian,
its first value the calendar index of the second; a series that stops early reads as NaN after its end). The
calendar and instrument files are copied whole.

    python benchmarks/device/cut_provider.py ../shared/data/cn_csi300 .devwork/data/cn_csi300 2013-06-03 [2020-09-30]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np


def cut_provider(source: Path, target: Path, first_day: str, last_day: str | None = None) -> int:
    """Write ``target`` as ``source`` from ``first_day`` to ``last_day`` (calendar dates, YYYY-MM-DD; no
    ``last_day``: to the end); returns the files cut. A feature that lies outside the dates becomes an empty series
    at ``first_day``'s index."""
    calendar = (source / "calendars" / "day.txt").read_text().split()
    for day in (first_day, last_day):
        if day is not None and day not in calendar:
            raise SystemExit(f"{source / 'calendars' / 'day.txt'}: {day} is not a trading day of this calendar")
    cut = calendar.index(first_day)
    end = calendar.index(last_day) + 1 if last_day is not None else len(calendar)
    if end <= cut:
        raise SystemExit(f"cut_provider: last day {last_day} is before first day {first_day}")
    if target.exists():
        shutil.rmtree(target)
    for folder in ("calendars", "instruments"):
        shutil.copytree(source / folder, target / folder)
    count = 0
    for stock in sorted((source / "features").iterdir()):
        (target / "features" / stock.name).mkdir(parents=True)
        for feature in stock.iterdir():
            raw = np.fromfile(feature, dtype="<f4")
            start, values = int(raw[0]), raw[1:]
            kept = values[max(cut - start, 0) : max(end - start, 0)]
            header = np.array([max(start, cut)], dtype="<f4")
            np.concatenate([header, kept]).astype("<f4").tofile(target / "features" / stock.name / feature.name)
            count += 1
    return count


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        raise SystemExit(__doc__)
    last = sys.argv[4] if len(sys.argv) == 5 else None
    print(cut_provider(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], last), "feature files")
