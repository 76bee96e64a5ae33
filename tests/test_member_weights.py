"""Member weights of the predefined concepts (``qlib_hist.member_weights``, ``concept_weight``): a qlib expression or
a table, filled and normalised per day, and their effect through HIST."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qlib_hist.batches import DataError, build_daily_batches
from qlib_hist.member_weights import is_expression, normalize_member_weights, read_weight_table
from qlib_hist.qlib_edge.dataset import member_weights

from conftest import small_hist


def test_is_expression():
    assert is_expression("$close * $volume") and is_expression("Ref($close, 1)*$volume")
    assert not is_expression("weights.csv") and not is_expression(Path("/data/market_value.parquet"))


def test_read_weight_table_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_weight_table(tmp_path / "nope.csv")
    path = tmp_path / "w.csv"
    path.write_text("instrument,date,value\nA,2020-01-02,1\n")
    with pytest.raises(DataError, match=r"missing columns \['datetime'\]"):
        read_weight_table(path)
    path.write_text("instrument,datetime,value\nA,someday,1\n")
    with pytest.raises(DataError, match="unparsable dates"):
        read_weight_table(path)


def test_normalize_keeps_the_last_duplicate():
    index = pd.MultiIndex.from_product([pd.to_datetime(["2020-01-02"]), ["A", "B"]], names=["datetime", "instrument"])
    raw = pd.Series([1.0, 5.0, 3.0], index=index[[0, 0, 1]])  # A twice: 1 then 5
    np.testing.assert_allclose(normalize_member_weights(raw, index, "spec", "train").to_numpy(), [5 / 4, 3 / 4])


@pytest.fixture(scope="module")
def unweighted(demo, short_dataset):
    model = small_hist(demo)
    model.fit(short_dataset)
    return model.predict(short_dataset, "test")


def _segment_rows(dataset) -> pd.MultiIndex:
    frames = [dataset.prepare(s, col_set="feature").index for s in ("train", "valid", "test")]
    return frames[0].append(frames[1:]).unique()


def _write_table(path: Path, rows: pd.MultiIndex, values) -> Path:
    pd.DataFrame(
        {
            "instrument": rows.get_level_values(1),
            "datetime": rows.get_level_values(0).strftime("%Y-%m-%d"),
            "value": values,
        }
    ).to_csv(path, index=False)
    return path


def _provider_field(demo, field: str) -> pd.Series:
    """``field`` of every demo stock read straight from the provider's ``.day.bin`` files (float32
    ``[first calendar index, values...]``), not through qlib: on a (datetime, instrument) index."""
    root = Path(demo.provider_uri)
    calendar = pd.DatetimeIndex(pd.read_csv(root / "calendars" / "day.txt", header=None)[0])
    parts = []
    for inst in demo.instruments:
        raw = np.fromfile(root / "features" / inst.lower() / f"{field}.day.bin", dtype="<f4")
        first, values = int(raw[0]), raw[1:]
        days = calendar[first : first + len(values)]
        index = pd.MultiIndex.from_arrays([days, [inst] * len(values)], names=["datetime", "instrument"])
        parts.append(pd.Series(values, index=index))
    return pd.concat(parts)


def _day_normalised(raw: pd.Series, rows: pd.MultiIndex) -> np.ndarray:
    """``raw`` on ``rows``, each day divided by its mean (every value here is positive: no filling)."""
    values = raw.reindex(rows).astype(np.float64)
    assert np.isfinite(values.to_numpy()).all() and (values.to_numpy() > 0).all(), "setup: no missing value"
    return (values / values.groupby(level=0).transform("mean")).to_numpy()


def test_concept_weight_expression_is_aligned_to_stocks_and_days(demo, short_dataset):
    """``$close*$volume`` gives each row (day, stock) the weight of that stock on that day: the provider's own values
    divided by the day's mean, in every segment's batches (day-sorted), not a neighbour's or the day before's."""
    from qlib_hist.concepts import load_concept_source
    from qlib_hist.qlib_edge.dataset import segment_batches

    raw = _provider_field(demo, "close") * _provider_field(demo, "volume")  # float32, as qlib multiplies
    source = load_concept_source(demo.stock2concept, demo.stock_index)
    for segment in ("train", "valid", "test"):
        rows = short_dataset.prepare(segment, col_set="feature").index
        want = _day_normalised(raw, rows)
        np.testing.assert_allclose(member_weights("$close*$volume", rows, segment).to_numpy(), want, rtol=1e-6)
        batches = segment_batches(short_dataset, segment, segment != "test", source, 6, "$close*$volume")
        np.testing.assert_allclose(
            batches.member_weights.numpy(), _day_normalised(raw, batches.index), rtol=1e-6, err_msg=segment
        )
    # rows in any order (a dataset need not be day-sorted): the batches sort them, and each keeps its own weight
    frame = short_dataset.prepare("train", col_set=["feature", "label"])
    frame = frame.iloc[np.random.default_rng(0).permutation(len(frame))]
    weights = member_weights("$close*$volume", frame.index, "train")
    batches = build_daily_batches(frame, source, "train", 6, True, member_weights=weights)
    np.testing.assert_allclose(batches.member_weights.numpy(), _day_normalised(raw, batches.index), rtol=1e-6)
    # the check can fail: the day before's values, or the next stock's, are other weights (by 10% and more)
    rows = short_dataset.prepare("train", col_set="feature").index
    want = _day_normalised(raw, rows)
    day_before = raw.groupby(level="instrument").shift(1).reindex(rows)
    day_before = (day_before / day_before.groupby(level=0).transform("mean")).to_numpy()
    next_stock = raw.groupby(level="datetime").transform(lambda day: np.roll(day.to_numpy(), 1))
    for other in (day_before, _day_normalised(next_stock, rows)):
        assert np.nanmedian(np.abs(other / want - 1)) > 0.1


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


def test_member_weights_fill_and_normalise(tmp_path):
    days = pd.to_datetime(["2020-01-02", "2020-01-03", "2020-01-06"])
    stocks = ["A", "B", "C", "D"]
    index = pd.MultiIndex.from_product([days, stocks], names=["datetime", "instrument"])
    table = pd.DataFrame(
        {
            "instrument": ["A", "B", "C", "D", "A", "B", "C", "D"],
            "datetime": ["2020-01-02"] * 4 + ["2020-01-03"] * 4,
            # day 1: D has no valid value (0); day 2: B missing (NaN), D negative; day 3: not in the table
            "value": [1.0, 2.0, 6.0, 0.0, 4.0, np.nan, 10.0, -3.0],
        }
    )
    path = tmp_path / "w.csv"
    table.to_csv(path, index=False)
    got = member_weights(str(path), index, "train")
    assert got.dtype == np.float32 and got.index.equals(index)
    day1 = np.array([1.0, 2.0, 6.0, 2.0])  # D <- median(1, 2, 6) = 2
    day2 = np.array([4.0, 7.0, 10.0, 7.0])  # B, D <- median(4, 10) = 7
    expected = np.concatenate([day1 / day1.mean(), day2 / day2.mean(), np.ones(4)])
    np.testing.assert_allclose(got.to_numpy(), expected, rtol=1e-6)
    # rows in any order: each row keeps its own weight (medians and means are per day of the requested rows)
    perm = np.random.default_rng(0).permutation(len(index))
    np.testing.assert_allclose(member_weights(str(path), index[perm], "train").to_numpy(), expected[perm], rtol=1e-6)
    # only the requested rows count: day 1 asked for A and D alone -> D <- median(1) = 1 -> both 1
    np.testing.assert_allclose(member_weights(str(path), index[[0, 3]], "train").to_numpy(), [1.0, 1.0], rtol=1e-6)


def test_member_weights_nothing_valid_is_an_error(tmp_path):
    index = pd.MultiIndex.from_product([pd.to_datetime(["2020-01-02"]), ["A", "B"]], names=["datetime", "instrument"])
    path = tmp_path / "w.csv"
    table = pd.DataFrame({"instrument": ["A", "B"], "datetime": ["2020-01-02"] * 2, "value": [0.0, np.nan]})
    table.to_csv(path, index=False)
    with pytest.raises(DataError, match="w.csv"):
        member_weights(str(path), index, "valid")
