"""The reference interpreter: runs a graph with each op's numpy reference.

It is the living specification: every compiled result is tested against it. It runs the
same typed graph codegen sees, so weak scalars, canonical attributes and dtype
conversions are exactly those of the compiled code.
"""
from __future__ import annotations

import numpy as np

from .graph import topo_order
from .infer import node_typing
from .ops import get_op


def run_graph(g, inputs: dict, keep: bool = False):
    """Values of the typed graph's outputs for {input name: array} (every node's, by key,
    with keep=True)."""
    values = {}
    for n in topo_order(g):
        d = g.nodes[n]
        op = d["op"]
        if op == "var":
            values[n] = np.asarray(inputs[d["attrs"]["name"]])
            continue
        if op in ("const", "scalar"):
            values[n] = np.asarray(d["attrs"]["value"])
            continue
        values[n] = evaluate_node(g, n, values)
    if keep:
        return values
    return [np.array(values[o], copy=True) for o in g.graph["outputs"]]


def evaluate_node(g, n, values):
    """One non-source node's value from its operands' values (constant folding uses it too)."""
    d = g.nodes[n]
    typing = node_typing(g, n)
    args = [values[a] for a in d["args"]]
    if typing.in_dtypes:
        args = [_convert(x, want) for x, want in zip(args, typing.in_dtypes)]
    with np.errstate(all="ignore"):
        result = get_op(d["op"]).reference(*args, **d["attrs"])
    if isinstance(result, tuple):  # a control node's results
        return result
    return np.asarray(result).astype(d["dtype"], copy=False)


def _convert(x, dtype):
    if dtype is None or x.dtype == dtype:
        return x
    with np.errstate(invalid="ignore", over="ignore"):
        return x.astype(dtype)


def evaluate(outputs, **inputs):
    """Run expression(s) with the reference interpreter (plain numpy): the oracle.

    >>> from symgraph import Variable
    >>> a = Variable("a")
    >>> evaluate(a * 2 + 1, a=np.arange(3))
    array([1, 3, 5])
    """
    from .runtime.compiled import OutputStructure, bind_signature, prepare_input
    from .frontend import find_variables, to_graph
    from .infer import specialize

    structure = OutputStructure.of((outputs,))
    variables = find_variables(structure.exprs)
    names = [v.attrs["name"] for v in variables]
    unknown = sorted(set(inputs) - set(names))
    missing = [n for n in names if n not in inputs]
    bind_signature(names, unknown, missing)
    arrays = {n: prepare_input(n, inputs[n]) for n in names}
    g = to_graph(structure.exprs, variables)
    g = specialize(g, {n: (a.shape, a.dtype) for n, a in arrays.items()})
    return structure.pack(run_graph(g, arrays))
