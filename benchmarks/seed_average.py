r"""A row's seed runs averaged into one prediction: the fair peer of an ``ensemble: K`` row, at the same K fits.

    python -m benchmarks.seed_average --grid benchmarks/grids/final.yaml --row qlib_hist_patched \
        --seeds 0 1 2 3 4 --provider-uri ../shared/data/cn_csi300

Each seed's test predictions (``pred.pkl``) are read from the recorder :mod:`benchmarks.run` logged them in
(experiment ``bench_<grid>``, recorder ``<row>_seed<k>``, its last FINISHED run). Each member's scores are
standardised per day, and their mean is the prediction (:func:`average_scores`, the rule of
:class:`qlib_hist.network.SeedEnsemble`; ``y`` a member's scores, ``i`` and ``j`` the day's stocks):

.. math::
    \hat y_i = \frac{1}{K}\sum_k \frac{y^{(k)}_i - \mathrm{mean}_j\, y^{(k)}_j}{\mathrm{std}_j\, y^{(k)}_j}

The mean is scored by the grid's own records, IC analysis and backtest (``SigAnaRecord``, ``PortAnaRecord``),
in a new recorder ``<row>+avg<K>_seed<first>`` (a row with a variant: ``<model>+<variant>_avg<K>``). Its
result file lies beside the members', so ``benchmarks.report`` shows it as one more row. The fit cost is the
members' fit seconds summed, and ``fits`` says how many there are. Seeds without a finished run stop the
command before it writes anything.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks import script_parser
from benchmarks.config import WORKFLOW, qlib_init_kwargs, record_configs, sqlite_uri
from benchmarks.grid import DEFAULT, GridError, RunKey, load_grid
from benchmarks.paths import HERE, SHARED, repo_relative
from benchmarks.run import ROWS, recorded_results
from qlib_hist.atomic_files import atomic_write_text

#: the column of qlib's prediction frames
SCORE = "score"


def average_scores(members: list[pd.Series]) -> pd.Series:
    """The mean of the members' per-day z-scores, on the (datetime, instrument) rows every member scored.

    A day's z-score uses the population std (ddof 0); a member whose scores are equal all day counts 0 for it.

    Shapes:
        - **members:** K series indexed by (datetime, instrument)
        - **output:** one series on their common index, named ``score``
    """
    if not members:
        raise ValueError("average_scores needs at least one member")
    frame = pd.concat(members, axis=1, join="inner")
    by_day = frame.groupby(level="datetime")
    centred = frame - by_day.transform("mean")
    std = centred.pow(2).groupby(level="datetime").transform("mean").pow(0.5)
    z = (centred / std).where(std > 0, 0.0)
    return z.mean(axis=1).rename(SCORE)


def average_key(key: RunKey, count: int) -> RunKey:
    """The run key of the average of ``count`` seeds of ``key``'s row (its seed: the first member's)."""
    variant = f"avg{count}" if key.variant == DEFAULT else f"{key.variant}_avg{count}"
    return RunKey(key.model, variant, key.seed)


def finished_recorder(client: Any, experiment_id: str, name: str) -> str:
    """The run id of the last FINISHED mlflow run called ``name`` (a grid run's recorder); ``SystemExit`` if none."""
    query = f"attributes.run_name = '{name}' and attributes.status = 'FINISHED'"
    runs = client.search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time DESC"])
    if not runs:
        raise SystemExit(f"no finished recorder {name!r} in the grid's experiment: run the grid's seeds first")
    return runs[0].info.run_id


def main(argv: list[str] | None = None) -> int:
    """Command line: average the seeds, score the mean, write its result file; 0 when done."""
    parser = script_parser("benchmarks.seed_average", __doc__)
    parser.add_argument("--grid", required=True, help="the grid file whose runs are averaged")
    parser.add_argument("--row", required=True, help="the row: <model> or <model>+<variant>")
    parser.add_argument("--seeds", nargs="+", type=int, required=True)
    parser.add_argument("--provider-uri", default=str(SHARED / "cn_csi300"))
    parser.add_argument("--benchmark", default=WORKFLOW["benchmark"])
    parser.add_argument("--cache-dir", default=str(HERE / "cache"))
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    parser.add_argument("--tracking-uri", default=None, help="the grid's mlflow store (default: its sqlite file)")
    args = parser.parse_args(argv)
    try:
        grid = load_grid(args.grid, list(ROWS))
    except GridError as err:
        parser.error(str(err))
    model, _, variant = args.row.partition("+")
    keys = [RunKey(model, variant or DEFAULT, seed) for seed in args.seeds]
    if len(set(args.seeds)) != len(args.seeds) or len(keys) < 2:
        parser.error(f"--seeds must be two or more different seeds, got {args.seeds}")
    missing = [key for key in keys if key not in grid.runs()]
    if missing:
        parser.error(f"{args.row} seed {missing[0].seed} is not a run of {grid.source}")
    runs_dir = Path(args.results_dir) / grid.name / "runs"
    results = []
    for key in keys:
        path = runs_dir / key.file_name
        if not path.is_file():
            parser.error(f"{path} does not exist: run the grid's seeds first")
        results.append(json.loads(path.read_text()))
        if "metrics" not in results[-1]:
            parser.error(f"{path} is a crashed run ({results[-1].get('error')}): nothing to average")

    import mlflow
    import qlib
    from qlib.utils import init_instance_by_config
    from qlib.workflow import R

    from qlib_hist.qlib_edge.recorders import artifact_copies_removed

    tracking_uri = args.tracking_uri or sqlite_uri(Path(args.cache_dir).resolve() / "mlruns.db")
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(f"bench_{grid.name}")
    if experiment is None:
        parser.error(f"{tracking_uri} has no experiment bench_{grid.name}: run the grid first")
    run_ids = [finished_recorder(client, experiment.experiment_id, f"{k.row}_seed{k.seed}") for k in keys]
    qlib.init(**qlib_init_kwargs(str(Path(args.provider_uri).resolve()), tracking_uri))
    members = [R.get_recorder(recorder_id=i, experiment_name=experiment.name) for i in run_ids]
    key = average_key(keys[0], len(keys))
    with artifact_copies_removed():  # the reads of the members' and the average's artifacts
        preds = [member.load_object("pred.pkl")[SCORE] for member in members]
        label = members[0].load_object("label.pkl")
        with R.start(experiment_name=experiment.name, recorder_name=f"{key.row}_seed{key.seed}"):
            recorder = R.get_recorder()
            recorder.save_objects(**{"pred.pkl": average_scores(preds).to_frame(), "label.pkl": label})
            for record in record_configs(grid.profile, args.benchmark):
                if record["class"] != "SignalRecord":  # the signal is the mean above, saved as SignalRecord saves it
                    init_instance_by_config(record, recorder=recorder).generate()
        recorded = recorded_results(recorder)
    first = results[0]
    result = {
        "model": key.model,
        "variant": key.variant,
        "settings": first["settings"],
        "seed": key.seed,
        "members": args.seeds,
        "fits": len(keys),
        "grid": grid.name,
        "profile": grid.profile_name,
        "provider_uri": repo_relative(args.provider_uri),
        "host": first.get("host"),
        "config": first["config"],
        "fit_seconds": sum(r["fit_seconds"] for r in results),
        "member_metrics": {str(r["seed"]): r["metrics"] for r in results},
        **recorded,
    }
    atomic_write_text(runs_dir / key.file_name, json.dumps(result, indent=1, default=str))
    print(f"{key.row} ({len(keys)} fits): {result['metrics']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
