"""Daily metrics and the masked loss: what "better" means for HIST, computed per trading day.

Metrics are computed per day over the stocks with a finite label, then averaged over days:

- ``ic``: Pearson correlation of predictions and labels;
- ``rank_ic``: Spearman correlation (average ranks for ties);
- ``loss``: mean squared error (early stopping maximises ``-loss``);
- ``precision@k``: the share of the day's k highest predictions whose label is positive (the paper's metric;
  with qlib's ``CSRankNorm`` labels "positive" means above the day's median).

The metric names live here and only here (:func:`normalize_metric`), and so do the names of the training
objective, the loss a trainer minimises (:data:`LOSSES`, :func:`objective_key`). numpy and torch only.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from .errors import QlibHistError

METRICS = ("ic", "rank_ic", "loss", "precision@<k>")
#: :class:`DailyLoss`'s names: ``mse`` (qlib's), ``ic`` (minus the day's Pearson correlation), ``mse+ic``
#: (``mse - ic_weight * ic``)
LOSSES = ("mse", "ic", "mse+ic")
METRIC_ALIASES = {"": "loss", "mse": "loss", "ic": "ic", "rank_ic": "rank_ic", "loss": "loss"}
#: the objective of a trainer given its own loss function instead of a :class:`DailyLoss` by name
CUSTOM_LOSS = "custom"
PRECISION = re.compile(r"^precision@(\d+)$")
DEFAULT_PRECISION_K = 30


def normalize_metric(metric: Optional[str]) -> str:
    """Map a metric name to ``ic``, ``rank_ic``, ``loss`` or ``precision@<k>`` (``""``/``None`` mean ``loss``)."""
    key = (metric or "").lower().strip()
    match = PRECISION.match(key)
    if match and int(match.group(1)) > 0:
        return key
    if key not in METRIC_ALIASES:
        raise QlibHistError(f"metric must be one of {', '.join(METRICS)} (or '' for loss), got {metric!r}")
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


def objective_key(loss: str) -> str:
    """The history key of the objective ``loss`` (a :data:`LOSSES` name, or :data:`CUSTOM_LOSS`) averaged over an
    epoch's optimizer steps: ``train_mse_loss``, ``train_ic_loss`` (minus the daily IC), ``train_mse+ic_loss``.
    Not ``train_loss``: that is the ``loss`` metric (the daily MSE), whatever the objective."""
    return f"train_{loss}_loss"


def objective_label(loss: str) -> str:
    """The objective's name in the epoch log: ``mse`` (the objective is the MSE itself), ``ic_loss``,
    ``mse+ic_loss``."""
    return "mse" if loss == "mse" else f"{loss}_loss"


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


#: a variance below this counts as zero (constant labels or predictions) in :func:`masked_pearson`
VARIANCE_FLOOR = 1e-12

LossFn = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], Optional[torch.Tensor]]


def masked_pearson(
    pred: torch.Tensor, label: torch.Tensor, weight: Optional[torch.Tensor] = None
) -> Optional[torch.Tensor]:
    r"""The day's Pearson correlation of ``pred`` and ``label`` (``[n]``) over finite labels, differentiable.

    .. math:: \rho = \frac{\sum_i w_i (p_i - \bar p)(y_i - \bar y)}
                         {\sqrt{\sum_i w_i (p_i - \bar p)^2}\,\sqrt{\sum_i w_i (y_i - \bar y)^2}}

    with :math:`w` the normalised ``weight`` (equal weights without it; unweighted it is the ``ic`` of
    :func:`daily_metrics`). ``None`` when fewer than two labels are finite or they are all equal (no correlation
    exists); constant predictions give 0 (their variance is floored at :data:`VARIANCE_FLOOR`).
    """
    keep = torch.isfinite(label)
    if int(keep.sum()) < 2:
        return None
    p, y = pred[keep], label[keep]
    w = torch.full_like(y, 1.0 / len(y)) if weight is None else weight[keep] / weight[keep].sum()
    dp, dy = p - (w * p).sum(), y - (w * y).sum()  # [n]  centred
    var_y = (w * dy * dy).sum()
    if float(var_y) <= VARIANCE_FLOOR:
        return None
    var_p = (w * dp * dp).sum().clamp_min(VARIANCE_FLOOR)
    return (w * dp * dy).sum() / (var_p.sqrt() * var_y.sqrt())


def static_mse(pred: torch.Tensor, label: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`masked_mse` without a data-dependent shape or a host sync (padded days, CUDA graphs): the same value
    to float rounding where a label is finite; NaN on a day with none (the caller skips those days)."""
    keep = torch.isfinite(label)  # [n]
    w = keep.to(pred.dtype) if weight is None else torch.where(keep, weight, 0.0)  # [n]
    err = (pred - label.nan_to_num()) ** 2  # [n]
    return (err * w).sum() / w.sum()


def static_pearson(pred: torch.Tensor, label: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`masked_pearson` without a data-dependent shape or a host sync; 0 where labels are constant (the
    caller skips, or counts, the days where the correlation does not exist)."""
    keep = torch.isfinite(label)  # [n]
    w = keep.to(pred.dtype) if weight is None else torch.where(keep, weight, 0.0)
    w = w / w.sum()
    y = label.nan_to_num()
    dp, dy = pred - (w * pred).sum(), y - (w * y).sum()  # [n]  centred (padding has w = 0)
    var_p = (w * dp * dp).sum().clamp_min(VARIANCE_FLOOR)
    var_y = (w * dy * dy).sum().clamp_min(VARIANCE_FLOOR)
    return (w * dp * dy).sum() / (var_p.sqrt() * var_y.sqrt())


class DailyLoss:
    """The training loss of one day, by name (``TrainSettings.loss``), counting the days it had to skip.

    - ``mse``: :func:`masked_mse` (qlib's);
    - ``ic``: ``-rho``, minus :func:`masked_pearson`: the metric early stopping and ``SigAnaRecord`` report;
    - ``mse+ic``: ``mse - ic_weight * rho``.

    A day whose correlation does not exist (under two finite labels, or constant labels) is skipped by ``ic``
    (``None``: no step) and trained on its ``mse`` alone by ``mse+ic``; either way it is counted in
    ``skipped_ic_days`` (the trainer logs the count per epoch and resets it). Never NaN from such a day.
    """

    def __init__(self, name: str = "mse", ic_weight: float = 1.0) -> None:
        if name not in LOSSES:
            raise QlibHistError(f"loss must be one of {list(LOSSES)}, got {name!r}")
        self.name, self.ic_weight = name, float(ic_weight)
        self.skipped_ic_days = 0

    def needs_correlation(self) -> bool:
        """Whether a day without a correlation (see the class docstring) has no loss at all (``ic``)."""
        return self.name == "ic"

    def static(self, pred: torch.Tensor, label: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The loss without a host sync (:func:`static_mse`, :func:`static_pearson`), for padded days: the caller
        has skipped the days it cannot train on (no finite label; for ``ic``, no correlation)."""
        if self.name == "mse":
            return static_mse(pred, label, weight)
        rho = static_pearson(pred, label, weight)
        return -rho if self.name == "ic" else static_mse(pred, label, weight) - self.ic_weight * rho

    def __call__(
        self, pred: torch.Tensor, label: torch.Tensor, weight: Optional[torch.Tensor] = None
    ) -> Optional[torch.Tensor]:
        if self.name == "mse":
            return masked_mse(pred, label, weight)
        rho = masked_pearson(pred, label, weight)
        if rho is None:
            self.skipped_ic_days += 1
            return None if self.name == "ic" else masked_mse(pred, label, weight)
        if self.name == "ic":
            return -rho
        mse = masked_mse(pred, label, weight)
        assert mse is not None  # rho exists, so some label is finite
        return mse - self.ic_weight * rho
