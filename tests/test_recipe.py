"""Issue 28's recipe options: the module switches, the ``ic`` / ``mse+ic`` losses, ``weight_decay``, ``keep_start``,
and the settings that a built model must refuse (or take at the next ``fit``)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from qlib_hist.metrics import DailyLoss, daily_metrics, masked_mse, masked_pearson
from qlib_hist.network import HISTModel
from qlib_hist.settings import SettingsError, TrainSettings
from qlib_hist.training import Trainer, make_optimizer

from conftest import small_hist

D_FEAT = 6
SWITCHES = ("predefined_concepts", "hidden_concepts", "individual")
#: the parameters each module owns (a switched-off module's get no gradient)
MODULE_PARAMETERS = {
    "predefined_concepts": ("fc_es.", "fc_es_back.", "fc_es_fore."),
    "hidden_concepts": ("fc_is.", "fc_is_back.", "fc_is_fore."),
    "individual": ("fc_indi.",),
}


def _inputs(n: int = 40, n_concepts: int = 8, t: int = 10, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D_FEAT * t, generator=g)
    concepts = (torch.rand(n, n_concepts, generator=g) < 0.3).float()
    return x, concepts


def _net(**switches) -> HISTModel:
    torch.manual_seed(0)
    return HISTModel(d_feat=D_FEAT, hidden_size=8, num_layers=1, **switches)


# ----------------------------------------------------------------------------- module switches
@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_changes_the_output_and_zeroes_its_part(switch):
    x, c = _inputs()
    full, off = _net().eval(), _net(**{switch: False}).eval()
    off.load_state_dict(full.state_dict())  # same weights: only the switch differs
    with torch.no_grad():
        assert not torch.allclose(full(x, c), off(x, c), atol=1e-6)
        part = {"predefined_concepts": "concept", "hidden_concepts": "hidden_concept", "individual": "individual"}
        parts = off.parts(x, c)
        assert torch.count_nonzero(getattr(parts, part[switch])) == 0
        # the output is still fc_out of the parts' sum (explain's decomposition holds)
        total = parts.concept + parts.hidden_concept + parts.individual
        torch.testing.assert_close(off.fc_out(total).squeeze(-1), off(x, c))


@pytest.mark.parametrize("switch", SWITCHES)
def test_a_switched_off_module_gets_no_gradient(switch):
    x, c = _inputs()
    net = _net(**{switch: False}).train()
    net(x, c).pow(2).sum().backward()
    for name, p in net.named_parameters():
        owned = name.startswith(MODULE_PARAMETERS[switch])
        if owned:
            assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
    assert net.rnn.weight_ih_l0.grad is not None and torch.count_nonzero(net.rnn.weight_ih_l0.grad) > 0


def test_predefined_off_removes_nothing_from_the_residual():
    """Without predefined concepts the hidden module sees the encoder state itself, and the individual branch the
    state minus the hidden backcast only."""
    x, c = _inputs()
    net = _net(predefined_concepts=False).eval()
    with torch.no_grad():
        state, _ = net.encode(x)
        hs = net.hidden_concepts(state)
        want = torch.nn.functional.leaky_relu(net.fc_indi(state - hs.backcast))
        torch.testing.assert_close(net.parts(x, c).individual, want)
        # and the concepts play no part: any concept matrix gives the same output
        torch.testing.assert_close(net(x, c), net(x, torch.zeros_like(c)))


def test_all_switches_off_is_the_base_rnn_with_its_linear_head():
    """qlib's LSTMModel layout: fc_out(last RNN state); a qlib pretrained file (rnn.*, fc_out.*) is all of it."""
    x, c = _inputs()
    net = _net(predefined_concepts=False, hidden_concepts=False, individual=False).eval()
    with torch.no_grad():
        state, _ = net.encode(x)
        torch.testing.assert_close(net(x, c), net.fc_out(state).squeeze(-1))


def test_default_switches_keep_qlibs_network_bit_for_bit():
    x, c = _inputs()
    torch.manual_seed(0)
    explicit = HISTModel(d_feat=D_FEAT, hidden_size=8, num_layers=1, predefined_concepts=True, hidden_concepts=True)
    default = _net()
    assert torch.equal(explicit(x, c), default(x, c))


def test_a_day_of_no_stocks_is_refused_with_a_message():
    net = _net()
    with pytest.raises(ValueError, match="0 stocks"):
        net(torch.zeros(0, D_FEAT * 10), torch.zeros(0, 3))


# ----------------------------------------------------------------------------- losses
def test_masked_pearson_is_the_ic_metric():
    g = np.random.default_rng(0)
    pred, label = g.normal(size=30), g.normal(size=30)
    label[[3, 7]] = np.nan
    rho = masked_pearson(torch.tensor(pred), torch.tensor(label))
    want = daily_metrics(pred, label, np.array([0]), np.array([30]))["ic"]
    assert rho is not None and float(rho) == pytest.approx(want, rel=1e-9)


def test_weighted_pearson_with_equal_weights_is_the_unweighted():
    pred, label = torch.randn(20, dtype=torch.float64), torch.randn(20, dtype=torch.float64)
    a, b = masked_pearson(pred, label), masked_pearson(pred, label, torch.full((20,), 3.0, dtype=torch.float64))
    assert a is not None and b is not None and float(a) == pytest.approx(float(b), rel=1e-12)


@pytest.mark.parametrize("name", ["ic", "mse+ic"])
def test_loss_gradients_match_finite_differences(name):
    torch.manual_seed(0)
    pred = torch.randn(7, dtype=torch.float64, requires_grad=True)
    label = torch.randn(7, dtype=torch.float64)
    label[2] = float("nan")
    weight = torch.rand(7, dtype=torch.float64) + 0.5
    loss = DailyLoss(name, ic_weight=0.7)
    assert torch.autograd.gradcheck(lambda p: loss(p, label, None), (pred,))
    assert torch.autograd.gradcheck(lambda p: loss(p, label, weight), (pred,))


def test_ic_loss_is_minus_the_correlation_and_mse_ic_adds_it():
    pred, label = torch.randn(12), torch.randn(12)
    rho = masked_pearson(pred, label)
    assert rho is not None
    assert float(DailyLoss("ic")(pred, label)) == pytest.approx(-float(rho))
    mse = masked_mse(pred, label)
    assert mse is not None
    got = DailyLoss("mse+ic", ic_weight=2.0)(pred, label)
    assert got is not None and float(got) == pytest.approx(float(mse) - 2.0 * float(rho), rel=1e-6)


@pytest.mark.parametrize("label", [torch.full((5,), 0.3), torch.tensor([1.0, float("nan"), float("nan")])])
def test_a_day_with_no_correlation_is_skipped_and_counted_never_nan(label):
    pred = torch.randn(len(label), requires_grad=True)
    ic = DailyLoss("ic")
    assert ic(pred, label) is None and ic.skipped_ic_days == 1
    both = DailyLoss("mse+ic")
    loss = both(pred, label)
    assert loss is not None and torch.isfinite(loss) and both.skipped_ic_days == 1
    assert float(loss.detach()) == pytest.approx(float(masked_mse(pred.detach(), label)))  # the mse alone


def test_constant_predictions_give_a_finite_loss_and_gradient():
    pred = torch.full((6,), 0.5, requires_grad=True)
    loss = DailyLoss("ic")(pred, torch.randn(6))
    assert loss is not None and float(loss) == 0.0
    loss.backward()
    assert pred.grad is not None and bool(torch.isfinite(pred.grad).all())


def test_trainer_logs_the_skipped_days_per_epoch(synthetic_batches, caplog):
    train, valid = synthetic_batches
    labels = train.labels[train.day_slice(0)].clone()
    train.labels[train.day_slice(0)] = 0.25  # one day of constant labels
    try:
        settings = TrainSettings(n_epochs=1, early_stop=5, lr=1e-3, metric="ic", seed=0, loss="ic")
        net = HISTModel(d_feat=6, hidden_size=8, num_layers=1)
        trainer = Trainer(net, make_optimizer("adam", net, 1e-3), settings, torch.device("cpu"))
        with caplog.at_level(logging.WARNING, logger="qlib_hist"):
            trainer.fit(train, valid)
    finally:
        train.labels[train.day_slice(0)] = labels  # the fixture is session-wide: give the day its labels back
    assert "no correlation on 1 of 16 days" in caplog.text and "skipped" in caplog.text


def test_unknown_loss_is_refused_with_the_choices():
    with pytest.raises(SettingsError, match=r"loss must be one of \['mse', 'ic', 'mse\+ic'\]"):
        TrainSettings(loss="mae")


# ----------------------------------------------------------------------------- weight decay
def test_weight_decay_makes_adam_decoupled_and_zero_keeps_qlibs():
    net = torch.nn.Linear(3, 1)
    assert type(make_optimizer("adam", net, 1e-3)) is torch.optim.Adam
    adamw = make_optimizer("adam", net, 1e-3, weight_decay=0.01)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.01
    sgd = make_optimizer("gd", net, 1e-3, weight_decay=0.01)
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["weight_decay"] == 0.01


def test_weight_decay_shrinks_weights_that_get_no_gradient():
    net = torch.nn.Linear(3, 1)
    before = net.weight.detach().clone()
    opt = make_optimizer("adam", net, 0.1, weight_decay=0.5)
    net.weight.grad, net.bias.grad = torch.zeros_like(net.weight), torch.zeros_like(net.bias)
    opt.step()
    torch.testing.assert_close(net.weight.detach(), before * (1 - 0.1 * 0.5))


# ----------------------------------------------------------------------------- HIST: settings, optimizer, keep_start
def test_network_settings_are_refused_on_a_built_model(demo):
    model = small_hist(demo)
    for name, value in (("hidden_size", 128), ("base_model", "LSTM"), ("individual", False)):
        with pytest.raises(SettingsError, match=f"{name} defines the network.*make a new model"):
            setattr(model, name, value)
    assert model.hidden_size == 16 and model.HIST_model.rnn.hidden_size == 16


def test_lr_and_weight_decay_set_before_fit_reach_the_optimizer(demo, demo_dataset):
    model = small_hist(demo, n_epochs=1)
    model.lr, model.weight_decay = 0.0123, 0.05
    model.fit(demo_dataset)
    group = model.train_optimizer.param_groups[0]
    assert isinstance(model.train_optimizer, torch.optim.AdamW)
    assert group["lr"] == 0.0123 and group["weight_decay"] == 0.05


def test_keep_start_keeps_starting_weights_that_no_epoch_beats(demo, demo_dataset):
    """lr 0 leaves the weights as they are, so the start ties every epoch and stays as the best (epoch -1)."""
    model = small_hist(demo, n_epochs=2, lr=0.0, keep_start=True)
    start = {k: v.clone() for k, v in model.HIST_model.state_dict().items()}
    model.fit(demo_dataset)
    assert model.best_epoch == -1
    assert all(torch.equal(start[k], v) for k, v in model.HIST_model.state_dict().items())
    plain = small_hist(demo, n_epochs=2, lr=0.0)
    plain.fit(demo_dataset)
    assert plain.best_epoch == 0


def test_zero_epochs_scores_the_starting_weights_as_they_are(demo, demo_dataset):
    """The "pretrained file as it is" control: n_epochs 0 trains nothing and predicts with the starting weights."""
    model = small_hist(demo, n_epochs=0, predefined_concepts=False, hidden_concepts=False, individual=False)
    start = {k: v.clone() for k, v in model.HIST_model.state_dict().items()}
    model.fit(demo_dataset)
    assert model.fitted and all(torch.equal(start[k], v) for k, v in model.HIST_model.state_dict().items())
    pred = model.predict(demo_dataset, "test")
    assert np.isfinite(pred.to_numpy()).all()


@pytest.mark.parametrize("loss", ["ic", "mse+ic"])
def test_hist_trains_with_each_loss_and_same_seed_same_predictions(demo, demo_dataset, loss):
    a = small_hist(demo, loss=loss, n_epochs=1)
    a.fit(demo_dataset)
    b = small_hist(demo, loss=loss, n_epochs=1)
    b.fit(demo_dataset)
    mse = small_hist(demo, n_epochs=1)
    mse.fit(demo_dataset)
    pa, pb, pm = (m.predict(demo_dataset, "test").to_numpy() for m in (a, b, mse))
    np.testing.assert_array_equal(pa, pb)
    assert not np.allclose(pa, pm)
