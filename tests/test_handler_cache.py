"""The on-disk handler cache: its key, and that a cached handler gives the original handler's frames."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from qlib_hist.qlib_edge.handler_cache import cache_key, cached_handler

from conftest import alpha360_kwargs, init_qlib

CONFIG = {
    "class": "Alpha360",
    "module_path": "qlib.contrib.data.handler",
    "kwargs": {"instruments": "all", "start_time": "2016-01-04", "end_time": "2016-12-30"},
}


@pytest.fixture
def provider(tmp_path):
    (tmp_path / "calendars").mkdir()
    (tmp_path / "instruments").mkdir()
    (tmp_path / "calendars" / "day.txt").write_text("2016-01-04\n2016-01-05\n")
    (tmp_path / "instruments" / "all.txt").write_text("SH600000\t2016-01-04\t2016-01-05\n")
    return tmp_path


def test_key_ignores_modification_times(provider):
    before = cache_key(CONFIG, provider)
    for file in [provider / "calendars" / "day.txt", provider / "instruments" / "all.txt"]:
        os.utime(file, (1, 1))  # a re-mounted or copied provider gets new times, same contents
    assert cache_key(CONFIG, provider) == before


def test_key_changes_with_calendar_instruments_and_settings(provider):
    before = cache_key(CONFIG, provider)
    other_dates = {**CONFIG, "kwargs": {**CONFIG["kwargs"], "end_time": "2016-06-30"}}
    assert cache_key(other_dates, provider) != before

    (provider / "instruments" / "all.txt").write_text("SH600000\t2016-01-04\t2016-01-04\n")
    after_universe = cache_key(CONFIG, provider)
    assert after_universe != before

    with open(provider / "calendars" / "day.txt", "a") as f:
        f.write("2016-01-06\n")
    assert cache_key(CONFIG, provider) not in (before, after_universe)


def test_cached_handler_matches_original_and_is_reused(demo, demo_handler, tmp_path, monkeypatch):
    from qlib.data.dataset.handler import DataHandlerLP

    init_qlib(demo.provider_uri)
    config = {"class": "Alpha360", "module_path": "qlib.contrib.data.handler", "kwargs": alpha360_kwargs(demo)}
    built = cached_handler(config, demo.provider_uri, tmp_path)
    (entry,) = tmp_path.glob("Alpha360_*")  # one entry (a file or a folder, as the store writes it)
    for key in (DataHandlerLP.DK_I, DataHandlerLP.DK_L):
        pd.testing.assert_frame_equal(built.fetch(data_key=key), demo_handler.fetch(data_key=key))

    def no_build(*args, **kwargs):
        raise AssertionError("the second call rebuilt the handler")

    monkeypatch.setattr("qlib.utils.init_instance_by_config", no_build)
    again = cached_handler(config, demo.provider_uri, tmp_path)
    learn = DataHandlerLP.DK_L
    pd.testing.assert_frame_equal(again.fetch(data_key=learn), demo_handler.fetch(data_key=learn))
    assert list(tmp_path.glob("Alpha360_*")) == [entry]


def test_cached_handler_class_in_a_task_config(demo, demo_handler, tmp_path, monkeypatch):
    """``CachedHandler`` is what a qlib task dict names (e.g. rolling windows that several runs share): the same
    frames as the handler it wraps, built once."""
    from qlib.data.dataset.handler import DataHandlerLP
    from qlib.utils import init_instance_by_config

    init_qlib(demo.provider_uri)
    config = {
        "class": "CachedHandler",
        "module_path": "qlib_hist.qlib_edge.handler_cache",
        "kwargs": {
            "handler_class": "Alpha360",
            "handler_module": "qlib.contrib.data.handler",
            "cache_dir": str(tmp_path),
            **alpha360_kwargs(demo),
        },
    }
    built = init_instance_by_config(config)
    assert len(list(tmp_path.glob("Alpha360_*"))) == 1
    for key in (DataHandlerLP.DK_I, DataHandlerLP.DK_L):
        pd.testing.assert_frame_equal(built.fetch(data_key=key), demo_handler.fetch(data_key=key))

    def no_build(*args, **kwargs):
        raise AssertionError("the second handler was rebuilt")

    monkeypatch.setattr("qlib.utils.init_instance_by_config", no_build)
    from qlib_hist.qlib_edge.handler_cache import CachedHandler

    (entry,) = tmp_path.glob("Alpha360_*")
    assert CachedHandler.prepare(**config["kwargs"]) == entry  # the entry the handler loaded: nothing to build
    again = CachedHandler(**config["kwargs"])
    pd.testing.assert_frame_equal(
        again.fetch(data_key=DataHandlerLP.DK_L), demo_handler.fetch(data_key=DataHandlerLP.DK_L)
    )


def test_ensure_cached_builds_once_and_reads_nothing_back(demo, demo_handler, tmp_path, monkeypatch):
    """A grid's driver prepares the entry its workers load, without holding the frame itself."""
    from qlib.data.dataset.handler import DataHandlerLP

    from qlib_hist.qlib_edge import handler_cache

    init_qlib(demo.provider_uri)
    config = {"class": "Alpha360", "module_path": "qlib.contrib.data.handler", "kwargs": alpha360_kwargs(demo)}

    def no_read(*args, **kwargs):
        raise AssertionError("ensure_cached read the frame back")

    monkeypatch.setattr(handler_cache, "read_frame", no_read)
    entry = handler_cache.ensure_cached(config, demo.provider_uri, tmp_path)
    assert entry.exists() and list(tmp_path.glob("Alpha360_*")) == [entry]
    monkeypatch.setattr("qlib.utils.init_instance_by_config", no_read)  # present: neither built nor read
    assert handler_cache.ensure_cached(config, demo.provider_uri, tmp_path) == entry
    monkeypatch.undo()
    learn = DataHandlerLP.DK_L
    loaded = cached_handler(config, demo.provider_uri, tmp_path)
    pd.testing.assert_frame_equal(loaded.fetch(data_key=learn), demo_handler.fetch(data_key=learn))


def test_prepare_builds_the_entry_a_cached_handler_loads(demo, demo_handler, tmp_path, monkeypatch):
    """A rolling benchmark's driver prepares each window's ``CachedHandler`` entry; the tasks only load it."""
    from qlib.data.dataset.handler import DataHandlerLP

    from qlib_hist.qlib_edge.handler_cache import CachedHandler

    init_qlib(demo.provider_uri)
    kwargs = {"handler_class": "Alpha360", "handler_module": "qlib.contrib.data.handler", **alpha360_kwargs(demo)}
    entry = CachedHandler.prepare(cache_dir=str(tmp_path), **kwargs)
    assert list(tmp_path.glob("Alpha360_*")) == [entry]

    def no_build(*args, **kwargs):
        raise AssertionError("the prepared handler was built again")

    monkeypatch.setattr("qlib.utils.init_instance_by_config", no_build)
    loaded = CachedHandler(cache_dir=str(tmp_path), **kwargs)
    learn = DataHandlerLP.DK_L
    pd.testing.assert_frame_equal(loaded.fetch(data_key=learn), demo_handler.fetch(data_key=learn))


def _key_before_dates_were_normalised(handler_config: dict, provider) -> str:
    """``cache_key`` as written before: the sha1 of the JSON of the config as given (existing caches use it)."""
    import hashlib
    import json
    from pathlib import Path

    from qlib_hist.qlib_edge.handler_cache import CACHE_VERSION, _provider_digest

    resolved = Path(provider).expanduser().resolve()
    payload = {"v": CACHE_VERSION, "provider": str(resolved), "content": _provider_digest(resolved)}
    payload["handler"] = handler_config
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_a_date_a_timestamp_and_a_string_of_the_same_day_give_one_key(provider):
    import datetime

    def with_times(start, end) -> dict:
        kwargs = {**CONFIG["kwargs"], "start_time": start, "end_time": end, "fit_start_time": start}
        return {**CONFIG, "kwargs": kwargs}

    keys = {
        cache_key(with_times("2016-01-04", "2016-12-30"), provider),
        cache_key(with_times(datetime.date(2016, 1, 4), datetime.date(2016, 12, 30)), provider),
        cache_key(with_times(pd.Timestamp("2016-01-04"), pd.Timestamp("2016-12-30")), provider),
        cache_key(with_times(datetime.datetime(2016, 1, 4), "2016-12-30"), provider),
    }
    assert len(keys) == 1
    assert cache_key(with_times("2016-01-04", "2016-12-29"), provider) not in keys  # another day: another key
    assert cache_key(with_times(pd.Timestamp("2016-01-04 09:30"), "2016-12-30"), provider) not in keys


def test_keys_of_configs_with_string_dates_did_not_change(provider):
    """Existing caches (and a benchmark running on them) were keyed from configs whose dates are ``YYYY-MM-DD``
    strings: their keys stay."""
    from benchmarks.config import PROFILES, handler_config

    configs = [CONFIG]
    for profile in PROFILES.values():
        configs.append(handler_config("csi300", profile["start"], profile["end"], profile["fit"]))
    for config in configs:
        assert cache_key(config, provider) == _key_before_dates_were_normalised(config, provider)
    assert len({cache_key(config, provider) for config in configs}) > 1


def test_a_bad_date_in_a_handler_config_names_its_key(provider):
    from qlib_hist.config_dates import ConfigDateError

    bad = {**CONFIG, "kwargs": {**CONFIG["kwargs"], "end_time": "2016-13-45"}}
    with pytest.raises(ConfigDateError, match=r"handler\.kwargs\.end_time: expected a date"):
        cache_key(bad, provider)
