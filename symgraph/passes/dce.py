"""dce: remove nodes no output depends on (inputs stay: they are the call signature)."""
from __future__ import annotations

from ..graph import copy_graph


def live_nodes(g) -> set:
    """Every node some output depends on: one backward walk from all outputs at once."""
    live = set(g.graph["outputs"])
    stack = list(live)
    while stack:
        for a in g.nodes[stack.pop()]["args"]:
            if a not in live:
                live.add(a)
                stack.append(a)
    return live


def dce(g):
    """Drop dead nodes; reports how many were removed."""
    g = copy_graph(g)
    live = live_nodes(g)
    dead = [n for n, d in g.nodes(data=True) if n not in live and d["op"] != "var"]
    g.remove_nodes_from(dead)
    return g, {"removed": len(dead)}
