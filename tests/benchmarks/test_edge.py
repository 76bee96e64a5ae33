"""The forecast-edge page (``benchmarks.edge``): the verdict rule, the borrow checks its rows pass, and the
committed ``benchmarks/results/edge.md`` against the committed run files. No data beyond the repository."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.edge import COMPARISONS, Comparison, outcome, published_lines, table, verdict, yearly_table
from benchmarks.paths import ROOT
from benchmarks.report import Lead

PROFILE = {"start": "2010-01-01", "segments": {"test": ["2019-01-01", "2019-12-31"]}, "n_epochs": 20, "early_stop": 8}
DAYS = [f"2019-01-{d:02d}" for d in range(1, 29)]


def _run(grid: str, model: str, variant: str, seed: int, ic: float, settings: dict | None = None, **kwargs) -> dict:
    rng = np.random.default_rng(seed + 100 * len(variant))
    daily = ic + 0.01 * rng.standard_normal(len(DAYS))
    base = {"n_epochs": 20, "early_stop": 8, "lr": 1e-4}
    return {
        "model": model,
        "variant": variant,
        "settings": settings or {},
        "seed": seed,
        "grid": grid,
        "profile": "cpu-quick",
        "profile_settings": PROFILE,
        "provider_uri": "data",
        "config": {"kwargs": {**base, **(settings or {}), **kwargs, "seed": seed}},
        "metrics": {"IC": float(daily.mean()), "Rank IC": float(daily.mean()) + 0.01},
        "daily_ic": dict(zip(DAYS, daily.tolist())),
        "daily_rank_ic": dict(zip(DAYS, (daily + 0.01).tolist())),
    }


def _write(root, runs: list[dict]) -> None:
    for run in runs:
        row = run["model"] if run["variant"] == "default" else f"{run['model']}+{run['variant']}"
        folder = root / run["grid"] / "runs"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{row}_seed{run['seed']}.json").write_text(json.dumps(run))


@pytest.mark.parametrize(
    "lead, expected",
    [
        (Lead(0.002, 2.0, 2.0), "met"),
        (Lead(0.002, 1.9, 5.0), "not met"),  # above day-to-day noise, not above seed noise
        (Lead(0.002, 3.0, 1.9), "not met"),
        (Lead(-0.002, -3.0, -3.0), "not met"),
        (Lead(0.002, 3.0, float("nan")), "not measured"),  # no daily series in a run file
        (Lead(0.002, 1.8, float("nan")), "not met"),  # short across seeds: no t can make it met
        (Lead(0.002, 3.0, 2.5, (1, 4)), "not measured"),  # the t is over two of the shared seeds only
        (Lead(0.002, 1.0, 2.5, (1, 4)), "not met"),
        (Lead(0.002, float("nan"), 2.5), "not measured"),  # one shared seed: no spread
        (None, "not measured"),  # a row with no finished run
    ],
)
def test_a_lead_meets_the_target_only_on_both_seed_spread_and_the_paired_t(lead, expected):
    assert verdict(lead) == expected


WINDOW = Comparison("w", "table", "screen:model+aux", "table:base", "theirs", published=True)


def test_the_shipped_row_is_borrowed_through_the_reports_check_and_led_over_the_baseline(tmp_path):
    _write(tmp_path, [_run("table", "base", "default", s, 0.03) for s in range(3)])
    _write(tmp_path, [_run("table", "model", "best", s, 0.03, {"lr": 2e-4}) for s in range(3)])
    _write(tmp_path, [_run("screen", "model", "aux", s, 0.05, {"lr": 2e-4, "aux_horizons": [2]}) for s in range(2)])
    out = outcome(tmp_path, WINDOW)
    assert sorted(out.ours) == [0, 1] and sorted(out.theirs) == [0, 1, 2]
    ic = out.leads["IC"]
    mine = np.mean([out.ours[s]["metrics"]["IC"] for s in (0, 1)])
    theirs = np.mean([out.theirs[s]["metrics"]["IC"] for s in (0, 1)])  # the seeds both rows have
    assert ic is not None and ic.lead == pytest.approx(mine - theirs) and ic.t > 2
    assert "| w | theirs | IC |" in table([out]) and out.above("IC") == "2 of 2"  # ours' daily IC is 0.02 higher
    assert published_lines([out])[0].startswith("- w, IC: ours ")
    seeds, years = out.yearly("IC")  # one test year (DAYS): its mean is the whole lead on the days
    runs = (out.ours[0], out.ours[1], out.theirs[0], out.theirs[1])
    daily = [np.array(list(run["daily_ic"].values())) for run in runs]
    assert seeds == [0, 1] and [(y, n) for y, n, _, _ in years] == [(2019, len(DAYS))]
    assert years[0][2] == pytest.approx(np.mean(daily[:2]) - np.mean(daily[2:])) and years[0][3] == pytest.approx(ic.t)
    assert f"| w | theirs | IC | 0, 1 | 2019: {years[0][2]:+.4f} ({ic.t:+.1f}; {len(DAYS)}) |" in yearly_table([out])


def test_the_lead_by_year_is_over_the_seeds_of_the_leads_paired_t(tmp_path):
    """A baseline seed whose file predates the daily Rank IC: the Rank IC by year is over the other seeds, as its t."""
    _write(tmp_path, [_run("table", "base", "default", s, 0.03) for s in range(3)])
    _write(tmp_path, [_run("table", "model", "best", s, 0.03, {"lr": 2e-4}) for s in range(3)])
    _write(tmp_path, [_run("screen", "model", "aux", s, 0.05, {"lr": 2e-4, "aux_horizons": [2]}) for s in range(3)])
    old = json.loads((tmp_path / "table" / "runs" / "base_seed1.json").read_text())
    del old["daily_rank_ic"]
    (tmp_path / "table" / "runs" / "base_seed1.json").write_text(json.dumps(old))
    out = outcome(tmp_path, WINDOW)
    rank = out.leads["Rank IC"]
    assert rank is not None and rank.t_seeds == (0, 2)
    assert out.yearly("Rank IC")[0] == [0, 2] and out.yearly("IC")[0] == [0, 1, 2]
    assert out.yearly("Rank IC")[1][0][3] == pytest.approx(rank.t)  # one test year: its t is the lead's


def test_a_shipped_row_with_another_budget_is_refused_and_a_missing_baseline_not_measured(tmp_path):
    _write(tmp_path, [_run("table", "base", "default", s, 0.03) for s in range(2)])
    _write(tmp_path, [_run("table", "model", "best", s, 0.03, {"lr": 2e-4}) for s in range(2)])
    _write(tmp_path, [_run("screen", "model", "aux", 0, 0.05, {"aux_horizons": [2], "n_epochs": 40})])
    with pytest.raises(SystemExit, match="n_epochs=40 differs .*the training budget"):
        outcome(tmp_path, WINDOW)
    _write(tmp_path, [_run("screen", "model", "aux", 0, 0.05, {"aux_horizons": [2]})])
    missing = Comparison("w", "table", "screen:model+aux", "elsewhere:base", "theirs", own_budget=True)
    out = outcome(tmp_path, missing)
    assert out.theirs == {} and out.leads == {"IC": None, "Rank IC": None}
    (tmp_path / "elsewhere" / "runs").mkdir(parents=True)  # the runner made the folder; no run has finished
    assert outcome(tmp_path, missing).theirs == {}
    assert "| — (none yet) | — | — | — | — | not measured |" in table([out])


def test_the_committed_page_is_what_the_committed_run_files_give():
    results = ROOT / "benchmarks" / "results"
    page = (results / "edge.md").read_text()
    outcomes = [outcome(results, comparison) for comparison in COMPARISONS]
    assert table(outcomes) in page, "benchmarks/results/edge.md is stale: run python -m benchmarks.edge"
    assert "\n".join(published_lines(outcomes)) in page
    assert yearly_table(outcomes) in page, "benchmarks/results/edge.md is stale: run python -m benchmarks.edge"
