"""Training options that change the loop's arithmetic, each checked against a computation by hand on a tiny batch:
``ic_weight`` (the IC term of ``loss: mse+ic``), ``optimizer: gd`` (plain SGD) and ``eval_train`` (train scores from
a separate eval pass)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from qlib_hist.network import HISTModel
from qlib_hist.settings import TrainSettings
from qlib_hist.training import CLIP_VALUE, Trainer, copy_state, make_optimizer

from conftest import D_FEAT, small_hist

CPU = torch.device("cpu")
LOG = logging.getLogger("test_training_options")
LR = 0.05


def _net(seed: int = 0, **options) -> HISTModel:
    torch.manual_seed(seed)
    return HISTModel(**{"d_feat": D_FEAT, "hidden_size": 8, "num_layers": 1, **options})


def _pearson(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The textbook Pearson correlation (every label finite here)."""
    dp, dy = p - p.mean(), y - y.mean()
    return (dp * dy).sum() / torch.sqrt((dp * dp).sum() * (dy * dy).sum())


def _mse(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((p - y) ** 2).mean()


def _sgd_by_hand(net: HISTModel, day, loss_of, lr: float):
    """(loss, weights after one plain SGD step on ``loss_of(pred, label)``), each gradient element clipped to
    ``[-3, 3]`` as qlib does (parameters the day does not reach keep their value); ``net`` itself is left alone."""
    clone = copy.deepcopy(net)
    clone.train()
    loss = loss_of(clone.forward_day(day), day.label)
    loss.backward()
    with torch.no_grad():
        after = {
            n: p.clone() if p.grad is None else p - lr * p.grad.clamp(-CLIP_VALUE, CLIP_VALUE)
            for n, p in clone.named_parameters()
        }
    return loss.detach(), after


def _assert_weights(net: HISTModel, expected: dict) -> None:
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


# ----------------------------------------------------------------------------- ic_weight
@pytest.mark.parametrize("padded", [False, True], ids=["eager", "padded"])  # padded: the static (cuda_graphs) step
def test_ic_weight_weighs_the_ic_term_of_mse_plus_ic(synthetic_batches, padded):
    """One step of ``loss: mse+ic`` at two ``ic_weight`` values: each loss is ``mse - ic_weight * ic`` of the day,
    and each update the SGD step on that loss's gradient."""
    train, _ = synthetic_batches
    day = train.day(0, CPU)
    losses, updates = {}, {}
    for ic_weight in (0.0, 2.5):
        net = _net()
        settings = TrainSettings(loss="mse+ic", ic_weight=ic_weight, cuda_graphs=padded)
        trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=LR), settings, CPU, LOG)
        want_loss, want = _sgd_by_hand(net, day, lambda p, y, w=ic_weight: _mse(p, y) - w * _pearson(p, y), LR)
        trainer.train_step(day)
        ((*_, loss),) = trainer.unchecked  # the step's loss, not yet read back
        torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
        _assert_weights(net, want)
        losses[ic_weight], updates[ic_weight] = float(loss), copy_state(net)
    # the two differ by exactly the weighted IC term: 2.5 * ic of the (same) starting predictions
    with torch.no_grad():
        start = _net().train()
        ic = float(_pearson(start.forward_day(day), day.label))
    assert abs(ic) > 0.05, "setup: the IC term must be visible"
    assert losses[2.5] - losses[0.0] == pytest.approx(-2.5 * ic, rel=1e-4)
    assert any(not torch.allclose(updates[0.0][k], updates[2.5][k], rtol=1e-4) for k in updates[0.0])


# ----------------------------------------------------------------------------- optimizer: gd
def test_gd_steps_are_plain_sgd_steps(synthetic_batches):
    """``optimizer: gd`` is SGD without momentum: every step moves the weights by ``-lr * clip(grad)`` (Adam's first
    step would move each weight by about ``lr``, whatever its gradient)."""
    train, _ = synthetic_batches
    net = _net()
    optimizer = make_optimizer("GD", net, LR)
    trainer = Trainer(net, optimizer, TrainSettings(optimizer="gd", lr=LR), CPU, LOG)
    start = copy_state(net)
    for d in range(3):
        day = train.day(d, CPU)
        _, want = _sgd_by_hand(net, day, _mse, LR)
        trainer.train_step(day)
        _assert_weights(net, want)
    assert any(not torch.equal(start[k], v) for k, v in copy_state(net).items())


def test_hist_fit_with_gd_trains_with_sgd(demo, short_dataset, monkeypatch):
    """Through ``HIST.fit``: ``optimizer="gd"`` reaches the trainer; SGD (not Adam) steps once per train day and
    moves the weights."""
    steps = {"SGD": 0, "Adam": 0}
    for cls in (torch.optim.SGD, torch.optim.Adam):
        original = cls.step

        def counted(self, *args, _original=original, _name=cls.__name__, **kwargs):
            steps[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "step", counted)
    model = small_hist(demo, optimizer="gd", lr=0.01)
    start = copy_state(model.HIST_model)
    model.fit(short_dataset)
    assert type(model.train_optimizer) is torch.optim.SGD and model.train_optimizer.defaults["lr"] == 0.01
    n_days = short_dataset.prepare("train", col_set="label").index.get_level_values(0).nunique()
    assert steps == {"SGD": n_days, "Adam": 0}
    assert any(not torch.equal(start[k], v) for k, v in copy_state(model.HIST_model).items())


# ----------------------------------------------------------------------------- eval_train
@pytest.mark.parametrize("eval_train", [True, False])
def test_eval_train_scores_train_with_a_separate_eval_pass(synthetic_batches, monkeypatch, eval_train):
    """With ``eval_train`` the epoch's train figures are those of an eval-mode pass over train after the epoch
    (no dropout, the final weights); without it they come from the epoch's own train-mode predictions."""
    train, valid = synthetic_batches
    passes = []  # the segments predicted in eval mode, in order
    original = Trainer.predict
    names = {id(train): "train", id(valid): "valid"}
    monkeypatch.setattr(Trainer, "predict", lambda self, b: passes.append(names[id(b)]) or original(self, b))
    net = _net(seed=1, num_layers=2, dropout=0.5)
    settings = TrainSettings(n_epochs=1, metric="loss", seed=0, eval_train=eval_train)
    trainer = Trainer(net, torch.optim.Adam(net.parameters(), lr=5e-3), settings, CPU, LOG)
    record = trainer.fit(train, valid).history[0]
    assert passes == (["train", "valid"] if eval_train else ["valid"])
    eval_pass = trainer.evaluate(train)  # the one epoch's weights (kept as the best), in eval mode
    if eval_train:
        assert record["train_loss"] == pytest.approx(eval_pass["loss"], rel=1e-6)
        assert record["train_ic"] == pytest.approx(eval_pass["ic"], rel=1e-6)
    else:
        assert record["train_loss"] != pytest.approx(eval_pass["loss"], rel=1e-3)
