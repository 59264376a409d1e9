"""Compile time, end to end, of elementwise chains and random DAGs of growing size.

Variables declare shape and dtype, so ``compile()`` itself specializes, runs the passes,
lowers to LLVM and generates machine code; that call is what is timed. Graphs are built
in loops (no recursion), and every node feeds the next one so no pass can drop any.
"""
from __future__ import annotations

import random
import time

import numpy as np

from harness import fmt_time, table

import symgraph as sg

SHAPE = (1000,)
UNARY = (sg.tanh, sg.exp, sg.sqrt, sg.negative, sg.absolute, sg.sin)
BINARY = (lambda x, y: x + y, lambda x, y: x - y, lambda x, y: x * y, sg.maximum, sg.minimum)


def chain(n_ops):
    """x -> x*B + 1 -> tanh(x) - A -> ...: n_ops elementwise ops in one line of dependence."""
    A = sg.Variable("A", shape=SHAPE, dtype="float64")
    B = sg.Variable("B", shape=SHAPE, dtype="float64")
    x = A
    for i in range(n_ops // 2):
        x = x * B + 1.0 if i % 2 else sg.tanh(x) - A
    return x, [A, B]


def random_dag(n_ops, seed=0):
    """Each new node applies a random op to the previous node and, for binary ops, to a
    random earlier node: a DAG with long-range reuse whose every node stays live."""
    rng = random.Random(seed)
    variables = [sg.Variable(f"x{i}", shape=SHAPE, dtype="float64") for i in range(4)]
    pool = list(variables)
    for _ in range(n_ops):
        prev = pool[-1]
        if rng.random() < 0.3:
            node = rng.choice(UNARY)(prev)
        else:
            node = rng.choice(BINARY)(prev, pool[rng.randrange(len(pool))])
        pool.append(node)
    return pool[-1], variables


def _graph_nodes(expr, variables):
    return sg.frontend.to_graph([expr], variables).number_of_nodes()


def _one(kind, n_ops, samples=3):
    """Build and compile `samples` times (fresh graphs each time): the median compile time,
    and the first call of the last compiled function."""
    builder = chain if kind == "chain" else random_dag
    rec = {"kind": kind, "ops": n_ops}
    builds, compiles = [], []
    try:
        for _ in range(samples):
            t0 = time.perf_counter()
            expr, variables = builder(n_ops)
            builds.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            f = sg.compile(expr, inputs=variables)
            compiles.append(time.perf_counter() - t0)
        rec["build_s"], rec["compile_s"] = float(np.median(builds)), float(np.median(compiles))
        rec["compile_samples"] = compiles
        rec["nodes"] = _graph_nodes(expr, variables)
        rec["passes"] = [(r.name, r.nodes_before, r.nodes_after) for r in f.pass_log]
        rec["kernels"] = len({d["kernel"] for _, d in f.graph.nodes(data=True)
                              if d.get("kernel") is not None})
        rng = np.random.default_rng(0)
        arrays = [rng.uniform(0.5, 1.0, SHAPE) for _ in variables]
        t0 = time.perf_counter()
        f(*arrays)
        rec["first_call_s"] = time.perf_counter() - t0
    except Exception as exc:  # a failing size is a result too
        rec["error"] = f"{type(exc).__name__}: {str(exc)[:150]}"
        rec.setdefault("build_s", builds[0] if builds else None)
        rec.setdefault("nodes", "-")
    return rec


def run(quick=False):
    sizes = [100, 1_000] if quick else [100, 1_000, 10_000]
    records = [_one(kind, n, 1 if quick else 3) for n in sizes for kind in ("chain", "random DAG")]
    targets = []
    for n, limit in ((1_000, 0.5), (10_000, 5.0)):
        for r in records:
            if r["ops"] == n:
                t = r.get("compile_s")
                targets.append((f"compile {r['kind']} of {n} ops", f"< {limit} s",
                                None if t is None else t / limit, t is not None and t < limit))
    return {"records": records, "targets": targets, "skipped": [] if not quick else [10_000]}


def report(result) -> str:
    rows = []
    for r in result["records"]:
        rows.append([r["kind"], r["ops"], r["nodes"], fmt_time(r["build_s"]),
                     fmt_time(r.get("compile_s")) if "error" not in r else "FAILED",
                     r.get("kernels", "-"), fmt_time(r.get("first_call_s"))
                     if "error" not in r else r["error"][:70]])
    lines = [table(["graph", "ops", "graph nodes", "build (frontend)", "compile()",
                    "kernels", "first call"], rows)]
    lines.append("compile(): declared shapes, so specialization, passes, LLVM lowering and "
                 "machine code all happen inside it (disk cache off). Median of 3 "
                 "compilations per size (one with --quick); graphs of 800 nodes or more "
                 "compile their kernels on every core (runtime/worker.py).")
    lines.append("measured in the targets below is compile time / limit (below 1 passes).")
    if result["skipped"]:
        lines.append("--quick: skipped 10,000 ops.")
    return "\n".join(lines)
