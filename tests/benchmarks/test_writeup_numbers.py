"""The issue-28 write-up (``benchmarks/results/what-carries-hist.md``) against the run files it quotes.

Section 4's tables are typed by hand from ``benchmarks/results/final/runs/*.json``; when a run lands (another seed of a
context row) the page goes stale unless someone retypes it. These tests recompute every cell of both tables, and the
seed ranges and means its prose repeats, from the committed run files with :mod:`benchmarks.report`'s own functions
(population standard deviation, 4 decimals), so a stale or mistyped figure fails here rather than in a reader's hands.
Section 2's table (qlib's segments, capped) is checked the same way against its CPU and GPU run files. They need no
data beyond the repository.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.paths import ROOT
from benchmarks.report import _mean_std as report_mean_std
from benchmarks.report import label, load_runs, margins, row_of, rows_in_order

PAGE = ROOT / "benchmarks" / "results" / "what-carries-hist.md"
RUNS_DIR = ROOT / "benchmarks" / "results" / "final" / "runs"

#: the start of a results-table row label -> the run row it reports
RESULT_ROWS = {
    "ours best (`": "hist_pit+best",
    "qlib's HIST, patched": "qlib_hist_patched",
    "ours best, 5-fit": "hist_pit+best_avg5",
    "qlib's HIST, 5-seed": "qlib_hist_patched+avg5",
    "qlib's pretrained LSTM file": "hist_pit+pretrained_as_is",
    "ours default": "hist_pit",
    "LSTM (": "lstm",
    "GRU (": "gru",
    "LightGBM (": "lightgbm",
}

#: the start of a lead-table row label -> (our row, the row it is measured against)
LEAD_ROWS = {
    "qlib's HIST, 5-seed": ("hist_pit+best_avg5", "qlib_hist_patched+avg5"),
    "qlib's HIST": ("hist_pit+best", "qlib_hist_patched"),
    "the pretrained file": ("hist_pit+best", "hist_pit+pretrained_as_is"),
    "ours default": ("hist_pit+best", "hist_pit"),
}

#: seed-average rows: their "seeds" are the first seed s of each window s..s+4, and their spread is not reported
AVERAGED = {"hist_pit+best_avg5", "qlib_hist_patched+avg5"}


def _section(number: int) -> str:
    """Section ``number`` of the page, from its ``## N.`` heading to the next heading of that level."""
    text = PAGE.read_text()
    start = text.index(f"\n## {number}.")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _cells(line: str) -> list[str]:
    """The stripped cells of one markdown table line."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _tables(section: str) -> list[list[list[str]]]:
    """The markdown tables of ``section``, each as its body rows (header and rule dropped) of stripped cells."""
    tables, current = [], []
    for line in section.splitlines() + [""]:
        if line.startswith("|"):
            current.append(_cells(line))
        elif current:
            tables.append(current[2:])
            current = []
    return tables


def _match(label_cell: str, prefixes: dict):
    """The value of the longest prefix of ``prefixes`` that ``label_cell`` starts with."""
    hits = [p for p in prefixes if label_cell.startswith(p)]
    assert hits, f"{PAGE.name}: no known row for the label {label_cell!r}"
    return prefixes[max(hits, key=len)]


def _seed_range(seeds: list[int]) -> str:
    """``0–8`` for consecutive seeds (en dash, as the page writes them), else ``0, 2, 5``."""
    seeds = sorted(seeds)
    if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _mean_std(values: np.ndarray) -> str:
    """The report's own ``mean ± std`` cell (population std, 4 decimals)."""
    return report_mean_std(list(values), 4)


def _runs_by_row(runs_dir) -> dict[str, dict[int, dict]]:
    """The finished runs under ``runs_dir``, as row -> seed -> run."""
    rows: dict[str, dict[int, dict]] = {}
    for run in load_runs(runs_dir):
        if "metrics" in run:
            rows.setdefault(row_of(run), {})[run["seed"]] = run
    return rows


@pytest.fixture(scope="module")
def by_row() -> dict[str, dict[int, dict]]:
    rows = _runs_by_row(RUNS_DIR)
    assert rows, f"no finished run under {RUNS_DIR}"
    return rows


def _metric(runs: dict[int, dict], metric: str) -> np.ndarray:
    return np.array([runs[seed]["metrics"][metric] for seed in sorted(runs)])


def test_the_page_has_both_tables_of_section_4():
    tables = _tables(_section(4))
    assert len(tables) >= 2, f"{PAGE.name} section 4: expected the results table and the lead table"
    assert {_match(row[0], RESULT_ROWS) for row in tables[0]} == set(RESULT_ROWS.values())


def test_every_results_cell_is_what_the_run_files_give(by_row):
    (results, *_) = _tables(_section(4))
    for label_cell, seeds_cell, ic_each, ic, rank_each, rank in results:
        row = _match(label_cell, RESULT_ROWS)
        runs = by_row[row]
        where = f"{PAGE.name}, row {label_cell[:40]!r}"
        ic_values, rank_values = _metric(runs, "IC"), _metric(runs, "Rank IC")
        if row == "hist_pit+pretrained_as_is":  # untrained: one value whatever the seed
            assert seeds_cell == "—", where
            assert (ic, rank) == (f"{ic_values[0]:.4f}", f"{rank_values[0]:.4f}"), where
            continue
        expected_seeds = _seed_range(list(runs))
        assert seeds_cell == (f"s = {expected_seeds}" if row in AVERAGED else expected_seeds), where
        assert ic_each == ", ".join(f"{v:.4f}" for v in ic_values), f"{where}: per-seed IC"
        assert rank_each == ", ".join(f"{v:.4f}" for v in rank_values), f"{where}: per-seed Rank IC"
        if row in AVERAGED:
            assert (ic, rank) == (f"{ic_values.mean():.4f}", f"{rank_values.mean():.4f}"), where
        else:
            assert (ic, rank) == (_mean_std(ic_values), _mean_std(rank_values)), f"{where}: mean ± std"


def test_every_lead_is_what_the_report_computes(by_row):
    _, leads, *_ = _tables(_section(4))
    runs = [run for per_seed in by_row.values() for run in per_seed.values()]
    rows = rows_in_order(runs)
    assert {_match(row[0], LEAD_ROWS) for row in leads} == set(LEAD_ROWS.values())
    for label_cell, _fits, seeds_cell, *cells in leads:
        mine, versus = _match(label_cell, LEAD_ROWS)
        report = {cells[0]: cells[1:] for cells in map(_cells, margins(runs, versus).splitlines()[2:])}
        _fits_there, seeds_there, *leads_there = report[label(mine, rows)]
        where = f"{PAGE.name}, lead over {versus}"
        seeds = _seed_range([int(s) for s in seeds_there.split(", ")])
        assert seeds_cell == (f"s = {seeds}" if mine in AVERAGED else seeds), where
        # the 5-fit row brackets its "in std" cells: overlapping seed windows make them no evidence
        assert [cell.strip("()") for cell in cells] == leads_there, where


@pytest.mark.parametrize("row, name", [("lstm", "LSTM"), ("gru", "GRU"), ("hist_pit", "ours default")])
def test_the_prose_quotes_the_context_rows_current_seeds(by_row, row, name):
    section = _section(4)
    seeds = _seed_range(list(by_row[row]))
    measured = section[section.index("Measured:") :].split("\n")[0]
    assert f"{name} seeds {seeds}" in measured, f"{PAGE.name}: 'Measured:' should say {name} seeds {seeds}"
    if row in ("lstm", "gru"):
        ic, rank = _mean_std(_metric(by_row[row], "IC")), _mean_std(_metric(by_row[row], "Rank IC"))
        assert f"{name} seeds {seeds} score IC {ic}, Rank IC {rank}" in section, (
            f"{PAGE.name}: the LSTM/GRU bullet should quote {name} seeds {seeds}: IC {ic}, Rank IC {rank}"
        )


#: section 2 (qlib's segments, capped): the start of a table row label -> (results folder, run row); qlib's
#: published rows are quoted from its README and have no run file here
SEGMENT_ROWS = {
    "qlib's pretrained LSTM file": ("qlib-segments-capped", "hist_pit+pretrained_as_is"),
    "qlib's HIST patched": ("qlib-segments-capped", "qlib_hist_patched"),
    "ours best, same cap (CPU": ("qlib-segments-capped", "hist_pit+best"),
    "ours best, same cap, on a lent H200": ("gpu/qlib-segments-capped", "hist_pit+best"),
    "qlib's published": None,
}


def test_section_2_rows_are_what_their_run_files_give():
    """Section 2's table (qlib's segments): each measured row's seeds and its IC and Rank IC, one value for one seed
    and the report's mean ± std for several, from its committed run files (the CPU grid's, or the GPU's)."""
    (table, *_) = _tables(_section(2))
    folders = {source[0] for source in SEGMENT_ROWS.values() if source}
    by_folder = {folder: _runs_by_row(ROOT / "benchmarks" / "results" / folder / "runs") for folder in folders}
    measured = set()
    for label_cell, seeds_cell, ic, rank in table:
        source = _match(label_cell, SEGMENT_ROWS)
        if source is None:
            continue
        folder, row = source
        runs = by_folder[folder].get(row, {})
        where = f"{PAGE.name} section 2, row {label_cell[:40]!r}"
        assert runs, f"{where}: no run file of {row} under {folder}"
        ic_values, rank_values = _metric(runs, "IC"), _metric(runs, "Rank IC")
        if row == "hist_pit+pretrained_as_is":
            assert seeds_cell == "deterministic", where
        else:
            assert seeds_cell == _seed_range(list(runs)), f"{where}: seeds"
        if len(runs) == 1:
            assert (ic, rank) == (f"{ic_values[0]:.4f}", f"{rank_values[0]:.4f}"), where
        else:
            assert (ic, rank) == (_mean_std(ic_values), _mean_std(rank_values)), f"{where}: mean ± std"
        measured.add(source)
    assert measured == {source for source in SEGMENT_ROWS.values() if source}, f"{PAGE.name} section 2: rows missing"
