"""Shared helpers for pass tests: typed graphs, running one pass, bit-exact comparison."""
from __future__ import annotations

from collections import Counter

import numpy as np

from symgraph.frontend import find_variables, to_graph
from symgraph.graph import to_text
from symgraph.infer import specialize
from symgraph.interpret import run_graph
from symgraph.passes import PASSES
from symgraph.verify import verify_graph

FLOAT_EDGES = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0, -1.5, 5e-324, 1e308, -3.0])
INT32_EDGES = np.array([2**31 - 1, -(2**31), -1, 0, 1, 7, -7, 2, 3, 100], dtype=np.int32)


def typed(outputs, **inputs):
    """The specialized graph of `outputs` (one Expr or a list) for the given input arrays."""
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    variables = find_variables(outputs)
    g = to_graph(outputs, variables)
    arrays = {k: np.asarray(v) for k, v in inputs.items()}
    return specialize(g, {n: (a.shape, a.dtype) for n, a in arrays.items()}), arrays


def snapshot(g):
    return to_text(g), {n: dict(d) for n, d in g.nodes(data=True)}, dict(g.graph)


def run_pass(name, g):
    """Run one registered pass, checking it left its input alone and its output is valid."""
    before = snapshot(g)
    h, details = PASSES[name](g)
    assert snapshot(g)[0] == before[0], f"pass {name} mutated its input"
    assert {n: d["args"] for n, d in g.nodes(data=True)} == {n: d["args"] for n, d in before[1].items()}
    verify_graph(h, after=name)
    return h, details


def ops(g) -> Counter:
    return Counter(d["op"] for _, d in g.nodes(data=True))


def assert_bits_equal(got, want):
    """Same dtype, shape and bytes (so NaN, -0.0 and every payload must agree)."""
    for a, b in zip(got, want, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, a.shape, b.dtype, b.shape)
        assert a.tobytes() == b.tobytes(), f"{a!r} != {b!r}"


def assert_same_results(before, after, inputs):
    """interpreter(before) == interpreter(after), bit for bit."""
    assert_bits_equal(run_graph(after, inputs), run_graph(before, inputs))


def output_node(g, i=0):
    return g.nodes[g.graph["outputs"][i]]
