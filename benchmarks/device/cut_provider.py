"""Copy a qlib provider folder with every feature file cut to start at a date: a smaller provider that returns the
same values from that date on (qlib's ``.day.bin`` is float32 little-endian, its first value the calendar index of
the second). The calendar and instrument files are copied whole.

    python benchmarks/device/cut_provider.py ../shared/data/cn_csi300 .devwork/data/cn_csi300 2013-06-03
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np


def cut_provider(source: Path, target: Path, first_day: str) -> int:
    """Write ``target`` as ``source`` from ``first_day`` (a calendar date, YYYY-MM-DD) on; returns the files cut.
    A feature that ends before ``first_day`` becomes an empty series at that index."""
    calendar = (source / "calendars" / "day.txt").read_text().split()
    if first_day not in calendar:
        raise SystemExit(f"{source / 'calendars' / 'day.txt'}: {first_day} is not a trading day of this calendar")
    cut = calendar.index(first_day)
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
            kept = values[max(cut - start, 0) :]
            header = np.array([max(start, cut)], dtype="<f4")
            np.concatenate([header, kept]).astype("<f4").tofile(target / "features" / stock.name / feature.name)
            count += 1
    return count


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    print(cut_provider(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]), "feature files")
