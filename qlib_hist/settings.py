"""Typed settings: one dataclass per concern, each field validated once, where it is parsed.

``HIST`` keeps qlib's flat keyword arguments (a qlib YAML runs by changing only ``module_path``) and routes each
to the dataclass that owns it (:meth:`HISTSettings.from_kwargs`). Everything else derives from the fields: the
constructor's signature, the parameter log line, the checkpoint fingerprint and the pickled form, so a new option
is one field here.

- :class:`NetworkSettings`  what :class:`~qlib_hist.network.HISTModel` is built from (shape and the paper's options)
- :class:`TrainSettings`    the optimisation recipe and where training writes
- :class:`ConceptSettings`  where the predefined concepts and their member weights come from

A field's metadata says its bounds (``minimum``), its ``choices`` and whether it changes what ``fit`` computes
(``fingerprint``; paths that only say where to write do not). Errors name the argument:
``"<name> must be ..., got <value>"``. This module imports no qlib.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Union

from .errors import QlibHistError
from .metrics import LOSSES, normalize_metric

#: Where qlib's HIST downloads its CSI300 concept matrix from (the default of ``stock2concept_url``).
QLIB_STOCK2CONCEPT_URL = "https://github.com/SunsetWolf/qlib_dataset/releases/download/v0/qlib_csi300_stock2concept.npy"

RNN_TYPES = ("GRU", "LSTM")
#: the YAML spellings of a boolean (YAML 1.1 readers turn them into bools, qrun's YAML 1.2 reader keeps some as text):
#: ``"false"`` must never mean True, as ``bool("false")`` would
YAML_BOOLEANS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
OPTIMIZERS = ("adam", "gd")
PRECISIONS = ("fp32", "bf16")


class SettingsError(QlibHistError):
    """A setting has a wrong type or value; the message names the argument."""


def setting(
    default: Any,
    *,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    choices: Optional[Tuple[str, ...]] = None,
    fingerprint: bool = True,
    none_as: Any = None,
) -> Any:
    """A settings field with its checks (see the module docstring); ``none_as``: the value ``None`` stands for."""
    meta = {"minimum": minimum, "maximum": maximum, "choices": choices, "fingerprint": fingerprint, "none_as": none_as}
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
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
            raise SettingsError(f"{name} must be a number{_bound(meta)}, got {value!r}")
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

    d_feat: int = setting(6, minimum=1)  # features per time step (Alpha360: 6 fields x 60 days)
    hidden_size: int = setting(64, minimum=1)  # H, the encoder's state size
    num_layers: int = setting(2, minimum=1)  # RNN layers
    dropout: float = setting(0.0, minimum=0.0, maximum=1.0)  # RNN dropout between layers
    base_model: str = setting("GRU", choices=RNN_TYPES)  # the encoder
    hidden_topk: int = setting(1, minimum=1)  # K peers whose hidden concepts a stock joins (qlib: 1)
    concept_refine: bool = setting(False)  # the paper's second pass over each concept's members
    temporal_attention: bool = setting(False)  # attention over the encoder's time steps instead of its last state
    # module switches (issue 28's ablation); off: the branch adds nothing to the output, removes nothing from the
    # residual. All three off: the base RNN with the output layer on its state (qlib's LSTMModel/GRUModel layout)
    predefined_concepts: bool = setting(True)  # the predefined-concept module (s_i)
    hidden_concepts: bool = setting(True)  # the hidden-concept module (t_i)
    individual: bool = setting(True)  # the individual branch on the residual


@dataclass(frozen=True)
class TrainSettings(_Validated):
    """How ``fit`` trains (qlib's HIST arguments plus this package's recipe options) and where it writes."""

    n_epochs: int = setting(200, minimum=0)
    lr: float = setting(0.001, minimum=0.0)
    metric: str = setting("", none_as="")  # early-stopping metric on valid; normalised: ""/None -> "loss"
    early_stop: int = setting(20, minimum=1)  # epochs without a better valid metric before stopping
    loss: str = setting("mse", choices=LOSSES)
    ic_weight: float = setting(1.0, minimum=0.0)  # mse+ic: the weight of the IC term
    optimizer: str = setting("adam")  # "adam" or "gd" (SGD), any case
    weight_decay: float = setting(0.0, minimum=0.0)  # decoupled weight decay (adam -> AdamW); 0 = off, as qlib
    seed: Optional[int] = setting(
        None, minimum=0, maximum=2**32 - 1
    )  # numpy's seed range  # weights, day shuffling and dropout
    eval_train: bool = setting(False)  # score train with a separate eval pass each epoch (qlib's way)
    model_path: Optional[str] = setting(None)  # a saved qlib LSTM/GRU to start the encoder from
    keep_start: bool = setting(False)  # a cold fit scores its starting weights as epoch -1, keeps them if unbeaten
    pretrain_epochs: int = setting(0, minimum=0)  # pretrain the base RNN first (0 = off, as qlib)
    pretrain_save_path: Optional[str] = setting(None, fingerprint=False)
    smooth_steps: int = setting(1, minimum=1)  # keep the mean of the last N epochs' weights (1 = off)
    checkpoint_dir: Optional[str] = setting(None, fingerprint=False)  # resumable checkpoint after every epoch
    GPU: Union[int, str] = setting(0, fingerprint=False)  # CUDA index or device string; CPU when absent
    finetune_epochs: int = setting(5, minimum=1, fingerprint=False)  # finetune's epoch cap (rolling warm start)
    finetune_lr: Optional[float] = setting(None, minimum=0.0, fingerprint=False)  # finetune's lr (None: lr)
    ensemble: int = setting(1, minimum=1)  # K members from seeds seed..seed+K-1; predicts their mean z-score
    precision: str = setting("fp32", choices=PRECISIONS)  # bf16: autocast the encoder and linear layers (CUDA)
    cuda_graphs: bool = setting(False)  # CUDA: days padded to STATIC_BUCKET stocks, one captured train step each

    def _normalise(self) -> None:
        try:
            object.__setattr__(self, "metric", normalize_metric(self.metric))
        except ValueError as err:
            raise SettingsError(str(err)) from None
        if self.optimizer.lower() not in OPTIMIZERS:
            raise SettingsError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        object.__setattr__(self, "optimizer", self.optimizer.lower())


@dataclass(frozen=True)
class ConceptSettings(_Validated):
    """Where the predefined concepts (and their member weights) come from."""

    stock2concept: Optional[str] = setting(None)  # membership table (.csv/.parquet) or legacy .npy matrix
    stock_index: Optional[str] = setting(None)  # legacy matrix only: {instrument: row}, .npy or .json
    stock2concept_url: Optional[str] = setting(QLIB_STOCK2CONCEPT_URL, fingerprint=False)  # download a missing .npy
    concept_weight: Optional[str] = setting(None)  # member weights: a qlib expression or a table file


GROUPS = {"network": NetworkSettings, "training": TrainSettings, "concepts": ConceptSettings}


@dataclass(frozen=True)
class HISTSettings:
    """Every setting of a ``HIST``: the three groups, each validated on construction."""

    network: NetworkSettings = field(default_factory=NetworkSettings)
    training: TrainSettings = field(default_factory=TrainSettings)
    concepts: ConceptSettings = field(default_factory=ConceptSettings)

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
        return {
            f.name: getattr(getattr(self, group), f.name)
            for group, cls in GROUPS.items()
            for f in dataclasses.fields(cls)
            if f.metadata["fingerprint"]
        }

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
