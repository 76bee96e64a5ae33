"""Choose the recipe among the screen's candidates on valid only, over two windows, before any test score is read.

    python -m benchmarks.screen                 # results/screen.md and results/screen_choice.json

The candidates are the shipped recipe (``hist_pit+best``) and the recipe with ``market_context``, with
``aux_horizons``, and with both (``grids/screen_dev.yaml``, ``grids/screen_qlib_segments.yaml``), each fitted on two
windows: the dev window (train 2010–2016, valid 2017–2018; the recipe alone is ``grids/final.yaml``'s row) and qlib's
segments (train 2010–2014, valid 2015–2016; the recipe alone is ``grids/qlib_segments.yaml``'s row). The score of a
candidate is its mean valid IC (the early-stopping metric at the kept epoch) over both windows and the seeds; the
choice is the highest score, made once every candidate has every (window, seed). This module reads ``valid_score``
and ``best_epoch`` of the run files and nothing else: the test metrics beside them are not looked at, so the choice
can be committed before anyone reads a test figure of the new runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from benchmarks import script_parser
from benchmarks.paths import HERE
from qlib_hist.atomic_files import atomic_write_text

#: window -> (the screen grid's results folder, the folder of the recipe alone on that window)
WINDOWS = {"dev": ("screen-dev", "final"), "qlib-segments": ("screen-qlib-segments", "qlib-segments-capped")}
#: the rows compared, the shipped recipe first (it stays the choice on a tie)
CANDIDATES = ("hist_pit+best", "hist_pit+best_market", "hist_pit+best_aux", "hist_pit+best_market_aux")
SEEDS = (0, 1, 2)


def valid_scores(results: Path, seeds: tuple[int, ...] = SEEDS) -> dict[str, dict[str, dict[int, float]]]:
    """row -> window -> seed -> the run's valid score, from the run files that exist (test metrics are not read)."""
    out: dict[str, dict[str, dict[int, float]]] = {row: {w: {} for w in WINDOWS} for row in CANDIDATES}
    for window, (screen, alone) in WINDOWS.items():
        for row in CANDIDATES:
            folder = results / (alone if row == "hist_pit+best" else screen) / "runs"
            for seed in seeds:
                path = folder / f"{row}_seed{seed}.json"
                if path.exists():
                    score = json.loads(path.read_text()).get("valid_score")
                    if score is not None and np.isfinite(float(score)):  # a run with no finite valid score is absent
                        out[row][window][seed] = float(score)
    return out


def choose(scores: dict[str, dict[str, dict[int, float]]], seeds: tuple[int, ...] = SEEDS) -> str | None:
    """The candidate of highest mean valid score over every window and seed, the first in :data:`CANDIDATES` order on
    a tie; None until every candidate has every (window, seed): a choice among the runs that happen to have landed
    would favour the candidates run first."""
    complete = {
        row: float(np.mean([by_seed[s] for by_seed in per_window.values() for s in seeds]))
        for row, per_window in scores.items()
        if all(s in by_seed for by_seed in per_window.values() for s in seeds)
    }
    if len(complete) < len(scores):
        return None
    best = max(complete.values())
    return next(row for row in CANDIDATES if complete.get(row) == best)


def table(scores: dict[str, dict[str, dict[int, float]]], seeds: tuple[int, ...] = SEEDS) -> str:
    """Markdown: each candidate's valid IC per window (mean over the seeds it has, and how many) and overall: the
    score the choice compares, shown once the candidate has every (window, seed) (a mean over the runs that have
    landed would weigh the windows unequally)."""
    lines = ["| candidate | " + " | ".join(f"valid IC, {w}" for w in WINDOWS) + " | mean of both | runs |"]
    lines.append("|---|" + "---|" * (len(WINDOWS) + 2))
    for row, per_window in scores.items():
        cells = []
        for by_seed in per_window.values():
            values = [by_seed[s] for s in seeds if s in by_seed]
            cells.append(f"{np.mean(values):.4f} ({len(values)} of {len(seeds)})" if values else "—")
        every = [v for by_seed in per_window.values() for v in by_seed.values()]
        mean = f"{np.mean(every):.4f}" if len(every) == len(seeds) * len(WINDOWS) else "—"
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {mean} | {len(every)} of {len(seeds) * len(WINDOWS)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = script_parser("benchmarks.screen", __doc__)
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    results = Path(args.results_dir)
    scores = valid_scores(results)
    choice = choose(scores)
    page = [
        "# The screen: the recipe with the market's state and other horizons, chosen on valid",
        "",
        "Made by `python -m benchmarks.screen` from the run files of `grids/screen_dev.yaml`, "
        "`grids/screen_qlib_segments.yaml` and the recipe's own rows (`final`, `qlib-segments-capped`). Valid IC at "
        "each run's kept epoch; no test figure is read here.",
        "",
        table(scores),
        "",
        f"Choice: **{choice}**." if choice else "Choice: none yet (it waits for every run of every candidate).",
        "",
    ]
    atomic_write_text(results / "screen.md", "\n".join(page))
    record = {"choice": choice, "seeds": list(SEEDS), "windows": WINDOWS, "valid_scores": scores}
    atomic_write_text(results / "screen_choice.json", json.dumps(record, indent=1, sort_keys=True) + "\n")
    print("\n".join(page))
    return 0


if __name__ == "__main__":
    sys.exit(main())
