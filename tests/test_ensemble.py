"""``ensemble: K`` (issue 28): K members from seeds seed..seed+K-1 in one model, each early-stopping on its own
valid score; predictions are the mean of the members' per-day z-scores; explain, pickles and resume."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from qlib_hist.callbacks import Callback
from qlib_hist.network import SeedEnsemble, standardise

from conftest import small_hist

ENSEMBLE = dict(hidden_size=8, n_epochs=2, early_stop=5, seed=5)


def _day_z(pred: pd.Series) -> pd.Series:
    return pred.groupby(level="datetime", group_keys=False).apply(lambda s: (s - s.mean()) / s.std(ddof=0))


@pytest.fixture(scope="module")
def pair_and_members(demo, short_dataset):
    """An ensemble of 2 and the two single models of its seeds, fitted on the short dataset."""
    ensemble = small_hist(demo, **ENSEMBLE, ensemble=2)
    ensemble.fit(short_dataset)
    singles = []
    for seed in (5, 6):
        single = small_hist(demo, **dict(ENSEMBLE, seed=seed))
        single.fit(short_dataset)
        singles.append(single)
    return ensemble, singles


def test_members_are_the_single_models_of_their_seeds(pair_and_members):
    ensemble, singles = pair_and_members
    assert isinstance(ensemble.HIST_model, SeedEnsemble) and len(ensemble.members()) == 2
    for member, single in zip(ensemble.members(), singles):
        for name, value in single.HIST_model.state_dict().items():
            assert torch.equal(member.state_dict()[name], value), name
    assert ensemble.best_epoch == [s.best_epoch for s in singles]
    assert ensemble.best_score == pytest.approx(np.mean([s.best_score for s in singles]))
    assert [r["member"] for r in ensemble.history] == [0] * 2 + [1] * 2  # 2 fits of 2 epochs: the cost, logged


def test_prediction_is_the_mean_of_the_members_daily_z_scores(pair_and_members, short_dataset):
    ensemble, singles = pair_and_members
    pred = ensemble.predict(short_dataset, "test")
    want = sum(_day_z(s.predict(short_dataset, "test")) for s in singles) / 2
    np.testing.assert_allclose(pred.to_numpy(), want.loc[pred.index].to_numpy(), atol=1e-5)


def test_standardise_handles_a_day_of_equal_scores():
    torch.testing.assert_close(standardise(torch.full((4,), 0.3)), torch.zeros(4))
    z = standardise(torch.tensor([1.0, 2.0, 3.0]))
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-7) and float(z.pow(2).mean()) == pytest.approx(1.0)


def test_explain_reports_the_members_mean_parts(pair_and_members, short_dataset):
    ensemble, singles = pair_and_members
    table = ensemble.explain(short_dataset, "test")
    parts = [s.explain(short_dataset, "test") for s in singles]
    for column in ("concept", "hidden_concept", "individual", "bias", "score"):
        np.testing.assert_allclose(table[column], (parts[0][column] + parts[1][column]) / 2, atol=1e-6)


def test_pickle_loads_on_cpu_and_predicts_the_same(pair_and_members, short_dataset):
    ensemble, _ = pair_and_members
    loaded = pickle.loads(pickle.dumps(ensemble))
    assert isinstance(loaded.HIST_model, SeedEnsemble) and loaded.ensemble == 2
    np.testing.assert_array_equal(
        loaded.predict(short_dataset, "test").to_numpy(), ensemble.predict(short_dataset, "test").to_numpy()
    )


class KillAtEpochEnd(Callback):
    """Raises at the ``n``-th epoch end of the whole fit (members counted one after the other)."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def on_epoch_end(self, trainer, record) -> None:
        self.seen += 1
        if self.seen == self.n:
            raise KeyboardInterrupt


class CountEpochs(Callback):
    def __init__(self) -> None:
        self.epochs = 0

    def on_epoch_end(self, trainer, record) -> None:
        self.epochs += 1


def test_checkpoints_resume_member_by_member(demo, short_dataset, tmp_path, pair_and_members):
    reference, _ = pair_and_members
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):  # member 0 done, member 1 killed after its first epoch
        small_hist(demo, **ENSEMBLE, ensemble=2, checkpoint_dir=str(ckpt)).fit(
            short_dataset, callbacks=[KillAtEpochEnd(3)]
        )
    assert sorted(os.listdir(ckpt)) == ["member0", "member1"]
    counter = CountEpochs()
    resumed = small_hist(demo, **ENSEMBLE, ensemble=2, checkpoint_dir=str(ckpt))
    resumed.fit(short_dataset, callbacks=[counter])
    assert counter.epochs == 1, "member 0 is finished and member 1 has one epoch left"
    np.testing.assert_array_equal(
        resumed.predict(short_dataset, "test").to_numpy(), reference.predict(short_dataset, "test").to_numpy()
    )


def test_ensemble_of_one_is_the_plain_model(demo):
    model = small_hist(demo, **ENSEMBLE, ensemble=1)
    assert not isinstance(model.HIST_model, SeedEnsemble) and set(model.__getstate__()["HIST_model"]) == set(
        model.HIST_model.state_dict()
    )
