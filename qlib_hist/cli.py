"""``qlib-hist`` command line: thin wrappers that parse, call the library and print.

    qlib-hist demo [--out DIR] [--seed N] [--epochs N]
    qlib-hist concepts from-sw SW_CSV OUT [--levels 1,2,3]
    qlib-hist concepts from-returns --provider-uri DIR --start DATE --end DATE --out OUT [--market csi300]
        [--window 120] [--every month] [--clusters 10,40,120] [--min-history 0.9] [--raw-returns]
    qlib-hist concepts merge TABLE [TABLE ...] --out OUT
    qlib-hist concepts to-legacy MEMBERSHIP --as-of DATE --provider-uri DIR [--market csi300] --out PREFIX
    qlib-hist concepts report MEMBERSHIP --provider-uri DIR [--market csi300] [--png FILE]
    qlib-hist explain WORKFLOW.yaml --out DIR [--experiment NAME] [--recorder-id ID] [--segment test] [--day DATE]
    qlib-hist rolling WORKFLOW.yaml [--step 63] [--cold] [--experiment NAME] [--windows-experiment NAME]
        [--trunc-days N] [--test-end DATE]

Errors in the inputs (:class:`~qlib_hist.errors.QlibHistError`) and in reading or writing files (``OSError``) end
with one line ``qlib-hist: error: ...`` and exit status 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Optional

from .errors import QlibHistError


def _levels(text: str) -> tuple:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes comma-separated integers such as 1,2,3, got {text!r}") from None


def _date(option: str) -> Callable[[str], str]:
    """An argparse type for ``YYYY-MM-DD`` dates whose error names ``option`` (a date pandas cannot hold, such as
    0001-01-01, is named as such)."""

    def parse(text: str) -> str:
        from .config_dates import ConfigDateError, DateOutOfRange, as_timestamp

        try:
            return str(as_timestamp(text, option).date())
        except DateOutOfRange as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        except ConfigDateError:
            raise argparse.ArgumentTypeError(f"{option} takes a date YYYY-MM-DD, got {text!r}") from None

    return parse


def _refuse_overwriting_input(output: str, *inputs: str) -> None:
    """An output path that names an input file would destroy that input: refuse it before reading anything."""
    from pathlib import Path

    out = Path(output).expanduser().resolve()
    for given in inputs:
        if Path(given).expanduser().resolve() == out:
            raise QlibHistError(f"output {output} is the input file {given}: choose another output path")


def cmd_demo(args: argparse.Namespace) -> None:
    from .qlib_edge.demo import run_demo
    from .qlib_edge.recorders import format_report

    report = run_demo(args.out, seed=args.seed, n_epochs=args.epochs)
    print(f"\nqlib-hist demo ({args.out}), test segment:")
    print(format_report(report))


def cmd_from_sw(args: argparse.Namespace) -> None:
    from .concepts.membership import check_membership_output, write_membership
    from .concepts.shenwan import from_sw

    check_membership_output(args.out)
    _refuse_overwriting_input(args.out, args.sw_csv)
    table = from_sw(args.sw_csv, levels=args.levels)
    path = write_membership(table, args.out)
    print(
        f"wrote {path}: {len(table)} memberships, {table['concept'].nunique()} concepts, "
        f"{table['instrument'].nunique()} instruments"
    )


def cmd_from_returns(args: argparse.Namespace) -> None:
    from .concepts.membership import check_membership_output, write_membership
    from .concepts.returns import ReturnConceptSpec, concepts_from_returns

    check_membership_output(args.out)
    spec = ReturnConceptSpec(args.window, args.every, args.clusters, args.min_history, not args.raw_returns)
    table, stats = concepts_from_returns(args.provider_uri, args.market, args.start, args.end, spec)
    path = write_membership(table, args.out)
    print(f"wrote {path}: {len(table)} memberships, {table['concept'].nunique()} concepts; {stats.describe()}")


def cmd_merge(args: argparse.Namespace) -> None:
    from .concepts.membership import check_membership_output, load_membership, write_membership
    from .concepts.returns import merge_memberships

    check_membership_output(args.out)
    _refuse_overwriting_input(args.out, *args.tables)
    merged = merge_memberships([load_membership(t) for t in args.tables], args.tables)
    path = write_membership(merged, args.out)
    print(
        f"wrote {path}: {len(merged)} memberships, {merged['concept'].nunique()} concepts "
        f"from {len(args.tables)} tables"
    )


def cmd_to_legacy(args: argparse.Namespace) -> None:
    import pandas as pd

    from .concepts.legacy_export import market_instruments, to_legacy
    from .concepts.report import read_calendar

    calendar = read_calendar(args.provider_uri)
    if not calendar[0] <= pd.Timestamp(args.as_of) <= calendar[-1]:
        raise QlibHistError(
            f"--as-of {args.as_of} is outside the provider's calendar ({calendar[0].date()} .. {calendar[-1].date()})"
        )
    window = (args.as_of, args.as_of) if args.universe == "as-of" else (None, None)
    universe = market_instruments(args.provider_uri, args.market, *window)
    paths = to_legacy(args.membership, args.as_of, universe, args.out)
    for path in paths:
        print(f"wrote {path}")


def cmd_report(args: argparse.Namespace) -> None:
    from .concepts.report import coverage_report, format_report, plot_report

    if args.png:
        _refuse_overwriting_input(args.png, args.membership)
        if not args.png.lower().endswith(".png"):
            raise QlibHistError(f"--png {args.png}: the plot is written as a PNG: give a .png path")
    table = coverage_report(args.membership, args.provider_uri, args.market)
    print(format_report(table))
    if args.png:
        print(f"wrote {plot_report(table, args.png)}")


def cmd_explain(args: argparse.Namespace) -> None:
    from .config_dates import config_dates
    from .explain_report import write_explanation
    from .qlib_edge.recorders import explain_recorded_model, read_workflow

    config_dates(read_workflow(args.workflow), source=str(args.workflow))  # a bad date: one line, before qlib starts
    table = explain_recorded_model(args.workflow, args.experiment, args.recorder_id, args.segment, args.day)
    for path in write_explanation(table, args.out, args.day):
        print(f"wrote {path}")
    day = table.index.get_level_values(0).max() if args.day is None else args.day
    print(f"\nTop 5 scores on {day}:")
    print(table.xs(day, level=0).nlargest(5, "score").iloc[:, :11].to_string(float_format=lambda v: f"{v:.4f}"))


def cmd_rolling(args: argparse.Namespace) -> None:
    from .qlib_edge.recorders import format_report, recorder_report
    from .qlib_edge.rolling import FIT_SECONDS_TAG, run_rolling

    recorder = run_rolling(
        args.workflow,
        step=args.step,
        warm=not args.cold,
        exp_name=args.experiment,
        rolling_exp=args.windows_experiment,
        trunc_days=args.trunc_days,
        test_end=args.test_end,
    )
    metrics = recorder.list_metrics()
    print(f"\nmerged recorder {recorder.info['id']} in experiment {recorder.experiment_id!r}:")
    print(format_report(recorder_report(recorder)))
    print(
        f"fit seconds, all windows: {metrics.get('fit_seconds_total', float('nan')):.1f} ({FIT_SECONDS_TAG} per window)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qlib-hist", description="HIST for qlib: demo, concept tools, explanations, rolling retraining"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="write the synthetic market and run the demo workflow through qrun")
    demo.add_argument("--out", default="qlib_hist_demo", help="directory for the data, YAML and mlruns.db")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--epochs", type=int, default=None, help="override the YAML's n_epochs")
    demo.set_defaults(func=cmd_demo)

    concepts = commands.add_parser("concepts", help="build and inspect concept inputs").add_subparsers(
        dest="concepts_command", required=True
    )
    sw = concepts.add_parser("from-sw", help="Shenwan industry history -> membership table")
    sw.add_argument("sw_csv")
    sw.add_argument("out", help="membership table to write (.csv or .parquet)")
    sw.add_argument("--levels", type=_levels, default=(1, 2, 3), help="SW levels, e.g. 1,2,3 (default)")
    sw.set_defaults(func=cmd_from_sw)

    returns = concepts.add_parser("from-returns", help="concepts from co-moving returns, point in time")
    returns.add_argument("--provider-uri", required=True, help="qlib data directory (calendar, instruments, close)")
    returns.add_argument("--market", default="csi300")
    returns.add_argument("--start", required=True, type=_date("--start"), help="first refresh on or after, YYYY-MM-DD")
    returns.add_argument("--end", required=True, type=_date("--end"), help="last refresh on or before, YYYY-MM-DD")
    returns.add_argument("--window", type=int, default=120, help="trading days of returns before each refresh")
    returns.add_argument("--every", choices=("week", "month", "quarter"), default="month")
    returns.add_argument("--clusters", type=_levels, default=(10, 40, 120), help="clusters per level, e.g. 10,40,120")
    returns.add_argument("--min-history", type=float, default=0.9, help="share of the window a stock needs returns on")
    returns.add_argument("--raw-returns", action="store_true", help="do not remove the day's market mean first")
    returns.add_argument("--out", required=True, help="membership table to write (.csv or .parquet)")
    returns.set_defaults(func=cmd_from_returns)

    merge = concepts.add_parser("merge", help="several membership tables as one (e.g. SW and from-returns)")
    merge.add_argument("tables", nargs="+")
    merge.add_argument("--out", required=True, help="membership table to write (.csv or .parquet)")
    merge.set_defaults(func=cmd_merge)

    legacy = concepts.add_parser("to-legacy", help="membership table -> qlib's stock2concept.npy + stock_index")
    legacy.add_argument("membership")
    legacy.add_argument("--as-of", required=True, type=_date("--as-of"), help="snapshot date, YYYY-MM-DD")
    legacy.add_argument("--provider-uri", required=True, help="qlib data directory (for the market's instruments)")
    legacy.add_argument("--market", default="csi300")
    legacy.add_argument("--out", required=True, help="output directory or file prefix")
    legacy.add_argument(
        "--universe",
        choices=("all", "as-of"),
        default="all",
        help="rows: every stock the market file ever lists (default, like qlib's file) or only the members on --as-of",
    )
    legacy.set_defaults(func=cmd_to_legacy)

    report = concepts.add_parser("report", help="per-year coverage of a membership table over a market")
    report.add_argument("membership")
    report.add_argument("--provider-uri", required=True)
    report.add_argument("--market", default="csi300")
    report.add_argument("--png", default=None, help="also save a plot here")
    report.set_defaults(func=cmd_report)

    explain = commands.add_parser("explain", help="split a recorded HIST's predictions into their parts")
    explain.add_argument("workflow", help="the qrun YAML the model was trained with (run from the same directory)")
    explain.add_argument("--out", required=True, help="directory for explanations.pkl and the two plots")
    explain.add_argument("--experiment", default=None, help="default: the YAML's experiment_name, else 'workflow'")
    explain.add_argument("--recorder-id", default=None, help="default: the experiment's latest recorder")
    explain.add_argument("--segment", default="test")
    explain.add_argument(
        "--day", default=None, type=_date("--day"), help="day of the per-stock plot, YYYY-MM-DD (default: the last)"
    )
    explain.set_defaults(func=cmd_explain)

    rolling = commands.add_parser("rolling", help="retrain on rolling windows (warm start), merge and analyse")
    rolling.add_argument("workflow", help="a qrun YAML: its train/valid segments and test start are the first window")
    rolling.add_argument("--step", type=int, default=63, help="trading days of test per window (default 63, a quarter)")
    rolling.add_argument("--cold", action="store_true", help="fit every window from scratch (no warm start)")
    rolling.add_argument(
        "--experiment", default=None, help="merged recorder's experiment (default hist_rolling_warm/cold)"
    )
    rolling.add_argument(
        "--windows-experiment", default=None, help="windows' experiment (default <experiment>_windows)"
    )
    rolling.add_argument("--trunc-days", type=int, default=None, help="days between valid end and test start")
    rolling.add_argument("--test-end", type=_date("--test-end"), default=None, help="override the YAML's test end")
    rolling.set_defaults(func=cmd_rolling)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (QlibHistError, OSError) as err:  # the user's input or files; anything else is a bug: its traceback
        print(f"qlib-hist: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
