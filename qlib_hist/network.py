"""The HIST network (Xu et al., 2021) for one trading day: pure tensors in, tensors out (torch only, no qlib).

:class:`HISTModel` reproduces ``qlib.contrib.model.pytorch_hist.HISTModel`` (same parameter names, same outputs
within float32 rounding) without its ``N x N`` scatter buffers, and adds the paper's options, each off by default.
:class:`RNNRegressor` is the base RNN with a linear head (qlib's ``LSTMModel`` / ``GRUModel`` layout), used to
pretrain the encoder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .settings import NetworkSettings

if TYPE_CHECKING:  # pragma: no cover
    from .batches import Day

RNN_TYPES = {"GRU": nn.GRU, "LSTM": nn.LSTM}
COS_EPS = 1e-6  # qlib's guard in its cosine similarity's denominator (kept: it changes outputs at 1e-7)
PEER_SEARCH_CHUNK = 1024  # rows of the N x N similarity held at once during the peer search


def make_rnn(settings: NetworkSettings) -> nn.Module:
    """The encoder: ``nn.GRU`` or ``nn.LSTM`` with ``batch_first=True``, as in qlib."""
    return RNN_TYPES[settings.base_model](
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
    steps, _ = rnn(x.reshape(len(x), d_feat, -1).permute(0, 2, 1))  # [N, T, H]
    if temporal_att is None:
        return steps[:, -1, :], None
    alpha = F.softmax(temporal_att(steps).squeeze(-1), dim=1)  # [N, T]
    return (alpha.unsqueeze(-1) * steps).sum(1), alpha


def cosine_similarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``cos(x_i, y_j)`` for all pairs, ``[N, H] x [M, H] -> [N, M]``, with qlib's ``+1e-6`` guard."""
    x_norm = x.norm(dim=1, keepdim=True)  # [N, 1]
    y_norm = y.norm(dim=1, keepdim=True)  # [M, 1]
    return x.mm(y.t()) / (x_norm.mm(y_norm.t()) + COS_EPS)


def rowwise_cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``cos(x_i, y_i)`` for matching rows, ``[N, H] x [N, H] -> [N]``."""
    return (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1) + COS_EPS)


@torch.no_grad()
def closest_peers(u: torch.Tensor, k: int = 1, chunk: int = PEER_SEARCH_CHUNK) -> torch.Tensor:
    """For each row ``i`` of ``u`` ``[N, H]``, the ``k`` rows ``j`` of highest ``cos(u_i, u_j)``.

    As in qlib the diagonal competes with value 0 (not -inf): a stock whose peers all have negative similarity
    "chooses" itself, and that choice carries no weight. Runs in row chunks, so memory is ``chunk x N``, not
    ``N x N``. Returns int64 ``[N, min(k, N)]``, most similar first; ``k = 1`` is qlib's argmax.
    """
    n = len(u)
    k = min(k, n)
    peers = torch.empty(n, k, dtype=torch.long, device=u.device)
    for start in range(0, n, chunk):
        sim = cosine_similarity(u[start : start + chunk], u)  # [chunk, N]
        rows = torch.arange(len(sim), device=u.device)
        sim[rows, rows + start] = 0.0  # qlib: the diagonal is zeroed, not excluded
        peers[start : start + chunk] = sim.argmax(1, keepdim=True) if k == 1 else sim.topk(k, dim=1).indices
    return peers


def check_shapes(x: torch.Tensor, c: torch.Tensor, w: Optional[torch.Tensor], d_feat: int) -> None:
    """Refuse inputs whose shapes do not fit the Shapes section of :class:`HISTModel`, naming the dimension."""
    if x.dim() != 2 or x.shape[1] == 0 or x.shape[1] % d_feat:
        raise ValueError(f"x must be [N, d_feat * T] with d_feat={d_feat}, got shape {tuple(x.shape)}")
    if c.dim() != 2 or c.shape[0] != x.shape[0]:
        raise ValueError(f"concept_matrix must be [N, C] with N={x.shape[0]} (the rows of x), got {tuple(c.shape)}")
    if w is not None and (w.dim() != 1 or w.shape[0] != x.shape[0]):
        raise ValueError(f"member_weight must be [N] with N={x.shape[0]} (the rows of x), got {tuple(w.shape)}")


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

    Shapes:
        - **input:** features ``x`` ``[N, d_feat * T]``, concept matrix ``c`` ``[N, C]``,
          optional member weights ``w`` ``[N]``
        - **output:** predictions ``[N]``
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
    ) -> None:
        super().__init__()
        self.settings = NetworkSettings(
            d_feat, hidden_size, num_layers, dropout, base_model, hidden_topk, concept_refine, temporal_attention
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

    @classmethod
    def from_settings(cls, settings: NetworkSettings) -> "HISTModel":
        return cls(**{name: getattr(settings, name) for name in settings.__dataclass_fields__})

    # ------------------------------------------------------------------ modules
    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``x [N, d_feat*T]`` -> (``x_i`` ``[N, H]``, time attention ``[N, T]`` or None); see :func:`encode`."""
        return encode(self.rnn, x, self.d_feat, self.temporal_att)

    def predefined_concepts(
        self, x: torch.Tensor, c: torch.Tensor, w: Optional[torch.Tensor] = None
    ) -> PredefinedConcepts:
        """``x [N, H]``, concept matrix ``c [N, C]``, member weights ``w [N]`` or None -> the module's outputs."""
        cw = c if w is None else c * w[:, None]  # [N, C]   c_ij w_i
        W = cw.sum(0, keepdim=True)  # [1, C]   W_j
        a = cw / (c * W + 1.0)  # [N, C]   a_ij
        kept = (c != 0).any(0).nonzero().squeeze(1)  # [C']  qlib drops the day's memberless concepts here
        e = a[:, kept].t().mm(x)  # [C', H]  e_j
        if self.settings.concept_refine:
            to_stocks = F.softmax(x.mm(e.t()), dim=0)  # [N, C']  softmax over the day's stocks
            e = to_stocks.t().mm(x)  # [C', H]
        p = F.softmax(cosine_similarity(x, e), dim=1)  # [N, C']  p_ij
        s = self.fc_es(p.mm(e))  # [N, H]   s_i
        return PredefinedConcepts(s, self.fc_es_back(s), p, kept)

    def hidden_concepts(self, u: torch.Tensor) -> HiddenConcepts:
        """Residual ``u [N, H]`` -> :class:`HiddenConcepts`.

        Each stock ``i`` joins the hidden concept centred on each of its peers ``k(i)``; the peer search runs
        without autograd, and the chosen similarities are recomputed with autograd for the ``N*K`` pairs, which
        gives the gradients of differentiating through qlib's masked max without its ``N x N`` buffers.
        """
        n = len(u)
        peers = closest_peers(u, self.settings.hidden_topk)  # [N, K]   k(i)
        j = peers.reshape(-1)  # [N*K]  the peer of each (stock, k) pair
        i = torch.arange(n, device=u.device).repeat_interleave(peers.shape[1])  # [N*K]  its stock
        cos_ij = rowwise_cosine(u[i], u[j])  # [N*K]  with autograd
        cos_ij = torch.where(j == i, torch.zeros((), device=u.device), cos_ij)  # a self-choice carries no weight
        chosen = torch.zeros(n, device=u.device, dtype=u.dtype).index_add(0, j, cos_ij)  # [N]
        self_weight = (chosen != 0).to(u.dtype) * rowwise_cosine(u, u)  # [N]  qlib: a chosen centre joins itself
        h = torch.zeros_like(u).index_add(0, j, cos_ij[:, None] * u[i])  # [N, H]
        h = h + self_weight[:, None] * u  # h_j
        centres = (h.sum(1) != 0).nonzero().squeeze(1)  # [N']  qlib keeps rows whose sum is non-zero
        h = h[centres]  # [N', H]
        q = F.softmax(cosine_similarity(u, h), dim=1)  # [N, N']  q_ij
        t = self.fc_is(q.mm(h))  # [N, H]   t_i
        return HiddenConcepts(t, self.fc_is_back(t), q, centres)

    def parts(self, x: torch.Tensor, c: torch.Tensor, w: Optional[torch.Tensor] = None) -> HISTParts:
        """Run the network up to the output layer; ``fc_out`` of the sum of the three parts is the prediction."""
        x_hidden, time_attention = self.encode(x)  # [N, H]
        es = self.predefined_concepts(x_hidden, c, w)
        hs = self.hidden_concepts(x_hidden - es.backcast)
        return HISTParts(
            concept=F.leaky_relu(self.fc_es_fore(es.shared)),
            hidden_concept=F.leaky_relu(self.fc_is_fore(hs.shared)),
            individual=F.leaky_relu(self.fc_indi(x_hidden - es.backcast - hs.backcast)),
            concept_attention=es.attention,
            kept_concepts=es.kept,
            hidden_attention=hs.attention,
            hidden_concept_stocks=hs.centres,
            time_attention=time_attention,
        )

    def forward(
        self, x: torch.Tensor, concept_matrix: torch.Tensor, member_weight: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``x [N, d_feat*T]``, ``concept_matrix [N, C]``, optional ``member_weight [N]`` -> predictions ``[N]``."""
        check_shapes(x, concept_matrix, member_weight, self.d_feat)
        p = self.parts(x, concept_matrix, member_weight)
        return self.fc_out(p.concept + p.hidden_concept + p.individual).squeeze(-1)

    def forward_day(self, day: "Day") -> torch.Tensor:
        """Predictions ``[n]`` for one :class:`~qlib_hist.batches.Day` (what the trainer calls)."""
        return self(day.x, day.concepts, day.member_weight)


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
