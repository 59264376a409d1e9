"""fold: evaluate subgraphs whose operands are all constants into one constant.

Folding runs each op's numpy reference exactly as the interpreter does (same operand
conversions, same dtype), so it never changes a result: NaN, inf and -0.0 survive, integer
overflow wraps. Ops whose reference raises (int ** negative int) stay in the graph so the
error still happens at run time, and results above `MAX_FOLD_BYTES` stay unfolded so a
small constant is not blown up into a large embedded array.
"""
from __future__ import annotations

import numpy as np

from ..graph import copy_graph, nbytes, set_args, topo_order
from ..interpret import evaluate_node
from ..ops import get_op

MAX_FOLD_BYTES = 1 << 20
FOLDABLE = ("elementwise", "reduce", "movement", "matmul", "concat")


def fold_node(g, n):
    """The constant value of node `n` (all operands constant), or None if it must stay."""
    d = g.nodes[n]
    if get_op(d["op"]).kind not in FOLDABLE or not d["args"]:
        return None
    if any(g.nodes[a]["op"] != "const" for a in d["args"]):
        return None
    if nbytes(d) > MAX_FOLD_BYTES:
        return None
    values = {a: g.nodes[a]["attrs"]["value"] for a in d["args"]}
    try:
        value = evaluate_node(g, n, values)
    except (ArithmeticError, ValueError, TypeError, IndexError):
        return None  # the reference raises: leave it for run time
    value = np.array(value, dtype=d["dtype"], order="C", copy=True)
    if value.shape != tuple(d["shape"]):
        return None
    value.flags.writeable = False
    return value


def fold(g):
    """Replace every node computed only from constants by its constant value."""
    g = copy_graph(g)
    folded = 0
    for n in topo_order(g):
        value = fold_node(g, n)
        if value is None:
            continue
        set_args(g, n, ())
        g.nodes[n].update(op="const", attrs={"value": value})
        folded += 1
    return g, {"folded": folded}
