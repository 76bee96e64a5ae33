"""The HIST network (Xu et al., 2021) for one trading day: pure tensors in, tensors out (torch only, no qlib).

:class:`HISTModel` reproduces ``qlib.contrib.model.pytorch_hist.HISTModel`` (same parameter names, same outputs
within float32 rounding) without its ``N x N`` scatter buffers, and adds the paper's options, each off by default.
:class:`RNNRegressor` is the base RNN with a linear head (qlib's ``LSTMModel`` / ``GRUModel`` layout), used to
pretrain the encoder.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, NamedTuple, Optional, Sequence, Tuple, cast

import torch
from torch import nn
from torch.nn import functional as F

from .context import FEATURES_PER_INDEX, MarketGate
from .errors import QlibHistError
from .settings import NetworkSettings

if TYPE_CHECKING:  # pragma: no cover
    from .batches import Day

COS_EPS = 1e-6  # qlib's guard in its cosine similarity's denominator (kept: it changes outputs at 1e-7)
PEER_SEARCH_CHUNK = 1024  # rows of the N x N similarity held at once during the peer search


def full_precision(values: torch.Tensor) -> torch.Tensor:
    """``values`` in fp32 when autocast made them bf16/fp16; unchanged otherwise (fp32 stays the same tensor)."""
    return values.float() if values.dtype in (torch.bfloat16, torch.float16) else values


def after_encoder(state: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off on ``state``'s device: under ``precision: bf16`` only the encoder (the RNN and its input gate)
    runs in bf16. The concept modules and heads are a few small matmuls a day, which bf16 makes slower on a CPU
    (casts and small-GEMM overhead) and less exact; they take the encoder's state in fp32."""
    return torch.autocast(state.device.type, enabled=False)


def make_rnn(settings: NetworkSettings) -> nn.Module:
    """The encoder: ``nn.GRU`` or ``nn.LSTM`` with ``batch_first=True``, as in qlib (``base_model`` is one of
    :data:`~qlib_hist.settings.RNN_TYPES`, the names of torch's classes)."""
    return getattr(nn, settings.base_model)(
        input_size=settings.d_feat,
        hidden_size=settings.hidden_size,
        num_layers=settings.num_layers,
        batch_first=True,
        dropout=settings.dropout,
    )


def encode(
    rnn: nn.Module, x: torch.Tensor, d_feat: int, temporal_att: Optional[nn.Module] = None
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Alpha360-style flat features ``x [N, d_feat * T]`` (field-major: ``CLOSE59 .. CLOSE0, OPEN59 ..``) ->
    (stock state ``[N, H]``, time attention ``[N, T]`` or ``None``).

    Without ``temporal_att`` the state is the RNN's last step (qlib); with it, ``sum_t alpha_t h_t`` where
    ``alpha = softmax_t(temporal_att(h_t))``.
    """
    steps, _ = rnn(rnn_input(x, d_feat))  # [N, T, H]
    return pool_steps(steps, temporal_att)


def rnn_input(x: torch.Tensor, d_feat: int) -> torch.Tensor:
    """Flat features ``[N, d_feat * T]`` (field-major) -> the RNN's time-major rows ``[N, T, d_feat]``."""
    return x.reshape(len(x), d_feat, -1).permute(0, 2, 1)


def pool_steps(
    steps: torch.Tensor, temporal_att: Optional[nn.Module] = None
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The RNN's outputs ``[N, T, H]`` -> (stock state ``[N, H]``, time attention ``[N, T]`` or ``None``): the last
    step, or the ``temporal_att`` mean (see :func:`encode`)."""
    steps = full_precision(steps)  # under bf16 autocast the RNN runs in bf16; what follows starts from fp32
    if temporal_att is None:
        return steps[:, -1, :], None
    alpha = F.softmax(full_precision(temporal_att(steps).squeeze(-1)), dim=1)  # [N, T]
    return (alpha.unsqueeze(-1) * steps).sum(1), alpha


def cosine_similarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``cos(x_i, y_j)`` for all pairs, ``[N, H] x [M, H] -> [N, M]``, with qlib's ``+1e-6`` guard; fp32 under
    autocast (the guard is below bf16's resolution)."""
    with torch.autocast(x.device.type, enabled=False):
        x, y = full_precision(x), full_precision(y)
        x_norm = x.norm(dim=1, keepdim=True)  # [N, 1]
        y_norm = y.norm(dim=1, keepdim=True)  # [M, 1]
        return x.mm(y.t()) / (x_norm.mm(y_norm.t()) + COS_EPS)


def rowwise_cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``cos(x_i, y_i)`` for matching rows, ``[N, H] x [N, H] -> [N]``; fp32 under autocast."""
    x, y = full_precision(x), full_precision(y)
    return (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1) + COS_EPS)


@torch.no_grad()
def closest_peers(
    u: torch.Tensor, k: int = 1, chunk: int = PEER_SEARCH_CHUNK, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """For each row ``i`` of ``u`` ``[N, H]``, the ``k`` rows ``j`` of highest ``cos(u_i, u_j)``.

    As in qlib the diagonal competes with value 0 (not -inf): a stock whose peers all have negative similarity
    "chooses" itself, and that choice carries no weight. Runs in row chunks, so memory is ``chunk x N``, not
    ``N x N``. Returns int64 ``[N, min(k, N)]``, most similar first; ``k = 1`` is qlib's argmax. ``mask [N]``
    (padded days): rows where it is False are never anyone's peer.
    """
    n = len(u)
    k = min(k, n)
    peers = []  # out of place, chunk by chunk: the search also runs under vmap (a batched ensemble's members)
    for start in range(0, n, chunk):
        sim = cosine_similarity(u[start : start + chunk], u)  # [chunk, N]
        rows = torch.arange(len(sim), device=u.device)
        sim = sim.index_put((rows, rows + start), sim.new_zeros(()))  # qlib: zeroed, not excluded
        if mask is not None:
            sim = sim.masked_fill(~mask[None, :], float("-inf"))  # padding is nobody's peer
        peers.append(sim.argmax(1, keepdim=True) if k == 1 else sim.topk(k, dim=1).indices)
    return peers[0] if len(peers) == 1 else torch.cat(peers)


def masked_softmax(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``softmax`` over the columns of ``scores [N, M]`` where ``keep [M]``; 0 elsewhere, and all 0 where no column
    is kept (qlib's empty softmax, whose weighted sum is zero)."""
    lowest = torch.finfo(scores.dtype).min  # not -inf: a row with no kept column stays finite (and so its gradient)
    weights = F.softmax(scores.masked_fill(~keep[None, :], lowest), dim=1)
    return weights.masked_fill(~keep[None, :], 0.0)


def check_shapes(x: torch.Tensor, c: torch.Tensor, w: Optional[torch.Tensor], d_feat: int) -> None:
    """Refuse inputs whose shapes do not fit the Shapes section of :class:`HISTModel`, naming the dimension."""
    if x.dim() != 2 or x.shape[1] == 0 or x.shape[1] % d_feat:
        raise QlibHistError(f"x must be [N, d_feat * T] with d_feat={d_feat}, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise QlibHistError("x has 0 stocks: a HIST forward pass needs at least one stock (a day with no rows)")
    if c.dim() != 2 or c.shape[0] != x.shape[0]:
        raise QlibHistError(f"concept_matrix must be [N, C] with N={x.shape[0]} (the rows of x), got {tuple(c.shape)}")
    if w is not None and (w.dim() != 1 or w.shape[0] != x.shape[0]):
        raise QlibHistError(f"member_weight must be [N] with N={x.shape[0]} (the rows of x), got {tuple(w.shape)}")


def residual_of(x: torch.Tensor, backcasts: list) -> torch.Tensor:
    """``x - b_1 - b_2 ...`` (``[N, H]``), built afresh at each use: qlib subtracts twice rather than reusing
    ``u_i``, and reusing it would sum the gradients in another order (a last-bit change of the weights)."""
    for backcast in backcasts:
        x = x - backcast
    return x


class PredefinedConcepts(NamedTuple):
    """Output of the predefined-concept module for one day."""

    shared: torch.Tensor  # [N, H]   s_i
    backcast: torch.Tensor  # [N, H]  W_es_back s_i + b
    attention: torch.Tensor  # [N, C']  p_ij over the day's kept concepts
    kept: torch.Tensor  # [C']  columns of the concept matrix with a member that day


class HiddenConcepts(NamedTuple):
    """Output of the hidden-concept module for one day."""

    shared: torch.Tensor  # [N, H]   t_i
    backcast: torch.Tensor  # [N, H]  W_is_back t_i + b
    attention: torch.Tensor  # [N, N']  q_ij over the day's hidden concepts
    centres: torch.Tensor  # [N']  the stock (row) each hidden concept is centred on


class HISTParts(NamedTuple):
    """The network's three additive parts (each ``[N, H]``, before the linear output layer) and its attentions."""

    concept: torch.Tensor
    hidden_concept: torch.Tensor
    individual: torch.Tensor
    concept_attention: torch.Tensor  # [N, C'] each stock's softmax over the day's kept predefined concepts
    kept_concepts: torch.Tensor  # [C'] column ids of the concept matrix that have members that day
    hidden_attention: torch.Tensor  # [N, N'] each stock's softmax over the day's hidden concepts
    hidden_concept_stocks: torch.Tensor  # [N'] the stock (row) each hidden concept is centred on
    time_attention: Optional[torch.Tensor] = None  # [N, T] softmax over time steps, with temporal_attention


#: the three additive parts of a prediction (:class:`HISTParts`' first fields): ``w . (concept + hidden_concept +
#: individual) + b``; the columns an explanation splits a score into (:mod:`qlib_hist.explain`)
OUTPUT_PARTS: Tuple[str, ...] = HISTParts._fields[:3]


class HISTModel(nn.Module):
    r"""HIST for one trading day with ``N`` stocks, ``C`` predefined concepts and encoder size ``H``.

    .. math::

        x_i &= \mathrm{RNN}(\text{features}_i)_{T}
            \quad\text{(or } \textstyle\sum_t \alpha_{it} h_{it},\ \alpha_i = \mathrm{softmax}_t(v^\top\tanh(W h_{it}))
            \text{ with temporal\_attention)}

        \text{Predefined concepts:}\quad
        a_{ij} &= \frac{c_{ij} w_i}{c_{ij} W_j + 1},\quad W_j = \textstyle\sum_i c_{ij} w_i,\quad
        e_j = \textstyle\sum_i a_{ij} x_i \quad (\text{concepts with no member that day dropped})

        [\text{concept\_refine}]\quad e_j &\leftarrow \textstyle\sum_i \mathrm{softmax}_i(x_i^\top e_j)\, x_i

        p_{ij} &= \mathrm{softmax}_j \cos(x_i, e_j),\quad s_i = W_{es} \textstyle\sum_j p_{ij} e_j + b_{es}

        \text{Hidden concepts:}\quad
        u_i &= x_i - \mathrm{back}_{es}(s_i),\quad
        k(i) = \text{the } K \text{ peers } j \ne i \text{ of highest } \cos(u_i, u_j)

        h_j &= \textstyle\sum_{i:\, j \in k(i)} \cos(u_i, u_j)\, u_i + [j \text{ chosen}]\cos(u_j, u_j)\, u_j

        q_{ij} &= \mathrm{softmax}_j \cos(u_i, h_j),\quad t_i = W_{is} \textstyle\sum_j q_{ij} h_j + b_{is}

        \text{Output:}\quad
        y_i &= w_{out}^\top\big(\sigma(W_{es,f} s_i) + \sigma(W_{is,f} t_i)
              + \sigma(W_{indi}(u_i - \mathrm{back}_{is}(t_i)))\big) + b_{out}

    with :math:`\sigma` = LeakyReLU, :math:`c_{ij}` the concept matrix (0 = not a member), :math:`w_i` the member
    weights (1 = qlib's formula; the paper uses market value) and ``K = hidden_topk`` (1 = qlib).

    Parameter names match qlib's ``HISTModel`` so that its state dicts and its pretrained LSTM/GRU files
    (``rnn.*``) load unchanged. ``fc_es_middle``, ``fc_is_middle``, ``fc_indi_fore`` and ``fc_out_{es,is,indi}``
    are unused, as in qlib; they exist only so those state dicts match. ``temporal_attention`` adds
    ``temporal_att.*``.

    Args:
        d_feat, hidden_size, num_layers, dropout, base_model: the encoder (qlib's arguments).
        hidden_topk, concept_refine, temporal_attention: the paper's options (see :class:`NetworkSettings`).
        predefined_concepts, hidden_concepts, individual: module switches, each on by default (qlib's model); a
            module switched off adds nothing to the output and removes nothing from the residual; with all three
            off the output is ``fc_out(x_i)``, the base RNN with its linear head (qlib's LSTMModel layout).
        market_context, market_temperature: index instruments whose state gates the input fields before the
            encoder (``market_gate.*``, :class:`~qlib_hist.context.MarketGate`); empty = no gate (qlib's model).
        aux_horizons: horizons ``k`` of auxiliary heads (``aux_head.*``, one output each) on the representation
            ``fc_out`` reads, trained on ``k``-day returns (:mod:`qlib_hist.context`); they never change a
            prediction. Empty = none.

    Shapes:
        - **input:** features ``x`` ``[N, d_feat * T]``, concept matrix ``c`` ``[N, C]``,
          optional member weights ``w`` ``[N]``, market state ``m`` ``[M]`` (with ``market_context``:
          ``M = 21 * len(market_context)``)
        - **output:** predictions ``[N]``; :meth:`forward_with_aux`: also ``[N, K]`` for ``K = len(aux_horizons)``
    """

    def __init__(
        self,
        d_feat: int = 6,
        hidden_size: int = 64,
        num_layers: int = 2,
        dropout: float = 0.0,
        base_model: str = "GRU",
        hidden_topk: int = 1,
        concept_refine: bool = False,
        temporal_attention: bool = False,
        predefined_concepts: bool = True,
        hidden_concepts: bool = True,
        individual: bool = True,
        market_context: Sequence[str] = (),
        market_temperature: float = 10.0,
        aux_horizons: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.settings = NetworkSettings(
            d_feat=d_feat,
            hidden_size=hidden_size,
            num_layers=num_layers,
            dropout=dropout,
            base_model=base_model,
            hidden_topk=hidden_topk,
            concept_refine=concept_refine,
            temporal_attention=temporal_attention,
            predefined_concepts=predefined_concepts,
            hidden_concepts=hidden_concepts,
            individual=individual,
            market_context=tuple(market_context),
            market_temperature=market_temperature,
            aux_horizons=tuple(aux_horizons),
        )
        self.d_feat, self.hidden_size = self.settings.d_feat, self.settings.hidden_size
        self.rnn = make_rnn(self.settings)

        def square() -> nn.Linear:
            layer = nn.Linear(hidden_size, hidden_size)
            nn.init.xavier_uniform_(layer.weight)
            return layer

        # qlib's creation order, so that a seeded init gives qlib's weights
        self.fc_es, self.fc_is = square(), square()
        self.fc_es_middle, self.fc_is_middle = square(), square()
        self.fc_es_fore, self.fc_is_fore, self.fc_indi_fore = square(), square(), square()
        self.fc_es_back, self.fc_is_back, self.fc_indi = square(), square(), square()
        self.fc_out_es = nn.Linear(hidden_size, 1)
        self.fc_out_is = nn.Linear(hidden_size, 1)
        self.fc_out_indi = nn.Linear(hidden_size, 1)
        self.fc_out = nn.Linear(hidden_size, 1)
        self.temporal_att = (
            nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1, bias=False))
            if self.settings.temporal_attention
            else None
        )
        # the options' modules come last: with the options off, a seeded init gives the same weights as before
        on = self.settings
        n_market = len(on.market_context) * FEATURES_PER_INDEX
        self.market_gate = MarketGate(n_market, on.d_feat, on.market_temperature) if n_market else None
        self.aux_head = nn.Linear(hidden_size, len(on.aux_horizons)) if on.aux_horizons else None

    @classmethod
    def from_settings(cls, settings: NetworkSettings) -> "HISTModel":
        return cls(**{name: getattr(settings, name) for name in settings.__dataclass_fields__})

    # ------------------------------------------------------------------ modules
    def encode(
        self, x: torch.Tensor, market: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``x [N, d_feat*T]`` (and the day's market state ``[M]`` with ``market_context``) -> (``x_i`` ``[N, H]``,
        time attention ``[N, T]`` or None); see :func:`encode`."""
        if self.market_gate is not None:
            if market is None:
                raise QlibHistError(
                    f"this network gates its inputs with market_context {list(self.settings.market_context)}: "
                    "give the day's market state (the batches of a HIST with that setting carry it)"
                )
            x = self.market_gate(x, market)  # [N, d_feat*T]  x~ = alpha(m) * x
        return encode(self.rnn, x, self.d_feat, self.temporal_att)

    def predefined_concepts(
        self, x: torch.Tensor, c: torch.Tensor, w: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None
    ) -> PredefinedConcepts:
        """``x [N, H]``, concept matrix ``c [N, C]``, member weights ``w [N]`` or None -> the module's outputs.

        With ``mask [N]`` (a padded day: False = padding, whose concept rows are zero) the shapes stay static:
        memberless concepts are masked out of the softmax instead of dropped, and ``attention`` is ``[N, C]``.
        """
        cw = c if w is None else c * w[:, None]  # [N, C]   c_ij w_i
        W = cw.sum(0, keepdim=True)  # [1, C]   W_j
        a = cw / (c * W + 1.0)  # [N, C]   a_ij
        if mask is not None:
            return self._predefined_masked(x, c, a, mask)
        kept = (c != 0).any(0).nonzero().squeeze(1)  # [C']  qlib drops the day's memberless concepts here
        e = a[:, kept].t().mm(x)  # [C', H]  e_j
        if self.settings.concept_refine:
            to_stocks = F.softmax(x.mm(e.t()), dim=0)  # [N, C']  softmax over the day's stocks
            e = to_stocks.t().mm(x)  # [C', H]
        p = F.softmax(cosine_similarity(x, e), dim=1)  # [N, C']  p_ij
        s = self.fc_es(p.mm(e))  # [N, H]   s_i
        return PredefinedConcepts(s, self.fc_es_back(s), p, kept)

    def _predefined_masked(
        self, x: torch.Tensor, c: torch.Tensor, a: torch.Tensor, mask: torch.Tensor
    ) -> PredefinedConcepts:
        """:meth:`predefined_concepts` on a padded day, without a dynamic shape (no host sync)."""
        kept = (c != 0).any(0)  # [C]  bool
        e = a.t().mm(x)  # [C, H]  e_j (zero for a memberless concept)
        if self.settings.concept_refine:
            scores = x.mm(e.t())  # [N, C]
            to_stocks = F.softmax(scores.masked_fill(~mask[:, None], torch.finfo(scores.dtype).min), dim=0)
            e = to_stocks.t().mm(x)  # [C, H]
        p = masked_softmax(cosine_similarity(x, e), kept)  # [N, C]  p_ij, 0 on memberless concepts
        s = self.fc_es(p.mm(e))  # [N, H]
        return PredefinedConcepts(s, self.fc_es_back(s), p, torch.arange(len(kept), device=x.device))

    def hidden_concepts(self, u: torch.Tensor, mask: Optional[torch.Tensor] = None) -> HiddenConcepts:
        """Residual ``u [N, H]`` -> :class:`HiddenConcepts`.

        Each stock ``i`` joins the hidden concept centred on each of its peers ``k(i)``; the peer search runs
        without autograd, and the chosen similarities are recomputed with autograd for the ``N*K`` pairs, which
        gives the gradients of differentiating through qlib's masked max without its ``N x N`` buffers.
        """
        n = len(u)
        peers = closest_peers(u, self.settings.hidden_topk, mask=mask)  # [N, K]   k(i)
        j = peers.reshape(-1)  # [N*K]  the peer of each (stock, k) pair
        i = torch.arange(n, device=u.device).repeat_interleave(peers.shape[1])  # [N*K]  its stock
        cos_ij = rowwise_cosine(u[i], u[j])  # [N*K]  with autograd
        cos_ij = torch.where(j == i, torch.zeros((), device=u.device), cos_ij)  # a self-choice carries no weight
        if mask is not None:
            cos_ij = cos_ij * mask[i].to(cos_ij.dtype)  # padding chooses no one
        chosen = torch.zeros(n, device=u.device, dtype=u.dtype).index_add(0, j, cos_ij)  # [N]
        self_weight = (chosen != 0).to(u.dtype) * rowwise_cosine(u, u)  # [N]  qlib: a chosen centre joins itself
        h = torch.zeros_like(u).index_add(0, j, cos_ij[:, None] * u[i])  # [N, H]
        h = h + self_weight[:, None] * u  # h_j
        if mask is not None:  # a padded day: static shapes, centres masked rather than dropped
            is_centre = (h.sum(1) != 0) & mask  # [N]
            q = masked_softmax(cosine_similarity(u, h), is_centre)  # [N, N]
            t = self.fc_is(q.mm(h))  # [N, H]
            return HiddenConcepts(t, self.fc_is_back(t), q, torch.arange(n, device=u.device))
        centres = (h.sum(1) != 0).nonzero().squeeze(1)  # [N']  qlib keeps rows whose sum is non-zero
        h = h[centres]  # [N', H]
        q = F.softmax(cosine_similarity(u, h), dim=1)  # [N, N']  q_ij
        t = self.fc_is(q.mm(h))  # [N, H]   t_i
        return HiddenConcepts(t, self.fc_is_back(t), q, centres)

    def parts(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        w: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
        market: Optional[torch.Tensor] = None,
    ) -> HISTParts:
        """Run the network up to the output layer; ``fc_out`` of the sum of the three parts is the prediction.

        A module switched off (``predefined_concepts``, ``hidden_concepts``, ``individual``) contributes a zero part
        and nothing to the residual, and its attention is empty (``[N, 0]``). With all three off, the ``individual``
        part is the encoder state itself: ``fc_out(x_i)``, the base RNN with its linear head. ``mask [N]``: a padded
        day (see :meth:`forward`); ``market [M]``: the day's market state (with ``market_context``).
        """
        return self.parts_of_state(*self.encode(x, market), c, w, mask)

    def parts_of_state(
        self,
        x_hidden: torch.Tensor,
        time_attention: Optional[torch.Tensor],
        c: torch.Tensor,
        w: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
    ) -> HISTParts:
        """:meth:`parts` from the encoder's state ``x_hidden [N, H]`` (and its time attention ``[N, T]`` or None), in
        fp32: under a bf16 autocast only the encoder runs in bf16 (:func:`after_encoder`)."""
        with after_encoder(x_hidden):
            return self._parts_of_state(x_hidden, time_attention, c, w, mask)

    def _parts_of_state(
        self,
        x_hidden: torch.Tensor,
        time_attention: Optional[torch.Tensor],
        c: torch.Tensor,
        w: Optional[torch.Tensor],
        mask: Optional[torch.Tensor],
    ) -> HISTParts:
        on = self.settings
        n, device = len(x_hidden), x_hidden.device
        zero = torch.zeros_like(x_hidden)  # [N, H]   a switched-off part
        none = torch.zeros(n, 0, device=device, dtype=x_hidden.dtype)  # [N, 0]   its attention
        no_ids = torch.zeros(0, dtype=torch.long, device=device)  # [0]
        backcasts = []  # what the modules that are on remove from the state, in order
        concept, concept_attention, kept = zero, none, no_ids
        if on.predefined_concepts:
            es = self.predefined_concepts(x_hidden, c, w, mask)
            concept, concept_attention, kept = F.leaky_relu(self.fc_es_fore(es.shared)), es.attention, es.kept
            backcasts.append(es.backcast)
        hidden, hidden_attention, centres = zero, none, no_ids
        if on.hidden_concepts:
            hs = self.hidden_concepts(residual_of(x_hidden, backcasts), mask)  # u_i
            hidden, hidden_attention, centres = F.leaky_relu(self.fc_is_fore(hs.shared)), hs.attention, hs.centres
            backcasts.append(hs.backcast)
        if on.individual:
            individual = F.leaky_relu(self.fc_indi(residual_of(x_hidden, backcasts)))
        elif on.predefined_concepts or on.hidden_concepts:
            individual = zero
        else:  # every module off: the base RNN with the output layer on its state
            individual = x_hidden
        return HISTParts(
            concept=concept,
            hidden_concept=hidden,
            individual=individual,
            concept_attention=concept_attention,
            kept_concepts=kept,
            hidden_attention=hidden_attention,
            hidden_concept_stocks=centres,
            time_attention=time_attention,
        )

    def forward(
        self,
        x: torch.Tensor,
        concept_matrix: torch.Tensor,
        member_weight: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
        market: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``x [N, d_feat*T]``, ``concept_matrix [N, C]``, optional ``member_weight [N]`` (and ``market [M]``) ->
        predictions ``[N]``.

        ``mask [N]`` (bool) marks a day padded to a static size (``cuda_graphs``): rows where it is False are padding
        (zero concept rows), which join no concept and are nobody's peer, so the real rows' predictions are those
        of the unpadded day (to float rounding); nothing in the pass has a data-dependent shape.
        """
        check_shapes(x, concept_matrix, member_weight, self.d_feat)
        return self.heads(self.parts(x, concept_matrix, member_weight, mask, market))[0]

    def forward_day(self, day: "Day") -> torch.Tensor:
        """Predictions ``[n]`` for one :class:`~qlib_hist.batches.Day` (what the trainer calls)."""
        return self(day.x, day.concepts, day.member_weight, day.mask, day.market)

    def outputs_of_steps(
        self, steps: torch.Tensor, c: torch.Tensor, w: Optional[torch.Tensor], mask: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The RNN's outputs ``steps [N, T, H]`` -> (predictions ``[N]``, auxiliary outputs ``[N, A]``, ``A = 0``
        without ``aux_horizons``): all that follows the RNN, for a batched ensemble (:mod:`qlib_hist.batched`),
        which runs it under ``vmap`` over its members' stacked parameters."""
        return self.heads(self.parts_of_state(*pool_steps(steps, self.temporal_att), c, w, mask))

    def heads(self, p: HISTParts) -> Tuple[torch.Tensor, torch.Tensor]:
        """(predictions ``[N]``, auxiliary outputs ``[N, A]``, ``A = 0`` without ``aux_horizons``) from the parts:
        both heads read the same representation ``concept + hidden_concept + individual`` ``[N, H]``, in fp32."""
        with after_encoder(p.individual):
            representation = p.concept + p.hidden_concept + p.individual  # [N, H]
            aux = representation[:, :0] if self.aux_head is None else self.aux_head(representation)
            return self.fc_out(representation).squeeze(-1), aux

    def forward_with_aux(self, day: "Day") -> Tuple[torch.Tensor, torch.Tensor]:
        """(predictions ``[n]``, auxiliary-horizon outputs ``[n, K]``) for one day, from one pass: both heads read
        the same representation ``concept + hidden_concept + individual`` ``[n, H]``."""
        if self.aux_head is None:
            raise QlibHistError("this network has no aux_horizons: use forward_day")
        check_shapes(day.x, day.concepts, day.member_weight, self.d_feat)
        return self.heads(self.parts(day.x, day.concepts, day.member_weight, day.mask, day.market))


class RNNRegressor(nn.Module):
    """The base RNN with a linear head: the layout of qlib's ``LSTMModel`` / ``GRUModel`` (``rnn.*``, ``fc_out.*``).

    Used to pretrain HIST's encoder and to save it in the format qlib's ``model_path`` files have.

    Shapes:
        - **input:** ``x`` ``[N, d_feat * T]``
        - **output:** ``[N]``
    """

    def __init__(
        self, d_feat: int = 6, hidden_size: int = 64, num_layers: int = 2, dropout: float = 0.0, base_model: str = "GRU"
    ) -> None:
        super().__init__()
        self.settings = NetworkSettings(d_feat, hidden_size, num_layers, dropout, base_model)
        self.d_feat = self.settings.d_feat
        self.rnn = make_rnn(self.settings)
        self.fc_out = nn.Linear(hidden_size, 1)

    @classmethod
    def from_settings(cls, settings: NetworkSettings) -> "RNNRegressor":
        return cls(settings.d_feat, settings.hidden_size, settings.num_layers, settings.dropout, settings.base_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(encode(self.rnn, x, self.d_feat)[0]).squeeze(-1)

    def forward_day(self, day: "Day") -> torch.Tensor:
        return self(day.x)


def standardise(scores: torch.Tensor) -> torch.Tensor:
    """One day's scores ``[n]`` as z-scores (mean 0, std 1 over the day; all 0 where the day's scores are equal)."""
    centred = scores - scores.mean()
    std = centred.pow(2).mean().sqrt()
    return centred / std if float(std) > 0 else torch.zeros_like(scores)


class SeedEnsemble(nn.Module):
    r"""``K`` networks of the same settings trained from seeds ``seed .. seed+K-1`` (``ensemble: K``); a day's
    prediction is the mean of the members' per-day standardised scores:

    .. math:: \hat y_i = \frac{1}{K}\sum_k \frac{y^{(k)}_i - \mathrm{mean}_j\, y^{(k)}_j}{\mathrm{std}_j\, y^{(k)}_j}

    Standardising first keeps one member with a larger output scale from outvoting the others; the day's ranking
    (what IC, Rank IC and a top-k strategy read) is what is averaged. Parameters are ``members.<k>.<name>``.

    Shapes:
        - **input:** a :class:`~qlib_hist.batches.Day` of ``n`` stocks
        - **output:** ``[n]``
    """

    def __init__(self, members: "Sequence[HISTModel]") -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)

    def forward_day(self, day: "Day") -> torch.Tensor:
        return torch.stack([standardise(member.forward_day(day)) for member in self.networks()]).mean(0)

    def networks(self) -> "list[HISTModel]":
        """The members, typed."""
        return [cast(HISTModel, member) for member in self.members]
