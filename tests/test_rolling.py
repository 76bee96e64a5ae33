"""Rolling retraining through qlib's machinery (``qlib_hist.qlib_edge.rolling``) on the demo provider.

Two windows of 60 test days: train 2016-04-01.., valid ..2016-10-31 (truncated before each test start), test
2016-11-01..2017-03-24, the demo calendar's last day (the second window is open-ended). Each run trains
one-epoch GRU HISTs; the module's runs share the demo provider.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from qlib_hist import HIST
from qlib_hist.cli import main
from qlib_hist.qlib_edge.rolling import (
    EPOCHS_TAG,
    FIT_SECONDS_TAG,
    START_TAG,
    TEST_START_TAG,
    WARM_FROM_TAG,
    HISTRolling,
    RollingError,
    label_lookahead,
    online_manager,
    run_rolling,
)

DEMO_YAML = Path(__file__).parents[1] / "qlib_hist" / "configs" / "workflow_config_hist_demo.yaml"
SEGMENTS = {
    "train": ["2016-04-01", "2016-08-31"],
    "valid": ["2016-09-01", "2016-10-31"],
    "test": ["2016-11-01", "2017-03-24"],
}
STEP = 60  # two windows; the second runs past the calendar's end (2017-03-24): open-ended, clipped
TINY = dict(hidden_size=8, num_layers=1, base_model="GRU", n_epochs=1, finetune_epochs=1, GPU=-1, seed=0)


def write_workflow(directory: Path, provider: Path, membership: Path, analysis: bool = False, **model) -> Path:
    """The demo workflow as a rolling workflow in ``directory`` (its own sqlite store); ``analysis`` keeps the
    backtest and the explain record (the merged run must skip the latter)."""
    config = yaml.safe_load(DEMO_YAML.read_text())
    config["qlib_init"].update(provider_uri=str(provider), kernels=1)
    config["qlib_init"]["exp_manager"]["kwargs"]["uri"] = f"sqlite:///{directory / 'mlruns.db'}"
    task = config["task"]
    task["model"]["kwargs"].update(TINY, stock2concept=str(membership), **model)
    task["dataset"]["kwargs"]["segments"] = SEGMENTS
    records = task["record"]
    for record in records:
        if record["class"] == "PortAnaRecord":
            record["kwargs"]["config"]["backtest"].update(start_time="2016-11-01", end_time="2016-12-28")
    if not analysis:
        task["record"] = [r for r in records if r["class"] in ("SignalRecord", "SigAnaRecord")]
    path = directory / "rolling.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def init_store(workflow: Path) -> None:
    import qlib

    qlib.init(**yaml.safe_load(workflow.read_text())["qlib_init"])


def windows(experiment: str) -> list:
    """Finished window recorders of ``experiment``, by test start."""
    from qlib.workflow import R

    recorders = R.get_exp(experiment_name=experiment, create=False).list_recorders(rtype="list", status="FINISHED")
    return sorted(recorders, key=lambda r: r.list_tags()[TEST_START_TAG])


def weights(recorder) -> dict:
    return recorder.load_object("params.pkl").HIST_model.state_dict()


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


class Calls:
    """Counts HIST.fit / HIST.finetune calls; ``stop_finetune`` makes finetune fail as a killed run would."""

    def __init__(self, monkeypatch, stop_finetune: bool = False) -> None:
        self.fit = self.finetune = 0
        fit, finetune = HIST.fit, HIST.finetune

        def counted_fit(model, *args, **kwargs):
            self.fit += 1
            return fit(model, *args, **kwargs)

        def counted_finetune(model, *args, **kwargs):
            self.finetune += 1
            if stop_finetune:
                raise RuntimeError("stopped")  # as a killed run: window 2 never finishes
            return finetune(model, *args, **kwargs)

        monkeypatch.setattr(HIST, "fit", counted_fit)
        monkeypatch.setattr(HIST, "finetune", counted_finetune)


@pytest.fixture(scope="module")
def warm_run(demo, tmp_path_factory):
    """``qlib-hist rolling`` with warm start at ``finetune_lr=0`` (so a warm window must hold its predecessor's exact
    weights), stopped in window 2, then resumed, then run again."""
    directory = tmp_path_factory.mktemp("warm")
    workflow = write_workflow(directory, demo.provider_uri, demo.membership, analysis=True, finetune_lr=0.0)
    argv = ["rolling", str(workflow), "--step", str(STEP), "--experiment", "warm"]
    with pytest.MonkeyPatch.context() as patch:
        stopped = Calls(patch, stop_finetune=True)
        with pytest.raises(RuntimeError, match="stopped"):
            main(argv)
    with pytest.MonkeyPatch.context() as patch:
        resumed = Calls(patch)
        assert main(argv) == 0
    with pytest.MonkeyPatch.context() as patch:
        again = Calls(patch)
        assert main(argv) == 0
    init_store(workflow)
    return dict(workflow=workflow, stopped=stopped, resumed=resumed, again=again, windows=windows("warm_windows"))


@pytest.fixture(scope="module")
def cold_run(demo, tmp_path_factory):
    directory = tmp_path_factory.mktemp("cold")
    workflow = write_workflow(directory, demo.provider_uri, demo.membership, n_epochs=2)
    init_store(workflow)
    scratch = tmp_path_factory.mktemp("scratch")  # the system's temporary folder, as the run sees it
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(scratch))
        merged = HISTRolling(workflow, step=STEP, warm=False, exp_name="cold").run()
    leftover = sorted(str(p.relative_to(scratch)) for p in scratch.rglob("*"))
    return dict(workflow=workflow, merged=merged, windows=windows("cold_windows"), leftover=leftover)


def test_a_rolling_run_leaves_nothing_in_the_temporary_folder(cold_run):
    """qlib's ``Recorder.load_object`` copies each artifact it loads (every window's pred.pkl, label.pkl, params.pkl
    and the analysis records' reads) into a fresh temporary folder it never removes."""
    assert cold_run["leftover"] == []


def test_the_windows_slide_with_their_processors(cold_run):
    tasks = [w.load_object("task") for w in cold_run["windows"]]
    assert len(tasks) == 2
    for task in tasks:
        segments = task["dataset"]["kwargs"]["segments"]
        handler = task["dataset"]["kwargs"]["handler"]["kwargs"]
        assert (handler["fit_start_time"], handler["fit_end_time"]) == segments["train"]  # qlib issue #1620
        assert handler["start_time"] == segments["train"][0] and handler["end_time"] == segments["test"][1]
        provider = Path(yaml.safe_load(cold_run["workflow"].read_text())["qlib_init"]["provider_uri"])
        calendar = pd.DatetimeIndex(pd.read_csv(provider / "calendars" / "day.txt", header=None)[0])
        gap = calendar.get_loc(segments["test"][0]) - calendar.get_loc(segments["valid"][1])
        assert gap == 3  # trunc_days = the label's 2 days of look-ahead + 1
    first, second = (t["dataset"]["kwargs"]["segments"] for t in tasks)
    assert second["test"][0] > first["test"][1]
    assert second["test"][1] is None  # past the calendar: open-ended, the merged signal clips it


def test_warm_start_begins_from_the_previous_window(warm_run):
    first, second = warm_run["windows"]
    assert first.list_tags()[START_TAG] == "cold" and second.list_tags()[START_TAG] == "warm"
    assert second.list_tags()[WARM_FROM_TAG] == first.info["id"]
    assert same(weights(first), weights(second))  # finetune_lr = 0: nothing moved from the loaded weights
    # each window tags the epochs it trained itself (the warm one: its finetune's, not the loaded model's too)
    assert [w.list_tags()[EPOCHS_TAG] for w in warm_run["windows"]] == ["1", "1"]


def test_cold_windows_start_from_scratch(cold_run):
    first, second = cold_run["windows"]
    assert first.list_tags()[START_TAG] == second.list_tags()[START_TAG] == "cold"
    assert not same(weights(first), weights(second))


def test_a_stopped_run_resumes_at_the_first_unfinished_window(warm_run):
    assert (warm_run["stopped"].fit, warm_run["stopped"].finetune) == (1, 1)  # window 1 done, window 2 killed
    assert (warm_run["resumed"].fit, warm_run["resumed"].finetune) == (0, 1)  # only window 2, warm
    assert (warm_run["again"].fit, warm_run["again"].finetune) == (0, 0)  # nothing left to train
    assert len(warm_run["windows"]) == 2


def test_the_merged_signal_holds_each_test_day_once(cold_run):
    merged = cold_run["merged"]
    pred = merged.load_object("pred.pkl")
    assert not pred.index.duplicated().any()
    days = pred.index.get_level_values("datetime").unique()
    assert days.min() == pd.Timestamp(SEGMENTS["test"][0]) and days.max() == pd.Timestamp(SEGMENTS["test"][1])
    covered = 0
    for window in cold_run["windows"]:
        start, end = window.load_object("task")["dataset"]["kwargs"]["segments"]["test"]
        own = window.load_object("pred.pkl").loc[start:end].loc[: SEGMENTS["test"][1]]  # the last is clipped
        assert len(own) and own.index.isin(pred.index).all()
        pd.testing.assert_frame_equal(pred.loc[own.index], own)
        covered += len(own)
    assert covered == len(pred)
    metrics = merged.list_metrics()
    assert np.isfinite(metrics["IC"]) and metrics["fit_seconds_total"] > 0
    assert [w.list_tags()[EPOCHS_TAG] for w in cold_run["windows"]] == ["2", "2"]  # n_epochs=2, no early stop
    assert metrics["epochs_total"] == 4
    assert all(float(w.list_tags()[FIT_SECONDS_TAG]) > 0 for w in cold_run["windows"])


def test_the_merged_recorder_runs_the_workflow_analysis(warm_run):
    from qlib.workflow import R

    init_store(warm_run["workflow"])
    recorders = R.get_exp(experiment_name="warm", create=False).list_recorders(rtype="list", status="FINISHED")
    assert len(recorders) == 2  # one per completed run (the stopped one merged nothing)
    metrics = recorders[0].list_metrics()
    assert "IC" in metrics and "1day.excess_return_with_cost.annualized_return" in metrics
    assert recorders[0].list_params()["start"] == "warm"


def test_no_look_ahead_prices_after_a_window_leave_its_model_unchanged(demo, cold_run, tmp_path):
    """Every price from the day after window 1's test start on is changed: window 1's model (two epochs, so that
    valid picks one; labels up to 3 days before that test start, processors fitted on its train segment) is
    bit-identical, while the scores computed from the changed prices do change."""
    provider = tmp_path / "provider"
    shutil.copytree(demo.provider_uri, provider)
    calendar = pd.DatetimeIndex(pd.read_csv(provider / "calendars" / "day.txt", header=None)[0])
    first_test = cold_run["windows"][0].load_object("task")["dataset"]["kwargs"]["segments"]["test"][0]
    cut = calendar.get_loc(pd.Timestamp(first_test)) + 1
    rng = np.random.default_rng(0)
    for stock in (provider / "features").iterdir():
        for field in ("open", "close", "high", "low", "vwap", "volume"):
            path = stock / f"{field}.day.bin"
            data = np.fromfile(path, dtype="<f4")
            start = int(data[0])
            values = data[1:]
            first = max(cut - start, 0)
            values[first:] *= rng.uniform(0.5, 1.5, size=len(values) - first).astype("<f4")
            data.tofile(path)
    workflow = write_workflow(tmp_path, provider, demo.membership, n_epochs=2)
    init_store(workflow)
    HISTRolling(workflow, step=STEP, warm=False, exp_name="perturbed").run()
    perturbed = windows("perturbed_windows")
    assert same(weights(perturbed[0]), weights(cold_run["windows"][0]))
    # the changed prices did reach the pipeline: window 1's scores after the cut and window 2's scores differ
    after = slice(calendar[cut], None)
    for changed, reference, days in (
        (perturbed[0], cold_run["windows"][0], after),
        (perturbed[1], cold_run["windows"][1], slice(None)),
    ):
        new, old = changed.load_object("pred.pkl").loc[days], reference.load_object("pred.pkl").loc[days]
        assert len(new) and not np.allclose(new.values, old.values)


def test_online_manager_simulates_a_warm_rolling_routine(demo, tmp_path):
    """qlib's OnlineManager + RollingStrategy + TrainerR: one window first, a second trained (warm) when due."""
    workflow = write_workflow(tmp_path, demo.provider_uri, demo.membership)
    init_store(workflow)
    task = yaml.safe_load(workflow.read_text())["task"]
    task["dataset"]["kwargs"]["segments"]["test"] = ["2016-11-01", "2016-12-12"]
    manager = online_manager(task, "online", step=30, begin_time="2016-11-01")
    signals = manager.simulate(end_time="2016-12-30")
    models = windows("online")
    assert [m.list_tags()[START_TAG] for m in models] == ["cold", "warm"]
    days = signals.index.get_level_values("datetime").unique()
    assert days.min() == pd.Timestamp("2016-11-01") and days.max() >= pd.Timestamp("2016-12-13")
    assert signals.notna().all()


# ---------------------------------------------------------------------------------------------- bad inputs
def test_label_lookahead_reads_the_label():
    task = lambda label: {"dataset": {"kwargs": {"handler": {"kwargs": {"label": label}}}}}  # noqa: E731
    assert label_lookahead(task(["Ref($close, -2) / Ref($close, -1) - 1"])) == 2
    assert label_lookahead(task((["Ref(Mean($close, 5), -6) / $close - 1"], ["LABEL0"]))) == 6
    assert label_lookahead({"dataset": {"kwargs": {"handler": {"class": "Alpha360"}}}}) == 2


def test_a_rolling_run_is_set_up_before_qlib_starts(demo, tmp_path):
    """``run_rolling`` (``qlib-hist rolling``) checks the workflow before ``qlib.init``: building ``HISTRolling``
    must not need qlib's calendar (a fresh process, since this one has qlib initialised by the other tests)."""
    workflow = write_workflow(tmp_path, demo.provider_uri, demo.membership)
    code = "import sys; from qlib_hist.qlib_edge.rolling import HISTRolling; HISTRolling(sys.argv[1]).basic_task()"
    done = subprocess.run([sys.executable, "-c", code, str(workflow)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["task"]["dataset"]["kwargs"].update(handler="file:///tmp/handler.pkl"), "handler as a config"),
        (lambda c: c["task"]["dataset"]["kwargs"]["segments"].pop("valid"), "segments has no valid"),
    ],
)
def test_bad_workflows_fail_before_training(demo, tmp_path, capsys, edit, message):
    workflow = write_workflow(tmp_path, demo.provider_uri, demo.membership)
    config = yaml.safe_load(workflow.read_text())
    edit(config)
    workflow.write_text(yaml.safe_dump(config))
    assert main(["rolling", str(workflow)]) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(RollingError, match="step must be a positive"):
        run_rolling(workflow, step=0)
