"""``benchmarks.screen``: the screen's choice reads valid scores only, needs every (window, seed), and keeps the
shipped recipe on a tie."""

from __future__ import annotations

import json

from benchmarks.screen import CANDIDATES, WINDOWS, choose, main, table, valid_scores


def _write(results, folder, row, seed, valid, test_ic=0.9):
    runs = results / folder / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    (runs / f"{row}_seed{seed}.json").write_text(json.dumps({"valid_score": valid, "metrics": {"IC": test_ic}}))


def _fill(results, scores):
    """scores: row -> (dev valid, qlib-segments valid), the same for seeds 0-2."""
    for row, pair in scores.items():
        for (screen, alone), valid in zip(WINDOWS.values(), pair):
            for seed in (0, 1, 2):
                _write(results, alone if row == "hist_pit+best" else screen, row, seed, valid)


def test_the_choice_is_the_best_mean_valid_over_both_windows(tmp_path):
    _fill(
        tmp_path,
        {
            "hist_pit+best": (0.080, 0.100),
            "hist_pit+best_market": (0.085, 0.097),  # mean 0.0910: the best over both windows
            "hist_pit+best_aux": (0.090, 0.080),  # best on dev alone
            "hist_pit+best_market_aux": (0.070, 0.090),
        },
    )
    assert choose(valid_scores(tmp_path)) == "hist_pit+best_market"


def test_no_choice_until_every_candidate_is_complete_and_ties_keep_the_recipe(tmp_path):
    _fill(tmp_path, {"hist_pit+best": (0.08, 0.10), "hist_pit+best_aux": (0.08, 0.10)})
    _write(tmp_path, "screen-dev", "hist_pit+best_market", 0, 0.5)  # one run, far ahead: not enough
    assert choose(valid_scores(tmp_path)) is None  # two candidates lack runs: the ones run first are not favoured
    _fill(tmp_path, {"hist_pit+best_market": (0.07, 0.09), "hist_pit+best_market_aux": (0.07, 0.10)})
    assert choose(valid_scores(tmp_path)) == "hist_pit+best" == CANDIDATES[0]  # a tie with best_aux
    assert choose(valid_scores(tmp_path / "none")) is None


def test_the_page_never_shows_a_test_figure(tmp_path, capsys):
    _fill(tmp_path, {row: (0.0812, 0.1003) for row in CANDIDATES})
    assert main(["--results-dir", str(tmp_path)]) == 0
    page = (tmp_path / "screen.md").read_text()
    assert "0.0812 (3 of 3)" in page and "0.9" not in page  # the runs' test IC (0.9) is never read
    record = json.loads((tmp_path / "screen_choice.json").read_text())
    assert record["choice"] == "hist_pit+best" and "metrics" not in json.dumps(record)


def test_the_overall_mean_waits_for_both_windows(tmp_path):
    _fill(tmp_path, {"hist_pit+best": (0.08, 0.10)})
    _write(tmp_path, "screen-dev", "hist_pit+best_aux", 0, 0.09)
    lines = {line.split(" |")[0]: line for line in table(valid_scores(tmp_path)).splitlines()}
    assert lines["| hist_pit+best"].endswith("| 0.0900 | 6 of 6 |")
    assert lines["| hist_pit+best_aux"].endswith("| — | 1 of 6 |")  # not 0.0900: one window, one seed


def test_a_run_without_a_finite_valid_score_counts_as_missing(tmp_path):
    _fill(tmp_path, {row: (0.08, 0.10) for row in CANDIDATES})
    _write(tmp_path, "final", "hist_pit+best", 1, float("nan"))  # the recipe's seed 1 on dev: no finite score
    scores = valid_scores(tmp_path)
    assert 1 not in scores["hist_pit+best"]["dev"] and choose(scores) is None
