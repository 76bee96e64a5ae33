"""Pretrained weights in qlib's ``model_path`` format: an LSTM/GRU state dict (``rnn.*``, ``fc_out.*``)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Union

import torch

from .atomic_files import atomic_path
from .errors import QlibHistError

#: keys of qlib's LSTM/GRU layout (``LSTMModel`` / ``GRUModel``: ``rnn.*``, ``fc_out.*``) that a HIST may lack and
#: ignore; every other key of a ``model_path`` file must be one of the network's
LAYOUT_PREFIXES = ("fc_out.",)
_LAYER = re.compile(r"^rnn\.\w+_l(\d+)(?:_reverse)?$")


class PretrainedError(QlibHistError):
    """Saved weights (a ``model_path`` file, a pickled HIST's) that do not fit the network; the message names the
    file and the parameter."""


def _rnn_layers(keys: Iterable[str]) -> int:
    """The number of RNN layers that ``rnn.*_l<k>`` keys describe (0 when there are none)."""
    found = [int(m.group(1)) for m in map(_LAYER.match, keys) if m]
    return max(found) + 1 if found else 0


def load_pretrained(network: torch.nn.Module, model_path: Union[str, Path], logger: logging.Logger) -> List[str]:
    """Copy the parameters of a saved state dict whose names exist in ``network`` (qlib's rule).

    The file is read with ``map_location="cpu"`` and ``weights_only=True``, so qlib's CUDA-saved LSTM/GRU
    files load on a CPU machine. Returns the names loaded.

    Refused, naming the parameter: a shape that differs, a value that is not finite, and an encoder that does not
    fit whole (``rnn.*`` keys of more or fewer layers than ``num_layers``, or of another RNN); keys the network
    lacks are refused too, except qlib's ``fc_out.*`` head.
    """
    path = Path(model_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model_path {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a bad file
        raise PretrainedError(
            f"model_path {path}: not a loadable torch state dict ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(state, dict):
        raise PretrainedError(f"model_path {path}: expected a state dict, got {type(state).__name__}")
    own = network.state_dict()
    matching = {k: v for k, v in state.items() if k in own}
    if not matching:
        raise PretrainedError(
            f"model_path {path}: none of its parameters ({', '.join(map(str, list(state)[:4]))}, ...) is a HIST "
            "parameter"
        )
    _check_encoder(path, state, own)
    for name, value in matching.items():
        if value.shape != own[name].shape:
            raise PretrainedError(
                f"model_path {path}: parameter {name!r} has shape {tuple(value.shape)} but this HIST needs "
                f"{tuple(own[name].shape)} (check base_model, hidden_size, num_layers and d_feat)"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise PretrainedError(
                f"model_path {path}: parameter {name!r} holds NaN or inf (a diverged or damaged model)"
            )
    network.load_state_dict({**own, **matching})
    logger.info("loaded %d pretrained parameters from %s", len(matching), path)
    return sorted(matching)


def _check_encoder(path: Path, state: Dict[str, Any], own: Dict[str, torch.Tensor]) -> None:
    """Refuse a file whose ``rnn.*`` keys are not exactly the network's (a partial encoder would train on
    silently), and keys that are neither the network's nor qlib's LSTM/GRU head."""
    extra = [str(k) for k in state if k not in own]
    theirs, ours = [k for k in map(str, state) if k.startswith("rnn.")], [k for k in own if k.startswith("rnn.")]
    if theirs:
        layers, own_layers = _rnn_layers(theirs), _rnn_layers(ours)
        if layers != own_layers:
            deepest = max(theirs, key=lambda k: _rnn_layers([k]))
            raise PretrainedError(
                f"model_path {path}: its rnn has {layers} layer(s) (e.g. {deepest!r}) but this HIST has "
                f"num_layers={own_layers}: set num_layers={layers} to load it, or use a file of {own_layers} layer(s)"
            )
        unknown = sorted(set(theirs) - set(ours))
        missing = sorted(set(ours) - set(theirs))
        if unknown or missing:
            raise PretrainedError(
                f"model_path {path}: its rnn does not fit this HIST's {own_layers}-layer encoder (unexpected "
                f"{unknown[:3] or 'none'}, missing {missing[:3] or 'none'}): check base_model (LSTM or GRU)"
            )
    other = [k for k in extra if not k.startswith("rnn.") and not k.startswith(LAYOUT_PREFIXES)]
    if other:
        raise PretrainedError(
            f"model_path {path}: {len(other)} parameter(s) this HIST does not have ({', '.join(other[:3])}"
            f"{', ...' if len(other) > 3 else ''}); a model_path holds qlib's LSTM/GRU (rnn.*, fc_out.*) or a HIST "
            "of the same settings"
        )


def load_state_dict_strict(network: torch.nn.Module, state: Dict[str, torch.Tensor], source: str) -> None:
    """``network.load_state_dict(state)``, every key and shape required; a mismatch is one line naming the
    parameter (``source`` says where ``state`` came from)."""
    own = network.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise PretrainedError(
            f"{source} does not fit this network: missing {missing[:3] or 'none'}, unexpected "
            f"{unexpected[:3] or 'none'} (its settings differ from the ones it was saved with)"
        )
    for name, value in state.items():
        if tuple(value.shape) != tuple(own[name].shape):
            raise PretrainedError(
                f"{source}: parameter {name!r} has shape {tuple(value.shape)}, the network needs "
                f"{tuple(own[name].shape)}"
            )
    network.load_state_dict(state)


def save_state_dict(state: Dict[str, torch.Tensor], path: Union[str, Path]) -> Path:
    """Save a state dict where ``model_path`` (or ``torch.load``) can read it, atomically."""
    path = Path(path).expanduser()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path
