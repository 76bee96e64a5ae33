"""The README's first table against the run files it quotes (``benchmarks/results/final/runs``, and the shipped
YAML's row from ``benchmarks/results/screen-dev/runs``: the screen's fits of its choice, on the final grid's data and
budget, borrowed as ``benchmarks.report --borrow`` does).

Every cell is recomputed with :mod:`benchmarks.report`'s and :mod:`benchmarks.paired`'s own functions, so a figure
typed by hand, or left behind when a run lands, fails here. Needs no data beyond the repository."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.grid import load_grid
from benchmarks.paired import paired_t
from benchmarks.paths import ROOT
from benchmarks.report import borrow, fit_seconds, label, load_runs, margins, row_of, rows_in_order
from benchmarks.run import ROWS as RUN_ROWS

README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
RUNS_DIR = RESULTS / "final" / "runs"
#: rows of the table from another grid's runs: row -> (grid, its row there)
BORROWED = {"hist_pit+chosen": ("screen-dev", "hist_pit+best_aux")}
MARKER = "<!-- headline-table:"
VERSUS, VERSUS_AVERAGED = "qlib_hist_patched", "qlib_hist_patched+avg5"
#: rows the paragraph under the table quotes the shipped YAML's lead over one by one
VERSUS_ROWS_QUOTED = ("qlib_hist_patched", "hist_pit+best")

#: the start of a README row label -> the run row it reports
ROWS = {
    "`qlib_hist`, the shipped YAML": "hist_pit+chosen",
    "`qlib_hist`, the 0.6–0.8 recipe": "hist_pit+best",
    "qlib's HIST (": "qlib_hist_patched",
    "`qlib_hist`, that recipe with `ensemble: 5`": "hist_pit+best_avg5",
    "qlib's HIST, 5 fits": "qlib_hist_patched+avg5",
    "`qlib_hist`, default keys": "hist_pit",
    "qlib's pretrained LSTM file": "hist_pit+pretrained_as_is",
    "GRU": "gru",
    "LightGBM": "lightgbm",
}


def _table() -> list[list[str]]:
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(MARKER)) + 1
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[start + 2 : end]]


@pytest.fixture(scope="module")
def by_row() -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for run in load_runs(RUNS_DIR):
        if "metrics" in run:
            out.setdefault(row_of(run), {})[run["seed"]] = run
    for row, (grid, theirs) in BORROWED.items():
        borrowed = [run for run in load_runs(RESULTS / grid / "runs") if row_of(run) == theirs and "metrics" in run]
        out[row] = {run["seed"]: run for run in borrowed}
    return out


def test_the_borrowed_rows_pass_the_reports_borrow_check(by_row):
    """The same data, budget and settings but the borrowed variant's own: what ``--borrow`` accepts."""
    final = [run for run in load_runs(RUNS_DIR) if "metrics" in run]
    for row, (grid, theirs) in BORROWED.items():
        runs = borrow(RESULTS, f"{grid}:{theirs}={row}", final)
        assert sorted(r["seed"] for r in runs) == sorted(by_row[row])


def _signed(value: float, digits: int) -> str:
    return f"{value:.{digits}f}".replace("-", "−")


def _mean_std(values: np.ndarray, digits: int, single: bool) -> str:
    if single:
        return _signed(values[0], digits)
    return f"{_signed(values.mean(), digits)} ± {values.std():.{digits}f}"


def _seeds(seeds: list[int], averaged: bool, single: bool) -> str:
    if single:
        return "—"
    assert seeds == list(range(seeds[0], seeds[-1] + 1)), seeds
    span = f"{seeds[0]}–{seeds[-1]}"
    return f"s..s+4, s = {span}" if averaged else span


def test_the_table_has_every_row_named_in_its_order():
    labels = [cells[0] for cells in _table()]
    assert [next(row for prefix, row in ROWS.items() if label.startswith(prefix)) for label in labels] == list(
        ROWS.values()
    )


def test_every_cell_is_what_the_run_files_give(by_row):
    for label_cell, seeds_cell, ic, rank_ic, t_cell, excess, fit in _table():
        row = next(row for prefix, row in ROWS.items() if label_cell.startswith(prefix))
        runs = by_row[row]
        single = row == "hist_pit+pretrained_as_is"  # untrained: one value whatever the seed
        where = f"README.md, row {label_cell[:40]!r}"
        assert seeds_cell == _seeds(sorted(runs), row.endswith("avg5"), single), where
        values = {m: np.array([runs[s]["metrics"][m] for s in sorted(runs)]) for m in ("IC", "Rank IC")}
        assert ic == _mean_std(values["IC"], 4, single), f"{where}: IC"
        assert rank_ic == _mean_std(values["Rank IC"], 4, single), f"{where}: Rank IC"
        returns = np.array([runs[s]["metrics"]["Annualized Return"] for s in sorted(runs)])
        assert excess == _mean_std(returns, 3, single), f"{where}: excess return"
        assert fit == f"{np.mean([fit_seconds(r) for r in runs.values()]) / 60:.0f} min", f"{where}: fit time"
        if row in (VERSUS, VERSUS_AVERAGED):
            assert t_cell == "", where
            continue
        theirs = by_row[VERSUS_AVERAGED if row.endswith("avg5") else VERSUS]  # the same number of fits
        if single:
            mine, other = [runs[0]] * len(theirs), list(theirs.values())
        else:
            shared = sorted(set(runs) & set(theirs))
            mine, other = [runs[s] for s in shared], [theirs[s] for s in shared]
        t = paired_t(mine, other, "daily_ic")
        assert t_cell == f"{t:+.1f}".replace("-", "−"), f"{where}: paired t"


def test_the_prose_quotes_the_test_days(by_row):
    days = len(next(iter(by_row["hist_pit+best"].values()))["daily_ic"])
    assert f"over {days} test days" in README.read_text(encoding="utf-8")


def _leads(runs: list[dict], versus: str) -> dict[str, dict[str, str]]:
    """``benchmarks.report.margins``' lead table over ``versus``: row -> its cells by column name."""
    lines = margins(runs, versus).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = rows_in_order(runs)
    by_label = {label(row, rows): row for row in rows}
    out = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[by_label[cells[0]]] = dict(zip(header, cells))
    return out


def _with_borrowed(grid: str, spec: str) -> list[dict]:
    runs = [run for run in load_runs(RESULTS / grid / "runs") if "metrics" in run]
    return runs + borrow(RESULTS, spec, runs)


def _t_words(cell: str) -> str:
    """A paired-t cell of the lead table in the paragraph's words: ``+1.7 (seed 1)`` (a t over the shared seeds
    whose run files hold the daily series) reads "a paired t of +1.7 on seed 1"; ``n/a``, "no paired t yet"."""
    t, _, seeds = cell.partition(" (")
    if t == "n/a":
        return "no paired t yet"
    return f"a paired t of {t} on {seeds.rstrip(')')}" if seeds else f"a paired t of {t}"


def test_what_holds_quotes_the_leads_the_run_files_give():
    """The paragraph under the table quotes leads, paired t and the qlib-segments figures: each is recomputed."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    dev = _with_borrowed("final", "screen-dev:hist_pit+best_aux=hist_pit+chosen")
    over_qlib = _leads(dev, "qlib_hist_patched")
    chosen, recipe = over_qlib["hist_pit+chosen"], over_qlib["hist_pit+best"]
    over_recipe = _leads(dev, "hist_pit+best")["hist_pit+chosen"]
    t_col, std_col = "paired t (NW 5)", "in std"
    phrases = [
        f"by {chosen['IC lead']} IC, a paired t of {chosen['IC ' + t_col]} over the test days, and by "
        f"{chosen['Rank IC lead']} Rank IC, {_t_words(chosen['Rank IC ' + t_col])}; across seeds that is "
        f"{chosen['IC ' + std_col].lstrip('+')} and {chosen['Rank IC ' + std_col].lstrip('+')} standard deviations",
        f"recipe by {over_recipe['IC lead']} IC (paired t {over_recipe['IC ' + t_col]})",
        f"level with qlib's HIST on IC (paired t {recipe['IC ' + t_col]}) and ahead on Rank IC by "
        f"{recipe['Rank IC lead']}, {recipe['Rank IC ' + std_col].lstrip('+')} standard deviations",
    ]
    others = _leads(dev, "hist_pit+chosen")
    one_fit = [row for row, cells in others.items() if cells["Fits"] == "1" and row not in VERSUS_ROWS_QUOTED]
    weakest = min(-float(others[row]["IC " + t_col]) for row in one_fit)  # their lead over ours: minus ours
    phrases.append(f"every other row by a paired t of {weakest:.1f} or more")
    capped = _with_borrowed("qlib-segments-capped", "screen-qlib-segments:hist_pit+best_aux=hist_pit+chosen")
    mine = [run for run in capped if row_of(run) == "hist_pit+chosen"]
    theirs = {run["seed"]: run for run in capped if row_of(run) == "qlib_hist_patched"}
    seg = _leads(capped, "qlib_hist_patched")["hist_pit+chosen"]
    ic, rank = (np.array([run["metrics"][m] for run in mine]) for m in ("IC", "Rank IC"))
    same = [theirs[run["seed"]]["metrics"] for run in mine if run["seed"] in theirs]
    phrases.append(
        f"IC {ic.mean():.4f} ± {ic.std():.4f} and Rank IC {rank.mean():.4f} ± {rank.std():.4f} over {len(mine)} seeds, "
        f"against qlib's HIST's {np.mean([m['IC'] for m in same]):.4f} and "
        f"{np.mean([m['Rank IC'] for m in same]):.4f} on the seeds both have: a paired t of {seg['IC ' + t_col]} on "
        f"IC and {_t_words(seg['Rank IC ' + t_col])} on Rank IC, and {seg['IC ' + std_col].lstrip('+')} and "
        f"{seg['Rank IC ' + std_col].lstrip('+')} standard deviations"
    )
    # qlib's HIST at its own budget (200 epochs, early stop 20): its means, and the lead over the seeds shared
    full = borrow(RESULTS, f"qlib-segments-full:{VERSUS}={VERSUS}+full_budget", capped, own_budget=True)
    at_budget = _leads(capped + full, f"{VERSUS}+full_budget")["hist_pit+chosen"]
    phrases.append(
        f"qlib's HIST scores {np.mean([r['metrics']['IC'] for r in full]):.4f} / "
        f"{np.mean([r['metrics']['Rank IC'] for r in full]):.4f} there: a lead of {at_budget['IC lead']} IC "
        f"(t {at_budget['IC ' + t_col]}, {at_budget['IC ' + std_col].lstrip('+')} std) and "
        f"{at_budget['Rank IC lead']} Rank IC (t {at_budget['Rank IC ' + t_col]}, "
        f"{at_budget['Rank IC ' + std_col].lstrip('+')} std)"
    )
    shipped = [run for run in dev if row_of(run) == "hist_pit+chosen"]
    planned = load_grid(ROOT / "benchmarks" / "grids" / "screen_dev.yaml", list(RUN_ROWS)).row_seeds[
        BORROWED["hist_pit+chosen"][1]
    ]
    so_far = " so far" if len(shipped) < len(planned) else ""
    phrases.append(f"the shipped YAML ({len(shipped)} seeds{so_far})")
    for phrase in phrases:
        assert phrase in text, f"README.md's 'What holds' should say: {phrase!r}"
