"""Graph invariants, checked after every pass in tests (SYMGRAPH_VERIFY=1)."""
from __future__ import annotations

import networkx as nx

from .errors import GraphError
from .ops import REGISTRY


def verify_graph(g, after: str = "") -> None:
    """Raise GraphError if `g` breaks an invariant the passes and codegen rely on."""
    where = f" after pass {after!r}" if after else ""
    if not nx.is_directed_acyclic_graph(g):
        raise GraphError(f"graph has a cycle{where}")
    for n, d in g.nodes(data=True):
        if d.get("op") not in REGISTRY:
            raise GraphError(f"node %{n} has unknown op {d.get('op')!r}{where}")
        op = REGISTRY[d["op"]]
        if op.arity is not None and len(d["args"]) != op.arity:
            raise GraphError(f"node %{n} ({d['op']}) has {len(d['args'])} operands, wants {op.arity}{where}")
        if set(g.predecessors(n)) != set(d["args"]):
            raise GraphError(f"node %{n}: edges disagree with its operands{where}")
    for o in g.graph["outputs"]:
        if o not in g:
            raise GraphError(f"output %{o} is not in the graph{where}")
    kernels = {n: d.get("kernel") for n, d in g.nodes(data=True)}
    if any(k is not None for k in kernels.values()):
        for n, d in g.nodes(data=True):
            for a in d["args"]:
                ka, kn = kernels[a], kernels[n]
                if ka is not None and kn is not None and ka > kn:
                    raise GraphError(f"kernel order: %{a} (kernel {ka}) feeds %{n} (kernel {kn}){where}")
