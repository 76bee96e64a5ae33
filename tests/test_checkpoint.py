"""Resumable checkpoints (``qlib_hist.callbacks.Checkpoint`` through ``HIST(checkpoint_dir=...)``): a fit killed
after an epoch resumes bit for bit; a checkpoint of other settings or data is refused.

A kill is simulated by a callback that raises after the checkpoint callback has written the epoch.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from qlib_hist.callbacks import Callback, Checkpoint, CheckpointError
from qlib_hist.qlib_edge.model import CHECKPOINT_NAME
from qlib_hist.training import Trainer

from conftest import SHORT_SEGMENTS, small_hist

RESUME = dict(hidden_size=16, num_layers=2, dropout=0.1, n_epochs=4, early_stop=100, lr=2e-3, metric="ic", seed=11)


class KillAfter(Callback):
    """Raises at the end of epoch ``epoch``: HIST's own callbacks, the checkpoint among them, ran before."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer, record) -> None:
        if record["epoch"] == self.epoch:
            raise KeyboardInterrupt


class CountEpochs(Callback):
    def __init__(self) -> None:
        self.epochs: list = []

    def on_epoch_end(self, trainer, record) -> None:
        self.epochs.append(record["epoch"])


def _states_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _killed_fit(demo, dataset, settings: dict, checkpoint_dir, epoch: int) -> None:
    with pytest.raises(KeyboardInterrupt):
        small_hist(demo, **settings, checkpoint_dir=str(checkpoint_dir)).fit(dataset, callbacks=[KillAfter(epoch)])


@pytest.mark.parametrize("smooth_steps", [1, 2])
def test_resume_is_bit_for_bit(demo, short_dataset, tmp_path, smooth_steps):
    settings = dict(RESUME, smooth_steps=smooth_steps)
    ref_evals = {}
    reference = small_hist(demo, **settings)
    reference.fit(short_dataset, evals_result=ref_evals)
    ref_pred = reference.predict(short_dataset, "test")

    ckpt = tmp_path / "ckpt"
    _killed_fit(demo, short_dataset, settings, ckpt, epoch=1)
    assert sorted(os.listdir(ckpt)) == [CHECKPOINT_NAME]
    assert isinstance(torch.load(ckpt / CHECKPOINT_NAME, map_location="cpu", weights_only=True), dict)

    counter = CountEpochs()
    evals = {}
    resumed = small_hist(demo, **settings, checkpoint_dir=str(ckpt))
    resumed.fit(short_dataset, evals_result=evals, callbacks=[counter])
    assert len(counter.epochs) == 2, "the resumed fit must run the two missing epochs only"
    assert len(evals["train"]) == len(evals["valid"]) == RESUME["n_epochs"]
    assert evals == ref_evals
    assert resumed.best_epoch == reference.best_epoch
    _states_equal(resumed.HIST_model, reference.HIST_model)
    pred = resumed.predict(short_dataset, "test")
    assert pred.index.equals(ref_pred.index)
    np.testing.assert_array_equal(pred.to_numpy(), ref_pred.to_numpy())
    assert sorted(os.listdir(ckpt)) == [CHECKPOINT_NAME]

    # a finished checkpoint: a new fit returns at once with the same weights
    counter = CountEpochs()
    again = small_hist(demo, **settings, checkpoint_dir=str(ckpt))
    again_evals = {}
    again.fit(short_dataset, evals_result=again_evals, callbacks=[counter])
    assert counter.epochs == []
    _states_equal(again.HIST_model, reference.HIST_model)
    assert again_evals == ref_evals and again.fitted
    np.testing.assert_array_equal(again.predict(short_dataset, "test").to_numpy(), ref_pred.to_numpy())


def test_resume_needs_the_rng_state(demo, short_dataset, tmp_path, monkeypatch):
    """Dropout draws from torch's RNG: a resume that did not restore it would diverge (so the test above can fail)."""
    settings = dict(RESUME, n_epochs=2)
    reference = small_hist(demo, **settings)
    reference.fit(short_dataset)
    ckpt = tmp_path / "ckpt"
    _killed_fit(demo, short_dataset, settings, ckpt, epoch=0)
    load = Trainer.load_state_dict

    def load_then_scramble(self, state):
        load(self, state)
        torch.manual_seed(12345)  # as if the torch RNG state had not been restored

    monkeypatch.setattr(Trainer, "load_state_dict", load_then_scramble)
    broken = small_hist(demo, **settings, checkpoint_dir=str(ckpt))
    broken.fit(short_dataset)
    ref_state = reference.HIST_model.state_dict()
    assert any(not torch.equal(v, ref_state[k]) for k, v in broken.HIST_model.state_dict().items())


def test_checkpoint_mismatch_is_refused(demo, demo_handler, short_dataset, tmp_path):
    from qlib.data.dataset import DatasetH

    ckpt = tmp_path / "ckpt"
    settings = dict(RESUME, n_epochs=1)
    small_hist(demo, **settings, checkpoint_dir=str(ckpt)).fit(short_dataset)
    path = ckpt / CHECKPOINT_NAME
    content = path.read_bytes()
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(state, dict)

    with pytest.raises(CheckpointError, match="other settings or another dataset"):
        small_hist(demo, **dict(settings, lr=5e-3), checkpoint_dir=str(ckpt)).fit(short_dataset)
    other_segments = dict(SHORT_SEGMENTS, train=("2016-04-15", "2016-06-30"))
    with pytest.raises(CheckpointError, match="other settings or another dataset"):
        small_hist(demo, **settings, checkpoint_dir=str(ckpt)).fit(DatasetH(demo_handler, segments=other_segments))
    assert path.read_bytes() == content, "a refused checkpoint must be left as it was"
    assert sorted(os.listdir(ckpt)) == [CHECKPOINT_NAME]
    assert issubclass(CheckpointError, ValueError)

    # an unreadable file is a CheckpointError too
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        small_hist(demo, **settings, checkpoint_dir=str(ckpt)).fit(short_dataset)


def test_paths_that_only_say_where_to_write_do_not_refuse(demo, short_dataset, tmp_path):
    """The fingerprint leaves out checkpoint_dir itself: a checkpoint moved to another folder still resumes."""
    settings = dict(RESUME, n_epochs=1)
    first = small_hist(demo, **settings, checkpoint_dir=str(tmp_path / "a"))
    first.fit(short_dataset)
    (tmp_path / "b").mkdir()
    os.replace(tmp_path / "a" / CHECKPOINT_NAME, tmp_path / "b" / CHECKPOINT_NAME)
    counter = CountEpochs()
    moved = small_hist(demo, **settings, checkpoint_dir=str(tmp_path / "b"))
    moved.fit(short_dataset, callbacks=[counter])
    assert counter.epochs == []
    _states_equal(moved.HIST_model, first.HIST_model)
    state = Checkpoint(tmp_path / "b" / CHECKPOINT_NAME, "not this fit")
    with pytest.raises(CheckpointError, match="not this fit"):
        state.read()
