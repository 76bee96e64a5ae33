"""``market_context`` and ``aux_horizons`` through ``HIST.fit`` / ``predict`` on the demo's qlib provider: what each
promises (no look-ahead, no valid-period price in training, one clear error, pickles, the main head alone
predicts) checked on real qlib reads."""

from __future__ import annotations

import pickle
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from qlib_hist.batches import DataError
from qlib_hist.demo_data import BENCHMARK

from conftest import SMALL_CPU, init_qlib, small_hist

pytestmark = pytest.mark.slow

TINY = dict(SMALL_CPU, n_epochs=2, early_stop=2, loss="ic")


@pytest.fixture(scope="module")
def market_model(demo, short_dataset):
    init_qlib(demo.provider_uri)
    model = small_hist(demo, TINY, market_context=[BENCHMARK])
    model.fit(short_dataset)
    return model


def test_the_market_gate_trains_predicts_and_pickles(market_model, short_dataset):
    gate = market_model.HIST_model.market_gate
    assert gate is not None and gate.linear.weight.abs().sum() > 0  # it left its zero start
    assert torch.isfinite(gate.mean).all() and (gate.std > 0).all()  # scaled by the train days
    pred = market_model.predict(short_dataset)
    assert np.isfinite(pred.to_numpy()).all()
    clone = pickle.loads(pickle.dumps(market_model))
    assert clone.settings.network.market_context == (BENCHMARK,)
    pd.testing.assert_series_equal(clone.predict(short_dataset), pred)


def _provider_copy_with(demo, folder, patterns, rewrite):
    """The demo provider copied into ``folder``, the values of each ``features/<pattern>`` bin file replaced by
    ``rewrite(days, values)`` (``days``: the calendar days of the file's values; it may return fewer, from the
    first day on)."""
    copy = folder / "provider"
    shutil.copytree(demo.provider_uri, copy)
    calendar = pd.DatetimeIndex(pd.read_csv(copy / "calendars" / "day.txt", header=None)[0])
    for pattern in patterns:
        for path in (copy / "features").glob(pattern):
            raw = np.fromfile(path, dtype="<f4")
            first, values = int(raw[0]), raw[1:].copy()
            values = rewrite(calendar[first : first + len(values)], values)
            path.write_bytes(np.concatenate([[first], values]).astype("<f4").tobytes())
    return copy


def test_changing_the_index_after_a_day_changes_no_prediction_up_to_it(market_model, short_dataset, demo, tmp_path):
    before = market_model.predict(short_dataset)
    days = before.index.get_level_values(0).unique().sort_values()
    cut = days[len(days) // 2]  # index data after this day are rewritten

    def scale_later(days, values):
        later = days > cut
        values[later] *= np.linspace(0.5, 2.0, int(later.sum()), dtype=np.float32)
        return values

    fields = [f"{BENCHMARK.lower()}/{field}.day.bin" for field in ("close", "volume")]
    copy = _provider_copy_with(demo, tmp_path, fields, scale_later)
    try:
        init_qlib(copy)  # the stocks' features stay in the handler; the market state is read from here
        after = market_model.predict(short_dataset)
    finally:
        init_qlib(demo.provider_uri)
    early = before.index.get_level_values(0) <= cut
    pd.testing.assert_series_equal(after[early], before[early])
    assert not np.allclose(after[~early].to_numpy(), before[~early].to_numpy())  # the change reached the later days


def test_an_index_the_provider_lacks_is_one_error_naming_it(demo, short_dataset):
    init_qlib(demo.provider_uri)
    model = small_hist(demo, TINY, market_context=[BENCHMARK, "SH000905"])
    with pytest.raises(
        DataError, match=r"market_context: the provider has no bar of SH000905 between .* \(segment train\)"
    ):
        model.fit(short_dataset)
    assert not model.fitted


def test_days_an_index_has_no_bar_are_logged_and_gated_with_the_train_mean(
    market_model, short_dataset, demo, tmp_path, caplog, monkeypatch
):
    """An index whose data end before the stocks' (a late index file): the days without a bar are named in the log,
    and predicted with the gate at the train days' mean state (the standardised figures are 0)."""
    import logging

    end = pd.Timestamp("2016-09-20")  # the test segment is September 2016: the index ends on 2016-09-19
    copy = _provider_copy_with(demo, tmp_path, [f"{BENCHMARK.lower()}/*.day.bin"], lambda days, v: v[days < end])
    try:
        init_qlib(copy)
        monkeypatch.setattr(logging.getLogger("qlib"), "propagate", True)  # qlib.init stops it at its own handler
        with caplog.at_level(logging.WARNING):
            pred = market_model.predict(short_dataset)
    finally:
        init_qlib(demo.provider_uri)
    assert np.isfinite(pred.to_numpy()).all()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert re.search(rf"market_context: {BENCHMARK} has no bar on \d+ of \d+ days of segment test", logged), logged[
        -500:
    ]


def _train_days(dataset) -> pd.DatetimeIndex:
    from qlib.data.dataset.handler import DataHandlerLP

    label = dataset.prepare("train", col_set="label", data_key=DataHandlerLP.DK_L)
    return pd.DatetimeIndex(label.index.get_level_values(0).unique()).sort_values()


def test_the_gate_is_scaled_by_the_train_days_alone(market_model, short_dataset, demo):
    from qlib_hist.qlib_edge.context import market_features

    init_qlib(demo.provider_uri)
    market = market_features([BENCHMARK], _train_days(short_dataset)).astype(np.float64)  # [days, 21]
    gate = market_model.HIST_model.market_gate
    std = np.nanstd(market, axis=0)
    np.testing.assert_allclose(gate.mean.numpy(), np.nanmean(market, axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gate.std.numpy(), np.where(std > 0, std, 1.0), rtol=1e-5, atol=1e-7)


def test_a_day_without_a_bar_leaves_every_figure_of_the_index_missing(demo, short_dataset, tmp_path):
    """No bar on two days inside the window: each of the index's figures is NaN on them (the gate's train mean),
    while the day before them keeps its state and a day later than them still has one."""
    from qlib_hist.qlib_edge.context import market_features

    days = _train_days(short_dataset)
    gap = days[30:32]
    init_qlib(demo.provider_uri)
    before = market_features([BENCHMARK], days)

    def drop_bars(calendar, values):
        values[calendar.isin(gap)] = np.nan
        return values

    fields = [f"{BENCHMARK.lower()}/{field}.day.bin" for field in ("close", "volume", "open", "high", "low")]
    copy = _provider_copy_with(demo, tmp_path, fields, drop_bars)
    try:
        init_qlib(copy)
        after = market_features([BENCHMARK], days)
    finally:
        init_qlib(demo.provider_uri)
    on_gap = days.isin(gap)
    assert np.isnan(after[on_gap]).all() and not np.isnan(before[on_gap]).any()
    np.testing.assert_array_equal(after[:30], before[:30])
    assert np.isfinite(after[40, 1:]).all()  # the windows after the gap are built from the days they have


def test_an_infinite_index_figure_is_one_error_naming_the_index_and_day(demo, short_dataset, tmp_path):
    from qlib_hist.qlib_edge.context import market_features

    days = _train_days(short_dataset)

    def zero_close(calendar, values):
        values[calendar == days[20]] = 0.0  # the next day's return divides by it
        return values

    copy = _provider_copy_with(demo, tmp_path, [f"{BENCHMARK.lower()}/close.day.bin"], zero_close)
    try:
        init_qlib(copy)
        with pytest.raises(DataError, match=rf"{BENCHMARK}'s ret is infinite on {days[21].date()} \(segment train\)"):
            market_features([BENCHMARK], days, "train")
    finally:
        init_qlib(demo.provider_uri)


def test_a_figure_with_no_value_on_any_train_day_is_one_error_naming_it(demo, short_dataset, tmp_path):
    """An index whose volume the provider lacks: its amount figures would be dead inputs, so ``fit`` refuses it."""
    copy = _provider_copy_with(
        demo, tmp_path, [f"{BENCHMARK.lower()}/volume.day.bin"], lambda days, v: np.full_like(v, np.nan)
    )
    try:
        init_qlib(copy)
        model = small_hist(demo, TINY, market_context=[BENCHMARK])
        empty = rf"market_context: 10 figure\(s\) have no value on any train day: {BENCHMARK}:amount_ratio5"
        with pytest.raises(DataError, match=empty):
            model.fit(short_dataset)
    finally:
        init_qlib(demo.provider_uri)
    assert not model.fitted


def test_aux_labels_read_no_close_after_trains_last_day(demo, short_dataset, tmp_path):
    """The labels of the train rows are the same whatever the prices after train's end: rewriting every close after
    it changes none of them."""
    from qlib.data.dataset.handler import DataHandlerLP

    from qlib_hist.qlib_edge.context import aux_labels

    init_qlib(demo.provider_uri)
    train = short_dataset.prepare("train", col_set="label", data_key=DataHandlerLP.DK_L)  # CSRankNorm'd
    last_day = train.index.get_level_values(0).max()
    labels = aux_labels(train.index, [1, 5], last_day)
    # k = 1 is Alpha360's label itself, rank-normalised: equal to the handler's label where both exist
    kept = ~np.isnan(labels[:, 0])
    assert np.allclose(labels[kept, 0], train.to_numpy()[kept, 0], atol=1e-5)
    days = pd.DatetimeIndex(train.index.get_level_values(0))
    calendar = days.unique().sort_values()
    assert np.isnan(labels[days >= calendar[-2], 0]).all() and np.isnan(labels[days >= calendar[-6], 1]).all()
    assert (~np.isnan(labels[days < calendar[-6], 1])).mean() > 0.9

    def triple_later(days, values):
        values[days > last_day] *= 3.0
        return values

    copy = _provider_copy_with(demo, tmp_path, ["*/close.day.bin"], triple_later)
    try:
        init_qlib(copy)
        again = aux_labels(train.index, [1, 5], last_day)
    finally:
        init_qlib(demo.provider_uri)
    np.testing.assert_array_equal(again, labels)


def test_aux_heads_train_beside_the_main_head_and_never_predict(demo, short_dataset):
    init_qlib(demo.provider_uri)
    plain = small_hist(demo, TINY)
    plain.fit(short_dataset)
    # aux_weight 0: the heads exist (made after every other module) but train nothing: the plain model, bit for bit
    idle = small_hist(demo, TINY, aux_horizons=[2, 3], aux_weight=0.0)
    idle.fit(short_dataset)
    pd.testing.assert_series_equal(idle.predict(short_dataset), plain.predict(short_dataset))
    model = small_hist(demo, TINY, aux_horizons=[2, 3])
    model.fit(short_dataset)
    assert "train_ic+aux_loss" in model.history[0]
    pred = model.predict(short_dataset)
    assert not np.allclose(pred.to_numpy(), plain.predict(short_dataset).to_numpy())  # the heads shaped the encoder
    model.HIST_model.aux_head = None  # predictions come from the main head alone
    pd.testing.assert_series_equal(model.predict(short_dataset), pred)
