"""Membership table, point-in-time MembershipConcepts, SW builder, legacy export and coverage report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qlib_hist.concepts.base import ConceptError
from qlib_hist.concepts.legacy_export import market_instruments, to_legacy
from qlib_hist.concepts.membership import (
    MembershipConcepts,
    load_membership,
    suggest_instrument,
    write_membership,
)
from qlib_hist.concepts.report import coverage_report, format_report, plot_report
from qlib_hist.concepts.shenwan import from_sw

from conftest import shared_file

HEADER = "instrument,concept,start_date,end_date,weight\n"
TABLE = [  # instrument, concept, start, end (inclusive), weight
    ("SH600000", "bank", "2020-01-01", "", 1.0),
    ("SH600000", "big", "2020-01-01", "2020-01-10", 1.0),
    ("SZ000001", "bank", "2020-01-01", "", 1.0),
    ("SZ000001", "tech", "2020-01-06", "2020-01-07", 0.5),
]


def _table(rows=TABLE) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["instrument", "concept", "start_date", "end_date", "weight"])


def _write(tmp_path: Path, text: str, name: str = "m.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _vectors(sc, dates=None) -> list:
    """Each row's concept vector as {name: weight} (names, not columns, so added concepts compare equal)."""
    dense = sc.matrix[sc.row_index]
    return [{n: float(w) for n, w in zip(sc.names, row) if w != 0} for row in dense]


# ----------------------------------------------------------------------------------------------- for_rows


def test_for_rows_distinct_vectors_exact():
    src = MembershipConcepts(_table())
    assert src.names == ["bank", "big", "tech"]
    inst = np.array(["SH600000", "SZ000001", "SZ000001", "SZ000001", "SH600000", "SH600000", "XX"], dtype=object)
    dates = np.array(
        ["2019-12-31", "2020-01-05", "2020-01-06", "2020-01-07", "2020-01-10", "2020-01-11", "2020-01-06"],
        dtype="datetime64[ns]",
    )
    sc = src.for_rows(inst, dates)
    expected = np.array(
        [
            [0, 0, 0],  # before any membership
            [1, 0, 0],  # bank only
            [1, 0, 0.5],  # tech starts (weight .5)
            [1, 0, 0.5],  # end_date inclusive
            [1, 1, 0],  # big's last day
            [1, 0, 0],  # big ended
            [0, 0, 0],  # unknown instrument
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(sc.matrix[sc.row_index], expected)
    assert len(np.unique(sc.matrix, axis=0)) == len(sc.matrix) == 4  # 3 distinct non-zero vectors + zero row
    assert not sc.matrix[-1].any()
    assert sc.row_index[0] == sc.row_index[6] == len(sc.matrix) - 1
    assert sc.row_index[1] == sc.row_index[5] and sc.row_index[2] == sc.row_index[3]
    assert sc.n_unknown == 1 and sc.unknown_instruments == ["XX"]
    assert sc.names == ["bank", "big", "tech"]
    assert "3 concepts" in src.describe()


def test_for_rows_matches_brute_force():
    rng = np.random.default_rng(0)
    rows = []
    for inst in ["SH600000", "SH600001", "SZ000002"]:
        for concept in ["a", "b", "c", "d"]:
            day = pd.Timestamp("2020-01-01") + pd.Timedelta(days=int(rng.integers(0, 5)))
            for _ in range(3):
                length = int(rng.integers(0, 6))
                end = day + pd.Timedelta(days=length)
                rows.append((inst, concept, day, end if rng.random() < 0.8 else pd.NaT, float(rng.integers(1, 3))))
                if pd.isna(rows[-1][3]):
                    break
                day = end + pd.Timedelta(days=int(rng.integers(1, 4)))
    t = _table(rows)
    src = MembershipConcepts(t)
    days = pd.date_range("2019-12-30", "2020-02-15")
    inst = np.repeat(["SH600000", "SH600001", "SZ000002"], len(days))
    dates = np.tile(days.to_numpy(), 3)
    got = src.for_rows(inst, dates)
    dense = got.matrix[got.row_index]
    for k, (i, d) in enumerate(zip(inst, dates)):
        live = t[(t.instrument == i) & (t.start_date <= d) & (t.end_date.isna() | (t.end_date >= d))]
        want = np.zeros(len(src.names), dtype=np.float32)
        want[[src.names.index(c) for c in live.concept]] = live.weight
        np.testing.assert_array_equal(dense[k], want, err_msg=f"{i} {d}")
    assert len(np.unique(got.matrix, axis=0)) == len(got.matrix)


def test_no_look_ahead():
    cut = pd.Timestamp("2020-01-08")
    days = pd.date_range("2020-01-01", "2020-01-15")
    inst = np.repeat(["SH600000", "SZ000001"], len(days))
    dates = np.tile(days.to_numpy(), 2)
    before = dates < cut.to_datetime64()
    base = _vectors(MembershipConcepts(_table()).for_rows(inst, dates))

    later = TABLE + [
        ("SH600000", "new", "2020-01-09", "", 2.0),
        ("SZ000001", "tech", "2020-01-12", "", 1.0),
        ("SZ000001", "bank2", "2020-01-08", "", 1.0),
    ]
    changed = _vectors(MembershipConcepts(_table(later)).for_rows(inst, dates))
    assert [v for v, b in zip(changed, before) if b] == [v for v, b in zip(base, before) if b]
    on_cut = np.flatnonzero((dates == cut.to_datetime64()) & (inst == "SZ000001"))[0]
    assert changed[on_cut] != base[on_cut] and changed[on_cut]["bank2"] == 1.0  # a row starting ON D counts

    # changing a row's end after D (but not its past) does not change the past either
    edited = [r if r[:2] != ("SH600000", "big") else (*r[:3], "2020-01-20", 1.0) for r in TABLE]
    changed = _vectors(MembershipConcepts(_table(edited)).for_rows(inst, dates))
    assert [v for v, b in zip(changed, before) if b] == [v for v, b in zip(base, before) if b]


def test_snapshot_dense():
    snap = MembershipConcepts(_table()).snapshot("2020-01-06", ["SZ000001", "SH600000", "BJ430001"])
    assert list(snap.columns) == ["bank", "big", "tech"]
    np.testing.assert_array_equal(snap.to_numpy(), [[1, 0, 0.5], [1, 1, 0], [0, 0, 0]])


# ----------------------------------------------------------------------------------------------- loading


def test_load_roundtrip_csv_and_parquet(tmp_path):
    t = _table()
    for name in ("m.csv", "m.parquet"):
        p = write_membership(t, tmp_path / name)
        back = load_membership(p)
        assert list(back.columns) == ["instrument", "concept", "start_date", "end_date", "weight"]
        assert back["start_date"].dtype == "datetime64[ns]" and back["end_date"].dtype == "datetime64[ns]"
        assert back["weight"].dtype == np.float64
        assert back["end_date"].isna().sum() == 2 and len(back) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    src = MembershipConcepts.from_path(tmp_path / "m.csv")
    assert str(tmp_path / "m.csv") in src.describe()


def test_weight_column_optional(tmp_path):
    p = _write(tmp_path, "instrument,concept,start_date,end_date\nSH600000,a,2020-01-01,\n\n")
    t = load_membership(p)
    assert t["weight"].tolist() == [1.0] and len(t) == 1


@pytest.mark.parametrize(
    "body, needles",
    [
        ("instrument,start_date\nSH600000,2020-01-01\n", ["missing column", "'concept'", "'end_date'", "found"]),
        (HEADER + "SH600000,a,2020-01-01,,1\nSH600000,b,2020-13-45,,1\n", ["line 3", "2020-13-45", "start_date"]),
        (HEADER + "SH600000,a,2020-01-01,not-a-date,1\n", ["line 2", "not-a-date", "end_date"]),
        (HEADER + "SH600000,a,2020-02-01,2020-01-31,1\n", ["line 2", "before"]),
        (
            HEADER + "SH600000,a,2020-01-01,2020-03-01,1\nSZ000001,a,2020-01-01,,1\nSH600000,a,2020-03-01,,1\n",
            ["overlapping", "line 2", "line 4", "SH600000"],
        ),
        (HEADER + "SH600000,a,2020-01-01,,1\n600000.SH,a,2020-01-01,,1\n", ["line 3", "600000.SH", "'SH600000'"]),
        (HEADER + "sh600000,a,2020-01-01,,1\n", ["line 2", "'SH600000'"]),
        (HEADER + "600000,a,2020-01-01,,1\n", ["line 2", "'SH600000'"]),
        (HEADER + "SH600000,a,2020-01-01,,0\n", ["line 2", "weight"]),
        (HEADER + "SH600000,a,2020-01-01,,-1\n", ["line 2", "weight"]),
        (HEADER + "SH600000,a,2020-01-01,,inf\n", ["line 2", "weight"]),
        (HEADER + "SH600000,a,2020-01-01,,abc\n", ["line 2", "weight"]),
        (HEADER + "SH600000,,2020-01-01,,1\n", ["line 2", "concept"]),
        (HEADER, ["empty"]),
    ],
)
def test_load_errors_name_file_and_line(tmp_path, body, needles):
    p = _write(tmp_path, body)
    with pytest.raises(ConceptError) as e:
        load_membership(p)
    msg = str(e.value)
    assert str(p) in msg
    for needle in needles:
        assert needle in msg, msg


def test_parquet_errors_name_row(tmp_path):
    t = _table()
    t.loc[2, "end_date"] = "2019-01-01"
    p = tmp_path / "m.parquet"
    t.to_parquet(p)
    with pytest.raises(ConceptError, match=r"m\.parquet, row 2: end_date 2019-01-01 is before"):
        load_membership(p)


def test_suggest_instrument():
    assert suggest_instrument("600000.SH") == "SH600000"
    assert suggest_instrument("000001.XSHE") == "SZ000001"
    assert suggest_instrument("sz300750") == "SZ300750"
    assert suggest_instrument("832317") == "BJ832317"
    assert suggest_instrument("AAPL") is None


# ----------------------------------------------------------------------------------------------- SW


SW_CSV = """instrument,start_date,industry_code,updated_at
SH600000,2010-01-01,480101,2015-01-01
SH600000,2014-02-21,480301,2020-01-01
SH600000,2021-07-30,490101,2022-01-01
SZ000001,2015-05-05,110101,2015-01-01
SZ000001,2015-05-05,120101,2016-01-01
SZ000001,2018-01-01,120102,2016-01-01
"""


def test_from_sw_levels_dates_merge(tmp_path):
    p = _write(tmp_path, SW_CSV, "sw.csv")
    t = from_sw(p)
    key = lambda inst, c: t[(t.instrument == inst) & (t.concept == c)]  # noqa: E731
    lvl1 = key("SH600000", "sw1_48")
    assert len(lvl1) == 1  # level-3 move 480101 -> 480301 does not split level 1
    assert lvl1.start_date.iloc[0] == pd.Timestamp("2010-01-01")
    assert lvl1.end_date.iloc[0] == pd.Timestamp("2021-07-29")  # next start - 1 day
    assert key("SH600000", "sw3_480101").end_date.iloc[0] == pd.Timestamp("2014-02-20")
    assert key("SH600000", "sw2_4801").end_date.iloc[0] == pd.Timestamp("2014-02-20")
    assert key("SH600000", "sw2_4803").start_date.iloc[0] == pd.Timestamp("2014-02-21")
    assert pd.isna(key("SH600000", "sw1_49").end_date.iloc[0])  # last row open
    # same instrument and start_date: latest updated_at wins (120101, not 110101)
    assert key("SZ000001", "sw1_11").empty
    assert key("SZ000001", "sw3_120101").end_date.iloc[0] == pd.Timestamp("2017-12-31")
    assert len(key("SZ000001", "sw2_1201")) == 1
    assert set(t.concept) >= {"sw1_48", "sw2_4801", "sw3_480101"}
    src = MembershipConcepts(t)
    snap = src.snapshot("2016-01-01", ["SH600000"])
    assert sorted(snap.columns[snap.iloc[0].to_numpy() > 0]) == ["sw1_48", "sw2_4803", "sw3_480301"]

    only = from_sw(p, levels=(1,))
    assert only.concept.str.startswith("sw1_").all()
    assert sorted(from_sw(p, levels=[3, 2]).concept.str[:3].unique()) == ["sw2", "sw3"]


@pytest.mark.parametrize("levels", [(), (0,), (1, 4), (1, 1), ("x",)])
def test_from_sw_bad_levels(tmp_path, levels):
    with pytest.raises(ConceptError, match="levels"):
        from_sw(_write(tmp_path, SW_CSV, "sw.csv"), levels=levels)


@pytest.mark.parametrize(
    "body, needles",
    [
        ("instrument,start_date,code\nSH600000,2010-01-01,480101\n", ["missing column", "industry_code", "code"]),
        ("instrument,start_date,industry_code\nSH600000,2010-01-01,4801\n", ["line 2", "'4801'", "industry_code"]),
        (
            "instrument,start_date,industry_code\nSH600000,2010-01-01,480101\n600000.SH,2010-01-01,480101\n",
            ["line 3", "'SH600000'"],
        ),
        ("instrument,start_date,industry_code\nSH600000,yesterday,480101\n", ["line 2", "yesterday"]),
        ("instrument,start_date,industry_code\n", ["empty"]),
    ],
)
def test_from_sw_bad_file(tmp_path, body, needles):
    p = _write(tmp_path, body, "sw.csv")
    with pytest.raises(ConceptError) as e:
        from_sw(p)
    assert str(p) in str(e.value)
    for needle in needles:
        assert needle in str(e.value), str(e.value)


# ----------------------------------------------------------------------------------------------- legacy export


def _provider(tmp_path: Path) -> Path:
    root = tmp_path / "provider"
    (root / "calendars").mkdir(parents=True)
    (root / "instruments").mkdir()
    days = pd.bdate_range("2019-12-02", "2020-02-28")
    (root / "calendars" / "day.txt").write_text("\n".join(d.strftime("%Y-%m-%d") for d in days) + "\n")
    (root / "instruments" / "mkt.txt").write_text(
        "SH600000\t2019-12-02\t2020-02-28\n"
        "SZ000001\t2020-01-01\t2020-02-28\n"
        "SZ000002\t2019-12-02\t2019-12-31\n"
        "BJ430001\t2019-12-02\t2020-02-28\n"
    )
    return root


def test_market_instruments(tmp_path):
    root = _provider(tmp_path)
    assert market_instruments(root, "mkt") == ["BJ430001", "SH600000", "SZ000001", "SZ000002"]
    assert market_instruments(root, "mkt", "2020-01-01", "2020-01-31") == ["BJ430001", "SH600000", "SZ000001"]
    assert market_instruments(root, "mkt", "2019-12-01", "2019-12-31") == ["BJ430001", "SH600000", "SZ000002"]
    with pytest.raises(ConceptError, match="nope.txt"):
        market_instruments(root, "nope")


def test_to_legacy_roundtrip(tmp_path):
    universe = ["SZ000001", "SH600000", "BJ430001"]
    src = MembershipConcepts(_table())
    paths = to_legacy(src, "2020-01-06", universe, tmp_path / "out" / "qlib_mkt")
    assert paths.stock2concept.name == "qlib_mkt_stock2concept.npy"
    s2c = np.load(paths.stock2concept)  # as qlib loads it
    index = np.load(paths.stock_index_npy, allow_pickle=True).item()
    assert s2c.dtype == np.float32
    assert index == {"BJ430001": 0, "SH600000": 1, "SZ000001": 2}
    assert json.loads(paths.stock_index_json.read_text()) == index
    names = json.loads(paths.concepts_json.read_text())
    assert names == ["bank", "big", "tech"]
    snap = src.snapshot("2020-01-06", sorted(universe))
    np.testing.assert_array_equal(s2c, snap[names].to_numpy())

    # a concept without member on the day is dropped; a directory output uses bare names
    out = tmp_path / "dir"
    out.mkdir()
    paths = to_legacy(_table(), "2020-01-20", universe, out)
    assert paths.stock2concept == out / "stock2concept.npy"
    assert json.loads(paths.concepts_json.read_text()) == ["bank"]
    assert np.load(paths.stock2concept).shape == (3, 1)
    with pytest.raises(ConceptError, match="no concept"):
        to_legacy(_table(), "2019-01-01", universe, tmp_path / "empty")


# ----------------------------------------------------------------------------------------------- report


def test_coverage_report_synthetic(tmp_path):
    root = _provider(tmp_path)
    rows = [
        ("SH600000", "a", "2019-01-01", "", 1.0),
        ("SZ000002", "a", "2019-01-01", "", 1.0),
        ("SH600000", "b", "2020-01-15", "", 1.0),
        ("SZ000001", "b", "2020-02-01", "", 1.0),
    ]
    rep = coverage_report(_table(rows), root, "mkt")
    assert list(rep.index) == [2019, 2020]
    # 2019-12-31: universe SH600000, SZ000002, BJ430001; both SH600000 and SZ000002 in 'a'
    r19 = rep.loc[2019]
    assert r19["days"] == 1 and r19["universe"] == 3
    assert r19["coverage"] == pytest.approx(2 / 3) and r19["concepts_per_stock"] == pytest.approx(2 / 3)
    assert r19["active_concepts"] == 1 and r19["members_median"] == 2 and r19["single_member"] == 0
    # 2020-01-31: SH600000 {a, b}, SZ000001 {}, BJ430001 {}; 2020-02-28: SH600000 {a, b}, SZ000001 {b}
    r20 = rep.loc[2020]
    assert r20["days"] == 2 and r20["universe"] == 3
    assert r20["coverage"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert r20["concepts_per_stock"] == pytest.approx((2 / 3 + 1) / 2)
    assert r20["members_max"] == 2 and r20["single_member"] == pytest.approx((2 + 1) / 2)
    text = format_report(rep)
    assert "coverage" in text and "2019" in text and "66.7%" in text
    png = plot_report(rep, tmp_path / "cov.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    every = coverage_report(_table(rows), root, "mkt", sample=5)
    assert every["days"].sum() == len(pd.bdate_range("2019-12-02", "2020-02-28")[::5])


# ----------------------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_sw_over_csi300():
    sw = shared_file("sw_industry_history.csv")
    for needed in ("calendars/day.txt", "instruments/csi300.txt"):
        shared_file(f"cn_csi300/{needed}")
    provider = shared_file("cn_csi300")
    table = from_sw(sw, levels=(1, 2, 3))
    assert set(table.concept.str[:4]) == {"sw1_", "sw2_", "sw3_"}
    src = MembershipConcepts(table)
    rep = coverage_report(src, provider, "csi300")
    assert list(rep.index) == list(range(2010, 2023))
    assert (rep["coverage"] >= 0.95).all(), format_report(rep)
    assert (rep["concepts_per_stock"] <= 3.0 + 1e-9).all()  # at most one industry per level at a time
    universe = market_instruments(provider, "csi300", "2022-12-30", "2022-12-30")
    sc = src.for_rows(np.array(universe, dtype=object), np.full(len(universe), np.datetime64("2022-12-30")))
    assert sc.n_unknown <= 0.05 * len(universe)
