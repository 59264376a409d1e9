"""The compile worker: modules compiled out of process give the same code, the process that
compiles stays flat in memory, and a failing worker falls back to compiling in process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np

import symgraph as sg
from symgraph.runtime import worker


def _run(script, **env):
    full = dict(os.environ, SYMGRAPH_CACHE="0", **env)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=full,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


SAME_CODE = """
    import numpy as np, symgraph as sg
    x = sg.Variable("x", (257,), "float32")
    w = sg.Variable("w", (16, 8), "float64")
    f = sg.compile([sg.tanh(x) * sg.exp(-x) + sg.sqrt(abs(x)), sg.sum(x * x)])
    g = sg.compile(sg.relu(sg.Variable("a", (16, 16), "float64") @ w + 1.0))
    data = np.linspace(-3, 3, 257, dtype="float32")
    a, w_ = np.linspace(-1, 1, 256).reshape(16, 16), np.linspace(0, 1, 128).reshape(16, 8)
    print(*(v.tobytes().hex() for v in f(data)), g(a=a, w=w_).tobytes().hex())
"""


def test_worker_code_is_bit_identical():
    assert _run(SAME_CODE, SYMGRAPH_COMPILE_WORKER="1") == _run(
        SAME_CODE, SYMGRAPH_COMPILE_WORKER="0")


def test_compiling_without_end_stays_flat():
    out = _run("""
        import gc, numpy as np, symgraph as sg
        from symgraph.runtime import worker
        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096 / 2**20
        x = sg.Variable("x", (64,), "float64")
        marks = []
        for i in range(1, 401):
            f = sg.compile(sg.tanh(x * (1.0 + i / 1000)) + x)
            f(np.ones(64))
            del f
            if i in (150, 400):
                gc.collect()
                marks.append(rss())
        print(marks[1] - marks[0], worker.worker_pid() > 0)
    """, SYMGRAPH_COMPILE_WORKER="auto")
    growth, running = float(out[0]), out[1]
    assert running == "True"
    assert growth < 4.0, f"RSS grew {growth:.1f} MiB over 250 compilations"


def test_a_dead_worker_falls_back_to_compiling_here(monkeypatch):
    monkeypatch.setenv("SYMGRAPH_COMPILE_WORKER", "1")
    monkeypatch.setenv("SYMGRAPH_CACHE", "0")
    x = sg.Variable("x", (8,), "float64")
    f = sg.compile(sg.exp(x) + 1)
    pid = worker.worker_pid()
    assert pid
    os.kill(pid, signal.SIGKILL)
    g = sg.compile(sg.exp(x) + 2)  # the worker is gone: this one restarts or compiles here
    data = np.arange(8.0)
    np.testing.assert_array_equal(g(data) - f(data), np.ones(8))
    monkeypatch.setenv("SYMGRAPH_COMPILE_WORKER", "0")
    h = sg.compile(sg.exp(x) + 3)
    np.testing.assert_array_equal(h(data) - f(data), 2 * np.ones(8))
