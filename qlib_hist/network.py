"""The HIST network (Xu et al., 2021): pure tensors in, tensors out.

For one trading day with ``N`` stocks and ``C`` predefined concepts::

    x_i   = RNN(features_i)[-1]                                    encoder, last hidden state   [N, H]

    Predefined-concept module (shared information from known concepts)
    a_ij  = c_ij / (c_ij * n_j + 1),  n_j = sum_i c_ij             stock -> concept weights      [N, C]
    e_j   = sum_i a_ij x_i            (concepts with no member dropped)                            [C', H]
    p_ij  = softmax_j cos(x_i, e_j)                                 stock attends to concepts     [N, C']
    s_i   = W_es (sum_j p_ij e_j) + b_es                            shared info                   [N, H]
    back  = W_es_back s_i + b,   out_es = LeakyReLU(W_es_fore s_i + b)

    Hidden-concept module (shared information the concepts miss)
    u_i   = x_i - back_i                                            residual                      [N, H]
    k(i)  = argmax_{j != i} cos(u_i, u_j)                           each stock's closest peer
    h_j   = sum_{i: k(i)=j} cos(u_i, u_j) u_i + [j chosen] cos(u_j, u_j) u_j                      [N', H]
    q_ij  = softmax_j cos(u_i, h_j);  t_i = W_is (sum_j q_ij h_j) + b
    back2 = W_is_back t_i + b,   out_is = LeakyReLU(W_is_fore t_i + b)

    Individual module:  out_indi = LeakyReLU(W_indi (x_i - back_i - back2_i) + b)
    Prediction:         y_i = w_out . (out_es + out_is + out_indi) + b_out

This reproduces ``qlib.contrib.model.pytorch_hist.HISTModel`` (same parameter names, same outputs within
float32 rounding) without its N x N scatter buffers: the peer search runs without autograd in row chunks, and
the chosen similarities are recomputed with autograd for the few (i, k(i)) pairs, which gives the same
gradients as differentiating through qlib's masked max.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

RNN_TYPES = {"GRU": nn.GRU, "LSTM": nn.LSTM}
COS_EPS = 1e-6  # qlib's denominator guard in its cosine similarity
PEER_SEARCH_CHUNK = 1024  # rows of the N x N similarity held at once during the peer search


def make_rnn(base_model: str, d_feat: int, hidden_size: int, num_layers: int, dropout: float) -> nn.Module:
    """The encoder: ``nn.GRU`` or ``nn.LSTM`` with ``batch_first=True``, as in qlib."""
    if base_model not in RNN_TYPES:
        raise ValueError(f"base_model must be one of {sorted(RNN_TYPES)}, got {base_model!r}")
    return RNN_TYPES[base_model](
        input_size=d_feat, hidden_size=hidden_size, num_layers=num_layers, batch_first=True, dropout=dropout
    )


def encode(rnn: nn.Module, x: torch.Tensor, d_feat: int) -> torch.Tensor:
    """Alpha360-style flat features ``[N, d_feat * T]`` (field-major) -> last RNN state ``[N, H]``."""
    x = x.reshape(len(x), d_feat, -1).permute(0, 2, 1)  # [N, T, F]
    out, _ = rnn(x)  # [N, T, H]
    return out[:, -1, :]


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
    """For each row ``i`` of ``u`` ``[N, H]``, the ``k`` columns ``j`` of highest ``cos(u_i, u_j)``, diagonal set to 0.

    As in qlib, the diagonal competes with value 0: a stock whose peers all have negative similarity "chooses"
    itself (and that choice carries no weight). Runs in row chunks, so memory is ``chunk x N``, not ``N x N``.
    Returns int64 ``[N, min(k, N)]``, most similar first; ``k = 1`` is qlib's argmax.
    """
    n = len(u)
    k = min(k, n)
    peers = torch.empty(n, k, dtype=torch.long, device=u.device)
    for start in range(0, n, chunk):
        sim = cosine_similarity(u[start : start + chunk], u)  # [chunk, N]
        rows = torch.arange(len(sim), device=u.device)
        sim[rows, rows + start] = 0.0
        peers[start : start + chunk] = sim.argmax(1, keepdim=True) if k == 1 else sim.topk(k, dim=1).indices
    return peers


def closest_peer(u: torch.Tensor, chunk: int = PEER_SEARCH_CHUNK) -> torch.Tensor:
    """qlib's single closest peer per stock, int64 ``[N]`` (see :func:`closest_peers`)."""
    return closest_peers(u, 1, chunk)[:, 0]


@dataclass
class HISTParts:
    """The network's additive parts (each ``[N, H]`` before the linear output layer) and its attentions."""

    concept: torch.Tensor
    hidden_concept: torch.Tensor
    individual: torch.Tensor
    concept_attention: torch.Tensor  # [N, C'] each stock's softmax over the day's kept predefined concepts
    kept_concepts: torch.Tensor  # [C'] column ids of concept_matrix that have members that day
    hidden_attention: torch.Tensor  # [N, N'] each stock's softmax over the day's hidden concepts
    hidden_concept_stocks: torch.Tensor  # [N'] the stock (row) each hidden concept is centred on
    time_attention: Optional[torch.Tensor] = None  # [N, T] softmax over time steps, with temporal_attention


class HISTModel(nn.Module):
    """HIST for one trading day: ``forward(x [N, d_feat*T], concept_matrix [N, C], stock_weight [N]?) -> [N]``.

    Parameter names match qlib's ``HISTModel`` so that its state dicts and its pretrained LSTM/GRU files
    (``rnn.*``) load unchanged. ``fc_es_middle``, ``fc_is_middle``, ``fc_indi_fore`` and ``fc_out_{es,is,indi}``
    are unused, as in qlib; they exist only so those state dicts match.

    Options from the paper, each off by default (then the outputs are qlib's):

    - ``hidden_topk`` K: each stock joins the hidden concepts of its K most similar peers (qlib: K = 1);
    - ``stock_weight`` (forward argument): member weights in the predefined concepts,
      ``a_ij = c_ij w_i / (c_ij W_j + 1)`` with ``W_j = sum_i c_ij w_i`` (the paper weights by market value;
      ``w = 1`` is qlib's formula);
    - ``concept_refine``: the paper's second pass, ``e_j <- sum_i softmax_i(x_i . e_j) x_i`` (softmax over the
      day's stocks), before stocks attend to concepts;
    - ``temporal_attention``: ``x_i = sum_t alpha_it h_it``, ``alpha_i = softmax_t(v . tanh(W h_it))``, in place of
      the RNN's last state (adds ``temporal_att.*`` parameters).
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
        if int(hidden_topk) != hidden_topk or hidden_topk < 1:
            raise ValueError(f"hidden_topk must be an integer >= 1, got {hidden_topk!r}")
        self.d_feat = d_feat
        self.hidden_size = hidden_size
        self.hidden_topk = int(hidden_topk)
        self.concept_refine = bool(concept_refine)
        self.rnn = make_rnn(base_model, d_feat, hidden_size, num_layers, dropout)

        def square() -> nn.Linear:
            layer = nn.Linear(hidden_size, hidden_size)
            nn.init.xavier_uniform_(layer.weight)
            return layer

        # same creation order as qlib, so a seeded init gives the same weights
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
            if temporal_attention else None
        )

    # ------------------------------------------------------------------ modules
    def encode(self, x: torch.Tensor):
        """``x [N, d_feat*T]`` -> (stock state ``[N, H]``, time attention ``[N, T]`` or None)."""
        if self.temporal_att is None:
            return encode(self.rnn, x, self.d_feat), None
        steps, _ = self.rnn(x.reshape(len(x), self.d_feat, -1).permute(0, 2, 1))  # [N, T, H]
        alpha = F.softmax(self.temporal_att(steps).squeeze(-1), dim=1)  # [N, T]
        return (alpha.unsqueeze(-1) * steps).sum(1), alpha

    def predefined_concepts(self, x_hidden: torch.Tensor, concept_matrix: torch.Tensor,
                            stock_weight: Optional[torch.Tensor] = None):
        """Predefined-concept module. ``x_hidden [N, H]``, ``concept_matrix [N, C]``, ``stock_weight [N]`` ->
        (shared ``[N, H]``, backcast ``[N, H]``, attention ``[N, C']``, kept concept ids ``[C']``)."""
        weighted = concept_matrix if stock_weight is None else concept_matrix * stock_weight[:, None]  # [N, C] c_ij w_i
        members = weighted.sum(0, keepdim=True)  # [1, C]   W_j
        weights = weighted / (concept_matrix * members + 1.0)  # [N, C]   a_ij
        kept = (concept_matrix != 0).any(0).nonzero().squeeze(1)  # [C']
        concepts = weights[:, kept].t().mm(x_hidden)  # [C', H]  e_j
        if self.concept_refine:
            to_stocks = F.softmax(x_hidden.mm(concepts.t()), dim=0)  # [N, C'] softmax over stocks
            concepts = to_stocks.t().mm(x_hidden)  # [C', H]
        attention = F.softmax(cosine_similarity(x_hidden, concepts), dim=1)  # [N, C']
        shared = self.fc_es(attention.mm(concepts))  # [N, H]
        return shared, self.fc_es_back(shared), attention, kept

    def hidden_concepts(self, u: torch.Tensor):
        """Hidden-concept module on the residual ``u [N, H]`` -> (shared ``[N, H]``, backcast ``[N, H]``,
        attention ``[N, N']``, the stock each hidden concept is centred on ``[N']``)."""
        n = len(u)
        peers = closest_peers(u, self.hidden_topk)  # [N, K]   k(i)
        members = torch.arange(n, device=u.device)[:, None].expand_as(peers)  # [N, K]   i
        # similarity of each stock to its chosen peers, with autograd; 0 where a stock chose itself
        to_peer = rowwise_cosine(u[members.reshape(-1)], u[peers.reshape(-1)])  # [N*K]
        to_peer = torch.where(peers.reshape(-1) == members.reshape(-1), torch.zeros((), device=u.device), to_peer)
        chosen_weight = torch.zeros(n, device=u.device, dtype=u.dtype).index_add(0, peers.reshape(-1), to_peer)  # [N]
        self_weight = (chosen_weight != 0).to(u.dtype) * rowwise_cosine(u, u)  # [N]
        concepts = torch.zeros_like(u).index_add(0, peers.reshape(-1), to_peer[:, None] * u[members.reshape(-1)])
        concepts = concepts + self_weight[:, None] * u  # [N, H]  h_j
        centres = (concepts.sum(1) != 0).nonzero().squeeze(1)  # [N']
        concepts = concepts[centres]  # [N', H]
        attention = F.softmax(cosine_similarity(u, concepts), dim=1)  # [N, N']
        shared = self.fc_is(attention.mm(concepts))  # [N, H]
        return shared, self.fc_is_back(shared), attention, centres

    def parts(self, x: torch.Tensor, concept_matrix: torch.Tensor, stock_weight: Optional[torch.Tensor] = None) -> HISTParts:
        """Run the network up to the output layer; ``fc_out`` of the sum of the three parts is the prediction."""
        x_hidden, time_attention = self.encode(x)  # [N, H]
        es_shared, es_back, concept_attention, kept = self.predefined_concepts(x_hidden, concept_matrix, stock_weight)
        is_shared, is_back, hidden_attention, centres = self.hidden_concepts(x_hidden - es_back)
        return HISTParts(
            concept=F.leaky_relu(self.fc_es_fore(es_shared)),
            hidden_concept=F.leaky_relu(self.fc_is_fore(is_shared)),
            individual=F.leaky_relu(self.fc_indi(x_hidden - es_back - is_back)),
            concept_attention=concept_attention,
            kept_concepts=kept,
            hidden_attention=hidden_attention,
            hidden_concept_stocks=centres,
            time_attention=time_attention,
        )

    def forward(self, x: torch.Tensor, concept_matrix: torch.Tensor, stock_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x [N, d_feat*T]``, ``concept_matrix [N, C]``, optional ``stock_weight [N]`` -> predictions ``[N]``."""
        p = self.parts(x, concept_matrix, stock_weight)
        return self.fc_out(p.concept + p.hidden_concept + p.individual).squeeze(-1)


class RNNRegressor(nn.Module):
    """The base RNN with a linear head: the layout of qlib's ``LSTMModel`` / ``GRUModel`` (``rnn.*``, ``fc_out.*``).

    Used to pretrain HIST's encoder and to save it in the format qlib's ``model_path`` files have.
    """

    def __init__(
        self, d_feat: int = 6, hidden_size: int = 64, num_layers: int = 2, dropout: float = 0.0, base_model: str = "GRU"
    ) -> None:
        super().__init__()
        self.d_feat = d_feat
        self.rnn = make_rnn(base_model, d_feat, hidden_size, num_layers, dropout)
        self.fc_out = nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor, concept_matrix: Optional[torch.Tensor] = None, stock_weight=None) -> torch.Tensor:
        """``x [N, d_feat*T]`` -> ``[N]``; the concept arguments are accepted and ignored (same call as HISTModel)."""
        return self.fc_out(encode(self.rnn, x, self.d_feat)).squeeze(-1)
