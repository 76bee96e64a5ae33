"""``qlib_hist.HIST``: the qlib face of the model — arguments, fit / predict, logging, save and load.

A drop-in for ``qlib.contrib.model.pytorch_hist.HIST``: same constructor arguments, defaults and attributes
(``HIST_model``, ``train_optimizer``, ``fitted``, ``device``, ``use_gpu``), so a qlib YAML only changes its
``module_path``. The tensors, the concepts and the epoch loop live in :mod:`.network`, :mod:`.concepts`,
:mod:`.data` and :mod:`.training`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path
from typing import Optional, Text, Union

import numpy as np
import pandas as pd
import torch
from qlib.data.dataset import DatasetH
from qlib.log import get_module_logger
from qlib.model.base import Model

from ._io import atomic_path
from .concepts import QLIB_STOCK2CONCEPT_URL, ConceptSource, load_concept_source
from .data import DailyBatches, DataError, build_daily_batches, segment_frame
from .network import RNN_TYPES, HISTModel, RNNRegressor
from .stock_weights import stock_weights
from .training import TrainConfig, Trainer, normalize_metric, predict_days

CHECKPOINT_NAME = "hist_checkpoint.pt"

OPTIMIZERS = {"adam": torch.optim.Adam, "gd": torch.optim.SGD}
LOSSES = ("mse",)


def select_device(GPU: Union[int, str, None], logger) -> torch.device:
    """qlib's rule (``cuda:<GPU>`` when CUDA is there and ``GPU >= 0``), falling back to CPU with a log line."""
    if isinstance(GPU, str) and not GPU.lstrip("-").isdigit():
        return torch.device(GPU)
    gpu = -1 if GPU is None else int(GPU)
    if gpu >= 0 and torch.cuda.is_available():
        return torch.device(f"cuda:{gpu}")
    if gpu >= 0:
        logger.info("CUDA is not available: HIST runs on the CPU (GPU=%s ignored)", GPU)
    return torch.device("cpu")


def load_pretrained(network: torch.nn.Module, model_path: Union[str, Path], logger) -> list:
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
        raise ValueError(f"model_path {path}: none of its parameters ({', '.join(list(state)[:4])}, ...) is a HIST parameter")
    for name, value in matching.items():
        if value.shape != own[name].shape:
            raise ValueError(
                f"model_path {path}: parameter {name!r} has shape {tuple(value.shape)} but this HIST needs "
                f"{tuple(own[name].shape)} (check base_model, hidden_size, num_layers and d_feat)"
            )
    network.load_state_dict({**own, **matching})
    logger.info("loaded %d pretrained parameters from %s", len(matching), path)
    return sorted(matching)


class HIST(Model):
    """HIST (Xu et al., 2021) for qlib: stock trend forecasting with predefined and hidden concepts.

    Parameters (same names, meanings and defaults as ``qlib.contrib.model.pytorch_hist.HIST``)
    ----------
    d_feat : int
        features per time step (6 for Alpha360: open, close, high, low, vwap, volume).
    hidden_size, num_layers, dropout : the RNN encoder's size.
    n_epochs : int
        maximum training epochs.
    lr : float
        learning rate.
    metric : str
        early-stopping metric on valid: ``"ic"``, ``"rank_ic"`` or ``"loss"`` (``""`` = loss).
    early_stop : int
        epochs without a better valid metric before stopping.
    loss : str
        ``"mse"`` (on non-NaN labels).
    base_model : str
        ``"GRU"`` or ``"LSTM"``.
    model_path : str, optional
        a saved qlib LSTM/GRU (``rnn.*``, ``fc_out.*``) to start from; only matching names are loaded.
    stock2concept : str
        a membership table (``.csv`` / ``.parquet``, point in time) or qlib's legacy ``.npy`` matrix.
    stock_index : str
        for a legacy matrix: ``{instrument: row}`` as a pickled-dict ``.npy`` or a ``.json``.
    optimizer : str
        ``"adam"`` or ``"gd"``.
    GPU : int
        CUDA device index; CPU when CUDA is unavailable or ``GPU < 0``.
    seed : int, optional
        seeds the weights, the day shuffling and dropout: the same seed gives the same predictions on CPU.

    Extra parameters (not in qlib's HIST)
    ----------
    stock2concept_url : str
        where to download a missing legacy ``stock2concept`` from (qlib's address; ``None`` = never).
    eval_train : bool
        score the train segment with a separate eval pass each epoch, as qlib does (default: use the epoch's
        own train-mode predictions, which costs nothing).
    pretrain_epochs : int
        without ``model_path``: first train the base RNN with a linear head for up to this many epochs
        (0 = off, as in qlib), then start HIST from it.
    pretrain_save_path : str, optional
        save that pretrained base RNN in qlib's LSTM/GRU ``model_path`` format.

    The paper's model and recipe (each off by default, so qlib's results reproduce)
    ----------
    hidden_topk : int
        each stock joins the hidden concepts of its K most similar peers (1 = qlib).
    concept_weight : str, optional
        member weights in the predefined concepts: a qlib expression (``"$close*$volume"``, a market-cap field)
        or a table ``instrument, datetime, value``; see :mod:`qlib_hist.stock_weights`.
    concept_refine : bool
        the paper's second pass over each concept's members before stocks attend to concepts.
    temporal_attention : bool
        attention over the encoder's time steps in place of its last state.
    smooth_steps : int
        evaluate (and keep as best) the mean of the last N epochs' weights (1 = off).
    checkpoint_dir : str, optional
        write a resumable checkpoint after every epoch; ``fit`` resumes from it.
    """

    def __init__(
        self,
        d_feat: int = 6,
        hidden_size: int = 64,
        num_layers: int = 2,
        dropout: float = 0.0,
        n_epochs: int = 200,
        lr: float = 0.001,
        metric: str = "",
        early_stop: int = 20,
        loss: str = "mse",
        base_model: str = "GRU",
        model_path: Optional[str] = None,
        stock2concept: Optional[str] = None,
        stock_index: Optional[str] = None,
        optimizer: str = "adam",
        GPU: Union[int, str] = 0,
        seed: Optional[int] = None,
        stock2concept_url: Optional[str] = QLIB_STOCK2CONCEPT_URL,
        eval_train: bool = False,
        pretrain_epochs: int = 0,
        pretrain_save_path: Optional[str] = None,
        hidden_topk: int = 1,
        concept_weight: Optional[str] = None,
        concept_refine: bool = False,
        temporal_attention: bool = False,
        smooth_steps: int = 1,
        checkpoint_dir: Optional[str] = None,
        **kwargs,
    ) -> None:
        self.logger = get_module_logger("HIST")
        if kwargs:
            self.logger.warning("HIST ignores unknown arguments: %s", ", ".join(sorted(kwargs)))
        self.metric = normalize_metric(metric)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
        if base_model not in RNN_TYPES:
            raise ValueError(f"base_model must be one of {sorted(RNN_TYPES)}, got {base_model!r}")
        for name, value, low in (("d_feat", d_feat, 1), ("hidden_size", hidden_size, 1), ("num_layers", num_layers, 1),
                                 ("n_epochs", n_epochs, 0), ("early_stop", early_stop, 1), ("pretrain_epochs", pretrain_epochs, 0),
                                 ("hidden_topk", hidden_topk, 1), ("smooth_steps", smooth_steps, 1)):
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

        self.d_feat, self.hidden_size, self.num_layers, self.dropout = d_feat, hidden_size, num_layers, dropout
        self.n_epochs, self.lr, self.early_stop, self.loss = int(n_epochs), float(lr), int(early_stop), loss
        self.optimizer = optimizer.lower()
        self.base_model, self.model_path = base_model, model_path
        self.stock2concept, self.stock_index, self.stock2concept_url = stock2concept, stock_index, stock2concept_url
        self.seed, self.eval_train = seed, eval_train
        self.pretrain_epochs, self.pretrain_save_path = pretrain_epochs, pretrain_save_path
        self.hidden_topk, self.concept_weight, self.concept_refine = int(hidden_topk), concept_weight, bool(concept_refine)
        self.temporal_attention, self.smooth_steps, self.checkpoint_dir = bool(temporal_attention), int(smooth_steps), checkpoint_dir
        self.GPU = GPU
        self.device = select_device(GPU, self.logger)
        self.logger.info(
            "HIST parameters: %s",
            ", ".join(f"{k}={getattr(self, k)!r}" for k in (
                "d_feat", "hidden_size", "num_layers", "dropout", "n_epochs", "lr", "metric", "early_stop", "optimizer",
                "loss", "base_model", "model_path", "stock2concept", "stock_index", "device", "seed", "hidden_topk",
                "concept_weight", "concept_refine", "temporal_attention", "smooth_steps", "checkpoint_dir")),
        )

        self._seed_everything()
        self.HIST_model = self._new_network().to(self.device)
        self.train_optimizer = OPTIMIZERS[self.optimizer](self.HIST_model.parameters(), lr=self.lr)
        self.fitted = False
        self._concept_source: Optional[ConceptSource] = None

    @property
    def use_gpu(self) -> bool:
        return self.device != torch.device("cpu")

    # ------------------------------------------------------------------ helpers
    def _new_network(self) -> HISTModel:
        return HISTModel(self.d_feat, self.hidden_size, self.num_layers, self.dropout, self.base_model,
                         hidden_topk=self.hidden_topk, concept_refine=self.concept_refine,
                         temporal_attention=self.temporal_attention)

    def _settings(self) -> dict:
        """Everything that changes what ``fit`` computes (for checkpoint fingerprints)."""
        keys = ("d_feat", "hidden_size", "num_layers", "dropout", "n_epochs", "lr", "metric", "early_stop", "loss",
                "optimizer", "base_model", "model_path", "stock2concept", "stock_index", "seed", "eval_train",
                "pretrain_epochs", "hidden_topk", "concept_weight", "concept_refine", "temporal_attention", "smooth_steps")
        return {k: getattr(self, k) for k in keys}

    def _seed_everything(self) -> None:
        if self.seed is not None:
            np.random.seed(self.seed)
            torch.manual_seed(self.seed)

    def concept_source(self) -> ConceptSource:
        """The concept source named by ``stock2concept`` / ``stock_index``, loaded once per model object."""
        if getattr(self, "_concept_source", None) is None:
            self._concept_source = load_concept_source(self.stock2concept, self.stock_index, self.stock2concept_url)
            self.logger.info("concepts: %s", self._concept_source.describe())
        return self._concept_source

    def _batches(self, dataset: DatasetH, segment: Union[Text, slice], with_label: bool, reweighter=None) -> DailyBatches:
        name = segment if isinstance(segment, str) else f"{segment.start}..{segment.stop}"
        if isinstance(segment, str) and segment not in getattr(dataset, "segments", {segment: None}):
            raise DataError(f"segment {segment!r} is not in the dataset's segments {list(dataset.segments)}")
        df = segment_frame(dataset, segment, with_label)
        empty = df is None or df.empty
        weights = None if reweighter is None or empty else reweighter.reweight(df)
        member_weights = None if self.concept_weight is None or empty else stock_weights(self.concept_weight, df.index, name)
        batches = build_daily_batches(df, self.concept_source(), name, self.d_feat, with_label, weights, member_weights)
        c = batches.concepts
        if c.n_unknown:
            shown = ", ".join(c.unknown_instruments[:5]) + (", ..." if len(c.unknown_instruments) > 5 else "")
            self.logger.info(
                "segment %s: %d of %d stock-days (%d stocks: %s) have no predefined concept",
                name, c.n_unknown, batches.n_rows, len(c.unknown_instruments), shown,
            )
        return batches

    def _trainer(self, network: torch.nn.Module, optimizer: torch.optim.Optimizer, n_epochs: int, **options) -> Trainer:
        config = TrainConfig(n_epochs=n_epochs, early_stop=self.early_stop, metric=self.metric,
                             seed=self.seed, eval_train=self.eval_train, **options)
        return Trainer(network, optimizer, config, self.device, self.logger)

    def _checkpoint(self, train: DailyBatches, valid: DailyBatches) -> dict:
        """Trainer options for ``smooth_steps`` and ``checkpoint_dir`` (with a fingerprint of settings + data)."""
        if not self.checkpoint_dir:
            return {"smooth_steps": self.smooth_steps}
        digest = hashlib.sha1(json.dumps(self._settings(), sort_keys=True, default=str).encode())
        digest.update(f"{train.fingerprint()}|{valid.fingerprint()}".encode())
        path = Path(self.checkpoint_dir).expanduser() / CHECKPOINT_NAME
        return {"smooth_steps": self.smooth_steps, "checkpoint_path": path, "fingerprint": digest.hexdigest()[:16]}

    def _pretrain_base(self, train: DailyBatches, valid: DailyBatches) -> None:
        """Train the base RNN with a linear head, then start HIST's ``rnn.*``/``fc_out.*`` from it."""
        base = RNNRegressor(self.d_feat, self.hidden_size, self.num_layers, self.dropout, self.base_model).to(self.device)
        optimizer = OPTIMIZERS[self.optimizer](base.parameters(), lr=self.lr)
        self.logger.info("pretraining the base %s for up to %d epochs", self.base_model, self.pretrain_epochs)
        self._trainer(base, optimizer, self.pretrain_epochs).fit(train, valid)
        state = {k: v.detach().cpu() for k, v in base.state_dict().items()}
        if self.pretrain_save_path:
            with atomic_path(Path(self.pretrain_save_path).expanduser()) as tmp:
                torch.save(state, tmp)
            self.logger.info("saved the pretrained base model to %s", self.pretrain_save_path)
        own = self.HIST_model.state_dict()
        self.HIST_model.load_state_dict({**own, **{k: v for k, v in state.items() if k in own}})

    # ------------------------------------------------------------------ qlib API
    def fit(self, dataset: DatasetH, evals_result: dict = dict(), save_path: Optional[str] = None, reweighter=None) -> None:
        """Train on ``dataset``'s ``train`` segment, early-stopping on ``valid``; ``test`` is not touched."""
        train = self._batches(dataset, "train", with_label=True, reweighter=reweighter)
        valid = self._batches(dataset, "valid", with_label=True)
        self.logger.info("train: %d days, %d rows; valid: %d days, %d rows",
                         train.n_days, train.n_rows, valid.n_days, valid.n_rows)
        self._seed_everything()
        options = self._checkpoint(train, valid)
        resuming = "checkpoint_path" in options and options["checkpoint_path"].exists()
        if self.model_path is not None:
            load_pretrained(self.HIST_model, self.model_path, self.logger)
        elif self.pretrain_epochs and not resuming:
            self._pretrain_base(train, valid)
        trainer = self._trainer(self.HIST_model, self.train_optimizer, self.n_epochs, **options)
        result = trainer.fit(train, valid, evals_result)
        self.fitted = True
        self.best_epoch, self.best_score, self.history = result.best_epoch, result.best_score, result.history
        if save_path:
            with atomic_path(Path(save_path).expanduser()) as tmp:
                torch.save(self.HIST_model.state_dict(), tmp)

    def predict(self, dataset: DatasetH, segment: Union[Text, slice] = "test") -> pd.Series:
        """Predictions for ``segment`` as a ``pd.Series`` on the dataset's (datetime, instrument) index."""
        if not self.fitted:
            raise ValueError("model is not fitted yet!")
        batches = self._batches(dataset, segment, with_label=False)
        preds = predict_days(self.HIST_model, batches, self.device)
        return batches.in_dataset_order(pd.Series(preds, index=batches.index, name="score"))

    @torch.no_grad()
    def explain(self, dataset: DatasetH, segment: Union[Text, slice] = "test", top: int = 3) -> pd.DataFrame:
        """Each prediction split into its parts, with what it attended to.

        HIST's output layer is linear in the sum of three parts, so ``score = concept + hidden_concept +
        individual + bias`` exactly (to float rounding). Columns, on the predictions' (datetime, instrument) index:
        ``score``, ``concept``, ``hidden_concept``, ``individual``, ``bias``; ``concept_1..top`` (the predefined
        concepts with the highest attention weight, by name where the source has names) with ``concept_k_weight``;
        ``peer_1..top`` (the instruments whose hidden concepts got the most attention) with ``peer_k_weight``; and,
        with ``temporal_attention``, ``step_1..top``: the days back (0 = the last day of the window) that the
        encoder weighted most, with ``step_k_weight``.
        """
        if not self.fitted:
            raise ValueError("model is not fitted yet!")
        from .explain import explain_batches

        batches = self._batches(dataset, segment, with_label=False)
        frame = explain_batches(self.HIST_model, batches, self.device, top)
        return batches.in_dataset_order(frame)

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict:
        """Pickle the network as a CPU state dict, so a model fitted on a GPU loads on a CPU-only machine."""
        state = super().__getstate__()
        state["HIST_model"] = {k: v.detach().cpu() for k, v in state["HIST_model"].state_dict().items()}
        state["train_optimizer"] = None  # rebuilt on load (its moments are not kept)
        return state

    def __setstate__(self, state: dict) -> None:
        # a model pickled by an older qlib_hist lacks newer options: they take their (off) defaults
        defaults = {k: p.default for k, p in inspect.signature(HIST.__init__).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        super().__setstate__({**defaults, **state})
        weights = self.HIST_model if isinstance(self.HIST_model, dict) else self.HIST_model.state_dict()
        self.device = select_device(self.GPU, self.logger)
        self.HIST_model = self._new_network()
        self.HIST_model.load_state_dict(weights)
        self.HIST_model.to(self.device)
        self.train_optimizer = OPTIMIZERS[self.optimizer](self.HIST_model.parameters(), lr=self.lr)
        self._concept_source = None
