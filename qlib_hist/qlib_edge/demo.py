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
from typing import Dict, Iterator, Optional, Union

import yaml

from ..atomic_files import atomic_write_text
from ..demo_data import write_demo_provider
from ..settings import TrainSettings
from .recorders import latest_recorder, recorder_report

DEMO_YAML = Path(__file__).parents[1] / "configs" / "workflow_config_hist_demo.yaml"
DEMO_YAML_NAME = "workflow_config_hist_demo.yaml"


@contextlib.contextmanager
def _working_dir(path: Path) -> Iterator[None]:
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


def run_demo(
    out_dir: Union[str, Path] = "qlib_hist_demo", seed: int = 0, n_epochs: Optional[int] = None, n_stocks: int = 100
) -> Dict[str, float]:
    """Write the demo data and run the demo workflow through qrun's ``workflow``; return the report."""
    from qlib.cli.run import workflow

    if n_epochs is not None:
        TrainSettings(n_epochs=n_epochs)  # checked before anything is written: "n_epochs must be ..., got -1"
    out_dir = Path(out_dir).expanduser().resolve()
    write_demo_provider(out_dir, n_stocks=n_stocks, seed=seed)
    config_path = write_demo_config(out_dir, seed=seed, n_epochs=n_epochs)
    experiment = yaml.safe_load(config_path.read_text())["experiment_name"]
    with _working_dir(out_dir):
        workflow(str(config_path))
        return recorder_report(latest_recorder(experiment))
