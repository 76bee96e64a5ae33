"""Dates as qlib writes them: a qrun YAML's unquoted ``2017-01-01`` is a ``datetime.date`` to PyYAML and to ruamel
(qrun's reader), and pandas 3 refuses a ``date`` against a datetime index level (``TypeError: Level type
mismatch``). Every date the package reads from a YAML or a task becomes a ``pd.Timestamp`` where it is read
(``qlib_hist.config_dates``); a bad one is one line naming its key.

End to end on the demo provider: ``qlib-hist rolling`` on a YAML in qlib's date style, first as the unfixed code ran
it (both windows train, then the merge fails), then rerun: the finished windows merge without training again;
``qlib-hist explain`` on the same YAML. The ``demo`` YAML is in qlib's date style too: ``test_workflow`` runs it
end to end through ``qrun``.
"""

from __future__ import annotations

import datetime
import io
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from qlib_hist.cli import main
from qlib_hist.config_dates import ConfigDateError, DateOutOfRange, as_timestamp, config_dates
from qlib_hist.errors import ConfigError

DATE_STYLE_YAML = """\
data_handler_config: &handler
    start_time: 2008-01-01
    end_time: 2020-08-01
    fit_start_time: 2008-01-01
    fit_end_time: 2014-12-31
    instruments: csi300
    label: ["Ref($close, -2) / Ref($close, -1) - 1"]
port_analysis_config: &port
    backtest:
        start_time: 2017-01-01
        end_time: 2020-08-01
        benchmark: SH000300
task:
    model:
        class: HIST
        kwargs: {lr: 1e-4, stock2concept: concepts.csv}
    dataset:
        class: DatasetH
        kwargs:
            handler:
                class: Alpha360
                kwargs: *handler
            segments:
                train: [2008-01-01, 2014-12-31]
                valid: [2015-01-01, 2016-12-31]
                test: [2017-01-01, 2020-08-01]
    record:
        - class: PortAnaRecord
          kwargs:
            config: *port
"""


def _read(text: str, reader: str) -> dict:
    if reader == "pyyaml":
        return yaml.safe_load(text)
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(io.StringIO(text))  # as qrun and qlib's Rolling read a workflow


def _at(config: dict, *keys):
    for key in keys:
        config = config[key]
    return config


SEGMENT_TEST = ("task", "dataset", "kwargs", "segments", "test")
HANDLER_KWARGS = ("task", "dataset", "kwargs", "handler", "kwargs")
BACKTEST = ("task", "record", 0, "kwargs", "config", "backtest")


# ---------------------------------------------------------------------------------------------- reading dates
@pytest.mark.parametrize(
    "value",
    [
        datetime.date(2017, 1, 1),
        datetime.datetime(2017, 1, 1),
        "2017-01-01",
        pd.Timestamp("2017-01-01"),
        np.datetime64("2017-01-01"),
    ],
)
def test_every_spelling_of_a_date_is_a_timestamp(value):
    stamp = as_timestamp(value, "test_end")
    assert type(stamp) is pd.Timestamp and stamp == pd.Timestamp("2017-01-01") and stamp.unit == "ns"
    assert as_timestamp(None, "test_end") is None  # an open end


@pytest.mark.parametrize(
    "value, error, needle",
    [
        ("2017-13-45", ConfigDateError, "expected a date YYYY-MM-DD, got '2017-13-45'"),
        ("soon", ConfigDateError, "got 'soon'"),
        (20170101, ConfigDateError, "got 20170101"),
        ("", ConfigDateError, "got ''"),
        (datetime.date(1, 1, 1), DateOutOfRange, "0001-01-01 is outside the dates pandas can hold (1677-09-22 .."),
        ("0001-01-01", DateOutOfRange, "0001-01-01 is outside the dates pandas can hold"),
        (datetime.date(9999, 12, 31), DateOutOfRange, "9999-12-31 is outside"),
    ],
)
def test_a_bad_date_is_one_line_naming_its_key(value, error, needle):
    with pytest.raises(error) as caught:
        as_timestamp(value, "task.dataset.kwargs.segments.test[1]")
    message = str(caught.value)
    assert message.startswith("task.dataset.kwargs.segments.test[1]: ") and needle in message
    assert "\n" not in message and isinstance(caught.value, ValueError)


@pytest.mark.parametrize("reader", ["pyyaml", "ruamel"])
def test_qlib_style_yaml_dates_become_timestamps(reader):
    raw = _read(DATE_STYLE_YAML, reader)
    assert type(_at(raw, *SEGMENT_TEST)[1]) is datetime.date  # the YAML is in qlib's style: the bug's input
    config = config_dates(raw)
    for keys in (SEGMENT_TEST, ("task", "dataset", "kwargs", "segments", "train")):
        assert all(type(d) is pd.Timestamp for d in _at(config, *keys))
    assert _at(config, *SEGMENT_TEST) == [pd.Timestamp("2017-01-01"), pd.Timestamp("2020-08-01")]
    handler = _at(config, *HANDLER_KWARGS)
    for key in ("start_time", "end_time", "fit_start_time", "fit_end_time"):
        assert type(handler[key]) is pd.Timestamp, key
    assert _at(config, *BACKTEST)["end_time"] == pd.Timestamp("2020-08-01")
    # everything else as read: names, expressions, numbers
    assert handler["instruments"] == "csi300" and handler["label"] == ["Ref($close, -2) / Ref($close, -1) - 1"]
    assert _at(config, "task", "model", "kwargs")["stock2concept"] == "concepts.csv"
    assert _at(raw, *SEGMENT_TEST)[1] == datetime.date(2020, 8, 1)  # the input is left as it was


def test_quoted_dates_are_checked_under_date_keys_only():
    config = config_dates({"segments": {"test": ["2017-01-01", None]}, "start_time": "2016-01-04", "name": "2016"})
    assert config == {
        "segments": {"test": [pd.Timestamp("2017-01-01"), None]},
        "start_time": pd.Timestamp("2016-01-04"),
        "name": "2016",
    }
    with pytest.raises(ConfigDateError, match=r"^wf.yaml: task.segments.valid\[0\]: expected a date YYYY-MM-DD"):
        config_dates({"task": {"segments": {"valid": ["2017-02-30", "2017-03-31"]}}}, source="wf.yaml")
    text = DATE_STYLE_YAML.replace("end_time: 2020-08-01\n        benchmark", "end_time: 0001-01-01\n        benchmark")
    with pytest.raises(DateOutOfRange, match=r"^wf.yaml: port_analysis_config.backtest.end_time: 0001-01-01 is out"):
        config_dates(_read(text, "ruamel"), source="wf.yaml")


def test_a_window_is_named_alike_whatever_spelling_its_dates_had():
    from qlib_hist.qlib_edge.rolling import window_digest

    task = config_dates(_read(DATE_STYLE_YAML, "pyyaml"))["task"]
    as_dates = _read(DATE_STYLE_YAML, "pyyaml")["task"]
    assert window_digest(task, True) == window_digest(as_dates, True)
    assert window_digest(task, True) != window_digest(task, False)


# ---------------------------------------------------------------------------------------------- a dataset's segments
def test_segments_of_dates_select_what_timestamps_select(demo_handler):
    from qlib.data.dataset import DatasetH

    from qlib_hist.qlib_edge.dataset import segment_frame

    from conftest import DEMO_SEGMENTS

    stamps = {k: tuple(pd.Timestamp(d) for d in v) for k, v in DEMO_SEGMENTS.items()}
    dates = {k: tuple(d.date() for d in v) for k, v in stamps.items()}
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*datetime.date.*")  # pandas 3: "Slicing with a datetime.date"
        for segment in ("train", "test"):
            expected = segment_frame(DatasetH(demo_handler, segments=stamps), segment, with_label=True)
            got = segment_frame(DatasetH(demo_handler, segments=dates), segment, with_label=True)
            pd.testing.assert_frame_equal(got, expected)
        sliced = segment_frame(DatasetH(demo_handler, segments=stamps), slice(*dates["test"]), with_label=False)
    assert sliced.index.get_level_values(0).min() == stamps["test"][0] and len(sliced)


# ---------------------------------------------------------------------------------------------- rolling and explain
def _date_style_workflow(directory: Path, demo) -> Path:
    """test_rolling's workflow (the demo YAML, two windows, the backtest) with every date unquoted, as qlib writes
    them: PyYAML and ruamel read them back as ``datetime.date``."""
    from test_rolling import SEGMENTS, write_workflow

    path = write_workflow(directory, demo.provider_uri, demo.membership, analysis=True)
    config = yaml.safe_load(path.read_text())
    task = config["task"]
    task["dataset"]["kwargs"]["segments"] = {
        k: [datetime.date.fromisoformat(d) for d in v] for k, v in SEGMENTS.items()
    }
    for record in task["record"]:
        if record["class"] == "PortAnaRecord":
            backtest = record["kwargs"]["config"]["backtest"]
            backtest.update(start_time=datetime.date(2016, 11, 1), end_time=datetime.date(2016, 12, 28))
    path.write_text(yaml.safe_dump(config))
    assert "test:\n        - 2016-11-01\n        - 2017-03-24\n" in path.read_text()  # unquoted
    for reader in ("pyyaml", "ruamel"):
        assert type(_at(_read(path.read_text(), reader), *SEGMENT_TEST)[1]) is datetime.date
    return path


@pytest.fixture(scope="module")
def date_style_run(demo, tmp_path_factory):
    """``qlib-hist rolling`` on the date-style YAML: first with the dates left as read (the code before the fix:
    both windows train, then the merge fails), then the fixed code on the same store."""
    from test_rolling import STEP, Calls, init_store, windows

    import qlib_hist.qlib_edge.rolling as rolling

    directory = tmp_path_factory.mktemp("dated")
    workflow = _date_style_workflow(directory, demo)
    argv = ["rolling", str(workflow), "--step", str(STEP), "--experiment", "dated"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rolling, "config_dates", lambda node, *args, **kwargs: node)  # no normalising: as before
        patch.setattr(rolling, "date_span", lambda pair, key: tuple(pair))
        unfixed = Calls(patch)
        with pytest.raises(TypeError, match="Level type mismatch"):
            main(argv)
    with pytest.MonkeyPatch.context() as patch:
        rerun = Calls(patch)
        assert main(argv) == 0
    init_store(workflow)
    return dict(workflow=workflow, unfixed=unfixed, rerun=rerun, windows=windows("dated_windows"), dir=directory)


def test_the_unfixed_merge_failed_after_training_both_windows(date_style_run):
    assert (date_style_run["unfixed"].fit, date_style_run["unfixed"].finetune) == (1, 1)


def test_a_rerun_merges_the_finished_windows_without_training_them(date_style_run):
    from qlib.workflow import R
    from test_rolling import SEGMENTS

    assert (date_style_run["rerun"].fit, date_style_run["rerun"].finetune) == (0, 0)
    assert len(date_style_run["windows"]) == 2
    (merged,) = R.get_exp(experiment_name="dated", create=False).list_recorders(rtype="list", status="FINISHED")
    pred = merged.load_object("pred.pkl")
    days = pred.index.get_level_values("datetime").unique()
    assert days.min() == pd.Timestamp(SEGMENTS["test"][0]) and days.max() == pd.Timestamp(SEGMENTS["test"][1])
    assert not pred.index.duplicated().any()
    metrics = merged.list_metrics()
    assert np.isfinite(metrics["IC"]) and "1day.excess_return_with_cost.annualized_return" in metrics  # backtest


def test_explain_reads_the_date_style_yaml(date_style_run, capsys):
    first = date_style_run["windows"][0]
    out = date_style_run["dir"] / "explain"
    argv = ["explain", str(date_style_run["workflow"]), "--experiment", "dated_windows"]
    argv += ["--recorder-id", first.id, "--out", str(out), "--day", "2017-03-24"]
    assert main(argv) == 0, capsys.readouterr().err
    table = pd.read_pickle(out / "explanations.pkl")
    days = table.index.get_level_values(0)
    assert days.min() == pd.Timestamp("2016-11-01") and days.max() == pd.Timestamp("2017-03-24")
    assert (out / "explain_day.png").exists() and "Top 5 scores on 2017-03-24" in capsys.readouterr().out


def test_bad_dates_in_the_workflow_are_one_line(date_style_run, tmp_path, capsys):
    from test_bad_inputs import assert_user_error

    text = date_style_run["workflow"].read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("- 2017-03-24\n", "- 0001-01-01\n", 1))
    needle = "task.dataset.kwargs.segments.test[1]: 0001-01-01 is outside the dates pandas can hold"
    assert_user_error(main(["rolling", str(bad)]), capsys.readouterr().err, str(bad), needle)
    assert_user_error(main(["explain", str(bad), "--out", str(tmp_path / "e")]), capsys.readouterr().err, needle)
    bad.write_text(text.replace("- 2017-03-24\n", "- '2017-03-32'\n", 1))
    assert_user_error(main(["rolling", str(bad)]), capsys.readouterr().err, "test[1]: expected a date YYYY-MM-DD")
    bad.write_text(text.replace("- 2017-03-24\n", "- 2017-03-32\n", 1))  # both YAML readers fail on it
    for command in ("rolling", "explain"):
        argv = [command, str(bad)] + (["--out", str(tmp_path / "e")] if command == "explain" else [])
        assert_user_error(main(argv), capsys.readouterr().err, f"{bad}: not a readable YAML: day is out of range")
    with pytest.raises(SystemExit):
        main(["rolling", str(bad), "--test-end", "0001-01-01"])
    assert "--test-end: 0001-01-01 is outside the dates pandas can hold" in capsys.readouterr().err


def test_the_demo_yaml_is_in_qlibs_date_style():
    """``test_workflow`` runs this YAML through ``qrun`` end to end; it must keep qlib's unquoted dates."""
    from qlib_hist.qlib_edge.demo import DEMO_YAML

    for reader in ("pyyaml", "ruamel"):
        config = _read(DEMO_YAML.read_text(), reader)
        assert all(type(d) is datetime.date for d in _at(config, *SEGMENT_TEST))
        assert type(_at(config, *HANDLER_KWARGS)["fit_end_time"]) is datetime.date


# ---------------------------------------------------------------------------------------------- the recorders
def test_read_workflow_names_the_file_of_an_impossible_unquoted_date(tmp_path):
    from qlib_hist.qlib_edge.recorders import read_workflow

    bad = tmp_path / "bad.yaml"
    bad.write_text(DATE_STYLE_YAML.replace("fit_end_time: 2014-12-31", "fit_end_time: 2014-02-30"))
    with pytest.raises(ConfigError, match=rf"{bad}: not a readable YAML: day is out of range"):
        read_workflow(bad)


def test_explain_recorded_model_builds_the_dataset_with_timestamps(tmp_path, monkeypatch):
    import qlib.utils

    import qlib_hist.qlib_edge.recorders as recorders

    config = yaml.safe_load(DATE_STYLE_YAML)
    assert type(config["task"]["dataset"]["kwargs"]["segments"]["test"][0]) is datetime.date
    built = {}

    class Model:
        def explain(self, dataset, segment):
            return pd.DataFrame({"dataset": [dataset]})

    monkeypatch.setattr(recorders, "recorded_hist", lambda *args: (Model(), config))
    monkeypatch.setattr(qlib.utils, "init_instance_by_config", lambda dataset_config: built.update(dataset_config))
    recorders.explain_recorded_model(tmp_path / "workflow.yaml", day="2017-03-24")
    segments = built["kwargs"]["segments"]
    assert all(type(day) is pd.Timestamp for pair in segments.values() for day in pair)
    handler = built["kwargs"]["handler"]["kwargs"]
    assert type(handler["fit_end_time"]) is pd.Timestamp and handler["fit_end_time"] == pd.Timestamp("2014-12-31")
    with pytest.raises(ValueError, match=r"day 2021-01-04 \(--day\) is outside the test segment"):
        recorders.explain_recorded_model(tmp_path / "workflow.yaml", day="2021-01-04")
