"""HISTModel / RNNRegressor: parity with qlib's networks, pretrained files, edge cases, peer search."""

from __future__ import annotations

import logging

import pytest
import torch

from qlib_hist.network import HISTModel, RNNRegressor, closest_peer, cosine_similarity

qlib_hist_mod = pytest.importorskip("qlib.contrib.model.pytorch_hist")
QlibHISTModel = qlib_hist_mod.HISTModel

D_FEAT = 6


@pytest.fixture
def qlib_on_cpu(monkeypatch):
    """qlib's forward calls ``torch.device(torch.get_device(x))``, which is -1 (an error) for CPU tensors."""
    monkeypatch.setattr(qlib_hist_mod.torch, "get_device", lambda t: "cpu")


def _pair(base_model: str, hidden: int = 32, layers: int = 2, seed: int = 0):
    """qlib's HISTModel and ours holding the same weights (qlib's random init, loaded strictly into ours)."""
    torch.manual_seed(seed)
    ref = QlibHISTModel(d_feat=D_FEAT, hidden_size=hidden, num_layers=layers, base_model=base_model)
    ours = HISTModel(d_feat=D_FEAT, hidden_size=hidden, num_layers=layers, base_model=base_model)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref.eval(), ours.eval()


def _inputs(n: int, n_concepts: int, density: float, t: int = 20, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D_FEAT * t, generator=g)
    concepts = (torch.rand(n, n_concepts, generator=g) < density).float()
    return x, concepts


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


# ----------------------------------------------------------------------------- parity with qlib
@pytest.mark.parametrize("base_model", ["GRU", "LSTM"])
@pytest.mark.parametrize(
    "n, n_concepts, density",
    [(300, 120, 0.03), (57, 40, 0.2), (23, 30, 0.02), (80, 10, 0.8)],
)
def test_forward_matches_qlib(qlib_on_cpu, base_model, n, n_concepts, density):
    ref, ours = _pair(base_model)
    x, concepts = _inputs(n, n_concepts, density, seed=n)
    with torch.no_grad():
        expected = ref(x, concepts)
        got = ours(x, concepts)
    assert got.shape == (n,)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("base_model", ["GRU", "LSTM"])
@pytest.mark.parametrize("n, n_concepts, density", [(300, 120, 0.03), (41, 25, 0.15)])
def test_gradients_match_qlib(qlib_on_cpu, base_model, n, n_concepts, density):
    ref, ours = _pair(base_model, seed=3)
    ref.train(), ours.train()
    x, concepts = _inputs(n, n_concepts, density, seed=7 + n)
    ref(x, concepts).sum().backward()
    ours(x, concepts).sum().backward()
    _assert_grads_close(ref, ours)


def test_gradients_wrt_input_match_qlib(qlib_on_cpu):
    ref, ours = _pair("GRU", seed=5)
    x, concepts = _inputs(60, 20, 0.1, seed=11)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    (ref(x_ref, concepts) ** 2).sum().backward()
    (ours(x_ours, concepts) ** 2).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-4, atol=1e-4 * x_ref.grad.abs().max().item())


def test_parity_with_weighted_concepts(qlib_on_cpu):
    """Non-binary concept weights (membership tables carry weights) give qlib's numbers too."""
    ref, ours = _pair("GRU", seed=9)
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


# ----------------------------------------------------------------------------- qlib's pretrained files
@pytest.mark.parametrize("base_model, name", [("LSTM", "model_lstm_csi300.pkl"), ("GRU", "model_gru_csi300.pkl")])
def test_qlib_pretrained_loads_by_name(shared_data, base_model, name):
    path = shared_data / "qlib_reference" / name
    if not path.exists():
        pytest.skip(f"{path} not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = HISTModel(d_feat=6, hidden_size=64, num_layers=2, base_model=base_model)
    own = net.state_dict()
    assert any(k.startswith("rnn.") for k in state) and "fc_out.weight" in state
    for k, v in state.items():
        assert k in own, f"{k} of {name} is not a HISTModel parameter"
        assert own[k].shape == v.shape, k

    from qlib_hist.model import load_pretrained

    loaded = load_pretrained(net, path, logging.getLogger("test"))
    assert sorted(loaded) == sorted(state)
    for k, v in state.items():
        assert torch.equal(net.state_dict()[k], v), k
    x, concepts = _inputs(30, 10, 0.2, t=60)
    with torch.no_grad():
        out = net(x, concepts)
    assert out.shape == (30,) and torch.isfinite(out).all()


def test_qlib_pretrained_wrong_base_model_is_refused(shared_data):
    path = shared_data / "qlib_reference" / "model_lstm_csi300.pkl"
    if not path.exists():
        pytest.skip(f"{path} not found")
    from qlib_hist.model import load_pretrained

    with pytest.raises(ValueError, match="shape"):
        load_pretrained(HISTModel(base_model="GRU"), path, logging.getLogger("test"))


# ----------------------------------------------------------------------------- edge cases
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


@pytest.mark.parametrize("label, n, concepts", [d for d in EDGE_DAYS if d[1] >= 2], ids=[d[0] for d in EDGE_DAYS if d[1] >= 2])
def test_edge_cases_match_qlib(qlib_on_cpu, label, n, concepts):
    ref, ours = _pair("GRU", hidden=8, layers=1, seed=2)
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


# ----------------------------------------------------------------------------- closest peer
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
    results = {c: closest_peer(u, chunk=c) for c in (1, 7, 1024)}
    assert results[1].dtype == torch.long and results[1].shape == (50,)
    for c, r in results.items():
        assert torch.equal(r, results[1024]), f"chunk={c}"
    assert torch.equal(results[1024], _peers_reference(u))
    assert results[1][0].item() == 0
    assert (results[1][1:] != torch.arange(1, 50)).all()  # the others pick a real peer


def test_closest_peer_picks_most_similar():
    u = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.05]])
    for chunk in (1, 2, 1024):
        assert closest_peer(u, chunk=chunk).tolist() == [1, 0, 3, 2, 2]


def test_closest_peer_chunking_random_sizes():
    g = torch.Generator().manual_seed(1)
    for n in (2, 3, 8, 64, 130):
        u = torch.randn(n, 8, generator=g)
        ref = _peers_reference(u)
        for chunk in (1, 7, 1024):
            assert torch.equal(closest_peer(u, chunk=chunk), ref), (n, chunk)


# ----------------------------------------------------------------------------- RNNRegressor
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
        torch.testing.assert_close(ours(x, torch.zeros(9, 3)), ref(x).reshape(-1), rtol=1e-6, atol=1e-6)
    # and HIST takes its rnn.* / fc_out.* by name
    hist_state = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=2, base_model=base_model).state_dict()
    for k, v in own_state.items():
        assert hist_state[k].shape == v.shape, k
