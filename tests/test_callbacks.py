"""The epoch log (``qlib_hist.callbacks.LogEpochs``) names what it shows: the objective the epoch's steps minimised,
under its own name (``ic_loss``, ``mse+ic_loss``, ``mse``), and the MSE as ``mse``; the history keeps the objective
(averaged over the epoch's optimizer steps) under a key that names it, and ``evals_result`` keeps qlib's metric."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch

from qlib_hist.callbacks import Callback, Checkpoint
from qlib_hist.metrics import objective_key
from qlib_hist.network import HISTModel
from qlib_hist.settings import TrainSettings
from qlib_hist.training import Trainer

from conftest import D_FEAT, small_hist

CPU = torch.device("cpu")
LOG = logging.getLogger("HIST")
NUMBER = r"(-?\d+\.\d{6})"
#: the train part of the epoch line for each loss: the objective by its name, then the MSE unless it is the objective
TRAIN_PART = {
    "mse": rf"train mse {NUMBER} \|",
    "ic": rf"train ic_loss {NUMBER} mse {NUMBER} \|",
    "mse+ic": rf"train mse\+ic_loss {NUMBER} mse {NUMBER} \|",
}


def _trainer(loss: str, n_epochs: int = 1, callbacks=(), ic_weight: float = 0.5) -> Trainer:
    torch.manual_seed(0)
    net = HISTModel(d_feat=D_FEAT, hidden_size=8, num_layers=1)
    settings = TrainSettings(
        n_epochs=n_epochs, early_stop=5, lr=1e-3, metric="ic", seed=0, loss=loss, ic_weight=ic_weight
    )
    return Trainer(net, torch.optim.Adam(net.parameters(), lr=1e-3), settings, CPU, LOG, callbacks)


def _epoch_lines(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.name == "HIST" and r.getMessage().startswith("Epoch ")]


@pytest.mark.parametrize("loss", ["mse", "ic", "mse+ic"])
def test_the_epoch_line_names_the_objective(synthetic_batches, caplog, loss):
    train, valid = synthetic_batches
    trainer = _trainer(loss)
    with caplog.at_level(logging.INFO, logger="HIST"):
        result = trainer.fit(train, valid)
    (line,) = _epoch_lines(caplog)
    record = result.history[0]
    match = re.match(rf"Epoch 0: {TRAIN_PART[loss]} valid ic \S+ rank_ic \S+ mse \S+ precision@30 \S+ \| ", line)
    assert match, line
    assert float(match.group(1)) == pytest.approx(record[objective_key(loss)], abs=1e-6)
    if loss != "mse":
        assert float(match.group(2)) == pytest.approx(record["train_loss"], abs=1e-6)  # the MSE metric, as `mse`
    assert "train loss" not in line and " loss " not in line


def _daily(preds: np.ndarray, batches, score) -> list:
    labels = batches.labels.numpy()
    return [
        score(preds[batches.day_slice(d)].astype(np.float64), labels[batches.day_slice(d)].astype(np.float64))
        for d in range(batches.n_days)
    ]


@pytest.mark.parametrize("loss", ["mse", "ic", "mse+ic"])
def test_the_objective_is_the_mean_over_steps_of_the_daily_loss(synthetic_batches, loss):
    """Each step's loss is of the predictions it made before stepping, which is what ``train_epoch`` returns: the
    epoch's objective is the mean over the steps (days) of that day's loss, computed here with numpy."""
    train, _ = synthetic_batches
    trainer = _trainer(loss, ic_weight=0.5)
    preds = trainer.train_epoch(train)
    ics = np.array(_daily(preds, train, lambda p, y: np.corrcoef(p, y)[0, 1]))
    mses = np.array(_daily(preds, train, lambda p, y: ((p - y) ** 2).mean()))
    expected = {"mse": mses, "ic": -ics, "mse+ic": mses - 0.5 * ics}[loss].mean()
    assert trainer.epoch_objective == pytest.approx(expected, rel=1e-5)


def test_the_history_and_evals_result_under_loss_ic(synthetic_batches):
    """``train_ic_loss`` is minus the train IC of the same predictions (days without a step: none here);
    ``train_loss`` stays the MSE metric; ``evals_result`` stays qlib's metric per epoch."""
    train, valid = synthetic_batches
    evals: dict = {}
    result = _trainer("ic", n_epochs=2).fit(train, valid, evals)
    for record in result.history:
        assert record["train_ic_loss"] == pytest.approx(-record["train_ic"], rel=1e-5)
        assert record["train_loss"] > 0  # the MSE, not the objective
    assert evals["train"] == [r["train_ic"] for r in result.history]
    assert evals["valid"] == [r["valid_ic"] for r in result.history]


def test_hist_logs_the_objective_on_its_logger(demo, short_dataset, caplog):
    """Through ``HIST``: qlib's ``get_module_logger("HIST")`` carries the line naming ``ic_loss``."""
    model = small_hist(demo, loss="ic", metric="ic", n_epochs=1)
    with caplog.at_level(logging.INFO):
        model.fit(short_dataset)
    lines = [r.getMessage() for r in caplog.records if r.name.endswith("HIST") and r.getMessage().startswith("Epoch")]
    assert len(lines) == 1 and re.match(rf"Epoch 0: train ic_loss {NUMBER} mse {NUMBER} \| valid ic ", lines[0])
    assert model.history[0]["train_ic_loss"] == pytest.approx(-model.history[0]["train_ic"], rel=1e-5)


class _KillAfterFirst(Callback):
    def on_epoch_end(self, trainer, record) -> None:
        raise KeyboardInterrupt


def test_a_checkpoint_without_the_objective_still_resumes(synthetic_batches, tmp_path, caplog):
    """A checkpoint written before the history recorded the objective (0.6.0) resumes: its records stay as they
    were, and the epochs run after the resume log and record the objective."""
    train, valid = synthetic_batches
    path = tmp_path / "hist_checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        _trainer("ic", n_epochs=2, callbacks=[Checkpoint(path, "fp"), _KillAfterFirst()]).fit(train, valid)
    state = torch.load(path, weights_only=True)
    for record in state["history"]:
        del record["train_ic_loss"]  # as 0.6.0 wrote it
    torch.save(state, path)
    with caplog.at_level(logging.INFO, logger="HIST"):
        result = _trainer("ic", n_epochs=2, callbacks=[Checkpoint(path, "fp")]).fit(train, valid)
    assert [r["epoch"] for r in result.history] == [0, 1]
    assert "train_ic_loss" not in result.history[0] and np.isfinite(result.history[1]["train_ic_loss"])
    assert [line.split(":")[0] for line in _epoch_lines(caplog)] == ["Epoch 1"]
