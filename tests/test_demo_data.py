"""The synthetic demo market: qlib reads it, it is deterministic, and the planted concept signal is there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qlib_hist.demo_data import DemoData, write_demo_provider

FIELDS = ["$open", "$high", "$low", "$close", "$vwap", "$volume", "$factor", "$change"]


def _tree_bytes(root: Path) -> dict:
    """``{relative path: bytes}`` of every file under ``root``."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoData:
    return write_demo_provider(tmp_path_factory.mktemp("demo"), seed=0)


@pytest.fixture(scope="module")
def features(demo):
    """qlib's view of the demo market: ``D.features`` of all stocks, ``[(instrument, datetime), fields]``."""
    import qlib
    from qlib.data import D

    qlib.init(provider_uri=str(demo.provider_uri), region="cn", kernels=1)
    df = D.features(D.instruments(demo.market), FIELDS, demo.start, demo.end)
    df.columns = [c.lstrip("$") for c in df.columns]
    return df, D


@pytest.fixture(scope="module")
def returns(features) -> pd.DataFrame:
    """Daily log returns from qlib's closes, ``[days, instruments]`` (NaN where not listed)."""
    df, _ = features
    return np.log(df["close"].unstack("instrument")).diff()


def _pit_members(membership: Path, days: pd.DatetimeIndex, instruments: list) -> np.ndarray:
    """Point-in-time membership from the CSV, bool ``[days, instruments, concepts]``."""
    table = pd.read_csv(membership, dtype=str, keep_default_na=False)
    concepts = sorted(table["concept"].unique(), key=lambda c: int(c.split("_")[1]))
    out = np.zeros((len(days), len(instruments), len(concepts)), dtype=bool)
    col = {name: j for j, name in enumerate(instruments)}
    for row in table.itertuples():
        end = pd.Timestamp(row.end_date) if row.end_date else days[-1]
        live = (days >= pd.Timestamp(row.start_date)) & (days <= end)
        out[live, col[row.instrument], concepts.index(row.concept)] = True
    return out


def _mean_ic(ret: np.ndarray, members: np.ndarray, own: bool = False, lookback: int = 5) -> float:
    """Mean over days of the cross-sectional correlation between a stock's next-day return and a signal.

    The signal is the stock's concept peers' (stocks sharing a concept, itself excluded) mean return summed
    over the last ``lookback`` days, or with ``own=True`` the stock's own summed return.
    """
    ics = []
    for t in range(lookback, len(ret) - 1):
        past = ret[t - lookback + 1 : t + 1].sum(axis=0)
        ok = np.isfinite(past)
        m = members[t].astype(float)
        peers = (m @ m.T > 0) & ok[None, :]
        np.fill_diagonal(peers, False)
        signal = past if own else (peers @ np.where(ok, past, 0.0)) / np.maximum(peers.sum(axis=1), 1)
        use = ok & np.isfinite(ret[t + 1]) & peers.any(axis=1)
        ics.append(np.corrcoef(signal[use], ret[t + 1][use])[0, 1])
    return float(np.mean(ics))


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = _tree_bytes(write_demo_provider(tmp_path / "a", seed=0).provider_uri.parent)
    b = _tree_bytes(write_demo_provider(tmp_path / "b", seed=0).provider_uri.parent)
    c = _tree_bytes(write_demo_provider(tmp_path / "c", seed=1).provider_uri.parent)
    assert a == b
    assert a.keys() == c.keys()
    assert a["provider/features/sh600000/close.day.bin"] != c["provider/features/sh600000/close.day.bin"]
    assert a["stock2concept.npy"] != c["stock2concept.npy"]
    assert not [k for k in a if Path(k).name.startswith(".")], "temporary files left behind"


def test_layout_and_bin_format(demo):
    root = demo.provider_uri
    days = (root / "calendars" / "day.txt").read_text().split()
    assert len(days) == 700 and days[0] == demo.start == "2016-01-04" and days[-1] == demo.end
    assert all(pd.Timestamp(d).weekday() < 5 for d in days)
    market = pd.read_csv(root / "instruments" / "demo.txt", sep="\t", header=None)
    every = pd.read_csv(root / "instruments" / "all.txt", sep="\t", header=None)
    assert market[0].tolist() == demo.instruments and len(demo.instruments) == 100
    assert set(every[0]) == set(demo.instruments) | {demo.benchmark}
    for name in demo.instruments + [demo.benchmark]:
        files = sorted(p.name for p in (root / "features" / name.lower()).iterdir())
        assert files == sorted(f"{f.lstrip('$')}.day.bin" for f in FIELDS)
    raw = np.fromfile(root / "features" / demo.late_listed[0].lower() / "close.day.bin", dtype="<f4")
    start = market.set_index(0).loc[demo.late_listed[0], 1]
    assert days[int(raw[0])] == start and int(raw[0]) > 0 and len(raw) - 1 == len(days) - int(raw[0])


def test_special_stocks_are_disjoint_and_present(demo):
    groups = [demo.late_listed, demo.delisted, demo.unindexed, demo.switched]
    assert all(1 <= len(g) <= 10 for g in groups)
    flat = [s for g in groups for s in g]
    assert len(flat) == len(set(flat)) and set(flat) <= set(demo.instruments)


def test_qlib_reads_the_provider(demo, features):
    df, D = features
    assert len(D.calendar(start_time=demo.start, end_time=demo.end)) == 700
    assert demo.benchmark in D.list_instruments(D.instruments("all"), as_list=True)
    assert demo.benchmark not in D.list_instruments(D.instruments(demo.market), as_list=True)
    bench = D.features([demo.benchmark], ["$close", "$volume"], demo.start, demo.end)
    assert len(bench) == 700 and np.isfinite(bench.to_numpy()).all() and (bench.to_numpy() > 0).all()

    assert set(df.index.get_level_values("instrument")) == set(demo.instruments)
    listed = df.dropna(how="all")
    prices = listed[["open", "high", "low", "close", "vwap", "volume"]].to_numpy()
    assert np.isfinite(prices).all() and (prices > 0).all()
    assert (listed["low"] <= listed[["open", "close", "vwap"]].min(axis=1)).all()
    assert (listed["high"] >= listed[["open", "close", "vwap"]].max(axis=1)).all()
    assert (listed["factor"] == 1.0).all()
    change = listed["close"] / listed.groupby(level="instrument")["close"].shift(1) - 1
    np.testing.assert_allclose(listed["change"].dropna(), change.dropna(), rtol=1e-4, atol=1e-6)

    counts = listed.groupby(level="instrument").size()
    assert (counts[demo.late_listed] < 700).all() and (counts[demo.delisted] < 700).all()
    full = [s for s in demo.instruments if s not in demo.late_listed + demo.delisted]
    assert (counts[full] == 700).all()
    last_day = listed.index.get_level_values("datetime").max()
    for name in demo.delisted:
        assert listed.xs(name, level="instrument").index.max() < last_day


def test_stock_index_and_legacy_matrix(demo):
    index = np.load(demo.stock_index, allow_pickle=True).item()
    matrix = np.load(demo.stock2concept)
    assert isinstance(index, dict) and matrix.dtype == np.float32 and matrix.shape == (len(index), 8)
    assert sorted(index.values()) == list(range(len(index))) and max(index.values()) < matrix.shape[0]
    assert set(index) == set(demo.instruments) - set(demo.unindexed) and demo.unindexed
    assert set(np.unique(matrix)) <= {0.0, 1.0} and set(matrix.sum(axis=1)) <= {1.0, 2.0}
    assert (matrix.sum(axis=0) >= 2).all()

    # the legacy matrix is the point-in-time membership of the last calendar day
    days = pd.DatetimeIndex([demo.end])
    pit = _pit_members(demo.membership, days, demo.instruments)[0]
    rows = [demo.instruments.index(name) for name in index]
    np.testing.assert_array_equal(matrix[[index[name] for name in index]], pit[rows].astype(np.float32))


def test_membership_csv_has_mid_calendar_switches(demo):
    table = pd.read_csv(demo.membership, dtype=str, keep_default_na=False)
    assert list(table.columns) == ["instrument", "concept", "start_date", "end_date"]
    assert set(table["instrument"]) == set(demo.instruments)
    ended = table[table["end_date"] != ""]
    assert set(ended["instrument"]) == set(demo.switched) and len(ended) == len(demo.switched) >= 2
    for row in ended.itertuples():
        after = table[(table["instrument"] == row.instrument) & (table["start_date"] > row.end_date)]
        assert len(after) == 1 and after["concept"].item() != row.concept
        assert demo.start < row.end_date < after["start_date"].item() < demo.end


def test_planted_concept_signal(demo, returns):
    ret = returns[demo.instruments].to_numpy()
    members = _pit_members(demo.membership, returns.index, demo.instruments)
    shuffled = members[:, np.random.default_rng(0).permutation(len(demo.instruments))]
    peer, own, noise = _mean_ic(ret, members), _mean_ic(ret, members, own=True), _mean_ic(ret, shuffled)
    assert peer > 0.12, peer
    assert abs(noise) < 0.04, noise
    assert own < peer - 0.03, (own, peer)


def test_returns_follow_point_in_time_membership(demo, returns):
    """A switched stock co-moves with its old concept before the switch and with its new one after."""
    ret = returns[demo.instruments]
    members = _pit_members(demo.membership, returns.index, demo.instruments)
    table = pd.read_csv(demo.membership, dtype=str, keep_default_na=False)
    gaps = []
    for name in demo.switched:
        i = demo.instruments.index(name)
        old = table[(table["instrument"] == name) & (table["end_date"] != "")].iloc[0]
        new = table[(table["instrument"] == name) & (table["start_date"] > old["end_date"])].iloc[0]
        before = ret.index <= old["end_date"]
        corr = {}
        for concept in (old["concept"], new["concept"]):
            c = int(concept.split("_")[1])
            peers = members[:, :, c].copy()
            peers[:, i] = False
            mean = ret.where(peers).mean(axis=1)
            corr[concept, True] = ret[name][before].corr(mean[before])
            corr[concept, False] = ret[name][~before].corr(mean[~before])
        gaps.append(corr[old["concept"], True] - corr[new["concept"], True])
        gaps.append(corr[new["concept"], False] - corr[old["concept"], False])
    assert min(gaps) > 0.0 and np.mean(gaps) > 0.1, gaps


def test_rewrite_replaces_previous_output(tmp_path):
    write_demo_provider(tmp_path, n_stocks=40, n_concepts=4, n_days=150, seed=3)
    small = write_demo_provider(tmp_path, n_stocks=20, n_concepts=3, n_days=130, seed=3)
    feature_dirs = {p.name for p in (small.provider_uri / "features").iterdir()}
    assert feature_dirs == {s.lower() for s in small.instruments} | {small.benchmark.lower()}
    assert np.load(small.stock2concept).shape[1] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_single_concept_has_no_switches(tmp_path):
    d = write_demo_provider(tmp_path, n_stocks=10, n_concepts=1, n_days=120)
    assert d.switched == [] and (np.load(d.stock2concept) == 1.0).all()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_stocks": 9}, "n_stocks"),
        ({"n_concepts": 0}, "n_concepts"),
        ({"n_stocks": 10, "n_concepts": 6}, "n_concepts"),
        ({"n_days": 119}, "n_days"),
        ({"seed": -1}, "seed"),
        ({"start": "not a date"}, "start"),
        ({"start": None}, "start"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        write_demo_provider(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_refuses_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="out_dir"):
        write_demo_provider(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="out_dir"):
        write_demo_provider(tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "notes.txt"]
