"""Why did the model score this stock? HIST's prediction split into its parts, and what each part attended to.

``y_i = w . (concept_i + hidden_i + individual_i) + b`` (:class:`~qlib_hist.network.HISTModel`'s output layer), so
``w . concept_i``, ``w . hidden_i``, ``w . individual_i`` and ``b`` sum to the prediction. Beside them: the
predefined concepts and hidden-concept peers with the largest attention weights, and (with temporal attention)
the days of the window the encoder weighted most.

Also here: the two plots and :class:`HISTExplainRecord`, a qlib ``Record`` that saves the table and plots as
artifacts of a ``qrun`` workflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import pandas as pd
import torch

from ._io import atomic_path
from .data import DailyBatches
from .network import HISTModel

PARTS = ("concept", "hidden_concept", "individual")


def _top(weights: torch.Tensor, labels: np.ndarray, top: int):
    """Per row of ``weights [n, m]``, the ``top`` largest entries: (labels ``[n, k]``, weights ``[n, k]``), padded."""
    n, m = weights.shape
    k = min(top, m)
    names = np.full((n, top), None, dtype=object)
    values = np.full((n, top), np.nan, dtype=np.float32)
    if k:
        w, idx = weights.topk(k, dim=1)
        names[:, :k] = labels[idx.cpu().numpy()]
        values[:, :k] = w.cpu().numpy()
    return names, values


@torch.no_grad()
def explain_batches(network: HISTModel, batches: DailyBatches, device: torch.device, top: int = 3) -> pd.DataFrame:
    """The explanation table (see :meth:`qlib_hist.HIST.explain`) in the batches' day-sorted row order."""
    network.eval()
    w_out, bias = network.fc_out.weight[0], float(network.fc_out.bias[0])
    n_concepts = batches.concept_matrix.shape[1]
    concept_names = np.array(batches.concepts.names or [f"concept_{j}" for j in range(n_concepts)], dtype=object)
    instruments = np.asarray(batches.index.get_level_values(1), dtype=object)
    parts = {name: np.empty(batches.n_rows, dtype=np.float32) for name in PARTS}
    tops: Dict[str, tuple] = {key: (np.full((batches.n_rows, top), None, dtype=object),
                                    np.full((batches.n_rows, top), np.nan, dtype=np.float32))
                              for key in ("concept", "peer", "step")}
    with_steps = network.temporal_att is not None
    for d, day in batches.days(device):
        rows = batches.day_slice(d)
        p = network.parts(day.x, day.concepts, day.stock_weight)
        for name in PARTS:
            parts[name][rows] = (getattr(p, name) @ w_out).cpu().numpy()
        found = {
            "concept": _top(p.concept_attention, concept_names[p.kept_concepts.cpu().numpy()], top),
            "peer": _top(p.hidden_attention, instruments[rows][p.hidden_concept_stocks.cpu().numpy()], top),
        }
        if with_steps:
            steps = p.time_attention.shape[1]
            found["step"] = _top(p.time_attention, np.arange(steps - 1, -1, -1), top)  # days back from the last
        for key, (names, values) in found.items():
            tops[key][0][rows], tops[key][1][rows] = names, values
    frame = pd.DataFrame(parts, index=batches.index)
    frame["bias"] = np.float32(bias)
    frame.insert(0, "score", frame[list(PARTS)].sum(axis=1) + frame["bias"])
    for key, (names, values) in tops.items():
        if key == "step" and not with_steps:
            continue
        for k in range(top):
            frame[f"{key}_{k + 1}"] = names[:, k]
            frame[f"{key}_{k + 1}_weight"] = values[:, k]
    return frame


# ---------------------------------------------------------------------------------------------------- plots
def plot_day(table: pd.DataFrame, day, png_path: Union[str, Path], n: int = 20) -> Path:
    """For one day, the ``n`` highest-scored stocks' predictions split into their parts (stacked bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table.xs(pd.Timestamp(day), level=0).nlargest(n, "score")
    fig, ax = plt.subplots(figsize=(10, 4.5))
    x = np.arange(len(rows))
    for sign in (1, -1):
        bottom = np.zeros(len(rows))
        for name in PARTS + ("bias",):
            values = rows[name].to_numpy()
            part = np.where(np.sign(values) == sign, values, 0.0)
            ax.bar(x, part, bottom=bottom, label=name if sign == 1 else None,
                   color={"concept": "tab:blue", "hidden_concept": "tab:orange", "individual": "tab:green",
                          "bias": "tab:grey"}[name])
            bottom += part
    ax.plot(x, rows["score"].to_numpy(), "k_", markersize=14, label="score")
    ax.set_xticks(x, rows.index, rotation=60, fontsize=7)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_title(f"Top {len(rows)} predictions on {pd.Timestamp(day).date()}: parts of each score")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, png_path)


def plot_shares(table: pd.DataFrame, png_path: Union[str, Path]) -> Path:
    """Over the segment: each day's mean absolute contribution of each part, as a share of their total."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    daily = table[list(PARTS)].abs().groupby(level=0).mean()
    shares = daily.div(daily.sum(axis=1), axis=0)
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.stackplot(shares.index, *[shares[c] for c in PARTS], labels=PARTS,
                 colors=["tab:blue", "tab:orange", "tab:green"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of mean |part|")
    ax.set_title("Daily mean absolute share of each part of the prediction")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return _save(fig, png_path)


def _save(fig, path: Union[str, Path]) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def write_explanation(table: pd.DataFrame, out_dir: Union[str, Path], day=None) -> List[Path]:
    """Save ``explanations.pkl`` and the two plots (for ``day``, default the last day) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    day = table.index.get_level_values(0).max() if day is None else day
    with atomic_path(out_dir / "explanations.pkl") as tmp:
        table.to_pickle(tmp)
    return [out_dir / "explanations.pkl", plot_day(table, day, out_dir / "explain_day.png"),
            plot_shares(table, out_dir / "explain_shares.png")]


def explain_recorded_model(workflow: Union[str, Path], experiment: Optional[str] = None,
                           recorder_id: Optional[str] = None, segment: str = "test") -> pd.DataFrame:
    """Explain the HIST that a ``qrun WORKFLOW.yaml`` run saved (``params.pkl``), on the YAML's dataset."""
    import qlib
    import yaml
    from qlib.utils import init_instance_by_config
    from qlib.workflow import R

    from .model import HIST

    config = yaml.safe_load(Path(workflow).read_text())
    qlib.init(**config["qlib_init"])
    experiment = experiment or config.get("experiment_name", "workflow")
    if recorder_id is None:
        recorders = R.get_exp(experiment_name=experiment, create=False).list_recorders()
        recorder = max(recorders.values(), key=lambda r: r.info["start_time"])
    else:
        recorder = R.get_recorder(recorder_id=recorder_id, experiment_name=experiment)
    model = recorder.load_object("params.pkl")
    if not isinstance(model, HIST):
        raise ValueError(f"recorder {recorder.id} of experiment {experiment!r} holds a {type(model).__name__}, not qlib_hist.HIST")
    dataset = init_instance_by_config(config["task"]["dataset"])
    return model.explain(dataset, segment=segment)


# ---------------------------------------------------------------------------------------------------- qrun
try:
    from qlib.workflow.record_temp import RecordTemp
except ImportError:  # pragma: no cover - qlib is a dependency
    RecordTemp = object


class HISTExplainRecord(RecordTemp):
    """qrun record: ``HIST.explain`` on a segment, saved as artifacts under ``explain/``.

    YAML, after ``SignalRecord``::

        - class: HISTExplainRecord
          module_path: qlib_hist.explain
          kwargs: {model: <MODEL>, dataset: <DATASET>, segment: test}
    """

    artifact_path = "explain"

    def __init__(self, recorder, model=None, dataset=None, segment: str = "test", day: Optional[str] = None, top: int = 3):
        super().__init__(recorder=recorder)
        self.model, self.dataset, self.segment, self.day, self.top = model, dataset, segment, day, top

    def generate(self, **kwargs) -> None:
        import tempfile

        table = self.model.explain(self.dataset, segment=self.segment, top=self.top)
        with tempfile.TemporaryDirectory() as tmp:
            for path in write_explanation(table, tmp, self.day):
                self.recorder.log_artifact(str(path), artifact_path=self.artifact_path)

    def list(self) -> list:
        return ["explanations.pkl", "explain_day.png", "explain_shares.png"]  # qlib prefixes artifact_path
