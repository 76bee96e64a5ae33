"""Concepts from prices alone: recovery of planted groups, stable names, no look-ahead (on a real provider slice
when ``../shared/data`` is there, and on a written one always), merging sources, bad inputs through the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qlib_hist.cli import main
from qlib_hist.concepts import ConceptError
from qlib_hist.concepts.membership import MembershipConcepts, load_membership, write_membership
from qlib_hist.concepts.returns import ReturnConceptSpec, concepts_from_returns, merge_memberships

from conftest import shared_file

N_GROUPS, PER_GROUP = 4, 15


def write_factor_provider(root: Path, n_days: int = 400, seed: int = 0, late: int = 250) -> Path:
    """A qlib provider whose stocks move with one of ``N_GROUPS`` group factors (plus noise and a market factor);
    the last stock lists on day ``late``. Writes the calendar, ``instruments/all.txt`` and ``close`` bins."""
    rng = np.random.default_rng(seed)
    calendar = pd.bdate_range("2015-01-05", periods=n_days)
    n = N_GROUPS * PER_GROUP + 1
    group = np.r_[np.repeat(np.arange(N_GROUPS), PER_GROUP), 0]
    returns = (
        0.01 * rng.normal(size=(n_days, 1))
        + 0.01 * rng.normal(size=(n_days, N_GROUPS))[:, group]
        + 0.006 * rng.normal(size=(n_days, n))
    )
    closes = 10 * np.exp(np.cumsum(returns, axis=0))
    (root / "calendars").mkdir(parents=True)
    (root / "calendars" / "day.txt").write_text("\n".join(str(d.date()) for d in calendar) + "\n")
    (root / "instruments").mkdir()
    lines = []
    for j in range(n):
        inst, first = f"SH60{j:04d}", late if j == n - 1 else 0
        lines.append(f"{inst}\t{calendar[first].date()}\t{calendar[-1].date()}")
        (root / "features" / inst.lower()).mkdir(parents=True)
        np.r_[first, closes[first:, j]].astype("<f4").tofile(root / "features" / inst.lower() / "close.day.bin")
    (root / "instruments" / "all.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def factor_provider(tmp_path_factory) -> Path:
    return write_factor_provider(tmp_path_factory.mktemp("factor_provider"))


SPEC = ReturnConceptSpec(window=60, clusters=(N_GROUPS, 8))


def members_on(table: pd.DataFrame, day) -> set:
    """(instrument, concept) pairs valid on ``day``."""
    day = pd.Timestamp(day)
    valid = (table["start_date"] <= day) & (table["end_date"].isna() | (table["end_date"] >= day))
    return set(zip(table.loc[valid, "instrument"], table.loc[valid, "concept"]))


def test_recovers_the_planted_groups_with_stable_names(factor_provider):
    table, stats = concepts_from_returns(factor_provider, "all", "2015-06-01", "2016-07-15", SPEC)
    coarse = table[table["concept"].str.startswith(f"ret{N_GROUPS}_")]
    for day in ("2015-09-15", "2016-07-14"):
        pairs = members_on(coarse, day)
        by_concept = {}
        for inst, concept in pairs:
            by_concept.setdefault(concept, set()).add(int(inst[4:]) // PER_GROUP % N_GROUPS)  # the late one: group 0
        assert sorted(len(groups) for groups in by_concept.values()) == [1] * N_GROUPS  # each concept one group
    # the groups never change: every stock keeps one coarse concept name over the whole span (one row each)
    planted = coarse[coarse["instrument"] != f"SH60{N_GROUPS * PER_GROUP:04d}"]
    assert planted.groupby("instrument").size().eq(1).all() and planted["end_date"].isna().all()
    assert set(table["concept"]) <= {f"ret{N_GROUPS}_{i}" for i in range(N_GROUPS)} | {f"ret8_{i}" for i in range(8)}
    assert stats.names_kept >= (stats.refreshes - 1) * N_GROUPS  # at least every coarse group, every refresh
    MembershipConcepts.from_path(write_membership(table, factor_provider.parent / "returns.csv"))  # a valid table


def test_market_neutral_by_default_and_raw_on_request(factor_provider):
    spec = ReturnConceptSpec(window=60, clusters=(N_GROUPS,), market_neutral=False)
    raw, _ = concepts_from_returns(factor_provider, "all", "2015-06-01", "2015-08-31", spec)
    neutral, _ = concepts_from_returns(factor_provider, "all", "2015-06-01", "2015-08-31", SPEC)
    assert len(raw) and len(neutral)
    assert ReturnConceptSpec().market_neutral


def _perturbed_copy(provider: Path, out: Path, instruments: list, after: pd.Timestamp, seed: int = 1) -> Path:
    """A copy of ``provider`` (calendar, market files, closes of ``instruments``) whose closes on or after ``after``
    are scrambled."""
    calendar = pd.DatetimeIndex(pd.read_csv(provider / "calendars" / "day.txt", header=None)[0])
    cut = int(calendar.searchsorted(after))
    shutil.copytree(provider / "calendars", out / "calendars")
    shutil.copytree(provider / "instruments", out / "instruments")
    rng = np.random.default_rng(seed)
    for inst in instruments:
        raw = np.fromfile(provider / "features" / inst.lower() / "close.day.bin", dtype="<f4")
        first = int(raw[0])
        tail = slice(1 + max(0, cut - first), None)
        raw[tail] = raw[tail] * rng.uniform(0.5, 1.5, size=len(raw[tail])).astype("<f4")
        (out / "features" / inst.lower()).mkdir(parents=True)
        raw.tofile(out / "features" / inst.lower() / "close.day.bin")
    return out


def _assert_no_look_ahead(provider, market, instruments, start, end, t, spec, tmp_path):
    base, _ = concepts_from_returns(provider, market, start, end, spec)
    moved = _perturbed_copy(Path(provider), tmp_path / "perturbed", instruments, pd.Timestamp(t))
    after, _ = concepts_from_returns(moved, market, start, end, spec)
    calendar = pd.bdate_range(start, t)
    assert all(members_on(base, d) == members_on(after, d) for d in calendar)  # every day up to t: the same
    assert members_on(base, pd.Timestamp(end)) != members_on(after, pd.Timestamp(end))  # the scramble did reach later
    spans = pd.read_csv(Path(provider) / "instruments" / f"{market}.txt", sep="\t", header=None, names=["i", "s", "e"])
    listed = spans.groupby("i")["s"].min().map(pd.Timestamp)
    assert (base["start_date"] > base["instrument"].map(listed)).all()  # a stock never has a concept before it lists


def test_no_look_ahead_on_a_written_provider(factor_provider, tmp_path):
    instruments = [f"SH60{j:04d}" for j in range(N_GROUPS * PER_GROUP + 1)]
    _assert_no_look_ahead(factor_provider, "all", instruments, "2015-06-01", "2016-07-15", "2016-01-04", SPEC, tmp_path)


@pytest.mark.realdata
def test_no_look_ahead_on_real_csi300_data(tmp_path):
    for needed in ("calendars/day.txt", "instruments/csi300.txt", "features"):
        shared_file(f"cn_csi300/{needed}")
    provider = shared_file("cn_csi300")
    spans = pd.read_csv(provider / "instruments" / "csi300.txt", sep="\t", header=None, names=["i", "s", "e"])
    slice_ = tmp_path / "slice"  # the real calendar and market file, the closes of every csi300 stock
    instruments = sorted(
        i for i in spans["i"].unique() if (provider / "features" / i.lower() / "close.day.bin").exists()
    )
    spec = ReturnConceptSpec(window=60, clusters=(5, 20))
    _assert_no_look_ahead(provider, "csi300", instruments, "2014-01-02", "2014-12-31", "2014-07-01", spec, slice_)


def test_merge_sources_and_name_collisions(tmp_path, factor_provider):
    returns, _ = concepts_from_returns(factor_provider, "all", "2015-06-01", "2015-08-31", SPEC)
    sw = pd.DataFrame(
        {"instrument": ["SH600000"], "concept": ["sw1_48"], "start_date": ["2015-01-05"], "end_date": [None]}
    )
    write_membership(sw, tmp_path / "sw.csv")
    write_membership(returns, tmp_path / "ret.csv")
    assert (
        main(
            [
                "concepts",
                "merge",
                str(tmp_path / "sw.csv"),
                str(tmp_path / "ret.csv"),
                "--out",
                str(tmp_path / "both.csv"),
            ]
        )
        == 0
    )
    both = load_membership(tmp_path / "both.csv")
    assert set(both["concept"]) == set(returns["concept"]) | {"sw1_48"} and len(both) == len(returns) + 1
    with pytest.raises(ConceptError, match="is in both"):
        merge_memberships([load_membership(tmp_path / "ret.csv")] * 2, ["a.csv", "b.csv"])


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--window", "10"], "window must be an integer >= 20"),
        (["--clusters", "10,70"], "not more than the 70 clusters"),
        (["--clusters", "8,4"], "clusters must be increasing"),
        (["--start", "2015-02-01"], "start on 2015-"),
        (["--end", "2030-01-01"], "must lie in the provider's calendar"),
    ],
)
def test_bad_inputs_are_one_line_errors(capsys, factor_provider, tmp_path, extra, needle):
    args = {"--start": "2015-06-01", "--end": "2015-08-31", "--window": "60", "--clusters": "4,8"}
    args.update(dict(zip(extra[::2], extra[1::2])))
    argv = [
        "concepts",
        "from-returns",
        "--provider-uri",
        str(factor_provider),
        "--market",
        "all",
        "--out",
        str(tmp_path / "out.csv"),
        *[x for pair in args.items() for x in pair],
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qlib-hist: error: ") and needle in err[0], err
    assert not (tmp_path / "out.csv").exists()
