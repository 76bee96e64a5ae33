"""Finding what a ``qrun`` workflow recorded: its recorder, its model, the figures it logged."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import pandas as pd
import yaml
from qlib.workflow import R

from ..config_dates import as_timestamp, config_dates, date_span, unreadable_yaml
from ..errors import ConfigError

#: report label -> recorder metric name, as qlib's SigAnaRecord / PortAnaRecord log them
REPORT_METRICS = {
    "IC": "IC",
    "ICIR": "ICIR",
    "Rank IC": "Rank IC",
    "Rank ICIR": "Rank ICIR",
    "annualized excess return": "1day.excess_return_with_cost.annualized_return",
    "information ratio": "1day.excess_return_with_cost.information_ratio",
    "max drawdown": "1day.excess_return_with_cost.max_drawdown",
}


@contextlib.contextmanager
def artifact_copies_removed() -> Iterator[None]:
    """Inside the block, the folders :mod:`tempfile` makes go in one fresh folder, removed on exit.

    qlib's ``Recorder.load_object``, with mlflow 3 and a local artifact store, copies each artifact it loads into a
    fresh ``mkdtemp`` folder and never removes it: one folder for every ``pred.pkl``, ``label.pkl`` or
    ``params.pkl`` read (thousands over a rolling run or a benchmark grid). ``tempfile.tempdir`` is process-wide:
    for the single-threaded loops that load artifacts, not for code that keeps a temporary file past the block."""
    folder = tempfile.mkdtemp(prefix="qlib_hist_artifacts_")
    before = tempfile.tempdir
    tempfile.tempdir = folder
    try:
        yield
    finally:
        tempfile.tempdir = before
        shutil.rmtree(folder, ignore_errors=True)


def latest_recorder(experiment_name: str) -> Any:
    """The most recently started recorder of ``experiment_name`` (qlib must be initialised); a missing experiment or
    one without recorders is a :class:`~qlib_hist.errors.ConfigError` naming it."""
    try:
        recorders = R.get_exp(experiment_name=experiment_name, create=False).list_recorders()
    except ValueError:  # qlib's answer for an experiment that does not exist
        raise ConfigError(f"no experiment {experiment_name!r} in qlib_init's tracking store") from None
    if not recorders:
        raise ConfigError(f"experiment {experiment_name!r} has no recorder: run the workflow first (qrun)")
    return max(recorders.values(), key=lambda r: r.info["start_time"])


def recorder_report(recorder: Any) -> Dict[str, float]:
    """The figures of :data:`REPORT_METRICS` that a finished workflow's recorder logged."""
    metrics = recorder.list_metrics()
    return {label: float(metrics[name]) for label, name in REPORT_METRICS.items() if name in metrics}


def format_report(report: Dict[str, float]) -> str:
    width = max(map(len, REPORT_METRICS))
    return "\n".join(f"{label:<{width}}  {value: .4f}" for label, value in report.items())


def read_workflow(workflow: Union[str, Path]) -> Dict[str, Any]:
    """A qrun workflow YAML as a dict, checked to have what qrun needs (``qlib_init``, ``task``); its dates as
    written (:func:`~qlib_hist.config_dates.config_dates` turns them into ``pd.Timestamp``). A file that is not a
    readable YAML is a :class:`~qlib_hist.errors.ConfigError` naming it."""
    path = Path(workflow)
    text = path.read_text()
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    except ValueError as err:  # PyYAML's bare error for an unquoted date that does not exist (2017-02-30)
        raise unreadable_yaml(path, err) from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a workflow is a mapping with qlib_init and task, got a {type(config).__name__}")
    missing = [key for key in ("qlib_init", "task") if not isinstance(config.get(key), dict)]
    if missing:
        raise ConfigError(f"{path}: no {' or '.join(missing)} section (a qrun workflow YAML has both)")
    return config


def segment_bounds(config: Dict[str, Any], segment: str) -> Tuple[Optional[pd.Timestamp], Optional[pd.Timestamp]]:
    """First and last day of ``segment`` in a workflow's dataset (``task.dataset.kwargs.segments``); ``None``: an
    open end."""
    segments = config["task"].get("dataset", {}).get("kwargs", {}).get("segments", {})
    if segment not in segments:
        raise ConfigError(f"segment {segment!r} is not in the workflow's dataset segments {list(segments)}")
    return date_span(segments[segment], f"task.dataset.kwargs.segments.{segment}")


def recorded_hist(
    workflow: Union[str, Path], experiment: Optional[str] = None, recorder_id: Optional[str] = None
) -> Tuple[Any, Dict[str, Any]]:
    """The ``HIST`` a ``qrun WORKFLOW.yaml`` run saved (``params.pkl``) and the YAML's config.

    Initialises qlib from the YAML's ``qlib_init``; default recorder: the experiment's latest.
    """
    import qlib

    from .model import HIST

    config = read_workflow(workflow)
    qlib.init(**config["qlib_init"])
    experiment = experiment or config.get("experiment_name", "workflow")
    if recorder_id is None:
        recorder = latest_recorder(experiment)
    else:
        try:
            recorder = R.get_recorder(recorder_id=recorder_id, experiment_name=experiment)
        except ValueError:  # qlib's answer for an experiment or a recorder that does not exist
            raise ConfigError(f"no recorder {recorder_id!r} in experiment {experiment!r}") from None
    with artifact_copies_removed():
        model = recorder.load_object("params.pkl")
    if not isinstance(model, HIST):
        raise ConfigError(
            f"recorder {recorder.id} of experiment {experiment!r} holds a {type(model).__name__}, not qlib_hist.HIST"
        )
    return model, config


def explain_recorded_model(
    workflow: Union[str, Path],
    experiment: Optional[str] = None,
    recorder_id: Optional[str] = None,
    segment: str = "test",
    day: Optional[str] = None,
) -> pd.DataFrame:
    """Explain the HIST that a ``qrun WORKFLOW.yaml`` run saved, on the YAML's dataset; ``day`` (the day a plot will
    show) is checked to lie in ``segment`` before anything is computed."""
    from qlib.utils import init_instance_by_config

    model, config = recorded_hist(workflow, experiment, recorder_id)
    config = config_dates(config, source=str(workflow))  # qlib-style unquoted dates meet the index as Timestamps
    start, end = segment_bounds(config, segment)
    when = as_timestamp(day, "day")
    if when is not None and ((start is not None and when < start) or (end is not None and when > end)):
        raise ConfigError(f"day {day} (--day) is outside the {segment} segment ({_day(start)} .. {_day(end)})")
    dataset = init_instance_by_config(config["task"]["dataset"])
    return model.explain(dataset, segment=segment)


def _day(stamp: Optional[pd.Timestamp]) -> str:
    return "open" if stamp is None else str(stamp.date())
