"""The paper's options (hidden_topk, member weights, concept refinement, temporal attention, smooth_steps,
precision@k), explanations, and resumable checkpoints.

The network options are checked against dense references written here straight from the formulas in
``qlib_hist.network``'s docstring (and against qlib's own HISTModel where an option is off); the HIST-level
options run on the small synthetic provider of ``conftest.py``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from qlib.data.dataset.handler import DataHandlerLP

from qlib_hist import HIST
from qlib_hist.concepts import LegacyConcepts
from qlib_hist.data import DataError, build_daily_batches
from qlib_hist.model import CHECKPOINT_NAME
from qlib_hist.network import HISTModel
from qlib_hist.stock_weights import stock_weights
from qlib_hist.training import CheckpointError, TrainConfig, Trainer

qlib_hist_mod = pytest.importorskip("qlib.contrib.model.pytorch_hist")
QlibHISTModel = qlib_hist_mod.HISTModel

D_FEAT = 6
COS_EPS = 1e-6
CPU = torch.device("cpu")


@pytest.fixture
def qlib_on_cpu(monkeypatch):
    """qlib's forward calls ``torch.device(torch.get_device(x))``, which is -1 (an error) for CPU tensors."""
    monkeypatch.setattr(qlib_hist_mod.torch, "get_device", lambda t: "cpu")


# ==================================================================================================== references
def ref_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a_i, b_j) with qlib's +1e-6 guard in the denominator."""
    return (a @ b.T) / (a.norm(dim=1)[:, None] * b.norm(dim=1)[None, :] + COS_EPS)


def ref_softmax(z: torch.Tensor, dim: int) -> torch.Tensor:
    e = torch.exp(z - z.max(dim, keepdim=True).values)
    return e / e.sum(dim, keepdim=True)


def ref_encode(net: HISTModel, x: torch.Tensor):
    """RNN over ``[N, T, F]``; last state, or ``sum_t alpha_it h_it`` with ``alpha_i = softmax_t(v . tanh(W h_it + b))``."""
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


def _qlib_pair(seed: int = 0, hidden: int = 16, layers: int = 1, **options):
    torch.manual_seed(seed)
    ref = QlibHISTModel(d_feat=D_FEAT, hidden_size=hidden, num_layers=layers, base_model="GRU")
    ours = HISTModel(d_feat=D_FEAT, hidden_size=hidden, num_layers=layers, base_model="GRU", **options)
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("temporal_att.") for k in missing)
    return ref.eval(), ours.eval()


def _inputs(n: int = 60, n_concepts: int = 15, density: float = 0.2, t: int = 20, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D_FEAT * t, generator=g)
    concepts = (torch.rand(n, n_concepts, generator=g) < density).float()
    concepts[:, -1] = 0.0  # a concept with no member that day
    return x, concepts


def _close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ==================================================================================================== 1. network
def test_reference_reproduces_qlib(qlib_on_cpu):
    """Sanity of the dense reference itself: with every option off it is qlib's network."""
    ref, ours = _qlib_pair(seed=2)
    x, c = _inputs(seed=3)
    with torch.no_grad():
        _close(ref_forward(ours, x, c), ref(x, c))


@pytest.mark.parametrize("n", [60, 23])
def test_hidden_topk_1_is_qlib(qlib_on_cpu, n):
    ref, ours = _qlib_pair(seed=n, hidden_topk=1)
    x, c = _inputs(n=n, seed=n)
    with torch.no_grad():
        _close(ours(x, c), ref(x, c))


@pytest.mark.parametrize("k, n", [(2, 60), (3, 60), (3, 23), (7, 40), (10, 4)])
def test_hidden_topk_matches_dense_reference(k, n):
    torch.manual_seed(k + n)
    net = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1, hidden_topk=k).eval()
    one = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1, hidden_topk=1).eval()
    one.load_state_dict(net.state_dict())
    x, c = _inputs(n=n, seed=10 + k)
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
    x, c = _inputs(n=30, seed=4)
    net(x, c).pow(2).sum().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert net.fc_is.weight.grad.abs().sum() > 0


def test_stock_weight_none_equals_ones_exactly():
    torch.manual_seed(1)
    net = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1).eval()
    x, c = _inputs(seed=5)
    with torch.no_grad():
        assert torch.equal(net(x, c), net(x, c, torch.ones(len(x))))


@pytest.mark.parametrize("topk", [1, 3])
def test_stock_weight_matches_dense_reference(topk):
    torch.manual_seed(2)
    net = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1, hidden_topk=topk).eval()
    x, c = _inputs(seed=6)
    w = torch.rand(len(x), generator=torch.Generator().manual_seed(7)) * 3 + 0.05
    with torch.no_grad():
        got = net(x, c, w)
        _close(got, ref_forward(net, x, c, w=w, topk=topk))
        assert (got - net(x, c)).abs().max() > 1e-4, "non-uniform weights must matter"


def test_concept_refine_matches_dense_reference():
    torch.manual_seed(3)
    net = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1, concept_refine=True).eval()
    plain = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1).eval()
    plain.load_state_dict(net.state_dict())
    x, c = _inputs(seed=8)
    w = torch.rand(len(x), generator=torch.Generator().manual_seed(9)) + 0.5
    with torch.no_grad():
        got = net(x, c)
        _close(got, ref_forward(net, x, c, refine=True))
        _close(net(x, c, w), ref_forward(net, x, c, w=w, refine=True))
        assert (got - plain(x, c)).abs().max() > 1e-4, "the refinement must change the output"


def test_concept_refine_off_is_qlib(qlib_on_cpu):
    ref, ours = _qlib_pair(seed=4, concept_refine=False)
    x, c = _inputs(seed=11)
    with torch.no_grad():
        _close(ours(x, c), ref(x, c))


def test_concept_refine_day_without_concepts_is_finite():
    torch.manual_seed(0)
    net = HISTModel(d_feat=D_FEAT, hidden_size=8, num_layers=1, concept_refine=True)
    x = torch.randn(7, D_FEAT * 5)
    out = net(x, torch.zeros(7, 4))
    assert torch.isfinite(out).all()


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
    x, c = _inputs(n=50, seed=12, t=t)
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


@pytest.mark.parametrize("bad", [0, 1.5, -1])
def test_bad_hidden_topk(bad):
    with pytest.raises(ValueError, match="hidden_topk"):
        HISTModel(hidden_topk=bad)
    with pytest.raises(ValueError, match="hidden_topk"):
        HIST(hidden_topk=bad, GPU=-1)


# ==================================================================================================== HIST helpers
SMALL = dict(d_feat=6, hidden_size=16, num_layers=1, n_epochs=1, early_stop=5, lr=1e-3, metric="ic",
             base_model="GRU", seed=3, GPU=-1)
SHORT_SEGMENTS = {"train": ("2016-04-01", "2016-06-30"), "valid": ("2016-07-01", "2016-08-31"),
                  "test": ("2016-09-01", "2016-09-30")}


def small_hist(demo, **overrides) -> HIST:
    kwargs = dict(SMALL, stock2concept=str(demo.stock2concept), stock_index=str(demo.stock_index))
    kwargs.update(overrides)
    return HIST(**kwargs)


@pytest.fixture(scope="module")
def short_dataset(demo_handler):
    """The demo handler with shorter segments (65 / 44 / 22 days): cheaper epochs."""
    from qlib.data.dataset import DatasetH

    return DatasetH(demo_handler, segments=SHORT_SEGMENTS)


def _states_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ==================================================================================================== 2. explain
@pytest.fixture(scope="module")
def membership_file(demo, tmp_path_factory) -> Path:
    """The demo membership plus two concepts that constrain the explanation:

    ``ghost`` has only members outside the market (it never exists on a day), ``late`` gets 15 members from
    2017-02-01 (it exists only on the later test days). Sorted names: concept_0..7, ghost, late.
    """
    table = pd.read_csv(demo.membership)
    extra = [{"instrument": "SZ999998", "concept": "ghost", "start_date": "2016-01-04", "end_date": None},
             {"instrument": "SZ999999", "concept": "ghost", "start_date": "2016-01-04", "end_date": None}]
    extra += [{"instrument": inst, "concept": "late", "start_date": "2017-02-01", "end_date": None}
              for inst in demo.instruments[:15]]
    path = tmp_path_factory.mktemp("membership") / "membership.csv"
    pd.concat([table, pd.DataFrame(extra)], ignore_index=True).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def explained(demo, demo_dataset, membership_file):
    model = small_hist(demo, stock2concept=str(membership_file), stock_index=None, temporal_attention=True)
    model.fit(demo_dataset)
    return model, model.explain(demo_dataset, "test"), model.predict(demo_dataset, "test")


def _existing_concepts(membership: pd.DataFrame, day: pd.Timestamp, instruments) -> set:
    start = pd.to_datetime(membership["start_date"])
    end = pd.to_datetime(membership["end_date"])
    live = (start <= day) & (end.isna() | (end >= day)) & membership["instrument"].isin(set(instruments))
    return set(membership.loc[live, "concept"])


def test_explain_matches_predict(explained):
    model, table, pred = explained
    assert table.index.equals(pred.index)
    np.testing.assert_allclose(table["score"].to_numpy(), pred.to_numpy(), rtol=0, atol=1e-5)
    total = table[["concept", "hidden_concept", "individual", "bias"]].sum(axis=1)
    np.testing.assert_allclose(total.to_numpy(), pred.to_numpy(), rtol=0, atol=1e-5)
    assert table["bias"].nunique() == 1
    assert float(table["bias"].iloc[0]) == pytest.approx(float(model.HIST_model.fc_out.bias.detach()[0]), abs=1e-7)
    for part in ("concept", "hidden_concept", "individual"):
        assert np.isfinite(table[part]).all() and table[part].std() > 0, part


def test_explain_concepts_are_names_existing_that_day(explained, membership_file):
    _, table, _ = explained
    membership = pd.read_csv(membership_file)
    names = set(membership["concept"])
    cols = ["concept_1", "concept_2", "concept_3"]
    assert table["concept_1"].notna().all()
    used = set(table[cols].stack().dropna())
    assert used <= names and "ghost" not in used
    assert len(used) >= 3
    late_seen = False
    for day, rows in table.groupby(level=0):
        existing = _existing_concepts(membership, day, rows.index.get_level_values(1))
        chosen = set(rows[cols].stack().dropna())
        assert chosen <= existing, (day, chosen - existing)
        late_seen |= "late" in chosen
    before = table.loc[table.index.get_level_values(0) < "2017-02-01", cols]
    assert len(before) and "late" not in set(before.stack().dropna())
    assert late_seen, "the 'late' concept should show up once it exists (else the check above proves little)"


def _assert_weights(table: pd.DataFrame, key: str) -> None:
    w = table[[f"{key}_{k}_weight" for k in (1, 2, 3)]].to_numpy(dtype=np.float64)
    assert np.isfinite(w[:, 0]).all()
    finite = np.isfinite(w)
    assert ((w[finite] >= 0) & (w[finite] <= 1)).all(), key
    both = finite[:, 1:] & finite[:, :-1]
    assert (w[:, :-1][both] >= w[:, 1:][both]).all(), f"{key} weights must be non-increasing"
    assert (np.nansum(w, axis=1) <= 1 + 1e-5).all(), f"{key}: top weights of a softmax sum to at most 1"


def test_explain_peers_and_weights(explained):
    _, table, _ = explained
    peer_cols = ["peer_1", "peer_2", "peer_3"]
    assert table["peer_1"].notna().all()
    for day, rows in table.groupby(level=0):
        present = set(rows.index.get_level_values(1))
        assert set(rows[peer_cols].stack().dropna()) <= present, day
    for key in ("concept", "peer", "step"):
        _assert_weights(table, key)


def test_explain_time_steps(explained, demo, demo_dataset):
    _, table, _ = explained
    steps = table[["step_1", "step_2", "step_3"]]
    assert steps.notna().all().all()
    values = steps.to_numpy().astype(np.int64)
    assert ((values >= 0) & (values <= 59)).all()
    assert (values[:, 0] != values[:, 1]).all() and (values[:, 1] != values[:, 2]).all()
    # without temporal attention: no step columns
    plain = small_hist(demo, n_epochs=0)
    plain.fit(demo_dataset)
    other = plain.explain(demo_dataset, "test")
    assert not [c for c in other.columns if c.startswith("step_")]
    # the legacy source has no names: concepts are called by column
    assert set(other[["concept_1", "concept_2", "concept_3"]].stack().dropna()) <= set(demo.concepts)


def test_explain_before_fit_is_an_error(demo, demo_dataset):
    with pytest.raises(ValueError, match="not fitted"):
        small_hist(demo).explain(demo_dataset, "test")


def test_write_explanation_files(explained, tmp_path):
    from qlib_hist.explain import write_explanation

    _, table, _ = explained
    out = tmp_path / "out"
    paths = write_explanation(table, out)
    assert sorted(p.name for p in out.iterdir()) == ["explain_day.png", "explain_shares.png", "explanations.pkl"]
    assert sorted(Path(p).name for p in paths) == sorted(p.name for p in out.iterdir())
    for name in ("explain_day.png", "explain_shares.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert len(data) > 5000, name
    pd.testing.assert_frame_equal(pd.read_pickle(out / "explanations.pkl"), table)


@pytest.fixture(scope="module")
def explain_record(explained, demo, demo_dataset, tmp_path_factory):
    """``HISTExplainRecord.generate()`` inside ``R.start`` with an MLflow sqlite store in a temp folder.

    The cwd moves there while qlib's recorder runs (mlflow may write ./mlruns); cwd and qlib's default
    configuration are restored before the tests use the (finished) recorder.
    """
    import qlib
    from qlib.workflow import R

    from qlib_hist.explain import HISTExplainRecord

    root = tmp_path_factory.mktemp("mlflow")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        qlib.init(provider_uri=str(demo.provider_uri), region="cn", kernels=1,
                  exp_manager={"class": "MLflowExpManager", "module_path": "qlib.workflow.expm",
                               "kwargs": {"uri": f"sqlite:///{root / 'mlruns.db'}", "default_exp_name": "Experiment"}})
        with R.start(experiment_name="explain_test"):
            recorder = R.get_recorder()
            record = HISTExplainRecord(recorder, model=explained[0], dataset=demo_dataset, segment="test")
            record.generate()
        yield recorder, record
    finally:
        os.chdir(cwd)
        qlib.init(provider_uri=str(demo.provider_uri), region="cn", kernels=1)  # as conftest.init_qlib


def test_explain_record_saves_artifacts(explained, explain_record):
    recorder, record = explain_record
    pd.testing.assert_frame_equal(recorder.load_object("explain/explanations.pkl"), explained[1])
    listed = set(recorder.list_artifacts("explain"))
    assert {"explain/explanations.pkl", "explain/explain_day.png", "explain/explain_shares.png"} <= listed


def test_explain_record_follows_qlib_record_conventions(explained, explain_record):
    recorder, record = explain_record
    record.check(include_self=True, parents=False)  # qlib's own "everything in list() was saved"
    assert {record.get_path(name) for name in record.list()} <= set(recorder.list_artifacts("explain"))
    assert len(record.list()) == 3
    pd.testing.assert_frame_equal(record.load(record.list()[0]), explained[1])


# ==================================================================================================== 3. resume
RESUME = dict(hidden_size=16, num_layers=2, dropout=0.1, n_epochs=4, early_stop=100, lr=2e-3, metric="ic", seed=11)


def _interrupt_after(monkeypatch, stop_epoch: int):
    original = Trainer.after_epoch

    def interrupting(self, epoch):
        original(self, epoch)
        if epoch == stop_epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "after_epoch", interrupting)
    return original


def _count_epochs(monkeypatch) -> list:
    calls = []
    original = Trainer.train_epoch

    def counting(self, batches):
        calls.append(1)
        return original(self, batches)

    monkeypatch.setattr(Trainer, "train_epoch", counting)
    return calls


@pytest.mark.parametrize("smooth_steps", [1, 2])
def test_resume_is_bit_for_bit(demo, short_dataset, tmp_path, monkeypatch, smooth_steps):
    settings = dict(RESUME, smooth_steps=smooth_steps)
    ref_evals = {}
    reference = small_hist(demo, **settings)
    reference.fit(short_dataset, evals_result=ref_evals)
    ref_pred = reference.predict(short_dataset, "test")

    ckpt = tmp_path / "ckpt"
    original = _interrupt_after(monkeypatch, stop_epoch=1)
    with pytest.raises(KeyboardInterrupt):
        small_hist(demo, **settings, checkpoint_dir=str(ckpt)).fit(short_dataset)
    monkeypatch.setattr(Trainer, "after_epoch", original)
    assert sorted(os.listdir(ckpt)) == [CHECKPOINT_NAME]
    assert isinstance(torch.load(ckpt / CHECKPOINT_NAME, map_location="cpu", weights_only=True), dict)

    epochs = _count_epochs(monkeypatch)
    evals = {}
    resumed = small_hist(demo, **settings, checkpoint_dir=str(ckpt))
    resumed.fit(short_dataset, evals_result=evals)
    assert len(epochs) == 2, "the resumed fit must run the two missing epochs only"
    assert len(evals["train"]) == len(evals["valid"]) == RESUME["n_epochs"]
    assert evals == ref_evals
    assert resumed.best_epoch == reference.best_epoch
    _states_equal(resumed.HIST_model, reference.HIST_model)
    pred = resumed.predict(short_dataset, "test")
    assert pred.index.equals(ref_pred.index)
    np.testing.assert_array_equal(pred.to_numpy(), ref_pred.to_numpy())
    assert sorted(os.listdir(ckpt)) == [CHECKPOINT_NAME]

    # a finished checkpoint: a new fit returns at once with the same weights
    epochs.clear()
    again = small_hist(demo, **settings, checkpoint_dir=str(ckpt))
    again_evals = {}
    again.fit(short_dataset, evals_result=again_evals)
    assert epochs == []
    _states_equal(again.HIST_model, reference.HIST_model)
    assert again_evals == ref_evals and again.fitted
    np.testing.assert_array_equal(again.predict(short_dataset, "test").to_numpy(), ref_pred.to_numpy())


def test_resume_needs_the_rng_state(demo, short_dataset, tmp_path, monkeypatch):
    """Dropout draws from torch's RNG: a resume that did not restore it would diverge (so the test above can fail)."""
    settings = dict(RESUME, n_epochs=2)
    reference = small_hist(demo, **settings)
    reference.fit(short_dataset)
    ckpt = tmp_path / "ckpt"
    original = _interrupt_after(monkeypatch, stop_epoch=0)
    with pytest.raises(KeyboardInterrupt):
        small_hist(demo, **settings, checkpoint_dir=str(ckpt)).fit(short_dataset)
    monkeypatch.setattr(Trainer, "after_epoch", original)
    monkeypatch.setattr(Trainer, "load_checkpoint", _load_without_rng(Trainer.load_checkpoint))
    broken = small_hist(demo, **settings, checkpoint_dir=str(ckpt))
    broken.fit(short_dataset)
    ref_state = reference.HIST_model.state_dict()
    assert any(not torch.equal(v, ref_state[k]) for k, v in broken.HIST_model.state_dict().items())


def _load_without_rng(load):
    def load_then_scramble(self, path):
        load(self, path)
        torch.manual_seed(12345)  # as if the torch RNG state had not been restored

    return load_then_scramble


def test_checkpoint_mismatch_is_refused(demo, demo_handler, short_dataset, tmp_path):
    from qlib.data.dataset import DatasetH

    ckpt = tmp_path / "ckpt"
    settings = dict(RESUME, n_epochs=1)
    small_hist(demo, **settings, checkpoint_dir=str(ckpt)).fit(short_dataset)
    path = ckpt / CHECKPOINT_NAME
    content = path.read_bytes()
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(state, dict)

    with pytest.raises(CheckpointError, match="other settings or another dataset"):
        small_hist(demo, **dict(settings, lr=5e-3), checkpoint_dir=str(ckpt)).fit(short_dataset)
    other_segments = dict(SHORT_SEGMENTS, train=("2016-04-15", "2016-06-30"))
    with pytest.raises(CheckpointError, match="other settings or another dataset"):
        small_hist(demo, **settings, checkpoint_dir=str(ckpt)).fit(DatasetH(demo_handler, segments=other_segments))
    assert path.read_bytes() == content, "a refused checkpoint must be left as it was"
    assert sorted(os.listdir(ckpt)) == [CHECKPOINT_NAME]
    assert issubclass(CheckpointError, ValueError)

    # an unreadable file is a CheckpointError too
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        small_hist(demo, **settings, checkpoint_dir=str(ckpt)).fit(short_dataset)


# ==================================================================================================== 4. smooth_steps
TINY_T = 10
TINY_INSTRUMENTS = [f"SH6{i:05d}" for i in range(20)]


def _tiny_frame(n_days: int, seed: int, start: str) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range(start, periods=n_days)
    index = pd.MultiIndex.from_product([dates, TINY_INSTRUMENTS], names=["datetime", "instrument"])
    x = rng.normal(size=(len(index), D_FEAT * TINY_T)).astype(np.float32)
    y = x[:, TINY_T - 1] - 0.5 * x[:, 2 * TINY_T - 1] + 0.1 * rng.normal(size=len(index))
    columns = pd.MultiIndex.from_tuples([("feature", f"f{i}") for i in range(D_FEAT * TINY_T)] + [("label", "LABEL0")])
    return pd.DataFrame(np.column_stack([x, y]), index=index, columns=columns)


@pytest.fixture(scope="module")
def tiny_batches(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_concepts")
    matrix = (np.random.default_rng(0).random((20, 5)) < 0.3).astype(np.float32)
    np.save(d / "stock2concept.npy", matrix)
    (d / "stock_index.json").write_text(json.dumps({inst: i for i, inst in enumerate(TINY_INSTRUMENTS)}))
    source = LegacyConcepts(d / "stock2concept.npy", d / "stock_index.json")
    train = build_daily_batches(_tiny_frame(12, 1, "2020-01-01"), source, "train", D_FEAT, with_label=True)
    valid = build_daily_batches(_tiny_frame(5, 2, "2021-01-01"), source, "valid", D_FEAT, with_label=True)
    return train, valid


def _tiny_trainer(smooth_steps: int, n_epochs: int = 2) -> Trainer:
    torch.manual_seed(0)
    net = HISTModel(d_feat=D_FEAT, hidden_size=16, num_layers=1)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    cfg = TrainConfig(n_epochs=n_epochs, early_stop=50, metric="loss", seed=0, smooth_steps=smooth_steps)
    return Trainer(net, opt, cfg, CPU, logging.getLogger("test_paper_options"))


def _record_raw_states(monkeypatch) -> list:
    raw = []
    original = Trainer.after_epoch

    def recording(self, epoch):
        raw.append({k: v.detach().clone() for k, v in self.network.state_dict().items()})
        original(self, epoch)

    monkeypatch.setattr(Trainer, "after_epoch", recording)
    return raw


def test_smooth_steps_keeps_the_average_of_the_last_epochs(tiny_batches, monkeypatch):
    train, valid = tiny_batches
    raw = _record_raw_states(monkeypatch)
    smooth = _tiny_trainer(smooth_steps=2)
    evals = {}
    result = smooth.fit(train, valid, evals)
    assert len(raw) == 2 and len(evals["valid"]) == 2
    assert result.best_epoch == 1, "setup: the second (averaged) epoch should be the best"
    expected = {k: (raw[0][k] + raw[1][k]) / 2 for k in raw[0]}
    for k, v in smooth.network.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-7, msg=k)
    assert any(not torch.equal(raw[1][k], expected[k]) for k in expected)
    # the valid score of epoch 1 is the averaged weights' score; epoch 0's is the raw weights' own
    assert smooth.evaluate(valid)["loss"] == pytest.approx(-evals["valid"][1], rel=1e-6)

    # training continued from the raw weights: the raw trajectory is that of smooth_steps=1
    raw_smooth = list(raw)
    raw.clear()
    plain = _tiny_trainer(smooth_steps=1)
    plain_evals = {}
    plain.fit(train, valid, plain_evals)
    for epoch in range(2):
        for k in raw[epoch]:
            assert torch.equal(raw[epoch][k], raw_smooth[epoch][k]), (epoch, k)
    assert plain_evals["valid"][0] == pytest.approx(evals["valid"][0], rel=1e-6)
    assert plain_evals["valid"][1] != pytest.approx(evals["valid"][1], rel=1e-6)


def test_smooth_steps_window_slides(tiny_batches, monkeypatch):
    """With 2 steps over 3 epochs, epoch 2 is scored with the mean of epochs 1 and 2 (not 0..2)."""
    train, valid = tiny_batches
    raw = _record_raw_states(monkeypatch)
    scored = []
    original_evaluate = Trainer.evaluate

    def evaluate(self, batches, preds=None):
        if batches is valid:
            scored.append({k: v.detach().clone() for k, v in self.network.state_dict().items()})
        return original_evaluate(self, batches, preds)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    _tiny_trainer(smooth_steps=2, n_epochs=3).fit(train, valid)
    assert len(scored) == 3
    for k in raw[0]:
        torch.testing.assert_close(scored[0][k], raw[0][k], rtol=0, atol=0)
        torch.testing.assert_close(scored[2][k], (raw[1][k] + raw[2][k]) / 2, rtol=1e-6, atol=1e-7)


# ==================================================================================================== 5. precision@k
def test_precision_at_k_metric(demo, short_dataset):
    model = small_hist(demo, metric="precision@10")
    evals = {}
    model.fit(short_dataset, evals_result=evals)
    assert len(evals["valid"]) == 1
    assert all(0.0 <= v <= 1.0 for v in evals["valid"] + evals["train"])
    assert "valid_precision@10" in model.history[0]
    assert model.history[0]["valid_precision@10"] == evals["valid"][0]
    # recompute it: share of each day's 10 highest predictions with a positive label, averaged over days
    pred = model.predict(short_dataset, "valid")
    # the labels HIST trains and scores on: the learn data (CSRankNorm'ed, so "positive" = above the median)
    label = short_dataset.prepare("valid", col_set="label", data_key=DataHandlerLP.DK_L).iloc[:, 0]
    frame = pd.DataFrame({"p": pred, "y": label}).dropna()
    daily = frame.groupby(level=0).apply(lambda d: (d.nlargest(10, "p")["y"] > 0).mean())
    assert evals["valid"][0] == pytest.approx(daily.mean(), abs=1e-9)


# ==================================================================================================== 6. concept_weight
@pytest.fixture(scope="module")
def unweighted(demo, short_dataset):
    model = small_hist(demo)
    model.fit(short_dataset)
    return model.predict(short_dataset, "test")


def _segment_rows(dataset) -> pd.MultiIndex:
    frames = [dataset.prepare(s, col_set="feature").index for s in ("train", "valid", "test")]
    return frames[0].append(frames[1:]).unique()


def _write_table(path: Path, rows: pd.MultiIndex, values) -> Path:
    pd.DataFrame({"instrument": rows.get_level_values(1),
                  "datetime": rows.get_level_values(0).strftime("%Y-%m-%d"),
                  "value": values}).to_csv(path, index=False)
    return path


def test_concept_weight_expression(demo, short_dataset, unweighted):
    model = small_hist(demo, concept_weight="$close*$volume")
    model.fit(short_dataset)
    pred = model.predict(short_dataset, "test")
    assert pred.index.equals(unweighted.index)
    assert np.isfinite(pred.to_numpy()).all()
    assert not np.array_equal(pred.to_numpy(), unweighted.to_numpy()), "the weights must be used"


def test_concept_weight_unknown_field_names_it(demo, short_dataset):
    with pytest.raises(DataError, match=r"\$nonexistent_field"):
        small_hist(demo, concept_weight="$nonexistent_field").fit(short_dataset)


def test_concept_weight_missing_table_names_it(demo, short_dataset, tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="nope.csv"):
        small_hist(demo, concept_weight=str(path)).fit(short_dataset)


def test_concept_weight_tables(demo, short_dataset, unweighted, tmp_path):
    rows = _segment_rows(short_dataset)
    uniform = _write_table(tmp_path / "uniform.csv", rows, np.full(len(rows), 7.5))
    model = small_hist(demo, concept_weight=str(uniform))
    model.fit(short_dataset)
    np.testing.assert_array_equal(model.predict(short_dataset, "test").to_numpy(), unweighted.to_numpy())

    values = np.random.default_rng(0).lognormal(size=len(rows))
    varied = _write_table(tmp_path / "varied.csv", rows, values)
    model = small_hist(demo, concept_weight=str(varied))
    model.fit(short_dataset)
    pred = model.predict(short_dataset, "test")
    assert np.isfinite(pred.to_numpy()).all()
    assert not np.array_equal(pred.to_numpy(), unweighted.to_numpy())


def test_stock_weights_fill_and_normalise(tmp_path):
    days = pd.to_datetime(["2020-01-02", "2020-01-03", "2020-01-06"])
    stocks = ["A", "B", "C", "D"]
    index = pd.MultiIndex.from_product([days, stocks], names=["datetime", "instrument"])
    table = pd.DataFrame({
        "instrument": ["A", "B", "C", "D", "A", "B", "C", "D"],
        "datetime": ["2020-01-02"] * 4 + ["2020-01-03"] * 4,
        # day 1: D has no valid value (0); day 2: B missing (NaN), D negative; day 3: not in the table
        "value": [1.0, 2.0, 6.0, 0.0, 4.0, np.nan, 10.0, -3.0],
    })
    path = tmp_path / "w.csv"
    table.to_csv(path, index=False)
    got = stock_weights(str(path), index, "train")
    assert got.dtype == np.float32 and got.index.equals(index)
    day1 = np.array([1.0, 2.0, 6.0, 2.0])  # D <- median(1, 2, 6) = 2
    day2 = np.array([4.0, 7.0, 10.0, 7.0])  # B, D <- median(4, 10) = 7
    expected = np.concatenate([day1 / day1.mean(), day2 / day2.mean(), np.ones(4)])
    np.testing.assert_allclose(got.to_numpy(), expected, rtol=1e-6)
    # rows in any order: each row keeps its own weight (medians and means are per day of the requested rows)
    perm = np.random.default_rng(0).permutation(len(index))
    np.testing.assert_allclose(stock_weights(str(path), index[perm], "train").to_numpy(), expected[perm], rtol=1e-6)
    # only the requested rows count: day 1 asked for A and D alone -> D <- median(1) = 1 -> both 1
    np.testing.assert_allclose(stock_weights(str(path), index[[0, 3]], "train").to_numpy(), [1.0, 1.0], rtol=1e-6)


def test_stock_weights_nothing_valid_is_an_error(tmp_path):
    index = pd.MultiIndex.from_product([pd.to_datetime(["2020-01-02"]), ["A", "B"]], names=["datetime", "instrument"])
    path = tmp_path / "w.csv"
    pd.DataFrame({"instrument": ["A", "B"], "datetime": ["2020-01-02"] * 2, "value": [0.0, np.nan]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="w.csv"):
        stock_weights(str(path), index, "valid")


# ==================================================================================================== 7. everything on
def test_all_paper_options_together(demo, short_dataset, membership_file, tmp_path):
    model = small_hist(demo, stock2concept=str(membership_file), stock_index=None, n_epochs=2, hidden_topk=3,
                       concept_refine=True, temporal_attention=True, smooth_steps=2, concept_weight="$close*$volume",
                       metric="precision@10", checkpoint_dir=str(tmp_path / "ckpt"))
    evals = {}
    model.fit(short_dataset, evals_result=evals)
    assert len(evals["valid"]) == 2 and all(0.0 <= v <= 1.0 for v in evals["valid"])
    pred = model.predict(short_dataset, "test")
    assert len(pred) and np.isfinite(pred.to_numpy()).all() and pred.std() > 0
    table = model.explain(short_dataset, "test")
    np.testing.assert_allclose(table["score"].to_numpy(), pred.to_numpy(), rtol=0, atol=1e-5)
    assert {"step_1", "peer_3", "concept_3"} <= set(table.columns)
    assert sorted(os.listdir(tmp_path / "ckpt")) == [CHECKPOINT_NAME]
    # the pickled model predicts the same
    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(clone.predict(short_dataset, "test").to_numpy(), pred.to_numpy())
