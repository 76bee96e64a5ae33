"""Daily metrics and the masked loss (``qlib_hist.metrics``): what "better" means, computed per trading day."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from qlib_hist.metrics import (
    METRICS,
    _average_ranks,
    daily_metrics,
    masked_mse,
    normalize_metric,
    precision_k,
    score_of,
)


# ----------------------------------------------------------------------------- daily_metrics
def _expected_metrics(pred, label, starts, counts):
    ics, rics, losses, precisions = [], [], [], []
    for s, c in zip(starts, counts):
        day = pd.DataFrame({"p": pred[s : s + c], "y": label[s : s + c]}).dropna(subset=["y"])
        if len(day) == 0:
            continue
        losses.append(((day.p - day.y) ** 2).mean())
        if len(day) >= 2:
            ics.append(day.p.corr(day.y))
            rics.append(stats.spearmanr(day.p, day.y).statistic)
        precisions.append((day.nlargest(5, "p").y > 0).mean())
    return {"ic": np.mean(ics), "rank_ic": np.mean(rics), "loss": np.mean(losses), "precision@5": np.mean(precisions)}


def test_daily_metrics_match_pandas_and_scipy():
    rng = np.random.default_rng(0)
    counts = np.array([30, 12, 25, 7, 40])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n = counts.sum()
    label = rng.normal(size=n)
    pred = 0.5 * label + rng.normal(size=n)
    # ties in both predictions and labels (rank_ic must use average ranks)
    pred[:30] = np.round(pred[:30])
    label[30:42] = np.round(label[30:42] * 2) / 2
    pred[42:67] = np.round(pred[42:67], 1)
    label[42:67] = np.round(label[42:67])
    label[rng.choice(n, 15, replace=False)] = np.nan
    got = daily_metrics(pred.astype(np.float32), label.astype(np.float32), starts, counts, precision_k=5)
    want = _expected_metrics(
        pred.astype(np.float32).astype(np.float64), label.astype(np.float32).astype(np.float64), starts, counts
    )
    assert set(got) == {"ic", "rank_ic", "loss", "precision@5"}
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-9), k


def test_rank_ic_with_heavy_ties():
    pred = np.array([1, 1, 2, 2, 2, 3, 0, 0], dtype=np.float32)
    label = np.array([0, 1, 1, 1, 2, 2, 0, 1], dtype=np.float32)
    got = daily_metrics(pred, label, np.array([0]), np.array([8]))
    assert got["rank_ic"] == pytest.approx(stats.spearmanr(pred, label).statistic, rel=1e-9)
    assert got["ic"] == pytest.approx(stats.pearsonr(pred, label).statistic, rel=1e-6)
    # ties differ from the ordinal-rank answer, so this checks the tie handling
    ordinal = np.corrcoef(stats.rankdata(pred, "ordinal"), stats.rankdata(label, "ordinal"))[0, 1]
    assert abs(got["rank_ic"] - ordinal) > 1e-3


def test_average_ranks_are_scipys():
    rng = np.random.default_rng(3)
    for values in (
        np.array([3.0, 1.0, 3.0, 2.0, 3.0]),
        np.round(rng.normal(size=50)),
        rng.normal(size=17),
        np.zeros(4),
        np.array([7.0]),
    ):
        np.testing.assert_array_equal(_average_ranks(values), stats.rankdata(values, method="average"))


def test_daily_metrics_skip_all_nan_day():
    rng = np.random.default_rng(1)
    pred = rng.normal(size=20).astype(np.float32)
    label = (pred + rng.normal(size=20)).astype(np.float32)
    starts, counts = np.array([0, 10]), np.array([10, 10])
    only_first = daily_metrics(pred[:10], label[:10], np.array([0]), np.array([10]))

    label_nan = label.copy()
    label_nan[10:] = np.nan
    got = daily_metrics(pred, label_nan, starts, counts)
    for k in got:
        assert np.isfinite(got[k]), k
        assert got[k] == pytest.approx(only_first[k], rel=1e-9), k
    # sanity: with the second day's labels present the figures differ
    full = daily_metrics(pred, label, starts, counts)
    assert full["ic"] != pytest.approx(only_first["ic"])


def test_daily_metrics_nan_labels_ignored_not_zeroed():
    pred = np.array([1.0, 2.0, 3.0, 100.0, 4.0], dtype=np.float32)
    label = np.array([1.0, 2.0, 3.0, np.nan, 4.0], dtype=np.float32)
    got = daily_metrics(pred, label, np.array([0]), np.array([5]))
    assert got["ic"] == pytest.approx(1.0)
    assert got["rank_ic"] == pytest.approx(1.0)
    assert got["loss"] == pytest.approx(0.0)


def test_daily_metrics_single_label_day_counts_for_loss_only():
    pred = np.array([1.0, 2.0, 3.0, 5.0], dtype=np.float32)
    label = np.array([1.0, 2.0, 4.0, np.nan], dtype=np.float32)
    got = daily_metrics(pred, label, np.array([0, 2]), np.array([2, 2]))
    assert got["ic"] == pytest.approx(1.0)
    assert got["loss"] == pytest.approx((0.0 + 1.0) / 2)


def test_daily_metrics_all_nan():
    got = daily_metrics(np.ones(4, np.float32), np.full(4, np.nan, np.float32), np.array([0, 2]), np.array([2, 2]))
    assert set(got) == {"ic", "rank_ic", "loss", "precision@30"} and all(np.isnan(v) for v in got.values())


# ----------------------------------------------------------------------------- metric names and scores
@pytest.mark.parametrize(
    "given, want",
    [
        ("", "loss"),
        (None, "loss"),
        ("mse", "loss"),
        ("loss", "loss"),
        ("ic", "ic"),
        ("IC", "ic"),
        ("rank_ic", "rank_ic"),
        ("precision@10", "precision@10"),
    ],
)
def test_normalize_metric(given, want):
    assert normalize_metric(given) == want


def test_normalize_metric_unknown():
    with pytest.raises(ValueError) as err:
        normalize_metric("sharpe")
    with pytest.raises(ValueError):
        normalize_metric("precision@0")
    msg = str(err.value)
    assert "sharpe" in msg
    for allowed in METRICS:
        assert allowed in msg


def test_precision_k_and_score_of():
    assert precision_k("precision@7") == 7 and precision_k("ic") == precision_k("loss") == 30
    metrics = {"ic": 0.1, "rank_ic": 0.2, "loss": 0.5, "precision@7": 0.6}
    assert score_of(metrics, "loss") == -0.5  # higher is better
    assert score_of(metrics, "ic") == 0.1 and score_of(metrics, "precision@7") == 0.6


# ----------------------------------------------------------------------------- masked_mse
def test_masked_mse_ignores_non_finite_labels():
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    label = torch.tensor([1.0, float("nan"), 5.0, float("inf")])
    loss = masked_mse(pred, label)
    assert loss.item() == pytest.approx(2.0)  # (0 + 4) / 2
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad.tolist() == pytest.approx([0.0, 0.0, -2.0, 0.0])


def test_masked_mse_weighted():
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0])
    label = torch.tensor([2.0, float("nan"), 5.0, 4.0])
    weight = torch.tensor([1.0, 100.0, 3.0, 4.0])
    # (1*1 + 4*3 + 0*4) / (1 + 3 + 4); the NaN row's weight does not count
    assert masked_mse(pred, label, weight).item() == pytest.approx(13.0 / 8.0)
    assert masked_mse(pred, label, torch.ones(4)).item() == pytest.approx(5.0 / 3.0)


def test_masked_mse_none_without_finite_label():
    assert masked_mse(torch.ones(3), torch.full((3,), float("nan"))) is None
    assert masked_mse(torch.ones(3), torch.full((3,), float("nan")), torch.ones(3)) is None
