"""Static-shape train steps (``cuda_graphs``): days padded to a bucket size, and one captured CUDA graph per bucket.

On a GPU a HIST day (~300 stocks) is dozens of tiny kernels, and qlib's loop is bound by their launches and by host
syncs (dynamic shapes: the day's kept concepts and hidden-concept centres). Here a day is padded to the next
multiple of :data:`BUCKET` stocks with a mask (:func:`pad_day`), the network runs its masked, static-shape path
(``HISTModel.forward(..., mask)``) and the loss its sync-free form (:meth:`~qlib_hist.metrics.DailyLoss.static`),
so a whole train step — forward, loss, backward, gradient clipping, optimizer step — has fixed shapes per bucket.

- :func:`pad_day`      padding rows: zero features and concept rows, NaN labels, mask False; they change no loss,
  gradient or attention of the real rows (tests: padded and unpadded agree to 1e-6);
- :class:`StaticSteps` the step for padded days: eager (on a CPU, and a bucket's first :data:`WARMUP` steps on a
  GPU), then replayed from a ``torch.cuda.CUDAGraph`` captured for that bucket (PyTorch's whole-network capture:
  warm-up on a side stream, capture, replay; each bucket's graph has its own memory pool, since buckets replay in
  any order). The optimizer must be built with ``capturable=True`` for Adam/AdamW (``make_optimizer``).

torch only, no qlib.
"""

from __future__ import annotations

import collections
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch
from torch import nn

from .batches import Day

#: days are padded to a multiple of this many stocks (CSI300's ~280-300 stocks: one or two buckets)
BUCKET = 64
#: eager steps of a bucket before its graph is captured (cuBLAS/cuDNN workspaces and the optimizer state exist by then)
WARMUP = 3


def bucket_size(n: int, bucket: int = BUCKET) -> int:
    """The padded size of a day of ``n`` stocks: the next multiple of ``bucket``."""
    return max(bucket, -(-n // bucket) * bucket)


def pad_day(day: Day, size: int) -> Day:
    """``day`` padded to ``size`` stocks: zero features and concepts, NaN labels (the auxiliary horizons' too), zero
    sample weights, unit member weights, ``mask`` True on the day's own rows; the day's market state unchanged."""
    n = len(day.x)
    if size < n:
        raise ValueError(f"cannot pad a day of {n} stocks to {size}")
    extra = size - n

    def pad(values: Optional[torch.Tensor], fill: float) -> Optional[torch.Tensor]:
        if values is None:
            return None
        return torch.cat([values, values.new_full((extra, *values.shape[1:]), fill)])

    mask = torch.arange(size, device=day.x.device) < n  # [size]
    x, concepts = pad(day.x, 0.0), pad(day.concepts, 0.0)
    assert x is not None and concepts is not None
    return Day(
        x,
        concepts,
        pad(day.label, float("nan")),
        pad(day.sample_weight, 0.0),
        pad(day.member_weight, 1.0),
        mask,
        day.market,
        pad(day.aux_label, float("nan")),
    )


LossOfDay = Callable[[torch.Tensor, Day], torch.Tensor]  # (predictions [size], padded day) -> scalar loss


class Captured(NamedTuple):
    """One bucket's graph and the static tensors it reads and writes."""

    graph: "torch.cuda.CUDAGraph"
    inputs: Day  # copied into before each replay
    pred: torch.Tensor  # [size] written by each replay
    loss: torch.Tensor  # [] written by each replay


class StaticSteps:
    """Train steps on padded days; captured as CUDA graphs per bucket where ``capture`` (a CUDA device).

    Args:
        network: a module with ``forward_day(day) -> [size]`` that honours ``day.mask``.
        optimizer: over ``network``'s parameters (``capturable=True`` for Adam/AdamW when capturing).
        loss_of_day: the sync-free loss of a padded day's predictions.
        clip_value: each gradient element is clipped to ``[-clip_value, clip_value]`` (qlib's 3).
        forward: ``(network, day) -> predictions``; the trainer's (with its autocast).
        capture: capture a graph per bucket (CUDA only); eager steps otherwise.
    """

    def __init__(
        self,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_of_day: LossOfDay,
        clip_value: float,
        forward: Callable[[nn.Module, Day], torch.Tensor],
        capture: bool,
    ) -> None:
        self.network, self.optimizer, self.loss_of_day = network, optimizer, loss_of_day
        self.clip_value, self.forward, self.capture = clip_value, forward, capture
        self.graphs: Dict[int, Captured] = {}
        self.eager_steps: Dict[int, int] = collections.Counter()

    def step(self, day: Day) -> Tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on ``day`` (unpadded); returns (its predictions ``[n]``, the loss), both detached."""
        n = len(day.x)
        padded = pad_day(day, bucket_size(n))
        size = len(padded.x)
        if size in self.graphs:
            return self._replay(self.graphs[size], padded, n)
        if not self.capture or self.eager_steps[size] < WARMUP:
            self.eager_steps[size] += 1
            pred, loss = self._eager(padded)
            return pred[:n], loss
        self.graphs[size] = self._capture(padded)
        return self._replay(self.graphs[size], padded, n)

    def _eager(self, padded: Day) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.capture:  # warm-up on a side stream, as for capture
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                pred, loss = self._train(padded, set_to_none=True)
            torch.cuda.current_stream().wait_stream(side)
            return pred, loss
        return self._train(padded, set_to_none=False)

    def _train(self, padded: Day, set_to_none: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=set_to_none)
        pred = self.forward(self.network, padded)
        loss = self.loss_of_day(pred, padded)
        loss.backward()
        nn.utils.clip_grad_value_(self.network.parameters(), self.clip_value)
        self.optimizer.step()
        return pred.detach(), loss.detach()

    def _capture(self, padded: Day) -> Captured:
        inputs = Day._make(None if t is None else t.clone() for t in padded)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):  # its own pool: buckets replay in any order
            pred = self.forward(self.network, inputs)
            loss = self.loss_of_day(pred, inputs)
            loss.backward()
            nn.utils.clip_grad_value_(self.network.parameters(), self.clip_value)
            self.optimizer.step()
        return Captured(graph, inputs, pred.detach(), loss.detach())

    @staticmethod
    def _replay(captured: Captured, padded: Day, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        for static, values in zip(captured.inputs, padded):
            if static is not None and values is not None:
                static.copy_(values)
        captured.graph.replay()
        return captured.pred[:n].clone(), captured.loss.clone()
