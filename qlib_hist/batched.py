"""Seed ensembles trained as one batched network (``ensemble: K`` with ``ensemble_mode: batched``).

A sequential ensemble is K whole fits, one after another. Here the K members step together: at step ``s`` member
``k`` trains on the ``s``-th day of its own shuffled order, and one pass computes all K members on their K days,
padded to the segment's longest day with a mask (HIST's static-shape path, as for ``cuda_graphs``):

.. math::

    \\text{encoder:}\\quad W^{\\text{gate}} = \\mathrm{diag}(W^{\\text{gate}}_1, \\dots, W^{\\text{gate}}_K)
    \\ \\text{for each gate of each RNN layer},\\qquad
    x = [x_1 \\,\\|\\, \\dots \\,\\|\\, x_K] \\in \\mathbb{R}^{N \\times T \\times K d}

One RNN call per layer runs the K members, because member ``k``'s units only ever meet member ``k``'s weights in a
block-diagonal matrix: each member's outputs and gradients are its own while its values are finite (equal to a
separate fit's to float rounding: 1e-5 in the tests; a NaN, though, reaches every member, as ``0 * NaN``). All that
follows the RNN runs under ``torch.func.vmap`` over the members' stacked parameters. The parameters stay in the
members (``HISTModel`` s, stacked at each step, so gradients flow back to them); each member keeps its own optimizer
(its Adam moments and step count), its seed, initialisation, day order, early stopping, weight averaging, history
and checkpoint: these are the member's own :class:`~qlib_hist.training.Trainer`. The summed losses take one backward
pass; each member then takes its own clipped optimizer step. A member that has early-stopped is frozen, not dropped:
it stays in the batch (the shapes stay those of K members) and no longer steps.

What differs from K separate fits: float rounding (the block-diagonal products and the padded days sum in another
order; the tests hold members to 1e-5 of the separate fits), and the RNN's dropout between layers, which each member
draws from its own generator (seeded from ``seed + k`` and a stream tag, so that its masks do not reuse the draws
of its initial weights) rather than from torch's global stream: with ``dropout > 0`` the
members are separate fits' equals in distribution, not draw for draw.

Shapes: ``K`` members, ``N`` stocks on the longest of the step's days, ``T`` time steps, ``d = d_feat``, ``H`` the
encoder's size, ``A`` auxiliary horizons. torch only, no qlib.
"""

from __future__ import annotations

import copy
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, cast

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from .batches import DailyBatches, Day
from .errors import QlibHistError
from .network import HISTModel, full_precision, standardise
from .static_steps import pad_day
from .training import CHECK_EVERY, FitResult, Trainer, TrainingError, autocast

#: the tag of the dropout streams' seeds (``SeedSequence([seed + k, DROPOUT_STREAM])``): apart from the weights' draws
DROPOUT_STREAM = 0x44524F50

#: the gates of each RNN type, in torch's weight layout (``LSTM``: i, f, g, o; ``GRU``: r, z, n)
RNN_GATES = {"LSTM": 4, "GRU": 3}


class _Method(nn.Module):
    """``module.<method>(*args)`` as a ``forward``, so that ``functional_call`` can run a method other than forward
    (its parameters are named ``module.<name>``)."""

    def __init__(self, module: nn.Module, method: str) -> None:
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *args):
        return getattr(self.module, self.method)(*args)


def block_diagonal_layer(rnns: Sequence[Mapping[str, torch.Tensor]], layer: int, gates: int) -> Dict[str, torch.Tensor]:
    """Layer ``layer`` of K RNNs (the parameters of ``nn.LSTM`` / ``nn.GRU`` s of hidden size ``H`` with ``gates``
    gates, by name) as the weights of one single-layer RNN of hidden size ``K * H``: per gate,
    ``W_ih = diag(W_ih_1, .., W_ih_K)`` ``[K*H, K*in]`` and ``W_hh = diag(..)`` ``[K*H, K*H]``; biases
    ``[gates * K * H]``. Built from the members' tensors (with autograd), named as a ``*_l0`` layer."""
    out = {}
    k = len(rnns)
    for kind in ("ih", "hh"):
        weights = [rnn[f"weight_{kind}_l{layer}"] for rnn in rnns]  # K x [gates*H, in]
        hidden = weights[0].shape[0] // gates
        per_gate = [torch.block_diag(*[w.reshape(gates, hidden, -1)[g] for w in weights]) for g in range(gates)]
        out[f"weight_{kind}_l0"] = torch.cat(per_gate)  # [gates*K*H, K*in]
        biases = torch.stack([rnn[f"bias_{kind}_l{layer}"] for rnn in rnns])  # [K, gates*H]
        out[f"bias_{kind}_l0"] = biases.reshape(k, gates, hidden).transpose(0, 1).reshape(-1)  # [gates*K*H]
    return out


def _stacked(values: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    """``torch.stack`` of the padded days' fields that the days all have (checked by the caller)."""
    return torch.stack([cast(torch.Tensor, value) for value in values])


class StackedMembers:
    """K :class:`~qlib_hist.network.HISTModel` s of the same settings run as one network on K days (see the module
    docstring). The members keep their parameters; this holds only the single-layer RNN templates whose weights
    each call replaces (:func:`block_diagonal_layer`) and a copy of the first member whose parameters each call
    replaces with the members' stacked ones.

    Shapes:
        - **input:** K :class:`~qlib_hist.batches.Day` s (member ``k`` predicts day ``k``), ``n_k`` stocks each
        - **output:** predictions ``[K, N]`` and auxiliary outputs ``[K, N, A]`` with ``N = max n_k`` (rows past a
          day's ``n_k`` are padding)
    """

    def __init__(self, members: Sequence[HISTModel]) -> None:
        if len(members) < 2:
            raise ValueError(f"a batched ensemble needs at least 2 members, got {len(members)}")
        self.members = list(members)
        s = members[0].settings
        if s.base_model not in RNN_GATES:  # pragma: no cover - settings allow only these
            raise ValueError(f"base_model {s.base_model!r} has no batched encoder (one of {sorted(RNN_GATES)})")
        self.gates, self.d_feat, self.hidden = RNN_GATES[s.base_model], s.d_feat, s.hidden_size
        self.dropout, self.num_layers = s.dropout, s.num_layers
        k = len(members)
        device = next(members[0].parameters()).device
        rnn_type = getattr(nn, s.base_model)
        self.layers = [
            rnn_type(input_size=k * (s.d_feat if layer == 0 else s.hidden_size), hidden_size=k * s.hidden_size)
            .to(device)
            .requires_grad_(False)
            for layer in range(s.num_layers)
        ]
        for template in self.layers:  # time-major input [T, N, K*in]: torch's own layout, no transpose inside
            template.batch_first = False
        shell = copy.deepcopy(members[0]).requires_grad_(False)  # its parameters are replaced at every call
        shell.rnn = nn.Module()  # the RNN runs block-diagonal (self.layers): the shell holds none of its weights
        self.after_rnn = _Method(shell, "outputs_of_steps")
        self.gate = None if shell.market_gate is None else _Method(shell.market_gate, "forward")

    def stacked(self, prefix: str, frozen: Sequence[bool]) -> Dict[str, torch.Tensor]:
        """The members' parameters and buffers whose names start with ``prefix`` (``""``: all), each stacked
        ``[K, ...]`` and named as the ``_Method`` shells name them; a frozen member's are detached."""
        states = [dict(m.named_parameters()) | dict(m.named_buffers()) for m in self.members]
        names = [name for name in states[0] if name.startswith(prefix) and not name.startswith("rnn.")]
        return {
            f"module.{name[len(prefix) :]}": torch.stack(
                [state[name].detach() if still else state[name] for state, still in zip(states, frozen)]
            )
            for name in names
        }

    def __call__(
        self,
        days: Sequence[Day],
        frozen: Optional[Sequence[bool]] = None,
        generators: Optional[Sequence[Optional[torch.Generator]]] = None,
        size: Optional[int] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Member ``k``'s predictions on ``days[k]`` (see the class's Shapes). ``frozen[k]``: member ``k`` gets no
        gradient. ``generators`` (training with ``dropout > 0``): each member's dropout stream between RNN
        layers (None for a member: no dropout, as for a frozen one); None = no dropout at all (eval).
        ``size``: pad every day to this many stocks (default: the longest day's); at one size a member's
        values do not depend on the other members' (finite) days, bit for bit, since their inputs meet its
        weights only as exact zeros."""
        k = len(self.members)
        frozen = [False] * k if frozen is None else list(frozen)
        size = max(len(day.x) for day in days) if size is None else size
        padded = [pad_day(day, size) for day in days]
        x = _stacked([day.x for day in padded])  # [K, N, d*T]
        gate = self.gate
        if gate is not None:
            if any(day.market is None for day in padded):
                raise QlibHistError(
                    "this ensemble gates its inputs with market_context: give each day's market state (the batches "
                    "of a HIST with that setting carry it)"
                )
            market = _stacked([day.market for day in padded])  # [K, M]
            gate_params = self.stacked("market_gate.", frozen)
            x = vmap(lambda p, x_k, m_k: functional_call(gate, p, (x_k, m_k), strict=True))(gate_params, x, market)
        steps = x.reshape(k, size, self.d_feat, -1).permute(3, 1, 0, 2).reshape(-1, size, k * self.d_feat)  # [T,N,Kd]
        rnns = [
            {name: value.detach() if still else value for name, value in m.rnn.named_parameters()}
            for m, still in zip(self.members, frozen)
        ]
        for layer, template in enumerate(self.layers):
            steps, _ = functional_call(template, block_diagonal_layer(rnns, layer, self.gates), (steps,), strict=True)
            if layer < self.num_layers - 1 and self.dropout_between_layers and generators is not None:
                steps = self._dropout(steps, generators)  # [T, N, K*H]
        steps = steps.reshape(-1, size, k, self.hidden).permute(2, 1, 0, 3)  # [K, N, T, H]
        concepts = _stacked([day.concepts for day in padded])  # [K, N, C]
        mask = _stacked([day.mask for day in padded])  # [K, N]
        member_weight = None if padded[0].member_weight is None else _stacked([d.member_weight for d in padded])
        params = self.stacked("", frozen)
        self.after_rnn.train(generators is not None)  # what follows the RNN has no dropout; its mode says training

        def one_member(p, steps_k, c_k, w_k, mask_k):
            return functional_call(self.after_rnn, p, (steps_k, c_k, w_k, mask_k), strict=True)

        in_dims = (0, 0, 0, None if member_weight is None else 0, 0)
        pred, aux = vmap(one_member, in_dims=in_dims)(params, steps, concepts, member_weight, mask)
        return full_precision(pred), full_precision(aux)

    @property
    def dropout_between_layers(self) -> bool:
        """Whether the RNN drops units between its layers in training (``dropout > 0`` and two layers or more)."""
        return self.dropout > 0 and self.num_layers > 1

    def _dropout(self, steps: torch.Tensor, generators: Sequence[Optional[torch.Generator]]) -> torch.Tensor:
        """Inverted dropout on the RNN's outputs ``[T, N, K*H]``, member ``k``'s units from ``generators[k]`` (None:
        that member's units are kept)."""
        keep = 1.0 - self.dropout
        shape = (*steps.shape[:2], self.hidden)
        masks = [
            torch.ones(shape, device=steps.device)
            if generator is None
            else torch.empty(shape, device=steps.device).bernoulli_(keep, generator=generator) / keep
            for generator in generators
        ]
        return steps * torch.cat(masks, dim=-1).to(steps.dtype)


@torch.no_grad()
def predict_members(stack: StackedMembers, batches: DailyBatches, device: torch.device, precision: str) -> np.ndarray:
    """Every member's eval-mode predictions ``[K, rows]`` on ``batches`` (on ``device``), each day in one batched
    pass (the K members on the same day: no padding)."""
    for member in stack.members:
        member.eval()
    k = len(stack.members)
    preds = torch.empty(k, batches.n_rows, device=device)
    for d, day in batches.days(device):
        with autocast(device, precision):
            preds[:, batches.day_slice(d)] = stack([day] * k)[0]
    return preds.cpu().numpy()


def ensemble_scores(member_preds: np.ndarray, batches: DailyBatches) -> np.ndarray:
    """The ensemble's prediction ``[rows]`` from its members' ``[K, rows]``: per day, the mean of the members'
    z-scores (:class:`~qlib_hist.network.SeedEnsemble`'s rule, :func:`~qlib_hist.network.standardise`)."""
    out = np.empty(batches.n_rows, dtype=np.float32)
    for d in range(batches.n_days):
        day = batches.day_slice(d)
        scores = torch.from_numpy(member_preds[:, day])
        out[day] = torch.stack([standardise(member) for member in scores]).mean(0).numpy()
    return out


class BatchedTrainer:
    """K member :class:`~qlib_hist.training.Trainer` s (each with its own optimizer, settings and callbacks)
    trained as one batched network (see the module docstring); the members are the trainers' networks, all
    :class:`~qlib_hist.network.HISTModel` s of one device and precision.

    Each member's epoch is its own (its day order from its own generator, its own epoch count): members that resume
    from checkpoints of different epochs still step together. :meth:`fit` returns each member's
    :class:`~qlib_hist.training.FitResult`, as K calls of ``Trainer.fit`` would.
    """

    def __init__(self, trainers: Sequence[Trainer]) -> None:
        self.trainers = list(trainers)
        first = self.trainers[0]
        for trainer in self.trainers:
            if trainer.static_steps is not None:
                raise ValueError("a batched ensemble runs eager steps: its members cannot use cuda_graphs")
            trainer.share_device_copies(first)
        self.device, self.precision = first.device, first.settings.precision
        self.stack = StackedMembers([trainer.network for trainer in self.trainers])  # type: ignore[misc]
        if self.stack.dropout_between_layers:
            for trainer in self.trainers:
                generator = torch.Generator(device=self.device)
                seed = trainer.settings.seed
                if seed is None:
                    generator.seed()  # the members' weights were not seeded either
                else:
                    tagged = np.random.SeedSequence([seed, DROPOUT_STREAM]).generate_state(1, np.uint64)[0]
                    generator.manual_seed(int(tagged) >> 1)
                trainer.dropout_generator = generator

    def fit(
        self, train: DailyBatches, valid: DailyBatches, evals_result: Optional[dict] = None, keep_start: bool = False
    ) -> List[FitResult]:
        """Train every member with early stopping on ``valid``; each ends with its best weights. ``evals_result``
        receives the last member's metrics per epoch (as a sequential ensemble's); ``keep_start``: as
        :meth:`~qlib_hist.training.Trainer.fit`'s, per member."""
        for trainer in self.trainers:
            trainer.begin_fit(valid, keep_start)
        while any(trainer.running for trainer in self.trainers):
            self.run_epoch(train, valid)
        return [trainer.end_fit(evals_result) for trainer in self.trainers]

    def run_epoch(self, train: DailyBatches, valid: DailyBatches) -> None:
        """One batched train pass of the running members and one batched eval pass over ``valid``, then each scores
        its own epoch (early stopping, history, callbacks: :meth:`~qlib_hist.training.Trainer.close_epoch`). The
        members' records share ``train_seconds``; each ``seconds`` runs from the shared start to its own record, so
        the last member's is the ensemble's epoch."""
        running = [k for k, trainer in enumerate(self.trainers) if trainer.running]
        tic = time.perf_counter()
        preds = self.train_epoch(train, running)
        seconds = time.perf_counter() - tic
        averaged = any(self.trainers[k].averaging.active for k in running)  # smooth_steps: each scores its average
        valid_preds = None if averaged else self.predict(valid)  # [K, rows]
        for k in running:
            own = None if valid_preds is None else valid_preds[k]
            self.trainers[k].close_epoch(train, valid, preds[k], tic, seconds, own)

    def predict(self, batches: DailyBatches) -> np.ndarray:
        """Every member's eval-mode predictions ``[K, rows]`` (:func:`predict_members`)."""
        return predict_members(self.stack, self.trainers[0].on_device(batches), self.device, self.precision)

    def check_losses(self, running: Sequence[int]) -> None:
        """Every running member's unchecked losses read back (:meth:`~qlib_hist.training.Trainer.check_losses`);
        a non-finite one stops the ensemble, naming the member it was first seen in (a member's NaN reaches the
        others through the block-diagonal products, so that member need not be where it began)."""
        for k in running:
            try:
                self.trainers[k].check_losses()
            except TrainingError as err:
                raise TrainingError(
                    f"batched ensemble, member {k} (seed {self.trainers[k].settings.seed}): {err}; a member's "
                    "non-finite weights reach every member of a batched ensemble: ensemble_mode 'sequential' tells "
                    "which one diverged"
                ) from None

    def train_epoch(self, batches: DailyBatches, running: Sequence[int]) -> Dict[int, np.ndarray]:
        """One pass over the days: step ``s`` trains each running member on the ``s``-th day of its own order;
        returns each running member's train-mode predictions ``[rows]`` (NaN on days its loss skipped)."""
        trainers = self.trainers
        preds = {k: trainers[k].begin_epoch(batches) for k in running}
        orders = {k: trainers[k].generator.permutation(batches.n_days) for k in running}
        frozen = [k not in orders for k in range(len(trainers))]
        for k, still in enumerate(frozen):  # the members' modes, for what reads them (the pass runs on copies)
            trainers[k].network.train(not still)
        on_device = trainers[0].on_device(batches)
        generators = None  # each running member's dropout stream; a frozen member's is not drawn from
        if self.stack.dropout_between_layers:
            generators = [None if still else t.dropout_generator for t, still in zip(trainers, frozen)]
        #: one size for the segment: each member's steps are then its own whatever the others train on (a member
        #: resumed at another epoch than the rest continues bit for bit)
        size = int(batches.day_count.max())
        for step in range(batches.n_days):
            numbers = [int(orders.get(k, orders[running[0]])[step]) for k in range(len(trainers))]  # day per member
            days = [on_device.day(d, self.device) for d in numbers]
            with autocast(self.device, self.precision):
                pred, aux = self.stack(days, frozen, generators, size)  # [K, N], [K, N, A]
            total: Optional[torch.Tensor] = None
            stepping = []
            for k in running:
                n = len(days[k].x)
                aux_k = aux[k, :n] if aux.shape[-1] else None
                loss = trainers[k].day_objective(pred[k, :n], aux_k, days[k], step, numbers[k])
                if loss is None:
                    continue
                total = loss if total is None else total + loss
                stepping.append(k)
                preds[k][batches.day_slice(numbers[k])] = pred[k, :n].detach()
            for k in running:
                trainers[k].optimizer.zero_grad()
            if total is not None:
                total.backward()
            for k in stepping:
                trainers[k].optimizer_step()
            if any(len(trainers[k].unchecked) >= CHECK_EVERY for k in running):
                self.check_losses(running)
        self.check_losses(running)
        for k in running:
            trainers[k].end_epoch(batches)
        return {k: preds[k].cpu().numpy() for k in running}
