"""``qlib_hist.HIST``: the qlib face of the model — qlib's arguments in, fit / predict / explain, pickling.

A drop-in for ``qlib.contrib.model.pytorch_hist.HIST``: same constructor arguments, defaults and attributes
(``HIST_model``, ``train_optimizer``, ``fitted``, ``device``, ``use_gpu``, and every argument by its name), so a
qlib YAML only changes its ``module_path``. The arguments are parsed once into
:class:`~qlib_hist.settings.HISTSettings`; the network, the loop, the batches and the concepts are the core's.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Text, Tuple, Union, cast

import numpy as np
import pandas as pd
import torch
from qlib.data.dataset import DatasetH
from qlib.log import get_module_logger
from qlib.model.base import ModelFT

from ..atomic_files import check_writable
from ..batched import BatchedTrainer, StackedMembers, ensemble_scores, predict_members
from ..batches import DailyBatches, check_labels
from ..callbacks import Callback, Checkpoint
from ..concepts import ConceptSource, NoConcepts, load_concept_source
from ..digests import json_sha1
from ..explain import check_top, explain_batches
from ..network import OUTPUT_PARTS, HISTModel, RNNRegressor, SeedEnsemble
from ..pretrained import load_pretrained, load_state_dict_strict, save_state_dict
from ..settings import HISTSettings, SettingsError, TrainSettings
from ..settings_doc import documented_fields, parameters_docstring
from ..training import (
    FitResult,
    Trainer,
    TrainingError,
    check_cuda_graphs,
    check_precision,
    make_optimizer,
    predict_days,
    select_device,
)
from .context import aux_labels, check_train_market, market_features
from .dataset import Segment, segment_batches, segment_name

CHECKPOINT_NAME = "hist_checkpoint.pt"
PICKLE_FORMAT = 2  # 1: qlib-hist 0.1.0 (flat attributes); 2: {"settings": {...}, "HIST_model": state dict, ...}
EXPLAIN_PARTS = ["score", *OUTPUT_PARTS, "bias"]  # averaged over an ensemble's members
RESULT_ATTRIBUTES = ("fitted", "best_epoch", "best_score", "history")  # kept in pickles beside the settings


def ensemble_seconds(history: List[Dict[str, Any]], batched: bool) -> float:
    """The seconds an ensemble's epochs took, from its ``history`` (records with ``epoch`` and ``seconds``): the sum
    of the records; ``batched``: the members of one epoch step together, each record timed from their shared start,
    so each epoch counts once, at its longest record."""
    if not batched:
        return float(sum(record["seconds"] for record in history))
    longest: Dict[int, float] = {}
    for record in history:
        longest[record["epoch"]] = max(longest.get(record["epoch"], 0.0), record["seconds"])
    return float(sum(longest.values()))


class HIST(ModelFT):
    """HIST (Xu et al., 2021) for qlib: stock trend forecasting with predefined and hidden concepts.

    Every argument stays readable (and settable, validated again) as an attribute: ``model.n_epochs``; the arguments
    that define the network are refused once it is built (make a new model). The parameters are listed from the
    settings' help texts (:mod:`qlib_hist.settings`), as the signature is built from their fields.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.logger = get_module_logger("HIST")
        settings, unknown = HISTSettings.from_kwargs(**kwargs)
        if unknown:
            self.logger.warning("HIST ignores unknown arguments: %s", ", ".join(sorted(unknown)))
        self.device = check_settings(settings, self.logger)
        self.settings = settings
        for message in settings.warnings():
            self.logger.warning("HIST: %s", message)
        self.logger.info(
            "HIST parameters: %s, device=%s", ", ".join(f"{k}={v!r}" for k, v in settings.flat().items()), self.device
        )
        self.HIST_model = self._build_network().to(self.device)
        self.train_optimizer = self._new_optimizer()  # built again when fit starts, from the settings then
        self.fitted = False
        self._concept_source: Optional[ConceptSource] = None

    # ------------------------------------------------------------------ settings as attributes
    def __getattr__(self, name: str) -> Any:
        """``model.<argument>`` reads the setting (qlib's HIST keeps its arguments as attributes)."""
        settings = self.__dict__.get("settings")
        owner = HISTSettings.field_names().get(name)
        if settings is None or owner is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(getattr(settings, owner), name)

    def __setattr__(self, name: str, value: Any) -> None:
        """``model.<argument> = value`` replaces the setting, validated again, with the checks of construction
        (``precision`` and ``cuda_graphs`` against the model's device; ``GPU`` picks the device again, and the
        network moves there); a refused value leaves the model as it was.

        The settings that define the network (its shape, modules and ``ensemble``'s members) are refused: the built
        network would no longer match them. Training settings reach the next ``fit`` (which builds its optimizer
        from them).
        """
        owner = HISTSettings.field_names().get(name)
        if HISTSettings.shapes_network(name) and "settings" in self.__dict__:
            raise SettingsError(
                f"{name} defines the network, which is already built: make a new model, HIST({name}={value!r}, ...)"
            )
        if owner is not None and "settings" in self.__dict__:
            settings = self.settings.replace(**{name: value})
            device = select_device(settings.training.GPU, self.logger) if name == "GPU" else self.device
            check_device(settings, device)
            before = set(self.settings.warnings())
            self.__dict__["settings"] = settings
            if device != self.device:  # model.GPU = ...: the network moves, as HIST(GPU=...) would have built it
                self.__dict__["device"] = device
                self.HIST_model.to(device)
            for message in settings.warnings():
                if message not in before:
                    self.logger.warning("HIST: %s", message)
            if name in ("stock2concept", "stock_index", "stock2concept_url"):
                self.__dict__["_concept_source"] = None
        else:
            super().__setattr__(name, value)

    @property
    def use_gpu(self) -> bool:
        return self.device != torch.device("cpu")

    # ------------------------------------------------------------------ helpers
    def _new_optimizer(
        self, lr: Optional[float] = None, network: Optional[torch.nn.Module] = None
    ) -> torch.optim.Optimizer:
        """The settings' optimizer over ``network`` (default ``HIST_model``; ``lr``: the settings' unless given)."""
        t = self.settings.training
        capturable = t.cuda_graphs and self.device.type == "cuda"
        network = self.HIST_model if network is None else network
        return make_optimizer(t.optimizer, network, t.lr if lr is None else lr, t.weight_decay, capturable)

    def _seed_everything(self, member: int = 0) -> None:
        seed = self.settings.training.seed
        if seed is not None:
            np.random.seed(seed + member)
            torch.manual_seed(seed + member)

    def _build_network(self, seeded: bool = True) -> torch.nn.Module:
        """The network of the settings, its weights drawn from the seed (member ``k`` of an ensemble: ``seed+k``);
        ``seeded=False`` (unpickling, whose weights are loaded next) leaves the global RNGs alone."""
        members = []
        for member in range(self.settings.training.ensemble):
            if seeded:
                self._seed_everything(member)
            members.append(HISTModel.from_settings(self.settings.network))
        return members[0] if len(members) == 1 else SeedEnsemble(members)

    def members(self) -> List[HISTModel]:
        """The networks that train: ``[HIST_model]``, or the ensemble's members."""
        network = self.HIST_model
        return network.networks() if isinstance(network, SeedEnsemble) else [cast(HISTModel, network)]

    def _member_recipe(self, member: int, recipe: Optional[TrainSettings] = None) -> TrainSettings:
        """The training settings of member ``member``: its seed is ``seed + member``."""
        recipe = recipe or self.settings.training
        return recipe if recipe.seed is None or member == 0 else dataclasses.replace(recipe, seed=recipe.seed + member)

    def concept_source(self) -> ConceptSource:
        """The concept source named by ``stock2concept`` / ``stock_index``, loaded once per model object; with
        ``predefined_concepts`` off, :class:`~qlib_hist.concepts.NoConcepts` (nothing is read: no module uses it)."""
        source = self.__dict__.get("_concept_source")
        if source is None:
            c = self.settings.concepts
            if not self.settings.network.predefined_concepts:
                source = self._concept_source = NoConcepts()
            else:
                source = self._concept_source = load_concept_source(c.stock2concept, c.stock_index, c.stock2concept_url)
            self.logger.info("concepts: %s", source.describe())
        return source

    def _batches(self, dataset: DatasetH, segment: Segment, with_label: bool, reweighter: Any = None) -> DailyBatches:
        """The segment's daily batches, with each day's market state where ``market_context`` names indexes."""
        on = self.settings.network.predefined_concepts  # member weights feed only the predefined concepts
        batches = segment_batches(
            dataset,
            segment,
            with_label,
            self.concept_source(),
            self.settings.network.d_feat,
            self.settings.concepts.concept_weight if on else None,
            reweighter,
            self.logger,
        )
        indexes = self.settings.network.market_context
        if not indexes:
            return batches
        days = pd.DatetimeIndex(batches.index.get_level_values(0)[batches.day_start])
        market = market_features(indexes, days, segment_name(segment), self.logger)
        return dataclasses.replace(batches, market=torch.from_numpy(market))

    def _checkpoint(self, train: DailyBatches, valid: DailyBatches, member: int = 0) -> Optional[Checkpoint]:
        """The checkpoint callback for ``checkpoint_dir``, fingerprinted by the settings and the data; an
        ensemble's member ``k`` checkpoints in ``member<k>/`` (members resume one by one)."""
        if not self.settings.training.checkpoint_dir:
            return None
        digest = json_sha1(self.settings.fingerprint_fields())
        digest.update(f"{train.fingerprint()}|{valid.fingerprint()}".encode())
        folder = Path(self.settings.training.checkpoint_dir).expanduser()
        if self.settings.training.ensemble > 1:
            folder = folder / f"member{member}"
            digest.update(f"|member{member}".encode())
        return Checkpoint(folder / CHECKPOINT_NAME, digest.hexdigest()[:16])

    def batched_members(self) -> bool:
        """Whether :meth:`fit` trains the ensemble's members batched (``ensemble_mode``; ``auto``: on CUDA, unless
        ``cuda_graphs`` captures the members' steps one by one)."""
        t = self.settings.training
        auto = self.device.type == "cuda" and not t.cuda_graphs
        mode = t.ensemble_mode if t.ensemble_mode != "auto" else ("batched" if auto else "sequential")
        return t.ensemble > 1 and mode == "batched"

    def _member_trainer(
        self, member: int, network: HISTModel, train: DailyBatches, valid: DailyBatches, callbacks: Sequence[Callback]
    ) -> Trainer:
        """Member ``member``'s trainer, its network made ready: the global RNGs seeded with its seed, ``model_path``
        loaded (or the base pretrained), the market gate's scale fitted on train; its checkpoint callback first."""
        t = self.settings.training
        self._seed_everything(member)
        checkpoint = self._checkpoint(train, valid, member)
        if t.model_path is not None:
            load_pretrained(network, t.model_path, self.logger)
        elif t.pretrain_epochs and not (checkpoint is not None and checkpoint.path.exists()):
            self._pretrain_base(network, train, valid)
        if network.market_gate is not None:  # after model_path: the market state standardised by train's days
            network.market_gate.fit_scale(cast(torch.Tensor, train.market))
        own = [] if checkpoint is None else [checkpoint]
        self.train_optimizer = self._new_optimizer(network=network)
        recipe = self._member_recipe(member)
        return Trainer(network, self.train_optimizer, recipe, self.device, self.logger, [*own, *callbacks])

    def _pretrain_base(self, network: HISTModel, train: DailyBatches, valid: DailyBatches) -> None:
        """Train the base RNN with a linear head, then start HIST's ``rnn.*``/``fc_out.*`` from it."""
        t = self.settings.training
        base = RNNRegressor.from_settings(self.settings.network).to(self.device)
        self.logger.info(
            "pretraining the base %s for up to %d epochs", self.settings.network.base_model, t.pretrain_epochs
        )
        recipe = dataclasses.replace(t, n_epochs=t.pretrain_epochs, smooth_steps=1)
        optimizer = make_optimizer(t.optimizer, base, t.lr, t.weight_decay)
        Trainer(base, optimizer, recipe, self.device, self.logger).fit(train, valid)
        state = {k: v.detach().cpu() for k, v in base.state_dict().items()}
        if t.pretrain_save_path:
            self.logger.info("saved the pretrained base model to %s", save_state_dict(state, t.pretrain_save_path))
        own = network.state_dict()
        network.load_state_dict({**own, **{k: v for k, v in state.items() if k in own}})

    # ------------------------------------------------------------------ qlib API
    def fit(
        self,
        dataset: DatasetH,
        evals_result: dict = dict(),
        save_path: Optional[str] = None,
        reweighter: Any = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        """Train on ``dataset``'s ``train`` segment, early-stopping on ``valid``; ``test`` is not touched.

        ``callbacks`` (:class:`~qlib_hist.callbacks.Callback`) run after the built-in ones (logging, checkpoint).
        """
        t = self.settings.training
        check_device(self.settings, self.device)  # an unpickled model may run on another device than it was made on
        for what, path, folder in (
            ("save_path", save_path, False),
            ("checkpoint_dir", t.checkpoint_dir, True),
            ("pretrain_save_path", t.pretrain_save_path, False),
        ):
            if path:
                check_writable(path, what, folder)
        train, valid = self._train_valid(dataset, reweighter)
        batched = self.batched_members()
        if batched:
            trainers = [self._member_trainer(k, net, train, valid, callbacks) for k, net in enumerate(self.members())]
            self.logger.info("ensemble of %d: the members train batched, as one network", len(trainers))
            results = BatchedTrainer(trainers).fit(train, valid, evals_result, t.keep_start)
        else:  # each member is made (seeded) just before its fit, so that its fit is the single model's of its seed
            results = [
                self._member_trainer(k, net, train, valid, callbacks).fit(train, valid, evals_result, t.keep_start)
                for k, net in enumerate(self.members())
            ]
        self._keep_result(results, batched)
        if save_path:
            save_state_dict(self.HIST_model.state_dict(), save_path)

    def finetune(
        self,
        dataset: DatasetH,
        evals_result: dict = dict(),
        reweighter: Any = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        """Continue training from the current weights on ``dataset``'s ``train`` segment (qlib's ``ModelFT``).

        For rolling retraining: up to ``finetune_epochs`` epochs at ``finetune_lr`` (default ``lr``), early-stopping
        on ``valid`` as ``fit`` does, except that the starting weights are scored on ``valid`` first and stay when no
        epoch beats them. The optimizer starts afresh (Adam's moments reset): a model loaded from a recorder has no
        optimizer state (pickles keep none), so resetting makes a fine-tune from memory and one from a recorder the
        same, and moments estimated on the previous window's gradients would only mis-scale the first steps.
        ``model_path``, ``pretrain_epochs`` and ``checkpoint_dir`` play no part (they are about a cold start).
        """
        if not self.fitted:
            raise TrainingError("finetune needs a fitted HIST (call fit first, or load one from a recorder)")
        check_device(self.settings, self.device)
        t = self.settings.training
        train, valid = self._train_valid(dataset, reweighter)
        lr = t.lr if t.finetune_lr is None else t.finetune_lr
        recipe = dataclasses.replace(t, n_epochs=t.finetune_epochs, lr=lr)
        self.logger.info("fine-tuning for up to %d epochs at lr=%g from the current weights", recipe.n_epochs, lr)
        results = []
        for member, network in enumerate(self.members()):
            self._seed_everything(member)
            self.train_optimizer = self._new_optimizer(lr, network)
            trainer = Trainer(
                network, self.train_optimizer, self._member_recipe(member, recipe), self.device, self.logger, callbacks
            )
            results.append(trainer.fit(train, valid, evals_result, keep_start=True))
        self._keep_result(results)

    def _train_valid(self, dataset: DatasetH, reweighter: Any) -> Tuple[DailyBatches, DailyBatches]:
        """The ``train`` and ``valid`` batches, their labels checked."""
        train = self._batches(dataset, "train", with_label=True, reweighter=reweighter)
        valid = self._batches(dataset, "valid", with_label=True)
        horizons = self.settings.network.aux_horizons
        if horizons:  # labels of other horizons, none reading a close after train's last day
            last_day = train.index.get_level_values(0).max()
            train = dataclasses.replace(train, aux_labels=torch.from_numpy(aux_labels(train.index, horizons, last_day)))
        if train.market is not None:
            check_train_market(train.market.numpy(), self.settings.network.market_context)
        check_labels(train, "train")
        check_labels(valid, "valid", need_daily_variation=self.settings.training.metric in ("ic", "rank_ic"))
        self.logger.info(
            "train: %d days, %d rows; valid: %d days, %d rows", train.n_days, train.n_rows, valid.n_days, valid.n_rows
        )
        return train, valid

    def _keep_result(self, results: List[FitResult], batched: bool = False) -> None:
        """One member: its best epoch, score and history (qlib's). An ensemble: ``best_epoch`` per member, the
        members' mean ``best_score``, and every member's epochs in ``history`` (each record has ``member``): what
        the ensemble cost, K fits, or with ``batched`` members (they stepped together) each epoch once."""
        self.fitted = True
        if len(results) == 1:
            result = results[0]
            self.best_epoch, self.best_score, self.history = result.best_epoch, result.best_score, result.history
            return
        self.best_epoch = [r.best_epoch for r in results]  # type: ignore[assignment]
        self.best_score = float(np.mean([r.best_score for r in results]))
        self.history = [dict(record, member=k) for k, r in enumerate(results) for record in r.history]
        self.logger.info(
            "ensemble of %d: best epochs %s, mean best valid score %.6f, %d member epochs in %.0f s (%s)",
            len(results),
            self.best_epoch,
            self.best_score,
            len(self.history),
            ensemble_seconds(self.history, batched),
            "batched" if batched else "K fits",
        )

    def predict(self, dataset: DatasetH, segment: Union[Text, slice] = "test") -> pd.Series:
        """Predictions for ``segment`` as a ``pd.Series`` on the dataset's (datetime, instrument) index."""
        if not self.fitted:
            raise TrainingError("model is not fitted yet!")
        check_precision(self.settings.training.precision, self.device)  # before the segment is read
        batches = self._batches(dataset, segment, with_label=False).to(self.device)
        precision = self.settings.training.precision
        if self.batched_members():  # the K members on each day in one pass
            member_preds = predict_members(StackedMembers(self.members()), batches, self.device, precision)
            preds = ensemble_scores(member_preds, batches)
        else:
            preds = predict_days(self.HIST_model, batches, self.device, precision)
        return batches.in_dataset_order(pd.Series(preds, index=batches.index, name="score"))

    def explain(self, dataset: DatasetH, segment: Union[Text, slice] = "test", top: int = 3) -> pd.DataFrame:
        """Each prediction split into its parts, with what it attended to.

        HIST's output layer is linear in the sum of three parts, so ``score = concept + hidden_concept +
        individual + bias`` exactly (to float rounding). Columns, on the predictions' (datetime, instrument) index:
        ``score``, ``concept``, ``hidden_concept``, ``individual``, ``bias``; ``concept_1..top`` (the predefined
        concepts with the highest attention weight, by name where the source has names) with ``concept_k_weight``;
        ``peer_1..top`` (the instruments whose hidden concepts got the most attention) with ``peer_k_weight``; and,
        with ``temporal_attention``, ``step_1..top``: the days back (0 = the last day of the window) that the
        encoder weighted most, with ``step_k_weight``.

        An ensemble (``ensemble: K``) reports its members' mean parts (each member's own scale: their sum is the
        members' mean raw score, not the ensemble's standardised one) and the first member's attention lists.
        """
        if not self.fitted:
            raise TrainingError("model is not fitted yet!")
        top = check_top(top)  # before the segment is read
        batches = self._batches(dataset, segment, with_label=False)
        frames = [explain_batches(network, batches, self.device, top) for network in self.members()]
        table = frames[0]
        if len(frames) > 1:
            table = table.copy()
            table[EXPLAIN_PARTS] = sum(frame[EXPLAIN_PARTS] for frame in frames) / len(frames)
        return batches.in_dataset_order(table)

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> Dict[str, Any]:
        """Plain values only: the settings by name, the network as a CPU state dict (a model fitted on a GPU loads
        on a CPU-only machine), and the fit's results. The optimizer's moments are not kept."""
        state: Dict[str, Any] = {
            "format": PICKLE_FORMAT,
            "settings": self.settings.flat(),
            "HIST_model": {k: v.detach().cpu() for k, v in self.HIST_model.state_dict().items()},
        }
        state.update({k: self.__dict__[k] for k in RESULT_ATTRIBUTES if k in self.__dict__})
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        # format 1 (0.1.0) kept every argument as an attribute; options added later take their (off) defaults
        flat = (
            state["settings"]
            if "settings" in state
            else {k: v for k, v in state.items() if k in HISTSettings.field_names()}
        )
        settings, _ = HISTSettings.from_kwargs(**flat)
        self.__dict__.update(logger=get_module_logger("HIST"), settings=settings, fitted=False, _concept_source=None)
        self.__dict__.update({k: state[k] for k in RESULT_ATTRIBUTES if k in state})
        self.device = select_device(settings.training.GPU, self.logger)
        weights = state["HIST_model"] if isinstance(state["HIST_model"], dict) else state["HIST_model"].state_dict()
        self.HIST_model = self._build_network(seeded=False)
        load_state_dict_strict(self.HIST_model, weights, "the pickled HIST")
        self.HIST_model.to(self.device)
        self.train_optimizer = self._new_optimizer()


def check_device(settings: HISTSettings, device: torch.device) -> None:
    """The settings that need a device feature (``precision``, ``cuda_graphs``) checked against ``device``."""
    check_precision(settings.training.precision, device)
    check_cuda_graphs(settings.training.cuda_graphs, device)


def check_settings(settings: HISTSettings, logger: Any) -> torch.device:
    """Everything ``HIST(**kwargs)`` checks before it builds a network (the settings are valid by construction):
    the device ``GPU`` names and what it must support. Returns the device."""
    device = select_device(settings.training.GPU, logger)
    check_device(settings, device)
    return device


def _signature() -> inspect.Signature:
    """``HIST(d_feat=6, ..., seed=None, <the arguments added here>, **kwargs)``: qlib's arguments in qlib's order, then
    the others, derived from the settings' fields."""
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
        for f in documented_fields()
    ]
    params.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(params)


def _docstring(doc: str) -> str:
    """``doc`` (a summary line, then notes) with the generated parameter sections after its summary."""
    summary, _, notes = doc.partition("\n\n")
    return f"{summary}\n\n{parameters_docstring()}\n{notes}"


HIST.__init__.__signature__ = _signature()  # type: ignore[attr-defined]
HIST.__doc__ = _docstring(HIST.__doc__ or "")
