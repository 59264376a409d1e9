"""256x256 float32 matmul: where the foundation's plain loop nest stands against BLAS."""
from __future__ import annotations

import numpy as np

from harness import fmt_ratio, fmt_time, measure, table

import symgraph as sg

N = 256


def run(quick=False):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((N, N)).astype(np.float32)
    b = rng.standard_normal((N, N)).astype(np.float32)
    times, error = {}, None
    try:
        A = sg.Variable("A", shape=(N, N), dtype="float32")
        B = sg.Variable("B", shape=(N, N), dtype="float32")
        f = sg.compile(A @ B)
        err = float(np.max(np.abs(f(A=a, B=b) - a @ b)))
        times["symgraph"] = measure(lambda: f(A=a, B=b), repeat=5 if quick else 9).median
    except Exception as exc:
        error, err = f"{type(exc).__name__}: {exc}"[:150], None
    times["numpy"] = measure(lambda: a @ b, repeat=5 if quick else 9).median
    return {"n": N, "times": times, "error": error, "max_abs_err": err,
            "flops": 2 * N ** 3}


def report(result) -> str:
    t, flops = result["times"], result["flops"]
    sg_t = t.get("symgraph")
    rows = []
    for name in ("symgraph", "numpy"):
        if name in t:
            rows.append([name, fmt_time(t[name]), f"{flops / t[name] / 1e9:.1f}",
                         fmt_ratio(t[name] / sg_t) if sg_t else "n/a"])
        else:
            rows.append([name, "FAILED: " + (result["error"] or "")[:60], "", ""])
    lines = [f"{result['n']}x{result['n']} @ {result['n']}x{result['n']} float32 "
             f"(numpy uses its BLAS)",
             table(["engine", "median", "GFLOP/s", "X/symgraph (speedup of symgraph)"], rows)]
    if result["max_abs_err"] is not None:
        lines.append(f"max |symgraph - numpy| = {result['max_abs_err']:.2e}")
    return "\n".join(lines)
