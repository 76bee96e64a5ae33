"""Typed settings: one dataclass per concern, each field validated once, where it is parsed.

``HIST`` keeps qlib's flat keyword arguments (a qlib YAML runs by changing only ``module_path``) and routes each
to the dataclass that owns it (:meth:`HISTSettings.from_kwargs`). Everything else derives from the fields: the
constructor's signature and docstring, the README's table of YAML keys (:mod:`qlib_hist.settings_doc`), the
parameter log line, the checkpoint fingerprint and the pickled form, so a new option is one field here.

- :class:`NetworkSettings`  what :class:`~qlib_hist.network.HISTModel` is built from (shape and the paper's options)
- :class:`TrainSettings`    the optimisation recipe and where training writes
- :class:`ConceptSettings`  where the predefined concepts and their member weights come from

A field's metadata says what it means (``help``, written once), its bounds (``minimum``), its ``choices`` and whether
it changes what ``fit`` computes (``fingerprint``; paths that only say where to write do not). Errors name the
argument:
``"<name> must be ..., got <value>"``. This module imports no qlib.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from .errors import QlibHistError
from .metrics import LOSSES, normalize_metric

#: Where qlib's HIST downloads its CSI300 concept matrix from (the default of ``stock2concept_url``).
QLIB_STOCK2CONCEPT_URL = "https://github.com/SunsetWolf/qlib_dataset/releases/download/v0/qlib_csi300_stock2concept.npy"

RNN_TYPES = ("GRU", "LSTM")  # torch.nn's classes of these names (qlib_hist.network.make_rnn)
#: the YAML spellings of a boolean (YAML 1.1 readers turn them into bools, qrun's YAML 1.2 reader keeps some as text):
#: ``"false"`` must never mean True, as ``bool("false")`` would
YAML_BOOLEANS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
OPTIMIZERS = ("adam", "gd")  # Adam (AdamW with weight_decay) and SGD (qlib_hist.training.make_optimizer)
PRECISIONS = ("fp32", "bf16")
#: how an ensemble's members train: ``auto`` = ``batched`` on CUDA, ``sequential`` on a CPU
ENSEMBLE_MODES = ("auto", "batched", "sequential")
#: the most members an ``ensemble`` may have: each member is a whole network and a whole fit (64 fits of a large
#: universe already take days); a larger number is a typo, refused before any member is built
MAX_ENSEMBLE = 64
SEED_MAX = 2**32 - 1  # numpy's seed range
#: the settings outside ``NetworkSettings`` that still shape the network (its members): refused on assignment
#: after construction, as the network's own settings are
SHAPES_NETWORK = ("ensemble",)
#: a module switch -> the options only that module reads; set to a non-default value while the module is off,
#: they change nothing (:meth:`HISTSettings.warnings` names them). ``stock2concept_url`` (only where a missing file
#: is fetched from) is left out: turning downloads off is no mistake.
LIST_SWITCHES = ("market_context", "aux_horizons")  # switches that are on when they list something
MODULE_OPTIONS: Dict[str, Tuple[str, ...]] = {
    "predefined_concepts": ("concept_refine", "stock2concept", "stock_index", "concept_weight"),
    "hidden_concepts": ("hidden_topk",),
    "market_context": ("market_temperature",),
    "aux_horizons": ("aux_weight",),
}


#: ``setting(fingerprint=NON_DEFAULT)``: the key joins the fingerprint only when set, so the checkpoints of fits that
#: leave it at its default (all of them, before the key existed) still resume
NON_DEFAULT = "non_default"


class SettingsError(QlibHistError):
    """A setting has a wrong type or value; the message names the argument."""


def optimizer_name(value: str) -> str:
    """``value`` (any case) as one of :data:`OPTIMIZERS`, or a :class:`SettingsError` naming ``optimizer``."""
    if not isinstance(value, str) or value.lower() not in OPTIMIZERS:
        raise SettingsError(f"optimizer must be one of {list(OPTIMIZERS)}, got {value!r}")
    return value.lower()


def setting(
    default: Any,
    *,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    choices: Optional[Tuple[str, ...]] = None,
    max_items: Optional[int] = None,
    fingerprint: Union[bool, str] = True,
    none_as: Any = None,
    help: str,
    see: Optional[str] = None,
    shown_default: Optional[str] = None,
) -> Any:
    """A settings field with its checks (see the module docstring); ``none_as``: the value ``None`` stands for.

    ``help`` is the field's one description (markdown: `code` in single backquotes): ``HIST``'s docstring and the
    README's table of YAML keys are generated from it (:mod:`qlib_hist.settings_doc`). ``see``: a page of ``docs/``
    (with its anchor) that says more; ``shown_default``: the default as the table shows it, where the value is long.
    """
    meta = {
        "minimum": minimum,
        "maximum": maximum,
        "choices": choices,
        "max_items": max_items,
        "fingerprint": fingerprint,
        "none_as": none_as,
        "help": help,
        "see": see,
        "shown_default": shown_default,
    }
    return field(default=default, metadata=meta)


def _check(name: str, value: Any, hint: Any, meta: dict) -> Any:
    """``value`` checked against the type ``hint`` and ``meta``; returns it in its canonical type."""
    if value is None and meta.get("none_as") is not None:
        value = meta["none_as"]
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Union and type(None) in args:
        if value is None:
            return None
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else Union[tuple(rest)]
    if typing.get_origin(hint) is tuple:  # a YAML list: each item checked (and bounded) as the item type
        return _check_list(name, value, typing.get_args(hint)[0], meta)
    if hint is bool:
        if isinstance(value, str) and value.strip().lower() in YAML_BOOLEANS:
            return YAML_BOOLEANS[value.strip().lower()]
        if not isinstance(value, (bool, numbers.Integral)) or value not in (0, 1):
            raise SettingsError(f"{name} must be true or false, got {value!r}")
        return bool(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value).is_integer():
            raise SettingsError(f"{name} must be an integer{_bound(meta)}, got {value!r}")
        value = int(float(value))
    elif hint is float:
        value = _yaml11_float(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise SettingsError(f"{name} must be a number{_bound(meta)}, got {value!r}")
        if not math.isfinite(value):  # .inf, .nan: every step would be NaN or diverge
            raise SettingsError(f"{name} must be a finite number{_bound(meta)}, got {value!r}")
        value = float(value)
    elif hint is str:
        value = os.fspath(value) if isinstance(value, os.PathLike) else value  # a pathlib.Path names a file too
        if not isinstance(value, str):
            raise SettingsError(f"{name} must be a string, got {value!r}")
    elif typing.get_origin(hint) is Union:  # e.g. GPU: an index or a device string
        if isinstance(value, bool) or not isinstance(value, (numbers.Integral, str)):
            raise SettingsError(f"{name} must be a CUDA index or a device string such as 'cuda:0', got {value!r}")
    if (meta.get("minimum") is not None and value < meta["minimum"]) or (
        meta.get("maximum") is not None and value > meta["maximum"]
    ):
        raise SettingsError(f"{name} must be {_bound(meta).strip()}, got {value!r}")
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise SettingsError(f"{name} must be one of {list(meta['choices'])}, got {value!r}")
    return value


def _check_list(name: str, value: Any, item: Any, meta: dict) -> Tuple[Any, ...]:
    """A YAML list as a tuple of checked, distinct items of type ``item`` (at most ``max_items``)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        kind = "index names" if item is str else "integers"
        raise SettingsError(f"{name} must be a list of {kind} (e.g. [a, b]), got {value!r}")
    items = tuple(_check(f"{name}[{i}]", v, item, {**meta, "max_items": None}) for i, v in enumerate(value))
    if meta.get("max_items") is not None and len(items) > meta["max_items"]:
        raise SettingsError(f"{name} takes at most {meta['max_items']} items, got {len(items)}")
    repeated = sorted({v for v in items if items.count(v) > 1}, key=str)
    if repeated:
        raise SettingsError(f"{name} lists {', '.join(map(str, repeated))} more than once")
    if item is str and any(not v.strip() for v in items):
        raise SettingsError(f"{name} holds an empty name: {list(value)!r}")
    return items


def _yaml11_float(value: Any) -> Any:
    """``"1e-4"`` -> ``1e-4``: YAML 1.1 readers (PyYAML's ``safe_load``) leave exponent floats without a dot as
    strings, while qrun's YAML 1.2 reader gives floats; the same YAML must mean the same model."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _bound(meta: dict) -> str:
    low, high = meta.get("minimum"), meta.get("maximum")
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    return f" >= {low}" if low is not None else (f" <= {high}" if high is not None else "")


class _Validated:
    """Checks every field on construction; subclasses normalise further in ``_normalise``."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            object.__setattr__(self, f.name, _check(f.name, getattr(self, f.name), hints[f.name], dict(f.metadata)))
        self._normalise()

    def _normalise(self) -> None:
        pass


@dataclass(frozen=True)
class NetworkSettings(_Validated):
    """The network's shape and the paper's architectural options (each off by default = qlib's HISTModel)."""

    d_feat: int = setting(6, minimum=1, help="features per time step (Alpha360: 6 fields x 60 days = 360 columns)")
    hidden_size: int = setting(64, minimum=1, help="H, the RNN encoder's state size")
    num_layers: int = setting(2, minimum=1, help="the RNN encoder's layers")
    dropout: float = setting(0.0, minimum=0.0, maximum=1.0, help="the RNN encoder's dropout between layers")
    base_model: str = setting("GRU", choices=RNN_TYPES, help="the RNN encoder: `GRU` or `LSTM`")
    hidden_topk: int = setting(
        1, minimum=1, help="a stock joins the hidden concepts of its K most similar peers (the paper's code; 1 = qlib)"
    )
    concept_refine: bool = setting(
        False, help="the paper's second pass over each concept's members before stocks attend to concepts"
    )
    temporal_attention: bool = setting(
        False, help="attention over the encoder's time steps (60 for Alpha360) in place of its last state"
    )
    # module switches (issue 28's ablation)
    predefined_concepts: bool = setting(
        True,
        help="HIST's predefined-concept module; off: it adds nothing to the output and removes nothing from the "
        "residual, and no concept table (`stock2concept`) is needed or read",
        see="model.md#module-switches-and-recipe-options",
    )
    hidden_concepts: bool = setting(True, help="HIST's hidden-concept module; off: as `predefined_concepts`")
    individual: bool = setting(
        True,
        help="HIST's individual branch on the residual; all three modules off leave the base RNN with a linear "
        "output layer (qlib's LSTMModel/GRUModel layout)",
    )
    # inputs beyond the stock's own features (qlib_hist.context), off by default
    market_context: Tuple[str, ...] = setting(
        (),
        max_items=16,
        fingerprint=NON_DEFAULT,
        none_as=(),
        help="index instruments of the provider (e.g. `[SH000300, SH000905, SH000903]`) whose state (return, "
        "and its mean and std, and the amount's, over 5-60 days; from data up to the day) gates the encoder's "
        "input fields, as MASTER does; empty = off",
        see="model.md#market-context-and-auxiliary-horizons",
        shown_default="[]",
    )
    market_temperature: float = setting(
        10.0,
        minimum=1e-3,
        fingerprint=NON_DEFAULT,
        help="the market gate's softmax temperature (MASTER's 10 for CSI300)",
    )
    aux_horizons: Tuple[int, ...] = setting(
        (),
        minimum=1,
        maximum=60,
        max_items=8,
        fingerprint=NON_DEFAULT,
        none_as=(),
        help="auxiliary heads learning the k-day forward returns (e.g. `[3, 5, 10]`), rank-normalised per day like "
        "the label; predictions come from the main head only; empty = off",
        see="model.md#market-context-and-auxiliary-horizons",
        shown_default="[]",
    )


@dataclass(frozen=True)
class TrainSettings(_Validated):
    """How ``fit`` trains (qlib's HIST arguments plus this package's recipe options) and where it writes."""

    n_epochs: int = setting(200, minimum=0, help="maximum training epochs")
    lr: float = setting(0.001, minimum=0.0, help="learning rate")
    metric: str = setting(
        "",
        none_as="",
        help='early stopping on valid: `ic`, `rank_ic`, `loss` (`""` = `loss`), or the paper\'s `precision@k`',
    )
    early_stop: int = setting(20, minimum=1, help="epochs without a better valid metric before training stops")
    loss: str = setting(
        "mse",
        choices=LOSSES,
        help="`mse` (qlib's: over the day's non-NaN labels); added here: `ic` (minus the day's Pearson correlation) "
        "and `mse+ic` (`mse - ic_weight * ic`)",
    )
    ic_weight: float = setting(1.0, minimum=0.0, help="the weight of the IC term in `mse+ic`")
    optimizer: str = setting("adam", help="`adam` or `gd` (SGD), any case")
    weight_decay: float = setting(
        0.0, minimum=0.0, help="decoupled weight decay (`adam` becomes AdamW); 0 = off, as in qlib"
    )
    seed: Optional[int] = setting(
        None,
        minimum=0,
        maximum=SEED_MAX,
        help="seeds the weights, the day shuffling and dropout: the same seed on one CPU gives the same predictions",
    )
    eval_train: bool = setting(
        False,
        help="score train with a separate eval pass each epoch, as qlib does (about +30% epoch time); off: the "
        "epoch's own train-mode predictions",
    )
    model_path: Optional[str] = setting(
        None,
        help="a saved qlib LSTM/GRU (`rnn.*`, `fc_out.*`) to start the encoder from",
        see="model.md#starting-from-a-pretrained-base-rnn",
    )
    keep_start: bool = setting(
        False,
        help="`fit` scores its starting weights (`model_path`'s) on valid as epoch -1 and keeps them if no epoch "
        "beats them, as `finetune` does",
    )
    pretrain_epochs: int = setting(
        0, minimum=0, help="without `model_path`: first pretrain the base RNN for up to N epochs (0 = off, as in qlib)"
    )
    pretrain_save_path: Optional[str] = setting(
        None, fingerprint=False, help="save the pretrained base RNN in qlib's `model_path` format"
    )
    smooth_steps: int = setting(
        1, minimum=1, help="evaluate (and keep as best) the mean of the last N epochs' weights (1 = off)"
    )
    checkpoint_dir: Optional[str] = setting(
        None,
        fingerprint=False,
        help="a resumable checkpoint after every epoch; `fit` resumes from it",
        see="model.md#training-that-survives-interruption",
    )
    GPU: Union[int, str] = setting(
        0, fingerprint=False, help="CUDA index or device string; CPU (with a log line) when CUDA is absent or `GPU < 0`"
    )
    finetune_epochs: int = setting(
        5,
        minimum=1,
        fingerprint=False,
        help="`finetune`'s epoch cap (rolling retraining with warm start)",
        see="rolling.md#fine-tuning",
    )
    finetune_lr: Optional[float] = setting(
        None, minimum=0.0, fingerprint=False, help="`finetune`'s learning rate (`null`: `lr`)"
    )
    ensemble: int = setting(
        1,
        minimum=1,
        maximum=MAX_ENSEMBLE,
        help=f"K members (1 .. {MAX_ENSEMBLE}) from seeds `seed` .. `seed+K-1` in one model, each a whole fit; "
        "predicts their mean daily z-score. Fixed when the model is made",
        see="model.md#seed-ensembles-ensemble-k",
    )
    ensemble_mode: str = setting(
        "auto",
        choices=ENSEMBLE_MODES,
        fingerprint=False,
        help="how `ensemble`'s members train: `batched` steps all K together as one network (each member's own "
        "seed, day order, optimizer and early stop), `sequential` fits them one after another; `auto`: batched on "
        "CUDA, sequential on a CPU",
        see="model.md#seed-ensembles-ensemble-k",
    )
    precision: str = setting(
        "fp32",
        choices=PRECISIONS,
        help="`bf16`: the encoder runs under bf16 autocast, the concept modules and heads in fp32 (CUDA, or a CPU with "
        "avx512_bf16/AMX, where an epoch took 0.61–0.69x of fp32's time); elsewhere keep `fp32`",
        see="model.md#gpu-speed",
    )
    cuda_graphs: bool = setting(
        False,
        help="CUDA only: days padded to a few static sizes, one captured train step replayed for each",
        see="model.md#gpu-speed",
    )
    aux_weight: float = setting(
        0.5,
        minimum=0.0,
        fingerprint=NON_DEFAULT,
        help="the weight of the `aux_horizons` heads' mean loss beside the main loss",
    )

    def _normalise(self) -> None:
        try:
            object.__setattr__(self, "metric", normalize_metric(self.metric))
        except ValueError as err:
            raise SettingsError(str(err)) from None
        object.__setattr__(self, "optimizer", optimizer_name(self.optimizer))


@dataclass(frozen=True)
class ConceptSettings(_Validated):
    """Where the predefined concepts (and their member weights) come from."""

    stock2concept: Optional[str] = setting(
        None,
        help="a membership table `.csv`/`.parquet` (point in time) or qlib's legacy `.npy` matrix",
        see="concepts.md",
    )
    stock_index: Optional[str] = setting(
        None, help="legacy matrix only: `{instrument: row}` as qlib's pickled-dict `.npy` or a `.json`"
    )
    stock2concept_url: Optional[str] = setting(
        QLIB_STOCK2CONCEPT_URL,
        fingerprint=False,
        help="where a missing legacy `.npy` is downloaded from; `null` = never",
        shown_default="qlib's address",
    )
    concept_weight: Optional[str] = setting(
        None,
        help='member weights in the predefined concepts: a qlib expression (`"$close * $volume"`) or a table '
        "`instrument, datetime, value`",
        see="concepts.md#member-weights-concept_weight",
    )


GROUPS = {"network": NetworkSettings, "training": TrainSettings, "concepts": ConceptSettings}
#: qlib's HIST arguments in the order of ``qlib.contrib.model.pytorch_hist.HIST.__init__``; every other field is
#: added by this package
QLIB_ARGUMENTS = (
    "d_feat",
    "hidden_size",
    "num_layers",
    "dropout",
    "n_epochs",
    "lr",
    "metric",
    "early_stop",
    "loss",
    "base_model",
    "model_path",
    "stock2concept",
    "stock_index",
    "optimizer",
    "GPU",
    "seed",
)


@dataclass(frozen=True)
class HISTSettings:
    """Every setting of a ``HIST``: the three groups, each validated on construction."""

    network: NetworkSettings = field(default_factory=NetworkSettings)
    training: TrainSettings = field(default_factory=TrainSettings)
    concepts: ConceptSettings = field(default_factory=ConceptSettings)

    def __post_init__(self) -> None:
        """The checks that span two settings (each group checked its own fields already)."""
        t = self.training
        if t.seed is not None and t.seed + t.ensemble - 1 > SEED_MAX:
            raise SettingsError(
                f"seed={t.seed} with ensemble={t.ensemble}: the members' seeds run to seed+ensemble-1 = "
                f"{t.seed + t.ensemble - 1}, past numpy's {SEED_MAX}: use seed <= {SEED_MAX - t.ensemble + 1}"
            )
        if t.cuda_graphs and t.ensemble > 1 and t.ensemble_mode == "batched":
            raise SettingsError(
                f"cuda_graphs with ensemble={t.ensemble} and ensemble_mode='batched': the batched members run eager "
                "steps; set cuda_graphs false, or ensemble_mode 'sequential'"
            )
        n = self.network
        if t.cuda_graphs and (n.market_context or n.aux_horizons):
            used = "market_context" if n.market_context else "aux_horizons"
            raise SettingsError(
                f"cuda_graphs with {used}: the captured step trains the main head on the day's features alone; "
                f"set cuda_graphs false, or leave {used} empty"
            )

    @staticmethod
    def shapes_network(name: str) -> bool:
        """Whether the setting ``name`` defines the built network (its shape, modules or members)."""
        return HISTSettings.field_names().get(name) == "network" or name in SHAPES_NETWORK

    def unused_options(self) -> Tuple[str, ...]:
        """The options of the modules switched off (:data:`MODULE_OPTIONS`): whatever their values, the model
        computes the same."""
        return tuple(k for switch, keys in MODULE_OPTIONS.items() if not getattr(self.network, switch) for k in keys)

    def in_effect(self) -> "HISTSettings":
        """A copy with the :meth:`unused_options` at their defaults: two settings that train the same model compare
        equal."""
        return self.replace(**{name: _defaults()[name] for name in self.unused_options()})

    def warnings(self) -> List[str]:
        """What these settings (each valid) most likely do not mean: an option of a switched-off module, the IC
        loss early-stopped on the valid MSE, ``keep_start`` with a random start. One line each, naming the keys."""
        flat, defaults, out = self.flat(), _defaults(), []
        for switch, keys in MODULE_OPTIONS.items():
            for key in keys:
                if not getattr(self.network, switch) and flat[key] != defaults[key]:
                    off = "[]" if switch in LIST_SWITCHES else "false"
                    out.append(
                        f"{key}={flat[key]!r} has no effect with {switch}={off}: only that module reads it "
                        f"(remove {key}, or turn {switch} on)"
                    )
        t = self.training
        if t.loss == "ic" and t.metric == "loss":
            out.append(
                "loss='ic' trains on the daily IC, but metric='loss' (also what metric '' means) early-stops the fit "
                "on the valid MSE, which this loss does not train: set metric to 'ic' (or 'rank_ic')"
            )
        if t.ensemble == 1 and t.ensemble_mode != "auto":
            out.append(
                f"ensemble_mode={t.ensemble_mode!r} has no effect with ensemble=1: it says how an ensemble's members "
                "train (remove ensemble_mode, or set ensemble >= 2)"
            )
        if t.keep_start and t.model_path is None and not t.pretrain_epochs:
            out.append(
                "keep_start=true without model_path (and pretrain_epochs=0): fit scores its random initial weights "
                "on valid as epoch -1 and keeps them when no epoch beats them; give model_path, or set keep_start "
                "false"
            )
        return out

    @staticmethod
    @functools.lru_cache(maxsize=None)  # asked on every HIST attribute access: the fields never change
    def field_names() -> Dict[str, str]:
        """Flat argument name -> the group that owns it (names are unique across groups)."""
        return {f.name: group for group, cls in GROUPS.items() for f in dataclasses.fields(cls)}

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> Tuple["HISTSettings", Dict[str, Any]]:
        """Route qlib-style flat arguments to their groups; returns (settings, the arguments no group knows)."""
        owner = cls.field_names()
        grouped: Dict[str, Dict[str, Any]] = {group: {} for group in GROUPS}
        unknown = {}
        for name, value in kwargs.items():
            if name in owner:
                grouped[owner[name]][name] = value
            else:
                unknown[name] = value
        return cls(**{group: GROUPS[group](**values) for group, values in grouped.items()}), unknown

    def flat(self) -> Dict[str, Any]:
        """Every setting by its argument name, in declaration order (plain values: the pickled form)."""
        return {name: value for group in GROUPS for name, value in dataclasses.asdict(getattr(self, group)).items()}

    def fingerprint_fields(self) -> Dict[str, Any]:
        """The settings that change what ``fit`` computes (checkpoints written with others are refused)."""
        out = {}
        for group, cls in GROUPS.items():
            for f in dataclasses.fields(cls):
                value = getattr(getattr(self, group), f.name)
                mode = f.metadata["fingerprint"]
                if mode is True or (mode == NON_DEFAULT and value != f.default):
                    out[f.name] = value
        return out

    def replace(self, **changes: Any) -> "HISTSettings":
        """A copy with some flat arguments changed (validated again)."""
        owner = self.field_names()
        unknown = sorted(set(changes) - set(owner))
        if unknown:
            raise SettingsError(f"unknown HIST setting(s): {', '.join(unknown)}")
        groups = {group: getattr(self, group) for group in GROUPS}
        for group in {owner[name] for name in changes}:
            mine = {k: v for k, v in changes.items() if owner[k] == group}
            groups[group] = dataclasses.replace(groups[group], **mine)
        return HISTSettings(**groups)


@functools.lru_cache(maxsize=None)
def _defaults() -> Dict[str, Any]:
    """Every setting's default, by its argument name."""
    return {f.name: f.default for cls in GROUPS.values() for f in dataclasses.fields(cls)}
