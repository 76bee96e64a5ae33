"""The benchmark runner on Ray (``benchmarks.run`` + ``benchmarks.cluster``), on the synthetic provider.

A local Ray with 2 CPUs runs a grid of 1 model x 2 variants x 2 seeds of tiny two-epoch HISTs (GRU base, hidden
size 8) on the demo market. The first run to checkpoint an epoch holds there (a worker setup hook of this test's Ray)
and says so in a file; the test then kills that worker (SIGKILL, as the OOM killer or a lost node would): no race
with the run's end. Ray reruns the task, the killed run resumes from its checkpoint, and the table still completes.
A rerun then submits nothing, and one tracking store holds every run. Last, the grid runs with ``--address`` on a
two-node cluster and spreads over both nodes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("ray")

from benchmarks.report import summary_table  # noqa: E402
from benchmarks.run import main  # noqa: E402

from conftest import qlib_state_kept, tiny_grid  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds Ray's workers through /proc"),
]

TASK_TITLE = b"ray::run_grid_task"  # the process title Ray gives a worker while it runs the task
GRID_ROWS = """
models: [hist_pit]
seeds: [0, 1]
variants:
  small: {hidden_size: 8, num_layers: 1, base_model: GRU, GPU: -1}
  small_topk: {hidden_size: 8, num_layers: 1, base_model: GRU, GPU: -1, hidden_topk: 3}
"""
ROWS = {"hist_pit+small", "hist_pit+small_topk"}


def run_main(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(args)
    return code, out.getvalue()


def task_workers(mark: str) -> list[int]:
    """Pids of the processes running a grid task now whose environment holds ``mark`` (this test's Ray only)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(TASK_TITLE):
                if mark.encode() in (proc / "environ").read_bytes():
                    pids.append(int(proc.name))
        except OSError:  # gone, or not ours
            continue
    return pids


HELD_ENV = "QLIB_HIST_TEST_HELD"  # the file where the held run writes its pid and checkpoint
HOLD_SECONDS = 300.0  # a held run goes on after this long (the test failed to kill it): never a hang


def hold_after_the_first_checkpoint() -> None:
    """Ray worker setup hook (this test's grid only): the first run of the grid to write a checkpoint writes
    ``{"pid", "checkpoint"}`` to ``$QLIB_HIST_TEST_HELD`` and waits there, to be killed; the other runs, and the
    rerun of the killed one, go on."""
    import json
    import os
    import time
    from pathlib import Path

    from qlib_hist.callbacks import Checkpoint

    held = Path(os.environ[HELD_ENV])
    save = Checkpoint.on_epoch_end

    def on_epoch_end(self, trainer, record) -> None:
        save(self, trainer, record)
        if held.exists():
            return
        mine = held.with_name(f"{held.name}.{os.getpid()}")
        mine.write_text(json.dumps({"pid": os.getpid(), "checkpoint": str(self.path)}))
        try:
            os.link(mine, held)  # atomic, and only the first: a run that loses the race goes on
        except FileExistsError:
            return
        time.sleep(HOLD_SECONDS)

    Checkpoint.on_epoch_end = on_epoch_end


class Killer(threading.Thread):
    """Waits for the held run's file, then kills that run's worker (SIGKILL) if it is a task worker of this test's
    Ray: the run holds until then, so the kill always meets it mid-run, checkpoint written."""

    def __init__(self, mark: str, held: Path, timeout: float = 300.0):
        super().__init__(daemon=True)
        self.mark, self.held, self.timeout = mark, held, timeout
        self.killed: list[int] = []
        self.checkpoint: Path | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self.held.exists():
            if self.stop.wait(0.05) or time.monotonic() > deadline:
                return
        held = json.loads(self.held.read_text())
        self.checkpoint = Path(held["checkpoint"])
        if held["pid"] in task_workers(self.mark):
            with contextlib.suppress(ProcessLookupError):
                os.kill(held["pid"], signal.SIGKILL)
                self.killed.append(held["pid"])


@pytest.fixture(scope="module", autouse=True)
def _qlib_state_kept():
    """The grid's driver and the seed average call ``qlib.init`` in this process: undone after the module."""
    with qlib_state_kept():
        yield


@pytest.fixture(scope="module")
def grid_run(demo, tmp_path_factory):
    """The grid run once (2 CPUs, the first run to checkpoint held and its worker killed); its arguments, output,
    exit code, the killed pid and the held run's checkpoint."""
    import ray
    from ray import cloudpickle

    root = tmp_path_factory.mktemp("ray_grid")
    grid = root / "tiny.yaml"
    grid.write_text(tiny_grid(demo.start, 2, GRID_ROWS))
    args = [
        "--grid",
        str(grid),
        "--provider-uri",
        str(demo.provider_uri),
        "--market",
        demo.market,
        "--benchmark",
        demo.benchmark,
        "--membership",
        str(demo.membership),
        "--model-path",
        "",
        "--cache-dir",
        str(root / "cache"),
        "--results-dir",
        str(root / "results"),
        "--cpus",
        "2",
    ]
    mark = f"QLIB_HIST_TEST_{uuid.uuid4().hex}"
    held = root / "held.json"
    init = ray.init

    def init_with_the_hold(*init_args, **kwargs):
        runtime_env = {
            **(kwargs.get("runtime_env") or {}),
            "worker_process_setup_hook": hold_after_the_first_checkpoint,
        }
        return init(*init_args, **{**kwargs, "runtime_env": runtime_env})

    killer = Killer(mark, held)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the hook: the workers cannot import this module
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(mark, "1")  # the local Ray's workers inherit it: the killer touches no other Ray
        patch.setenv(HELD_ENV, str(held))
        patch.setattr(ray, "init", init_with_the_hold)
        killer.start()
        try:
            code, out = run_main(args)
        finally:
            killer.stop.set()
            killer.join()
            cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    return {"args": args, "root": root, "code": code, "out": out, "killed": killer.killed, "held": killer.checkpoint}


def test_grid_completes_after_a_worker_is_killed(grid_run):
    assert grid_run["held"] is not None, "no run held after its first checkpoint"
    assert grid_run["killed"], f"the held run's worker was not a task worker of this test's Ray: {grid_run['held']}"
    assert grid_run["code"] == 0, grid_run["out"]
    assert "submitting 4" in grid_run["out"]
    runs_dir = grid_run["root"] / "results" / "tiny" / "runs"
    files = sorted(p.name for p in runs_dir.glob("*.json"))
    assert files == sorted(f"{row}_seed{seed}.json" for row in ROWS for seed in (0, 1))
    runs = [json.loads((runs_dir / name).read_text()) for name in files]
    for run in runs:
        assert "error" not in run, run.get("traceback")
        assert len(run["metrics"]) == 7  # IC, ICIR, Rank IC, Rank ICIR and the backtest's three
        assert run["grid"] == "tiny" and run["config"]["kwargs"]["hidden_size"] == 8
        assert len(run["epoch_seconds"]) == 2 and run["valid_score"] == max(run["valid_scores"])
        assert run["device"] == "cpu"  # no --gpus-per-run: Ray hides every GPU from the task
    assert {r["config"]["kwargs"].get("hidden_topk", 1) for r in runs} == {1, 3}
    table = summary_table(runs)
    assert table.count("| 0, 1 |") == 2  # both variants, both seeds
    held = grid_run["held"].parent.name.rsplit("_", 1)[0]  # <row>_seed<seed>_<digest>/hist_checkpoint.pt
    resumed = {name.removesuffix(".json"): run["resumed"] for name, run in zip(files, runs)}
    assert resumed[held], f"the killed run {held} started again from epoch 0, not from its checkpoint: {resumed}"
    assert not list((grid_run["root"] / "cache" / "checkpoints" / "tiny").iterdir())  # done runs leave none


def test_rerun_submits_nothing(grid_run):
    import ray

    runs_dir = grid_run["root"] / "results" / "tiny" / "runs"
    before = {p.name: p.stat().st_mtime_ns for p in runs_dir.glob("*.json")}
    code, out = run_main(grid_run["args"])
    assert code == 0 and "4 runs, 4 done, submitting 0" in out
    assert not ray.is_initialized()  # no Ray started for nothing
    assert {p.name: p.stat().st_mtime_ns for p in runs_dir.glob("*.json")} == before


def test_one_store_holds_every_run(grid_run):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{grid_run['root'] / 'cache' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("bench_tiny")
    runs = client.search_runs([experiment.experiment_id])
    finished = sorted(r.info.run_name for r in runs if r.info.status == "FINISHED")
    assert finished == sorted(f"{row}_seed{seed}" for row in ROWS for seed in (0, 1))
    assert {r.info.status for r in runs} == {"FINISHED", "KILLED"}  # a killed attempt is not left RUNNING
    ic = {r.info.run_name: r.data.metrics["IC"] for r in runs if r.info.status == "FINISHED"}
    runs_dir = grid_run["root"] / "results" / "tiny" / "runs"
    for name, value in ic.items():  # the result files hold what the store holds
        assert json.loads((runs_dir / f"{name}.json").read_text())["metrics"]["IC"] == pytest.approx(value)


def test_unknown_variant_argument_stops_the_grid_before_any_run(grid_run, capsys):
    import ray

    grid = grid_run["root"] / "typo.yaml"
    grid.write_text(
        (grid_run["root"] / "tiny.yaml")
        .read_text()
        .replace("name: tiny", "name: typo")
        .replace("hidden_topk", "hiden_topk")
    )
    args = list(grid_run["args"])
    args[args.index("--grid") + 1] = str(grid)
    with pytest.raises(SystemExit) as exit_:
        run_main(args)
    assert exit_.value.code == 2
    assert "variants.small_topk: ['hiden_topk'] are not HIST arguments" in capsys.readouterr().err
    assert not ray.is_initialized() and not (grid_run["root"] / "results" / "typo").exists()


def test_the_same_grid_on_a_two_node_cluster(grid_run, tmp_path):
    """``--address``: the driver joins a running cluster (two nodes of one CPU each, as ``ray start`` makes them)
    and the runs spread over both; the cluster outlives the grid."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        args = list(grid_run["args"])
        for flag in ("--results-dir", "--tracking-uri"):
            if flag in args:
                i = args.index(flag)
                del args[i : i + 2]
        args[args.index("--cpus") : args.index("--cpus") + 2] = ["--address", cluster.address]
        args += ["--results-dir", str(tmp_path), "--tracking-uri", f"sqlite:///{tmp_path / 'cluster.db'}"]
        code, out = run_main(args)
        assert code == 0, out
        runs = [json.loads(p.read_text()) for p in sorted((tmp_path / "tiny" / "runs").glob("*.json"))]
        assert len(runs) == 4 and all(len(r["metrics"]) == 7 for r in runs)
        assert len({r["ray_node"] for r in runs}) == 2  # both nodes worked
        assert not ray.is_initialized()  # the driver left; the cluster is still up
        assert cluster.remaining_processes_alive()  # both nodes, all their processes
    finally:
        cluster.shutdown()


def test_seed_average_scores_the_mean_of_the_seeds_standardised(grid_run, tmp_path):
    """``benchmarks.seed_average`` on the grid's two seeds (its store and results copied, so the grid's stay as
    they are): one more result file, whose daily IC is that of the mean of the members' per-day z-scores."""
    import shutil

    import mlflow
    import pandas as pd
    import qlib
    from qlib.workflow import R

    from benchmarks.seed_average import average_scores, finished_recorder
    from benchmarks.seed_average import main as average_main

    root = grid_run["root"]
    shutil.copy(root / "cache" / "mlruns.db", tmp_path / "store.db")
    shutil.copytree(root / "results", tmp_path / "results")
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    args = grid_run["args"]
    provider, benchmark = args[args.index("--provider-uri") + 1], args[args.index("--benchmark") + 1]
    common = ["--grid", str(root / "tiny.yaml"), "--provider-uri", provider, "--benchmark", benchmark]
    common += ["--results-dir", str(tmp_path / "results"), "--tracking-uri", uri]
    scratch = tmp_path / "scratch"  # the system's temporary folder, as the command sees it
    scratch.mkdir()
    with contextlib.redirect_stdout(io.StringIO()), pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(scratch))
        assert average_main([*common, "--row", "hist_pit+small", "--seeds", "0", "1"]) == 0
    assert not any(scratch.iterdir())  # qlib's copies of the loaded artifacts removed
    result = json.loads((tmp_path / "results" / "tiny" / "runs" / "hist_pit+small_avg2_seed0.json").read_text())
    assert result["members"] == [0, 1] and result["fits"] == 2 and len(result["metrics"]) == 7
    members = [
        json.loads((tmp_path / "results" / "tiny" / "runs" / f"hist_pit+small_seed{s}.json").read_text())
        for s in (0, 1)
    ]
    assert result["fit_seconds"] == pytest.approx(sum(m["fit_seconds"] for m in members))

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("bench_tiny")
    qlib.init(
        provider_uri=provider,
        region="cn",
        exp_manager={
            "class": "MLflowExpManager",
            "module_path": "qlib.workflow.expm",
            "kwargs": {"uri": uri, "default_exp_name": "x"},
        },
    )
    preds = []
    for seed in (0, 1):
        run_id = finished_recorder(client, experiment.experiment_id, f"hist_pit+small_seed{seed}")
        preds.append(R.get_recorder(recorder_id=run_id, experiment_name="bench_tiny").load_object("pred.pkl")["score"])
    label = R.get_recorder(recorder_id=run_id, experiment_name="bench_tiny").load_object("label.pkl").iloc[:, 0]
    mean = average_scores(preds)
    expected = mean.groupby(level="datetime").apply(lambda day: day.corr(label.loc[day.index]))
    got = pd.Series(result["daily_ic"])
    assert list(got.index) == [str(d.date()) for d in expected.index]
    assert got.to_numpy() == pytest.approx(expected.to_numpy(), abs=1e-9)

    with pytest.raises(SystemExit):  # a seed without a finished run stops it before anything is written
        with contextlib.redirect_stderr(io.StringIO()):
            average_main([*common, "--row", "hist_pit+small", "--seeds", "0", "2"])
