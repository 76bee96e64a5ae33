"""Seed ensembles trained as one batched network (``ensemble_mode: batched``): the block-diagonal encoder and the
vmapped rest give each member its own predictions and gradients; a batched fit gives each member the weights and
predictions of its separate fit; frozen members, dropout streams, resume, and the settings."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from qlib_hist.batched import BatchedTrainer, StackedMembers
from qlib_hist.batches import Day
from qlib_hist.callbacks import Callback
from qlib_hist.network import HISTModel
from qlib_hist.qlib_edge.model import ensemble_seconds
from qlib_hist.settings import HISTSettings, SettingsError
from qlib_hist.training import TrainingError, predict_days

from conftest import small_hist

#: members stop at different epochs with these (histories of 5, 2 and 2 epochs on the short dataset)
STOPPING = dict(hidden_size=8, n_epochs=6, early_stop=1, seed=5, ensemble=3, loss="mse", lr=0.01)
C = 6  # concepts in the synthetic days


def _days(sizes, d_feat=6, with_weight=False, market=0, aux=0, seed=0):
    """Synthetic days of ``sizes`` stocks (60 time steps), concepts with some members, labels."""
    g = torch.Generator().manual_seed(seed)
    days = []
    for n in sizes:
        days.append(
            Day(
                x=torch.randn(n, d_feat * 60, generator=g),
                concepts=(torch.rand(n, C, generator=g) > 0.6).float(),
                label=torch.randn(n, generator=g),
                sample_weight=None,
                member_weight=torch.rand(n, generator=g) + 0.5 if with_weight else None,
                market=torch.randn(market, generator=g) if market else None,
                aux_label=torch.randn(n, aux, generator=g) if aux else None,
            )
        )
    return days


def _members(k=3, **network):
    members = []
    for member in range(k):
        torch.manual_seed(member)
        members.append(HISTModel(**network))
    if members[0].market_gate is not None:  # a gate that is not the identity (its init is zero)
        for member in members:
            member.market_gate.fit_scale(torch.randn(50, member.market_gate.mean.numel()))
            torch.nn.init.normal_(member.market_gate.linear.weight, std=0.3)
    return members


NETWORKS = {
    "lstm": dict(base_model="LSTM", hidden_size=8, num_layers=2),
    "gru-options": dict(
        base_model="GRU", hidden_size=8, num_layers=2, hidden_topk=2, concept_refine=True, temporal_attention=True
    ),
    "market-aux": dict(base_model="LSTM", hidden_size=8, num_layers=1, market_context=("A", "B"), aux_horizons=(2, 3)),
    "modules-off": dict(
        base_model="GRU", hidden_size=8, num_layers=1, predefined_concepts=False, hidden_concepts=False
    ),
}


def _objective(pred: torch.Tensor, aux: torch.Tensor, day: Day) -> torch.Tensor:
    """A loss that reads every output (the auxiliary ones too) with unequal weights per row."""
    rows = torch.arange(len(pred), dtype=pred.dtype) + 1
    return ((pred - day.label) ** 2 * rows).mean() + aux.sin().sum()


@pytest.mark.parametrize("name", NETWORKS)
def test_each_member_gets_its_own_predictions_and_gradients(name):
    network = NETWORKS[name]
    members = _members(**network)
    twins = copy.deepcopy(members)
    days = _days((30, 24, 27), with_weight=name == "lstm", market=42 if "market" in name else 0, aux=2)
    pred, aux = StackedMembers(members)(days)  # [K, N], [K, N, A]
    assert pred.shape == (3, 30) and aux.shape == (3, 30, len(network.get("aux_horizons", ())))
    total = sum(_objective(pred[k, : len(day.x)], aux[k, : len(day.x)], day) for k, day in enumerate(days))
    total.backward()
    for k, (twin, day) in enumerate(zip(twins, days)):
        if twin.aux_head is None:
            own, own_aux = twin.forward_day(day), torch.zeros(len(day.x), 0)
        else:
            own, own_aux = twin.forward_with_aux(day)
        torch.testing.assert_close(pred[k, : len(day.x)], own, rtol=0, atol=1e-5)
        torch.testing.assert_close(aux[k, : len(day.x)], own_aux, rtol=0, atol=1e-5)
        _objective(own, own_aux, day).backward()
        for (param, batched), (_, separate) in zip(members[k].named_parameters(), twin.named_parameters()):
            assert (batched.grad is None) == (separate.grad is None), param
            if separate.grad is not None:
                scale = float(separate.grad.abs().max()) + 1e-8  # fp32 rounding: ~1e-6 of it; a wrong member: ~1
                torch.testing.assert_close(batched.grad, separate.grad, rtol=0, atol=1e-4 * scale, msg=param)


def test_a_frozen_member_runs_but_gets_no_gradient():
    members = _members(**NETWORKS["lstm"])
    days = _days((20, 20, 20))
    pred, _ = StackedMembers(members)(days, frozen=[False, True, False])
    pred.sum().backward()
    assert all(p.grad is None for p in members[1].parameters())
    assert all(p.grad is not None for p in members[0].rnn.parameters())
    torch.testing.assert_close(pred[1], members[1].forward_day(days[1]), rtol=0, atol=1e-5)


def test_each_member_draws_its_dropout_from_its_own_stream():
    network = dict(base_model="LSTM", hidden_size=8, num_layers=2, dropout=0.5)
    member = _members(1, **network)[0]
    stack = StackedMembers([member, copy.deepcopy(member)])  # two equal members
    days = _days((20, 20))[:1] * 2  # on one day

    def run(seeds):
        return stack(days, generators=[torch.Generator().manual_seed(s) for s in seeds])[0].detach()

    same_stream = run((1, 1))
    torch.testing.assert_close(same_stream[0], same_stream[1], rtol=0, atol=0)  # equal members, equal draws
    own_streams = run((1, 2))
    assert not torch.allclose(own_streams[0], own_streams[1])  # each member its own mask
    torch.testing.assert_close(own_streams, run((1, 2)), rtol=0, atol=0)  # reproducible from the seeds
    torch.testing.assert_close(stack(days)[0][0], member.eval().forward_day(days[0]), rtol=0, atol=1e-5)  # eval: none


@pytest.fixture(scope="module")
def sequential_and_batched(demo, short_dataset):
    """The same ensemble of 3 fitted sequentially (3 separate fits) and batched; its members stop at different
    epochs."""
    fits = {}
    for mode in ("sequential", "batched"):
        fits[mode] = small_hist(demo, **STOPPING, ensemble_mode=mode)
        fits[mode].fit(short_dataset)
    return fits["sequential"], fits["batched"]


def test_a_batched_fit_gives_each_member_its_separate_fits_weights(sequential_and_batched):
    sequential, batched = sequential_and_batched
    epochs = [sum(1 for record in sequential.history if record["member"] == k) for k in range(3)]
    assert len(set(epochs)) > 1, "the members should stop at different epochs (a frozen member is tested)"
    assert batched.best_epoch == sequential.best_epoch
    assert [r["epoch"] for r in batched.history] == [r["epoch"] for r in sequential.history]
    np.testing.assert_allclose(
        [r["valid_score"] for r in batched.history], [r["valid_score"] for r in sequential.history], atol=1e-5
    )
    for separate, member in zip(sequential.members(), batched.members()):
        for name, value in separate.state_dict().items():
            torch.testing.assert_close(member.state_dict()[name], value, rtol=0, atol=1e-5, msg=name)


def test_a_batched_fit_predicts_as_the_separate_fits(sequential_and_batched, short_dataset):
    sequential, batched = sequential_and_batched
    test = sequential._batches(short_dataset, "test", with_label=False)
    for separate, member in zip(sequential.members(), batched.members()):  # each member's raw scores
        expected = predict_days(separate, test, torch.device("cpu"))
        np.testing.assert_allclose(predict_days(member, test, torch.device("cpu")), expected, rtol=0, atol=1e-5)
    expected, got = sequential.predict(short_dataset, "test"), batched.predict(short_dataset, "test")  # batched
    assert got.index.equals(expected.index)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), atol=1e-4)  # the mean of per-day z-scores
    batched.ensemble_mode = "sequential"  # the same members, predicted one after another (SeedEnsemble)
    try:
        assert not batched.batched_members()
        np.testing.assert_allclose(batched.predict(short_dataset, "test").to_numpy(), got.to_numpy(), atol=1e-5)
    finally:
        batched.ensemble_mode = "batched"


def test_batched_members_score_their_averaged_weights_with_smooth_steps(demo, short_dataset):
    fits = {}
    for mode in ("sequential", "batched"):
        fits[mode] = small_hist(demo, hidden_size=8, n_epochs=3, ensemble=2, smooth_steps=2, ensemble_mode=mode)
        fits[mode].fit(short_dataset)
    np.testing.assert_allclose(
        [r["valid_score"] for r in fits["batched"].history],
        [r["valid_score"] for r in fits["sequential"].history],
        atol=1e-5,
    )
    for separate, member in zip(fits["sequential"].members(), fits["batched"].members()):
        for name, value in separate.state_dict().items():
            torch.testing.assert_close(member.state_dict()[name], value, rtol=0, atol=1e-5, msg=name)


class _StopAfter(Callback):
    """Raise after ``epochs`` member-epochs have ended (a session killed mid-fit)."""

    def __init__(self, epochs: int) -> None:
        self.left = epochs

    def on_epoch_end(self, trainer, record) -> None:
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt


def test_a_killed_batched_fit_resumes_bit_for_bit(demo, short_dataset, tmp_path):
    settings = dict(STOPPING, num_layers=2, dropout=0.3, ensemble_mode="batched")
    whole = small_hist(demo, **settings)
    whole.fit(short_dataset)
    resumed = small_hist(demo, **settings, checkpoint_dir=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        resumed.fit(short_dataset, callbacks=[_StopAfter(4)])  # mid-epoch 2: some members wrote epoch 1, some 2
    again = small_hist(demo, **settings, checkpoint_dir=str(tmp_path))
    again.fit(short_dataset)
    assert again.best_epoch == whole.best_epoch
    for a, b in zip(again.members(), whole.members()):
        for name, value in a.state_dict().items():
            assert torch.equal(value, b.state_dict()[name]), name


def test_a_sequential_ensembles_checkpoints_resume_batched(demo, short_dataset, tmp_path, caplog):
    """Even with dropout: the sequential checkpoint has no member dropout stream, which then starts from its seed."""
    logging.getLogger("qlib").propagate = True
    settings = dict(hidden_size=8, n_epochs=3, ensemble=2, num_layers=2, dropout=0.2, checkpoint_dir=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):  # member 0 done (3 epochs), member 1 killed after its first
        small_hist(demo, **settings, ensemble_mode="sequential").fit(short_dataset, callbacks=[_StopAfter(3)])
    resumed = small_hist(demo, **settings, ensemble_mode="batched")
    with caplog.at_level(logging.INFO):
        resumed.fit(short_dataset)
    assert (
        "member0/hist_checkpoint.pt at epoch 3" in caplog.text
        and "member1/hist_checkpoint.pt at epoch 1" in caplog.text
    )
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2, 0, 1, 2]


def test_a_non_finite_loss_stops_the_batched_ensemble_naming_the_member(demo, short_dataset):
    model = small_hist(demo, hidden_size=8, ensemble=3, ensemble_mode="batched")
    train, valid = model._train_valid(short_dataset, None)
    with torch.no_grad():
        model.members()[1].fc_indi.weight[0, 0] = float("nan")  # member 1 diverged
    trainers = [model._member_trainer(k, net, train, valid, ()) for k, net in enumerate(model.members())]
    with pytest.raises(TrainingError, match=r"batched ensemble, member \d \(seed \d\): epoch 0: the train loss is nan"):
        BatchedTrainer(trainers).fit(train, valid)


def test_the_ensemble_mode_setting(demo):
    assert not small_hist(demo, ensemble=2).batched_members()  # auto: sequential on a CPU, where batching is slower
    on_cuda = small_hist(demo, ensemble=2)
    on_cuda.__dict__["device"] = torch.device("cuda")  # the rule alone: no tensor goes there
    assert on_cuda.batched_members()  # auto: batched on CUDA ...
    on_cuda.__dict__["settings"] = on_cuda.settings.replace(cuda_graphs=True)
    assert not on_cuda.batched_members()  # ... unless cuda_graphs captures the members' steps one by one
    assert small_hist(demo, ensemble=2, ensemble_mode="batched").batched_members()
    assert not small_hist(demo, ensemble=2, ensemble_mode="sequential").batched_members()
    with pytest.raises(SettingsError, match="ensemble_mode must be one of"):
        HISTSettings.from_kwargs(ensemble_mode="parallel")
    with pytest.raises(SettingsError, match=r"cuda_graphs with ensemble=2 and ensemble_mode='batched'"):
        HISTSettings.from_kwargs(ensemble=2, ensemble_mode="batched", cuda_graphs=True)
    HISTSettings.from_kwargs(ensemble=2, ensemble_mode="sequential", cuda_graphs=True)
    warnings = HISTSettings.from_kwargs(ensemble_mode="batched")[0].warnings()
    assert any(w.startswith("ensemble_mode='batched' has no effect with ensemble=1") for w in warnings)


def test_a_batched_epoch_counts_once_in_the_ensembles_seconds():
    history = [
        {"member": 0, "epoch": 0, "seconds": 3.0},
        {"member": 0, "epoch": 1, "seconds": 2.0},
        {"member": 1, "epoch": 0, "seconds": 4.0},  # timed from the start it shared with member 0's epoch 0
        {"member": 1, "epoch": 1, "seconds": 2.5},
    ]
    assert ensemble_seconds(history, batched=True) == 4.0 + 2.5
    assert ensemble_seconds(history, batched=False) == 3.0 + 2.0 + 4.0 + 2.5  # K fits: every epoch is its own


def test_batched_members_are_logged(demo, short_dataset, caplog):
    logging.getLogger("qlib").propagate = True
    model = small_hist(demo, hidden_size=8, ensemble=2, ensemble_mode="batched")
    with caplog.at_level(logging.INFO):
        model.fit(short_dataset)
    assert "ensemble of 2: the members train batched, as one network" in caplog.text
    assert "member epochs in" in caplog.text and "(batched)" in caplog.text


def test_batched_trainer_refuses_captured_steps(demo, short_dataset):
    model = small_hist(demo, hidden_size=8, ensemble=2)
    train, valid = model._train_valid(short_dataset, None)
    trainers = [model._member_trainer(k, net, train, valid, ()) for k, net in enumerate(model.members())]
    trainers[1].static_steps = object()  # as cuda_graphs would make
    with pytest.raises(ValueError, match="cannot use cuda_graphs"):
        BatchedTrainer(trainers)


@pytest.mark.gpu
def test_a_batched_fit_on_cuda_matches_the_separate_fits(demo, short_dataset):
    fits = {}
    for mode in ("sequential", "batched"):
        fits[mode] = small_hist(demo, **dict(STOPPING, GPU=0), ensemble_mode=mode)
        fits[mode].fit(short_dataset)
    assert fits["batched"].best_epoch == fits["sequential"].best_epoch
    got, expected = fits["batched"].predict(short_dataset, "test"), fits["sequential"].predict(short_dataset, "test")
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), atol=1e-3)  # cuDNN and TF32 rounding
