"""The probes' one thread policy: how many worker threads fit pieces of work side by side, and how
many intra-op threads each torch op then gets.

Why: on CPU a probe's tensors are cache-sized and its products skinny, so splitting one op across
threads costs more than it saves (and OpenMP stalls badly when another process holds a core). The
cores go to separate pieces of work instead -- chunks of units in
:meth:`~workbench.probes.LinearProbes.fit`, solver batches in
:func:`~workbench.probes.solver.fit_lbfgs` (torch and the compiled kernels release the GIL) -- each
worker running ops with one intra-op thread. Work already running in a worker runs its own pieces
serially: one pool at a time, never a pool inside a pool.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

import torch

__all__ = ["map_tasks", "thread_plan"]

T = TypeVar("T")
R = TypeVar("R")

_local = threading.local()  # .in_worker: set in the pool's threads


def thread_plan(n_tasks: int, device: torch.device | str) -> tuple[int, int | None]:
    """``(workers, intra_op_threads)`` for ``n_tasks`` independent pieces of work on ``device``.

    ``(1, None)``: run them one after another in the calling thread with torch's thread setting
    untouched -- off CPU (one device stream), inside a worker already, or with one task or one
    core. Otherwise one worker per core (at most one per task), each op on one intra-op thread.
    """
    if torch.device(device).type != "cpu" or getattr(_local, "in_worker", False):
        return 1, None
    workers = min(torch.get_num_threads(), n_tasks)
    return (workers, 1) if workers > 1 else (1, None)


def map_tasks(fn: Callable[[T], R], tasks: Iterable[T], device: torch.device | str) -> list[R]:
    """``[fn(task) for task in tasks]``, run as :func:`thread_plan` decides (results in task order)."""
    tasks = list(tasks)
    workers, intra_op = thread_plan(len(tasks), device)
    if workers == 1:
        return [fn(task) for task in tasks]
    previous = torch.get_num_threads()
    torch.set_num_threads(intra_op)  # workers started below inherit it
    try:
        with ThreadPoolExecutor(workers, initializer=_mark_worker) as pool:
            return list(pool.map(fn, tasks))
    finally:
        torch.set_num_threads(previous)


def _mark_worker() -> None:
    _local.in_worker = True
