"""The epoch loop as parts: ``fit`` -> ``run_epoch`` -> ``train_epoch`` -> ``train_step``, with callbacks.

Model-agnostic: it trains any module with ``forward_day(day) -> [n]`` (:class:`~qlib_hist.network.HISTModel`,
:class:`~qlib_hist.network.RNNRegressor`) on :class:`~qlib_hist.batches.DailyBatches`, one optimizer step per
trading day, days in a seeded shuffled order (as qlib's HIST and the paper). It never imports qlib.

Parts, each with ``state_dict`` / ``load_state_dict`` (so that a checkpoint is the sum of them):

- :class:`EarlyStopping`   qlib's rule: keep the best valid score's weights, stop after ``early_stop`` bad epochs;
- :class:`WeightAveraging`  ``smooth_steps``: evaluate (and keep as best) the mean of the last N epochs' weights;
- :class:`History`          one record per epoch (seconds, the objective, train and valid metrics);
- the optimizer, the RNG states and the epoch counter (:meth:`Trainer.state_dict`).

Callbacks (:mod:`qlib_hist.callbacks`) see the trainer at the start of ``fit``, after each epoch and at the end:
logging and checkpoints are callbacks, and so are a test's interruptions.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Union, cast

import numpy as np
import torch
from torch import nn

from .batches import DailyBatches, Day
from .callbacks import Callback, LogEpochs
from .context import aux_loss
from .errors import QlibHistError
from .metrics import CUSTOM_LOSS, DailyLoss, LossFn, daily_metrics, objective_key, precision_k, score_of
from .network import full_precision
from .settings import SettingsError, TrainSettings, optimizer_name
from .static_steps import StaticSteps

CLIP_VALUE = 3.0  # qlib clips each gradient element to [-3, 3]
#: train steps between two reads of their losses from the device (the non-finite check): a host sync per step costs
#: a GPU more than the step's own kernels; a NaN is still reported with the step it first appeared at
CHECK_EVERY = 32

State = Dict[str, torch.Tensor]


class TrainingError(QlibHistError):
    """Training cannot succeed (a non-finite loss, no epoch with a finite valid score), or a model that has not been
    trained is asked to predict or fine-tune; the message says why."""


def copy_state(network: nn.Module) -> State:
    """A detached copy of ``network``'s state dict."""
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def average_states(states: Sequence[State]) -> State:
    """Element-wise mean of state dicts (floating tensors; others taken from the last)."""
    last = states[-1]
    return {
        k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v.clone() for k, v in last.items()
    }


@dataclass
class EarlyStopping:
    """qlib's rule: keep the best score's weights; stop after ``patience`` epochs without improvement."""

    patience: int
    best_score: float = -np.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    best_state: Optional[State] = None

    def update(self, epoch: int, score: float, network: nn.Module) -> bool:
        """Record one epoch's score (higher is better); return True when training should stop."""
        if score > self.best_score:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            self.best_state = copy_state(network)
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self) -> Dict[str, Any]:
        return {
            "best_score": float(self.best_score),
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
        self.bad_epochs, self.best_state = state["bad_epochs"], state["best_state"]


class WeightAveraging:
    """The mean of the last ``window`` epochs' weights, swapped in while the epoch is scored (``smooth_steps``).

    Training continues from the unaveraged weights; with ``window = 1`` it does nothing.
    """

    def __init__(self, window: int) -> None:
        self.window = max(1, window)
        self.recent: Deque[State] = deque(maxlen=self.window)

    @property
    def active(self) -> bool:
        return self.window > 1

    @contextlib.contextmanager
    def applied(self, network: nn.Module) -> Iterator[None]:
        """Inside the block ``network`` holds the average (this epoch's weights included); restored after."""
        if not self.active:
            yield
            return
        current = copy_state(network)
        self.recent.append(current)
        network.load_state_dict(average_states(list(self.recent)))
        try:
            yield
        finally:
            network.load_state_dict(current)

    def state_dict(self) -> List[State]:
        return list(self.recent)

    def load_state_dict(self, states: List[State]) -> None:
        self.recent = deque(states, maxlen=self.window)


class History(list):
    """One dict per finished epoch: ``epoch``, ``seconds``, ``train_seconds``, ``train_score``, ``valid_score``,
    every metric as ``train_<name>`` / ``valid_<name>`` (``train_loss`` / ``valid_loss``: the ``loss`` metric, the
    daily MSE), and the objective the epoch minimised, averaged over its optimizer steps, under
    :func:`~qlib_hist.metrics.objective_key`: ``train_mse_loss``, ``train_ic_loss`` or ``train_mse+ic_loss``.

    Records of a checkpoint written before the objective was recorded (0.6.0 and earlier) lack that key; a fit
    resumed from one adds it from the epochs it runs."""

    def column(self, key: str) -> List[float]:
        return [record[key] for record in self]

    def state_dict(self) -> List[Dict[str, float]]:
        return list(self)

    def load_state_dict(self, records: List[Dict[str, float]]) -> None:
        self[:] = records


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


def forward_day(network: nn.Module, day: Day) -> torch.Tensor:
    """``network.forward_day(day)``: predictions ``[n]``, the one call the loop makes of a network."""
    return cast(Callable[[Day], torch.Tensor], network.forward_day)(day)


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with native bf16 arithmetic


def cpu_flags() -> set:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as info:
            return {flag for line in info if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        return set()


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (one of :data:`BF16_CPU_FLAGS`), where bf16 is faster than fp32."""
    return bool(set(BF16_CPU_FLAGS) & cpu_flags())


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse ``precision="bf16"`` where it cannot pay: a CPU without native bf16 (AVX-512 BF16 or AMX)."""
    if precision != "bf16":
        return
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise SettingsError(f"precision='bf16': {torch.cuda.get_device_name(device)} has no bf16; use 'fp32'")
        return
    if not cpu_has_bf16():
        raise SettingsError(
            "precision='bf16' needs a CUDA device or a CPU with avx512_bf16/AMX (this CPU has neither, where bf16 "
            "runs slower than fp32): use precision='fp32'"
        )


def check_cuda_graphs(cuda_graphs: bool, device: torch.device) -> None:
    """Refuse ``cuda_graphs`` off CUDA (captured steps are a CUDA feature; the CPU epoch is the LSTM kernel)."""
    if cuda_graphs and device.type != "cuda":
        raise SettingsError(f"cuda_graphs needs a CUDA device, and this HIST runs on {device}: set cuda_graphs false")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``precision="bf16"``, nothing for fp32. The network turns it off after its
    encoder (:func:`qlib_hist.network.after_encoder`): the concept modules, the heads and the loss run in fp32."""
    if precision == "bf16":  # no weight-cast cache: a captured CUDA graph must recast inside each replay
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def _one_intra_op_thread() -> None:
    torch.set_num_threads(1)


@contextlib.contextmanager
def _threads_kept() -> Iterator[None]:
    """The workers' ``set_num_threads(1)`` reaches the whole process: give the caller its thread count back."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def predict_days(
    network: nn.Module, batches: DailyBatches, device: torch.device, precision: str = "fp32"
) -> np.ndarray:
    """Eval-mode predictions ``[rows]`` in the batches' (day-sorted) row order.

    Days are independent at inference, so on a CPU they run in parallel, one day per core with one intra-op
    thread each (per-day tensors are too small for intra-op threads to pay off); on a GPU they run in order.
    """
    network.eval()
    preds = np.empty(batches.n_rows, dtype=np.float32)

    @torch.no_grad()
    def predict_day(d: int) -> np.ndarray:
        with autocast(device, precision):
            return full_precision(forward_day(network, batches.day(d, device))).cpu().numpy()

    if device.type != "cpu":  # in order, gathered on the device, read back once
        gathered = torch.empty(batches.n_rows, device=device)
        with torch.no_grad():
            for d, day in _progress(batches.days(device), batches.n_days, "predict"):
                with autocast(device, precision):
                    gathered[batches.day_slice(d)] = full_precision(forward_day(network, day))
        return gathered.cpu().numpy()
    workers = torch.get_num_threads()
    if workers <= 1 or batches.n_days < 2:
        results: Iterator[np.ndarray] = map(predict_day, range(batches.n_days))
        for d, pred in _progress(enumerate(results), batches.n_days, "predict"):
            preds[batches.day_slice(d)] = pred
        return preds
    with _threads_kept(), ThreadPoolExecutor(workers, initializer=_one_intra_op_thread) as pool:
        for d, pred in _progress(enumerate(pool.map(predict_day, range(batches.n_days))), batches.n_days, "predict"):
            preds[batches.day_slice(d)] = pred
    return preds


class Trainer:
    """Trains ``network`` on daily batches with ``optimizer`` (see the module docstring).

    Args:
        network: a module with ``forward_day(day) -> [n]``.
        optimizer: over ``network``'s parameters.
        settings: ``n_epochs``, ``early_stop``, ``metric``, ``seed``, ``eval_train`` and ``smooth_steps`` are read.
        device: where the days' tensors go.
        logger: for the per-epoch lines (default ``logging.getLogger("qlib_hist")``).
        callbacks: called after the built-in :class:`~qlib_hist.callbacks.LogEpochs`, in order.
        loss_fn: ``(pred [n], label [n], sample_weight [n] or None) -> scalar or None`` (None: the day is skipped);
            default: :class:`~qlib_hist.metrics.DailyLoss` named by ``settings.loss``.
    """

    def __init__(
        self,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        settings: TrainSettings,
        device: torch.device,
        logger: Optional[logging.Logger] = None,
        callbacks: Sequence[Callback] = (),
        loss_fn: Optional[LossFn] = None,
    ) -> None:
        self.network = network
        self.optimizer = optimizer
        self.settings = settings
        self.device = device
        self.logger = logger or logging.getLogger("qlib_hist")
        self.callbacks: List[Callback] = [LogEpochs(self.logger), *callbacks]
        #: the settings' loss by name: the padded steps use its sync-free form, and it says which days it skips
        self.daily_loss = loss_fn if isinstance(loss_fn, DailyLoss) else DailyLoss(settings.loss, settings.ic_weight)
        self.loss_fn: LossFn = loss_fn or self.daily_loss
        #: the auxiliary horizons' loss (``aux_horizons``): the settings' loss by name, its skipped days not logged
        self.aux_day_loss = DailyLoss(settings.loss, settings.ic_weight)
        self.with_aux = getattr(network, "aux_head", None) is not None and settings.aux_weight > 0
        #: the name of what the optimizer steps minimise (a :data:`~qlib_hist.metrics.LOSSES` name, or ``custom``;
        #: ``+aux`` with the auxiliary horizons' term)
        self.objective = (self.daily_loss.name if self.loss_fn is self.daily_loss else CUSTOM_LOSS) + (
            "+aux" if self.with_aux else ""
        )
        #: the objective averaged over the last :meth:`train_epoch`'s optimizer steps (NaN before one, or with none)
        self.epoch_objective = float("nan")
        self._objective_sum, self._objective_steps = 0.0, 0
        check_precision(settings.precision, device)
        self.static_steps: Optional[StaticSteps] = None
        if settings.cuda_graphs:  # padded days and one captured step per bucket (eager padded steps off CUDA)
            self.static_steps = StaticSteps(
                network,
                optimizer,
                self._static_loss,
                CLIP_VALUE,
                self._forward,
                capture=device.type == "cuda",
            )
        self.generator = np.random.default_rng(settings.seed)
        self.stopper = EarlyStopping(settings.early_stop)
        self.averaging = WeightAveraging(settings.smooth_steps)
        self.history = History()
        self.next_epoch = 0
        self.finished = False
        self.unchecked: List[tuple] = []  # (step, day, stocks, loss on the device) not yet read back
        self._resident: Dict[int, DailyBatches] = {}  # id(host batches) -> their copy on the device
        #: the stream of the RNN's dropout in a batched ensemble (:mod:`qlib_hist.batched`); None: torch's global one
        self.dropout_generator: Optional[torch.Generator] = None
        self._trainable: Dict[int, np.ndarray] = {}  # id(host batches) -> the days a padded step trains on

    # ------------------------------------------------------------------ the loop
    def fit(
        self,
        train: DailyBatches,
        valid: DailyBatches,
        evals_result: Optional[dict] = None,
        keep_start: bool = False,
    ) -> FitResult:
        """Train with early stopping on ``valid``; leaves the best weights in ``network``.

        ``evals_result["train"]`` / ``["valid"]`` receive the chosen metric per epoch (``-loss`` for loss, like
        qlib's score), not the objective (that is in the history, under ``objective_key(self.objective)``).
        ``keep_start`` (fine-tuning): the starting weights are scored on ``valid`` first, as epoch ``-1``, and stay
        when no epoch beats them.
        """
        self.begin_fit(valid, keep_start)
        while self.running:
            self.run_epoch(train, valid)
        return self.end_fit(evals_result)

    @property
    def running(self) -> bool:
        """Whether another epoch is due (not early-stopped, ``n_epochs`` not reached)."""
        return not self.finished and self.next_epoch < self.settings.n_epochs

    def begin_fit(self, valid: DailyBatches, keep_start: bool = False) -> None:
        """The callbacks' ``on_fit_begin`` (a checkpoint resumes here), then the starting score for ``keep_start``."""
        for callback in self.callbacks:
            callback.on_fit_begin(self)
        if keep_start and self.next_epoch == 0 and self.stopper.best_state is None:
            self.score_start(valid)

    def end_fit(self, evals_result: Optional[dict] = None) -> FitResult:
        """The best weights into the network, ``evals_result`` filled, the callbacks' ``on_fit_end``."""
        if evals_result is not None:
            evals_result["train"] = self.history.column("train_score")
            evals_result["valid"] = self.history.column("valid_score")
        if self.history and self.stopper.best_state is None:
            raise TrainingError(
                f"no epoch gave a finite valid {self.settings.metric} ({len(self.history)} epochs): the valid labels "
                "or the predictions do not vary within a day; use metric 'loss' or check the valid segment"
            )
        if self.stopper.best_state is not None:
            self.network.load_state_dict(self.stopper.best_state)
        result = FitResult(self.stopper.best_epoch, self.stopper.best_score, list(self.history))
        for callback in self.callbacks:
            callback.on_fit_end(self, result)
        return result

    def run_epoch(self, train: DailyBatches, valid: DailyBatches) -> Dict[str, float]:
        """Train one epoch, score it, update early stopping and history, then call the callbacks.

        The train figure comes from the epoch's own train-mode predictions unless ``eval_train`` asks for a
        separate eval pass (qlib's way, ~30% slower) or weight averaging changes the weights being scored.
        """
        tic = time.perf_counter()
        train_preds = self.train_epoch(train)
        return self.close_epoch(train, valid, train_preds, tic, time.perf_counter() - tic)

    def close_epoch(
        self,
        train: DailyBatches,
        valid: DailyBatches,
        train_preds: np.ndarray,
        started: float,
        train_seconds: float,
        valid_preds: Optional[np.ndarray] = None,
    ) -> Dict[str, float]:
        """Score the epoch that began at ``started`` (``time.perf_counter()``) and whose train pass gave
        ``train_preds [rows]`` in ``train_seconds``; update early stopping and history, then call the callbacks (see
        :meth:`run_epoch`). ``valid_preds [rows]``: the network's eval-mode predictions on ``valid``, made elsewhere
        (a batched ensemble's one pass); None: predicted here."""
        if valid_preds is not None and self.averaging.active:
            raise ValueError("valid_preds are of the network's weights; with smooth_steps valid scores their average")
        epoch, tic = self.next_epoch, started
        with self.averaging.applied(self.network):
            reuse = not (self.settings.eval_train or self.averaging.active)
            train_metrics = self.evaluate(train, train_preds if reuse else None)
            valid_metrics = self.evaluate(valid, valid_preds)
            score = score_of(valid_metrics, self.settings.metric)
            stop = self.stopper.update(epoch, score if np.isfinite(score) else -np.inf, self.network)
        record = {
            "epoch": epoch,
            "seconds": time.perf_counter() - tic,
            "train_seconds": train_seconds,
            "train_score": score_of(train_metrics, self.settings.metric),
            "valid_score": score,
            objective_key(self.objective): self.epoch_objective,
            **{f"train_{k}": v for k, v in train_metrics.items()},
            **{f"valid_{k}": v for k, v in valid_metrics.items()},
        }
        self.history.append(record)
        self.next_epoch, self.finished = epoch + 1, stop or epoch + 1 >= self.settings.n_epochs
        for callback in self.callbacks:
            callback.on_epoch_end(self, record)
        return record

    def score_start(self, valid: DailyBatches) -> float:
        """Score the weights as they are (before any epoch) on ``valid``; early stopping holds them as epoch -1."""
        score = score_of(self.evaluate(valid), self.settings.metric)
        self.stopper.update(-1, score if np.isfinite(score) else -np.inf, self.network)
        self.logger.info("starting weights: valid %s %.6f", self.settings.metric, score)
        return score

    def on_device(self, batches: DailyBatches) -> DailyBatches:
        """``batches`` moved to the training device once (kept for the trainer's life; the same object on a CPU)."""
        if batches.features.device == self.device:
            return batches
        if id(batches) not in self._resident:
            self._resident[id(batches)] = batches.to(self.device)
        return self._resident[id(batches)]

    def share_device_copies(self, other: "Trainer") -> None:
        """Use ``other``'s copies of the segments on the device (:meth:`on_device`): one copy for a batched
        ensemble's K members, not K."""
        self._resident = other._resident

    def train_epoch(self, batches: DailyBatches) -> np.ndarray:
        """One pass over the days in shuffled order; returns the train-mode predictions ``[rows]`` (NaN on days
        without a finite label).

        The days are views of the segment on the device (:meth:`on_device`); the predictions gather there and
        the losses are read back every :data:`CHECK_EVERY` steps, not after each; their mean over the epoch's steps
        is :attr:`epoch_objective`.
        """
        preds = self.begin_epoch(batches)
        order = self.generator.permutation(batches.n_days)
        days = self.on_device(batches).days(self.device, order)
        trainable = self.trainable_days(batches) if self.static_steps is not None else None
        for step, (d, day) in enumerate(_progress(days, batches.n_days, "train")):
            if trainable is not None and not trainable[d]:
                continue
            pred = self.train_step(day, step, d)
            if pred is not None:
                preds[batches.day_slice(d)] = pred
            if len(self.unchecked) >= CHECK_EVERY:
                self.check_losses()
        self.end_epoch(batches)
        return preds.cpu().numpy()

    def begin_epoch(self, batches: DailyBatches) -> torch.Tensor:
        """Train mode, the epoch's objective reset; returns the train predictions to fill ``[rows]`` (NaN)."""
        self.network.train()
        self._objective_sum, self._objective_steps = 0.0, 0
        return torch.full((batches.n_rows,), float("nan"), device=self.device)

    def end_epoch(self, batches: DailyBatches) -> None:
        """The last losses checked, the epoch's mean objective set, the loss's skipped days logged."""
        self.check_losses()
        steps = self._objective_steps
        self.epoch_objective = self._objective_sum / steps if steps else float("nan")
        skipped = getattr(self.loss_fn, "skipped_ic_days", 0)
        if skipped:
            self.logger.warning(
                "epoch %d: the %s loss had no correlation on %d of %d days (under 2 finite labels, or constant "
                "labels): %s",
                self.next_epoch,
                self.settings.loss,
                skipped,
                batches.n_days,
                "skipped" if self.settings.loss == "ic" else "trained on their mse alone",
            )
            cast(DailyLoss, self.loss_fn).skipped_ic_days = 0

    def train_step(self, day: Day, step: int = 0, day_number: int = -1) -> Optional[torch.Tensor]:
        """One optimizer step on one day; returns its predictions ``[n]`` (detached, on the device), or None when
        the loss skips the day. The loss joins :attr:`unchecked` (``step``, ``day_number``: for the message)."""
        if self.static_steps is not None:
            pred, loss = self.static_steps.step(day)
            self.unchecked.append((step, day_number, len(pred), loss))
            return pred
        pred, aux_pred = self._outputs(day)
        objective = self.day_objective(pred, aux_pred, day, step, day_number)
        if objective is None:
            return None
        self.optimizer.zero_grad()
        objective.backward()
        self.optimizer_step()
        return pred.detach()

    def day_objective(
        self, pred: torch.Tensor, aux_pred: Optional[torch.Tensor], day: Day, step: int, day_number: int
    ) -> Optional[torch.Tensor]:
        """The objective of one day's predictions ``pred [n]`` (and auxiliary outputs ``aux_pred [n, A]``): the
        loss, plus ``aux_weight`` times the auxiliary horizons' mean loss; None when the loss skips the day. The
        value joins :attr:`unchecked`."""
        loss = self.loss_fn(pred, cast(torch.Tensor, day.label), day.sample_weight)
        if loss is None:
            return None
        if aux_pred is not None and self.with_aux and day.aux_label is not None:  # (qlib_hist.context)
            aux = aux_loss(aux_pred, day.aux_label, self.aux_day_loss, day.sample_weight)
            loss = loss + self.settings.aux_weight * aux
        self.unchecked.append((step, day_number, len(pred), loss.detach()))
        return loss

    def optimizer_step(self) -> None:
        """qlib's step: each gradient element clipped to ``[-CLIP_VALUE, CLIP_VALUE]``, then the optimizer's."""
        nn.utils.clip_grad_value_(self.network.parameters(), CLIP_VALUE)
        self.optimizer.step()

    def _forward(self, network: nn.Module, day: Day) -> torch.Tensor:
        """The network's predictions ``[n]`` for ``day``, in fp32 (under autocast with ``precision="bf16"``)."""
        with autocast(self.device, self.settings.precision):
            return full_precision(forward_day(network, day))

    def _outputs(self, day: Day) -> "tuple[torch.Tensor, Optional[torch.Tensor]]":
        """(predictions ``[n]``, auxiliary outputs ``[n, K]`` or None) for ``day``, in fp32, from one pass: the
        auxiliary heads' outputs where they train (``aux_horizons``, on a day with their labels)."""
        if not (self.with_aux and day.aux_label is not None):
            return self._forward(self.network, day), None
        with autocast(self.device, self.settings.precision):
            pred, aux = cast(Any, self.network).forward_with_aux(day)
            return full_precision(pred), full_precision(aux)

    def _static_loss(self, pred: torch.Tensor, day: Day) -> torch.Tensor:
        return self.daily_loss.static(pred, cast(torch.Tensor, day.label), day.sample_weight)

    def trainable_days(self, batches: DailyBatches) -> np.ndarray:
        """``[days]`` bool: the days a padded step can train on (a finite label; for the ``ic`` loss, two labels
        that differ), read from the host's labels once per segment; the days without a correlation are logged."""
        if id(batches) not in self._trainable:
            labels = cast(torch.Tensor, batches.labels).numpy()
            with np.errstate(invalid="ignore"):
                finite = np.add.reduceat(np.isfinite(labels), batches.day_start)
                spread = np.fmax.reduceat(labels, batches.day_start) - np.fmin.reduceat(labels, batches.day_start)
            correlated = (finite >= 2) & (spread > 0)
            loss = self.daily_loss
            if self.settings.loss != "mse" and not correlated.all():
                self.logger.warning(
                    "the %s loss has no correlation on %d of %d days (under 2 finite labels, or constant labels): %s",
                    self.settings.loss,
                    int((~correlated).sum()),
                    len(correlated),
                    "skipped" if loss.needs_correlation() else "trained on their mse alone",
                )
            self._trainable[id(batches)] = correlated if loss.needs_correlation() else finite > 0
        return self._trainable[id(batches)]

    def check_losses(self) -> None:
        """Read the unchecked steps' losses from the device at once; a non-finite one stops the fit, naming the
        first step that showed it (the weights turn NaN from there). The finite ones add to the epoch's objective."""
        if not self.unchecked:
            return
        losses = torch.stack([loss.float() for *_, loss in self.unchecked]).cpu().numpy()  # one host sync
        bad = np.flatnonzero(~np.isfinite(losses))
        pending, self.unchecked = self.unchecked, []
        self._objective_sum += float(losses.sum(dtype=np.float64))
        self._objective_steps += len(losses)
        if len(bad):
            step, day, stocks, loss = pending[int(bad[0])]
            raise TrainingError(
                f"epoch {self.next_epoch}: the train loss is {float(loss)} at step {step} (day {day}) on a day of "
                f"{stocks} stocks: the network's weights or inputs hold NaN/inf or overflow float32 (check model_path, "
                "concept_weight, the concept matrix and lr)"
            )

    def predict(self, batches: DailyBatches) -> np.ndarray:
        return predict_days(self.network, self.on_device(batches), self.device, self.settings.precision)

    def evaluate(self, batches: DailyBatches, preds: Optional[np.ndarray] = None) -> Dict[str, float]:
        """Daily metrics of ``preds`` (default: an eval-mode pass) against the batches' labels."""
        if batches.labels is None:
            raise ValueError("evaluate needs batches built with labels (with_label=True)")
        preds = self.predict(batches) if preds is None else preds
        return daily_metrics(
            preds, batches.labels.numpy(), batches.day_start, batches.day_count, precision_k(self.settings.metric)
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue bit for bit (plain tensors and numbers: loads with ``weights_only``)."""
        return {
            "next_epoch": self.next_epoch,
            "finished": self.finished,
            "model": copy_state(self.network),
            "optimizer": self.optimizer.state_dict(),
            "stopper": self.stopper.state_dict(),
            "recent_states": self.averaging.state_dict(),
            "history": self.history.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "shuffle_rng": self.generator.bit_generator.state,
            **({} if self.dropout_generator is None else {"dropout_rng": self.dropout_generator.get_state()}),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.stopper.load_state_dict(state["stopper"])
        self.averaging.load_state_dict(state["recent_states"])
        self.history.load_state_dict(state["history"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.generator.bit_generator.state = state["shuffle_rng"]
        if self.dropout_generator is not None and "dropout_rng" in state:
            self.dropout_generator.set_state(state["dropout_rng"])
        self.next_epoch, self.finished = state["next_epoch"], state["finished"]


def make_optimizer(
    name: str, network: nn.Module, lr: float, weight_decay: float = 0.0, capturable: bool = False
) -> torch.optim.Optimizer:
    """qlib's optimizer choice: ``"adam"`` or ``"gd"`` (plain SGD) over ``network``'s parameters.

    ``weight_decay > 0`` is decoupled for Adam (``torch.optim.AdamW``) and SGD's own decay for ``gd``; at 0 the
    optimizer is qlib's, unchanged. ``capturable``: Adam/AdamW keep their step counts on the device, so that a
    CUDA graph can capture ``step()`` (``cuda_graphs``).
    """
    name = optimizer_name(name)
    params = network.parameters()
    if name == "adam" and weight_decay > 0:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, capturable=capturable)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, capturable=capturable)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


def select_device(GPU: Union[int, str, None], logger: logging.Logger) -> torch.device:
    """qlib's rule (``cuda:<GPU>`` when CUDA is there and ``GPU >= 0``), falling back to CPU with a log line."""
    if isinstance(GPU, str) and not GPU.lstrip("-").isdigit():
        try:
            device = torch.device(GPU)
        except RuntimeError:
            raise SettingsError(f"GPU must be a CUDA index or a device string such as 'cuda:0', got {GPU!r}") from None
        if device.type != "cuda":
            return device
        gpu = 0 if device.index is None else device.index
    else:
        gpu = -1 if GPU is None else int(GPU)
    if 0 <= gpu < (torch.cuda.device_count() if torch.cuda.is_available() else 0):
        return torch.device(f"cuda:{gpu}")
    if gpu >= 0:
        logger.info("CUDA is not available: HIST runs on the CPU (GPU=%s ignored)", GPU)
    return torch.device("cpu")
