"""The seed average's combination rule (``benchmarks.seed_average``), against the ensemble's; no qlib store.

The whole command (recorders in, a scored result file out) is tested on the Ray grid's runs in
``test_ray_runner.py``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.grid import DEFAULT, RunKey
from benchmarks.seed_average import average_key, average_scores
from qlib_hist.network import standardise


def _scores(seed: int, days: int = 3, stocks: int = 5) -> pd.Series:
    rng = np.random.default_rng(seed)
    index = pd.MultiIndex.from_product(
        [pd.date_range("2020-01-01", periods=days), [f"S{i}" for i in range(stocks)]], names=["datetime", "instrument"]
    )
    return pd.Series(rng.normal(scale=seed + 1, size=len(index)), index=index, name="score")


def test_the_mean_of_per_day_z_scores_is_the_ensembles_rule():
    members = [_scores(0), _scores(1), _scores(2)]
    mean = average_scores(members)
    for day, got in mean.groupby(level="datetime"):
        z = [standardise(torch.tensor(m.loc[day].to_numpy())) for m in members]
        assert got.to_numpy() == pytest.approx(torch.stack(z).mean(0).numpy(), abs=1e-12)
    assert mean.name == "score" and (mean.groupby(level="datetime").std(ddof=0) <= 1 + 1e-12).all()


def test_a_member_with_a_flat_day_counts_zero_there_and_rows_are_the_common_ones():
    flat = _scores(0)
    flat.loc["2020-01-02"] = 1.5
    other = _scores(1).drop(("2020-01-03", "S4"))
    mean = average_scores([flat, other])
    assert ("2020-01-03", "S4") not in mean.index and len(mean) == len(other)
    day = other.loc["2020-01-02"]
    z = (day - day.mean()) / day.std(ddof=0)
    assert mean.loc["2020-01-02"].to_numpy() == pytest.approx(z.to_numpy() / 2)
    assert np.isfinite(mean).all()


def test_one_member_is_its_own_z_scores_and_none_is_refused():
    one = _scores(4)
    z = one.groupby(level="datetime").transform(lambda d: (d - d.mean()) / d.std(ddof=0))
    assert average_scores([one]).to_numpy() == pytest.approx(z.to_numpy())
    with pytest.raises(ValueError, match="at least one member"):
        average_scores([])


def test_the_average_row_is_named_after_the_row_and_the_count():
    assert average_key(RunKey("qlib_hist_patched", DEFAULT, 0), 5).row == "qlib_hist_patched+avg5"
    assert average_key(RunKey("hist_pit", "best", 3), 5).file_name == "hist_pit+best_avg5_seed3.json"
