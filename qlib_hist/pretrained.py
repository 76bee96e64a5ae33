"""Pretrained weights in qlib's ``model_path`` format: an LSTM/GRU state dict (``rnn.*``, ``fc_out.*``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Union

import torch

from ._io import atomic_path


def load_pretrained(network: torch.nn.Module, model_path: Union[str, Path], logger: logging.Logger) -> List[str]:
    """Copy the parameters of a saved state dict whose names exist in ``network`` (qlib's rule).

    The file is read with ``map_location="cpu"`` and ``weights_only=True``, so qlib's CUDA-saved LSTM/GRU
    files load on a CPU machine. Returns the names loaded.
    """
    path = Path(model_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model_path {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a bad file
        raise ValueError(f"model_path {path}: not a loadable torch state dict ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise ValueError(f"model_path {path}: expected a state dict, got {type(state).__name__}")
    own = network.state_dict()
    matching = {k: v for k, v in state.items() if k in own}
    if not matching:
        raise ValueError(
            f"model_path {path}: none of its parameters ({', '.join(list(state)[:4])}, ...) is a HIST parameter"
        )
    for name, value in matching.items():
        if value.shape != own[name].shape:
            raise ValueError(
                f"model_path {path}: parameter {name!r} has shape {tuple(value.shape)} but this HIST needs "
                f"{tuple(own[name].shape)} (check base_model, hidden_size, num_layers and d_feat)"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"model_path {path}: parameter {name!r} holds NaN or inf (a diverged or damaged model)")
    network.load_state_dict({**own, **matching})
    logger.info("loaded %d pretrained parameters from %s", len(matching), path)
    return sorted(matching)


def load_state_dict_strict(network: torch.nn.Module, state: Dict[str, torch.Tensor], source: str) -> None:
    """``network.load_state_dict(state)``, every key and shape required; a mismatch is one line naming the
    parameter (``source`` says where ``state`` came from)."""
    own = network.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{source} does not fit this network: missing {missing[:3] or 'none'}, unexpected "
            f"{unexpected[:3] or 'none'} (its settings differ from the ones it was saved with)"
        )
    for name, value in state.items():
        if tuple(value.shape) != tuple(own[name].shape):
            raise ValueError(
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
