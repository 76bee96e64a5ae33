"""The paired test over days (``benchmarks/paired.py``) on series whose answer is known, and its cells in
``benchmarks.report --versus``."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from benchmarks.paired import by_year, daily_difference, newey_west_t, paired_t, seed_mean_daily
from benchmarks.report import margins


def test_without_lags_it_is_the_plain_paired_t_with_the_population_variance():
    # d = 1, 2, 3, 4: mean 2.5, population variance 1.25 -> t = 2.5 / sqrt(1.25 / 4) = 4.4721
    assert newey_west_t([1.0, 2.0, 3.0, 4.0], lags=0) == pytest.approx(2.5 / math.sqrt(1.25 / 4))
    rng = np.random.default_rng(0)
    d = rng.normal(0.01, 0.03, 500)
    assert newey_west_t(d, lags=0) == pytest.approx(d.mean() / (d.std() / math.sqrt(len(d))))


def test_one_lag_by_hand():
    # e = -1.5, -0.5, 0.5, 1.5; γ0 = 5/4 = 1.25; γ1 = (0.75 - 0.25 + 0.75) / 4 = 0.3125
    # V = 1.25 + 2 * (1 - 1/2) * 0.3125 = 1.5625; t = 2.5 / sqrt(1.5625 / 4) = 2.5 / 0.625 = 4.0
    assert newey_west_t([1.0, 2.0, 3.0, 4.0], lags=1) == pytest.approx(4.0)


def test_two_lags_by_hand():
    # d = 0, 3, 0, 3, 3: mean 1.8; e = -1.8, 1.2, -1.8, 1.2, 1.2
    # γ0 = (3.24 * 2 + 1.44 * 3) / 5 = 2.16; γ1 = (-2.16 * 3 + 1.44) / 5 = -1.008; γ2 = (3.24 - 2.16 * 2) / 5 ... by
    # numpy below, weights 2/3 and 1/3
    d = np.array([0.0, 3.0, 0.0, 3.0, 3.0])
    e = d - d.mean()
    g0, g1, g2 = (e @ e) / 5, (e[1:] @ e[:-1]) / 5, (e[2:] @ e[:-2]) / 5
    assert (g0, g1) == pytest.approx((2.16, -1.008))
    variance = g0 + 2 * (2 / 3) * g1 + 2 * (1 / 3) * g2
    assert newey_west_t(d, lags=2) == pytest.approx(1.8 / math.sqrt(variance / 5))


def test_positive_autocorrelation_shrinks_the_t_and_the_sign_follows_the_mean():
    """An AR(1) series with φ = 0.6 and a small mean: the plain t overstates the evidence, the HAC t does not."""
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 1, 3000)
    d = np.empty_like(noise)
    d[0] = noise[0]
    for t in range(1, len(d)):
        d[t] = 0.6 * d[t - 1] + noise[t]
    d += 0.1
    plain, hac = newey_west_t(d, lags=0), newey_west_t(d, lags=5)
    assert 0 < hac < plain
    # the long-run std of this AR(1) is 1/(1-0.6) = 2.5 times the innovation's; its stationary std is 1/sqrt(1-0.36)
    # = 1.25, so the plain t is about 2x too large; 5 Bartlett lags recover most of it
    assert plain / hac == pytest.approx(2.0, rel=0.2)
    assert newey_west_t(-d) == pytest.approx(-newey_west_t(d))
    assert newey_west_t(3.0 * d) == pytest.approx(newey_west_t(d))  # unit-free


def test_degenerate_series():
    assert math.isnan(newey_west_t([0.01]))
    assert math.isnan(newey_west_t([0.01, 0.02], lags=5))  # more lags than days
    assert math.isnan(newey_west_t([0.0, 0.0, 0.0], lags=0))
    assert newey_west_t([0.01, 0.01, 0.01], lags=0) == math.inf
    assert newey_west_t([np.nan, 1.0, 2.0, 3.0, 4.0], lags=0) == pytest.approx(4.4721, abs=1e-4)  # NaN days dropped
    with pytest.raises(ValueError, match="lags"):
        newey_west_t([1.0, 2.0], lags=-1)


DAYS = [f"2019-01-{d:02d}" for d in range(1, 31)]


def _run(model, seed, daily, variant="default", rank=None):
    run = {
        "model": model,
        "variant": variant,
        "seed": seed,
        "metrics": {"IC": float(np.mean(daily)), "Rank IC": float(np.mean(rank if rank is not None else daily))},
        "daily_ic": dict(zip(DAYS, map(float, daily))),
    }
    if rank is not None:
        run["daily_rank_ic"] = dict(zip(DAYS, map(float, rank)))
    return run


def test_the_report_tests_the_seed_mean_daily_difference_over_the_shared_seeds_and_days():
    rng = np.random.default_rng(2)
    theirs = [rng.normal(0.03, 0.05, 30) for _ in range(3)]
    mine = [t + rng.normal(0.004, 0.01, 30) for t in theirs]
    runs = [_run("qlib_hist_patched", s, theirs[s], rank=theirs[s]) for s in range(3)]
    runs += [_run("hist_pit", s, mine[s], variant="best", rank=mine[s] - 0.004) for s in range(3)]
    runs.append(_run("hist_pit", 9, np.full(30, 0.9), variant="best"))  # a seed qlib's row lacks: not averaged in
    expected_ic = newey_west_t(np.mean(mine, axis=0) - np.mean(theirs, axis=0))
    expected_rank = newey_west_t(np.mean(mine, axis=0) - 0.004 - np.mean(theirs, axis=0))
    line = margins(runs, "qlib_hist_patched").splitlines()[2]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == "0, 1, 2"
    assert cells[5] == f"{expected_ic:+.1f}" and cells[8] == f"{expected_rank:+.1f}"
    assert abs(expected_ic) > 2 > abs(expected_rank)  # the two columns are not one number twice


def test_days_one_side_lacks_are_left_out_and_a_missing_series_is_na():
    a = [_run("qlib_hist_patched", 0, np.linspace(0, 0.05, 30))]
    b = [_run("hist_pit", 0, np.linspace(0, 0.05, 30) + np.tile([0.01, 0.03], 15), variant="best")]
    del b[0]["daily_ic"][DAYS[0]]  # a day only qlib's row scored
    expected = newey_west_t(np.tile([0.01, 0.03], 15)[1:])
    assert paired_t(b, a, "daily_ic") == pytest.approx(expected)
    assert math.isnan(paired_t(b, a, "daily_rank_ic"))  # run files from before the series was recorded


def _ar1(n: int, phi: float, seed: int) -> np.ndarray:
    """An AR(1) daily difference (innovations N(0, 0.03)) shifted by +0.004."""
    shocks = np.random.default_rng(seed).normal(0.0, 0.03, n)
    d = np.zeros(n)
    for t in range(n):
        d[t] = (phi * d[t - 1] if t else 0.0) + shocks[t]
    return d + 0.004


@pytest.mark.parametrize(
    "n, phi, lags, reference",
    [  # statsmodels 0.15: OLS(d, ones).fit(cov_type="HAC", cov_kwds={"maxlags": lags}).tvalues[0] (HC0 at 0 lags)
        (250, 0.5, 5, -0.7767670518558529),
        (40, 0.3, 5, -0.4383836955092373),
        (250, 0.5, 0, -1.187964307644225),
        (971, 0.2, 5, 5.191391772980045),
    ],
)
def test_it_is_statsmodels_hac_t_of_a_mean(n, phi, lags, reference):
    """Pinned against an independent implementation (statsmodels is not a dependency: the values are its output)."""
    assert newey_west_t(_ar1(n, phi, seed=n), lags) == pytest.approx(reference, rel=1e-10)


def test_a_day_some_seed_lacks_is_left_out_not_averaged_over_the_others():
    runs = [{"daily_ic": {"d1": 1.0, "d2": float("nan")}}, {"daily_ic": {"d1": 3.0, "d2": 4.0, "d3": 5.0}}]
    mean = seed_mean_daily(runs, "daily_ic")
    assert mean["d1"] == 2.0 and math.isnan(mean["d2"]) and math.isnan(mean["d3"])


def test_the_lead_by_year_is_each_years_own_mean_and_t():
    """Two years: 2019 led by +0.01 on average, 2020 lagging by -0.02. The run files list the days shuffled; the t
    (autocorrelated, so order-dependent) is over each year's days in date order, and the years do not mix."""
    rng = np.random.default_rng(3)
    days19 = pd.bdate_range("2019-01-02", periods=40).strftime("%Y-%m-%d").tolist()
    days20 = pd.bdate_range("2020-01-02", periods=30).strftime("%Y-%m-%d").tolist()
    d19, d20 = rng.normal(0.01, 0.02, 40), rng.normal(-0.02, 0.02, 30)
    d19[1::2] += 0.02  # alternating: a strongly negative lag-1 autocorrelation, so a shuffle would change the t
    by_day = dict(zip(days19 + days20, np.concatenate([d19, d20]).tolist()))
    shuffled = [days19[i] if i < 40 else days20[i - 40] for i in rng.permutation(70)]
    theirs = {"daily_ic": {day: 0.03 for day in shuffled}}
    mine = {"daily_ic": {day: 0.03 + by_day[day] for day in shuffled}}
    diff = daily_difference([mine], [theirs], "daily_ic")
    assert diff is not None and diff.index.is_monotonic_increasing and len(diff) == 70
    (y19, n19, m19, t19), (y20, n20, m20, t20) = by_year(diff)
    assert (y19, n19, y20, n20) == (2019, 40, 2020, 30)
    assert m19 == pytest.approx(d19.mean()) and m20 == pytest.approx(d20.mean())
    assert t19 == pytest.approx(newey_west_t(d19)) and t20 == pytest.approx(newey_west_t(d20))
    in_file_order = np.array([mine["daily_ic"][day] - 0.03 for day in shuffled if day.startswith("2019")])
    assert abs(newey_west_t(in_file_order) - t19) > 0.1  # the order matters, and the date order is the one taken
    assert paired_t([mine], [theirs], "daily_ic") == pytest.approx(newey_west_t(np.concatenate([d19, d20])))
    assert t19 > 0 > t20
    assert daily_difference([mine], [{"seed": 0}], "daily_ic") is None  # a side without the series
