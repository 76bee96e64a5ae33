"""The epoch loop and its pieces: daily metrics, masked loss, early stopping, Trainer.fit, daily batches."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from qlib_hist.concepts import LegacyConcepts
from qlib_hist.data import DataError, build_daily_batches
from qlib_hist.network import HISTModel
from qlib_hist.training import (
    METRICS,
    EarlyStopping,
    TrainConfig,
    Trainer,
    daily_metrics,
    masked_mse,
    normalize_metric,
)

D_FEAT, T = 6, 10
N_FEATURES = D_FEAT * T
CPU = torch.device("cpu")
LOG = logging.getLogger("test_training")


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
    want = _expected_metrics(pred.astype(np.float32).astype(np.float64), label.astype(np.float32).astype(np.float64),
                             starts, counts)
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


# ----------------------------------------------------------------------------- normalize_metric
@pytest.mark.parametrize("given, want", [("", "loss"), (None, "loss"), ("mse", "loss"), ("loss", "loss"),
                                         ("ic", "ic"), ("IC", "ic"), ("rank_ic", "rank_ic"),
                                         ("precision@10", "precision@10")])
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


# ----------------------------------------------------------------------------- EarlyStopping
def test_early_stopping_patience():
    net = torch.nn.Linear(2, 1)
    stop = EarlyStopping(patience=2)
    assert stop.update(0, 1.0, net) is False
    assert stop.update(1, 0.5, net) is False  # 1 bad epoch
    assert stop.update(2, 2.0, net) is False  # better: resets
    assert stop.bad_epochs == 0 and stop.best_epoch == 2 and stop.best_score == 2.0
    assert stop.update(3, 1.9, net) is False
    assert stop.update(4, 2.0, net) is True  # equal is not better: 2 bad epochs -> stop
    assert stop.best_epoch == 2


def test_early_stopping_patience_one_and_neg_inf():
    net = torch.nn.Linear(2, 1)
    stop = EarlyStopping(patience=1)
    assert stop.update(0, -np.inf, net) is True  # -inf never counts as an improvement
    assert stop.best_state is None
    stop = EarlyStopping(patience=1)
    assert stop.update(0, -5.0, net) is False
    assert stop.update(1, -6.0, net) is True


def test_early_stopping_best_state_is_a_copy():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    stop = EarlyStopping(patience=5)
    stop.update(0, 1.0, net)
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net.weight.add_(10.0)  # in place, as an optimizer step does
        net.bias.zero_()
    for k, v in saved.items():
        assert torch.equal(stop.best_state[k], v), k
    stop.update(1, 0.5, net)  # worse: the best state stays the epoch-0 weights
    assert torch.equal(stop.best_state["weight"], saved["weight"])
    stop.update(2, 3.0, net)
    assert torch.equal(stop.best_state["weight"], net.weight.detach())
    assert stop.best_state["weight"].data_ptr() != net.weight.data_ptr()


# ----------------------------------------------------------------------------- synthetic daily batches
INSTRUMENTS = [f"SH6{i:05d}" for i in range(24)]


def _frame(n_days: int, seed: int, start: str = "2020-01-01", n_stocks: int = 24, noise: float = 0.1) -> pd.DataFrame:
    """Alpha360-like frame: feature column f*T + t is field f at step t; the label is a function of the last step."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range(start, periods=n_days)
    index = pd.MultiIndex.from_product([dates, INSTRUMENTS[:n_stocks]], names=["datetime", "instrument"])
    x = rng.normal(size=(len(index), N_FEATURES)).astype(np.float32)
    last_f0, last_f1 = x[:, 0 * T + T - 1], x[:, 1 * T + T - 1]
    y = last_f0 - 0.5 * last_f1 + noise * rng.normal(size=len(index))
    columns = pd.MultiIndex.from_tuples([("feature", f"f{i}") for i in range(N_FEATURES)] + [("label", "LABEL0")])
    return pd.DataFrame(np.column_stack([x, y]), index=index, columns=columns)


@pytest.fixture(scope="module")
def concept_source(tmp_path_factory):
    d = tmp_path_factory.mktemp("concepts")
    rng = np.random.default_rng(0)
    matrix = (rng.random((20, 6)) < 0.3).astype(np.float32)
    np.save(d / "stock2concept.npy", matrix)
    # the last 4 instruments are unknown: they get no concept
    (d / "stock_index.json").write_text(json.dumps({inst: i for i, inst in enumerate(INSTRUMENTS[:20])}))
    return LegacyConcepts(d / "stock2concept.npy", d / "stock_index.json")


@pytest.fixture(scope="module")
def batches(concept_source):
    train = build_daily_batches(_frame(16, seed=1), concept_source, "train", D_FEAT, with_label=True)
    valid = build_daily_batches(_frame(6, seed=2, start="2021-01-01"), concept_source, "valid", D_FEAT, with_label=True)
    return train, valid


def _trainer(seed: int = 0, lr: float = 5e-3, metric: str = "loss", n_epochs: int = 6, early_stop: int = 50,
             train_seed=None) -> Trainer:
    torch.manual_seed(seed)
    net = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    cfg = TrainConfig(n_epochs=n_epochs, early_stop=early_stop, metric=metric, seed=seed if train_seed is None else train_seed)
    return Trainer(net, opt, cfg, CPU, LOG)


def test_batches_shape(batches, concept_source):
    train, _ = batches
    assert train.n_days == 16 and train.n_rows == 16 * 24
    assert train.features.shape == (16 * 24, N_FEATURES)
    assert train.order is None
    x, concepts, y, w, stock_w = train.day(3, CPU)
    assert x.shape == (24, N_FEATURES) and concepts.shape == (24, 6) and y.shape == (24,) and w is None and stock_w is None
    assert not concepts[20:].any()  # unknown stocks
    np.testing.assert_array_equal(concepts[:20].numpy(), concept_source.matrix)
    assert train.concepts.n_unknown == 16 * 4


def test_fit_learns(batches):
    train, valid = batches
    trainer = _trainer(metric="ic", n_epochs=8)
    before = trainer.evaluate(valid)
    evals = {}
    result = trainer.fit(train, valid, evals)
    assert len(evals["train"]) == len(evals["valid"]) == 8 == len(result.history)
    after = trainer.evaluate(valid)
    assert after["loss"] < 0.5 * before["loss"]
    assert after["ic"] > before["ic"] + 0.2 and after["ic"] > 0.6
    h = result.history
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert max(evals["valid"]) > evals["valid"][0]
    # the network holds the best epoch's weights
    assert result.best_score == pytest.approx(max(evals["valid"]))
    assert after["ic"] == pytest.approx(evals["valid"][result.best_epoch], rel=1e-5)


def test_fit_evals_result_loss_metric(batches):
    train, valid = batches
    trainer = _trainer(n_epochs=3)
    evals = {"stale": 1}
    result = trainer.fit(train, valid, evals)
    assert len(evals["train"]) == len(evals["valid"]) == 3
    assert all(np.isfinite(evals["valid"])) and all(v < 0 for v in evals["valid"])  # -loss
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    assert evals["valid"] == pytest.approx([-h["valid_loss"] for h in result.history])


def test_same_seed_same_weights(batches):
    train, valid = batches
    states = []
    for _ in range(2):
        t = _trainer(seed=7, n_epochs=2)
        t.fit(train, valid)
        states.append(t.network.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    # a different shuffle seed (same init) gives different weights: the check above can fail
    t = _trainer(seed=7, n_epochs=2, train_seed=8)
    t.fit(train, valid)
    assert any(not torch.equal(states[0][k], v) for k, v in t.network.state_dict().items())


def test_early_stop_stops(batches):
    train, valid = batches
    torch.manual_seed(0)
    net = HISTModel(d_feat=D_FEAT, hidden_size=8, num_layers=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)  # weights never change: valid never improves after epoch 0
    evals = {}
    result = Trainer(net, opt, TrainConfig(n_epochs=50, early_stop=2, metric="loss", seed=0), CPU, LOG).fit(
        train, valid, evals
    )
    assert len(evals["valid"]) == 3
    assert result.best_epoch == 0


def test_fit_restores_best_weights(batches):
    train, valid = batches
    trainer = _trainer(lr=0.2, n_epochs=5)  # a large step: later epochs are likely worse than the best
    evals = {}
    result = trainer.fit(train, valid, evals)
    assert trainer.evaluate(valid)["loss"] == pytest.approx(-evals["valid"][result.best_epoch], rel=1e-5)


def test_train_epoch_skips_all_nan_day(concept_source):
    df = _frame(3, seed=4)
    df.loc[df.index.get_level_values(0) == df.index.get_level_values(0)[0], ("label", "LABEL0")] = np.nan
    train = build_daily_batches(df, concept_source, "train", D_FEAT, with_label=True)
    trainer = _trainer(n_epochs=1)
    preds = trainer.train_epoch(train)
    assert np.isnan(preds[train.day_slice(0)]).all()
    assert np.isfinite(preds[train.day_slice(1)]).all() and np.isfinite(preds[train.day_slice(2)]).all()
    for p in trainer.network.parameters():
        assert torch.isfinite(p).all()


# ----------------------------------------------------------------------------- build_daily_batches errors
def test_empty_frame(concept_source):
    df = _frame(2, seed=0).iloc[:0]
    with pytest.raises(DataError, match="empty"):
        build_daily_batches(df, concept_source, "valid", D_FEAT, with_label=True)


def test_feature_count_not_multiple(concept_source):
    df = _frame(2, seed=0).drop(columns=[("feature", "f59")])
    with pytest.raises(DataError) as err:
        build_daily_batches(df, concept_source, "train", D_FEAT, with_label=True)
    assert "59" in str(err.value) and "d_feat=6" in str(err.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features(concept_source, bad):
    df = _frame(2, seed=0)
    first_day = df.index.get_level_values(0)[0]
    df.loc[(first_day, INSTRUMENTS[5]), ("feature", "f7")] = bad
    df.loc[(first_day, INSTRUMENTS[5]), ("feature", "f9")] = bad
    df.iloc[30, 3] = bad  # second day, another row
    with pytest.raises(DataError) as err:
        build_daily_batches(df, concept_source, "train", D_FEAT, with_label=True)
    msg = str(err.value)
    assert "3 NaN/inf" in msg and "2 rows" in msg
    assert INSTRUMENTS[5] in msg and "f7" in msg  # where the first one is
    assert "train" in msg


def test_nan_labels_are_allowed(concept_source):
    df = _frame(2, seed=0)
    df.iloc[3, -1] = np.nan
    b = build_daily_batches(df, concept_source, "train", D_FEAT, with_label=True)
    assert torch.isnan(b.labels[3]) and torch.isfinite(b.labels[torch.arange(len(b.labels)) != 3]).all()


def test_two_label_columns(concept_source):
    df = _frame(2, seed=0)
    df[("label", "LABEL1")] = 0.0
    with pytest.raises(DataError) as err:
        build_daily_batches(df, concept_source, "train", D_FEAT, with_label=True)
    assert "LABEL0" in str(err.value) and "LABEL1" in str(err.value)
    # without labels the extra column does not matter
    build_daily_batches(df, concept_source, "test", D_FEAT, with_label=False)


def test_unsorted_rows_map_back(concept_source):
    df = _frame(5, seed=3)
    perm = np.random.default_rng(0).permutation(len(df))
    shuffled = df.iloc[perm]
    b = build_daily_batches(shuffled, concept_source, "test", D_FEAT, with_label=True)
    assert b.order is not None
    dates = b.index.get_level_values(0).values
    assert (dates[1:] >= dates[:-1]).all()
    assert b.n_days == 5 and b.day_count.tolist() == [24] * 5
    # features / labels / concepts follow their rows through the sort
    sorted_frame = shuffled.iloc[b.order]
    np.testing.assert_array_equal(b.features.numpy(), sorted_frame["feature"].to_numpy(np.float32))
    np.testing.assert_array_equal(b.labels.numpy(), sorted_frame[("label", "LABEL0")].to_numpy(np.float32))
    rows = b.concept_matrix[b.concept_rows].numpy()
    for i, inst in enumerate(b.index.get_level_values(1)):
        known = concept_source.stock_index.get(inst)
        want = concept_source.matrix[known] if known is not None else np.zeros(6, np.float32)
        np.testing.assert_array_equal(rows[i], want)
    # per-row values in day order come back in the input's row order
    back = b.to_dataset_order(b.features[:, 0].numpy())
    np.testing.assert_array_equal(back, shuffled[("feature", "f0")].to_numpy(np.float32))
    back_labels = b.to_dataset_order(b.labels.numpy())
    np.testing.assert_array_equal(back_labels, shuffled[("label", "LABEL0")].to_numpy(np.float32))
    # the index reordering HIST.predict uses gives the input's index
    assert b.index[np.argsort(b.order)].equals(shuffled.index)


def test_sorted_rows_identity_order(concept_source):
    df = _frame(2, seed=0)
    b = build_daily_batches(df, concept_source, "test", D_FEAT, with_label=False)
    assert b.order is None and b.labels is None
    values = np.arange(b.n_rows, dtype=np.float32)
    np.testing.assert_array_equal(b.to_dataset_order(values), values)
