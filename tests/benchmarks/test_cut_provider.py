"""benchmarks/device/cut_provider.py: a smaller provider for a GPU call returns the same values between its dates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "cut_provider", Path(__file__).parents[2] / "benchmarks/device/cut_provider.py"
)
assert _SPEC is not None and _SPEC.loader is not None
cut_module = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(cut_module)

DAYS = [f"2020-01-{d:02d}" for d in range(1, 11)]


def _provider(root: Path) -> Path:
    """Ten trading days; sh600000 starts on day 2 (index 2) with values 2..9, sz000001 ends on 2020-01-03."""
    (root / "calendars").mkdir(parents=True)
    (root / "calendars" / "day.txt").write_text("\n".join(DAYS) + "\n")
    (root / "instruments").mkdir()
    (root / "instruments" / "all.txt").write_text("SH600000\t2020-01-03\t2020-01-10\n")
    for stock, start, values in (("sh600000", 2, np.arange(2, 10)), ("sz000001", 0, np.arange(0, 3))):
        (root / "features" / stock).mkdir(parents=True)
        np.concatenate([[start], values]).astype("<f4").tofile(root / "features" / stock / "close.day.bin")
    return root


def _series(root: Path, stock: str) -> dict[str, float]:
    raw = np.fromfile(root / "features" / stock / "close.day.bin", dtype="<f4")
    return {DAYS[int(raw[0]) + i]: float(v) for i, v in enumerate(raw[1:])}


def test_the_cut_keeps_the_values_between_its_days_on_their_dates(tmp_path):
    source = _provider(tmp_path / "src")
    assert cut_module.cut_provider(source, tmp_path / "cut", "2020-01-04", "2020-01-07") == 2
    assert _series(tmp_path / "cut", "sh600000") == {d: _series(source, "sh600000")[d] for d in DAYS[3:7]}
    assert _series(tmp_path / "cut", "sz000001") == {}  # ended before the first day: empty
    assert (tmp_path / "cut" / "calendars" / "day.txt").read_text() == (source / "calendars" / "day.txt").read_text()
    cut_module.cut_provider(source, tmp_path / "open", "2020-01-04")  # no last day: to the end
    assert list(_series(tmp_path / "open", "sh600000")) == DAYS[3:]


@pytest.mark.parametrize(
    ("first", "last", "message"),
    [("2020-02-01", None, "2020-02-01 is not a trading day"), ("2020-01-05", "2020-01-04", "is before first day")],
)
def test_a_day_off_the_calendar_or_reversed_dates_are_refused_before_writing(tmp_path, first, last, message):
    source = _provider(tmp_path / "src")
    with pytest.raises(SystemExit, match=message):
        cut_module.cut_provider(source, tmp_path / "cut", first, last)
    assert not (tmp_path / "cut").exists()
