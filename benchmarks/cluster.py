"""The benchmark's engine: each run a Ray task, on this machine or on a Ray cluster.

Ray (``pip install -e ".[bench]"``) schedules the tasks: a local Ray started inside the process by default
(``num_cpus`` = ``--cpus``), or the cluster at ``--address`` (``auto`` on a node of it, or ``HOST:PORT``). A task asks
for ``cpus_per_task`` CPUs (its torch threads) and ``gpus_per_task`` GPUs; Ray runs as many at once as the
resources allow, and runs again a task whose worker process died (killed, out of memory, a lost node) up to
``max_retries`` times. An exception raised by the run itself is not retried: it is reported, and the other tasks go
on. What is done lives in the caller's result files, not here, so a rerun submits only what is missing.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from benchmarks.paths import ROOT

log = logging.getLogger(__name__)

#: object store of a local Ray: tasks pass small arguments and write their results to files, so 256 MiB is plenty
#: and leaves a 2-core CI box its memory
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Resources:
    """Where and how big: the cluster ``address`` (None: a local Ray of ``cpus`` CPUs), and what each task asks."""

    address: str | None = None
    cpus: int | None = None  # local Ray only; None: every core
    cpus_per_task: int = 1
    gpus_per_task: float = 0
    max_retries: int = 3


def connect(resources: Resources) -> bool:
    """Start a local Ray or join a cluster; True when this call started it (and so should shut it down).

    Workers import ``benchmarks`` and ``qlib_hist`` from this repository: a local Ray puts its root on their
    ``PYTHONPATH``; the nodes of a cluster must hold the repository at the same path.
    """
    import ray

    if ray.is_initialized():
        return False
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {"env_vars": {"PYTHONPATH": path}}
    if resources.address:
        ray.init(address=resources.address, runtime_env=env, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=resources.cpus,
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            runtime_env=env,
            logging_level=logging.WARNING,
        )
    return True


def driver_kernels(cpus: int | None) -> int:
    """qlib processes for the driver's handler builds: one per CPU of ``--cpus`` (default: every core; 2 at least).
    The driver builds what its tasks share before any starts; the tasks themselves read with one (``kernels=1``)."""
    return max(2, cpus or os.cpu_count() or 2)


def check_local_gpus(resources: Resources) -> None:
    """A :class:`ValueError` when a local Ray could never start a task: each asks for more GPUs than this machine
    has (Ray would hold such a task as infeasible, for ever). A cluster is not checked: its nodes may hold them."""
    if resources.address or not resources.gpus_per_task:
        return
    import torch

    visible = torch.cuda.device_count()
    if resources.gpus_per_task > visible:
        raise ValueError(
            f"--gpus-per-run {resources.gpus_per_task:g}: this machine has {visible} GPU(s) that torch can use, so a"
            " local Ray could never start a run; leave --gpus-per-run out, or give --address of a cluster with GPUs"
        )


def describe_failure(err: BaseException) -> str:
    """One line naming what went wrong (the run's own exception, not Ray's wrapper), then Ray's full report (with
    the remote traceback)."""
    cause = getattr(err, "cause", None) or err  # RayTaskError wraps the exception the task raised
    return f"{type(cause).__name__}: {cause}".splitlines()[0] + "\n" + str(err)


def run_tasks(
    task: Callable[..., Any],
    items: Sequence[Any],
    resources: Resources,
    *shared: Any,
    on_done: Callable[[Any, Any, float], None] | None = None,
) -> dict[Any, str]:
    """Run ``task(*shared, item)`` for every item as a Ray task; the items that failed -> :func:`describe_failure`.

    ``on_done(item, result, seconds)`` is called in the driver as each task finishes (``seconds`` from submission
    to result: the wall time the grid paid for it, queueing included). The process title of a running task is
    ``ray::<task's name>``.
    """
    import ray

    started = connect(resources)
    try:
        remote = ray.remote(
            num_cpus=resources.cpus_per_task, num_gpus=resources.gpus_per_task, max_retries=resources.max_retries
        )(task)
        shared_refs = [ray.put(value) for value in shared]  # one copy in the object store, not one per task
        tic = time.perf_counter()
        pending = {remote.remote(*shared_refs, item): item for item in items}
        failures: dict[Any, str] = {}
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            item = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as err:  # the run raised, or its worker died more than max_retries times
                failures[item] = describe_failure(err)
                log.error("%s failed: %s", item, failures[item].splitlines()[0])
                continue
            if on_done is not None:
                on_done(item, result, time.perf_counter() - tic)
        return failures
    finally:
        if started:
            ray.shutdown()
