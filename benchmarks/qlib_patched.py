"""qlib's own HIST, patched only enough to run on a CPU with pandas 3 — a labelled baseline, not a product.

Three patches, active only inside ``fit`` / ``predict`` of :class:`PatchedQlibHIST`:

1. ``torch.get_device(x)`` returns -1 for CPU tensors and ``torch.device(-1)`` raises: answer ``"cpu"`` instead;
2. ``torch.load(model_path)`` of qlib's CUDA-saved LSTM/GRU files fails without CUDA: default ``map_location="cpu"``;
3. pandas 3 returns read-only ``Series.values`` and qlib writes into them (``stock_index[np.isnan(...)] = 733``):
   give a writable copy, as pandas < 3 did.

It also keeps, beside qlib's ``evals_result``, what a table needs from each fit and qlib's loop only logs:
``history`` (per epoch: ``valid_score``, qlib's early-stopping score, and ``seconds``, from the start of one
epoch's training to the next's, so the extra train scoring pass is in it), ``best_epoch`` and ``best_score``.

Everything else — row 733 for unknown stocks, the ``.npy`` read every epoch, the extra train scoring pass,
the test segment prepared in ``fit`` — is qlib's behaviour, unchanged.

qlib's ``fit`` keeps no checkpoint, so its own budget (200 epochs, early stop 20: hours on a CPU) cannot outlive a
session. With ``checkpoint_dir`` (a folder; ``None``, the default, runs qlib's ``fit`` itself), ``fit`` is qlib's
loop written out again (:meth:`PatchedQlibHIST._checkpointed_fit`: the same statements in the same order, qlib's
own ``train_epoch`` and ``test_epoch``) that writes, atomically after every epoch, ``qlib_hist_checkpoint.pt``:
the network's weights, the optimizer's state, the random states (numpy's global generator, which ``train_epoch``
shuffles the days with; torch's CPU and CUDA generators, for dropout; Python's ``random``, which it does not use),
the epoch, the best score, epoch and weights, the early-stopping count, ``evals_result`` and each epoch's
seconds, with a fingerprint of the settings, the input files and the train/valid data. A ``fit`` that finds the
checkpoint of the same fingerprint resumes after its epoch, bit for bit as if never stopped
(tests/benchmarks/test_qlib_checkpoint.py); one of another fingerprint is refused
(:class:`~qlib_hist.callbacks.CheckpointError`, naming the file). There an epoch's ``seconds`` run from the start
of its training to the end of its scoring (before its checkpoint is written), kept across attempts. A finished
fit's checkpoint stays (``benchmarks.run`` removes it once the run's result file is written): a ``fit`` with the
same folder gives the same model again without training. On CUDA the same states are restored (the CUDA
generators too); whether a resume is bit-identical there depends on CUDA's kernels and is not tested.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import os
import random
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from qlib.contrib.model import pytorch_hist as qlib_hist_module
from qlib.contrib.model.pytorch_hist import HIST
from qlib.data.dataset import DatasetH
from qlib.data.dataset.handler import DataHandlerLP

from qlib_hist.atomic_files import atomic_path, check_writable
from qlib_hist.callbacks import CheckpointError, damaged_checkpoint, read_checkpoint_file
from qlib_hist.digests import json_sha1
from qlib_hist.settings import QLIB_ARGUMENTS

#: the checkpoint file in ``checkpoint_dir``
CHECKPOINT_NAME = "qlib_hist_checkpoint.pt"
#: the checkpoint's layout: a checkpoint of another format is refused
CHECKPOINT_FORMAT = 1
#: qlib's file settings: the fingerprint holds their contents, not their paths (a moved cache still resumes)
FINGERPRINT_FILES = ("model_path", "stock2concept", "stock_index")
#: qlib's settings that change what its ``fit`` computes (the fingerprint): its arguments but ``GPU`` (it says where)
#: and the files (their contents count instead)
FINGERPRINT_SETTINGS = tuple(name for name in QLIB_ARGUMENTS if name != "GPU" and name not in FINGERPRINT_FILES)
#: every entry a checkpoint holds
CHECKPOINT_KEYS = (
    "format",
    "fingerprint",
    "epoch",
    "model",
    "optimizer",
    "rng",
    "best_score",
    "best_epoch",
    "best_param",
    "stop_steps",
    "stopped",
    "evals_result",
    "epoch_seconds",
)


@contextlib.contextmanager
def cpu_pandas3_patches():
    get_device, load, values = torch.get_device, torch.load, pd.Series.values
    torch.get_device = lambda t: t.get_device() if t.is_cuda else "cpu"  # type: ignore[assignment,return-value]
    torch.load = functools.partial(load, map_location="cpu")
    pd.Series.values = property(lambda s: s.to_numpy(copy=True))
    try:
        yield
    finally:
        torch.get_device, torch.load, pd.Series.values = get_device, load, values


def _file_digest(path: str | None) -> str | None:
    """sha1 of a file's bytes (``None`` for no file)."""
    if path is None:
        return None
    digest = hashlib.sha1()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _frame_digest(frame: pd.DataFrame) -> str:
    """A cheap, stable hash of a prepared segment: shape, columns, every row's day and stock, every 97th row's
    values and every label (as the fingerprint of qlib_hist's own checkpoints samples its segments)."""
    digest = hashlib.sha1(repr((frame.shape, list(map(str, frame.columns)))).encode())
    for part in (
        pd.util.hash_pandas_object(frame.index, index=False).to_numpy(),
        frame.iloc[::97].to_numpy(dtype=np.float64),
        frame["label"].to_numpy(dtype=np.float64),
    ):
        digest.update(np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()


def rng_state() -> dict:
    """The random states qlib's loop draws from, in types ``torch.load(weights_only=True)`` reads back."""
    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple)  # the legacy form: (name, keys, pos, has_gauss, cached)
    name, keys, pos, has_gauss, cached = state
    return {
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`'s states."""
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])


class PatchedQlibHIST(HIST):
    """``qlib.contrib.model.pytorch_hist.HIST`` with :func:`cpu_pandas3_patches` around fit and predict, and,
    with ``checkpoint_dir``, a checkpoint after every epoch that a later ``fit`` resumes from (module docstring)."""

    def __init__(self, *args: Any, checkpoint_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checkpoint_dir = checkpoint_dir

    # qlib's own signatures, not ``*args, **kwargs``: qlib's trainers pass keywords through ``auto_filter_kwargs``
    # (``reweighter=...``), which forwards every keyword to a function that takes ``**kwargs``.
    def fit(self, dataset: DatasetH, evals_result: dict | None = None, save_path: str | None = None) -> None:
        evals_result = {} if evals_result is None else evals_result
        self._epoch_starts: list[float] = []
        folder = getattr(self, "checkpoint_dir", None)  # absent from a model pickled before it existed
        with cpu_pandas3_patches():
            if not folder:  # qlib's fit itself
                super().fit(dataset, evals_result=evals_result, save_path=save_path)
                ends = [*self._epoch_starts[1:], time.perf_counter()]
                seconds = [end - start for start, end in zip(self._epoch_starts, ends)]
            else:
                seconds = self._checkpointed_fit(dataset, evals_result, save_path, folder)
        valid = [float(score) for score in evals_result.get("valid", [])]
        self.history = [
            {"epoch": epoch, "valid_score": score, "seconds": sec}
            for epoch, (score, sec) in enumerate(zip(valid, seconds))
        ]
        # qlib keeps the first epoch with the highest valid score (strict ``>``), as the first argmax is
        best = max(range(len(valid)), key=valid.__getitem__) if valid else None
        self.best_epoch, self.best_score = best, (None if best is None else valid[best])

    def train_epoch(self, *args: object) -> None:
        """qlib's epoch of training, its start time noted: qlib's ``fit`` calls it first in every epoch."""
        self._epoch_starts.append(time.perf_counter())
        return super().train_epoch(*args)

    def predict(self, dataset: DatasetH, segment: str | slice = "test") -> pd.Series:
        with cpu_pandas3_patches():
            return super().predict(dataset, segment)

    # ------------------------------------------------------------------------------------------ checkpoints
    def _checkpointed_fit(self, dataset: DatasetH, evals_result: dict, save_path: str | None, folder: str) -> list:
        """qlib's ``HIST.fit`` (qlib 0.9.x), statement for statement, with a checkpoint written after every epoch
        and, when ``folder`` holds one of this fit, the epochs it holds not trained again. Returns each epoch's
        seconds (those of earlier attempts from the checkpoint)."""
        path = check_writable(folder, "checkpoint_dir", folder=True) / CHECKPOINT_NAME
        df_train, df_valid, df_test = dataset.prepare(
            ["train", "valid", "test"],
            col_set=["feature", "label"],
            data_key=DataHandlerLP.DK_L,
        )
        if df_train.empty or df_valid.empty:
            raise ValueError("Empty data from dataset, please check your dataset config.")

        if not os.path.exists(self.stock2concept):
            url = "https://github.com/SunsetWolf/qlib_dataset/releases/download/v0/qlib_csi300_stock2concept.npy"
            urllib.request.urlretrieve(url, self.stock2concept)

        stock_index = np.load(self.stock_index, allow_pickle=True).item()
        df_train["stock_index"] = 733
        df_train["stock_index"] = df_train.index.get_level_values("instrument").map(stock_index)
        df_valid["stock_index"] = 733
        df_valid["stock_index"] = df_valid.index.get_level_values("instrument").map(stock_index)

        x_train, y_train, stock_index_train = df_train["feature"], df_train["label"], df_train["stock_index"]
        x_valid, y_valid, stock_index_valid = df_valid["feature"], df_valid["label"], df_valid["stock_index"]

        fingerprint = self.fingerprint(df_train, df_valid)
        checkpoint = read_checkpoint(path, fingerprint)  # before any work: a checkpoint of another fit is refused

        save_path = qlib_hist_module.get_or_create_path(save_path)

        stop_steps = 0
        best_score = -np.inf
        best_epoch = 0
        evals_result["train"] = []
        evals_result["valid"] = []
        best_param = None  # qlib leaves it unbound until an epoch improves
        stopped, start, epoch_seconds = False, 0, []

        # load pretrained base_model
        if self.base_model == "LSTM":
            pretrained_model = qlib_hist_module.LSTMModel()
        elif self.base_model == "GRU":
            pretrained_model = qlib_hist_module.GRUModel()
        else:
            raise ValueError("unknown base model name `%s`" % self.base_model)

        if self.model_path is not None:
            self.logger.info("Loading pretrained model...")
            pretrained_model.load_state_dict(torch.load(self.model_path))

        model_dict = self.HIST_model.state_dict()
        pretrained_dict = {k: v for k, v in pretrained_model.state_dict().items() if k in model_dict}
        model_dict.update(pretrained_dict)
        self.HIST_model.load_state_dict(model_dict)
        self.logger.info("Loading pretrained model Done...")

        if checkpoint is not None:  # after every random draw before qlib's loop: the states are the checkpoint's
            self._load_checkpoint(path, checkpoint)
            start, stopped, stop_steps = checkpoint["epoch"] + 1, checkpoint["stopped"], checkpoint["stop_steps"]
            best_epoch, epoch_seconds = checkpoint["best_epoch"], list(checkpoint["epoch_seconds"])
            if checkpoint["best_param"] is not None:
                best_score = np.float64(checkpoint["best_score"])
                best_param = {k: v.to(self.device) for k, v in checkpoint["best_param"].items()}
            for name in ("train", "valid"):  # qlib's scores are numpy floats: the same values, the same type
                evals_result[name].extend(np.float64(score) for score in checkpoint["evals_result"][name])
            self.logger.info(
                "resumed from checkpoint %s at epoch %d%s", path, start, " (early-stopped)" if stopped else ""
            )

        # train
        self.logger.info("training...")
        self.fitted = True

        for step in range(start, self.n_epochs) if not stopped else ():  # qlib's: range(self.n_epochs)
            self.logger.info("Epoch%d:", step)
            self.logger.info("training...")
            self.train_epoch(x_train, y_train, stock_index_train)

            self.logger.info("evaluating...")
            train_loss, train_score = self.test_epoch(x_train, y_train, stock_index_train)
            val_loss, val_score = self.test_epoch(x_valid, y_valid, stock_index_valid)
            self.logger.info("train %.6f, valid %.6f" % (train_score, val_score))
            evals_result["train"].append(train_score)
            evals_result["valid"].append(val_score)

            if val_score > best_score:
                best_score = val_score
                stop_steps = 0
                best_epoch = step
                best_param = copy.deepcopy(self.HIST_model.state_dict())
            else:
                stop_steps += 1
                if stop_steps >= self.early_stop:
                    self.logger.info("early stop")
                    stopped = True
            epoch_seconds.append(time.perf_counter() - self._epoch_starts[-1])
            state = {
                "epoch": step,
                "best_score": float(best_score),
                "best_epoch": best_epoch,
                "best_param": best_param,
                "stop_steps": stop_steps,
                "stopped": stopped,
                "evals_result": {name: [float(s) for s in evals_result[name]] for name in ("train", "valid")},
                "epoch_seconds": epoch_seconds,
            }
            self._write_checkpoint(path, fingerprint, state)
            if stopped:
                break

        self.logger.info("best score: %.6lf @ %d" % (best_score, best_epoch))
        if best_param is None:  # as qlib's loop fails when no epoch improved (or none ran)
            raise UnboundLocalError("cannot access local variable 'best_param' where it is not associated with a value")
        self.HIST_model.load_state_dict(best_param)
        torch.save(best_param, save_path)
        return epoch_seconds

    def fingerprint(self, df_train: pd.DataFrame, df_valid: pd.DataFrame) -> str:
        """What a checkpoint must have been written with to be resumed: qlib's settings
        (:data:`FINGERPRINT_SETTINGS`), the contents of its files (:data:`FINGERPRINT_FILES`) and the prepared
        train and valid segments (with their concept rows)."""
        settings = {name: getattr(self, name) for name in FINGERPRINT_SETTINGS}
        files = {name: _file_digest(getattr(self, name)) for name in FINGERPRINT_FILES}
        digest = json_sha1({"format": CHECKPOINT_FORMAT, "settings": settings, "files": files})
        digest.update(f"{_frame_digest(df_train)}|{_frame_digest(df_valid)}".encode())
        return digest.hexdigest()[:16]

    def _write_checkpoint(self, path: Path, fingerprint: str, state: dict) -> None:
        """One epoch's checkpoint, written beside ``path`` and renamed onto it (never a partial file)."""
        full = {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": fingerprint,
            "model": self.HIST_model.state_dict(),
            "optimizer": self.train_optimizer.state_dict(),
            "rng": rng_state(),
            **state,
        }
        with atomic_path(path) as tmp:
            torch.save(full, tmp)

    def _load_checkpoint(self, path: Path, checkpoint: dict) -> None:
        """The network, optimizer and random states of ``checkpoint``; a state that does not fit is an error
        naming the file (and the model is left as it was)."""
        before = copy.deepcopy(self.HIST_model.state_dict())
        try:
            self.HIST_model.load_state_dict(checkpoint["model"])
            self.train_optimizer.load_state_dict(checkpoint["optimizer"])
            set_rng_state(checkpoint["rng"])
        except Exception as err:  # torch and numpy raise several types for a state that does not fit
            self.HIST_model.load_state_dict(before)
            raise damaged_checkpoint(path, f"{type(err).__name__}: {' '.join(str(err).split())[:300]}") from None


def read_checkpoint(path: Path, fingerprint: str) -> dict | None:
    """The checkpoint at ``path`` (``None`` when there is none), checked to be one of this fit's."""
    if not path.exists():
        return None
    state = read_checkpoint_file(path, fingerprint)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {state.get('format')!r}, this loop writes {CHECKPOINT_FORMAT}; delete it "
            "or use another checkpoint_dir"
        )
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise damaged_checkpoint(path, f"no {', '.join(map(repr, missing))}")
    return state
