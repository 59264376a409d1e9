"""A fused reduction, sum((a - b)**2) over 1e7 float64, against numpy and the peers."""
from __future__ import annotations

import numpy as np

import peers
from harness import fmt_ratio, fmt_time, measure, table

EXPR = "sum((a - b)**2)"
N = 10_000_000


def run(quick=False):
    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal(N), "b": rng.standard_normal(N)}
    engines = {"numpy": peers.numpy_fresh(EXPR, arrays),
               "numexpr": peers.numexpr_fn(EXPR, arrays),
               "numba": peers.numba_fn(EXPR, arrays, reduce=True)}
    times, errors, values = {}, {}, {}
    try:
        f = peers.symgraph_fn(EXPR, arrays)
        engines = {"symgraph": lambda: f(**arrays), **engines}
    except Exception as exc:
        errors["symgraph"] = f"{type(exc).__name__}: {exc}"[:150]
    for name, fn in engines.items():
        if fn is None:
            continue
        try:
            values[name] = float(fn())
            times[name] = measure(fn, repeat=5 if quick else 9, warmup=2).median
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"[:150]
    ref = values.get("numpy")
    rel = {k: abs(v - ref) / abs(ref) for k, v in values.items()} if ref else {}
    return {"expr": EXPR, "n": N, "times": times, "errors": errors, "rel_err_vs_numpy": rel,
            "bytes": 2 * 8 * N}


def report(result) -> str:
    t = result["times"]
    sg_t = t.get("symgraph")
    rows = []
    for name in ("symgraph", "numpy", "numexpr", "numba"):
        if name in result["errors"]:
            rows.append([name, "FAILED: " + result["errors"][name][:60], "", ""])
        elif name in t:
            rows.append([name, fmt_time(t[name]),
                         fmt_ratio(t[name] / sg_t) if sg_t else "n/a",
                         f"{result['rel_err_vs_numpy'].get(name, 0):.1e}"])
        else:
            rows.append([name, "n/a", "n/a", "n/a"])
    lines = [f"{result['expr']}, n={result['n']:.0e} float64 (16 bytes read per element)",
             table(["engine", "median", "X/symgraph (speedup of symgraph)",
                    "rel. diff vs numpy"], rows)]
    return "\n".join(lines)
