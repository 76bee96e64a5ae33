"""The main job on built-in data: write the synthetic market, then run HIST through qlib's ``qrun`` machinery.

``run_demo(out_dir)``:

1. writes the demo provider and its concept files into ``out_dir`` (:func:`qlib_hist.demo_data.write_demo_provider`);
2. writes ``workflow_config_hist_demo.yaml`` there (the packaged YAML, with the seed and epochs asked for);
3. runs it with ``qlib.cli.run.workflow`` — what ``qrun`` runs — inside ``out_dir``: Alpha360 features, HIST
   fit and predict, ``SignalRecord``, ``SigAnaRecord`` and ``PortAnaRecord``;
4. reads the recorder's figures and returns them (IC, ICIR, Rank IC, Rank ICIR, annualized excess return,
   information ratio, max drawdown).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Dict, Optional, Union

import yaml

from ._io import atomic_write_text
from .demo_data import write_demo_provider

DEMO_YAML = Path(__file__).parent / "configs" / "workflow_config_hist_demo.yaml"
DEMO_YAML_NAME = "workflow_config_hist_demo.yaml"

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
def _working_dir(path: Path):
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def write_demo_config(out_dir: Path, seed: int = 0, n_epochs: Optional[int] = None) -> Path:
    """Copy the packaged demo YAML into ``out_dir``, setting the model's seed (and ``n_epochs`` if given)."""
    text = DEMO_YAML.read_text()
    # edit the model's kwargs in the text, so that the YAML's comments and anchors survive
    text = re.sub(r"(?m)^(\s{12}seed:).*$", rf"\g<1> {int(seed)}", text)
    if n_epochs is not None:
        text = re.sub(r"(?m)^(\s{12}n_epochs:).*$", rf"\g<1> {int(n_epochs)}", text)
    path = out_dir / DEMO_YAML_NAME
    atomic_write_text(path, text)
    return path


def latest_recorder(experiment_name: str):
    """The most recently started recorder of ``experiment_name`` (qlib must be initialised)."""
    from qlib.workflow import R

    recorders = R.get_exp(experiment_name=experiment_name, create=False).list_recorders()
    return max(recorders.values(), key=lambda r: r.info["start_time"])


def recorder_report(recorder) -> Dict[str, float]:
    """The demo's figures from a finished workflow's recorder."""
    metrics = recorder.list_metrics()
    return {label: float(metrics[name]) for label, name in REPORT_METRICS.items() if name in metrics}


def format_report(report: Dict[str, float]) -> str:
    width = max(map(len, REPORT_METRICS))
    return "\n".join(f"{label:<{width}}  {value: .4f}" for label, value in report.items())


def run_demo(
    out_dir: Union[str, Path] = "qlib_hist_demo", seed: int = 0, n_epochs: Optional[int] = None, n_stocks: int = 100
) -> Dict[str, float]:
    """Write the demo data and run the demo workflow through qrun's ``workflow``; return the report."""
    from qlib.cli.run import workflow

    out_dir = Path(out_dir).expanduser().resolve()
    write_demo_provider(out_dir, n_stocks=n_stocks, seed=seed)
    config_path = write_demo_config(out_dir, seed=seed, n_epochs=n_epochs)
    experiment = yaml.safe_load(config_path.read_text())["experiment_name"]
    with _working_dir(out_dir):
        workflow(str(config_path))
        return recorder_report(latest_recorder(experiment))
