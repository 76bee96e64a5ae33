"""Explanations (``qlib_hist.explain``, ``qlib_hist.explain_report``, ``HISTExplainRecord``): each prediction split
into its parts, what it attended to (concepts by name, peers, time steps), the report files and the qrun record."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from qlib_hist.explain import PARTS, explain_batches
from qlib_hist.explain_report import plot_day, write_explanation
from qlib_hist.network import HISTModel
from qlib_hist.training import predict_days

from conftest import D_FEAT, small_hist

CPU = torch.device("cpu")


def test_explain_batches_sum_to_the_predictions(synthetic_batches):
    """The maths alone (no qlib): parts + bias = the network's predictions, rows in the batches' order."""
    _, valid = synthetic_batches
    torch.manual_seed(0)
    net = HISTModel(d_feat=D_FEAT, hidden_size=8, num_layers=1, hidden_topk=2, temporal_attention=True)
    table = explain_batches(net, valid, CPU, top=2)
    pred = predict_days(net, valid, CPU)
    assert table.index.equals(valid.index)
    np.testing.assert_allclose(table["score"].to_numpy(), pred, rtol=0, atol=1e-5)
    np.testing.assert_allclose(table[list(PARTS) + ["bias"]].sum(axis=1).to_numpy(), pred, rtol=0, atol=1e-5)
    assert {"concept_2", "peer_2_weight", "step_2"} <= set(table.columns) and "concept_3" not in table.columns
    # the legacy source has no names: concepts are called by column
    assert set(table["concept_1"].dropna()) <= {f"concept_{j}" for j in range(valid.concept_matrix.shape[1])}


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

    from qlib_hist import HISTExplainRecord  # where YAMLs name it (module_path: qlib_hist)

    root = tmp_path_factory.mktemp("mlflow")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        qlib.init(
            provider_uri=str(demo.provider_uri),
            region="cn",
            kernels=1,
            exp_manager={
                "class": "MLflowExpManager",
                "module_path": "qlib.workflow.expm",
                "kwargs": {"uri": f"sqlite:///{root / 'mlruns.db'}", "default_exp_name": "Experiment"},
            },
        )
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


def test_explain_record_is_the_edge_class():
    import qlib_hist
    import qlib_hist.explain as explain
    from qlib_hist.qlib_edge.record import HISTExplainRecord

    assert qlib_hist.HISTExplainRecord is HISTExplainRecord  # loaded lazily, where YAMLs name it
    assert explain.HISTExplainRecord is HISTExplainRecord  # the alias that 0.1.0's YAMLs name
    with pytest.raises(AttributeError, match="nothing_here"):
        explain.nothing_here  # noqa: B018


def _records(node):
    """Every ``HISTExplainRecord`` entry (a dict) anywhere in a YAML's content."""
    if isinstance(node, dict):
        if node.get("class") == "HISTExplainRecord":
            yield node
        for value in node.values():
            yield from _records(value)
    elif isinstance(node, list):
        for value in node:
            yield from _records(value)


def test_the_yamls_name_the_record_where_the_package_hands_it_out():
    """The packaged demo YAML and the repository's YAMLs say ``module_path: qlib_hist``, not the alias
    ``qlib_hist.explain`` (kept for 0.1.0's YAMLs only), and qlib's own lookup finds the edge class there."""
    import yaml
    from qlib.utils import get_callable_kwargs

    from qlib_hist.qlib_edge.record import HISTExplainRecord

    root = Path(__file__).resolve().parents[1]
    files = sorted(root.glob("*.yaml")) + sorted((root / "qlib_hist" / "configs").glob("*.yaml"))
    found = {path.name: list(_records(yaml.safe_load(path.read_text()))) for path in files}
    found = {name: records for name, records in found.items() if records}
    assert {"workflow_config_hist_demo.yaml", "workflow_config_hist_paper.yaml"} <= set(found)
    for name, records in found.items():
        for record in records:
            assert record.get("module_path") == "qlib_hist", name
            assert get_callable_kwargs(record)[0] is HISTExplainRecord, name


def test_plot_day_of_a_given_day(explained, tmp_path):
    _, table, _ = explained
    day = table.index.get_level_values(0).unique()[3]
    path = plot_day(table, day, tmp_path / "day.png", n=5)
    assert path == tmp_path / "day.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
