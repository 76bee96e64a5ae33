"""The epoch loop (``qlib_hist.training``): its parts (early stopping, weight averaging), Trainer.fit on synthetic
daily batches, smooth_steps, parallel prediction, and the precision@k metric through HIST."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from qlib_hist.batches import build_daily_batches
from qlib_hist.callbacks import Callback
from qlib_hist.network import HISTModel
from qlib_hist.settings import TrainSettings
from qlib_hist.training import (
    EarlyStopping,
    History,
    Trainer,
    WeightAveraging,
    average_states,
    copy_state,
    predict_days,
)

from conftest import D_FEAT, legacy_concepts, small_hist, synthetic_frame

CPU = torch.device("cpu")
LOG = logging.getLogger("test_training")


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


def test_early_stopping_state_round_trip():
    net = torch.nn.Linear(2, 1)
    stop = EarlyStopping(patience=3)
    stop.update(0, 1.0, net)
    stop.update(1, 0.5, net)
    again = EarlyStopping(patience=3)
    again.load_state_dict(stop.state_dict())
    assert (again.best_score, again.best_epoch, again.bad_epochs) == (1.0, 0, 1)
    assert again.update(2, 0.4, net) is False and again.update(3, 0.3, net) is True  # the count went on


# ----------------------------------------------------------------------------- WeightAveraging, History
def test_weight_averaging_applies_the_mean_and_restores():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    averaging = WeightAveraging(window=2)
    first = copy_state(net)
    with averaging.applied(net):
        assert torch.equal(net.weight, first["weight"])  # one state: its own mean
    with torch.no_grad():
        net.weight.add_(2.0)
    second = copy_state(net)
    with averaging.applied(net):
        torch.testing.assert_close(net.weight.detach(), (first["weight"] + second["weight"]) / 2)
    assert torch.equal(net.weight, second["weight"])  # training goes on from the raw weights
    assert len(averaging.recent) == 2
    assert average_states([first, second])["bias"].shape == first["bias"].shape

    off = WeightAveraging(window=1)
    with off.applied(net):
        assert torch.equal(net.weight, second["weight"])
    assert not off.active and len(off.recent) == 0


def test_history_columns():
    history = History()
    history.extend([{"epoch": 0, "valid_score": 0.1}, {"epoch": 1, "valid_score": 0.3}])
    assert history.column("valid_score") == [0.1, 0.3]
    other = History()
    other.load_state_dict(history.state_dict())
    assert other == history


# ----------------------------------------------------------------------------- Trainer on synthetic batches
class RecordStates(Callback):
    """After each epoch (the callbacks run once the epoch's scoring swapped its weights back): the raw weights."""

    def __init__(self) -> None:
        self.states: list = []

    def on_epoch_end(self, trainer, record) -> None:
        self.states.append(copy_state(trainer.network))


def _trainer(
    seed: int = 0,
    lr: float = 5e-3,
    metric: str = "loss",
    n_epochs: int = 6,
    early_stop: int = 50,
    train_seed=None,
    smooth_steps: int = 1,
    callbacks=(),
) -> Trainer:
    torch.manual_seed(seed)
    net = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    settings = TrainSettings(
        n_epochs=n_epochs,
        early_stop=early_stop,
        metric=metric,
        smooth_steps=smooth_steps,
        seed=seed if train_seed is None else train_seed,
    )
    return Trainer(net, opt, settings, CPU, LOG, callbacks)


def test_fit_learns(synthetic_batches):
    train, valid = synthetic_batches
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


def test_fit_evals_result_loss_metric(synthetic_batches):
    train, valid = synthetic_batches
    trainer = _trainer(n_epochs=3)
    evals = {"stale": 1}
    result = trainer.fit(train, valid, evals)
    assert len(evals["train"]) == len(evals["valid"]) == 3
    assert all(np.isfinite(evals["valid"])) and all(v < 0 for v in evals["valid"])  # -loss
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    assert evals["valid"] == pytest.approx([-h["valid_loss"] for h in result.history])


def test_same_seed_same_weights(synthetic_batches):
    train, valid = synthetic_batches
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


def test_early_stop_stops(synthetic_batches):
    train, valid = synthetic_batches
    torch.manual_seed(0)
    net = HISTModel(d_feat=D_FEAT, hidden_size=8, num_layers=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)  # weights never change: valid never improves after epoch 0
    evals = {}
    result = Trainer(net, opt, TrainSettings(n_epochs=50, early_stop=2, metric="loss", seed=0), CPU, LOG).fit(
        train, valid, evals
    )
    assert len(evals["valid"]) == 3
    assert result.best_epoch == 0


def test_fit_restores_best_weights(synthetic_batches):
    train, valid = synthetic_batches
    trainer = _trainer(lr=0.2, n_epochs=5)  # a large step: later epochs are likely worse than the best
    evals = {}
    result = trainer.fit(train, valid, evals)
    assert trainer.evaluate(valid)["loss"] == pytest.approx(-evals["valid"][result.best_epoch], rel=1e-5)


def test_callbacks_see_every_epoch_in_order(synthetic_batches):
    train, valid = synthetic_batches
    calls = []

    class Spy(Callback):
        def on_fit_begin(self, trainer):
            calls.append(("begin", trainer.next_epoch))

        def on_epoch_end(self, trainer, record):
            calls.append(("epoch", record["epoch"], trainer.history[-1] is record))

        def on_fit_end(self, trainer, result):
            calls.append(("end", result.best_epoch == trainer.stopper.best_epoch))

    _trainer(n_epochs=2, callbacks=[Spy()]).fit(train, valid)
    assert calls == [("begin", 0), ("epoch", 0, True), ("epoch", 1, True), ("end", True)]


def test_train_epoch_skips_all_nan_day(concept_source):
    df = synthetic_frame(3, seed=4)
    df.loc[df.index.get_level_values(0) == df.index.get_level_values(0)[0], ("label", "LABEL0")] = np.nan
    train = build_daily_batches(df, concept_source, "train", D_FEAT, with_label=True)
    trainer = _trainer(n_epochs=1)
    preds = trainer.train_epoch(train)
    assert np.isnan(preds[train.day_slice(0)]).all()
    assert np.isfinite(preds[train.day_slice(1)]).all() and np.isfinite(preds[train.day_slice(2)]).all()
    for p in trainer.network.parameters():
        assert torch.isfinite(p).all()
    assert trainer.train_step(train.day(0, CPU)) is None  # the step itself: no label, no update


def test_predict_days_two_threads_equal_one(synthetic_batches):
    """Days predicted in parallel (one per thread) give exactly the sequential predictions."""
    train, _ = synthetic_batches
    torch.manual_seed(0)
    net = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = predict_days(net, train, CPU)
        torch.set_num_threads(2)
        two = predict_days(net, train, CPU)
    finally:
        torch.set_num_threads(before)
    assert np.isfinite(one).all() and one.std() > 0
    np.testing.assert_array_equal(two, one)


# ----------------------------------------------------------------------------- smooth_steps
@pytest.fixture(scope="module")
def tiny_batches(tmp_path_factory):
    """12 train and 5 valid days of 20 stocks, all with concepts (5 of them)."""
    source = legacy_concepts(tmp_path_factory.mktemp("tiny_concepts"), n_concepts=5)
    train = build_daily_batches(synthetic_frame(12, 1, "2020-01-01", n_stocks=20), source, "train", D_FEAT, True)
    valid = build_daily_batches(synthetic_frame(5, 2, "2021-01-01", n_stocks=20), source, "valid", D_FEAT, True)
    return train, valid


def test_smooth_steps_keeps_the_average_of_the_last_epochs(tiny_batches):
    train, valid = tiny_batches
    recorder = RecordStates()
    smooth = _trainer(smooth_steps=2, n_epochs=2, callbacks=[recorder])
    evals = {}
    result = smooth.fit(train, valid, evals)
    raw = recorder.states
    assert len(raw) == 2 and len(evals["valid"]) == 2
    assert result.best_epoch == 1, "setup: the second (averaged) epoch should be the best"
    expected = {k: (raw[0][k] + raw[1][k]) / 2 for k in raw[0]}
    for k, v in smooth.network.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-7, msg=k)
    assert any(not torch.equal(raw[1][k], expected[k]) for k in expected)
    # the valid score of epoch 1 is the averaged weights' score; epoch 0's is the raw weights' own
    assert smooth.evaluate(valid)["loss"] == pytest.approx(-evals["valid"][1], rel=1e-6)

    # training continued from the raw weights: the raw trajectory is that of smooth_steps=1
    raw_smooth = raw
    recorder = RecordStates()
    plain = _trainer(smooth_steps=1, n_epochs=2, callbacks=[recorder])
    plain_evals = {}
    plain.fit(train, valid, plain_evals)
    raw = recorder.states
    for epoch in range(2):
        for k in raw[epoch]:
            assert torch.equal(raw[epoch][k], raw_smooth[epoch][k]), (epoch, k)
    assert plain_evals["valid"][0] == pytest.approx(evals["valid"][0], rel=1e-6)
    assert plain_evals["valid"][1] != pytest.approx(evals["valid"][1], rel=1e-6)


def test_smooth_steps_window_slides(tiny_batches, monkeypatch):
    """With 2 steps over 3 epochs, epoch 2 is scored with the mean of epochs 1 and 2 (not 0..2)."""
    train, valid = tiny_batches
    recorder = RecordStates()
    scored = []
    original_evaluate = Trainer.evaluate

    def evaluate(self, batches, preds=None):
        if batches is valid:
            scored.append(copy_state(self.network))
        return original_evaluate(self, batches, preds)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    _trainer(smooth_steps=2, n_epochs=3, callbacks=[recorder]).fit(train, valid)
    raw = recorder.states
    assert len(scored) == 3
    for k in raw[0]:
        torch.testing.assert_close(scored[0][k], raw[0][k], rtol=0, atol=0)
        torch.testing.assert_close(scored[2][k], (raw[1][k] + raw[2][k]) / 2, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- precision@k, through HIST
def test_precision_at_k_metric(demo, short_dataset):
    from qlib.data.dataset.handler import DataHandlerLP

    model = small_hist(demo, metric="precision@10")
    evals = {}
    model.fit(short_dataset, evals_result=evals)
    assert len(evals["valid"]) == 1
    assert all(0.0 <= v <= 1.0 for v in evals["valid"] + evals["train"])
    assert "valid_precision@10" in model.history[0]
    assert model.history[0]["valid_precision@10"] == evals["valid"][0]
    # recompute it: share of each day's 10 highest predictions with a positive label, averaged over days
    pred = model.predict(short_dataset, "valid")
    # the labels HIST trains and scores on: the learn data (CSRankNorm'ed, so "positive" = above the median)
    label = short_dataset.prepare("valid", col_set="label", data_key=DataHandlerLP.DK_L).iloc[:, 0]
    frame = pd.DataFrame({"p": pred, "y": label}).dropna()
    daily = frame.groupby(level=0).apply(lambda d: (d.nlargest(10, "p")["y"] > 0).mean())
    assert evals["valid"][0] == pytest.approx(daily.mean(), abs=1e-9)
