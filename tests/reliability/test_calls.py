"""Bad calls raise SymgraphError; unusual calls give correct results; outputs are owned by
the caller; threads agree bit for bit; no leaks; native code never reads past a guard page."""
import os
import subprocess
import sys
import textwrap

import numpy as np

import symgraph as sg
from reliability import harness


def test_malformed_calls_all_raise_symgraph_error():
    n, errors, other = harness.bad_calls(int(os.environ.get("SYMGRAPH_BAD_CALLS", "20000")))
    assert not other, sorted(set(other))[:5]
    assert errors == n


def test_unusual_calls_give_correct_results():
    n, problems = harness.unusual_calls()
    assert n >= 10 and not problems, problems


def test_outputs_are_fresh_and_owned():
    x = sg.Variable("x", (5,), "float64")
    f = sg.compile({"same": x + 0 * 0, "ident": x.reshape((5,)), "y": x * 2, "z": x * 2})
    a = np.arange(5.0)
    r1 = f(x=a)
    snapshot = {k: v.copy() for k, v in r1.items()}
    for k, v in r1.items():
        assert v.flags.owndata or v.base is None or not np.shares_memory(v, a), k
        assert not np.shares_memory(v, a), k
    arrays = list(r1.values())
    for i, p in enumerate(arrays):
        for q in arrays[i + 1:]:
            assert not np.shares_memory(p, q)
    f(x=a + 10)
    for k in r1:
        assert np.array_equal(r1[k], snapshot[k]), "a later call changed an earlier result"


def test_threads_bit_identical_with_reused_buffers():
    plan, calls, bad = harness.thread_check(8, int(os.environ.get("SYMGRAPH_THREAD_CALLS", "2000")))
    assert plan.get("num_buffers", 0) >= 1
    assert bad == 0


def test_repeated_calls_do_not_leak():
    grow, sizes = harness.leak_check(200_000, 200)
    assert grow <= 1 << 20, grow
    assert sizes[-1] - sizes[0] <= 64 << 20, sizes


GUARDED = textwrap.dedent("""
    import ctypes, mmap, numpy as np, symgraph as sg
    libc = ctypes.CDLL(None)
    PAGE = mmap.PAGESIZE
    keep = []
    def guarded(shape, dtype):
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        pages = (n + PAGE - 1) // PAGE + 1
        m = mmap.mmap(-1, pages * PAGE)
        keep.append(m)
        base = ctypes.addressof(ctypes.c_char.from_buffer(m))
        assert libc.mprotect(ctypes.c_void_p(base + (pages - 1) * PAGE), PAGE, 0) == 0
        off = (pages - 1) * PAGE - n
        return np.frombuffer(m, dtype, count=int(np.prod(shape)), offset=off).reshape(shape)
    for n in [1, 3, 7, 16, 33, 100, 1023]:
        for dt in ["float64", "float32", "int32", "bool"]:
            x = sg.Variable("x", (n,), dt)
            f = sg.compile({"a": x + x, "s": sg.sum(x), "r": x[::-1], "m": sg.max(x)})
            a = guarded((n,), dt)
            a[...] = np.arange(n) % 5
            want = sg.evaluate({"a": x + x, "s": sg.sum(x), "r": x[::-1], "m": sg.max(x)}, x=a)
            outs = {k: guarded(v.shape, v.dtype) for k, v in want.items()}
            got = f(x=a, out=outs)
            for k in want:
                assert np.array_equal(got[k], want[k]), (n, dt, k)
    print("ok")
""")


def test_guard_pages_catch_overruns():
    done = subprocess.run([sys.executable, "-c", GUARDED], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
