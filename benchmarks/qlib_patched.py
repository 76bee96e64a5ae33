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
"""

from __future__ import annotations

import contextlib
import functools
import time

import pandas as pd
import torch
from qlib.contrib.model.pytorch_hist import HIST
from qlib.data.dataset import DatasetH


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


class PatchedQlibHIST(HIST):
    """``qlib.contrib.model.pytorch_hist.HIST`` with :func:`cpu_pandas3_patches` around fit and predict."""

    # qlib's own signatures, not ``*args, **kwargs``: qlib's trainers pass keywords through ``auto_filter_kwargs``
    # (``reweighter=...``), which forwards every keyword to a function that takes ``**kwargs``.
    def fit(self, dataset: DatasetH, evals_result: dict | None = None, save_path: str | None = None) -> None:
        evals_result = {} if evals_result is None else evals_result
        self._epoch_starts: list[float] = []
        with cpu_pandas3_patches():
            super().fit(dataset, evals_result=evals_result, save_path=save_path)
        ends = [*self._epoch_starts[1:], time.perf_counter()]
        valid = [float(score) for score in evals_result.get("valid", [])]
        self.history = [
            {"epoch": epoch, "valid_score": score, "seconds": end - start}
            for epoch, (score, start, end) in enumerate(zip(valid, self._epoch_starts, ends))
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
