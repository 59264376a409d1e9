"""The graph IR: a networkx DiGraph with integer node keys.

Node attributes: op (str), args (tuple of node keys, in operand order; edges mirror them
for networkx's algorithms, since x*x has one edge but two operands), attrs (dict, never
mutated in place), shape (tuple), dtype (numpy dtype), loc (tuple of user source
locations: several when CSE merged nodes written at several places), name (or None).
Graph attributes: inputs (list of input names, call order), outputs (list of node keys,
repeats allowed), next_id (the next free node key).
"""
from __future__ import annotations

import heapq
import math

import networkx as nx
import numpy as np


def new_graph(inputs=()) -> nx.DiGraph:
    g = nx.DiGraph()
    g.graph.update(inputs=list(inputs), outputs=[], next_id=0)
    return g


def add_node(g, op, args=(), attrs=None, shape=None, dtype=None, loc=(), name=None) -> int:
    """Add a node and its operand edges; returns the new node key."""
    key = g.graph["next_id"]
    g.graph["next_id"] = key + 1
    g.add_node(key, op=op, args=tuple(args), attrs=dict(attrs or {}), shape=shape, dtype=dtype,
               loc=tuple(loc), name=name)
    for a in set(args):
        g.add_edge(a, key)
    return key


def copy_graph(g) -> nx.DiGraph:
    """A copy whose node attribute dicts can be changed without touching `g`.

    Built from networkx's adjacency dicts directly: every pass copies its input, and
    DiGraph.copy() (one add_edge per edge) dominated compile time on large graphs.
    """
    h = nx.DiGraph()
    h.graph.update(g.graph, inputs=list(g.graph["inputs"]), outputs=list(g.graph["outputs"]))
    h._node.update((n, dict(d)) for n, d in g._node.items())
    h._succ.update((n, {v: {} for v in nbrs}) for n, nbrs in g._succ.items())
    h._pred.update((n, {u: h._succ[u][n] for u in nbrs}) for n, nbrs in g._pred.items())
    return h


def topo_order(g) -> list:
    """Deterministic topological order: among ready nodes, the smallest key first.

    Keys are handed out as nodes are created, so usually every operand has a smaller key
    than its user and the order is simply by key: checked in one pass over the edges.
    """
    if all(u < v for u, v in g.edges):
        return sorted(g.nodes)
    pending = {n: len(preds) for n, preds in g._pred.items()}
    ready = [n for n, count in pending.items() if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        n = heapq.heappop(ready)
        order.append(n)
        for user in g._succ[n]:
            pending[user] -= 1
            if pending[user] == 0:
                heapq.heappush(ready, user)
    if len(order) != len(pending):
        raise nx.NetworkXUnfeasible("graph contains a cycle")
    return order


def set_args(g, node, new_args) -> None:
    """Replace a node's operands, keeping the edges in step."""
    old = g.nodes[node]["args"]
    for a in set(old) - set(new_args):
        g.remove_edge(a, node)
    for a in set(new_args):
        g.add_edge(a, node)
    g.nodes[node]["args"] = tuple(new_args)


def replace_uses(g, old, new) -> None:
    """Make every user of `old` (and the outputs) use `new` instead."""
    for user in list(g.successors(old)):
        set_args(g, user, tuple(new if a == old else a for a in g.nodes[user]["args"]))
    g.graph["outputs"] = [new if o == old else o for o in g.graph["outputs"]]


def remove_dead(g) -> int:
    """Remove nodes no output depends on (inputs stay: they are the call signature)."""
    live = set(g.graph["outputs"])
    for o in g.graph["outputs"]:
        live |= nx.ancestors(g, o)
    dead = [n for n in g.nodes if n not in live and g.nodes[n]["op"] != "var"]
    g.remove_nodes_from(dead)
    return len(dead)


def nbytes(node_data) -> int:
    shape, dtype = node_data["shape"], node_data["dtype"]
    return math.prod(shape) * np.dtype(dtype).itemsize


def type_str(data) -> str:
    dtype = data.get("dtype")
    shape = data.get("shape")
    if isinstance(dtype, tuple):  # a control node's results
        return "(" + ", ".join(type_str({"dtype": d, "shape": s}) for d, s in zip(dtype, shape)) + ")"
    if dtype is None:
        return "?"
    dims = "?" if shape is None else ",".join(str(d) for d in shape)
    return f"{dtype}[{dims}]"


def _attr_str(op, attrs) -> str:
    parts = []
    for key in sorted(attrs):
        value = attrs[key]
        if key == "value" and isinstance(value, np.ndarray):
            text = np.array2string(value, threshold=6, separator=",").replace("\n", "")
            parts.append(text)
        elif key == "name":
            parts.append(repr(value))
        elif (key in ("shape", "dtype") and op == "var") or key in ("bodies", "init_loc"):
            continue
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def to_text(g, *, annotations=("kernel", "buffer"), indent="") -> str:
    """A stable, human-readable listing: one line per node in topological order."""
    lines = []
    ins = ", ".join(g.graph["inputs"])
    outs = ", ".join(f"%{o}" for o in g.graph["outputs"])
    lines.append(f"graph({ins}) -> ({outs})")
    for n in topo_order(g):
        d = g.nodes[n]
        operands = ", ".join(f"%{a}" for a in d["args"])
        attrs = _attr_str(d["op"], d["attrs"])
        body = " ".join(p for p in (d["op"], operands, attrs) if p)
        line = f"  %{n} = {body} : {type_str(d)}"
        notes = [f"{k}={d[k]}" for k in annotations if d.get(k) is not None]
        if d.get("name"):
            notes.insert(0, f"name={d['name']}")
        if notes:
            line += "  [" + " ".join(notes) + "]"
        if d["loc"]:
            line += "  # " + "; ".join(str(loc) for loc in d["loc"])
        lines.append(line)
        for i, body in enumerate(d["attrs"].get("bodies", ())):
            if isinstance(body, nx.DiGraph):
                lines.append(f"    body {i}:")
                lines.append(to_text(body, annotations=annotations, indent="    "))
    return "\n".join(indent + line for line in lines)
