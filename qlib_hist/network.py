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
def closest_peer(u: torch.Tensor, chunk: int = PEER_SEARCH_CHUNK) -> torch.Tensor:
    """For each row ``i`` of ``u`` ``[N, H]``, ``argmax_j`` of ``cos(u_i, u_j)`` with the diagonal set to 0.

    As in qlib, the diagonal competes with value 0: a stock whose every peer has negative similarity
    "chooses" itself. Runs in row chunks, so memory is ``chunk x N``, not ``N x N``. Returns int64 ``[N]``.
    """
    n = len(u)
    peers = torch.empty(n, dtype=torch.long, device=u.device)
    for start in range(0, n, chunk):
        sim = cosine_similarity(u[start : start + chunk], u)  # [chunk, N]
        rows = torch.arange(len(sim), device=u.device)
        sim[rows, rows + start] = 0.0
        peers[start : start + chunk] = sim.argmax(1)
    return peers


@dataclass
class HISTParts:
    """The three additive parts of the prediction, each ``[N, H]`` before the output layer."""

    x_hidden: torch.Tensor
    concept: torch.Tensor
    hidden_concept: torch.Tensor
    individual: torch.Tensor
    concept_attention: Optional[torch.Tensor] = None  # [N, C'] softmax over the kept predefined concepts
    kept_concepts: Optional[torch.Tensor] = None  # [C'] column ids of concept_matrix that have members
    peers: Optional[torch.Tensor] = None  # [N] each stock's closest hidden-concept peer


class HISTModel(nn.Module):
    """HIST for one trading day: ``forward(x [N, d_feat*T], concept_matrix [N, C]) -> [N]``.

    Parameter names match qlib's ``HISTModel`` so that its state dicts and its pretrained LSTM/GRU files
    (``rnn.*``) load unchanged. ``fc_es_middle``, ``fc_is_middle``, ``fc_indi_fore`` and ``fc_out_{es,is,indi}``
    are unused, as in qlib; they exist only so those state dicts match.
    """

    def __init__(
        self, d_feat: int = 6, hidden_size: int = 64, num_layers: int = 2, dropout: float = 0.0, base_model: str = "GRU"
    ) -> None:
        super().__init__()
        self.d_feat = d_feat
        self.hidden_size = hidden_size
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

    # ------------------------------------------------------------------ modules
    def predefined_concepts(self, x_hidden: torch.Tensor, concept_matrix: torch.Tensor):
        """Predefined-concept module. ``x_hidden [N, H]``, ``concept_matrix [N, C]`` -> (shared ``[N, H]``,
        backcast ``[N, H]``, attention ``[N, C']``, kept concept ids ``[C']``)."""
        members = concept_matrix.sum(0, keepdim=True)  # [1, C]   n_j
        weights = concept_matrix / (concept_matrix * members + 1.0)  # [N, C]   a_ij
        kept = (concept_matrix != 0).any(0).nonzero().squeeze(1)  # [C']
        concepts = weights[:, kept].t().mm(x_hidden)  # [C', H]  e_j
        attention = F.softmax(cosine_similarity(x_hidden, concepts), dim=1)  # [N, C']
        shared = self.fc_es(attention.mm(concepts))  # [N, H]
        return shared, self.fc_es_back(shared), attention, kept

    def hidden_concepts(self, u: torch.Tensor):
        """Hidden-concept module on the residual ``u [N, H]`` -> (shared ``[N, H]``, backcast ``[N, H]``, peers ``[N]``)."""
        n = len(u)
        rows = torch.arange(n, device=u.device)
        peers = closest_peer(u)  # [N]   k(i)
        # similarity of each stock to its chosen peer, with autograd; 0 where a stock chose itself
        to_peer = torch.where(peers == rows, torch.zeros((), device=u.device), rowwise_cosine(u, u[peers]))  # [N]
        chosen_weight = torch.zeros(n, device=u.device, dtype=u.dtype).index_add(0, peers, to_peer)  # [N]
        self_weight = (chosen_weight != 0).to(u.dtype) * rowwise_cosine(u, u)  # [N]
        concepts = torch.zeros_like(u).index_add(0, peers, to_peer[:, None] * u) + self_weight[:, None] * u  # [N, H]
        concepts = concepts[concepts.sum(1) != 0]  # [N', H]
        attention = F.softmax(cosine_similarity(u, concepts), dim=1)  # [N, N']
        shared = self.fc_is(attention.mm(concepts))  # [N, H]
        return shared, self.fc_is_back(shared), peers

    def parts(self, x: torch.Tensor, concept_matrix: torch.Tensor) -> HISTParts:
        """Run the network up to the output layer and return its three additive parts."""
        x_hidden = encode(self.rnn, x, self.d_feat)  # [N, H]
        es_shared, es_back, attention, kept = self.predefined_concepts(x_hidden, concept_matrix)
        is_shared, is_back, peers = self.hidden_concepts(x_hidden - es_back)
        individual = F.leaky_relu(self.fc_indi(x_hidden - es_back - is_back))
        return HISTParts(
            x_hidden=x_hidden,
            concept=F.leaky_relu(self.fc_es_fore(es_shared)),
            hidden_concept=F.leaky_relu(self.fc_is_fore(is_shared)),
            individual=individual,
            concept_attention=attention,
            kept_concepts=kept,
            peers=peers,
        )

    def forward(self, x: torch.Tensor, concept_matrix: torch.Tensor) -> torch.Tensor:
        """``x [N, d_feat*T]``, ``concept_matrix [N, C]`` -> predictions ``[N]``."""
        p = self.parts(x, concept_matrix)
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

    def forward(self, x: torch.Tensor, concept_matrix: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x [N, d_feat*T]`` -> ``[N]``; ``concept_matrix`` is accepted and ignored (same call as HISTModel)."""
        return self.fc_out(encode(self.rnn, x, self.d_feat)).squeeze(-1)
