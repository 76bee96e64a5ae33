"""The epoch loop: shuffled days, masked loss, gradient clipping, daily metrics and early stopping.

Model-agnostic: it takes any ``network(x [n, F], concepts [n, C]) -> [n]`` and :class:`DailyBatches`; it never
imports qlib. Metrics are computed per trading day and averaged over days, as qlib's HIST does:

- ``ic``: Pearson correlation of predictions and labels;
- ``rank_ic``: Spearman correlation (average ranks for ties);
- ``loss``: mean squared error on the finite labels (early stopping maximises ``-loss``).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from .data import DailyBatches

METRICS = ("ic", "rank_ic", "loss")
METRIC_ALIASES = {"": "loss", "mse": "loss", "ic": "ic", "rank_ic": "rank_ic", "loss": "loss"}


def normalize_metric(metric: Optional[str]) -> str:
    """Map a user's metric name to one of :data:`METRICS` (``""``/``None`` mean ``loss``, as in qlib's GRU)."""
    key = (metric or "").lower()
    if key not in METRIC_ALIASES:
        raise ValueError(f"metric must be one of {METRICS} (or '' for loss), got {metric!r}")
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


def daily_metrics(pred: np.ndarray, label: np.ndarray, day_start: np.ndarray, day_count: np.ndarray) -> Dict[str, float]:
    """Per-day ``ic``, ``rank_ic`` and ``loss`` of ``pred`` vs ``label`` (both ``[rows]``), averaged over days.

    Rows whose label is not finite are ignored; days with fewer than two such rows are skipped for the
    correlations (and days with none for the loss).
    """
    ics, rank_ics, losses = [], [], []
    for start, count in zip(day_start, day_count):
        p, y = pred[start : start + count].astype(np.float64), label[start : start + count].astype(np.float64)
        keep = np.isfinite(y)
        p, y = p[keep], y[keep]
        if len(y) == 0:
            continue
        losses.append(float(((p - y) ** 2).mean()))
        if len(y) >= 2:
            ics.append(_pearson(p, y))
            rank_ics.append(_pearson(_average_ranks(p), _average_ranks(y)))
    mean = lambda v: float(np.nanmean(v)) if len(v) and not np.isnan(v).all() else float("nan")  # noqa: E731
    return {"ic": mean(ics), "rank_ic": mean(rank_ics), "loss": mean(losses)}


def score_of(metrics: Dict[str, float], metric: str) -> float:
    """The early-stopping score (higher is better) for a normalized metric name."""
    return -metrics["loss"] if metric == "loss" else metrics[metric]


def masked_mse(pred: torch.Tensor, label: torch.Tensor, weight: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """Mean squared error over finite labels (weighted mean when ``weight`` is given); ``None`` if none is finite."""
    keep = torch.isfinite(label)
    if not bool(keep.any()):
        return None
    err = (pred[keep] - label[keep]) ** 2
    if weight is None:
        return err.mean()
    w = weight[keep]
    return (err * w).sum() / w.sum()


@dataclass
class EarlyStopping:
    """qlib's rule: keep the best score's weights; stop after ``patience`` epochs without improvement."""

    patience: int
    best_score: float = -np.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    best_state: Optional[Dict[str, torch.Tensor]] = None

    def update(self, epoch: int, score: float, network: nn.Module) -> bool:
        """Record one epoch's score; return True when training should stop."""
        if score > self.best_score:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience


@dataclass
class TrainConfig:
    n_epochs: int = 200
    early_stop: int = 20
    metric: str = "loss"
    clip_value: float = 3.0
    seed: Optional[int] = None
    eval_train: bool = False


@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    history: List[Dict[str, float]] = field(default_factory=list)


def _progress(iterable, total: int, desc: str):
    """A tqdm bar when a terminal is attached; the bare iterable otherwise."""
    if not sys.stderr.isatty():
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with qlib
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False)


@torch.no_grad()
def predict_days(network: nn.Module, batches: DailyBatches, device: torch.device) -> np.ndarray:
    """Eval-mode predictions ``[rows]`` in the batches' (day-sorted) row order."""
    network.eval()
    preds = np.empty(batches.n_rows, dtype=np.float32)
    for day, (x, concepts, _, _) in _progress(batches.days(device), batches.n_days, "predict"):
        preds[batches.day_slice(day)] = network(x, concepts).cpu().numpy()
    return preds


class Trainer:
    """Trains ``network`` on daily batches with ``optimizer`` (see the module docstring)."""

    def __init__(
        self,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        config: TrainConfig,
        device: torch.device,
        logger: Optional[logging.Logger] = None,
        loss_fn: Callable = masked_mse,
    ) -> None:
        self.network = network
        self.optimizer = optimizer
        self.config = config
        self.device = device
        self.logger = logger or logging.getLogger("qlib_hist")
        self.loss_fn = loss_fn
        self.generator = np.random.default_rng(config.seed)

    def train_epoch(self, batches: DailyBatches) -> np.ndarray:
        """One pass over the days in shuffled order; returns the train-mode predictions ``[rows]``."""
        self.network.train()
        preds = np.full(batches.n_rows, np.nan, dtype=np.float32)
        order = self.generator.permutation(batches.n_days)
        for day, (x, concepts, y, w) in _progress(batches.days(self.device, order), batches.n_days, "train"):
            pred = self.network(x, concepts)
            loss = self.loss_fn(pred, y, w)
            if loss is None:  # no finite label on this day
                continue
            self.optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_value_(self.network.parameters(), self.config.clip_value)
            self.optimizer.step()
            preds[batches.day_slice(day)] = pred.detach().cpu().numpy()
        return preds

    def predict(self, batches: DailyBatches) -> np.ndarray:
        return predict_days(self.network, batches, self.device)

    def evaluate(self, batches: DailyBatches, preds: Optional[np.ndarray] = None) -> Dict[str, float]:
        preds = self.predict(batches) if preds is None else preds
        return daily_metrics(preds, batches.labels.numpy(), batches.day_start, batches.day_count)

    def fit(self, train: DailyBatches, valid: DailyBatches, evals_result: Optional[dict] = None) -> FitResult:
        """Train with early stopping on ``valid``; leaves the best weights in ``network``.

        ``evals_result["train"]`` / ``["valid"]`` receive the chosen metric per epoch (``-loss`` for loss, like
        qlib's score). The train figure comes from the epoch's own train-mode predictions unless
        ``config.eval_train`` asks for a separate eval pass over the train segment (qlib's way, ~30% slower).
        """
        cfg = self.config
        evals_result = {} if evals_result is None else evals_result
        evals_result["train"], evals_result["valid"] = [], []
        stopper = EarlyStopping(cfg.early_stop)
        history = []
        for epoch in range(cfg.n_epochs):
            tic = time.perf_counter()
            train_preds = self.train_epoch(train)
            train_seconds = time.perf_counter() - tic
            train_metrics = self.evaluate(train, None if cfg.eval_train else train_preds)
            valid_metrics = self.evaluate(valid)
            seconds = time.perf_counter() - tic
            train_score, valid_score = score_of(train_metrics, cfg.metric), score_of(valid_metrics, cfg.metric)
            evals_result["train"].append(train_score)
            evals_result["valid"].append(valid_score)
            history.append({"epoch": epoch, "seconds": seconds, "train_seconds": train_seconds, **{f"train_{k}": v for k, v in train_metrics.items()},
                            **{f"valid_{k}": v for k, v in valid_metrics.items()}})
            self.logger.info(
                "Epoch %d: train loss %.6f | valid ic %.4f rank_ic %.4f loss %.6f | %.1fs",
                epoch, train_metrics["loss"], valid_metrics["ic"], valid_metrics["rank_ic"], valid_metrics["loss"], seconds,
            )
            if not np.isfinite(valid_score):
                self.logger.warning("Epoch %d: valid %s is not finite", epoch, cfg.metric)
            if stopper.update(epoch, valid_score if np.isfinite(valid_score) else -np.inf, self.network):
                self.logger.info("early stop at epoch %d (no better valid %s for %d epochs)", epoch, cfg.metric, cfg.early_stop)
                break
        if stopper.best_state is not None:
            self.network.load_state_dict(stopper.best_state)
        self.logger.info("best valid %s: %.6f @ epoch %d", cfg.metric, stopper.best_score, stopper.best_epoch)
        return FitResult(stopper.best_epoch, stopper.best_score, history)
