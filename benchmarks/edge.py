"""The forecast-edge targets, checked from the committed run files: does the shipped YAML lead qlib's HIST?

    python -m benchmarks.edge                   # results/edge.md (reads run files only; a second)

Each comparison puts the shipped YAML's row (the screen's fits of its choice, ``hist_pit+best_aux`` of
``grids/screen_dev.yaml`` or ``grids/screen_qlib_segments.yaml``) beside qlib's HIST on one window, with the same
data; both rows pass :func:`benchmarks.report.borrow`'s check against the window's grid (the same data and budget,
or for qlib's HIST at its own budget, ``--borrow-budget``'s). On each of IC and Rank IC a lead is **met** when it is
at least :data:`MIN_IN_STD` seed standard deviations (:class:`benchmarks.report.Lead`, over the seeds both rows
have) **and** its paired daily t is at least :data:`MIN_T`; **not met** when either falls short (a lead under
:data:`MIN_IN_STD` seed std is not met whatever its t); **not measured** when the seed spread is not measured (one
shared seed, or no finished run of a row), or the lead is wide enough across seeds but its t is not over every
shared seed (run files from before ``daily_rank_ic`` was recorded hold no daily series of that metric). On qlib's
segments the shipped YAML's mean over its seeds is also set against the HIST row qlib publishes (:data:`PUBLISHED`).
Each lead is also cut by test year (:func:`benchmarks.paired.by_year`): the mean daily difference and its paired t
within each year, over the same seeds as the lead's t, so a lead carried by one year shows.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import script_parser
from benchmarks.paired import DAILY_KEYS, by_year, daily_difference
from benchmarks.paths import HERE
from benchmarks.report import (
    MARGIN_METRICS,
    Lead,
    borrow,
    daily_pairs,
    lead_over,
    load_runs,
    pair_by_seed,
    row_of,
)
from qlib_hist.atomic_files import atomic_write_text

#: the targets: a lead of at least this many seed standard deviations, and a paired daily t of at least this
MIN_IN_STD, MIN_T = 2.0, 2.0
#: qlib's published HIST row on its segments (qlib's examples/benchmarks/README.md: 20 seeds on a GPU, data from 2008)
PUBLISHED = {"IC": 0.0522, "Rank IC": 0.0667}
#: the row name the shipped YAML's runs take beside each window's grid
SHIPPED = "hist_pit+chosen"


@dataclass(frozen=True)
class Comparison:
    """The shipped YAML against one baseline row on one window."""

    window: str  # what the reader sees: the window's years
    grid: str  # the results folder whose runs set the window's data and budget
    ours: str  # ``GRID:ROW`` of the shipped YAML's runs
    theirs: str  # ``GRID:ROW`` of the baseline's runs (the window's own grid, or borrowed)
    baseline: str  # what the reader sees: the baseline and its budget
    own_budget: bool = False  # the baseline keeps its own training budget (``--borrow-budget``)
    published: bool = False  # also set the shipped YAML against :data:`PUBLISHED`


DEV = "dev window: train 2010–2016, valid 2017–2018, test 2019–2022"
QLIB = "qlib's segments: train 2010–2014, valid 2015–2016, test 2017–2020"
COMPARISONS = (
    Comparison(DEV, "final", "screen-dev:hist_pit+best_aux", "final:qlib_hist_patched", "qlib's HIST, the same budget"),
    Comparison(
        QLIB,
        "qlib-segments-capped",
        "screen-qlib-segments:hist_pit+best_aux",
        "qlib-segments-capped:qlib_hist_patched",
        "qlib's HIST, the same cap (30 epochs, early stop 10)",
        published=True,
    ),
    Comparison(
        QLIB,
        "qlib-segments-capped",
        "screen-qlib-segments:hist_pit+best_aux",
        "qlib-segments-full:qlib_hist_patched",
        "qlib's HIST at its own budget (200 epochs, early stop 20)",
        own_budget=True,
        published=True,
    ),
)


@dataclass(frozen=True)
class Outcome:
    """One comparison's figures: the runs by seed on each side, their pairs over the seeds both have, and the lead on
    each metric (None: not measured)."""

    comparison: Comparison
    ours: dict[int, dict]
    theirs: dict[int, dict]
    pairs: dict[int, tuple[dict, dict]]  # seed -> (our run, their run): what the leads are over
    leads: dict[str, Lead | None]

    def above(self, metric: str) -> str:
        """On how many of the seeds both rows have ours scores higher: ``k of n``, or ``—`` without a shared seed."""
        shared = sorted(set(self.ours) & set(self.theirs))
        wins = sum(self.ours[s]["metrics"][metric] > self.theirs[s]["metrics"][metric] for s in shared)
        return f"{wins} of {len(shared)}" if shared else "—"

    def yearly(self, metric: str) -> tuple[list[int], list[tuple[int, int, float, float]]]:
        """The seeds the lead on ``metric`` is tested over (the shared seeds whose run files both hold the metric's
        daily series: those of the lead's paired t), and that lead by test year (:func:`benchmarks.paired.by_year`;
        none without such a seed)."""
        key = DAILY_KEYS[metric]
        pairs = daily_pairs(self.pairs, key)
        diff = daily_difference([pair[0] for pair in pairs.values()], [pair[1] for pair in pairs.values()], key)
        return sorted(pairs), ([] if diff is None else by_year(diff))


def verdict(lead: Lead | None) -> str:
    """``met``, ``not met`` or ``not measured`` for one metric's lead (module docstring)."""
    if lead is None or np.isnan(lead.in_std):
        return "not measured"
    if lead.in_std < MIN_IN_STD:
        return "not met"
    if np.isnan(lead.t) or lead.t_seeds:  # the paired test is not over every shared seed
        return "not measured"
    return "met" if lead.t >= MIN_T else "not met"


def _runs(results: Path, spec: str, window: str, grid_runs: list[dict], own_budget: bool = False) -> dict[int, dict]:
    """seed -> finished run of ``GRID:ROW`` ``spec``: a row of the ``window`` grid's own runs (``grid_runs``), or
    borrowed into them through the report's check."""
    grid, _, row = spec.partition(":")
    if grid == window:
        return {run["seed"]: run for run in grid_runs if row_of(run) == row}
    if not any(row_of(run) == row and "metrics" in run for run in load_runs(results / grid / "runs")):
        return {}  # not run yet (or no run of it has finished)
    model = row.partition("+")[0]
    return {run["seed"]: run for run in borrow(results, f"{spec}={model}+borrowed", grid_runs, own_budget)}


def outcome(results: Path, comparison: Comparison) -> Outcome:
    """The comparison's figures from the run files under ``results``."""
    grid_runs = [run for run in load_runs(results / comparison.grid / "runs") if "metrics" in run]
    if not grid_runs:
        raise SystemExit(f"benchmarks.edge: no finished run in {results / comparison.grid / 'runs'}")
    ours = _runs(results, comparison.ours, comparison.grid, grid_runs)
    theirs = _runs(results, comparison.theirs, comparison.grid, grid_runs, comparison.own_budget)
    pairs = pair_by_seed(ours, theirs) if ours and theirs else {}
    leads = {metric: lead_over(pairs, metric) if pairs else None for metric in MARGIN_METRICS}
    return Outcome(comparison, ours, theirs, pairs, leads)


def _mean_std(runs: dict[int, dict], metric: str) -> str:
    values = np.array([run["metrics"][metric] for run in runs.values()])
    return f"{values.mean():.4f} ± {values.std():.4f}" if len(values) else "—"


def _seeds(runs: dict[int, dict]) -> str:
    return ", ".join(map(str, sorted(runs))) or "none yet"


def table(outcomes: list[Outcome]) -> str:
    """Markdown: one line per comparison and metric."""
    lines = [
        "| window | baseline | metric | ours (seeds) | baseline (seeds) | ours above on "
        "| lead | in seed std | paired t | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for out in outcomes:
        for metric, lead in out.leads.items():
            cells = lead.cells() if lead else ["—", "—", "—"]
            lines.append(
                f"| {out.comparison.window} | {out.comparison.baseline} | {metric} | "
                f"{_mean_std(out.ours, metric)} ({_seeds(out.ours)}) | "
                f"{_mean_std(out.theirs, metric)} ({_seeds(out.theirs)}) | {out.above(metric)} | "
                + " | ".join(cells)
                + f" | {verdict(lead)} |"
            )
    return "\n".join(lines)


def _t(t: float) -> str:
    """A paired t's cell: ``n/a`` where it is not defined (a year of 5 days or fewer: no 5-lag long-run variance)."""
    return "n/a" if np.isnan(t) else f"{t:+.1f}"


def yearly_table(outcomes: list[Outcome]) -> str:
    """Markdown: each comparison's lead by test year, one line per comparison and metric."""
    lines = [
        "| window | baseline | metric | seeds | the lead by test year: mean daily difference (paired t; days) |",
        "|---|---|---|---|---|",
    ]
    for out in outcomes:
        for metric in out.leads:
            seeds, years = out.yearly(metric)
            cells = "; ".join(f"{year}: {mean:+.4f} ({_t(t)}; {days})" for year, days, mean, t in years) or "—"
            lines.append(
                f"| {out.comparison.window} | {out.comparison.baseline} | {metric} | "
                f"{', '.join(map(str, seeds)) or '—'} | {cells} |"
            )
    return "\n".join(lines)


def published_lines(outcomes: list[Outcome]) -> list[str]:
    """The shipped YAML's mean on qlib's segments against :data:`PUBLISHED`, once per window that asks for it."""
    lines, seen = [], set()
    for out in outcomes:
        if not out.comparison.published or out.comparison.window in seen or not out.ours:
            continue
        seen.add(out.comparison.window)
        for metric, theirs in PUBLISHED.items():
            values = np.array([run["metrics"][metric] for run in out.ours.values()])
            gap = values.mean() - theirs
            size = f", {gap / values.std():+.1f} of our seed std" if values.std() > 0 else ""
            above = "above: met" if gap > 0 else "not above: not met"
            lines.append(
                f"- {out.comparison.window}, {metric}: ours {values.mean():.4f} over seeds {_seeds(out.ours)} against "
                f"qlib's published {theirs:.4f} ({gap:+.4f}{size}), {above}."
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Command line: write ``<results-dir>/edge.md``; 0 when done."""
    parser = script_parser("benchmarks.edge", __doc__)
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    results = Path(args.results_dir)
    outcomes = [outcome(results, comparison) for comparison in COMPARISONS]
    page = [
        "# The forecast edge: the shipped YAML against qlib's HIST",
        "",
        "Made by `python -m benchmarks.edge` from the committed run files (`benchmarks/edge.py` says how each figure "
        "is computed). Ours: `workflow_config_hist_best.yaml`'s recipe, the screen's fits of its choice. Means ± "
        "standard deviations (population) over each row's seeds; the lead, its size in seed standard deviations "
        "and the paired daily t (Newey–West, 5 lags) over the seeds both rows have (where some of their run files "
        "predate the daily series of a metric, over the seeds it names), and on how many of those seeds "
        "ours scores higher. A lead meets the target at "
        f"≥ {MIN_IN_STD:g} seed std and t ≥ {MIN_T:g}, and is not met below {MIN_IN_STD:g} seed std whatever its t; "
        "`not measured`: a row has no run yet, or the lead is wide enough across seeds but its paired t is not over "
        "every shared seed.",
        "",
        table(outcomes),
        "",
        "Against qlib's published HIST row (IC 0.0522, Rank IC 0.0667; qlib's benchmark README, 20 seeds on a GPU, "
        "up to 200 epochs, data from 2008):",
        "",
        *published_lines(outcomes),
        "",
        "The lead by test year: the daily difference (ours minus the baseline, each side's daily value averaged over "
        "the seeds named, those of the paired t above) within each calendar year of the test segment, its mean, its "
        "Newey–West t over that year's days alone, and the number of days. A lead that holds should hold in most "
        "years; one carried by a single year is a regime, not an edge.",
        "",
        yearly_table(outcomes),
        "",
    ]
    atomic_write_text(results / "edge.md", "\n".join(page))
    print("\n".join(page))
    return 0


if __name__ == "__main__":
    sys.exit(main())
