"""qlib's legacy concept inputs (stock2concept .npy + stock_index) and the stock2concept download."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from qlib_hist.concepts import (
    ConceptError,
    LegacyConcepts,
    download_stock2concept,
    load_concept_source,
)
from qlib_hist.concepts.legacy import load_stock2concept, load_stock_index

from conftest import shared_file

DATES = np.array(["2020-01-02"] * 4 + ["2020-01-03"] * 4, dtype="datetime64[ns]")


def refused_naming(load, path, match=None) -> ConceptError:
    """``load(path)`` raises a :class:`ConceptError` (matching ``match``) that names ``path``."""
    with pytest.raises(ConceptError, match=match) as err:
        load(path)
    assert str(path) in str(err.value)
    return err.value


def _matrix(n_stocks: int = 5, n_concepts: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = (rng.random((n_stocks, n_concepts)) < 0.5).astype(np.float32)
    m[:, 0] = 1.0  # no stock row is all zeros, so a zero row can only be the "unknown" row
    return m


def _write_npy_index(path: Path, mapping: dict) -> Path:
    np.save(path, mapping, allow_pickle=True)  # a 0-d object array holding the dict, as qlib ships it
    return path


def _legacy_files(tmp_path: Path, matrix: np.ndarray, mapping: dict, index_suffix: str = ".npy"):
    s2c = tmp_path / "stock2concept.npy"
    np.save(s2c, matrix)
    idx = tmp_path / f"stock_index{index_suffix}"
    if index_suffix == ".json":
        idx.write_text(json.dumps(mapping))
    else:
        _write_npy_index(idx, mapping)
    return s2c, idx


# ----------------------------------------------------------------------------- LegacyConcepts
@pytest.mark.parametrize("suffix", [".npy", ".json"])
def test_known_and_unknown_rows(tmp_path, suffix):
    matrix = _matrix()
    mapping = {"SH600000": 3, "SZ000001": 0, "SH600519": 4}
    s2c, idx = _legacy_files(tmp_path, matrix, mapping, suffix)
    source = LegacyConcepts(s2c, idx)
    instruments = np.array(["SH600000", "SZ000001", "SZ300750", "SH600519"] * 2)
    seg = source.for_rows(instruments, DATES)

    assert seg.matrix.dtype == np.float32 and seg.row_index.dtype == np.int64
    assert seg.matrix.shape == (len(matrix) + 1, matrix.shape[1])
    assert not seg.matrix[-1].any()  # the appended zero row
    dense = seg.matrix[seg.row_index]
    for i, inst in enumerate(instruments):
        if inst in mapping:
            np.testing.assert_array_equal(dense[i], matrix[mapping[inst]])
        else:
            assert seg.row_index[i] == len(matrix)
            assert not dense[i].any()
    assert seg.n_unknown == 2
    assert seg.unknown_instruments == ["SZ300750"]
    assert seg.matrix.shape[1] == matrix.shape[1]  # SegmentConcepts.n_concepts was removed in 0.2.0


def test_unknown_stock_never_gets_row_733(tmp_path):
    """qlib maps unknown stocks to row 733 (a real stock); here they get the zero row."""
    matrix = np.zeros((735, 6), dtype=np.float32)
    matrix[733] = [1, 0, 1, 0, 1, 1]
    matrix[0, 2] = 1.0
    mapping = {"SH600000": 0, "SZ002958": 733}
    s2c, idx = _legacy_files(tmp_path, matrix, mapping)
    seg = LegacyConcepts(s2c, idx).for_rows(np.array(["SZ002958", "SH999999", "SZ888888", "SH600000"]), DATES[:4])
    assert seg.row_index[0] == 733
    assert seg.row_index[1] == seg.row_index[2] == 735
    assert 733 not in seg.row_index[1:3].tolist()
    assert not seg.matrix[seg.row_index[1:3]].any()
    np.testing.assert_array_equal(seg.matrix[seg.row_index[3]], matrix[0])
    assert seg.n_unknown == 2 and seg.unknown_instruments == ["SH999999", "SZ888888"]


def test_no_unknown(tmp_path):
    s2c, idx = _legacy_files(tmp_path, _matrix(), {"A": 0, "B": 1})
    seg = LegacyConcepts(s2c, idx).for_rows(np.array(["A", "B", "B", "A"]), DATES[:4])
    assert seg.n_unknown == 0 and seg.unknown_instruments == []
    assert seg.row_index.tolist() == [0, 1, 1, 0]


def test_stock_index_formats_agree(tmp_path):
    mapping = {"SH600000": 2, "SZ000001": 0, "SH601318": 1}
    npy = _write_npy_index(tmp_path / "idx.npy", mapping)
    js = tmp_path / "idx.json"
    js.write_text(json.dumps(mapping))
    assert load_stock_index(npy) == mapping
    assert load_stock_index(js) == mapping


@pytest.mark.realdata
def test_qlib_stock_index_file():
    path = shared_file("qlib_reference/qlib_csi300_stock_index.npy")
    mapping = load_stock_index(path)
    assert len(mapping) == 735
    assert mapping["SZ002958"] == 733
    assert all(isinstance(k, str) and isinstance(v, int) for k, v in mapping.items())


def test_concept_names_from_sidecar(tmp_path):
    matrix = _matrix(3, 2)
    s2c, idx = _legacy_files(tmp_path, matrix, {"A": 0})
    (tmp_path / "stock2concept.concepts.json").write_text(json.dumps(["bank", "tech"]))
    source = load_concept_source(s2c, idx, stock2concept_url=None)
    assert isinstance(source, LegacyConcepts)
    assert source.for_rows(np.array(["A"]), DATES[:1]).names == ["bank", "tech"]
    with pytest.raises(ConceptError, match="concept names"):
        LegacyConcepts(s2c, idx, concept_names=["only one"])


# ----------------------------------------------------------------------------- errors
def test_stock_index_beyond_matrix_rows(tmp_path):
    s2c, idx = _legacy_files(tmp_path, _matrix(5), {"SH600000": 1, "SZ000999": 5})
    with pytest.raises(ConceptError) as err:
        LegacyConcepts(s2c, idx)
    msg = str(err.value)
    assert "SZ000999" in msg and "5" in msg
    assert "0..4" in msg  # the rows the matrix has
    assert str(idx) in msg and str(s2c) in msg


def test_stock_index_negative_row(tmp_path):
    s2c, idx = _legacy_files(tmp_path, _matrix(5), {"SH600000": -1})
    with pytest.raises(ConceptError, match="SH600000"):
        LegacyConcepts(s2c, idx)


@pytest.mark.parametrize("bad", [np.zeros(7, dtype=np.float32), np.zeros((2, 3, 4), dtype=np.float32)])
def test_matrix_not_2d(tmp_path, bad):
    path = tmp_path / "s2c.npy"
    np.save(path, bad)
    refused_naming(load_stock2concept, path, "2-D")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_matrix_not_finite(tmp_path, value):
    m = _matrix()
    m[2, 1] = value
    s2c, idx = _legacy_files(tmp_path, m, {"A": 0})
    with pytest.raises(ConceptError, match="NaN") as err:
        LegacyConcepts(s2c, idx)
    assert str(s2c) in str(err.value)


@pytest.mark.parametrize("content", [b"definitely not an npy file", b"\x93NUMPY\x01\x00v\x00{'descr'"])
def test_unreadable_matrix(tmp_path, content):
    path = tmp_path / "s2c.npy"
    path.write_bytes(content)
    refused_naming(load_stock2concept, path)


def test_non_numeric_matrix(tmp_path):
    path = tmp_path / "s2c.npy"
    np.save(path, np.array([["a", "b"], ["c", "d"]]))
    refused_naming(load_stock2concept, path)


def test_truncated_matrix(tmp_path):
    path = tmp_path / "s2c.npy"
    np.save(path, np.ones((50, 40), dtype=np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    refused_naming(load_stock2concept, path)


def test_matrix_missing_file(tmp_path):
    path = tmp_path / "nope.npy"
    refused_naming(load_stock2concept, path)


def test_stock_index_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    refused_naming(load_stock_index, path, "not found")


@pytest.mark.parametrize(
    "name, content",
    [("idx.json", b"{not json"), ("idx.json", b"[1, 2, 3]"), ("idx.json", b"{}"), ("idx.json", b'{"A": "x"}')],
)
def test_stock_index_bad_content(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    refused_naming(load_stock_index, path)


def test_stock_index_npy_not_a_dict(tmp_path):
    path = tmp_path / "idx.npy"
    np.save(path, np.arange(5))
    refused_naming(load_stock_index, path, "dict")


def test_stock_index_unreadable_npy(tmp_path):
    path = tmp_path / "idx.npy"
    path.write_bytes(b"definitely not an npy file")
    refused_naming(load_stock_index, path)


def test_load_concept_source_needs_stock_index(tmp_path):
    s2c = tmp_path / "stock2concept.npy"
    np.save(s2c, _matrix())
    with pytest.raises(ConceptError, match="stock_index") as err:
        load_concept_source(s2c, None)
    assert str(s2c) in str(err.value)


def test_load_concept_source_needs_stock2concept():
    with pytest.raises(ConceptError, match="stock2concept"):
        load_concept_source(None, "whatever.npy")


def test_load_concept_source_missing_file_download_off(tmp_path):
    s2c = tmp_path / "stock2concept.npy"
    for url in (None, ""):
        with pytest.raises(ConceptError, match="does not exist") as err:
            load_concept_source(s2c, tmp_path / "idx.json", stock2concept_url=url)
        assert str(s2c) in str(err.value)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- download from a local server
GOOD = np.arange(24, dtype=np.float32).reshape(6, 4) % 2


def _npy_bytes(array: np.ndarray, tmp_path: Path) -> bytes:
    p = tmp_path / "_src.npy"
    np.save(p, array)
    data = p.read_bytes()
    p.unlink()
    return data


class _Server:
    """A local HTTP server whose answers per path are set by the test; counts requests per path."""

    def __init__(self):
        self.routes = {}  # path -> list of (status, body, truncate); the last entry repeats
        self.hits = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                n = server.hits.get(self.path, 0)
                server.hits[self.path] = n + 1
                answers = server.routes.get(self.path, [(404, b"not found", False)])
                status, body, truncate = answers[min(n, len(answers) - 1)]
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body[: len(body) // 3] if truncate else body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = _Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _assert_failed_cleanly(err: ConceptError, target: Path, url: str) -> None:
    msg = str(err)
    assert str(target) in msg and url in msg
    assert "qlib-hist concepts" in msg  # says how to build the file instead
    assert not target.exists()
    assert list(target.parent.iterdir()) == [], "temporary files left behind"


def test_download_good(server, tmp_path):
    server.routes["/s2c.npy"] = [(200, _npy_bytes(GOOD, tmp_path), False)]
    target = tmp_path / "sub" / "stock2concept.npy"
    out = download_stock2concept(target, server.url("/s2c.npy"), timeout=10)
    assert Path(out) == target and target.exists()
    np.testing.assert_array_equal(np.load(target), GOOD)
    assert [p.name for p in target.parent.iterdir()] == ["stock2concept.npy"]
    assert server.hits["/s2c.npy"] == 1


@pytest.mark.parametrize(
    "answers",
    [
        [(404, b"not found", False)],
        [(200, b"", True)],  # set below: a body cut short (connection closed before Content-Length)
        [(200, b"", False)],  # set below: a complete HTTP answer holding a truncated .npy
        [(200, b"<html>rate limited</html>", False)],
        [(500, b"oops", False)],
    ],
    ids=["404", "truncated-body", "truncated-npy", "not-npy", "always-500"],
)
def test_download_failure_leaves_nothing(server, tmp_path, answers, request):
    good = _npy_bytes(np.ones((40, 30), dtype=np.float32), tmp_path)
    case = request.node.callspec.id
    if case == "truncated-body":
        answers = [(200, good, True)]
    elif case == "truncated-npy":
        answers = [(200, good[: len(good) // 2], False)]
    server.routes["/s2c.npy"] = answers
    target = tmp_path / "stock2concept.npy"
    url = server.url("/s2c.npy")
    with pytest.raises(ConceptError) as err:
        download_stock2concept(target, url, timeout=10)
    _assert_failed_cleanly(err.value, target, url)
    assert server.hits["/s2c.npy"] == 2  # one retry, no more


def test_download_retry_once_succeeds(server, tmp_path):
    good = _npy_bytes(GOOD, tmp_path)
    server.routes["/flaky.npy"] = [(503, b"busy", False), (200, good, False)]
    target = tmp_path / "stock2concept.npy"
    download_stock2concept(target, server.url("/flaky.npy"), timeout=10)
    np.testing.assert_array_equal(np.load(target), GOOD)
    assert server.hits["/flaky.npy"] == 2


def test_download_retry_after_truncated_body(server, tmp_path):
    good = _npy_bytes(GOOD, tmp_path)
    server.routes["/flaky.npy"] = [(200, good, True), (200, good, False)]
    target = tmp_path / "stock2concept.npy"
    download_stock2concept(target, server.url("/flaky.npy"), timeout=10)
    np.testing.assert_array_equal(np.load(target), GOOD)
    assert server.hits["/flaky.npy"] == 2


def test_download_refuses_1d_array(server, tmp_path):
    server.routes["/s2c.npy"] = [(200, _npy_bytes(np.arange(5.0), tmp_path), False)]
    target = tmp_path / "stock2concept.npy"
    with pytest.raises(ConceptError, match="2-D") as err:
        download_stock2concept(target, server.url("/s2c.npy"), timeout=10)
    _assert_failed_cleanly(err.value, target, server.url("/s2c.npy"))


def test_load_concept_source_downloads_missing_matrix(server, tmp_path):
    server.routes["/s2c.npy"] = [(200, _npy_bytes(GOOD, tmp_path), False)]
    s2c = tmp_path / "stock2concept.npy"
    idx = tmp_path / "stock_index.json"
    idx.write_text(json.dumps({"SH600000": 5, "SZ000001": 2}))
    source = load_concept_source(s2c, idx, stock2concept_url=server.url("/s2c.npy"))
    assert isinstance(source, LegacyConcepts)
    assert s2c.exists()
    np.testing.assert_array_equal(source.matrix, GOOD)
    seg = source.for_rows(np.array(["SH600000", "SZ000001", "SH000000"]), DATES[:3])
    np.testing.assert_array_equal(seg.matrix[seg.row_index[:2]], GOOD[[5, 2]])
    # the file is there now: a second load does not download again
    load_concept_source(s2c, idx, stock2concept_url=server.url("/s2c.npy"))
    assert server.hits["/s2c.npy"] == 1


def test_load_concept_source_download_404(server, tmp_path):
    s2c = tmp_path / "stock2concept.npy"
    idx = tmp_path / "stock_index.json"
    idx.write_text(json.dumps({"SH600000": 0}))
    url = server.url("/missing.npy")
    with pytest.raises(ConceptError) as err:
        load_concept_source(s2c, idx, stock2concept_url=url)
    msg = str(err.value)
    assert str(s2c) in msg and url in msg and "qlib-hist concepts" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stock_index.json"]
