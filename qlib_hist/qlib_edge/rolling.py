"""Rolling retraining with warm start, through qlib's own rolling and online machinery.

qlib has the pieces: ``RollingGen`` cuts a task into windows, ``TrainerR`` trains tasks into recorders,
``qlib.contrib.rolling.base.Rolling`` merges the windows' predictions into one recorder and analyses it, and
``OnlineManager`` + ``RollingStrategy`` retrain on a schedule. This module adds what HIST needs on top, and
nothing else:

- :func:`move_fit_window` (a ``RollingGen`` ``ds_extra_mod_func``): each window's handler fits its processors
  (``RobustZScoreNorm``...) on that window's train segment only, and loads data from its train start to its test
  end. qlib's ``Rolling`` by default dumps one handler fitted on the YAML's ``fit_start_time..fit_end_time`` and
  reuses it for every window (qlib issue #1620).
- :func:`hist_task_train` (a ``TrainerR`` ``train_func``): qlib's ``task_train`` plus a warm start: the window's
  model is the previous window's fitted model (from the same experiment, loaded from its recorder's
  ``params.pkl``), fine-tuned with :meth:`qlib_hist.HIST.finetune`. Each recorder is tagged with its window
  (``qlib_hist.window``), how it started and its fit seconds, so a stopped run resumes at the first unfinished
  window and the merged recorder can say what the retraining cost.
- :class:`HISTRolling`: qlib's ``Rolling`` with the above, resumable, merging only this run's windows.
- :func:`online_manager`: ``OnlineManager`` + ``RollingStrategy`` + ``TrainerR`` wired the same way.

Window dates: the first window is the workflow's ``train``/``valid`` segments and the first ``step`` trading days
of ``test``; each next window slides every segment by ``step`` trading days (``RollingGen.ROLL_SD``). Train and
valid end ``trunc_days`` trading days before their window's test start, so that no label of a fitted day looks at
a price on or after the test start (``trunc_days`` = the label's look-ahead + 1; 3 for Alpha360's
``Ref($close, -2) / Ref($close, -1) - 1``, as qlib's ``TimeAdjuster.truncate`` documents).

Dates: the YAML is read as qrun reads it, where an unquoted ``2017-01-01`` is a ``datetime.date``; every date of
the workflow (segments, handler and backtest times, ``train_start`` / ``test_end``) becomes a ``pd.Timestamp`` as
it is read (:func:`qlib_hist.config_dates.config_dates`), and a window's name (:func:`window_digest`) does not depend on
how its dates were written.

qlib's private API: :class:`HISTRolling` overrides ``Rolling._train_rolling_tasks``, ``_ens_rolling``,
``_update_rolling_rec`` and ``_raw_conf``, calls ``_update_start_end_time``, and :func:`hist_task_train` calls
``qlib.model.trainer._log_task_info`` (:data:`QLIB_PRIVATE_API`). qlib may change them in any release, so this module
is tied to the pyqlib versions it is tested with (:data:`QLIB_TESTED`, declared in setup.cfg);
``tests/test_qlib_private_api.py`` names what a newer qlib no longer has.
"""

from __future__ import annotations

import copy
import datetime
import functools
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import pandas as pd
from qlib.contrib.rolling.base import Rolling
from qlib.log import get_module_logger
from qlib.model.base import Model, ModelFT
from qlib.model.ens.ensemble import RollingEnsemble
from qlib.model.trainer import TrainerR
from qlib.utils import auto_filter_kwargs, fill_placeholder, get_cls_kwargs, init_instance_by_config
from qlib.workflow import R
from qlib.workflow.record_temp import SigAnaRecord, SignalRecord
from qlib.workflow.task.gen import RollingGen, handler_mod, task_generator
from qlib.workflow.task.utils import TimeAdjuster

from ..config_dates import as_timestamp, config_dates, date_span, unreadable_yaml
from ..digests import json_digest
from ..errors import QlibHistError
from .recorders import artifact_copies_removed

#: qlib's private names this module overrides or calls, by owner (pyqlib has no promise to keep them): the versions
#: it is tested with are declared in setup.cfg (``pyqlib>=0.9.6,<0.10``), and tests/test_qlib_private_api.py names
#: the one that a qlib release renamed or removed
QLIB_PRIVATE_API: Dict[str, Tuple[str, ...]] = {
    "qlib.contrib.rolling.base.Rolling": (
        "_raw_conf",  # read the workflow (overridden: dates normalised)
        "_update_start_end_time",  # train_start / test_end (called)
        "_train_rolling_tasks",  # train the windows (overridden: warm start, resume)
        "_ens_rolling",  # merge the windows' predictions (overridden: this run's windows only)
        "_update_rolling_rec",  # the analysis records on the merged signal (overridden)
    ),
    "qlib.model.trainer": ("_log_task_info",),  # a window's params, task and host on its recorder (called)
}
QLIB_TESTED = "pyqlib>=0.9.6,<0.10"

try:
    from qlib.model.trainer import _log_task_info
except ImportError:  # pragma: no cover - a pyqlib this module was not made for
    raise ImportError(
        "qlib_hist.qlib_edge.rolling calls qlib's private qlib.model.trainer._log_task_info, which this pyqlib does "
        f"not have: rolling is tested with {QLIB_TESTED} (docs/rolling.md)"
    ) from None

TAG = "qlib_hist."  # prefix of the tags this module sets on recorders
WINDOW_TAG = TAG + "window"  # digest of (task, start mode): which window a recorder holds
TEST_START_TAG = TAG + "test_start"
MODEL_TAG = TAG + "model"  # digest of the task's model config: warm starts only chain equal models
START_TAG = TAG + "start"  # "cold" or "warm"
WARM_FROM_TAG = TAG + "warm_from"  # the recorder id the warm start loaded
FIT_SECONDS_TAG = TAG + "fit_seconds"
EPOCHS_TAG = TAG + "epochs"  # epochs the window trained (fit or finetune; "" for a model without a history)
DEFAULT_LABEL_LOOKAHEAD = 2  # Alpha360 / Alpha158's label: Ref($close, -2) / Ref($close, -1) - 1


class RollingError(QlibHistError):
    """A rolling run cannot start or merge (the task's handler, segments or windows); the message says why."""


def _digest(value: Any) -> str:
    """16 hex digits naming ``value``; a ``datetime.date`` counts as its ``pd.Timestamp`` (a rerun that reads the
    same YAML with its dates normalised names the same windows)."""
    canonical = config_dates(value, convert=lambda v, key: pd.Timestamp(v) if isinstance(v, datetime.date) else v)
    return json_digest(canonical)


def _segments(task: dict) -> Dict[str, Any]:
    return task["dataset"]["kwargs"]["segments"]


def label_lookahead(task: dict) -> int:
    """Trading days the task's label looks ahead: the largest ``N`` in ``Ref(..., -N)`` (2 when no label is given)."""
    handler = task["dataset"]["kwargs"]["handler"]
    label = handler.get("kwargs", {}).get("label") if isinstance(handler, dict) else None
    if label is None:
        return DEFAULT_LABEL_LOOKAHEAD
    if isinstance(label, (list, tuple)) and label and isinstance(label[0], (list, tuple)):
        label = label[0]  # (expressions, names)
    expressions = [label] if isinstance(label, str) else [str(e) for e in label]
    return max((int(n) for e in expressions for n in re.findall(r"Ref\(.*?,\s*-(\d+)\s*\)", e)), default=0)


def _handler_config(task: dict) -> dict:
    """The task's handler config; a dumped handler (a path) is refused: its processors cannot move with a window."""
    handler = task["dataset"]["kwargs"]["handler"]
    if not isinstance(handler, dict):
        raise RollingError(
            f"rolling needs task.dataset.kwargs.handler as a config (class, module_path, kwargs), got {handler!r}: "
            "a dumped handler keeps the processors fitted on its own dates for every window (qlib issue #1620)"
        )
    return handler


def check_task_model(task: dict, source: str) -> None:
    """The task's model arguments checked as ``HIST(**kwargs)`` checks them (each setting, and what the device must
    support), before any data is read: a window's model is made only after its data are loaded. A model that is not
    this package's HIST checks its own arguments when qlib makes it."""
    from ..settings import HISTSettings, SettingsError
    from .model import HIST, check_settings

    model = task.get("model")
    if not isinstance(model, dict):
        return
    try:
        cls, kwargs = get_cls_kwargs(copy.deepcopy(model))
    except (ImportError, AttributeError) as err:
        raise RollingError(f"{source}: task.model names no class that can be imported ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, HIST)):
        return
    if not isinstance(kwargs, dict):
        raise RollingError(f"{source}: task.model.kwargs must be a mapping of HIST's arguments, got {kwargs!r}")
    try:
        settings, _ = HISTSettings.from_kwargs(**kwargs)
        check_settings(settings, get_module_logger("qlib_hist.rolling"))
    except SettingsError as err:
        raise SettingsError(f"{source}: task.model.kwargs: {err}") from None


def move_fit_window(task: dict, rolling_gen: RollingGen) -> None:
    """``RollingGen``'s ``ds_extra_mod_func``: the window's handler covers train start .. test end and fits its
    processors on the window's train segment (in place)."""
    handler_mod(task, rolling_gen)
    segments = _segments(task)
    kwargs = _handler_config(task).setdefault("kwargs", {})
    kwargs["fit_start_time"], kwargs["fit_end_time"] = segments["train"][0], segments["train"][1]
    kwargs["start_time"], kwargs["end_time"] = segments["train"][0], segments["test"][1]


class _CalendarBound(TimeAdjuster):
    """qlib's ``TimeAdjuster``, except that a segment shifted to start just past the calendar is out of it (qlib's
    check lets ``start == len(calendar)`` through as a window starting on ``None``)."""

    def shift(self, seg: tuple, step: int, rtype: str = TimeAdjuster.SHIFT_SD) -> tuple:
        shifted = super().shift(seg, step, rtype)
        if shifted[0] is None:
            raise KeyError("The segment is out of valid calendar")
        return shifted


def check_step(step: Any) -> int:
    """``step`` as a positive number of trading days, or a :class:`RollingError` naming it."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise RollingError(f"step must be a positive number of trading days, got {step!r}")
    return step


def hist_rolling_gen(step: int, trunc_days: int, rtype: str = RollingGen.ROLL_SD) -> RollingGen:
    """qlib's ``RollingGen`` with :func:`move_fit_window`: windows of ``step`` trading days of test each.
    Needs qlib initialised (its ``TimeAdjuster`` reads the calendar)."""
    check_step(step)
    gen = RollingGen(step=step, rtype=rtype, ds_extra_mod_func=move_fit_window, trunc_days=int(trunc_days))
    gen.ta = _CalendarBound(future=True)
    return gen


# ---------------------------------------------------------------------------------------------- training one window
def window_digest(task: dict, warm: bool) -> str:
    """Names one window of one run: the task (dates, data, model, records) and the start mode."""
    return _digest({"task": task, "warm": bool(warm)})


def _test_start(task: dict) -> pd.Timestamp:
    return pd.Timestamp(_segments(task)["test"][0])


def previous_window(experiment_name: str, task: dict) -> Optional[Any]:
    """The finished recorder of ``experiment_name`` whose window comes last before ``task``'s, made by
    :func:`hist_task_train` with the same model config; None when there is none."""
    try:
        experiment = R.get_exp(experiment_name=experiment_name, create=False)
    except ValueError:
        return None
    model_key, start = _digest(task["model"]), _test_start(task)
    best: Tuple[Optional[pd.Timestamp], Optional[Any]] = (None, None)
    for recorder in experiment.list_recorders(rtype="list", status="FINISHED"):
        tags = recorder.list_tags()
        if tags.get(MODEL_TAG) != model_key or TEST_START_TAG not in tags:
            continue
        test_start = pd.Timestamp(tags[TEST_START_TAG])
        if test_start < start and (best[0] is None or test_start > best[0]):
            best = (test_start, recorder)
    return best[1]


def hist_task_train(
    task_config: dict, experiment_name: str, recorder_name: Optional[str] = None, warm: bool = True
) -> Any:
    """qlib's ``task_train`` for one window, with a warm start (a ``TrainerR`` ``train_func``).

    ``warm``: when the experiment holds a finished earlier window of the same model (:func:`previous_window`),
    its ``params.pkl`` is loaded and fine-tuned (``model.finetune``) on this window's dataset; otherwise (first
    window, ``warm=False``, or a model without ``finetune``) the task's model is fitted from scratch. Then, as qlib's
    ``task_train``: ``params.pkl``, the dataset's config and the task's records (``SignalRecord``...).
    """
    logger = get_module_logger("qlib_hist.rolling")
    # named before anything runs: qlib fills processor kwargs into the configs it instantiates
    window_tags = {
        WINDOW_TAG: window_digest(task_config, warm),
        TEST_START_TAG: str(_test_start(task_config).date()),
        MODEL_TAG: _digest(task_config["model"]),
    }
    previous = previous_window(experiment_name, task_config) if warm else None
    with artifact_copies_removed(), R.start(experiment_name=experiment_name, recorder_name=recorder_name):
        _log_task_info(task_config)
        recorder = R.get_recorder()
        dataset = init_instance_by_config(copy.deepcopy(task_config["dataset"]))
        model = previous.load_object("params.pkl") if previous is not None else None
        if not isinstance(model, ModelFT):
            model = init_instance_by_config(copy.deepcopy(task_config["model"]), accept_types=Model)
            previous = None
        window = _segments(task_config)["test"]
        logger.info("window test %s..%s: %s", window[0], window[1], "warm start" if previous else "cold start")
        tic = time.perf_counter()
        if previous is not None:
            auto_filter_kwargs(model.finetune)(dataset, reweighter=task_config.get("reweighter"))
        else:
            auto_filter_kwargs(model.fit)(dataset, reweighter=task_config.get("reweighter"))
        fit_seconds = time.perf_counter() - tic
        history = getattr(model, "history", None)  # HIST's epochs of this fit or finetune (not the earlier windows')
        R.save_objects(**{"params.pkl": model})
        dataset.config(dump_all=False, recursive=True)
        R.save_objects(**{"dataset": dataset})
        filled = fill_placeholder(copy.deepcopy(task_config), {"<MODEL>": model, "<DATASET>": dataset})
        records = filled.get("record", [])
        for record in [records] if isinstance(records, dict) else records:
            init_instance_by_config(
                record,
                recorder=recorder,
                default_module="qlib.workflow.record_temp",
                try_kwargs={"model": model, "dataset": dataset},
            ).generate()
        R.set_tags(
            **window_tags,
            **{
                START_TAG: "warm" if previous is not None else "cold",
                WARM_FROM_TAG: previous.info["id"] if previous is not None else "",
                FIT_SECONDS_TAG: f"{fit_seconds:.3f}",
                EPOCHS_TAG: str(len(history)) if isinstance(history, list) else "",
            },
        )
        return recorder


# ---------------------------------------------------------------------------------------------- a whole rolling run
class HISTRolling(Rolling):
    """qlib's ``Rolling`` (``qlib.contrib.rolling.base``) with per-window processors, warm start and resume.

    Args:
        conf_path: a qrun workflow YAML; its ``task`` is the first window (see the module docstring).
        step: trading days of test per window (and how far each window slides).
        warm: start each window from the previous window's model (``False``: every window cold, qlib's way).
        exp_name: the experiment of the merged recorder (default ``hist_rolling_warm`` / ``hist_rolling_cold``).
        rolling_exp: the experiment of the windows' recorders (default ``<exp_name>_windows``); a rerun with the
            same one trains only the windows that have no finished recorder there.
        trunc_days: trading days between a window's valid end and its test start (default: label look-ahead + 1).
        train_start, test_end, task_ext_conf: as qlib's ``Rolling``.
    """

    def __init__(
        self,
        conf_path: Union[str, Path],
        step: int = 63,
        warm: bool = True,
        exp_name: Optional[str] = None,
        rolling_exp: Optional[str] = None,
        trunc_days: Optional[int] = None,
        train_start: Optional[str] = None,
        test_end: Optional[str] = None,
        task_ext_conf: Optional[dict] = None,
    ) -> None:
        exp_name = exp_name or f"hist_rolling_{'warm' if warm else 'cold'}"
        super().__init__(
            conf_path,
            exp_name=exp_name,
            horizon=1,  # qlib's Rolling rewrites the label from it; basic_task here keeps the YAML's label
            step=step,
            train_start=as_timestamp(train_start, "train_start"),
            test_end=as_timestamp(test_end, "test_end"),
            task_ext_conf=task_ext_conf,
        )
        # set here, not through qlib's argument, which warns that a named experiment must be deleted by hand
        # before a rerun: this class resumes in it instead
        self.rolling_exp = rolling_exp or f"{exp_name}_windows"
        self.logger = get_module_logger("qlib_hist.rolling")
        self.warm = bool(warm)
        self.trunc_days = trunc_days
        self._checked = False
        check_step(step)  # now; the generator needs qlib's calendar and the task's trunc_days (get_task_list)

    def check(self) -> None:
        """The workflow's task and its model's arguments, before qlib starts and before any data is read."""
        check_task_model(self.basic_task(), str(self.conf_path))
        self._checked = True

    def _raw_conf(self) -> dict:
        """The workflow as qrun reads it, every date a ``pd.Timestamp`` (a bad one: an error naming its key)."""
        from ruamel.yaml.error import YAMLError

        try:
            raw = super()._raw_conf()
        except (ValueError, YAMLError) as err:
            raise unreadable_yaml(self.conf_path, err) from None
        return config_dates(raw, source=str(self.conf_path))

    def basic_task(self, enable_handler_cache: Optional[bool] = False) -> dict:
        """The workflow's task, its dates adjusted (``train_start`` / ``test_end``); the label as written."""
        task = copy.deepcopy(self._raw_conf().get("task"))
        if not isinstance(task, dict) or "model" not in task or "dataset" not in task:
            raise RollingError(f"{self.conf_path}: no task with model and dataset (a qrun workflow YAML has both)")
        _handler_config(task)
        segments = task["dataset"]["kwargs"].get("segments", {})
        missing = [k for k in ("train", "valid", "test") if k not in segments]
        if missing:
            raise RollingError(f"{self.conf_path}: task.dataset.kwargs.segments has no {', '.join(missing)}")
        task["dataset"]["kwargs"]["segments"] = {
            k: date_span(v, f"{self.conf_path}: task.dataset.kwargs.segments.{k}") for k, v in segments.items()
        }
        task = self._update_start_end_time(task)
        if self.task_ext_conf is not None:
            from qlib.utils.data import update_config

            task = update_config(task, self.task_ext_conf)
        return task

    def get_task_list(self) -> List[dict]:
        """One task per window; each records only its signal (the analysis runs on the merged signal)."""
        task = self.basic_task()
        if self.trunc_days is None:
            self.trunc_days = label_lookahead(task) + 1
        self.rolling_gen = hist_rolling_gen(self.step, self.trunc_days)
        self.test_end = _segments(task)["test"][1]  # the last window may reach past it: the merge clips there
        tasks = task_generator(task, self.rolling_gen)
        for t in tasks:
            t["record"] = ["qlib.workflow.record_temp.SignalRecord"]
        return tasks

    def finished_windows(self) -> Dict[str, Any]:
        """Window digest -> finished recorder in ``rolling_exp``."""
        try:
            experiment = R.get_exp(experiment_name=self.rolling_exp, create=False)
        except ValueError:
            return {}
        done = {}
        for recorder in experiment.list_recorders(rtype="list", status="FINISHED"):
            digest = recorder.list_tags().get(WINDOW_TAG)
            if digest:
                done[digest] = recorder
        return done

    def _train_rolling_tasks(self) -> None:
        tasks = self.get_task_list()
        self.tasks = tasks
        done = self.finished_windows()
        todo = [t for t in tasks if window_digest(t, self.warm) not in done]
        self.logger.info(
            "%d windows of %d test days (%s start), %d already finished in experiment %r: training %d",
            len(tasks), self.step, "warm" if self.warm else "cold", len(tasks) - len(todo), self.rolling_exp, len(todo),
        )  # fmt: skip
        trainer = TrainerR(
            experiment_name=self.rolling_exp, train_func=functools.partial(hist_task_train, warm=self.warm)
        )
        trainer.train(todo)

    def _ens_rolling(self) -> None:
        """The merged signal: each test day once, from the window whose test segment holds it."""
        done = self.finished_windows()
        missing = [t for t in self.tasks if window_digest(t, self.warm) not in done]
        if missing:
            raise RollingError(f"{len(missing)} windows have no finished recorder in {self.rolling_exp!r}")
        recorders = [done[window_digest(t, self.warm)] for t in self.tasks]
        preds, labels, fit_seconds, epochs = {}, {}, 0.0, []
        for task, recorder in zip(self.tasks, recorders):
            test_start, test_end = _segments(task)["test"]  # the last window's end is None past the calendar
            key = str(pd.Timestamp(test_start).date())
            days = slice(pd.Timestamp(test_start), None if test_end is None else pd.Timestamp(test_end))
            preds[key] = recorder.load_object("pred.pkl").loc[days]
            labels[key] = recorder.load_object("label.pkl").loc[days]
            tags = recorder.list_tags()
            fit_seconds += float(tags.get(FIT_SECONDS_TAG, "nan"))
            epochs.append(tags.get(EPOCHS_TAG, ""))
        pred, label = RollingEnsemble()(preds).loc[: self.test_end], RollingEnsemble()(labels).loc[: self.test_end]
        if pred.index.duplicated().any():
            raise RollingError("windows' test segments overlap: a test day would be scored twice")
        with R.start(experiment_name=self.exp_name):
            R.log_params(rolling_exp=self.rolling_exp, step=self.step, start="warm" if self.warm else "cold",
                         windows=len(self.tasks), trunc_days=self.trunc_days)  # fmt: skip
            R.log_metrics(fit_seconds_total=fit_seconds)
            if all(epochs):  # every window a model with a history (HIST): the retraining's cost in epochs
                R.log_metrics(epochs_total=sum(int(e) for e in epochs))
            R.set_tags(**{TAG + "window_recorders": ",".join(r.info["id"] for r in recorders)})
            R.save_objects(**{"pred.pkl": pred, "label.pkl": label})
            self._rid = R.get_recorder().id

    def _update_rolling_rec(self) -> None:
        """The workflow's analysis records (``SigAnaRecord``, ``PortAnaRecord``...) on the merged signal; records
        that need the model or the dataset (``SignalRecord``, ``HISTExplainRecord``) belong to the windows."""
        recorder = R.get_recorder(experiment_name=self.exp_name, recorder_id=self._rid)
        records = self._raw_conf()["task"].get("record", [])
        records = [records] if isinstance(records, dict) else records
        analysed = False
        for record in records:
            cls, kwargs = get_cls_kwargs(record, default_module="qlib.workflow.record_temp")
            if issubclass(cls, SignalRecord) or "<MODEL>" in str(kwargs) or "<DATASET>" in str(kwargs):
                continue
            init_instance_by_config(record, recorder=recorder, default_module="qlib.workflow.record_temp").generate()
            analysed = analysed or issubclass(cls, SigAnaRecord)
        if not analysed:
            SigAnaRecord(recorder).generate()

    def run(self) -> Any:
        """Train the missing windows, merge, analyse; returns the merged recorder."""
        if not self._checked:
            self.check()
        self._train_rolling_tasks()
        with artifact_copies_removed():  # the windows' signals and the analysis records' reads
            self._ens_rolling()
            self._update_rolling_rec()
        return R.get_recorder(experiment_name=self.exp_name, recorder_id=self._rid)


# ---------------------------------------------------------------------------------------------- online
def online_manager(
    task: dict, name: str, step: int, begin_time: Any = None, warm: bool = True, trunc_days: Optional[int] = None
) -> Any:
    """qlib's ``OnlineManager`` over a ``RollingStrategy`` for ``task``: a new model every ``step`` trading days,
    each warm-started from the last one (``warm``), processors fitted on each window's train segment.

    The experiment ``name`` holds the models; ``manager.first_train()`` (or ``simulate(end_time)``) trains the
    windows up to now, then ``manager.routine()`` after each close retrains when a window is due and updates the
    predictions; ``manager.get_signals()`` gives the scores. See the README's "Rolling and online".
    """
    from qlib.workflow.online.manager import OnlineManager
    from qlib.workflow.online.strategy import RollingStrategy

    task = config_dates(task, where="task")
    check_task_model(task, "task")
    trunc = label_lookahead(task) + 1 if trunc_days is None else trunc_days
    strategy = RollingStrategy(name, task, hist_rolling_gen(step, trunc))
    trainer = TrainerR(experiment_name=name, train_func=functools.partial(hist_task_train, warm=warm))
    return OnlineManager(strategy, trainer=trainer, begin_time=as_timestamp(begin_time, "begin_time"))


def run_rolling(workflow: Union[str, Path], **options: Any) -> Any:
    """``qlib-hist rolling``: initialise qlib from the workflow's ``qlib_init`` (paths relative to the current
    directory, as ``qrun``), run :class:`HISTRolling` (``options``: its arguments) and return the merged recorder."""
    import qlib

    from .recorders import read_workflow

    rolling = HISTRolling(workflow, **options)
    rolling.check()  # the task's errors (its dates', its model's arguments) before qlib starts
    config = read_workflow(workflow)
    qlib.init(**config["qlib_init"])
    return rolling.run()
