"""Finding what a ``qrun`` workflow recorded: its recorder, its model, the figures it logged."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import pandas as pd
import yaml
from qlib.workflow import R

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


def latest_recorder(experiment_name: str) -> Any:
    """The most recently started recorder of ``experiment_name`` (qlib must be initialised)."""
    recorders = R.get_exp(experiment_name=experiment_name, create=False).list_recorders()
    return max(recorders.values(), key=lambda r: r.info["start_time"])


def recorder_report(recorder: Any) -> Dict[str, float]:
    """The figures of :data:`REPORT_METRICS` that a finished workflow's recorder logged."""
    metrics = recorder.list_metrics()
    return {label: float(metrics[name]) for label, name in REPORT_METRICS.items() if name in metrics}


def format_report(report: Dict[str, float]) -> str:
    width = max(map(len, REPORT_METRICS))
    return "\n".join(f"{label:<{width}}  {value: .4f}" for label, value in report.items())


def recorded_hist(
    workflow: Union[str, Path], experiment: Optional[str] = None, recorder_id: Optional[str] = None
) -> Tuple[Any, Dict[str, Any]]:
    """The ``HIST`` a ``qrun WORKFLOW.yaml`` run saved (``params.pkl``) and the YAML's config.

    Initialises qlib from the YAML's ``qlib_init``; default recorder: the experiment's latest.
    """
    import qlib

    from .model import HIST

    config = yaml.safe_load(Path(workflow).read_text())
    qlib.init(**config["qlib_init"])
    experiment = experiment or config.get("experiment_name", "workflow")
    if recorder_id is None:
        recorder = latest_recorder(experiment)
    else:
        recorder = R.get_recorder(recorder_id=recorder_id, experiment_name=experiment)
    model = recorder.load_object("params.pkl")
    if not isinstance(model, HIST):
        raise ValueError(
            f"recorder {recorder.id} of experiment {experiment!r} holds a {type(model).__name__}, not qlib_hist.HIST"
        )
    return model, config


def explain_recorded_model(
    workflow: Union[str, Path],
    experiment: Optional[str] = None,
    recorder_id: Optional[str] = None,
    segment: str = "test",
) -> pd.DataFrame:
    """Explain the HIST that a ``qrun WORKFLOW.yaml`` run saved, on the YAML's dataset."""
    from qlib.utils import init_instance_by_config

    model, config = recorded_hist(workflow, experiment, recorder_id)
    dataset = init_instance_by_config(config["task"]["dataset"])
    return model.explain(dataset, segment=segment)
