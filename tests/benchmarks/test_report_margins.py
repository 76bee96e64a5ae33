"""``benchmarks.report --versus ROW``: each row's lead over ROW in seed standard deviations, the issue's target
measure (the larger row's spread, on the seeds both rows have); and table cells over runs that only partly record
a field."""

from __future__ import annotations

import json

import pytest

from benchmarks.report import main as report_main
from benchmarks.report import margins


def _run(model: str, seed: int, ic: float, rank_ic: float, variant: str = "default", **extra) -> dict:
    return {
        "model": model,
        "variant": variant,
        "seed": seed,
        "provider_uri": "../shared/data/cn_csi300",
        "metrics": {"IC": ic, "Rank IC": rank_ic},
        "fit_seconds": 10.0,
        "daily_ic": {"2019-01-02": ic},
        "daily_excess": {"2019-01-02": 0.0},
        **extra,
    }


def _rows(table: str) -> dict[str, list[str]]:
    lines = table.splitlines()[2:]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}


def test_the_lead_is_in_units_of_the_larger_rows_std_over_the_shared_seeds():
    base = [_run("qlib_hist_patched", s, ic, 0.04) for s, ic in enumerate([0.030, 0.032, 0.034])]
    # ours: IC std 0.0008, smaller than qlib's 0.0016; Rank IC std 0 in both rows: an exact tie
    ours = [_run("hist_pit", s, ic, 0.04, variant="best") for s, ic in enumerate([0.035, 0.036, 0.037])]
    extra_seed = _run("hist_pit", 7, 0.5, 0.5, variant="best")  # qlib has no seed 7: not compared
    rows = _rows(margins(base + ours + [extra_seed], "qlib_hist_patched"))
    (cells,) = rows.values()
    assert cells[:2] == ["1", "0, 1, 2"]
    lead, spread = 0.036 - 0.032, (((0.002**2) * 2) / 3) ** 0.5  # qlib's std, ddof 0
    assert cells[2] == f"{lead:+.4f}" and cells[3] == f"{lead / spread:+.1f}" == "+2.4"
    assert cells[4:] == ["n/a", "+0.0000", "0", "n/a"]  # one test day: no paired t


def test_a_five_fit_row_names_its_fits_and_a_lead_over_one_shared_seed_has_no_std():
    """One seed in common: the spread is not measured, so the lead has no size in std (it was ``+inf``)."""
    base = [_run("qlib_hist_patched", 0, 0.03, 0.04)]
    avg = [_run("qlib_hist_patched", 0, 0.031, 0.039, variant="avg5", fits=5)]
    cells = _rows(margins(base + avg, "qlib_hist_patched"))["HIST (qlib's, patched only to run: CPU + pandas 3), avg5"]
    assert cells == ["1/5", "0", "+0.0010", "n/a (1 seed)", "n/a", "-0.0010", "n/a (1 seed)", "n/a"]
    # two seeds that agree exactly have a measured spread of 0: the lead is infinite in std
    base.append(_run("qlib_hist_patched", 1, 0.03, 0.04))
    avg.append(_run("qlib_hist_patched", 1, 0.031, 0.039, variant="avg5", fits=5))
    cells = _rows(margins(base + avg, "qlib_hist_patched"))["HIST (qlib's, patched only to run: CPU + pandas 3), avg5"]
    assert cells == ["1/5", "0, 1", "+0.0010", "+inf", "n/a", "-0.0010", "-inf", "n/a"]


def test_the_paired_t_is_over_the_shared_seeds_with_the_daily_series_and_names_them_when_some_lack_it():
    """Run files made before the daily Rank IC was recorded lack it: the Rank IC t is over the seeds whose runs on
    both sides hold it, and the cell names them; over none it is n/a; the IC t, which every run has, names none."""
    import numpy as np

    from benchmarks.paired import newey_west_t
    from benchmarks.report import lead_over

    days = [f"2019-01-{d:02d}" for d in range(1, 31)]
    noise = np.random.default_rng(0).normal(0, 0.05, (2, 3, len(days)))  # side, seed, day

    def run(side: int, seed: int, shift: float, rank: bool) -> dict:
        daily = dict(zip(days, 0.03 + shift + noise[side, seed]))
        extra = {"daily_rank_ic": {d: v + 0.01 for d, v in daily.items()}} if rank else {}
        return {"seed": seed, "metrics": {"IC": 0.03 + shift, "Rank IC": 0.04 + shift}, "daily_ic": daily, **extra}

    pairs = {s: (run(0, s, 0.004 * (s + 1), rank=True), run(1, s, 0.0, rank=s in (0, 2))) for s in range(3)}
    rank, ic = lead_over(pairs, "Rank IC"), lead_over(pairs, "IC")
    seeds = [0, 2]
    expected = np.mean([0.004 * (s + 1) + noise[0, s] - noise[1, s] for s in seeds], axis=0)
    assert rank.t_seeds == (0, 2) and rank.t == pytest.approx(newey_west_t(expected, 5))
    every = np.mean([0.004 * (s + 1) + noise[0, s] - noise[1, s] for s in range(3)], axis=0)
    assert ic.t_seeds == () and ic.t == pytest.approx(newey_west_t(every, 5)) and rank.t != pytest.approx(ic.t)
    assert rank.cells()[2] == f"{rank.t:+.1f} (seeds 0, 2)" and ic.cells()[2] == f"{ic.t:+.1f}"
    none = lead_over({1: pairs[1]}, "Rank IC")
    assert np.isnan(none.t) and none.cells()[2] == "n/a"


def test_two_untrained_rows_are_deterministic_so_their_lead_is_infinite_in_std():
    file = _run("hist_pit", 0, 0.028, 0.038, variant="pretrained_as_is", config={"kwargs": {"n_epochs": 0}})
    other = _run("lstm", 0, 0.027, 0.038, config={"kwargs": {"n_epochs": 0}})
    cells = _rows(margins([file, other], "hist_pit+pretrained_as_is"))["LSTM (qlib, Alpha360)"]
    assert cells[2:] == ["-0.0010", "-inf", "n/a", "+0.0000", "0", "n/a"]


def test_a_default_row_beside_a_variant_of_its_model_is_named_default():
    from benchmarks.report import label, summary_table

    runs = [_run("hist_pit", 0, 0.03, 0.04), _run("hist_pit", 0, 0.031, 0.04, variant="best")]
    names = [line.split("|")[1].strip() for line in summary_table(runs).splitlines()[2:]]
    assert names == [
        "HIST (qlib_hist, point-in-time SW concepts), default",
        "HIST (qlib_hist, point-in-time SW concepts), best",
    ]
    # alone, or beside a row labelled as another model (the untrained file), it keeps the model's label
    assert label("hist_pit", ["hist_pit", "hist_pit+pretrained_as_is"]) == "HIST (qlib_hist, point-in-time SW concepts)"
    assert label("hist_pit") == "HIST (qlib_hist, point-in-time SW concepts)"


def test_an_unknown_versus_row_is_refused_before_anything_is_written(tmp_path, capsys):
    folder = tmp_path / "g" / "runs"
    folder.mkdir(parents=True)
    (folder / "lstm_seed0.json").write_text(json.dumps(_run("lstm", 0, 0.02, 0.03)))
    with pytest.raises(SystemExit) as exit_:
        report_main(["--grid", "g", "--results-dir", str(tmp_path), "--versus", "qlib_hist_patched"])
    assert exit_.value.code == 2 and "--versus 'qlib_hist_patched': no finished run" in capsys.readouterr().err
    assert not (tmp_path / "g.md").exists()


def test_an_untrained_row_stands_beside_every_seed_of_the_other_row():
    """The pretrained file scored with no epoch has one value whatever the seed: ours is compared on all its seeds,
    and the spread is ours alone."""
    file = _run("hist_pit", 0, 0.028, 0.038, variant="pretrained_as_is", config={"kwargs": {"n_epochs": 0}})
    ours = [_run("hist_pit", s, ic, 0.040, variant="best") for s, ic in enumerate([0.029, 0.031, 0.033])]
    cells = _rows(margins([file, *ours], "hist_pit+pretrained_as_is"))[
        "HIST (qlib_hist, point-in-time SW concepts), best"
    ]
    spread = ((0.002**2 * 2) / 3) ** 0.5
    assert (
        cells[1] == "0, 1, 2"
        and cells[2:4] == ["+0.0030", f"{0.003 / spread:+.1f}"]
        and cells[5:7] == ["+0.0020", "+inf"]
    )
    # and the other way round: the file's lead over ours, on the same three seeds
    cells = _rows(margins([file, *ours], "hist_pit+best"))[
        "qlib's pretrained LSTM file, untrained (hist_pit, every module off, 0 epochs)"
    ]
    assert cells[1:4] == ["0, 1, 2", "-0.0030", f"{-0.003 / spread:+.1f}"]
    trained_once = dict(file, config={"kwargs": {"n_epochs": 20}})  # one trained seed is not a constant
    assert "0, 1, 2" not in margins([trained_once, *ours], "hist_pit+best")


def test_a_field_only_some_runs_have_is_averaged_over_those_and_says_how_many():
    """qlib's row recorded its epochs only from some run on: its cells cover those runs and say so, never nan."""
    from benchmarks.report import summary_table

    old = _run("qlib_hist_patched", 0, 0.03, 0.04)
    new = _run("qlib_hist_patched", 1, 0.03, 0.04, valid_score=0.08, best_epoch=13, epoch_seconds=[100.0] * 20)
    line = summary_table([old, new]).splitlines()[2]
    assert "nan" not in line
    assert "| 0.0800 ± 0.0000 (1 of 2) | 13.0 ± 0.0 (1 of 2) |" in line and line.endswith(
        "| 20.0 (1 of 2) | 100 (1 of 2) |"
    )


def test_an_ensemble_run_counts_once_however_many_members_it_records():
    """An ensemble run keeps one best epoch per member: it is one run of the row, not five ("5 of 1" was a bug)."""
    from benchmarks.report import summary_table

    members = _run("hist_pit", 0, 0.03, 0.04, valid_score=0.08, best_epoch=[1, 2, 3, 4, 5])
    assert "| 3.0 ± 1.4 |" in summary_table([members]).splitlines()[2]
    older = _run("hist_pit", 1, 0.03, 0.04, valid_score=0.08)
    assert "| 3.0 ± 1.4 (1 of 2) |" in summary_table([members, older]).splitlines()[2]
