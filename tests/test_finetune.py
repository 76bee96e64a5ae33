"""``HIST.finetune`` (qlib's ``ModelFT``): continues from the current weights, keeps them when no epoch beats them."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from qlib.model.base import ModelFT

from qlib_hist.callbacks import Callback
from qlib_hist.settings import SettingsError
from qlib_hist.training import copy_state

from conftest import small_hist


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def fitted(demo, short_dataset):
    model = small_hist(demo, finetune_epochs=2)
    model.fit(short_dataset)
    return model


def test_hist_is_a_qlib_modelft(demo):
    assert isinstance(small_hist(demo), ModelFT)


def test_finetune_needs_a_fitted_model(demo, short_dataset):
    with pytest.raises(ValueError, match="finetune needs a fitted HIST"):
        small_hist(demo).finetune(short_dataset)


@pytest.mark.parametrize(
    "name, value, message",
    [("finetune_epochs", 0, "finetune_epochs must be >= 1"), ("finetune_lr", -1e-3, "finetune_lr must be >= 0")],
)
def test_finetune_settings_are_checked(demo, name, value, message):
    with pytest.raises(SettingsError, match=message):
        small_hist(demo, **{name: value})


def test_finetune_starts_from_the_current_weights(fitted, short_dataset):
    """With a zero learning rate nothing moves: the fine-tune starts exactly where the fit ended."""
    model = pickle.loads(pickle.dumps(fitted))
    before = copy_state(model.HIST_model)
    model.finetune_lr = 0.0
    model.finetune(short_dataset)
    assert _same_weights(before, copy_state(model.HIST_model))


class _EpochWeights(Callback):
    """The raw weights after each epoch."""

    def __init__(self) -> None:
        self.states: list = []

    def on_epoch_end(self, trainer, record) -> None:
        self.states.append(copy_state(trainer.network))


def test_finetune_trains_and_reports_its_epochs(fitted, short_dataset):
    """Both epochs of ``finetune_epochs`` run (early_stop is 5), each moves the weights, and the best of them beats
    the starting weights on the valid loss here, so it is kept (epoch 1, not the start's -1)."""
    model = pickle.loads(pickle.dumps(fitted))
    model.metric = "loss"
    before = copy_state(model.HIST_model)
    evals: dict = {}
    epochs = _EpochWeights()
    model.finetune(short_dataset, evals_result=evals, callbacks=[epochs])
    assert len(model.history) == len(evals["valid"]) == len(epochs.states) == 2  # finetune_epochs, not n_epochs
    assert not _same_weights(before, epochs.states[0]) and not _same_weights(epochs.states[0], epochs.states[1])
    assert model.best_epoch == 1, "setup: the second fine-tune epoch should beat the start and the first"
    assert model.best_score == evals["valid"][1] > evals["valid"][0]
    assert _same_weights(copy_state(model.HIST_model), epochs.states[1])


def test_finetune_keeps_the_start_when_every_epoch_is_worse(fitted, short_dataset):
    """An absurd learning rate wrecks the weights in one epoch: early stopping keeps the starting ones (epoch -1)."""
    model = pickle.loads(pickle.dumps(fitted))
    model.metric, model.finetune_lr, model.finetune_epochs = "loss", 10.0, 1
    before = copy_state(model.HIST_model)
    model.finetune(short_dataset)
    assert model.best_epoch == -1
    assert model.history[0]["valid_score"] < model.best_score
    assert _same_weights(before, copy_state(model.HIST_model))


def test_finetune_from_a_pickle_equals_finetune_in_memory(fitted, short_dataset):
    """A model loaded from a recorder (a pickle: no optimizer state, CPU tensors) fine-tunes to the same weights:
    the optimizer starts afresh in both."""
    in_memory = fitted
    loaded = pickle.loads(pickle.dumps(fitted))
    in_memory.finetune(short_dataset)
    loaded.finetune(short_dataset)
    assert _same_weights(copy_state(in_memory.HIST_model), copy_state(loaded.HIST_model))
    np.testing.assert_array_equal(in_memory.predict(short_dataset).values, loaded.predict(short_dataset).values)
