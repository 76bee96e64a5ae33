"""The recipe search (``benchmarks.search``): the space maps to HIST's kwargs, a trial never sees the test segment,
and the Tune/Optuna/ASHA machinery runs, restores and reports — with a stand-in trial in place of a HIST fit."""

from __future__ import annotations

import argparse
import json
import math

import pytest

pytest.importorskip("optuna")
pytest.importorskip("ray.tune")

from benchmarks import search  # noqa: E402

PARAMS = {
    "lr": 1e-4,
    "loss": "mse+ic",
    "weight_decay": 1e-3,
    "dropout": 0.1,
    "hidden_size": 64,
    "concept_weight": True,
    "hidden_topk": 3,
    "predefined_concepts": False,
    "hidden_concepts": True,
    "individual": True,
    "train_start": "2012-01-01",
    "early_stop": 5,
    "keep_start": True,
}


def test_a_trials_dataset_has_no_test_segment_and_starts_at_its_train_start():
    profile = search.trial_profile(PARAMS)
    assert set(profile["segments"]) == {"train", "valid"}
    assert profile["start"] == profile["fit"][0] == profile["segments"]["train"][0] == "2012-01-01"
    assert profile["end"] == profile["segments"]["valid"][1] == "2018-12-31"


def test_trial_kwargs_build_a_hist_and_drop_the_pretrained_file_for_other_widths(tmp_path):
    lstm = tmp_path / "lstm.pkl"
    lstm.write_bytes(b"")
    kwargs = search.trial_kwargs(PARAMS, "membership.csv", str(lstm))
    assert kwargs["model_path"] == str(lstm) and kwargs["concept_weight"] == search.CONCEPT_WEIGHT
    assert kwargs["predefined_concepts"] is False and kwargs["keep_start"] is True and kwargs["n_epochs"] == 20
    assert kwargs["early_stop"] == 5 and kwargs["metric"] == "ic" and kwargs["stock2concept"] == "membership.csv"
    from qlib_hist.settings import HISTSettings

    assert HISTSettings.from_kwargs(**kwargs)[1] == {}  # every kwarg is a HIST setting
    wide = search.trial_kwargs(dict(PARAMS, hidden_size=128, concept_weight=False), "m.csv", str(lstm))
    assert "model_path" not in wide and wide["concept_weight"] is None


def test_every_searched_setting_is_in_the_space():
    assert set(search.space()) == set(PARAMS)


def _stand_in(config):
    """A trial whose valid IC peaks at lr = 1e-4 and rises by epoch."""
    from ray import tune

    lr = config["params"]["lr"]
    for epoch in range(1, 7):
        tune.report(
            {search.METRIC: 0.08 - 0.01 * abs(math.log10(lr) + 4) + 0.001 * epoch, "epoch": epoch, "valid_rank_ic": 0.0}
        )


def test_search_runs_restores_and_writes_the_choice_on_valid(tmp_path, monkeypatch):
    import sys

    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    monkeypatch.setattr(search, "run_trial", _stand_in)
    args = argparse.Namespace(cache_dir=str(tmp_path / "cache"), threads=1, trials=6, concurrent=2, seed=0)
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        rows = search.trial_table(search.tuner(args, {"stand_in": True}).fit())
        assert len(rows) == 6 and rows == sorted(rows, key=lambda r: -r[search.METRIC])
        again = search.trial_table(search.tuner(args, {"stand_in": True}).fit())  # restored: no new trial
        assert sorted(r["trial"] for r in again) == sorted(r["trial"] for r in rows)
    finally:
        ray.shutdown()
    weights = search.importances(rows)  # 6 trials: TPE's picks depend on which trial ends first, so no ranking here
    assert set(weights) == set(search.space()) and sum(weights.values()) == pytest.approx(1.0)
    choice = search.write_report(rows, weights, tmp_path)
    assert choice == rows[0] and json.loads((tmp_path / "search_choice.json").read_text())["trial"] == rows[0]["trial"]
    text = (tmp_path / "search.md").read_text()
    assert "fixed before any test score" in text and text.count("\n| ") >= len(rows) + len(weights)


def test_importances_find_the_setting_that_drives_valid_ic():
    """24 seeded random trials whose valid IC depends on lr alone: Optuna's (seeded) fANOVA ranks lr first."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for _ in range(24):
        row = {
            name: dist.choices[rng.integers(len(dist.choices))] for name, dist in search.space().items() if name != "lr"
        }
        row["lr"] = float(10 ** rng.uniform(-4.7, -2.7))
        row[search.METRIC] = 0.08 - 0.01 * abs(math.log10(row["lr"]) + 4)
        rows.append(row)
    weights = search.importances(rows)
    assert max(weights, key=weights.get) == "lr" and weights["lr"] > 0.5


def test_trials_share_a_gpu_by_fraction_and_ask_for_none_by_default():
    args = argparse.Namespace(threads=2, gpus_per_trial=0.125)
    assert search.trial_resources(args) == {"cpu": 2, "gpu": 0.125}
    assert search.trial_resources(argparse.Namespace(threads=1, gpus_per_trial=0)) == {"cpu": 1}


@pytest.mark.parametrize(
    "value, message",
    [("-1", "--gpus-per-trial must be at least 0, got -1"), ("64", "--gpus-per-trial 64: this machine has")],
)
def test_gpus_a_local_ray_cannot_give_are_a_usage_error(value, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        search.main(["--gpus-per-trial", value, "--cache-dir", str(tmp_path)])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "search_ray").exists()  # nothing started
