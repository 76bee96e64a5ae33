"""The core imports no qlib: every module outside ``qlib_hist.qlib_edge`` loads with ``import qlib`` blocked."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import qlib_hist

ROOT = Path(__file__).resolve().parents[1]
#: the core modules named in the package's layout; every other module outside the edge is checked too
NAMED = [
    "qlib_hist",
    "qlib_hist.settings",
    "qlib_hist.network",
    "qlib_hist.batches",
    "qlib_hist.metrics",
    "qlib_hist.training",
    "qlib_hist.callbacks",
    "qlib_hist.explain",
    "qlib_hist.explain_report",
    "qlib_hist.member_weights",
    "qlib_hist.pretrained",
    "qlib_hist.demo_data",
    "qlib_hist.cli",
    "qlib_hist.atomic_files",
    "qlib_hist.digests",
    "qlib_hist.config_dates",
    "qlib_hist.errors",
    "qlib_hist._plotting",
    "qlib_hist.concepts",
]
EDGE = ("qlib_hist.qlib_edge", "qlib_hist.model")  # qlib_hist.model: 0.1.0's pickles find HIST there
CORE = ["qlib_hist"] + sorted(
    m.name
    for m in pkgutil.walk_packages(qlib_hist.__path__, "qlib_hist.")
    if not (m.name in EDGE or m.name.startswith(EDGE[0] + "."))
)

BLOCK_QLIB = textwrap.dedent("""
    import importlib.abc
    import sys

    class BlockQlib(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "qlib" or name.startswith("qlib."):
                raise ImportError(f"qlib is blocked: {name}")
            return None

    sys.meta_path.insert(0, BlockQlib())
""")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_core_modules_import_without_qlib():
    assert set(NAMED) <= set(CORE)
    concepts = {"base", "download", "legacy", "legacy_export", "membership", "report", "shenwan"}
    assert {f"qlib_hist.concepts.{name}" for name in concepts} <= set(CORE)
    code = BLOCK_QLIB + textwrap.dedent(f"""
        import importlib
        for name in {CORE!r}:
            importlib.import_module(name)
        loaded = sorted(m for m in sys.modules if m == "qlib" or m.startswith("qlib."))
        assert not loaded, loaded
        print("ok")
    """)
    proc = _python(code)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_the_block_works_on_the_qlib_edge():
    proc = _python(BLOCK_QLIB + "import qlib_hist.qlib_edge.model\n")
    assert proc.returncode != 0
    assert "ImportError: qlib is blocked: qlib" in proc.stderr, proc.stderr[-3000:]


def test_explain_does_not_import_the_edge():
    """``qlib_hist.explain`` names ``HISTExplainRecord`` lazily: importing it loads neither qlib nor the edge."""
    code = textwrap.dedent("""
        import sys
        import qlib_hist.explain
        import qlib_hist.explain_report
        loaded = sorted(m for m in sys.modules if m.startswith(("qlib_hist.qlib_edge", "qlib.")) or m == "qlib")
        assert not loaded, loaded
        print("ok")
    """)
    proc = _python(code)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
