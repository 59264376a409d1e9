"""cse: merge nodes that compute the same value, in one hash-based pass in topological order.

Two nodes merge when op, canonical attributes, dtype, shape and operands agree; constants
compare by dtype, shape and bytes, so 0.0 and -0.0 (or float32 and float64 ones) stay
apart. A merged node keeps every source location written for it, and a name if any had one.
"""
from __future__ import annotations

from ..graph import copy_graph, replace_uses, topo_order
from ..ops import get_op
from ..ops.registry import attr_key

# Commutative ops whose operands can swap without changing a single bit: maximum and
# minimum return their second operand on ties, so max(0.0, -0.0) and max(-0.0, 0.0) differ.
SWAPPABLE = frozenset({"add", "mul", "eq", "ne", "and", "or", "xor"})
NEVER_MERGE = ("var", "scalar")


def node_key(d):
    """What makes two nodes interchangeable, or None when one must never be merged."""
    op = get_op(d["op"])
    if d["op"] in NEVER_MERGE or op.kind in ("control", "item"):
        return None
    args = d["args"]
    if op.commutative and d["op"] in SWAPPABLE and len(args) == 2:
        args = tuple(sorted(args))
    key = (d["op"], attr_key(d["attrs"]), d["dtype"], tuple(d["shape"]), args)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def merge_into(g, keep, gone) -> None:
    """Move every use, location and name of node `gone` onto `keep`, then drop `gone`."""
    kd, gd = g.nodes[keep], g.nodes[gone]
    kd["loc"] = tuple(dict.fromkeys(kd["loc"] + gd["loc"]))
    if not kd.get("name") and gd.get("name"):
        kd["name"] = gd["name"]
    replace_uses(g, gone, keep)
    g.remove_node(gone)


def cse(g):
    """Merge structurally equal nodes (commutative operands in either order)."""
    g = copy_graph(g)
    seen, merged = {}, 0
    for n in topo_order(g):
        key = node_key(g.nodes[n])
        if key is None:
            continue
        keep = seen.setdefault(key, n)
        if keep != n:
            merge_into(g, keep, n)
            merged += 1
    return g, {"merged": merged}
