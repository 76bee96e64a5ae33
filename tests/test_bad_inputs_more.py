"""The last bad inputs, one test per root cause (``tests/test_bad_inputs.py`` has the others): a failed write names
the file asked for; a damaged checkpoint says which file and what to do; concept inputs that give no stock a
concept are refused; a pretrained encoder of another depth is refused; and a message naming the argument or file
for ``explain(top=...)``, empty files, a table's suffix, dates pandas cannot hold and fractional ``stock_index``
rows."""

from __future__ import annotations

import datetime
import json
import logging
import os
import re

import numpy as np
import pandas as pd
import pytest
import torch
from test_bad_inputs import assert_user_error, run_cli

from qlib_hist.batches import DataError
from qlib_hist.concepts import ConceptError, LegacyConcepts, load_concept_source
from qlib_hist.concepts.legacy import load_stock_index

from conftest import D_FEAT, small_hist

MEMBERSHIP = "instrument,concept,start_date,end_date\nSH600000,bank,2016-01-04,\nSH600001,bank,2016-01-04,\n"


def one_line(err: BaseException) -> str:
    message = str(err)
    assert "\n" not in message, message
    return message


# ============================================================================ a failed write names the file asked for
def test_a_failed_write_names_the_destination_not_the_temp_file(tmp_path, monkeypatch):
    from pathlib import Path

    from qlib_hist.atomic_files import atomic_write_text

    destination = tmp_path / "out.csv"
    destination.mkdir()  # a folder where the file should go: os.replace(temp, destination) fails
    (destination / "keep").write_text("x")
    with pytest.raises(OSError) as caught:
        atomic_write_text(destination, "a,b\n")
    assert str(destination) in one_line(caught.value) and ".tmp" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]  # no temp file left

    # the temporary file cannot be written (a full disk, a permission): the same error, naming the destination
    def refuse(self, data):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_bytes", refuse)
    target = tmp_path / "other.csv"
    with pytest.raises(PermissionError) as caught:
        atomic_write_text(target, "a,b\n")
    assert one_line(caught.value) == f"[Errno 13] Permission denied: '{target}'"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_the_temp_file_that_cannot_be_made_is_named_by_its_destination(tmp_path, monkeypatch):
    from qlib_hist.atomic_files import atomic_dir, atomic_path

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".out.csv.123.ab.tmp"))

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    monkeypatch.setattr("tempfile.mkdtemp", refuse)
    for writer, name in ((atomic_path, "out.csv"), (atomic_dir, "cache")):
        with pytest.raises(PermissionError) as caught:
            with writer(tmp_path / name):
                pass
        assert one_line(caught.value) == f"[Errno 13] Permission denied: '{tmp_path / name}'"


def test_a_file_inside_a_temp_folder_is_named_inside_the_destination(tmp_path):
    from qlib_hist.atomic_files import atomic_dir

    with pytest.raises(FileNotFoundError) as caught:
        with atomic_dir(tmp_path / "cache") as tmp:
            (tmp / "missing" / "values.npy").read_bytes()
    assert one_line(caught.value).endswith(f"'{tmp_path / 'cache' / 'missing' / 'values.npy'}'")
    assert list(tmp_path.iterdir()) == []
    # an error about another file (an input, say) is left as it was
    with pytest.raises(FileNotFoundError, match="no_such_input"):
        with atomic_dir(tmp_path / "cache"):
            (tmp_path / "no_such_input").read_bytes()


def test_the_cli_names_the_output_that_cannot_be_written(capsys, tmp_path):
    sw = tmp_path / "sw.csv"
    sw.write_text("instrument,start_date,industry_code,updated_at\nSH600000,2010-01-04,480301,2014-01-01\n")
    out = tmp_path / "members.csv"
    out.mkdir()
    (out / "keep").write_text("x")
    status, err = run_cli(capsys, "concepts", "from-sw", str(sw), str(out))
    assert_user_error(status, err, str(out))
    assert ".tmp" not in err


# ============================================================================ damaged checkpoints
@pytest.fixture(scope="module")
def good_checkpoint(demo, short_dataset, tmp_path_factory):
    """A checkpoint of one finished epoch, written by ``HIST(checkpoint_dir=...)``; its path and the settings."""
    from qlib_hist.qlib_edge.model import CHECKPOINT_NAME

    settings = dict(hidden_size=8, num_layers=1, n_epochs=1, early_stop=5, seed=0)
    directory = tmp_path_factory.mktemp("ckpt")
    small_hist(demo, **settings, checkpoint_dir=str(directory)).fit(short_dataset)
    return directory / CHECKPOINT_NAME, settings


def _damage(state: dict, how: str):
    if how == "bare tensor":
        return torch.zeros(3)
    state = dict(state)
    if how == "missing key":
        del state["optimizer"]
    elif how == "wrong shape":
        state["model"] = dict(state["model"], **{"fc_out.weight": torch.zeros(1, 5)})
    elif how == "missing weight":
        state["model"] = {k: v for k, v in state["model"].items() if k != "fc_out.bias"}
    elif how == "bad optimizer state":
        state["optimizer"] = {"state": {}, "param_groups": []}
    elif how == "bad rng state":
        state["torch_rng"] = torch.zeros(3, dtype=torch.uint8)
    return state


@pytest.mark.parametrize(
    "how, needle",
    [
        ("bare tensor", "it holds a Tensor"),
        ("missing key", "no 'optimizer'"),
        ("wrong shape", "weight 'fc_out.weight' has shape (1, 5), the network's is (1, 8)"),
        ("missing weight", "the weights lack ['fc_out.bias']"),
        ("bad optimizer state", "ValueError"),
        ("bad rng state", "RuntimeError"),
    ],
)
def test_a_damaged_checkpoint_names_the_file_and_what_to_do(
    demo, short_dataset, good_checkpoint, tmp_path, how, needle
):
    from qlib_hist.callbacks import CheckpointError

    good, settings = good_checkpoint
    path = tmp_path / good.name
    state = torch.load(good, map_location="cpu", weights_only=True)
    torch.save(_damage(state, how), path)
    model = small_hist(demo, **settings, checkpoint_dir=str(tmp_path))
    before = {k: v.clone() for k, v in model.HIST_model.state_dict().items()}
    with pytest.raises(CheckpointError) as caught:
        model.fit(short_dataset)
    message = one_line(caught.value)
    assert f"checkpoint {path} is damaged" in message and needle in message, message
    assert "delete it to start this fit over" in message and isinstance(caught.value, ValueError)
    after = model.HIST_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing of the damaged file was kept
    if how == "missing key":  # as the message says: deleted, the fit starts over
        os.remove(path)
        small_hist(demo, **settings, checkpoint_dir=str(tmp_path)).fit(short_dataset)


# ============================================================================ concepts that give no stock a concept
@pytest.mark.parametrize(
    "matrix, needle",
    [
        (-np.ones((5, 3)), "5 negative entries, first -1 at row 0 column 0"),
        (np.zeros((5, 3)), "every entry is 0, so no stock belongs to any concept"),
        (np.zeros((5, 0)), "shape (5, 0) has no concept columns"),
        (np.zeros((0, 3)), "shape (0, 3) has no stock rows"),
    ],
)
def test_a_legacy_matrix_that_gives_no_stock_a_concept_is_refused(tmp_path, matrix, needle):
    s2c, index = tmp_path / "s2c.npy", tmp_path / "index.json"
    np.save(s2c, matrix.astype(np.float32))
    index.write_text(json.dumps({f"SH60000{i}": i for i in range(max(len(matrix), 1))}))
    with pytest.raises(ConceptError) as caught:
        load_concept_source(s2c, index)
    assert str(s2c) in one_line(caught.value) and needle in str(caught.value)


def test_an_all_zero_matrix_stops_fit_before_training(demo, short_dataset, tmp_path):
    s2c = tmp_path / "s2c.npy"
    np.save(s2c, np.zeros_like(np.load(demo.stock2concept)))
    model = small_hist(demo, stock2concept=str(s2c))
    with pytest.raises(ConceptError, match="every entry is 0"):
        model.fit(short_dataset)
    assert not model.fitted


@pytest.fixture
def misspelt_index(demo, tmp_path):
    """The demo's stock_index with keys spelt ``600000.SH`` instead of qlib's ``SH600000``."""
    mapping = load_stock_index(demo.stock_index)
    path = tmp_path / "stock_index.json"
    path.write_text(json.dumps({f"{k[2:]}.{k[:2]}": v for k, v in mapping.items()}))
    return path, len(mapping)


def test_stock_index_keys_that_match_no_instrument_are_refused(demo, short_dataset, misspelt_index, caplog):
    path, n_keys = misspelt_index
    model = small_hist(demo, stock_index=str(path))
    with caplog.at_level(logging.WARNING, logger="qlib_hist"):
        with pytest.raises(DataError) as caught:
            model.fit(short_dataset)
    message = one_line(caught.value)
    assert "segment train: none of its" in message and "has a predefined concept" in message
    assert re.search(r"the keys are spelt like '\d{6}\.(SH|SZ)', qlib spells it '(SH|SZ)\d{6}'", message), message
    assert not model.fitted
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"{n_keys} of {n_keys} keys are not spelt as qlib spells instruments" in w for w in warned), warned


def test_a_segment_to_predict_without_any_concept_is_a_loud_warning(demo, demo_dataset, misspelt_index, caplog):
    from qlib_hist.qlib_edge.dataset import segment_batches

    source = LegacyConcepts(demo.stock2concept, misspelt_index[0])
    log = logging.getLogger("test_bad_inputs_more")
    with caplog.at_level(logging.WARNING, logger="test_bad_inputs_more"):
        batches = segment_batches(demo_dataset, "test", False, source, D_FEAT, logger=log)
    assert batches.n_rows and any("segment test: none of its" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataError, match="segment valid: none of its"):
        segment_batches(demo_dataset, "valid", True, source, D_FEAT, logger=log)


def test_a_membership_table_of_other_stocks_is_refused(demo, short_dataset, tmp_path):
    table = tmp_path / "other_market.csv"
    table.write_text("instrument,concept,start_date,end_date\nSZ300001,a,2010-01-04,\nSZ300002,a,2010-01-04,\n")
    with pytest.raises(DataError, match="none of its stocks .* is in the table, which lists 'SZ300001'"):
        small_hist(demo, stock2concept=str(table)).fit(short_dataset)
    ended = tmp_path / "ended.csv"  # the right stocks, but every membership ended before the segment
    members = pd.read_csv(demo.membership).assign(start_date="2010-01-04", end_date="2015-12-31")
    members.drop_duplicates(["instrument", "concept"]).to_csv(ended, index=False)
    with pytest.raises(DataError, match=r"holds on the segment's days \(the table spans 2010-01-04 .. 2015-12-31\)"):
        small_hist(demo, stock2concept=str(ended)).fit(short_dataset)


# ============================================================================ a pretrained encoder of another depth
def _base_state(num_layers: int, **kwargs) -> dict:
    from qlib_hist.network import RNNRegressor

    torch.manual_seed(0)
    return RNNRegressor(d_feat=6, hidden_size=8, num_layers=num_layers, base_model="LSTM", **kwargs).state_dict()


@pytest.mark.parametrize(
    "file_layers, needle",
    [
        (3, "its rnn has 3 layer(s) (e.g. 'rnn.weight_ih_l2'"),
        (1, "its rnn has 1 layer(s) (e.g. 'rnn.weight_ih_l0'"),
    ],
)
def test_a_pretrained_encoder_of_another_depth_is_refused(tmp_path, file_layers, needle):
    from qlib_hist.network import HISTModel
    from qlib_hist.pretrained import load_pretrained

    path = tmp_path / "base.pkl"
    torch.save(_base_state(file_layers), path)
    net = HISTModel(d_feat=6, hidden_size=8, num_layers=2, base_model="LSTM")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError) as caught:
        load_pretrained(net, path, logging.getLogger("test"))
    message = one_line(caught.value)
    assert str(path) in message and needle in message and "num_layers=2" in message, message
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing loaded


def test_pretrained_keys_this_hist_lacks_are_refused_except_qlibs_head(tmp_path):
    from qlib_hist.network import HISTModel
    from qlib_hist.pretrained import load_pretrained

    net = HISTModel(d_feat=6, hidden_size=8, num_layers=2, base_model="LSTM")
    log = logging.getLogger("test")
    state = _base_state(2)
    reverse = dict(state, **{"rnn.weight_ih_l0_reverse": state["rnn.weight_ih_l0"]})  # a bidirectional RNN
    torch.save(reverse, tmp_path / "bi.pkl")
    with pytest.raises(ValueError, match=r"its rnn does not fit .*unexpected \['rnn.weight_ih_l0_reverse'\]"):
        load_pretrained(net, tmp_path / "bi.pkl", log)
    torch.save(dict(state, **{"temporal_att.weight": torch.zeros(8)}), tmp_path / "other.pkl")
    with pytest.raises(ValueError, match=r"1 parameter\(s\) this HIST does not have \(temporal_att.weight\)"):
        load_pretrained(net, tmp_path / "other.pkl", log)
    # qlib's LSTM/GRU layout: rnn.* and fc_out.*, the head's extra keys ignored
    torch.save(dict(state, **{"fc_out.extra": torch.zeros(1)}), tmp_path / "qlib.pkl")
    assert load_pretrained(net, tmp_path / "qlib.pkl", log) == sorted(state)
    # a whole HIST of the same settings loads too
    torch.save(HISTModel(d_feat=6, hidden_size=8, num_layers=2, base_model="LSTM").state_dict(), tmp_path / "h.pkl")
    assert len(load_pretrained(net, tmp_path / "h.pkl", log)) == len(net.state_dict())


# ============================================================================ messages that name the argument or file
@pytest.mark.parametrize("top", [-1, 2.5, True, "3"])
def test_explain_top_is_named(synthetic_batches, top):
    from qlib_hist.explain import explain_batches
    from qlib_hist.network import HISTModel

    train, _ = synthetic_batches
    net = HISTModel(D_FEAT, 8, 1)
    with pytest.raises(ValueError, match=rf"top must be a whole number >= 0 .*, got {top!r}"):
        explain_batches(net, train, torch.device("cpu"), top=top)
    table = explain_batches(net, train, torch.device("cpu"), top=0)  # the parts only
    assert list(table.columns) == ["score", "concept", "hidden_concept", "individual", "bias"]


def test_hist_explain_top_is_named_before_the_segment_is_read(demo, demo_dataset, monkeypatch):
    from qlib_hist import QlibHistError

    model = small_hist(demo)
    model.fitted = True

    def no_batches(*args, **kwargs):
        raise AssertionError("the segment was read before top was checked")

    monkeypatch.setattr(model, "_batches", no_batches)
    with pytest.raises(QlibHistError, match="top must be a whole number >= 0"):
        model.explain(demo_dataset, "test", top=-1)


@pytest.mark.parametrize("top", [-1, 1.5])
def test_the_explain_record_checks_top_when_it_is_made(top):
    from qlib_hist import QlibHistError
    from qlib_hist.qlib_edge.record import HISTExplainRecord

    with pytest.raises(QlibHistError, match=rf"top must be a whole number >= 0 .*, got {top!r}"):
        HISTExplainRecord(recorder=None, model=None, dataset=None, top=top)
    assert HISTExplainRecord(recorder=None, top=0).top == 0


@pytest.mark.parametrize("name", ["members.csv", "members.parquet", "s2c.npy"])
def test_an_empty_concept_file_says_it_is_empty(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"SH600000": 0}))
    with pytest.raises(ConceptError) as caught:
        load_concept_source(path, index)
    assert str(path) in one_line(caught.value) and "the file is empty (0 bytes)" in str(caught.value)
    empty_index = tmp_path / "empty_index.json"
    empty_index.write_bytes(b"")
    with pytest.raises(ConceptError, match="stock_index .*empty_index.json: the file is empty"):
        load_stock_index(empty_index)


def test_empty_tables_through_the_cli_and_the_weights(capsys, demo, tmp_path):
    from qlib_hist.member_weights import read_weight_table

    empty = tmp_path / "members.csv"
    empty.write_bytes(b"")
    status, err = run_cli(capsys, "concepts", "report", str(empty), "--provider-uri", str(demo.provider_uri))
    assert_user_error(status, err, str(empty), "the file is empty (0 bytes)")
    weights = tmp_path / "weights.csv"
    weights.write_bytes(b"")
    with pytest.raises(DataError, match="concept_weight table .*weights.csv: the file is empty"):
        read_weight_table(weights)


@pytest.mark.parametrize("suffix", [".xlsx", ".tsv", ".txt", ""])
def test_a_membership_table_of_another_suffix_is_not_read_as_a_matrix(tmp_path, suffix):
    path = tmp_path / f"members{suffix}"
    path.write_text(MEMBERSHIP)
    for index in (None, tmp_path / "index.json"):
        with pytest.raises(ConceptError) as caught:
            load_concept_source(path, index)
        message = one_line(caught.value)
        assert str(path) in message and "(.csv, .parquet)" in message and "(.npy with stock_index)" in message
    # .pq is a parquet table; an .npy array under another name is still qlib's legacy matrix
    pq = tmp_path / "members.pq"
    pd.read_csv(tmp_path / path.name).to_parquet(pq)
    assert load_concept_source(pq).describe().startswith("MembershipConcepts")
    matrix = tmp_path / "stock2concept.bin"
    with matrix.open("wb") as fh:
        np.save(fh, np.eye(2, dtype=np.float32))
    (tmp_path / "index.json").write_text(json.dumps({"SH600000": 0, "SH600001": 1}))
    assert isinstance(load_concept_source(matrix, tmp_path / "index.json"), LegacyConcepts)


def test_a_weight_table_of_another_suffix_is_named(tmp_path):
    from qlib_hist.member_weights import read_weight_table

    path = tmp_path / "weights.xlsx"
    path.write_text("instrument,datetime,value\nSH600000,2020-01-02,1\n")
    with pytest.raises(DataError, match=r"weights.xlsx: a weight table is a .csv or .parquet file, not '.xlsx'"):
        read_weight_table(path)


@pytest.mark.parametrize("column", ["start_date", "end_date"])
def test_dates_pandas_cannot_hold_name_the_line(tmp_path, column):
    from qlib_hist.concepts.membership import MembershipConcepts

    path = tmp_path / "members.csv"
    dates = {"start_date": "2016-01-04", "end_date": ""}
    dates[column] = "0001-01-01"
    path.write_text(f"{MEMBERSHIP}SH600002,bank,{dates['start_date']},{dates['end_date']}\n")
    with pytest.raises(ConceptError) as caught:
        MembershipConcepts.from_path(path)
    message = one_line(caught.value)
    assert f"{path}, line 4: column '{column}': date '0001-01-01' is before 1677-09-22" in message, message


def test_dates_pandas_cannot_hold_in_a_frame_and_a_weight_table(tmp_path):
    from qlib_hist.concepts.membership import MembershipConcepts
    from qlib_hist.member_weights import read_weight_table

    frame = pd.DataFrame(
        {"instrument": ["SH600000"], "concept": ["a"], "start_date": [datetime.date(1, 1, 1)], "end_date": [None]}
    )
    with pytest.raises(
        ConceptError, match=r"frame, row 0: column 'start_date': date '0001-01-01' is before 1677-09-22"
    ):
        MembershipConcepts(frame, "frame")
    weights = tmp_path / "weights.csv"
    weights.write_text("instrument,datetime,value\nSH600000,2020-01-02,1\nSH600000,0001-01-01,1\n")
    with pytest.raises(
        DataError, match=r"weights.csv: column 'datetime' has 1 date\(s\) outside .* first '0001-01-01'"
    ):
        read_weight_table(weights)


@pytest.mark.parametrize("value", [1.5, True, "2.5", None, [1]])
def test_fractional_stock_index_rows_are_named(tmp_path, value):
    path = tmp_path / "stock_index.json"
    path.write_text(json.dumps({"SH600000": 0, "SH600001": value}))
    with pytest.raises(ConceptError) as caught:
        load_stock_index(path)
    message = one_line(caught.value)
    assert str(path) in message and f"'SH600001' maps to {value!r}" in message and "whole row number" in message
    path.write_text(json.dumps({"SH600000": 0, "SH600001": 2.0, "SH600002": "3"}))  # whole numbers, as written
    assert load_stock_index(path) == {"SH600000": 0, "SH600001": 2, "SH600002": 3}
