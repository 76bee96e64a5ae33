"""The market gate and the auxiliary-horizon helpers (``qlib_hist/context.py``): their maths on inputs whose answer
is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from qlib_hist.context import (
    FEATURES_PER_INDEX,
    MarketGate,
    aux_label_mask,
    aux_loss,
    market_names,
    rank_normalise,
)


def test_the_gate_starts_as_the_identity_and_learns_a_softmax_times_f():
    gate = MarketGate(n_market=4, d_feat=3, temperature=10.0)
    x = torch.randn(5, 3 * 7)
    market = torch.tensor([0.01, -0.2, 3.0, float("nan")])
    assert torch.equal(gate(x, market), x)  # W = 0, b = 0: alpha = 3 * softmax(0) = 1
    with torch.no_grad():
        gate.linear.bias.copy_(torch.tensor([10.0, 0.0, -10.0]))
    alpha = 3 * torch.softmax(torch.tensor([1.0, 0.0, -1.0]), 0)  # bias / temperature
    assert torch.allclose(gate.weights(market), alpha)
    expected = (x.reshape(5, 3, 7) * alpha[None, :, None]).reshape(5, -1)  # field-major: each field's 7 steps
    assert torch.allclose(gate(x, market), expected)
    assert gate.weights(market).sum().item() == pytest.approx(3.0)


def test_the_scale_is_the_train_days_mean_and_std_and_a_missing_figure_is_the_mean():
    gate = MarketGate(n_market=2, d_feat=2, temperature=1.0)
    train = torch.tensor([[1.0, 5.0], [3.0, 5.0], [float("nan"), 5.0]])
    gate.fit_scale(train)
    assert torch.allclose(gate.mean, torch.tensor([2.0, 5.0])) and torch.allclose(gate.std, torch.tensor([1.0, 1.0]))
    with torch.no_grad():
        gate.linear.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    # standardised (4 - 2) / 1 = 2 on the first figure; NaN -> 0 (the train mean) on the second
    logits = torch.tensor([2.0, 0.0])
    assert torch.allclose(gate.weights(torch.tensor([4.0, float("nan")])), 2 * torch.softmax(logits, 0))
    assert torch.isfinite(gate.weights(torch.tensor([float("nan"), float("nan")]))).all()


def test_market_names_follow_the_features_per_index():
    names = market_names(["SH000300", "SH000905"])
    assert len(names) == 2 * FEATURES_PER_INDEX == 42
    assert names[0] == "SH000300:ret" and names[FEATURES_PER_INDEX] == "SH000905:ret"
    assert names[1:5] == ["SH000300:ret_mean5", "SH000300:ret_std5", "SH000300:amount_ratio5", "SH000300:amount_cv5"]


def test_a_label_that_reads_past_the_last_train_day_is_masked():
    calendar = pd.bdate_range("2020-01-01", periods=12)
    dates = np.repeat(calendar[:8].values, 2)  # 8 days, 2 stocks each
    last_day = calendar[7]  # train ends on the 8th trading day (position 7)
    keep = aux_label_mask(dates, [1, 3], calendar, last_day)
    position = np.repeat(np.arange(8), 2)
    # a k-day label of day t reads the close of t+1+k: kept while t + 1 + k <= 7
    assert (keep[:, 0] == (position + 2 <= 7)).all() and (keep[:, 1] == (position + 4 <= 7)).all()
    assert keep[:, 0].sum() == 2 * 6 and keep[:, 1].sum() == 2 * 4
    # a last day that is not a trading day (the Saturday and Sunday after Friday, position 7) counts as the trading
    # day before it
    assert calendar[7].day_name() == "Friday"
    for days_later in (1, 2):
        weekend = aux_label_mask(dates, [1, 3], calendar, calendar[7] + pd.Timedelta(days=days_later))
        assert (weekend == keep).all()


def test_rank_normalise_is_qlibs_cs_rank_norm_per_day():
    dates = np.array(["2020-01-01"] * 3 + ["2020-01-02"] * 2, dtype="datetime64[ns]")
    values = np.array([[3.0], [1.0], [2.0], [np.nan], [5.0]])
    out = rank_normalise(values, dates)
    assert out[:3, 0] == pytest.approx([(1.0 - 0.5) * 3.46, (1 / 3 - 0.5) * 3.46, (2 / 3 - 0.5) * 3.46])
    assert np.isnan(out[3, 0]) and out[4, 0] == pytest.approx(0.5 * 3.46)


def test_aux_loss_averages_the_heads_that_have_labels():
    pred = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    labels = torch.tensor([[1.0, float("nan")], [2.0, float("nan")], [4.0, 1.0]])

    def mse(p, y, w=None):
        keep = torch.isfinite(y)
        return ((p[keep] - y[keep]) ** 2).mean() if keep.sum() >= 2 else None  # skips a day like the IC loss

    assert aux_loss(pred, labels, mse).item() == pytest.approx(1 / 3)  # the second head has one label: left out
    none = torch.full((3, 2), float("nan"))
    assert aux_loss(pred, none, mse).item() == 0.0
