"""Why did the model score this stock? HIST's prediction split into its parts, and what each part attended to.

``y_i = w . (concept_i + hidden_i + individual_i) + b`` (:class:`~qlib_hist.network.HISTModel`'s output layer), so
``w . concept_i``, ``w . hidden_i``, ``w . individual_i`` and ``b`` sum to the prediction. Beside them: the
predefined concepts and hidden-concept peers with the largest attention weights, and (with temporal attention)
the days of the window the encoder weighted most.

This module is the maths only (no qlib, no plotting): the plots and files are in :mod:`qlib_hist.explain_report`,
``HIST.explain`` (the qlib face) is in :mod:`qlib_hist.qlib_edge.model`.

``qlib_hist.explain.HISTExplainRecord`` is an alias kept for the YAMLs written for 0.1.0, which say
``module_path: qlib_hist.explain``. The qrun record lives in :mod:`qlib_hist.qlib_edge.record`, and YAMLs name it
``module_path: qlib_hist`` (the package's own YAMLs do); this module hands it over on first use (a module
``__getattr__``): importing it loads neither qlib nor the edge, and the record's module does not import this one
(it imports :mod:`qlib_hist.explain_report`, which takes the parts' names from :mod:`qlib_hist.network`), so no
import circle runs through here.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
import pandas as pd
import torch

from .batches import DailyBatches
from .explain_report import check_top
from .network import OUTPUT_PARTS, HISTModel

PARTS = OUTPUT_PARTS  # the prediction's additive parts, each a column of the table


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
    top = check_top(top)
    network.eval()
    w_out, bias = network.fc_out.weight[0], float(network.fc_out.bias[0])
    n_concepts = batches.concept_matrix.shape[1]
    concept_names = np.array(batches.concepts.names or [f"concept_{j}" for j in range(n_concepts)], dtype=object)
    instruments = np.asarray(batches.index.get_level_values(1), dtype=object)
    parts = {name: np.empty(batches.n_rows, dtype=np.float32) for name in PARTS}
    tops: Dict[str, tuple] = {
        key: (
            np.full((batches.n_rows, top), None, dtype=object),
            np.full((batches.n_rows, top), np.nan, dtype=np.float32),
        )
        for key in ("concept", "peer", "step")
    }
    with_steps = network.temporal_att is not None
    for d, day in batches.days(device):
        rows = batches.day_slice(d)
        p = network.parts(day.x, day.concepts, day.member_weight, market=day.market)
        for name in PARTS:
            parts[name][rows] = (getattr(p, name) @ w_out).cpu().numpy()
        found = {
            "concept": _top(p.concept_attention, concept_names[p.kept_concepts.cpu().numpy()], top),
            "peer": _top(p.hidden_attention, instruments[rows][p.hidden_concept_stocks.cpu().numpy()], top),
        }
        if p.time_attention is not None:
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


def __getattr__(name: str) -> Any:  # `module_path: qlib_hist.explain` in 0.1.0's YAMLs; qlib loads only when asked for
    if name == "HISTExplainRecord":
        from .qlib_edge.record import HISTExplainRecord

        return HISTExplainRecord
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
