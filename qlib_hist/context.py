r"""Two inputs beyond a stock's own features, each off by default: the market's state (``market_context``) and the
returns of other horizons as auxiliary targets (``aux_horizons``). Torch and numpy only; the values are read through
qlib in :mod:`qlib_hist.qlib_edge.context`.

**Market gate** (MASTER, Li et al., AAAI 2024). With ``m`` the day's market state (``M`` figures: 21 per index
instrument, see the edge module) standardised by the train segment's mean and std,

.. math::

    \alpha(m) = F \cdot \mathrm{softmax}\big((W m + b) / \beta\big) \in \mathbb{R}^F, \qquad
    \tilde x_{i,f,t} = \alpha_f(m)\, x_{i,f,t}

scales each of the ``F = d_feat`` input fields of every stock and time step before the encoder. ``β`` is the
temperature (``market_temperature``, MASTER's 10 for CSI300). ``W`` and ``b`` start at zero, so ``α = 1`` and the
network starts as the one without the gate (a pretrained base keeps its predictions at epoch 0).

**Auxiliary horizons** (as qlib's TCTS adds t+1..t+3 tasks). Each ``k`` gets a linear head on the representation
the output layer reads (``concept + hidden_concept + individual``, ``[N, H]``), trained on the ``k``-day forward
return rank-normalised per day like the label, with the main loss's own function; the loss is
``main + aux_weight * mean_k(loss_k)``. Predictions come from the main head only. A train day whose ``k``-day label
would read a close after train's end has no label for that head (:func:`aux_label_mask`).
"""

from __future__ import annotations

from typing import Optional, Protocol, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

#: the look-back windows (trading days) of the market state
MARKET_WINDOWS = (5, 10, 20, 30, 60)
#: the figures of one index's state: its return, then per window the return's mean and std and the amount's ratio to
#: its mean and its coefficient of variation
FEATURES_PER_INDEX = 1 + 4 * len(MARKET_WINDOWS)
#: qlib's CSRankNorm: a day's percentile rank, centred and scaled to about unit variance
RANK_NORM_SCALE = 3.46


def market_figures() -> list[str]:
    """The names of one index's :data:`FEATURES_PER_INDEX` figures (``ret``, ``ret_mean5``, ``ret_std5``, ...)."""
    figures = ["ret"]
    for d in MARKET_WINDOWS:
        figures += [f"ret_mean{d}", f"ret_std{d}", f"amount_ratio{d}", f"amount_cv{d}"]
    return figures


def market_names(indexes: Sequence[str]) -> list[str]:
    """The names of the market-state columns, index-major (``SH000300:ret``, ``SH000300:ret_mean5``, ...)."""
    return [f"{name}:{figure}" for name in indexes for figure in market_figures()]


class MarketGate(nn.Module):
    """The market-guided gate of the module docstring.

    Shapes:
        - **fit_scale:** ``market`` ``[days, M]`` (the train segment's; NaN = no bar)
        - **forward:** features ``x`` ``[N, F * T]`` (field-major), ``market`` ``[M]`` -> ``[N, F * T]``
    """

    mean: torch.Tensor  # [M] the train days' mean of each figure (a buffer: saved with the weights)
    std: torch.Tensor  # [M] their std (1 where a figure is constant)

    def __init__(self, n_market: int, d_feat: int, temperature: float) -> None:
        super().__init__()
        self.d_feat, self.temperature = d_feat, temperature
        self.linear = nn.Linear(n_market, d_feat)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("mean", torch.zeros(n_market))
        self.register_buffer("std", torch.ones(n_market))

    @torch.no_grad()
    def fit_scale(self, market: torch.Tensor) -> None:
        """Standardise by ``market``'s per-column mean and std over its days (NaN left out; a constant column is
        centred only)."""
        values = market.double()
        known = ~torch.isnan(values)
        count = known.sum(0).clamp(min=1)
        mean = torch.where(known, values, 0.0).sum(0) / count
        var = torch.where(known, (values - mean) ** 2, 0.0).sum(0) / count
        std = var.sqrt()
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(torch.where(std > 0, std, torch.ones_like(std)).to(self.std.dtype))

    def weights(self, market: torch.Tensor) -> torch.Tensor:
        """``α(m)`` ``[F]`` for one day's state ``market [M]``; a missing figure counts as the train mean."""
        m = ((market - self.mean) / self.std).nan_to_num(0.0)
        return self.d_feat * F.softmax(self.linear(m) / self.temperature, dim=-1)

    def forward(self, x: torch.Tensor, market: torch.Tensor) -> torch.Tensor:
        alpha = self.weights(market)  # [F]
        n = len(x)
        return (x.reshape(n, self.d_feat, -1) * alpha[None, :, None].to(x.dtype)).reshape(n, -1)


def aux_label_mask(
    dates: np.ndarray, horizons: Sequence[int], calendar: pd.DatetimeIndex, last_day: pd.Timestamp
) -> np.ndarray:
    """bool ``[rows, K]``: whether row ``r``'s ``k``-day label (closes on trading days ``t+1`` and ``t+1+k`` after its
    date ``t``) reads no close after ``last_day``. ``calendar``: the trading days from the first row's date on."""
    position = calendar.searchsorted(pd.DatetimeIndex(dates))  # [rows] the row's day in the calendar
    last = calendar.searchsorted(pd.Timestamp(last_day), side="right") - 1  # the last trading day <= last_day
    reads = position[:, None] + 1 + np.asarray(horizons, dtype=np.int64)[None, :]  # [rows, K]
    return reads <= last


def rank_normalise(values: np.ndarray, dates: np.ndarray) -> np.ndarray:
    """``values [rows, K]`` as qlib's ``CSRankNorm`` does a label: per day and column, ``(pct_rank - 0.5) * 3.46``;
    NaN stays NaN."""
    frame = pd.DataFrame(values, index=pd.Index(dates, name="datetime"))
    ranked = frame.groupby(level=0).rank(pct=True)
    return ((ranked - 0.5) * RANK_NORM_SCALE).to_numpy(dtype=np.float64)


class DayLoss(Protocol):
    """A day's loss: ``(predictions [n], labels [n], sample weights [n] or None) -> scalar``, or None to skip."""

    def __call__(
        self, pred: torch.Tensor, label: torch.Tensor, weight: Optional[torch.Tensor] = None
    ) -> Optional[torch.Tensor]: ...


def aux_loss(
    predictions: torch.Tensor, labels: torch.Tensor, day_loss: DayLoss, weight: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """The mean over the ``K`` heads of ``day_loss(predictions[:, k], labels[:, k])``, a head the loss skips that day
    (``None``: e.g. no finite label, or no correlation for the IC loss) left out; 0 when every head is.
    ``predictions``, ``labels``: ``[n, K]``."""
    losses = []
    for k in range(predictions.shape[1]):
        loss = day_loss(predictions[:, k], labels[:, k], weight)
        if loss is not None:
            losses.append(loss)
    if not losses:
        return predictions.sum() * 0.0
    return torch.stack(losses).mean()
