"""Loops split across threads (codegen/kernel.py: chunks claimed from a shared counter):
every element is computed exactly once, and results never depend on which thread ran which
chunk, so repeated and concurrent calls agree bit for bit."""
import threading

import numpy as np
import pytest

import symgraph as sg
from symgraph import Variable, compile
from symgraph.codegen import kernel

SMALL = 1 << 12


@pytest.fixture(autouse=True)
def split_small_loops(monkeypatch):
    """Split loops from a few thousand elements, so small data exercises the threads (and
    keep such code out of the disk cache, which does not know the threshold)."""
    monkeypatch.setattr(kernel, "PARALLEL_MIN_ELEMENTS", SMALL)
    monkeypatch.setenv("SYMGRAPH_CACHE", "0")


@pytest.mark.parametrize("num_threads", [2, 3, 7])
@pytest.mark.parametrize("n", [SMALL, SMALL + 1, 100_003])
def test_every_element_is_covered_once(n, num_threads):
    """Integer results are exact in any order: a chunk missed or run twice would show."""
    x = Variable("x", (n,), "int64")
    f = compile([x.sum(), x * 3 + 1], num_threads=num_threads)
    data = np.arange(n, dtype=np.int64)
    total, mapped = f(data)
    assert int(total) == n * (n - 1) // 2
    np.testing.assert_array_equal(mapped, data * 3 + 1)


def test_rows_split_with_fewer_rows_than_chunks():
    x = Variable("x", (3, 200_000), "int64")
    f = compile(x.sum(axis=1) * 2, num_threads=5)
    data = np.arange(600_000, dtype=np.int64).reshape(3, 200_000)
    np.testing.assert_array_equal(f(data), data.sum(axis=1) * 2)


def _graphs():
    rng = np.random.default_rng(3)
    big = rng.standard_normal(300_001)
    grid = rng.standard_normal((300, 1_001))
    row = rng.standard_normal(1_001)
    img = rng.standard_normal((6, 8, 20, 20)).astype(np.float32)
    ker = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    a, b = rng.standard_normal((300, 256)), rng.standard_normal((256, 300))
    x, y = Variable("x"), Variable("y")
    return [
        ("full float sum", x.sum(), (big,)),
        ("mean of exp", sg.exp(x).mean(), (big,)),
        ("row sums", (x * y).sum(axis=1), (grid, row)),
        ("broadcast", sg.tanh(x * y) - x, (grid, row)),
        ("conv2d", sg.conv2d(x, y, padding=1), (img, ker)),
        ("max_pool2d", sg.max_pool2d(x, 2), (img,)),
        ("matmul", x @ y, (a, b)),
    ]


@pytest.mark.parametrize("name, graph, args", _graphs(), ids=[g[0] for g in _graphs()])
def test_repeated_and_concurrent_calls_agree_bit_for_bit(name, graph, args):
    f = compile(graph, num_threads=3)
    first = f(*args)
    np.testing.assert_allclose(first, sg.evaluate(graph, **dict(zip(f.inputs, args))),
                               rtol=1e-4 if first.dtype == np.float32 else 1e-10, atol=1e-6)
    differ = []

    def work():
        for _ in range(10):
            got = f(*args)
            if got.tobytes() != first.tobytes():
                differ.append(name)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    work()
    for t in threads:
        t.join()
    assert not differ


def test_open_sizes_split_at_run_time_and_stay_exact():
    """Shape-generic code picks its chunk bounds from the call's sizes."""
    x = Variable("x", (None,), "int64")
    f = compile([x.sum(), x - 1], num_threads=4)
    for n in (0, 1, 5, SMALL - 1, 40_009):
        data = np.arange(n, dtype=np.int64)
        total, shifted = f(data)
        assert int(total) == n * (n - 1) // 2
        np.testing.assert_array_equal(shifted, data - 1)
    assert f.cache_info().compilations == 1


def _threads_in_process():
    import os

    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/task"), reason="needs /proc")
def test_workers_are_shared_and_reused():
    """Every compiled function's parallel loops run on one pool: the thread count stays put."""
    x = Variable("x", (400_000,), "float64")
    data = np.arange(400_000.0)
    compile(x * 2, num_threads=3)(data)
    before = _threads_in_process()
    for k in range(20):
        np.testing.assert_array_equal(compile(x * 2 + k, num_threads=3)(data), data * 2 + k)
    assert _threads_in_process() <= before


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_child_starts_its_own_workers():
    import os
    import signal

    x = Variable("x", (500_000,), "int64")
    f = compile(x.sum() + x[0], num_threads=2)
    data = np.arange(500_000, dtype=np.int64)
    want = int(data.sum())
    assert int(f(data)) == want  # the parent's workers exist now
    pid = os.fork()
    if pid == 0:  # the child: its copy of the pool has no threads behind it
        signal.alarm(30)  # a child waiting for workers that do not exist dies, not hangs
        try:
            ok = all(int(f(data)) == want for _ in range(5))
            os._exit(0 if ok else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert int(f(data)) == want


def test_idle_workers_sleep():
    """A waiting worker polls for a moment (threadpool.SPIN_NS) and then sleeps: a pool left
    idle uses no CPU time. process_time counts every thread of the process."""
    import time

    from symgraph.codegen import threadpool

    x = Variable("x", (400_000,), "float64")
    f = compile(sg.exp(x) * 2, num_threads=4)
    data = np.linspace(-1.0, 1.0, 400_000)
    for _ in range(50):  # back to back: the workers are awake and polling
        f(data)
    time.sleep(threadpool.SPIN_NS * 1e-9 + 0.05)
    idle_start = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - idle_start < 0.1
    np.testing.assert_allclose(f(data), np.exp(data) * 2, rtol=1e-12)
