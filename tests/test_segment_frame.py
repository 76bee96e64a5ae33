"""segment_frame (``qlib_hist.qlib_edge.dataset``): the rows DatasetH.prepare gives, without copying them out of the
handler where it can."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qlib_hist.qlib_edge.dataset import segment_frame

from conftest import DEMO_SEGMENTS


def _prepared(dataset, segment, with_label):
    from qlib.data.dataset.handler import DataHandlerLP

    if with_label:
        return dataset.prepare(segment, col_set=["feature", "label"], data_key=DataHandlerLP.DK_L)
    return dataset.prepare(segment, col_set="feature", data_key=DataHandlerLP.DK_I)


def _features(df):
    return (df["feature"] if isinstance(df.columns, pd.MultiIndex) else df).to_numpy()


@pytest.mark.parametrize(
    "segment",
    ["train", "valid", "test", slice("2016-10", "2016-12-15"), slice(None, "2016-05-01"), slice("2017-03-01", None)],
)
@pytest.mark.parametrize("with_label", [True, False])
def test_same_rows_and_values_as_prepare(demo_dataset, segment, with_label):
    fast = segment_frame(demo_dataset, segment, with_label)
    ref = _prepared(demo_dataset, segment, with_label)
    assert len(fast) > 0
    assert fast.index.equals(ref.index)
    np.testing.assert_array_equal(_features(fast), _features(ref))
    if with_label:
        np.testing.assert_array_equal(fast["label"].to_numpy(), ref["label"].to_numpy())


def test_training_segment_shares_the_handlers_memory(demo_dataset):
    from qlib.data.dataset.handler import DataHandlerLP

    whole = demo_dataset.handler.fetch(col_set=DataHandlerLP.CS_RAW, data_key=DataHandlerLP.DK_L)
    fast = segment_frame(demo_dataset, "train", with_label=True)
    assert np.shares_memory(_features(fast), whole["feature"].to_numpy())
    copied = _prepared(demo_dataset, "train", with_label=True)
    assert not np.shares_memory(_features(copied), whole["feature"].to_numpy())  # what the fast path avoids

    class CustomDataset(type(demo_dataset)):  # a subclass may change what prepare returns: use prepare
        pass

    custom = CustomDataset(demo_dataset.handler, segments=DEMO_SEGMENTS)
    via_prepare = segment_frame(custom, "train", with_label=True)
    assert not np.shares_memory(_features(via_prepare), whole["feature"].to_numpy())
    assert via_prepare.index.equals(fast.index)

    demo_dataset.handler.fetch_orig = False  # this handler copies even a whole-frame fetch: use prepare
    try:
        no_orig = segment_frame(demo_dataset, "train", with_label=True)
    finally:
        demo_dataset.handler.fetch_orig = True
    assert not np.shares_memory(_features(no_orig), whole["feature"].to_numpy())
    assert no_orig.index.equals(fast.index)


def test_fit_and_predict_never_write_into_the_handler(demo_dataset, demo):
    """The batches view the handler's memory: training and prediction must leave it as it was."""
    from qlib.data.dataset.handler import DataHandlerLP

    from qlib_hist import HIST

    frames = {
        key: demo_dataset.handler.fetch(col_set=DataHandlerLP.CS_RAW, data_key=key)
        for key in (DataHandlerLP.DK_L, DataHandlerLP.DK_I)
    }
    before = {key: frame.copy(deep=True) for key, frame in frames.items()}
    model = HIST(
        d_feat=6,
        hidden_size=8,
        num_layers=1,
        n_epochs=1,
        early_stop=1,
        lr=1e-3,
        base_model="GRU",
        seed=0,
        stock2concept=str(demo.membership),
    )
    model.fit(demo_dataset)
    model.predict(demo_dataset)
    for key, frame in frames.items():
        pd.testing.assert_frame_equal(frame, before[key])
