"""The ``qlib-hist`` command line (``qlib_hist.cli.main``): exit 0 on success; a user's error is one line
``qlib-hist: error: ...`` on stderr and exit 2; usage errors are argparse's (exit 2); internal bugs propagate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qlib_hist import cli
from qlib_hist.concepts.membership import load_membership

SW = """instrument,start_date,industry_code
SH600000,2010-01-01,480101
SH600000,2014-02-21,480301
SZ000001,2015-05-05,120101
"""


@pytest.fixture
def sw_csv(tmp_path):
    path = tmp_path / "sw.csv"
    path.write_text(SW)
    return path


def _one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("qlib-hist: error: "), err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


# ----------------------------------------------------------------------------------------------- from-sw
def test_from_sw_writes_a_membership_table(sw_csv, tmp_path, capsys):
    out = tmp_path / "membership.csv"
    assert cli.main(["concepts", "from-sw", str(sw_csv), str(out)]) == 0
    table = load_membership(out)
    assert set(table["instrument"]) == {"SH600000", "SZ000001"}
    assert {"sw1_48", "sw2_4801", "sw3_480301", "sw3_120101"} <= set(table["concept"])
    captured = capsys.readouterr()
    assert f"wrote {out}" in captured.out and "2 instruments" in captured.out and captured.err == ""

    only = tmp_path / "level1.csv"
    assert cli.main(["concepts", "from-sw", str(sw_csv), str(only), "--levels", "1"]) == 0
    assert load_membership(only)["concept"].str.startswith("sw1_").all()


def test_from_sw_missing_input_is_a_user_error(tmp_path, capsys):
    out = tmp_path / "membership.csv"
    assert cli.main(["concepts", "from-sw", str(tmp_path / "nope.csv"), str(out)]) == 2
    _one_error_line(capsys, "nope.csv")
    assert not out.exists()


@pytest.mark.parametrize("levels", ["1,4", "0", "1,1"])
def test_from_sw_bad_levels_is_a_user_error(sw_csv, tmp_path, capsys, levels):
    assert cli.main(["concepts", "from-sw", str(sw_csv), str(tmp_path / "m.csv"), "--levels", levels]) == 2
    _one_error_line(capsys, "levels")


@pytest.mark.parametrize(
    "argv",
    [
        ["concepts", "from-sw", "sw.csv", "m.csv", "--levels", "x"],  # not integers: argparse's type check
        ["concepts", "from-sw", "sw.csv"],  # a missing positional argument
        ["concepts"],  # no subcommand
        ["concepts", "to-legacy", "m.csv", "--provider-uri", "p", "--out", "o"],  # --as-of is required
        ["fly"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "usage: qlib-hist" in capsys.readouterr().err


def test_internal_errors_propagate(sw_csv, tmp_path, monkeypatch):
    def broken(args):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr(cli, "cmd_from_sw", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["concepts", "from-sw", str(sw_csv), str(tmp_path / "m.csv")])


# ----------------------------------------------------------------------------------------------- on the demo provider
def _legacy_argv(membership, demo, out) -> list:
    return [
        "concepts",
        "to-legacy",
        str(membership),
        "--as-of",
        "2016-06-30",
        "--provider-uri",
        str(demo.provider_uri),
        "--market",
        demo.market,
        "--out",
        str(out),
    ]


def test_to_legacy_writes_qlibs_files(demo, tmp_path, capsys):
    out = tmp_path / "legacy"
    out.mkdir()
    assert cli.main(_legacy_argv(demo.membership, demo, out)) == 0
    matrix = np.load(out / "stock2concept.npy")
    index = json.loads((out / "stock_index.json").read_text())
    assert matrix.dtype == np.float32 and matrix.shape == (len(demo.instruments), len(demo.concepts))
    assert sorted(index) == sorted(demo.instruments) and sorted(index.values()) == list(range(len(index)))
    assert capsys.readouterr().out.count("wrote ") >= 3


def test_to_legacy_missing_membership_is_a_user_error(demo, tmp_path, capsys):
    assert cli.main(_legacy_argv(tmp_path / "missing.csv", demo, tmp_path / "out")) == 2
    _one_error_line(capsys, "missing.csv")
    assert not (tmp_path / "out").exists()


def test_report_prints_coverage_and_plots(demo, tmp_path, capsys):
    png = tmp_path / "coverage.png"
    argv = [
        "concepts",
        "report",
        str(demo.membership),
        "--provider-uri",
        str(demo.provider_uri),
        "--market",
        demo.market,
        "--png",
        str(png),
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "coverage" in out and "2016" in out and f"wrote {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
