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
    """A trial whose valid IC peaks at lr = 1e-4 and rises by epoch. With ``ctx["stop"]`` the first trial to reach
    epoch 2 stops the search as Ctrl+C would (SIGUSR1 to the driver, which Tune handles alike)."""
    import os
    import signal
    import time
    from pathlib import Path

    from ray import tune

    lr, stop = search.trial_params(config)["lr"], config["ctx"].get("stop")
    for epoch in range(1, 7):
        ic = 0.08 - 0.01 * abs(math.log10(lr) + 4) + 0.001 * epoch
        tune.report({"epoch": epoch, "valid_ic": ic, "valid_rank_ic": 0.0, search.METRIC: ic, "best_epoch": epoch})
        if stop and epoch == 2 and not Path(stop["marker"]).exists():
            Path(stop["marker"]).write_text("stopped")
            os.kill(stop["driver"], signal.SIGUSR1)
            time.sleep(10)  # the driver stops this trial meanwhile


def _search_args(tmp_path, trials):
    return argparse.Namespace(
        cache_dir=str(tmp_path / "cache"),
        results_dir=str(tmp_path / "results"),
        threads=1,
        trials=trials,
        concurrent=2,
        seed=0,
    )


SETUP = {"provider": "data", "max_epochs": search.MAX_EPOCHS}


@pytest.mark.slow
def test_search_runs_restores_resumes_from_its_records_and_writes_the_choice_on_valid(tmp_path):
    """The search's driver runs in a child process (:func:`_search_scenario`): the stand-in's stop signal goes to
    it, never to pytest."""
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    code = (
        f"import sys, pathlib; sys.path[:0] = {[str(here.parents[1]), str(here)]!r}; import test_search; "
        f"test_search._search_scenario(pathlib.Path({str(tmp_path)!r}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=here.parents[1], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}"
    assert "SCENARIO PASSED" in proc.stdout


def _search_scenario(tmp_path) -> None:
    """The search runs, is stopped (SIGUSR1 to this process, the driver, as Ctrl+C would be), restores, resumes
    from its records and writes the choice on valid; run by the test above in a child process."""
    import os
    import shutil
    import sys

    import ray
    from ray import cloudpickle

    from benchmarks.search_records import load_records, records_dir

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    search.run_trial = _stand_in
    directory = records_dir(tmp_path / "results")
    experiment = search.experiment_path(_search_args(tmp_path, 4))
    ctx = {"stop": {"marker": str(tmp_path / "stopped"), "driver": os.getpid()}}
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        # stopped (Ctrl+C) while a trial runs: the experiment stays, the cut trial's record says so
        assert search.run_search(_search_args(tmp_path, 4), ctx, SETUP) is False
        assert experiment.is_dir() and (tmp_path / "stopped").exists()
        cut = [r for r in load_records(directory, SETUP) if r["status"] == "running"]
        assert cut and all(r["history"] for r in cut)
        # the same command, --trials raised: the experiment is restored and run to its end (the cut trials'
        # records continue to "finished"), then removed, and a new one runs the 2 trials still missing
        assert search.run_search(_search_args(tmp_path, 6), ctx, SETUP) is True
        records = load_records(directory, SETUP)
        assert len(records) == 6 and all(r["status"] == "finished" for r in records)
        assert {r["trial"] for r in cut} <= {r["trial"] for r in records} and not experiment.exists()
        rows = search.trial_table(records)
        assert rows == sorted(rows, key=lambda r: -r[search.METRIC])
        assert all(r["epochs"] in (2, 4, 6) and set(PARAMS) <= set(r) for r in rows)  # ASHA cuts at 2, 4 or not
        # a new machine: no Ray experiment, only the records; one of them was cut by a stop
        shutil.rmtree(tmp_path / "cache", ignore_errors=True)
        dropped = directory / f"{rows[-1]['trial']}.json"
        dropped.write_text(json.dumps({**json.loads(dropped.read_text()), "status": "running"}))
        assert search.new_tuner(_search_args(tmp_path, 5), ctx, SETUP) is None  # 5 finished: none due
        assert not dropped.exists()  # the cut trial's record is dropped
        assert search.run_search(_search_args(tmp_path, 8), ctx, SETUP) is True  # runs the 3 still missing
        records = load_records(directory, SETUP)
    finally:
        ray.shutdown()
    assert len(records) == 8 and all(r["status"] == "finished" for r in records)
    assert {r["trial"] for r in rows[:5]} < {r["trial"] for r in records}
    rows = search.trial_table(records)
    weights = search.importances(rows)  # 8 trials: TPE's picks depend on which trial ends first, so no ranking here
    assert set(weights) == set(search.space()) and sum(weights.values()) == pytest.approx(1.0)
    choice = search.write_report(rows, weights, tmp_path)
    assert choice == rows[0] and json.loads((tmp_path / "search_choice.json").read_text())["trial"] == rows[0]["trial"]
    text = (tmp_path / "search.md").read_text()
    assert "fixed before any test score" in text and text.count("\n| ") >= len(rows) + len(weights)
    print("SCENARIO PASSED")


def test_a_cut_search_of_another_results_folder_or_setup_is_not_restored(tmp_path):
    from benchmarks.search_records import RecordError

    args = _search_args(tmp_path, 4)
    search.experiment_owner(args).parent.mkdir(parents=True)
    search.experiment_owner(args).write_text(json.dumps(search._owner(args, SETUP)))
    search.check_experiment(args, SETUP)  # its own: restored
    elsewhere = argparse.Namespace(**{**vars(args), "results_dir": str(tmp_path / "other")})
    for other_args, other_setup in ((elsewhere, SETUP), (args, {**SETUP, "max_epochs": 8})):
        with pytest.raises(RecordError, match="a cut search of another setup or --results-dir"):
            search.check_experiment(other_args, other_setup)


def _record(trial, scores, status="finished"):
    history = [
        {"epoch": e, "valid_ic": v, "valid_rank_ic": 0.0, search.METRIC: v, "best_epoch": e}
        for e, v in enumerate(scores, 1)
    ]
    return {"trial": trial, "setup": SETUP, "params": dict(PARAMS), "status": status, "history": history}


def test_asha_seeded_with_past_trials_stops_a_new_one_below_their_rung():
    """The past trials' epoch-4 scores enter ASHA's first rung, so a new trial below its top half stops there, one
    above continues; a scheduler without a past lets both on. This also pins the Ray internals it writes to."""
    from ray.tune.schedulers import TrialScheduler

    class Trial:
        def __init__(self, trial_id):
            self.trial_id = trial_id

    past = [_record(f"past{i}", [0.05 + 0.01 * i] * 4) for i in range(4)]  # epoch 4: 0.05 .. 0.08
    for seeded, expected in ((True, TrialScheduler.STOP), (False, TrialScheduler.CONTINUE)):
        scheduler = search.asha()
        if seeded:
            search.seed_rungs(scheduler, past)
        low, high = Trial("low"), Trial("high")
        for trial in (low, high):
            scheduler.on_trial_add(None, trial)
        assert scheduler.on_trial_result(None, low, {"epoch": 4, search.METRIC: 0.055}) == expected
        assert scheduler.on_trial_result(None, high, {"epoch": 4, search.METRIC: 0.09}) == TrialScheduler.CONTINUE


def test_the_report_keeps_the_starting_weights_score_when_no_epoch_beats_it():
    """Under keep_start early stopping holds the starting weights as epoch -1: the trial's score is theirs."""
    from types import SimpleNamespace

    reports = []
    trainer = SimpleNamespace(stopper=SimpleNamespace(best_score=0.0774, best_epoch=-1))
    search.ReportValidIC(reports.append).on_epoch_end(trainer, {"epoch": 0, "valid_ic": 0.07, "valid_rank_ic": 0.06})
    assert reports == [{"epoch": 1, "valid_ic": 0.07, "valid_rank_ic": 0.06, search.METRIC: 0.0774, "best_epoch": 0}]


def test_trial_records_follow_a_trial_from_its_first_epoch_to_its_end(tmp_path):
    from types import SimpleNamespace

    from benchmarks.search_records import load_records

    callback = search.TrialRecords(tmp_path, SETUP)
    trial = SimpleNamespace(trial_id="t1", config={"params": dict(PARAMS), "ctx": {"provider_uri": "/abs"}})
    for epoch, ic in ((1, 0.07), (2, 0.08), (2, 0.08)):  # a repeated epoch (a restored trial) is kept once
        result = {"epoch": epoch, "valid_ic": ic, "valid_rank_ic": 0.0, search.METRIC: ic, "best_epoch": epoch}
        callback.on_trial_result(0, [], trial, {**result, "time_total_s": 1.0})
    (running,) = load_records(tmp_path, SETUP)
    assert running["status"] == "running" and [r["epoch"] for r in running["history"]] == [1, 2]
    assert running["params"] == PARAMS and "ctx" not in running  # no machine path in a committed file
    callback.on_trial_complete(0, [], trial)
    (done,) = load_records(tmp_path, SETUP)
    assert done["status"] == "finished" and search.trial_table([done])[0]["epochs"] == 2


def test_records_of_another_setup_or_malformed_ones_are_refused_by_name(tmp_path, capsys):
    from benchmarks.search_records import RecordError, load_records, records_dir, write_record

    directory = records_dir(tmp_path)
    write_record(directory, _record("a", [0.07]))
    with pytest.raises(RecordError, match=r"a\.json: made by a search with another setup \(max_epochs differ"):
        load_records(directory, {**SETUP, "max_epochs": 8})
    (directory / "b.json").write_text('{"trial": "b"}')
    with pytest.raises(RecordError, match=r"b\.json: not a trial record \(missing"):
        load_records(directory)
    (directory / "b.json").write_text("{")
    with pytest.raises(RecordError, match=r"b\.json: not a readable trial record"):
        load_records(directory)
    with pytest.raises(SystemExit) as exit_:  # the command refuses them before building anything
        search.main(["--report", "--results-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache")])
    assert exit_.value.code == 2 and "a.json: made by a search with another setup" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_report_from_records_alone_writes_the_choice(tmp_path, capsys):
    """--report needs no Ray experiment: a fresh clone rebuilds the table and the choice from the records."""
    from benchmarks.search_records import records_dir, write_record

    args = ["--results-dir", str(tmp_path), "--provider-uri", "p", "--model-path", "m.pkl"]
    setup = search.search_setup(search_args(args))
    for i, scores in enumerate(([0.07, 0.075], [0.07, 0.08, 0.08], [0.06])):
        write_record(records_dir(tmp_path), {**_record(f"t{i}", scores), "setup": setup})
    write_record(records_dir(tmp_path), {**_record("t9", [0.09]), "setup": setup, "status": "error"})
    assert search.main(["--report", *args]) == 0
    choice = json.loads((tmp_path / "search_choice.json").read_text())
    assert choice["trial"] == "t1" and choice[search.METRIC] == 0.08 and choice["epochs"] == 3  # errors: no row
    assert "3 trials; chosen (valid IC 0.0800 on seed 0): t1" in capsys.readouterr().out
    assert "(none yet: the trials' scores do not vary)" in (tmp_path / "search.md").read_text()  # one setting


def search_args(argv):
    """The parsed arguments ``benchmarks.search.main`` would see (its defaults for the rest)."""
    return argparse.Namespace(
        provider_uri=argv[argv.index("--provider-uri") + 1],
        market="csi300",
        model_path=argv[argv.index("--model-path") + 1],
    )


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


def test_the_report_shows_the_importances_among_the_warm_trials_beside_all(tmp_path):
    rows = [
        {**PARAMS, "hidden_size": width, "lr": lr, search.METRIC: score, "best_epoch": 1, "epochs": 2, "trial": name}
        for name, width, lr, score in (("a", 64, 1e-4, 0.08), ("b", 128, 1e-4, 0.03), ("c", 64, 1e-3, 0.07))
    ]
    assert [row["trial"] for row in search.warm_rows(rows)] == ["a", "c"]
    weights = {name: 1.0 if name == "hidden_size" else 0.0 for name in search.space()}
    warm = {name: 1.0 if name == "lr" else 0.0 for name in search.space()}
    search.write_report(rows, weights, tmp_path, warm_weights=warm)
    text = (tmp_path / "search.md").read_text()
    assert "| setting | all 3 trials | 64-wide trials (warm, 2) |" in text
    assert "| hidden_size | 1.000 | 0.000 |" in text and "| lr | 0.000 | 1.000 |" in text
    search.write_report(rows, weights, tmp_path)  # without warm weights: one column
    assert "| hidden_size | 1.000 |\n" in (tmp_path / "search.md").read_text()


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


def test_asha_seeded_past_fills_the_later_rungs_and_takes_the_first_epoch_past_a_gap():
    """A past trial's score enters each rung (4, 8, 16) at the first epoch that reaches it, also where its history
    skips the rung's own epoch; a new trial below the past's top half at epoch 8 is stopped there."""
    from ray.tune.schedulers import TrialScheduler

    class Trial:
        def __init__(self, trial_id):
            self.trial_id = trial_id

    past = []
    for i in range(4):  # epochs 1-3, 5-16 (no epoch 4): 0.05 + 0.01 i until epoch 7, 0.06 + 0.01 i from epoch 8
        record = _record(f"past{i}", [0.05 + 0.01 * i] * 7 + [0.06 + 0.01 * i] * 9)
        record["history"] = [row for row in record["history"] if row["epoch"] != 4]
        past.append(record)
    scheduler = search.asha()
    search.seed_rungs(scheduler, past)
    rungs = {milestone: dict(recorded) for milestone, recorded in scheduler._brackets[0]._rungs}
    assert set(rungs) >= {4, 8, 16}
    assert rungs[4]["past1"] == pytest.approx(0.06) and rungs[8]["past1"] == pytest.approx(0.07)  # epoch 5, epoch 8
    assert rungs[16]["past3"] == pytest.approx(0.09)
    new = Trial("new")
    scheduler.on_trial_add(None, new)
    assert scheduler.on_trial_result(None, new, {"epoch": 4, search.METRIC: 0.09}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, new, {"epoch": 8, search.METRIC: 0.065}) == TrialScheduler.STOP


def test_a_restored_experiments_callback_continues_the_record_on_disk(tmp_path):
    """A restored experiment's callback is the one pickled when the search began (no record in it): a trial's next
    epoch is added to its stored history; a stored record of other params is refused by name."""
    from types import SimpleNamespace

    from benchmarks.search_records import RecordError, load_records

    trial = SimpleNamespace(trial_id="t1", config={"params": dict(PARAMS)})
    before = search.TrialRecords(tmp_path, SETUP)
    for epoch in (1, 2):
        result = {"epoch": epoch, "valid_ic": 0.07, "valid_rank_ic": 0.0, search.METRIC: 0.07, "best_epoch": epoch}
        before.on_trial_result(0, [], trial, result)
    restored = search.TrialRecords(tmp_path, SETUP)
    result = {"epoch": 3, "valid_ic": 0.08, "valid_rank_ic": 0.0, search.METRIC: 0.08, "best_epoch": 3}
    restored.on_trial_result(0, [], trial, result)
    restored.on_trial_complete(0, [], trial)
    (record,) = load_records(tmp_path, SETUP, search.param_problems)
    assert [row["epoch"] for row in record["history"]] == [1, 2, 3] and record["status"] == "finished"
    other = SimpleNamespace(trial_id="t1", config={"params": dict(PARAMS, lr=2e-4)})
    with pytest.raises(RecordError, match=r"t1\.json: a record of another search or trial"):
        search.TrialRecords(tmp_path, SETUP).on_trial_result(0, [], other, result)


def test_a_score_that_is_not_finite_is_stored_as_null_and_is_never_the_past_or_the_choice(tmp_path):
    from types import SimpleNamespace

    from benchmarks.search_records import finished, load_records

    callback = search.TrialRecords(tmp_path, SETUP)
    trial = SimpleNamespace(trial_id="flat", config={"params": dict(PARAMS)})
    result = {"epoch": 1, "valid_ic": float("nan"), "valid_rank_ic": float("nan"), "best_epoch": 1}
    callback.on_trial_result(0, [], trial, {**result, search.METRIC: float("-inf")})
    callback.on_trial_complete(0, [], trial)
    text = (tmp_path / "flat.json").read_text()
    assert "NaN" not in text and "Infinity" not in text and json.loads(text)["history"][0][search.METRIC] is None
    (record,) = load_records(tmp_path, SETUP)
    assert finished([record]) == [] and search.trial_table([record]) == []


def test_the_setup_names_data_and_pretrained_file_without_a_machine_path(tmp_path):
    """Two machines with the same data and file under other paths share a setup; another file does not."""
    setups = []
    for machine in ("a", "b"):
        provider = tmp_path / machine / "data" / "cn_csi300"
        (provider / "calendars").mkdir(parents=True)
        (provider / "calendars" / "day.txt").write_text("2010-01-04\n2010-01-05\n2022-12-30\n")
        (tmp_path / machine / "lstm.pkl").write_bytes(b"weights")
        args = argparse.Namespace(
            provider_uri=str(provider), market="csi300", model_path=f"{tmp_path}/{machine}/lstm.pkl"
        )
        setups.append(search.search_setup(args))
    assert setups[0] == setups[1] and setups[0]["provider"] == "cn_csi300 2010-01-04..2022-12-30"
    assert str(tmp_path) not in json.dumps(setups[0]) and setups[0]["model"].startswith("lstm.pkl sha256:")
    (tmp_path / "b" / "lstm.pkl").write_bytes(b"other weights")
    assert search.search_setup(args)["model"] != setups[0]["model"]
    assert search.search_setup(argparse.Namespace(**{**vars(args), "model_path": "missing.pkl"}))["model"] == "none"
    assert setups[0]["space"]["lr"]["attributes"]["low"] == 2e-05  # the space's ranges, not its names only


@pytest.mark.parametrize(
    "change, message",
    [
        ({"params": dict(PARAMS, keep_start=1)}, r"t\.json: params keep_start = 1 is not one of the searched"),
        ({"params": dict(PARAMS, lr=0.5)}, r"t\.json: params lr = 0\.5 is not a number in the searched"),
        ({"params": {k: v for k, v in PARAMS.items() if k != "loss"}}, r"t\.json: params 'loss' is missing"),
        ({"trial": "other"}, r"t\.json: holds trial 'other', not 't'"),
        ({"setup": "data"}, r"t\.json: setup must be a mapping"),
    ],
)
def test_a_record_outside_the_space_or_under_another_name_is_refused(tmp_path, change, message):
    from benchmarks.search_records import RecordError, load_records

    (tmp_path / "t.json").write_text(json.dumps({**_record("t", [0.07]), **change}))
    with pytest.raises(RecordError, match=message):
        load_records(tmp_path, None, search.param_problems)


def _row(trial, score, **params):
    return {**PARAMS, **params, search.METRIC: score, "best_epoch": 3, "epochs": 6, "trial": trial}


def test_the_confirmation_refits_the_best_trials_with_the_seeds_still_missing():
    rows = [_row("a", 0.080), _row("b", 0.079, lr=2e-4), _row("c", 0.070)]
    runs = search.confirm_runs(rows, 2, [1, 2], done={"a_seed2"})
    assert [(run["source"], run["seed"]) for run in runs] == [("a", 1), ("b", 1), ("b", 2)]
    assert runs[2]["params"] == dict(PARAMS, lr=2e-4)  # the settings alone: no score, no id
    assert search.run_name({"run": runs[0]}, "ray-id") == "a_seed1" and search.run_name({}, "ray-id") == "ray-id"


def test_the_confirmed_choice_is_the_best_mean_over_seeds_not_the_luckiest_seed(tmp_path, capsys):
    """Trial a leads on seed 0 by luck; b leads on the mean of seeds 0-2: the report chooses b."""
    from benchmarks.search_records import RecordError, load_records, records_dir, write_record

    args = ["--results-dir", str(tmp_path), "--provider-uri", "p", "--model-path", "m.pkl"]
    setup = search.search_setup(search_args(args))
    for trial, score, lr in (("a", 0.081, 1e-4), ("b", 0.080, 2e-4), ("c", 0.070, 3e-4)):
        record = {**_record(trial, [0.07, score]), "setup": setup, "params": dict(PARAMS, lr=lr)}
        write_record(records_dir(tmp_path), record)
    confirm = search.confirm_dir(tmp_path)
    for trial, seed, score, lr in (("a", 1, 0.076, 1e-4), ("a", 2, 0.077, 1e-4), ("b", 1, 0.0795, 2e-4)):
        record = {**_record(f"{trial}_seed{seed}", [score]), "setup": setup, "params": dict(PARAMS, lr=lr)}
        write_record(confirm, {**record, "source": trial, "seed": seed})
    with pytest.raises(SystemExit) as exit_:  # b's seed 2 is missing: no choice is written
        search.main(["--report", "--confirm", "2", *args])
    assert exit_.value.code == 2 and "the confirmation lacks b_seed2" in capsys.readouterr().err
    assert not (tmp_path / "search_choice.json").exists()
    record = {**_record("b_seed2", [0.0805]), "setup": setup, "params": dict(PARAMS, lr=2e-4)}
    write_record(confirm, {**record, "source": "b", "seed": 2})
    assert search.main(["--report", "--confirm", "2", *args]) == 0
    choice = json.loads((tmp_path / "search_choice.json").read_text())
    assert choice["trial"] == "b" and choice["confirmed"]["seeds"] == [0, 1, 2]
    assert choice["confirmed"]["mean"] == pytest.approx((0.080 + 0.0795 + 0.0805) / 3)
    assert choice["confirmed"]["std"] == pytest.approx(0.0005)
    text = (tmp_path / "search.md").read_text()
    assert "best mean valid IC over seeds 0, 1, 2 among the 2 best trials" in text
    assert "| a | 0.0810 | 0.0760 | 0.0770 | 0.0780 ± 0.0026 |" in text
    assert search.main(["--report", *args]) == 0  # without --confirm: one seed's best, said so
    assert json.loads((tmp_path / "search_choice.json").read_text())["trial"] == "a"
    rows = search.trial_table(load_records(records_dir(tmp_path), setup))
    with pytest.raises(RecordError, match=r"the confirmation lacks c_seed1, c_seed2: run the search with --confirm 3"):
        search.confirmed(rows, load_records(confirm, setup), 3, [1, 2])


@pytest.mark.parametrize(
    "argv",
    [
        ["--confirm", "-1"],
        ["--confirm", "2", "--confirm-seeds", "0", "1"],
        ["--confirm", "2", "--confirm-seeds", "1", "1"],
    ],
)
def test_a_confirmation_without_new_distinct_seeds_is_a_usage_error(argv, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        search.main([*argv, "--report", "--results-dir", str(tmp_path)])
    assert exit_.value.code == 2 and "--confirm-seeds distinct seeds other than 0" in capsys.readouterr().err


def test_the_confirmation_runs_write_one_record_per_trial_and_seed(tmp_path, monkeypatch):
    import sys

    import ray
    from ray import cloudpickle

    from benchmarks.search_records import load_records, records_dir, write_record

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(search, "run_trial", _stand_in)
    for trial, score, lr in (("a", 0.081, 1e-4), ("b", 0.080, 2e-4)):
        record = {**_record(trial, [score]), "params": dict(PARAMS, lr=lr)}
        write_record(records_dir(tmp_path / "results"), record)
    args = argparse.Namespace(**{**vars(_search_args(tmp_path, 2)), "confirm": 2, "confirm_seeds": [1, 2]})
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        search.run_confirm(args, {}, SETUP)
    finally:
        ray.shutdown()
    records = load_records(search.confirm_dir(tmp_path / "results"), SETUP, search.param_problems)
    assert sorted((r["trial"], r["source"], r["seed"]) for r in records) == [
        ("a_seed1", "a", 1),
        ("a_seed2", "a", 2),
        ("b_seed1", "b", 1),
        ("b_seed2", "b", 2),
    ]
    assert all(r["status"] == "finished" and len(r["history"]) == 6 for r in records)  # no ASHA: every epoch
    assert not (tmp_path / "cache" / "search_ray" / search.CONFIRM).exists()
