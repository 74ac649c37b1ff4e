"""The one thread policy: cores go to separate pieces of work, never a pool inside a pool."""

import threading

import numpy as np
import pytest
import torch

from workbench.probes import LinearProbes
from workbench.probes.threads import map_tasks, thread_plan


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_plan_uses_the_cores_on_separate_tasks(two_threads):
    assert thread_plan(5, "cpu") == (2, 1)  # one worker per core, one intra-op thread each
    assert thread_plan(1, "cpu") == (1, None)  # a single task keeps torch's threads
    assert thread_plan(5, "cuda") == (1, None)  # one device stream: in turn
    torch.set_num_threads(1)
    assert thread_plan(5, "cpu") == (1, None)


def test_map_tasks_never_nests_pools_and_restores_threads(two_threads):
    main = threading.get_ident()

    def outer(i):
        inner = map_tasks(lambda j: (threading.get_ident(), torch.get_num_threads(), thread_plan(3, "cpu")), range(3), "cpu")
        return i, threading.get_ident(), inner

    results = map_tasks(outer, range(4), "cpu")
    assert [i for i, _, _ in results] == [0, 1, 2, 3]  # task order kept
    workers = {ident for _, ident, _ in results}
    assert main not in workers and 1 <= len(workers) <= 2
    for _, ident, inner in results:
        # nested work runs serially in its worker's own thread, with one intra-op thread
        assert inner == [(ident, 1, (1, None))] * 3
    assert torch.get_num_threads() == 2  # restored


def test_fit_is_the_same_in_parallel_and_in_turn(two_threads):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 600)
    X = (rng.standard_normal((600, 12, 20)) + 0.5 * y[:, None, None]).astype(np.float32)
    parallel = LinearProbes(unit_chunk=3).fit(X, y)  # 4 chunks on 2 workers
    torch.set_num_threads(1)
    serial = LinearProbes(unit_chunk=3).fit(X, y)
    # the same computation per chunk (one intra-op thread either way): bit-equal
    np.testing.assert_array_equal(parallel.coef_, serial.coef_)
    np.testing.assert_array_equal(parallel.intercept_, serial.intercept_)
