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


def _invariant_operands(d) -> list:
    """(operand index, body input index) pairs whose value a control node's bodies see
    unchanged on every run: a cond's operands, a loop's captured values."""
    args, attrs = d["args"], d["attrs"]
    if d["op"] == "cond":
        return [(i, i - 1) for i in range(1, len(args))]
    if d["op"] == "while":
        return [(i, i) for i in range(attrs["num_carried"], len(args))]
    if d["op"] == "scan":
        return [(i, i) for i in range(attrs["num_carried"] + attrs["num_xs"], len(args))]
    return []


def fold_into_bodies(g, n) -> int:
    """Turn a control node's constant, invariant operands into constants inside its bodies,
    then fold the bodies again, so constants propagate into branches and loops."""
    d = g.nodes[n]
    consts = {j: g.nodes[d["args"][i]]["attrs"]["value"] for i, j in _invariant_operands(d)
              if g.nodes[d["args"][i]]["op"] == "const"}
    if not consts:
        return 0
    bodies = []
    for body in d["attrs"]["bodies"]:
        body = copy_graph(body)
        var_of = {body.nodes[v]["attrs"]["name"]: v for v in body.nodes if body.nodes[v]["op"] == "var"}
        for j, value in consts.items():
            v = var_of.get(body.graph["inputs"][j])
            if v is not None:
                body.nodes[v].update(op="const", attrs={"value": value})
        bodies.append(fold(body)[0])
    d["attrs"] = dict(d["attrs"], bodies=tuple(bodies))
    return len(consts)


def fold(g):
    """Replace every node computed only from constants by its constant value."""
    g = copy_graph(g)
    folded = 0
    for n in topo_order(g):
        if get_op(g.nodes[n]["op"]).kind == "control":
            folded += fold_into_bodies(g, n)
            continue
        value = fold_node(g, n)
        if value is None:
            continue
        set_args(g, n, ())
        g.nodes[n].update(op="const", attrs={"value": value})
        folded += 1
    return g, {"folded": folded}
