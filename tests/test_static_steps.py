"""Issue 29's GPU paths, checked on the CPU where they can be: padded days (static shapes) against unpadded ones,
the deferred non-finite check, segments resident on the device, and the refusals of bf16 / cuda_graphs where they
cannot run. The captured CUDA graphs and bf16 on a GPU are checked where CUDA is present (marked ``gpu``)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from qlib_hist.batches import Day
from qlib_hist.metrics import DailyLoss
from qlib_hist.network import HISTModel
from qlib_hist.settings import SettingsError, TrainSettings
from qlib_hist.static_steps import BUCKET, StaticSteps, bucket_size, pad_day
from qlib_hist.training import CLIP_VALUE, Trainer, TrainingError, make_optimizer

from conftest import small_hist

CPU = torch.device("cpu")
D_FEAT, T = 6, 10
NETWORKS = {
    "qlib": {},
    "refine_topk": {"concept_refine": True, "hidden_topk": 2},
    "no_predefined": {"predefined_concepts": False},
    "base_rnn": {"predefined_concepts": False, "hidden_concepts": False, "individual": False},
    "lstm_temporal": {"base_model": "LSTM", "temporal_attention": True},
}


def _day(n: int = 37, n_concepts: int = 9, seed: int = 0, weights: bool = False, nan_labels: int = 3) -> Day:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D_FEAT * T, generator=g)
    concepts = (torch.rand(n, n_concepts, generator=g) < 0.3).float()
    concepts[:, -1] = 0.0  # a concept without members that day
    label = torch.randn(n, generator=g)
    label[:nan_labels] = float("nan")
    member = torch.rand(n, generator=g) + 0.5 if weights else None
    sample = torch.rand(n, generator=g) + 0.5 if weights else None
    return Day(x, concepts, label, sample, member)


def _net(**options) -> HISTModel:
    torch.manual_seed(0)
    return HISTModel(d_feat=D_FEAT, hidden_size=8, num_layers=1, **options)


def test_bucket_sizes():
    assert [bucket_size(n) for n in (1, 64, 65, 300)] == [64, 64, 128, 320]
    padded = pad_day(_day(n=37), 64)
    assert padded.x.shape == (64, D_FEAT * T) and padded.mask is not None and int(padded.mask.sum()) == 37
    assert torch.isnan(padded.label[37:]).all() and (padded.concepts[37:] == 0).all()
    with pytest.raises(ValueError, match="cannot pad a day of 37 stocks to 10"):
        pad_day(_day(n=37), 10)


@pytest.mark.parametrize("weights", [False, True], ids=["plain", "weighted"])
@pytest.mark.parametrize("loss_name", ["mse", "ic", "mse+ic"])
@pytest.mark.parametrize("options", NETWORKS.values(), ids=NETWORKS.keys())
def test_padded_and_unpadded_days_agree_in_loss_gradients_and_predictions(options, loss_name, weights):
    # in float64, so that 1e-6 measures the padding and not float32's rounding (the ic loss's gradient along the
    # output bias is 0 in exact arithmetic: in float32 it is rounding noise of 1e-6 either way)
    day = Day(*(None if t is None else t.double() for t in _day(weights=weights)))
    padded = pad_day(day, bucket_size(len(day.x)))
    plain, masked = _net(**options).double(), _net(**options).double()
    loss = DailyLoss(loss_name, ic_weight=0.5)

    pred = plain.forward_day(day)
    want = loss(pred, day.label, day.sample_weight)
    pred_padded = masked.forward_day(padded)
    got = loss.static(pred_padded, padded.label, padded.sample_weight)
    assert want is not None
    torch.testing.assert_close(pred_padded[: len(day.x)], pred, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    want.backward()
    got.backward()
    for (name, p), (_, q) in zip(plain.named_parameters(), masked.named_parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_padding_is_nobodys_peer_and_joins_no_concept():
    """The padded rows' features are garbage on purpose: the real rows must not notice."""
    day = _day()
    padded = pad_day(day, 128)
    noisy = padded._replace(x=torch.cat([day.x, 100 * torch.randn(128 - len(day.x), D_FEAT * T)]))
    net = _net(hidden_topk=3).eval()
    with torch.no_grad():
        torch.testing.assert_close(net.forward_day(noisy)[: len(day.x)], net.forward_day(day), atol=1e-6, rtol=1e-6)


def test_a_day_without_any_concept_stays_finite_when_padded():
    day = _day()
    day = day._replace(concepts=torch.zeros_like(day.concepts))
    net = _net()
    pred = net.forward_day(pad_day(day, 64))
    torch.testing.assert_close(pred[: len(day.x)], net.forward_day(day), atol=1e-6, rtol=1e-6)
    pred.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def _trainer(net: HISTModel, **settings) -> Trainer:
    recipe = TrainSettings(**{"n_epochs": 2, "early_stop": 5, "lr": 1e-3, "metric": "ic", "seed": 0, **settings})
    return Trainer(net, make_optimizer("adam", net, 1e-3), recipe, CPU)


@pytest.mark.parametrize("loss", ["mse", "ic"])
def test_a_padded_fit_follows_the_unpadded_one(synthetic_batches, loss):
    """cuda_graphs on a CPU: the trainer's padded (eager) steps; the same fit to float rounding."""
    train, valid = synthetic_batches
    plain, padded = _trainer(_net(), loss=loss), _trainer(_net(), loss=loss, cuda_graphs=True)
    assert padded.static_steps is not None and not padded.static_steps.capture
    a, b = plain.fit(train, valid), padded.fit(train, valid)
    assert a.best_epoch == b.best_epoch
    got, want = padded.predict(valid), plain.predict(valid)
    if loss == "mse":
        np.testing.assert_allclose(got, want, atol=2e-5)
    else:  # the ic loss leaves the output's offset and scale free, and Adam walks them on rounding noise: a 1e-7
        # nudge of the output bias moves this fit's valid IC by 0.003, so the step-level test above is the exact one
        assert np.corrcoef(got, want)[0, 1] > 0.99
        assert padded.evaluate(valid)["ic"] == pytest.approx(plain.evaluate(valid)["ic"], abs=0.02)
    assert padded.static_steps.eager_steps[bucket_size(24)] == 2 * train.n_days


def test_static_steps_step_returns_the_days_rows_only():
    net = _net()
    steps = StaticSteps(
        net,
        make_optimizer("adam", net, 1e-3),
        lambda p, d: DailyLoss("mse").static(p, d.label),
        CLIP_VALUE,
        lambda m, d: m.forward_day(d),
        capture=False,
    )
    pred, loss = steps.step(_day(n=70))
    assert pred.shape == (70,) and loss.dim() == 0 and steps.eager_steps == {2 * BUCKET: 1}


# ----------------------------------------------------------------------------- deferred non-finite check
def test_the_deferred_check_stops_the_fit_and_names_the_first_bad_step(synthetic_batches):
    train, valid = synthetic_batches
    train = copy.copy(train)
    bad_day = 5
    features = train.features.clone()
    features[train.day_slice(bad_day)] = float("inf")  # what an overflowing input does, on one day only
    train.features = features
    trainer = _trainer(_net())
    step = int(np.flatnonzero(np.random.default_rng(0).permutation(train.n_days) == bad_day)[0])
    with pytest.raises(TrainingError, match=rf"epoch 0: the train loss is nan at step {step} \(day {bad_day}\)"):
        trainer.fit(train, valid)
    assert trainer.history == [] and trainer.unchecked == []


def test_losses_are_read_back_every_check_every_steps(synthetic_batches, monkeypatch):
    import qlib_hist.training as training

    monkeypatch.setattr(training, "CHECK_EVERY", 4)
    train, valid = synthetic_batches
    trainer = _trainer(_net(), n_epochs=1)
    reads = []
    original = trainer.check_losses
    monkeypatch.setattr(trainer, "check_losses", lambda: (reads.append(len(trainer.unchecked)), original())[1])
    trainer.fit(train, valid)
    assert reads[:4] == [4, 4, 4, 4] and sum(reads) == train.n_days


def test_resident_batches_are_the_same_object_on_the_cpu(synthetic_batches):
    train, _ = synthetic_batches
    assert train.to(CPU) is train
    assert _trainer(_net()).on_device(train) is train


# ----------------------------------------------------------------------------- refusals
def test_bf16_on_a_cpu_without_bf16_is_refused_at_construction(demo, monkeypatch):
    import qlib_hist.training as training

    monkeypatch.setattr(training, "cpu_flags", lambda: {"avx2", "fma"})
    with pytest.raises(SettingsError, match=r"^precision='bf16' needs a CUDA device or a CPU with avx512_bf16/AMX"):
        small_hist(demo, precision="bf16")


def test_bf16_runs_where_the_cpu_reports_it(demo, short_dataset, monkeypatch):
    """bf16 autocast rounds, in training and in prediction: the predictions are not fp32's bit for bit (identical
    ones would mean autocast did nothing), yet close to them (rounding, not another model)."""
    import qlib_hist.training as training

    monkeypatch.setattr(training, "cpu_flags", lambda: {"avx512_bf16"})
    model = small_hist(demo, precision="bf16", n_epochs=1)
    model.fit(short_dataset)
    pred = model.predict(short_dataset, "test")
    fp32 = small_hist(demo, n_epochs=1)
    fp32.fit(short_dataset)
    want = fp32.predict(short_dataset, "test").to_numpy()
    fp32.precision = "bf16"  # the fp32 weights, predicted under autocast
    rounded = fp32.predict(short_dataset, "test").to_numpy()
    assert pred.dtype == np.float32
    # an epoch trained in bf16 drifts further from fp32's weights than one prediction's rounding, by how much
    # depends on the CPU's bf16 kernels: a correlation above 0.99 on a Xeon with AMX, 0.98999 on an AVX2-only CPU,
    # 0.9894 on an AMD EPYC with avx512_bf16 (Zen 4); a fp32 fit of another seed correlates about 0.64 with this
    # one, so 0.98 still tells rounding from another model. The drift also moves the predictions' level (on that
    # EPYC by a quarter of their std, nearly the same for every stock), which no cross-sectional score reads: the
    # distance is measured on the predictions less their mean.
    cases = (("trained and predicted in bf16", pred.to_numpy(), 0.98), ("predicted in bf16", rounded, 0.99))
    for what, got, least in cases:
        assert np.isfinite(got).all(), what
        assert (got == want).mean() < 0.5, f"{what}: {(got == want).mean():.0%} equal to fp32's, autocast did nothing"
        corr = np.corrcoef(got, want)[0, 1]
        assert corr > least, f"{what}: correlation {corr:.5f} with fp32's"
        distance = np.abs((got - got.mean()) - (want - want.mean())).mean()
        assert distance < 0.2 * want.std(), f"{what}: {distance / want.std():.3f} of fp32's std apart"


def test_cuda_graphs_off_cuda_is_refused_at_construction(demo):
    with pytest.raises(SettingsError, match="cuda_graphs needs a CUDA device"):
        small_hist(demo, cuda_graphs=True)


# ----------------------------------------------------------------------------- CUDA (skipped without a GPU)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_captured_steps_match_eager_padded_steps_on_cuda():
    cuda = torch.device("cuda")
    days = [Day(*(None if t is None else t.to(cuda) for t in _day(n=n, seed=n))) for n in (37, 50, 40, 61, 33, 45)]

    def run(capture: bool) -> list:
        net = _net().to(cuda)
        steps = StaticSteps(
            net,
            make_optimizer("adam", net, 1e-3, capturable=True),
            lambda p, d: DailyLoss("mse").static(p, d.label),
            CLIP_VALUE,
            lambda m, d: m.forward_day(d),
            capture=capture,
        )
        return [steps.step(day)[1].item() for day in days] + [net.fc_out.weight.detach().cpu()]

    eager, captured = run(False), run(True)
    np.testing.assert_allclose(captured[:-1], eager[:-1], rtol=1e-4)
    torch.testing.assert_close(captured[-1], eager[-1], atol=1e-5, rtol=1e-4)


#: captured steps over several buckets: (loss, optimizer, weighted days, network options)
MULTI_BUCKET_CASES = {
    "mse_adam": ("mse", "adam", False, {}),
    "ic_weighted_adamw": ("ic", "adamw", True, {"concept_refine": True, "hidden_topk": 2}),
    "mse+ic_gd_lstm": ("mse+ic", "gd", True, {"base_model": "LSTM", "temporal_attention": True}),
}
#: day sizes whose buckets (64, 128, 192) interleave: each bucket's eager warm-up steps fall between another
#: bucket's replays
MULTI_BUCKET_SIZES = (37, 100, 61, 150, 120, 45, 190, 33, 70, 140, 50, 128, 64, 180, 99, 40, 160, 110)


def _captured_run(device, capture: bool, loss: str, optimizer: str, weights: bool, options: dict, lr: float = 1e-3):
    """Train steps over :data:`MULTI_BUCKET_SIZES` days: (each step's loss, each step's predictions, the final
    weights), with steps captured per bucket or all eager (padded)."""
    days = [
        Day(*(None if t is None else t.to(device) for t in _day(n=n, seed=n, weights=weights)))
        for n in MULTI_BUCKET_SIZES
    ]
    net = _net(**options).to(device)
    name, decay = ("adam", 1e-3) if optimizer == "adamw" else (optimizer, 0.0)
    daily = DailyLoss(loss, 0.5)
    steps = StaticSteps(
        net,
        make_optimizer(name, net, lr, decay, capturable=capture),
        lambda p, d: daily.static(p, d.label, d.sample_weight),
        CLIP_VALUE,
        lambda m, d: m.forward_day(d),
        capture=capture,
    )
    losses, preds = [], []
    for day in days:
        pred, step_loss = steps.step(day)
        losses.append(step_loss.item())
        preds.append(pred.cpu())
    return losses, preds, {k: v.detach().cpu() for k, v in net.state_dict().items()}, steps


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", MULTI_BUCKET_CASES.values(), ids=MULTI_BUCKET_CASES.keys())
def test_captured_steps_over_several_buckets_match_eager_steps(case):
    """Three buckets captured, each replayed between the others' eager warm-ups and replays: every step's loss and
    predictions, and the final weights, equal the eager padded steps' to float rounding."""
    cuda = torch.device("cuda")
    eager_losses, eager_preds, eager_state, _ = _captured_run(cuda, False, *case)
    losses, preds, state, steps = _captured_run(cuda, True, *case)
    assert sorted(steps.graphs) == [64, 128, 192]  # every bucket was captured and replayed
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-3, atol=1e-5)
    for step, (got, expected) in enumerate(zip(preds, eager_preds)):
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4, msg=f"step {step}")
    for name, value in eager_state.items():
        torch.testing.assert_close(state[name], value, rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_captured_step_draws_fresh_dropout_at_each_replay():
    """With lr 0 the weights never move: replays of one day then differ only by their dropout masks, which a graph
    must draw afresh at each replay (and, with dropout 0, they are equal)."""
    cuda = torch.device("cuda")

    def replays(dropout: float) -> list:
        torch.manual_seed(0)
        net = HISTModel(d_feat=D_FEAT, hidden_size=8, num_layers=2, dropout=dropout).to(cuda)
        steps = StaticSteps(
            net,
            make_optimizer("adam", net, 0.0, capturable=True),
            lambda p, d: DailyLoss("mse").static(p, d.label),
            CLIP_VALUE,
            lambda m, d: m.forward_day(d),
            capture=True,
        )
        day = Day(*(None if t is None else t.to(cuda) for t in _day(n=50)))
        return [steps.step(day)[0].cpu() for _ in range(6)][-2:]  # 3 eager, the capture, then replays

    first, second = replays(0.3)
    assert torch.isfinite(first).all() and float((first - second).abs().max()) > 1e-3
    first, second = replays(0.0)
    torch.testing.assert_close(first, second, rtol=0, atol=1e-6)  # index_add's atomics: not always bit-equal


#: HIST.fit(cuda_graphs=True) as it is used: each case against the same fit with the padded steps run eagerly
CAPTURE_CASES = {
    "ic_adamw": dict(loss="ic", weight_decay=1e-3),
    "mse+ic_smooth": dict(loss="mse+ic", ic_weight=0.5, smooth_steps=2),
    "mse_gd_paper": dict(loss="mse", optimizer="gd", lr=0.05, hidden_topk=2, concept_refine=True),
    "ensemble_of_2": dict(loss="ic", ensemble=2, ensemble_mode="sequential"),  # each member its own graphs
}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", CAPTURE_CASES.values(), ids=CAPTURE_CASES.keys())
def test_a_captured_fit_predicts_as_the_eager_padded_fit(demo, short_dataset, monkeypatch, tmp_path, case):
    """Replayed CUDA graphs through ``HIST.fit``: the losses, AdamW/SGD, ``smooth_steps`` and checkpoints, every day
    (and so each of the day sizes' buckets) replayed; the predictions, not only the losses, equal the eager padded
    steps' to float rounding."""
    import qlib_hist.training as training

    def fit(capture: bool):
        real = training.StaticSteps
        monkeypatch.setattr(
            training, "StaticSteps", lambda *a, **k: real(*a, **{**k, "capture": capture and k["capture"]})
        )
        model = small_hist(
            demo, GPU=0, n_epochs=2, cuda_graphs=True, checkpoint_dir=str(tmp_path / f"ck{capture}"), **case
        )
        model.fit(short_dataset)
        monkeypatch.setattr(training, "StaticSteps", real)
        return model.predict(short_dataset).to_numpy()

    captured, eager = fit(True), fit(False)
    assert np.corrcoef(captured, eager)[0, 1] > 0.999
    np.testing.assert_allclose(captured, eager, atol=5e-3 * np.std(eager))
