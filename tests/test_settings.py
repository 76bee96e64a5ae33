"""Typed settings (``qlib_hist.settings``): each group validates on construction and names the argument; HIST's flat
keyword arguments are routed to their groups, and stay readable and settable on the model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from qlib_hist.settings import (
    ConceptSettings,
    HISTSettings,
    NetworkSettings,
    SettingsError,
    TrainSettings,
)

GROUP_OF = {
    name: cls
    for cls in (NetworkSettings, TrainSettings, ConceptSettings)
    for name in (f.name for f in dataclasses.fields(cls))
}

BAD = [  # argument, value, what the message says after "<name> must be "
    ("d_feat", "abc", "an integer"),
    ("d_feat", None, "an integer"),
    ("d_feat", 0, ">= 1"),
    ("hidden_size", 2.5, "an integer"),
    ("dropout", -0.1, "in [0.0, 1.0]"),
    ("dropout", 1.5, "in [0.0, 1.0]"),
    ("seed", -1, "in [0, 4294967295]"),
    ("hidden_topk", 0, ">= 1"),
    ("concept_refine", "maybe", "true or false"),  # "false" is YAML's False (1bce3cb): never True
    ("temporal_attention", 2, "true or false"),
    ("base_model", "RNN", "one of ['GRU', 'LSTM']"),
    ("lr", "abc", "a number"),
    ("lr", float("nan"), "a finite number"),
    ("weight_decay", float("inf"), "a finite number"),
    ("seed", 1.5, "an integer"),
    ("n_epochs", -1, ">= 0"),
    ("early_stop", 0, ">= 1"),
    ("smooth_steps", 0, ">= 1"),
    ("eval_train", None, "true or false"),
    ("optimizer", "sgd2", "one of ['adam', 'gd']"),
    ("loss", "mae", "one of ['mse', 'ic', 'mse+ic']"),
    ("metric", "foo", "one of"),
    ("GPU", 1.5, "a CUDA index or a device string"),
    ("stock2concept", 3, "a string"),
    ("concept_weight", ["$close"], "a string"),
]
IDS = [f"{name}={value!r}" for name, value, _ in BAD]


@pytest.mark.parametrize("name, value, says", BAD, ids=IDS)
def test_each_group_validates_and_names_the_argument(name, value, says):
    with pytest.raises(ValueError) as err:
        GROUP_OF[name](**{name: value})
    message = str(err.value)
    assert message.startswith(f"{name} must be "), message
    assert says in message and message.endswith(f"got {value!r}"), message


@pytest.mark.parametrize(
    "name, value, says", [b for b in BAD if b[0] != "metric"], ids=[i for i in IDS if not i.startswith("metric=")]
)
def test_errors_are_settings_errors(name, value, says):
    with pytest.raises(SettingsError):
        GROUP_OF[name](**{name: value})
    assert issubclass(SettingsError, ValueError)


def test_bad_metric_is_a_settings_error():
    with pytest.raises(SettingsError):
        TrainSettings(metric="foo")


@pytest.mark.parametrize(
    "name",
    [
        "d_feat",
        "lr",
        "seed",
        "concept_refine",
        "hidden_topk",
        "early_stop",
        "base_model",
        "optimizer",
        "loss",
        "metric",
    ],
)
def test_hist_surfaces_the_errors(name):
    from qlib_hist import HIST

    value = next(value for bad_name, value, _ in BAD if bad_name == name)
    with pytest.raises(ValueError, match=f"^{name} must be "):
        HIST(**{name: value, "GPU": -1})


def test_normalisation():
    t = TrainSettings(optimizer="ADAM", metric="", n_epochs=3.0, seed=7.0, lr=1, eval_train=1)
    assert (t.optimizer, t.metric, t.n_epochs, t.seed, t.lr, t.eval_train) == ("adam", "loss", 3, 7, 1.0, True)
    assert type(t.n_epochs) is int and type(t.seed) is int and type(t.lr) is float and type(t.eval_train) is bool
    assert TrainSettings(metric=None).metric == "loss" and TrainSettings(metric="IC").metric == "ic"
    assert TrainSettings(metric="Precision@10").metric == "precision@10"
    assert TrainSettings(optimizer="GD").optimizer == "gd"
    assert TrainSettings(checkpoint_dir=Path("/tmp/ckpt")).checkpoint_dir == "/tmp/ckpt"  # a path names a folder
    assert TrainSettings(GPU="cuda:1").GPU == "cuda:1" and TrainSettings(GPU=-1).GPU == -1
    n = NetworkSettings(d_feat=6.0, concept_refine=0, temporal_attention=True)
    assert n.d_feat == 6 and n.concept_refine is False and n.temporal_attention is True
    for text, value in (
        ("false", False),
        ("False", False),
        ("no", False),
        ("off", False),
        ("true", True),
        ("yes", True),
        ("on", True),
    ):
        assert NetworkSettings(concept_refine=text).concept_refine is value, text  # YAML's spellings
    with pytest.raises(dataclasses.FrozenInstanceError):
        n.d_feat = 7  # frozen: changes go through replace (validated again)


def test_from_kwargs_routes_each_argument_to_its_group():
    settings, unknown = HISTSettings.from_kwargs(
        d_feat=5,
        hidden_topk=2,
        lr=0.01,
        metric="ic",
        seed=1,
        stock2concept="m.csv",
        concept_weight="$close",
        colour="red",
    )
    assert unknown == {"colour": "red"}
    assert settings.network == NetworkSettings(d_feat=5, hidden_topk=2)
    assert settings.training == TrainSettings(lr=0.01, metric="ic", seed=1)
    assert settings.concepts == ConceptSettings(stock2concept="m.csv", concept_weight="$close")
    flat = settings.flat()
    assert list(flat) == list(HISTSettings.field_names())
    assert flat["d_feat"] == 5 and flat["metric"] == "ic" and flat["stock2concept"] == "m.csv"
    assert HISTSettings.from_kwargs(**flat) == (settings, {})  # the flat form is the pickled form: it round-trips
    assert HISTSettings.from_kwargs() == (HISTSettings(), {})
    with pytest.raises(SettingsError, match="^lr must be"):
        HISTSettings.from_kwargs(lr="fast")


def test_replace_validates_again_and_refuses_unknown_names():
    settings = HISTSettings()
    changed = settings.replace(n_epochs=3, hidden_topk=2)
    assert changed.training.n_epochs == 3 and changed.network.hidden_topk == 2
    assert settings.training.n_epochs == 200  # the original is untouched
    with pytest.raises(SettingsError, match="^n_epochs must be"):
        settings.replace(n_epochs=-1)
    with pytest.raises(SettingsError, match="unknown HIST setting.*colour"):
        settings.replace(colour="red")


def test_fingerprint_fields_leave_out_where_to_write():
    settings = HISTSettings()
    fields = settings.fingerprint_fields()
    for name in ("checkpoint_dir", "pretrain_save_path", "stock2concept_url", "GPU"):
        assert name not in fields, name
    assert set(fields) == set(HISTSettings.field_names()) - {
        "checkpoint_dir",
        "pretrain_save_path",
        "stock2concept_url",
        "GPU",
        "finetune_epochs",  # finetune's recipe: fit (what a checkpoint resumes) never reads it
        "finetune_lr",
        "ensemble_mode",  # how members step, not what a member computes: a checkpoint resumes in either mode
        # added in 0.7: in the fingerprint only when set (test_keys_added_in_0_7_leave_the_fingerprint_...)
        "market_context",
        "market_temperature",
        "aux_horizons",
        "aux_weight",
    }
    moved = settings.replace(checkpoint_dir="/elsewhere", GPU=-1, pretrain_save_path="b.pkl", stock2concept_url=None)
    assert moved.fingerprint_fields() == fields
    assert settings.replace(lr=0.5).fingerprint_fields() != fields


def test_hist_arguments_are_settable_attributes():
    from qlib_hist import HIST

    model = HIST(n_epochs=5, GPU=-1, colour="red")  # an unknown argument is logged, not an error
    assert model.n_epochs == 5 and model.settings.training.n_epochs == 5
    model.n_epochs = 3
    assert model.n_epochs == 3 and model.settings.training.n_epochs == 3
    with pytest.raises(SettingsError, match="^n_epochs must be >= 0, got -1$"):
        model.n_epochs = -1
    assert model.n_epochs == 3  # a refused value leaves the setting as it was
    model.metric = "IC"
    assert model.metric == "ic"
    with pytest.raises(AttributeError, match="colour"):
        model.colour  # noqa: B018


# ---------------------------------------------------------------------------------------------- documented once
def test_every_setting_has_its_help_text():
    from qlib_hist.settings_doc import documented_fields

    fields = documented_fields()
    assert sorted(f.name for f in fields) == sorted(HISTSettings.field_names())
    missing = [f.name for f in fields if not f.metadata["help"].strip()]
    assert not missing, f"settings without a help text: {missing}"


def test_the_readme_table_of_yaml_keys_is_generated_from_the_help_texts():
    from qlib_hist.settings_doc import committed_table, settings_table

    readme = Path(__file__).resolve().parents[1] / "README.md"
    committed = committed_table(readme.read_text(encoding="utf-8"))
    assert committed == settings_table(), (
        "README.md's table of YAML keys is stale: run `python -m qlib_hist.settings_doc --write README.md`"
    )


def test_the_generated_table_has_every_key_once_with_its_default():
    from qlib_hist.settings_doc import settings_table

    rows = [line for line in settings_table().splitlines() if line.startswith("| `")]
    names = [row.split("`")[1] for row in rows]
    assert sorted(names) == sorted(HISTSettings.field_names())
    assert "| `dropout` | 0.0 |" in settings_table() and "| `concept_refine` | false |" in settings_table()
    assert "| `stock2concept_url` | qlib's address |" in settings_table()  # not the 100-character URL


def test_hist_docstring_and_signature_are_generated_in_qlibs_order():
    import inspect

    from qlib.contrib.model.pytorch_hist import HIST as QlibHIST

    from qlib_hist import HIST
    from qlib_hist.settings import QLIB_ARGUMENTS
    from qlib_hist.settings_doc import documented_fields

    qlib_order = [name for name in inspect.signature(QlibHIST.__init__).parameters if name not in ("self", "kwargs")]
    assert list(QLIB_ARGUMENTS) == qlib_order
    ours = [name for name in inspect.signature(HIST).parameters if name != "kwargs"]
    assert ours[: len(qlib_order)] == qlib_order and sorted(ours) == sorted(HISTSettings.field_names())
    doc = HIST.__doc__
    positions = [doc.index(f"\n    {f.name} : ") for f in documented_fields()]
    assert positions == sorted(positions)  # every parameter, in the documentation's order
    assert doc.index("Extra parameters") > doc.index("\n    seed : ")
    assert "``precision@k``" in doc and "CUDA index or device string" in doc  # the help texts, as reStructuredText


def test_each_small_definition_lives_in_one_place():
    """``PathLike``, the sha1-of-JSON digest and the choices of the settings are each written once."""
    import re

    root = Path(__file__).resolve().parents[1]
    files = [p for folder in ("qlib_hist", "benchmarks") for p in sorted((root / folder).rglob("*.py"))]
    homes = {
        r"^PathLike\s*=": "qlib_hist/atomic_files.py",
        r"sha1\(json\.dumps": "qlib_hist/digests.py",
        r"^RNN_TYPES\s*=": "qlib_hist/settings.py",
        r"^OPTIMIZERS\s*=": "qlib_hist/settings.py",
        r"^LOSSES\s*=": "qlib_hist/metrics.py",
    }
    for pattern, home in homes.items():
        found = [str(p.relative_to(root)) for p in files if re.search(pattern, p.read_text(), re.MULTILINE)]
        assert found == [home], f"{pattern}: {found}"


def test_the_optimizer_names_are_the_settings_own():
    import torch

    from qlib_hist.training import make_optimizer

    net = torch.nn.Linear(2, 1)
    assert type(make_optimizer("ADAM", net, 1e-3)) is torch.optim.Adam
    with pytest.raises(SettingsError, match=r"optimizer must be one of \['adam', 'gd'\], got 'adamw'"):
        make_optimizer("adamw", net, 1e-3)  # was SGD, silently
    with pytest.raises(SettingsError, match="optimizer must be one of"):
        TrainSettings(optimizer="sgd")


def test_keys_added_in_0_7_leave_the_fingerprint_of_a_fit_that_does_not_set_them():
    """A checkpoint written by 0.6 (31 fingerprinted keys; the digest below, computed with 0.6.0's package) still
    resumes; setting a new key makes another fit, so it joins the fingerprint."""
    from qlib_hist.digests import json_digest

    settings, _ = HISTSettings.from_kwargs(seed=3, loss="ic", lr=1e-4)
    fields = settings.fingerprint_fields()
    assert len(fields) == 31 and json_digest(fields) == "c6d3a06899f1c7d4"
    for key, value in (("market_context", ["SH000300"]), ("aux_horizons", [2]), ("aux_weight", 0.25)):
        changed, _ = HISTSettings.from_kwargs(seed=3, loss="ic", lr=1e-4, **{key: value})
        assert key in changed.fingerprint_fields() and json_digest(changed.fingerprint_fields()) != json_digest(fields)
