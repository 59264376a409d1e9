"""The pass pipeline: named, pure Graph -> Graph functions run as a plain list.

Each pass returns the new graph and a dict of what it did; the pass manager records a
`PassRecord` per pass (the compiled function's ``pass_log``). Passes that code generation
cannot do without ("fuse" or its baseline "schedule", "memory" or "allocate") always run:
disabling an optimizing pass swaps in its baseline.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import GraphError, SymgraphError
from .cse import cse
from .dce import dce
from .fold import fold
from .fuse import fuse, schedule
from .memory import allocate, memory
from .simplify import simplify

PASSES = {
    "fold": fold,
    "cse": cse,
    "simplify": simplify,
    "dce": dce,
    "fuse": fuse,
    "schedule": schedule,
    "memory": memory,
    "allocate": allocate,
}

# Optimizing passes in order; None marks a required step with its baseline.
OPTIMIZING = ["fold", "cse", "simplify", "dce", "fuse", "memory"]
BASELINE = {"fuse": "schedule", "memory": "allocate"}


@dataclass
class PassRecord:
    """What one pass did: node counts before and after, and its own details."""

    name: str
    nodes_before: int
    nodes_after: int
    details: dict = field(default_factory=dict)


def map_bodies(g, fn):
    """Apply `fn` to the bodies of every control node (passes see through control flow)."""
    from ..graph import copy_graph
    from ..ops import get_op

    controls = [n for n in g.nodes if get_op(g.nodes[n]["op"]).kind == "control"]
    if not controls:
        return g
    g = copy_graph(g)
    for n in controls:
        attrs = dict(g.nodes[n]["attrs"])
        attrs["bodies"] = tuple(fn(body) for body in attrs["bodies"])
        g.nodes[n]["attrs"] = attrs
    return g


def apply_pass(name, g):
    """Run pass `name` on the bodies of control nodes (recursively), then on `g` itself."""
    g = map_bodies(g, lambda body: apply_pass(name, body)[0])
    return PASSES[name](g)


def register_pass(name, fn):
    PASSES[name] = fn


def pipeline(opt_level: int = 2, disable=()) -> list:
    """The pass names that run for `opt_level` with the `disable`d ones switched off."""
    unknown = [d for d in disable if d not in OPTIMIZING]
    if unknown:
        raise GraphError(f"unknown pass name(s) {unknown} in disable=; passes: {OPTIMIZING}")
    names = []
    for name in OPTIMIZING:
        if name not in PASSES:
            continue
        if opt_level == 0 or name in disable:
            if name in BASELINE:
                names.append(BASELINE[name])
            continue
        names.append(name)
    return names


def run_passes(g, names, *, verify=False, on_stage=None):
    """Run the named passes in order; returns the final graph and the pass log."""
    from ..verify import verify_graph

    log = []
    for name in names:
        before = g.number_of_nodes()
        try:
            g, details = apply_pass(name, g)
            if verify:
                verify_graph(g, after=name)
        except SymgraphError as exc:
            raise exc.with_context(f"during pass {name!r}")
        log.append(PassRecord(name, before, g.number_of_nodes(), details))
        if on_stage is not None:
            on_stage(name, g)
    return g, log


VERIFY_DEFAULT = os.environ.get("SYMGRAPH_VERIFY", "") not in ("", "0")
