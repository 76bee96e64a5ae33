"""End to end through qlib's real `qrun` command: the demo YAML, HIST, and qlib's three records."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qlib_hist.demo_data import write_demo_provider
from qlib_hist.qlib_edge.demo import DEMO_YAML, write_demo_config
from qlib_hist.qlib_edge.recorders import REPORT_METRICS, latest_recorder, recorder_report

pytestmark = pytest.mark.slow


def qrun_executable() -> str:
    found = shutil.which("qrun") or str(Path(sys.executable).with_name("qrun"))
    if not Path(found).exists():
        pytest.skip("qrun is not installed")
    return found


@pytest.fixture(scope="module")
def qrun_dir(tmp_path_factory):
    """The demo data (30 stocks) and its YAML with one epoch, run once by `qrun` in a clean environment."""
    out = tmp_path_factory.mktemp("qrun_demo")
    write_demo_provider(out, n_stocks=30, seed=1)
    config = write_demo_config(out, seed=1, n_epochs=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # no file-store opt-out
    (out / "tmp").mkdir()
    env["TMPDIR"] = str(out / "tmp")  # the artifact copies qlib's recorder leaves stay in the test's folder
    proc = subprocess.run(
        [qrun_executable(), str(config)], cwd=out, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


def test_qrun_writes_the_three_records(qrun_dir):
    import qlib

    config = yaml.safe_load((qrun_dir / "workflow_config_hist_demo.yaml").read_text())
    assert config["task"]["model"]["module_path"] == "qlib_hist"
    assert config["task"]["model"]["kwargs"]["n_epochs"] == 1 and config["task"]["model"]["kwargs"]["seed"] == 1
    assert (qrun_dir / "mlruns.db").exists()  # the sqlite tracking store from the YAML, not ./mlruns' file store
    cwd = Path.cwd()
    os.chdir(qrun_dir)
    try:
        qlib.init(**config["qlib_init"])
        recorder = latest_recorder(config["experiment_name"])
        pred = recorder.load_object("pred.pkl")  # SignalRecord
        ic = recorder.load_object("sig_analysis/ic.pkl")  # SigAnaRecord
        report = recorder.load_object("portfolio_analysis/report_normal_1day.pkl")  # PortAnaRecord
        figures = recorder_report(recorder)
        explanations = recorder.load_object("explain/explanations.pkl")  # HISTExplainRecord
    finally:
        os.chdir(cwd)
    assert len(pred) > 1000 and pred.notna().all().all()
    assert len(ic) > 100 and ic.notna().mean() > 0.9
    assert {"return", "bench", "cost"} <= set(report.columns) and len(report) > 100
    assert set(figures) == set(REPORT_METRICS)
    assert explanations.index.equals(pred.index)
    parts = explanations[["concept", "hidden_concept", "individual", "bias"]].sum(axis=1)
    assert (parts - pred.iloc[:, 0]).abs().max() < 1e-5
    assert all(abs(v) < 1e3 for v in figures.values())


def test_packaged_demo_yaml_is_the_repo_default():
    config = yaml.safe_load(DEMO_YAML.read_text())
    assert config["qlib_init"]["exp_manager"]["kwargs"]["uri"].startswith("sqlite:")
    records = [r["class"] for r in config["task"]["record"]]
    assert records == ["SignalRecord", "SigAnaRecord", "PortAnaRecord", "HISTExplainRecord"]


def test_top_level_yaml_differs_from_qlib_only_in_module_path_and_store():
    root = Path(__file__).resolve().parents[1]
    ours = yaml.safe_load((root / "workflow_config_hist_Alpha360.yaml").read_text())
    model = ours["task"]["model"]
    assert model["class"] == "HIST" and model["module_path"] == "qlib_hist"
    assert [str(d) for d in ours["task"]["dataset"]["kwargs"]["segments"]["test"]] == ["2017-01-01", "2020-08-01"]
    assert float(model["kwargs"]["lr"]) == 1e-4 and model["kwargs"]["base_model"] == "LSTM"
    assert ours["port_analysis_config"]["strategy"]["kwargs"]["topk"] == 50
