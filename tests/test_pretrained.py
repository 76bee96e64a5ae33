"""Pretrained weights in qlib's ``model_path`` format (``qlib_hist.pretrained``): qlib's own files and ours."""

from __future__ import annotations

import logging

import pytest
import torch

from qlib_hist.network import HISTModel, RNNRegressor
from qlib_hist.pretrained import load_pretrained, save_state_dict

from conftest import shared_file

LOG = logging.getLogger("test_pretrained")


@pytest.mark.realdata
@pytest.mark.parametrize("base_model, name", [("LSTM", "model_lstm_csi300.pkl"), ("GRU", "model_gru_csi300.pkl")])
def test_qlib_pretrained_loads_by_name(base_model, name):
    path = shared_file(f"qlib_reference/{name}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = HISTModel(d_feat=6, hidden_size=64, num_layers=2, base_model=base_model)
    own = net.state_dict()
    assert any(k.startswith("rnn.") for k in state) and "fc_out.weight" in state
    for k, v in state.items():
        assert k in own, f"{k} of {name} is not a HISTModel parameter"
        assert own[k].shape == v.shape, k

    loaded = load_pretrained(net, path, LOG)
    assert sorted(loaded) == sorted(state)
    for k, v in state.items():
        assert torch.equal(net.state_dict()[k], v), k
    g = torch.Generator().manual_seed(1)
    x, concepts = torch.randn(30, 6 * 60, generator=g), (torch.rand(30, 10, generator=g) < 0.2).float()
    with torch.no_grad():
        out = net(x, concepts)
    assert out.shape == (30,) and torch.isfinite(out).all()


@pytest.mark.realdata
def test_qlib_pretrained_wrong_base_model_is_refused():
    path = shared_file("qlib_reference/model_lstm_csi300.pkl")
    with pytest.raises(ValueError, match="shape"):
        load_pretrained(HISTModel(base_model="GRU"), path, LOG)


def test_saved_base_model_loads_by_name(tmp_path):
    torch.manual_seed(0)
    base = RNNRegressor(d_feat=6, hidden_size=8, num_layers=1, base_model="LSTM")
    path = save_state_dict(base.state_dict(), tmp_path / "sub" / "base.pkl")
    assert [p.name for p in path.parent.iterdir()] == ["base.pkl"]  # no temp file left
    net = HISTModel(d_feat=6, hidden_size=8, num_layers=1, base_model="LSTM")
    untouched = net.fc_es.weight.detach().clone()
    assert load_pretrained(net, path, LOG) == sorted(base.state_dict())
    for k, v in base.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    assert torch.equal(net.fc_es.weight, untouched)  # only the matching names
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        load_pretrained(net, tmp_path / "nope.pkl", LOG)
    (tmp_path / "bad.pkl").write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="bad.pkl"):
        load_pretrained(net, tmp_path / "bad.pkl", LOG)
