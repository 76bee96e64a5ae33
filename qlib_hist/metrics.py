"""Daily metrics and the masked loss: what "better" means for HIST, computed per trading day.

Metrics are computed per day over the stocks with a finite label, then averaged over days:

- ``ic``: Pearson correlation of predictions and labels;
- ``rank_ic``: Spearman correlation (average ranks for ties);
- ``loss``: mean squared error (early stopping maximises ``-loss``);
- ``precision@k``: the share of the day's k highest predictions whose label is positive (the paper's metric;
  with qlib's ``CSRankNorm`` labels "positive" means above the day's median).

The metric names live here and only here (:func:`normalize_metric`). numpy and torch only.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional

import numpy as np
import torch

METRICS = ("ic", "rank_ic", "loss", "precision@<k>")
METRIC_ALIASES = {"": "loss", "mse": "loss", "ic": "ic", "rank_ic": "rank_ic", "loss": "loss"}
PRECISION = re.compile(r"^precision@(\d+)$")
DEFAULT_PRECISION_K = 30


def normalize_metric(metric: Optional[str]) -> str:
    """Map a metric name to ``ic``, ``rank_ic``, ``loss`` or ``precision@<k>`` (``""``/``None`` mean ``loss``)."""
    key = (metric or "").lower().strip()
    match = PRECISION.match(key)
    if match and int(match.group(1)) > 0:
        return key
    if key not in METRIC_ALIASES:
        raise ValueError(f"metric must be one of {', '.join(METRICS)} (or '' for loss), got {metric!r}")
    return METRIC_ALIASES[key]


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties sharing their average rank (``scipy.stats.rankdata(method="average")``)."""
    sorter = np.argsort(values, kind="mergesort")
    inverse = np.empty(len(values), dtype=np.int64)
    inverse[sorter] = np.arange(len(values))
    ordered = values[sorter]
    new_value = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    dense = np.cumsum(new_value)[inverse]
    bounds = np.concatenate([np.flatnonzero(new_value), [len(values)]])
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    vx, vy = x - x.mean(), y - y.mean()
    denom = np.sqrt((vx * vx).sum() * (vy * vy).sum())
    return float((vx * vy).sum() / denom) if denom > 0 else np.nan


def _nanmean(values: List[float]) -> float:
    array = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(array)) if len(array) and not np.isnan(array).all() else float("nan")


def daily_metrics(
    pred: np.ndarray,
    label: np.ndarray,
    day_start: np.ndarray,
    day_count: np.ndarray,
    precision_k: int = DEFAULT_PRECISION_K,
) -> Dict[str, float]:
    """Per-day ``ic``, ``rank_ic``, ``loss`` and ``precision@k`` of ``pred`` vs ``label`` (``[rows]``), day-averaged.

    Rows whose label is not finite are ignored; days with fewer than two such rows are skipped for the
    correlations (and days with none for the loss and precision).
    """
    ics, rank_ics, losses, precisions = [], [], [], []
    for start, count in zip(day_start, day_count):
        p, y = pred[start : start + count].astype(np.float64), label[start : start + count].astype(np.float64)
        keep = np.isfinite(y)
        p, y = p[keep], y[keep]
        if len(y) == 0:
            continue
        losses.append(float(((p - y) ** 2).mean()))
        top = np.argsort(-p, kind="mergesort")[:precision_k]
        precisions.append(float((y[top] > 0).mean()))
        if len(y) >= 2:
            ics.append(_pearson(p, y))
            rank_ics.append(_pearson(_average_ranks(p), _average_ranks(y)))
    return {
        "ic": _nanmean(ics),
        "rank_ic": _nanmean(rank_ics),
        "loss": _nanmean(losses),
        f"precision@{precision_k}": _nanmean(precisions),
    }


def precision_k(metric: str) -> int:
    """The ``k`` of a normalized ``precision@k`` metric; :data:`DEFAULT_PRECISION_K` for the others."""
    match = PRECISION.match(metric)
    return int(match.group(1)) if match else DEFAULT_PRECISION_K


def score_of(metrics: Dict[str, float], metric: str) -> float:
    """The early-stopping score (higher is better) for a normalized metric name."""
    return -metrics["loss"] if metric == "loss" else metrics[metric]


def masked_mse(
    pred: torch.Tensor, label: torch.Tensor, weight: Optional[torch.Tensor] = None
) -> Optional[torch.Tensor]:
    """Mean squared error over finite labels (weighted mean when ``weight`` is given); ``None`` if none is finite."""
    keep = torch.isfinite(label)
    if not bool(keep.any()):
        return None
    err = (pred[keep] - label[keep]) ** 2
    if weight is None:
        return err.mean()
    w = weight[keep]
    return (err * w).sum() / w.sum()
