"""Daily batches (``qlib_hist.batches``): a segment's frame as tensors grouped by day, and its clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from qlib_hist.batches import DataError, Day, build_daily_batches

from conftest import D_FEAT, INSTRUMENTS, N_FEATURES, synthetic_frame

CPU = torch.device("cpu")


def test_batches_shape(synthetic_batches, concept_source):
    train, _ = synthetic_batches
    assert train.n_days == 16 and train.n_rows == 16 * 24
    assert train.features.shape == (16 * 24, N_FEATURES)
    assert train.order is None
    day = train.day(3, CPU)
    assert isinstance(day, Day)
    x, concepts, y, w, member_w, mask, market, aux = day
    assert x.shape == (24, N_FEATURES) and concepts.shape == (24, 6) and y.shape == (24,)
    assert w is None and member_w is None and mask is None  # a mask only on a day padded to a static size
    assert market is None and aux is None  # market_context and aux_horizons are off
    assert not concepts[20:].any()  # unknown stocks
    np.testing.assert_array_equal(concepts[:20].numpy(), concept_source.matrix)
    assert train.concepts.n_unknown == 16 * 4


def test_sample_and_member_weights_follow_their_rows(concept_source):
    df = synthetic_frame(3, seed=5)
    perm = np.random.default_rng(1).permutation(len(df))
    shuffled = df.iloc[perm]
    sample = pd.Series(np.arange(len(df), dtype=np.float64), index=shuffled.index)
    member = pd.Series(np.arange(len(df), dtype=np.float64) + 0.5, index=shuffled.index)
    b = build_daily_batches(
        shuffled, concept_source, "train", D_FEAT, with_label=True, sample_weights=sample, member_weights=member
    )
    np.testing.assert_array_equal(b.sample_weights.numpy(), sample.iloc[b.order].to_numpy(np.float32))
    np.testing.assert_array_equal(b.member_weights.numpy(), member.iloc[b.order].to_numpy(np.float32))
    day = b.day(1, CPU)
    np.testing.assert_array_equal(day.sample_weight.numpy(), b.sample_weights[b.day_slice(1)].numpy())
    np.testing.assert_array_equal(day.member_weight.numpy(), b.member_weights[b.day_slice(1)].numpy())


# ----------------------------------------------------------------------------- build_daily_batches errors
def test_empty_frame(concept_source):
    df = synthetic_frame(2, seed=0).iloc[:0]
    with pytest.raises(DataError, match="empty"):
        build_daily_batches(df, concept_source, "valid", D_FEAT, with_label=True)


def test_feature_count_not_multiple(concept_source):
    df = synthetic_frame(2, seed=0).drop(columns=[("feature", "f59")])
    with pytest.raises(DataError) as err:
        build_daily_batches(df, concept_source, "train", D_FEAT, with_label=True)
    assert "59" in str(err.value) and "d_feat=6" in str(err.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features(concept_source, bad):
    df = synthetic_frame(2, seed=0)
    first_day = df.index.get_level_values(0)[0]
    df.loc[(first_day, INSTRUMENTS[5]), ("feature", "f7")] = bad
    df.loc[(first_day, INSTRUMENTS[5]), ("feature", "f9")] = bad
    df.iloc[30, 3] = bad  # second day, another row
    with pytest.raises(DataError) as err:
        build_daily_batches(df, concept_source, "train", D_FEAT, with_label=True)
    msg = str(err.value)
    assert "3 NaN/inf" in msg and "2 rows" in msg
    assert INSTRUMENTS[5] in msg and "f7" in msg  # where the first one is
    assert "train" in msg


def test_nan_labels_are_allowed(concept_source):
    df = synthetic_frame(2, seed=0)
    df.iloc[3, -1] = np.nan
    b = build_daily_batches(df, concept_source, "train", D_FEAT, with_label=True)
    assert torch.isnan(b.labels[3]) and torch.isfinite(b.labels[torch.arange(len(b.labels)) != 3]).all()


def test_two_label_columns(concept_source):
    df = synthetic_frame(2, seed=0)
    df[("label", "LABEL1")] = 0.0
    with pytest.raises(DataError) as err:
        build_daily_batches(df, concept_source, "train", D_FEAT, with_label=True)
    assert "LABEL0" in str(err.value) and "LABEL1" in str(err.value)
    # without labels the extra column does not matter
    build_daily_batches(df, concept_source, "test", D_FEAT, with_label=False)


# ----------------------------------------------------------------------------- row order
def test_unsorted_rows_map_back(concept_source):
    df = synthetic_frame(5, seed=3)
    perm = np.random.default_rng(0).permutation(len(df))
    shuffled = df.iloc[perm]
    b = build_daily_batches(shuffled, concept_source, "test", D_FEAT, with_label=True)
    assert b.order is not None
    dates = b.index.get_level_values(0).values
    assert (dates[1:] >= dates[:-1]).all()
    assert b.n_days == 5 and b.day_count.tolist() == [24] * 5
    # features / labels / concepts follow their rows through the sort
    sorted_frame = shuffled.iloc[b.order]
    np.testing.assert_array_equal(b.features.numpy(), sorted_frame["feature"].to_numpy(np.float32))
    np.testing.assert_array_equal(b.labels.numpy(), sorted_frame[("label", "LABEL0")].to_numpy(np.float32))
    rows = b.concept_matrix[b.concept_rows].numpy()
    for i, inst in enumerate(b.index.get_level_values(1)):
        known = concept_source.stock_index.get(inst)
        want = concept_source.matrix[known] if known is not None else np.zeros(6, np.float32)
        np.testing.assert_array_equal(rows[i], want)
    # per-row values in day order come back in the input's row order
    back = b.in_dataset_order(pd.Series(b.features[:, 0].numpy(), index=b.index))
    np.testing.assert_array_equal(back.to_numpy(), shuffled[("feature", "f0")].to_numpy(np.float32))
    back_labels = b.in_dataset_order(pd.DataFrame({"label": b.labels.numpy()}, index=b.index))
    np.testing.assert_array_equal(back_labels["label"].to_numpy(), shuffled[("label", "LABEL0")].to_numpy(np.float32))
    # the index reordering HIST.predict uses gives the input's index
    assert b.index[np.argsort(b.order)].equals(shuffled.index)
    assert back.index.equals(shuffled.index) and back_labels.index.equals(shuffled.index)


def test_sorted_rows_identity_order(concept_source):
    df = synthetic_frame(2, seed=0)
    b = build_daily_batches(df, concept_source, "test", D_FEAT, with_label=False)
    assert b.order is None and b.labels is None
    values = np.arange(b.n_rows, dtype=np.float32)
    np.testing.assert_array_equal(b.in_dataset_order(pd.Series(values, index=b.index)).to_numpy(), values)


def test_fingerprint_follows_the_content(concept_source):
    df = synthetic_frame(3, seed=0)
    a = build_daily_batches(df, concept_source, "train", D_FEAT, with_label=True)
    assert a.fingerprint() == build_daily_batches(df.copy(), concept_source, "train", D_FEAT, True).fingerprint()
    changed = df.copy()
    changed.iloc[5, -1] += 1.0  # one label
    assert build_daily_batches(changed, concept_source, "train", D_FEAT, True).fingerprint() != a.fingerprint()


def test_a_day_carries_its_market_state_and_its_rows_aux_labels(synthetic_batches):
    import dataclasses

    train, _ = synthetic_batches
    market = torch.arange(train.n_days * 3, dtype=torch.float32).reshape(train.n_days, 3)  # [days, M]
    aux = torch.arange(train.n_rows * 2, dtype=torch.float32).reshape(train.n_rows, 2)  # [rows, K]
    both = dataclasses.replace(train, market=market, aux_labels=aux)
    day = both.day(5, CPU)
    assert torch.equal(day.market, market[5]) and torch.equal(day.aux_label, aux[both.day_slice(5)])
    assert both.fingerprint() != train.fingerprint()  # a segment with them is another segment
    assert dataclasses.replace(train).fingerprint() == train.fingerprint()  # without them, unchanged
