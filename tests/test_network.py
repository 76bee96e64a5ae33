"""HISTModel / RNNRegressor (``qlib_hist.network``): parity with qlib's networks, edge cases, the peer search, and
the paper's options (hidden_topk, member weights, concept refinement, temporal attention).

The options are checked against dense references written here straight from the formulas in
``qlib_hist.network``'s docstring (and against qlib's own HISTModel where an option is off).
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch.nn import functional as F

from qlib_hist.batches import Day
from qlib_hist.network import HISTModel, RNNRegressor, closest_peers, cosine_similarity
from qlib_hist.settings import SettingsError

qlib_hist_mod = pytest.importorskip("qlib.contrib.model.pytorch_hist")
QlibHISTModel = qlib_hist_mod.HISTModel

D_FEAT = 6
COS_EPS = 1e-6


def _qlib_pair(base_model: str = "GRU", hidden: int = 32, layers: int = 2, seed: int = 0, **options):
    """qlib's HISTModel and ours holding the same weights (qlib's random init, loaded strictly into ours)."""
    torch.manual_seed(seed)
    ref = QlibHISTModel(d_feat=D_FEAT, hidden_size=hidden, num_layers=layers, base_model=base_model)
    ours = HISTModel(d_feat=D_FEAT, hidden_size=hidden, num_layers=layers, base_model=base_model, **options)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref.eval(), ours.eval()


def _inputs(
    n: int = 60, n_concepts: int = 15, density: float = 0.2, t: int = 20, seed: int = 1, empty_last: bool = False
):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D_FEAT * t, generator=g)
    concepts = (torch.rand(n, n_concepts, generator=g) < density).float()
    if empty_last:
        concepts[:, -1] = 0.0  # a concept with no member that day
    return x, concepts


#: the options' inputs: 60 stocks, 15 concepts, the last without members
_option_inputs = functools.partial(_inputs, empty_last=True)
#: the options' networks: small, as qlib's
_small_pair = functools.partial(_qlib_pair, hidden=16, layers=1)


def _assert_grads_close(ref: torch.nn.Module, ours: torch.nn.Module, rel: float = 1e-4) -> None:
    ref_grads = dict(ref.named_parameters())
    checked = 0
    for name, p in ours.named_parameters():
        g_ref, g_ours = ref_grads[name].grad, p.grad
        assert (g_ref is None) == (g_ours is None), f"{name}: gradient present in only one model"
        if g_ref is None:
            continue
        assert torch.isfinite(g_ours).all(), name
        scale = g_ref.abs().max().item()
        err = (g_ours - g_ref).abs().max().item()
        assert err <= rel * max(scale, 1e-8) + 1e-7, f"{name}: max |diff| {err:.3g} vs max |grad| {scale:.3g}"
        checked += 1
    assert checked >= 10  # rnn.*, fc_es, fc_is, *_back, *_fore, fc_indi, fc_out


def _close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ==================================================================================================== parity with qlib
@pytest.mark.parametrize("base_model", ["GRU", "LSTM"])
@pytest.mark.parametrize(
    "n, n_concepts, density",
    [(300, 120, 0.03), (57, 40, 0.2), (23, 30, 0.02), (80, 10, 0.8)],
)
def test_forward_matches_qlib(qlib_on_cpu, base_model, n, n_concepts, density):
    ref, ours = _qlib_pair(base_model)
    x, concepts = _inputs(n, n_concepts, density, seed=n)
    with torch.no_grad():
        expected = ref(x, concepts)
        got = ours(x, concepts)
    assert got.shape == (n,)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("base_model", ["GRU", "LSTM"])
@pytest.mark.parametrize("n, n_concepts, density", [(300, 120, 0.03), (41, 25, 0.15)])
def test_gradients_match_qlib(qlib_on_cpu, base_model, n, n_concepts, density):
    ref, ours = _qlib_pair(base_model, seed=3)
    ref.train(), ours.train()
    x, concepts = _inputs(n, n_concepts, density, seed=7 + n)
    ref(x, concepts).sum().backward()
    ours(x, concepts).sum().backward()
    _assert_grads_close(ref, ours)


def test_gradients_wrt_input_match_qlib(qlib_on_cpu):
    ref, ours = _qlib_pair("GRU", seed=5)
    x, concepts = _inputs(60, 20, 0.1, seed=11)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    (ref(x_ref, concepts) ** 2).sum().backward()
    (ours(x_ours, concepts) ** 2).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-4, atol=1e-4 * x_ref.grad.abs().max().item())


def test_parity_with_weighted_concepts(qlib_on_cpu):
    """Non-binary concept weights (membership tables carry weights) give qlib's numbers too."""
    ref, ours = _qlib_pair("GRU", seed=9)
    x, concepts = _inputs(50, 15, 0.3, seed=2)
    concepts = concepts * torch.rand(concepts.shape, generator=torch.Generator().manual_seed(4)) * 2
    with torch.no_grad():
        torch.testing.assert_close(ours(x, concepts), ref(x, concepts), rtol=1e-5, atol=1e-5)


def test_same_seed_same_init_as_qlib():
    """Same creation order as qlib: a seeded init gives qlib's weights."""
    torch.manual_seed(123)
    ref = QlibHISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1, base_model="GRU")
    torch.manual_seed(123)
    ours = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1, base_model="GRU")
    ref_state = ref.state_dict()
    assert list(ours.state_dict()) == list(ref_state)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, ref_state[k]), k


def test_unknown_base_model():
    with pytest.raises(ValueError, match="GRU"):
        HISTModel(base_model="Transformer")


def test_forward_day_is_forward():
    torch.manual_seed(0)
    net = HISTModel(d_feat=D_FEAT, hidden_size=8, num_layers=1).eval()
    x, c = _inputs(n=12, seed=2)
    w = torch.rand(12, generator=torch.Generator().manual_seed(1)) + 0.5
    day = Day(x, c, label=None, sample_weight=None, member_weight=w)
    with torch.no_grad():
        assert torch.equal(net.forward_day(day), net(x, c, w))
    assert HISTModel.from_settings(net.settings).settings == net.settings


# ==================================================================================================== edge cases
def _edge_days():
    g = torch.Generator().manual_seed(0)
    n = 12
    dup = (torch.rand(n, 3, generator=g) < 0.4).float()
    dup[:, 0] = 1.0
    yield "no stock has a concept", n, torch.zeros(n, 8)
    yield "one stock", 1, torch.ones(1, 5)
    yield "one stock, no concept", 1, torch.zeros(1, 5)
    empty_cols = (torch.rand(n, 10, generator=g) < 0.3).float()
    empty_cols[:, [0, 4, 9]] = 0.0
    yield "concepts with no member", n, empty_cols
    yield "duplicate concept columns", n, torch.cat([dup, dup, dup[:, :1]], dim=1)
    yield "two stocks", 2, torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    yield "two stocks, no concept", 2, torch.zeros(2, 3)
    yield "every stock in every concept", n, torch.ones(n, 4)


EDGE_DAYS = list(_edge_days())
EDGE_DAYS_2 = [d for d in EDGE_DAYS if d[1] >= 2]


@pytest.mark.parametrize("base_model", ["GRU", "LSTM"])
@pytest.mark.parametrize("label, n, concepts", EDGE_DAYS, ids=[d[0] for d in EDGE_DAYS])
def test_edge_cases_finite(base_model, label, n, concepts):
    torch.manual_seed(0)
    net = HISTModel(d_feat=D_FEAT, hidden_size=8, num_layers=1, base_model=base_model)
    x = torch.randn(n, D_FEAT * 5)
    out = net(x, concepts)
    assert out.shape == (n,), label
    assert torch.isfinite(out).all(), label
    out.sum().backward()
    for name, p in net.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), f"{label}: gradient of {name} not finite"


@pytest.mark.parametrize("label, n, concepts", EDGE_DAYS_2, ids=[d[0] for d in EDGE_DAYS_2])
def test_edge_cases_match_qlib(qlib_on_cpu, label, n, concepts):
    ref, ours = _qlib_pair("GRU", hidden=8, layers=1, seed=2)
    x = torch.randn(n, D_FEAT * 5, generator=torch.Generator().manual_seed(n))
    with torch.no_grad():
        torch.testing.assert_close(ours(x, concepts), ref(x, concepts).reshape(-1), rtol=1e-5, atol=1e-5)


def test_empty_concepts_dropped_from_attention():
    """Columns with no member and an all-zero day leave no concept in the attention."""
    torch.manual_seed(0)
    net = HISTModel(d_feat=D_FEAT, hidden_size=8, num_layers=1)
    x = torch.randn(6, D_FEAT * 4)
    concepts = torch.zeros(6, 5)
    concepts[:3, 1] = 1.0
    concepts[2:, 3] = 1.0
    parts = net.parts(x, concepts)
    assert parts.kept_concepts.tolist() == [1, 3]
    assert parts.concept_attention.shape == (6, 2)
    torch.testing.assert_close(parts.concept_attention.sum(1), torch.ones(6))
    zero = net.parts(x, torch.zeros(6, 5))
    assert zero.kept_concepts.numel() == 0
    assert torch.isfinite(zero.concept).all()


def test_modules_are_the_parts():
    """predefined_concepts / hidden_concepts are the steps parts() chains."""
    torch.manual_seed(1)
    net = HISTModel(d_feat=D_FEAT, hidden_size=8, num_layers=1).eval()
    x, c = _option_inputs(n=20, seed=3)
    with torch.no_grad():
        hidden, alpha = net.encode(x)
        es = net.predefined_concepts(hidden, c)
        hs = net.hidden_concepts(hidden - es.backcast)
        parts = net.parts(x, c)
    assert alpha is None
    assert torch.equal(es.kept, parts.kept_concepts) and torch.equal(es.attention, parts.concept_attention)
    assert torch.equal(hs.centres, parts.hidden_concept_stocks) and torch.equal(hs.attention, parts.hidden_attention)
    assert torch.equal(F.leaky_relu(net.fc_es_fore(es.shared)), parts.concept)


@pytest.mark.parametrize("aux", [(), (2, 3)])
def test_under_bf16_autocast_only_the_encoder_runs_in_bf16(aux):
    """``precision: bf16``: the encoder's state is bf16 arithmetic, all that follows it is fp32 on that state."""
    torch.manual_seed(2)
    net = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1, aux_horizons=aux).eval()
    x, c = _option_inputs(n=30, seed=4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hidden, alpha = net.encode(x)
        pred, aux_out = net.heads(net.parts(x, c))
        alone = net(x, c)
    with torch.no_grad():
        fp32_hidden = net.encode(x)[0]
        expected, expected_aux = net.heads(net.parts_of_state(hidden, alpha, c))  # fp32 from the bf16 state
    assert hidden.dtype == torch.float32 and not torch.equal(hidden, fp32_hidden)  # the encoder did run in bf16
    assert pred.dtype == aux_out.dtype == torch.float32
    assert torch.equal(pred, expected) and torch.equal(aux_out, expected_aux) and torch.equal(alone, expected)


# ==================================================================================================== closest peers
def _closest_peer(u: torch.Tensor, chunk: int) -> torch.Tensor:
    """qlib's argmax: the single closest peer of each row."""
    return closest_peers(u, 1, chunk)[:, 0]


def _peers_reference(u: torch.Tensor) -> torch.Tensor:
    sim = cosine_similarity(u, u)
    sim.fill_diagonal_(0.0)
    return sim.argmax(1)


def test_closest_peer_chunking_identical():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(50, 16, generator=g)
    u[1:, 0] = u[1:, 0].abs() + 5.0  # every other row points along +e0 ...
    u[0] = 0.0
    u[0, 0] = -1.0  # ... so row 0 has only negative similarities and "chooses" itself
    results = {c: _closest_peer(u, chunk=c) for c in (1, 7, 1024)}
    assert results[1].dtype == torch.long and results[1].shape == (50,)
    for c, r in results.items():
        assert torch.equal(r, results[1024]), f"chunk={c}"
    assert torch.equal(results[1024], _peers_reference(u))
    assert results[1][0].item() == 0
    assert (results[1][1:] != torch.arange(1, 50)).all()  # the others pick a real peer


def test_closest_peer_picks_most_similar():
    u = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.05]])
    for chunk in (1, 2, 1024):
        assert _closest_peer(u, chunk=chunk).tolist() == [1, 0, 3, 2, 2]


def test_closest_peer_chunking_random_sizes():
    g = torch.Generator().manual_seed(1)
    for n in (2, 3, 8, 64, 130):
        u = torch.randn(n, 8, generator=g)
        ref = _peers_reference(u)
        for chunk in (1, 7, 1024):
            assert torch.equal(_closest_peer(u, chunk=chunk), ref), (n, chunk)


def test_closest_peers_k_chunking_identical():
    u = torch.randn(40, 8, generator=torch.Generator().manual_seed(2))
    sim = cosine_similarity(u, u)
    sim.fill_diagonal_(0.0)
    want = sim.topk(3, dim=1).indices
    for chunk in (1, 7, 1024):
        assert torch.equal(closest_peers(u, 3, chunk), want), chunk
    assert closest_peers(u[:2], 5).shape == (2, 2)  # k is capped at N


# ==================================================================================================== RNNRegressor
@pytest.mark.parametrize("base_model", ["LSTM", "GRU"])
def test_rnn_regressor_matches_qlib_layout(base_model):
    if base_model == "LSTM":
        from qlib.contrib.model.pytorch_lstm import LSTMModel as QlibModel
    else:
        from qlib.contrib.model.pytorch_gru import GRUModel as QlibModel
    torch.manual_seed(0)
    ref = QlibModel(d_feat=D_FEAT, hidden_size=16, num_layers=2)
    ours = RNNRegressor(d_feat=D_FEAT, hidden_size=16, num_layers=2, base_model=base_model)
    ref_state, own_state = ref.state_dict(), ours.state_dict()
    assert list(own_state) == list(ref_state)
    for k in ref_state:
        assert own_state[k].shape == ref_state[k].shape, k
    ours.load_state_dict(ref_state, strict=True)
    x = torch.randn(9, D_FEAT * 7)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x).reshape(-1), rtol=1e-6, atol=1e-6)
        day = Day(x, torch.zeros(9, 3), label=None, sample_weight=None, member_weight=None)
        assert torch.equal(ours.forward_day(day), ours(x))  # concepts are ignored
    # and HIST takes its rnn.* / fc_out.* by name
    hist_state = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=2, base_model=base_model).state_dict()
    for k, v in own_state.items():
        assert hist_state[k].shape == v.shape, k


# ==================================================================================================== dense references
def ref_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a_i, b_j) with qlib's +1e-6 guard in the denominator."""
    return (a @ b.T) / (a.norm(dim=1)[:, None] * b.norm(dim=1)[None, :] + COS_EPS)


def ref_softmax(z: torch.Tensor, dim: int) -> torch.Tensor:
    e = torch.exp(z - z.max(dim, keepdim=True).values)
    return e / e.sum(dim, keepdim=True)


def ref_encode(net: HISTModel, x: torch.Tensor):
    """RNN over ``[N, T, F]``; last state, or ``sum_t alpha_it h_it``
    with ``alpha_i = softmax_t(v . tanh(W h_it + b))``."""
    steps, _ = net.rnn(x.reshape(len(x), D_FEAT, -1).permute(0, 2, 1))  # [N, T, H]
    if net.temporal_att is None:
        return steps[:, -1], None
    lin, v = net.temporal_att[0], net.temporal_att[2].weight[0]
    alpha = ref_softmax(torch.tanh(steps @ lin.weight.T + lin.bias) @ v, dim=1)  # [N, T]
    return (alpha[:, :, None] * steps).sum(1), alpha


def ref_forward(net: HISTModel, x, c, w=None, topk: int = 1, refine: bool = False):
    """HIST written densely (N x N and N x C matrices), following the paper / network.py's docstring."""
    lrelu = F.leaky_relu
    xh, _ = ref_encode(net, x)
    n = len(x)
    w = torch.ones(n) if w is None else w
    # predefined concepts: a_ij = c_ij w_i / (c_ij W_j + 1), W_j = sum_i c_ij w_i; e_j = sum_i a_ij x_i
    W = (c * w[:, None]).sum(0)
    a = c * w[:, None] / (c * W[None, :] + 1.0)
    keep = (c != 0).any(0)
    e = a[:, keep].T @ xh  # [C', H]
    if refine:  # e_j <- sum_i softmax_over_i(x_i . e_j) x_i
        s = ref_softmax(xh @ e.T, dim=0)  # [N, C'] columns sum to 1
        e = torch.stack([(s[:, j : j + 1] * xh).sum(0) for j in range(e.shape[0])]) if e.shape[0] else e
    p = ref_softmax(ref_cos(xh, e), dim=1)
    es = net.fc_es(p @ e)
    back = net.fc_es_back(es)
    out_es = lrelu(net.fc_es_fore(es))
    # hidden concepts: each stock joins the hidden concepts of its K most similar peers
    u = xh - back
    sim = ref_cos(u, u)
    diag = sim.diagonal().clone()
    off = sim.clone()
    off.fill_diagonal_(0.0)
    peers = off.topk(min(topk, n), dim=1).indices  # [N, K]
    M = torch.zeros(n, n)
    rows = torch.arange(n)[:, None].expand_as(peers)
    M[rows, peers] = off[rows, peers]  # a self-choice carries 0
    M = M + torch.diag((M.sum(0) != 0).float() * diag)
    h = M.T @ u
    h = h[h.sum(1) != 0]
    q = ref_softmax(ref_cos(u, h), dim=1)
    hs = net.fc_is(q @ h)
    back2 = net.fc_is_back(hs)
    out_is = lrelu(net.fc_is_fore(hs))
    out_indi = lrelu(net.fc_indi(xh - back - back2))
    return net.fc_out(out_es + out_is + out_indi).squeeze(-1)


def test_reference_reproduces_qlib(qlib_on_cpu):
    """Sanity of the dense reference itself: with every option off it is qlib's network."""
    ref, ours = _small_pair(seed=2)
    x, c = _option_inputs(seed=3)
    with torch.no_grad():
        _close(ref_forward(ours, x, c), ref(x, c))


# ==================================================================================================== hidden_topk
@pytest.mark.parametrize("n", [60, 23])
def test_hidden_topk_1_is_qlib(qlib_on_cpu, n):
    ref, ours = _small_pair(seed=n, hidden_topk=1)
    x, c = _option_inputs(n=n, seed=n)
    with torch.no_grad():
        _close(ours(x, c), ref(x, c))


@pytest.mark.parametrize("k, n", [(2, 60), (3, 60), (3, 23), (7, 40), (10, 4)])
def test_hidden_topk_matches_dense_reference(k, n):
    torch.manual_seed(k + n)
    net = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1, hidden_topk=k).eval()
    one = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1, hidden_topk=1).eval()
    one.load_state_dict(net.state_dict())
    x, c = _option_inputs(n=n, seed=10 + k)
    with torch.no_grad():
        got = net(x, c)
        _close(got, ref_forward(net, x, c, topk=k))
        assert (got - one(x, c)).abs().max() > 1e-4, "K > 1 must change the hidden concepts"
        parts = net.parts(x, c)
    # more peers per stock: at least as many stocks are the centre of a hidden concept
    assert len(parts.hidden_concept_stocks) >= len(one.parts(x, c).hidden_concept_stocks)
    torch.testing.assert_close(parts.hidden_attention.sum(1), torch.ones(n))


def test_hidden_topk_gradients_finite():
    torch.manual_seed(0)
    net = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1, hidden_topk=3)
    x, c = _option_inputs(n=30, seed=4)
    net(x, c).pow(2).sum().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert net.fc_is.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [0, 1.5, -1])
def test_bad_hidden_topk(bad):
    from qlib_hist import HIST

    with pytest.raises(ValueError, match="hidden_topk") as err:
        HISTModel(hidden_topk=bad)
    assert isinstance(err.value, SettingsError)
    assert str(err.value).startswith("hidden_topk must be ") and str(err.value).endswith(f">= 1, got {bad!r}")
    with pytest.raises(ValueError, match="hidden_topk"):
        HIST(hidden_topk=bad, GPU=-1)


# ==================================================================================================== member weights
def test_member_weight_none_equals_ones_exactly():
    torch.manual_seed(1)
    net = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1).eval()
    x, c = _option_inputs(seed=5)
    with torch.no_grad():
        assert torch.equal(net(x, c), net(x, c, torch.ones(len(x))))


@pytest.mark.parametrize("topk", [1, 3])
def test_member_weight_matches_dense_reference(topk):
    torch.manual_seed(2)
    net = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1, hidden_topk=topk).eval()
    x, c = _option_inputs(seed=6)
    w = torch.rand(len(x), generator=torch.Generator().manual_seed(7)) * 3 + 0.05
    with torch.no_grad():
        got = net(x, c, w)
        _close(got, ref_forward(net, x, c, w=w, topk=topk))
        assert (got - net(x, c)).abs().max() > 1e-4, "non-uniform weights must matter"


# ==================================================================================================== concept_refine
def test_concept_refine_matches_dense_reference():
    torch.manual_seed(3)
    net = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1, concept_refine=True).eval()
    plain = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1).eval()
    plain.load_state_dict(net.state_dict())
    x, c = _option_inputs(seed=8)
    w = torch.rand(len(x), generator=torch.Generator().manual_seed(9)) + 0.5
    with torch.no_grad():
        got = net(x, c)
        _close(got, ref_forward(net, x, c, refine=True))
        _close(net(x, c, w), ref_forward(net, x, c, w=w, refine=True))
        assert (got - plain(x, c)).abs().max() > 1e-4, "the refinement must change the output"


def test_concept_refine_off_is_qlib(qlib_on_cpu):
    ref, ours = _small_pair(seed=4, concept_refine=False)
    x, c = _option_inputs(seed=11)
    with torch.no_grad():
        _close(ours(x, c), ref(x, c))


def test_concept_refine_day_without_concepts_is_finite():
    torch.manual_seed(0)
    net = HISTModel(d_feat=D_FEAT, hidden_size=8, num_layers=1, concept_refine=True)
    x = torch.randn(7, D_FEAT * 5)
    out = net(x, torch.zeros(7, 4))
    assert torch.isfinite(out).all()


# ================================================================================================ temporal_attention
def test_temporal_attention_off_has_qlib_state_dict():
    ref = QlibHISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1, base_model="GRU")
    off = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1, temporal_attention=False)
    assert list(off.state_dict()) == list(ref.state_dict())
    on = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1, temporal_attention=True)
    extra = set(on.state_dict()) - set(ref.state_dict())
    assert extra and all(k.startswith("temporal_att.") for k in extra)
    assert set(ref.state_dict()) <= set(on.state_dict())


def test_temporal_attention_matches_reference_and_parts():
    torch.manual_seed(5)
    net = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=2, temporal_attention=True).eval()
    t = 20
    x, c = _option_inputs(n=50, seed=12, t=t)
    with torch.no_grad():
        out = net(x, c)
        assert out.shape == (50,) and torch.isfinite(out).all()
        _close(out, ref_forward(net, x, c))
        parts = net.parts(x, c)
    alpha = parts.time_attention
    assert alpha is not None and alpha.shape == (50, t)
    assert (alpha >= 0).all()
    torch.testing.assert_close(alpha.sum(1), torch.ones(50))
    _close(alpha, ref_encode(net, x)[1])
    assert alpha.std(1).max() > 0  # not the uniform weights of a dead layer
    # off: no time attention in the parts
    plain = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=2)
    assert plain.parts(x, c).time_attention is None
