"""The epoch loop: shuffled days, masked loss, gradient clipping, daily metrics, early stopping, checkpoints.

Model-agnostic: it takes any ``network(x [n, F], concepts [n, C], stock_weight [n]?) -> [n]`` and
:class:`DailyBatches`; it never imports qlib. Metrics are computed per trading day and averaged over days:

- ``ic``: Pearson correlation of predictions and labels;
- ``rank_ic``: Spearman correlation (average ranks for ties);
- ``loss``: mean squared error on the finite labels (early stopping maximises ``-loss``);
- ``precision@k``: the share of the day's k highest predictions whose label is positive (the paper's metric;
  with qlib's ``CSRankNorm`` labels "positive" means above the day's median).

Options beyond qlib: ``smooth_steps`` (evaluate and keep the average of the last N epochs' weights, as the
paper's code does) and ``checkpoint_path`` (after every epoch, everything needed to resume bit for bit).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from ._io import atomic_path
from .data import DailyBatches, Day

METRICS = ("ic", "rank_ic", "loss", "precision@<k>")
METRIC_ALIASES = {"": "loss", "mse": "loss", "ic": "ic", "rank_ic": "rank_ic", "loss": "loss"}
PRECISION = re.compile(r"^precision@(\d+)$")
DEFAULT_PRECISION_K = 30


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed here (other settings, another dataset, or an unreadable file)."""


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
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if len(values) and not np.isnan(values).all() else float("nan")


def daily_metrics(pred: np.ndarray, label: np.ndarray, day_start: np.ndarray, day_count: np.ndarray,
                  precision_k: int = DEFAULT_PRECISION_K) -> Dict[str, float]:
    """Per-day ``ic``, ``rank_ic``, ``loss`` and ``precision@k`` of ``pred`` vs ``label`` (``[rows]``), averaged over days.

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
    return {"ic": _nanmean(ics), "rank_ic": _nanmean(rank_ics), "loss": _nanmean(losses),
            f"precision@{precision_k}": _nanmean(precisions)}


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


def _copy_state(network: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def average_states(states: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Element-wise mean of state dicts (floating tensors; others taken from the last)."""
    last = states[-1]
    return {k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v.clone() for k, v in last.items()}


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
            self.best_state = _copy_state(network)
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
    smooth_steps: int = 1
    checkpoint_path: Optional[Path] = None
    fingerprint: str = ""  # identifies settings + data; a checkpoint with another one is refused

    @property
    def precision_k(self) -> int:
        match = PRECISION.match(self.metric)
        return int(match.group(1)) if match else DEFAULT_PRECISION_K


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


def run_network(network: nn.Module, day: Day) -> torch.Tensor:
    return network(day.x, day.concepts, day.stock_weight)


def _one_intra_op_thread() -> None:
    torch.set_num_threads(1)


def predict_days(network: nn.Module, batches: DailyBatches, device: torch.device) -> np.ndarray:
    """Eval-mode predictions ``[rows]`` in the batches' (day-sorted) row order.

    Days are independent at inference, so on a CPU they run in parallel, one day per core with one intra-op
    thread each (per-day tensors are too small for intra-op threads to pay off); on a GPU they run in order.
    """
    network.eval()
    preds = np.empty(batches.n_rows, dtype=np.float32)

    @torch.no_grad()
    def predict_day(d: int) -> np.ndarray:
        return run_network(network, batches.day(d, device)).cpu().numpy()

    workers = torch.get_num_threads() if device.type == "cpu" else 1
    if workers <= 1 or batches.n_days < 2:
        results = map(predict_day, range(batches.n_days))
        for d, pred in _progress(enumerate(results), batches.n_days, "predict"):
            preds[batches.day_slice(d)] = pred
        return preds
    with ThreadPoolExecutor(workers, initializer=_one_intra_op_thread) as pool:
        for d, pred in _progress(enumerate(pool.map(predict_day, range(batches.n_days))), batches.n_days, "predict"):
            preds[batches.day_slice(d)] = pred
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
        self.stopper = EarlyStopping(config.early_stop)
        self.recent_states: deque = deque(maxlen=max(1, config.smooth_steps))
        self.history: List[Dict[str, float]] = []
        self.next_epoch = 0
        self.finished = False

    # ------------------------------------------------------------------ epochs
    def train_epoch(self, batches: DailyBatches) -> np.ndarray:
        """One pass over the days in shuffled order; returns the train-mode predictions ``[rows]``."""
        self.network.train()
        preds = np.full(batches.n_rows, np.nan, dtype=np.float32)
        order = self.generator.permutation(batches.n_days)
        for d, day in _progress(batches.days(self.device, order), batches.n_days, "train"):
            pred = run_network(self.network, day)
            loss = self.loss_fn(pred, day.label, day.sample_weight)
            if loss is None:  # no finite label on this day
                continue
            self.optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_value_(self.network.parameters(), self.config.clip_value)
            self.optimizer.step()
            preds[batches.day_slice(d)] = pred.detach().cpu().numpy()
        return preds

    def predict(self, batches: DailyBatches) -> np.ndarray:
        return predict_days(self.network, batches, self.device)

    def evaluate(self, batches: DailyBatches, preds: Optional[np.ndarray] = None) -> Dict[str, float]:
        preds = self.predict(batches) if preds is None else preds
        return daily_metrics(preds, batches.labels.numpy(), batches.day_start, batches.day_count, self.config.precision_k)

    def fit(self, train: DailyBatches, valid: DailyBatches, evals_result: Optional[dict] = None) -> FitResult:
        """Train with early stopping on ``valid``; leaves the best weights in ``network``.

        ``evals_result["train"]`` / ``["valid"]`` receive the chosen metric per epoch (``-loss`` for loss, like
        qlib's score). The train figure comes from the epoch's own train-mode predictions unless
        ``config.eval_train`` asks for a separate eval pass over the train segment (qlib's way, ~30% slower).
        With ``smooth_steps = N > 1`` the weights evaluated (and kept as best) after each epoch are the mean of
        the last N epochs' weights; training continues from the unaveraged ones.
        """
        cfg = self.config
        if cfg.checkpoint_path is not None and Path(cfg.checkpoint_path).exists():
            self.load_checkpoint(cfg.checkpoint_path)
        for epoch in range(self.next_epoch, cfg.n_epochs if not self.finished else 0):
            tic = time.perf_counter()
            train_preds = self.train_epoch(train)
            train_seconds = time.perf_counter() - tic
            current = _copy_state(self.network) if cfg.smooth_steps > 1 else None
            if current is not None:
                self.recent_states.append(current)
                self.network.load_state_dict(average_states(list(self.recent_states)))
            train_metrics = self.evaluate(train, None if cfg.eval_train or current is not None else train_preds)
            valid_metrics = self.evaluate(valid)
            score = score_of(valid_metrics, cfg.metric)
            stop = self.stopper.update(epoch, score if np.isfinite(score) else -np.inf, self.network)
            if current is not None:
                self.network.load_state_dict(current)
            seconds = time.perf_counter() - tic
            self.history.append({"epoch": epoch, "seconds": seconds, "train_seconds": train_seconds,
                                 "train_score": score_of(train_metrics, cfg.metric), "valid_score": score,
                                 **{f"train_{k}": v for k, v in train_metrics.items()},
                                 **{f"valid_{k}": v for k, v in valid_metrics.items()}})
            self.logger.info(
                "Epoch %d: train loss %.6f | valid %s | %.1fs", epoch, train_metrics["loss"],
                " ".join(f"{k} {v:.4f}" for k, v in valid_metrics.items()), seconds,
            )
            if not np.isfinite(score):
                self.logger.warning("Epoch %d: valid %s is not finite", epoch, cfg.metric)
            self.next_epoch, self.finished = epoch + 1, stop or epoch + 1 >= cfg.n_epochs
            self.after_epoch(epoch)
            if stop:
                self.logger.info("early stop at epoch %d (no better valid %s for %d epochs)", epoch, cfg.metric, cfg.early_stop)
                break
        if evals_result is not None:
            evals_result["train"] = [h["train_score"] for h in self.history]
            evals_result["valid"] = [h["valid_score"] for h in self.history]
        if self.stopper.best_state is not None:
            self.network.load_state_dict(self.stopper.best_state)
        self.logger.info("best valid %s: %.6f @ epoch %d", cfg.metric, self.stopper.best_score, self.stopper.best_epoch)
        return FitResult(self.stopper.best_epoch, self.stopper.best_score, self.history)

    def after_epoch(self, epoch: int) -> None:
        """Called once an epoch is complete: writes the checkpoint when one is configured."""
        if self.config.checkpoint_path is not None:
            self.save_checkpoint(self.config.checkpoint_path)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: Path) -> None:
        """Everything needed to resume bit for bit, written atomically (loads with ``weights_only=True``)."""
        state = {
            "fingerprint": self.config.fingerprint,
            "next_epoch": self.next_epoch,
            "finished": self.finished,
            "model": _copy_state(self.network),
            "optimizer": self.optimizer.state_dict(),
            "stopper": {"best_score": float(self.stopper.best_score), "best_epoch": self.stopper.best_epoch,
                        "bad_epochs": self.stopper.bad_epochs, "best_state": self.stopper.best_state},
            "recent_states": list(self.recent_states),
            "history": self.history,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "shuffle_rng": self.generator.bit_generator.state,
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for a bad file
            raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err})") from None
        if state.get("fingerprint") != self.config.fingerprint:
            raise CheckpointError(
                f"checkpoint {path} was written with other settings or another dataset (fingerprint "
                f"{state.get('fingerprint')!r}, this fit {self.config.fingerprint!r}); delete it or use another checkpoint_dir"
            )
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        stopper = state["stopper"]
        self.stopper = EarlyStopping(self.config.early_stop, stopper["best_score"], stopper["best_epoch"],
                                     stopper["bad_epochs"], stopper["best_state"])
        self.recent_states = deque(state["recent_states"], maxlen=max(1, self.config.smooth_steps))
        self.history = list(state["history"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.generator.bit_generator.state = state["shuffle_rng"]
        self.next_epoch, self.finished = state["next_epoch"], state["finished"]
        self.logger.info("resumed from checkpoint %s at epoch %d%s", path, self.next_epoch, " (finished)" if self.finished else "")
