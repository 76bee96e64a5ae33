"""Callbacks of the :class:`~qlib_hist.training.Trainer`: what happens around the loop, not in it.

A callback sees the trainer when ``fit`` begins, after every finished epoch (with that epoch's history record)
and when ``fit`` ends. Built in: :class:`LogEpochs` (always first) and :class:`Checkpoint` (with
``checkpoint_dir``). Tests interrupt and observe training with their own.

What a callback may use of the trainer and of the fit's result is written here as two protocols,
:class:`TrainerState` and :class:`FitSummary` (:class:`~qlib_hist.training.Trainer` and
:class:`~qlib_hist.training.FitResult` are them), so that this module does not import the training loop that
imports it.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Dict, Protocol, Sequence, Union

import numpy as np
import torch
from torch import nn

from .atomic_files import atomic_path
from .errors import QlibHistError
from .metrics import objective_key, objective_label
from .settings import TrainSettings


class StopperState(Protocol):
    """Early stopping as a callback sees it (:class:`~qlib_hist.training.EarlyStopping`)."""

    @property
    def patience(self) -> int: ...

    @property
    def bad_epochs(self) -> int: ...

    @property
    def best_epoch(self) -> int: ...

    @property
    def best_score(self) -> float: ...


class TrainerState(Protocol):
    """The trainer as a callback sees it (:class:`~qlib_hist.training.Trainer`): its settings, network, logger,
    the name of its objective, early stopping, history and epoch counter, and its state for checkpoints."""

    @property
    def settings(self) -> TrainSettings: ...

    @property
    def network(self) -> nn.Module: ...

    @property
    def logger(self) -> logging.Logger: ...

    @property
    def objective(self) -> str: ...

    @property
    def stopper(self) -> StopperState: ...

    @property
    def history(self) -> Sequence[Dict[str, float]]: ...

    @property
    def next_epoch(self) -> int: ...

    @property
    def finished(self) -> bool: ...

    def state_dict(self) -> Dict[str, Any]: ...

    def load_state_dict(self, state: Dict[str, Any]) -> None: ...


class FitSummary(Protocol):
    """What ``fit`` returns, as ``on_fit_end`` sees it (:class:`~qlib_hist.training.FitResult`)."""

    @property
    def best_epoch(self) -> int: ...

    @property
    def best_score(self) -> float: ...


class CheckpointError(QlibHistError):
    """A checkpoint cannot be resumed here (other settings, another dataset, or an unreadable file)."""


class Callback:
    """Base class: override the hooks you need."""

    def on_fit_begin(self, trainer: TrainerState) -> None:
        pass

    def on_epoch_end(self, trainer: TrainerState, record: Dict[str, float]) -> None:
        pass

    def on_fit_end(self, trainer: TrainerState, result: FitSummary) -> None:
        pass


#: a metric's name in the log where it differs from the history's: the ``loss`` metric is the daily MSE
LOGGED_METRIC = {"loss": "mse"}


class LogEpochs(Callback):
    """One log line per epoch, early stops and the best epoch.

    The line names what each figure is: the objective the epoch's steps minimised, averaged over them (``ic_loss``
    for ``loss: ic``, minus the daily IC; ``mse+ic_loss``; ``mse`` for ``loss: mse``), then the train MSE (the
    ``loss`` metric, logged as ``mse``) unless the objective is the MSE, every valid metric, and the seconds::

        Epoch 3: train ic_loss -0.084123 mse 1.003451 | valid ic 0.0612 rank_ic 0.0590 mse 0.9987 ... | 1.2s
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def on_epoch_end(self, trainer: TrainerState, record: Dict[str, float]) -> None:
        epoch, metric, objective = record["epoch"], trainer.settings.metric, trainer.objective
        train = f"{objective_label(objective)} {record[objective_key(objective)]:.6f}"
        if objective != "mse":
            train += f" mse {record['train_loss']:.6f}"
        valid = " ".join(
            f"{LOGGED_METRIC.get(k[6:], k[6:])} {v:.4f}"
            for k, v in record.items()
            if k.startswith("valid_") and k != "valid_score"
        )
        self.logger.info("Epoch %d: train %s | valid %s | %.1fs", epoch, train, valid, record["seconds"])
        if not np.isfinite(record["valid_score"]):
            self.logger.warning("Epoch %d: valid %s is not finite", epoch, metric)
        if trainer.stopper.bad_epochs >= trainer.stopper.patience:
            self.logger.info(
                "early stop at epoch %d (no better valid %s for %d epochs)", epoch, metric, trainer.settings.early_stop
            )

    def on_fit_end(self, trainer: TrainerState, result: FitSummary) -> None:
        self.logger.info(
            "best valid %s: %.6f @ epoch %d", trainer.settings.metric, result.best_score, result.best_epoch
        )


class Checkpoint(Callback):
    """After every epoch, write everything needed to resume bit for bit; on ``fit``, resume from it.

    The file holds :meth:`Trainer.state_dict` plus a ``fingerprint`` of the settings and data that produced it;
    a checkpoint with another fingerprint is refused. Written atomically; read with ``weights_only=True``.
    """

    def __init__(self, path: Union[str, Path], fingerprint: str) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint

    def on_fit_begin(self, trainer: TrainerState) -> None:
        if not self.path.exists():
            return
        state = self.read()
        before = trainer.state_dict()
        self._check_contents(state, before, trainer)
        try:
            trainer.load_state_dict(state)
        except Exception as err:  # torch and numpy raise several types for a state that does not fit
            with contextlib.suppress(Exception):
                trainer.load_state_dict(before)  # as it was: a damaged file changes nothing
            raise self._damaged(f"{type(err).__name__}: {' '.join(str(err).split())[:300]}") from None
        trainer.logger.info(
            "resumed from checkpoint %s at epoch %d%s",
            self.path,
            trainer.next_epoch,
            " (finished)" if trainer.finished else "",
        )

    def on_epoch_end(self, trainer: TrainerState, record: Dict[str, float]) -> None:
        with atomic_path(self.path) as tmp:
            torch.save({"fingerprint": self.fingerprint, **trainer.state_dict()}, tmp)

    def _damaged(self, what: str) -> CheckpointError:
        return damaged_checkpoint(self.path, what)

    def _check_contents(self, state: Dict[str, Any], expected: Dict[str, Any], trainer: TrainerState) -> None:
        """Every entry :meth:`Trainer.state_dict` writes, and the network's weights with its names and shapes."""
        missing = [key for key in expected if key not in state and key not in OPTIONAL_STATE]
        if missing:
            raise self._damaged(f"no {', '.join(map(repr, missing))}")
        model = state["model"]
        if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
            raise self._damaged(f"'model' is a {type(model).__name__}, not the network's weights")
        own = trainer.network.state_dict()
        absent, unknown = sorted(set(own) - set(model)), sorted(set(model) - set(own))
        if absent or unknown:
            raise self._damaged(f"the weights lack {absent[:3] or 'none'} and have unknown {unknown[:3] or 'none'}")
        for name, value in model.items():
            if tuple(value.shape) != tuple(own[name].shape):
                raise self._damaged(
                    f"weight {name!r} has shape {tuple(value.shape)}, the network's is {tuple(own[name].shape)}"
                )

    def read(self) -> Dict[str, Any]:
        """The checkpoint's content, checked to belong to this fit."""
        return read_checkpoint_file(self.path, self.fingerprint)


#: trainer-state entries a checkpoint may lack: the dropout stream of a batched ensemble's member (a sequential fit's
#: checkpoint, resumed batched, starts that stream from its seed)
OPTIONAL_STATE = ("dropout_rng",)


def damaged_checkpoint(path: Path, what: str) -> CheckpointError:
    """The error for a checkpoint file that was read but is not whole (``what`` says how)."""
    return CheckpointError(f"checkpoint {path} is damaged ({what}); delete it to start this fit over from epoch 0")


def read_checkpoint_file(path: Path, fingerprint: str) -> Dict[str, Any]:
    """The dict a checkpoint file holds (``torch.load``, weights only, onto the CPU), refused with a
    :class:`CheckpointError` naming the file when it cannot be read, holds no dict, or was written by another fit
    (its ``fingerprint`` differs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a bad file
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {' '.join(str(err).split())[:300]}); "
            "delete it to start this fit over from epoch 0"
        ) from None
    if not isinstance(state, dict):
        raise damaged_checkpoint(path, f"it holds a {type(state).__name__}, not a checkpoint's dict")
    if state.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"checkpoint {path} was written with other settings or another dataset (fingerprint "
            f"{state.get('fingerprint')!r}, this fit {fingerprint!r}); delete it or use another checkpoint_dir"
        )
    return state
