"""HIST, the qlib face (``qlib_hist.qlib_edge.model``), through qlib's DatasetH on the synthetic provider: fit,
predict, pickling, determinism, clear errors, and every paper option at once."""

from __future__ import annotations

import functools
import logging
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from qlib_hist import HIST
from qlib_hist.batches import DataError
from qlib_hist.concepts import ConceptError
from qlib_hist.network import RNNRegressor
from qlib_hist.qlib_edge.model import CHECKPOINT_NAME

from conftest import SMALL, small_hist

#: this file's HIST: conftest's SMALL preset (two epochs, qlib's default device)
model_hist = functools.partial(small_hist, preset=SMALL)


@pytest.fixture(scope="module")
def fitted(demo, demo_dataset):
    model = model_hist(demo)
    evals = {}
    model.fit(demo_dataset, evals_result=evals)
    return model, evals


def test_fit_fills_evals_and_predict_matches_dataset_index(fitted, demo_dataset):
    model, evals = fitted
    assert model.fitted
    assert len(evals["train"]) == len(evals["valid"]) == SMALL["n_epochs"]
    assert all(np.isfinite(evals["valid"]))
    pred = model.predict(demo_dataset)
    expected = demo_dataset.prepare("test", col_set="feature").index
    assert isinstance(pred, pd.Series)
    assert pred.index.equals(expected)
    assert np.isfinite(pred.to_numpy()).all()
    assert pred.std() > 0
    # a slice segment works too and gives the same numbers for its days
    days = expected.get_level_values(0).unique()[:5]
    part = model.predict(demo_dataset, segment=slice(days[0], days[-1]))
    np.testing.assert_allclose(part.to_numpy(), pred.loc[part.index].to_numpy(), rtol=1e-6)


def test_learns_planted_concept_signal(demo, demo_dataset):
    """On the synthetic market HIST must beat chance on the test segment."""
    model = model_hist(demo, n_epochs=3, hidden_size=32)
    model.fit(demo_dataset)
    pred = model.predict(demo_dataset)
    label = demo_dataset.prepare("test", col_set="label").iloc[:, 0]
    frame = pd.DataFrame({"pred": pred, "label": label}).dropna()
    daily_ic = frame.groupby(level=0).apply(lambda d: d["pred"].corr(d["label"]))
    assert daily_ic.mean() > 0.05


def test_same_seed_same_predictions_on_cpu(demo, demo_dataset):
    """Bit for bit on one CPU (``GPU=-1``: a CUDA machine's ``index_add`` is not deterministic)."""
    first, again, other = model_hist(demo, GPU=-1), model_hist(demo, GPU=-1), model_hist(demo, GPU=-1, seed=4)
    for model in (first, again, other):
        model.fit(demo_dataset)
    np.testing.assert_array_equal(again.predict(demo_dataset).to_numpy(), first.predict(demo_dataset).to_numpy())
    assert not np.array_equal(other.predict(demo_dataset).to_numpy(), first.predict(demo_dataset).to_numpy())


def test_pickle_round_trip_predicts_the_same(fitted, demo_dataset):
    model = fitted[0]
    clone = pickle.loads(pickle.dumps(model))  # onto the device its settings name here, as the model it was
    assert clone.fitted and clone.device == model.device and clone.use_gpu == model.use_gpu
    assert all(p.device == model.device for p in clone.HIST_model.parameters())
    assert clone.train_optimizer is not None
    pd.testing.assert_series_equal(clone.predict(demo_dataset), model.predict(demo_dataset))


def test_save_path_holds_best_weights(demo, demo_dataset, tmp_path):
    model = model_hist(demo, n_epochs=1)
    model.fit(demo_dataset, save_path=str(tmp_path / "sub" / "hist.pt"))
    state = torch.load(tmp_path / "sub" / "hist.pt", map_location="cpu", weights_only=True)
    for name, value in model.HIST_model.state_dict().items():
        assert torch.equal(state[name], value.cpu())  # the file holds CPU tensors, whatever the device
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["hist.pt"]  # no temp file left


def test_point_in_time_membership_table_as_stock2concept(demo, demo_dataset):
    model = model_hist(demo, stock2concept=str(demo.membership), stock_index=None, n_epochs=1)
    model.fit(demo_dataset)
    assert np.isfinite(model.predict(demo_dataset).to_numpy()).all()


def test_unknown_stocks_get_no_concept_and_are_logged(demo, demo_dataset, caplog):
    model = model_hist(demo, n_epochs=1)
    with caplog.at_level(logging.INFO):
        batches = model._batches(demo_dataset, "train", with_label=True)
    unknown = set(demo.unindexed)
    assert unknown, "the demo data must contain stocks missing from stock_index"
    rows = np.isin(batches.index.get_level_values(1), list(unknown))
    gathered = batches.concept_matrix[batches.concept_rows[torch.from_numpy(rows)]]
    assert rows.any() and float(gathered.abs().sum()) == 0.0
    assert any("have no predefined concept" in r.getMessage() for r in caplog.records)


def test_metric_loss_and_empty_metric(demo, demo_dataset):
    for metric in ("", "loss", "rank_ic"):
        model = model_hist(demo, n_epochs=1, metric=metric)
        evals = {}
        model.fit(demo_dataset, evals_result=evals)
        assert np.isfinite(evals["valid"][0])
        if metric != "rank_ic":
            assert evals["valid"][0] < 0  # -loss


def test_pretrain_saves_a_qlib_loadable_base_model(demo, demo_dataset, tmp_path):
    from qlib.contrib.model.pytorch_gru import GRUModel

    path = tmp_path / "base_gru.pkl"
    model = model_hist(demo, n_epochs=1, pretrain_epochs=1, pretrain_save_path=str(path))
    model.fit(demo_dataset)
    state = torch.load(path, map_location="cpu", weights_only=True)
    GRUModel(d_feat=6, hidden_size=16, num_layers=1).load_state_dict(state)  # qlib's own class, strict
    # and it starts a new HIST through model_path: HIST's rnn.* equal the file before training
    fresh = model_hist(demo, n_epochs=0, model_path=str(path))
    fresh.fit(demo_dataset)
    for name, value in state.items():
        assert torch.equal(fresh.HIST_model.state_dict()[name].cpu(), value)


def test_model_path_shape_mismatch_names_parameter(demo, demo_dataset, tmp_path):
    path = tmp_path / "lstm.pkl"
    torch.save(RNNRegressor(6, 16, 1, base_model="LSTM").state_dict(), path)
    model = model_hist(demo, model_path=str(path))  # a GRU HIST
    with pytest.raises(ValueError, match=r"rnn\.weight_ih_l0.*\(64, 6\).*\(48, 6\)"):
        model.fit(demo_dataset)


def test_constructor_errors():
    with pytest.raises(ValueError, match="metric must be one of"):
        HIST(metric="sharpe")
    with pytest.raises(ValueError, match="base_model"):
        HIST(base_model="Transformer")
    with pytest.raises(ValueError, match="optimizer"):
        HIST(optimizer="lbfgs")
    with pytest.raises(ValueError, match="loss"):
        HIST(loss="mae")
    with pytest.raises(ValueError, match="early_stop"):
        HIST(early_stop=0)


def test_gpu_index_falls_back_to_cpu_with_a_log_line(caplog):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with caplog.at_level(logging.INFO):
        model = HIST(GPU=0)
    assert model.device == torch.device("cpu") and not model.use_gpu
    assert any("CUDA is not available" in r.getMessage() for r in caplog.records)


def test_data_errors(demo, demo_dataset):
    # since 0406c96 Alpha360's named columns are read: the error says the right d_feat (was "not a multiple of")
    with pytest.raises(DataError, match=r"segment train: d_feat=7, but the feature columns hold 6 fields .* d_feat=6"):
        model_hist(demo, d_feat=7).fit(demo_dataset)
    with pytest.raises(ValueError, match="not fitted"):
        model_hist(demo).predict(demo_dataset)
    with pytest.raises(ConceptError, match="stock2concept is not set"):
        HIST(**SMALL).fit(demo_dataset)


def test_empty_segment_is_a_clear_error(demo, demo_handler):
    from qlib.data.dataset import DatasetH

    segments = {"train": ("2016-04-01", "2016-12-30"), "valid": ("2030-01-01", "2030-12-31")}
    dataset = DatasetH(demo_handler, segments=segments)
    with pytest.raises(DataError, match="segment valid is empty"):
        model_hist(demo).fit(dataset)


def test_nan_features_are_a_clear_error(demo, demo_raw_dataset):
    with pytest.raises(DataError, match=r"segment train: \d+ NaN/inf feature values in \d+ rows; first at"):
        model_hist(demo).fit(demo_raw_dataset)


CPU_PREDICT = """
import pickle, sys
import torch
from conftest import init_qlib
assert not torch.cuda.is_available(), "CUDA_VISIBLE_DEVICES='' should hide the GPU"
model, dataset, provider = pickle.load(open(sys.argv[1], "rb"))
init_qlib(provider)
assert model.device.type == "cpu"
model.predict(dataset).to_pickle(sys.argv[2])
"""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_fit_predicts_in_a_process_without_cuda(demo, demo_dataset, tmp_path):  # pragma: no cover - GPU only
    """A model fitted on CUDA, pickled, loaded and predicted where no CUDA exists: the predictions of the GPU."""
    import subprocess
    import sys

    model = model_hist(demo, GPU=0, n_epochs=1)
    model.fit(demo_dataset)
    assert model.device.type == "cuda"
    on_gpu = model.predict(demo_dataset)
    with open(tmp_path / "model.pkl", "wb") as file:
        pickle.dump((model, demo_dataset, str(demo.provider_uri)), file)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join(["tests", "."]))
    subprocess.run(
        [sys.executable, "-c", CPU_PREDICT, str(tmp_path / "model.pkl"), str(tmp_path / "pred.pkl")],
        check=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        timeout=600,
    )
    on_cpu = pd.read_pickle(tmp_path / "pred.pkl")
    pd.testing.assert_index_equal(on_cpu.index, on_gpu.index)
    np.testing.assert_allclose(on_cpu.to_numpy(), on_gpu.to_numpy(), atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_on_cuda_differs_from_fp32_yet_stays_close(demo, short_dataset):  # pragma: no cover - GPU only
    """bf16 autocast must do something (predictions not fp32's) and keep the ranking (correlation above 0.99)."""
    fp32 = model_hist(demo, GPU=0, n_epochs=1)
    fp32.fit(short_dataset)
    bf16 = model_hist(demo, GPU=0, n_epochs=1, precision="bf16")
    bf16.fit(short_dataset)
    a, b = fp32.predict(short_dataset).to_numpy(), bf16.predict(short_dataset).to_numpy()
    assert np.mean(a == b) < 0.5, f"{np.mean(a == b):.0%} of bf16 predictions equal fp32's: autocast did nothing"
    assert np.corrcoef(a, b)[0, 1] > 0.99
    fp32.precision = "bf16"  # the same weights predicted in bf16
    c = fp32.predict(short_dataset).to_numpy()
    assert np.mean(a == c) < 0.5 and np.corrcoef(a, c)[0, 1] > 0.999


def test_predict_with_two_threads_is_the_same(fitted, demo_dataset):
    """On a CPU, prediction runs days in parallel when torch has several threads: same numbers as one thread."""
    model = fitted[0]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = model.predict(demo_dataset)
        torch.set_num_threads(2)
        two = model.predict(demo_dataset)
    finally:
        torch.set_num_threads(before)
    pd.testing.assert_series_equal(two, one)


def test_legacy_import_path_is_the_same_class():
    """``qlib_hist.model.HIST``: where 0.1.0's pickles look for the class."""
    from qlib_hist.model import HIST as legacy

    assert legacy is HIST


# ==================================================================================================== everything on
def test_all_paper_options_together(demo, short_dataset, membership_file, tmp_path):
    model = small_hist(
        demo,
        stock2concept=str(membership_file),
        stock_index=None,
        n_epochs=2,
        hidden_topk=3,
        concept_refine=True,
        temporal_attention=True,
        smooth_steps=2,
        concept_weight="$close*$volume",
        metric="precision@10",
        checkpoint_dir=str(tmp_path / "ckpt"),
    )
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
