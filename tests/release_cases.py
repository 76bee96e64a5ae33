"""The small fits whose predictions are pinned by ``test_parity_release.py`` (see there)."""

from __future__ import annotations

from qlib_hist import HIST

BASE = dict(d_feat=6, hidden_size=8, num_layers=1, n_epochs=2, early_stop=5, lr=1e-3, GPU=-1)

#: case name -> HIST keyword arguments beyond BASE and the concept files
CASES = {
    "gru_legacy_ic": dict(base_model="GRU", metric="ic", seed=3),
    "lstm_table_paper": dict(
        base_model="LSTM",
        metric="rank_ic",
        seed=1,
        hidden_topk=2,
        concept_weight="$close * $volume",
        concept_refine=True,
        temporal_attention=True,
        smooth_steps=2,
        table=True,
    ),
    "gru_pretrain_loss": dict(base_model="GRU", metric="", seed=5, pretrain_epochs=1, eval_train=True),
}


def make_case(name: str, demo) -> HIST:
    options = dict(CASES[name])
    if options.pop("table", False):
        concepts = dict(stock2concept=str(demo.membership))
    else:
        concepts = dict(stock2concept=str(demo.stock2concept), stock_index=str(demo.stock_index))
    return HIST(**BASE, **concepts, **options)


def fit_case(name: str, demo, dataset) -> HIST:
    model = make_case(name, demo)
    model.fit(dataset)
    return model
