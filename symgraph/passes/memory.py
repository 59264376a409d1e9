"""memory: place every intermediate buffer in one workspace, reusing dead buffers' space.

Materialized intermediates (kernel roots that are neither inputs, constants nor outputs)
live from the kernel that writes them to the last kernel that reads them. A linear scan
over kernels in execution order hands out workspace offsets, taking freed space first
(best fit), so peak memory follows what is live at once rather than the sum of all.
A buffer is never shared with anything live during the kernel that writes it.
"""
from __future__ import annotations

import heapq

from ..graph import copy_graph, nbytes
from ..shapes import Sym

ALIGN = 64


def materialized_intermediates(g) -> list:
    """Nodes whose values live in the workspace, in execution order."""
    outputs = set(g.graph["outputs"])
    found = []
    for n in g.nodes:
        d = g.nodes[n]
        if d.get("kernel") is None or n in outputs:
            continue
        if any(g.nodes[u]["kernel"] != d["kernel"] for u in g.successors(n)) or not any(
                True for _ in g.successors(n)):
            found.append(n)
    return sorted(found, key=lambda n: (g.nodes[n]["kernel"], n))


def _reader_kernels(g, n, outputs, last):
    """Kernels that read n's buffer; a control node's results are read through its items."""
    for u in g.successors(n):
        if g.nodes[u]["op"] == "item":
            if u in outputs:
                yield last  # copied into the caller's output after the last kernel
            yield from _reader_kernels(g, u, outputs, last)
        elif g.nodes[u]["kernel"] is not None:
            yield g.nodes[u]["kernel"]


def live_ranges(g, nodes) -> dict:
    """node -> (first kernel, last kernel) during which its buffer must hold its value."""
    outputs = set(g.graph["outputs"])
    last = g.graph.get("num_kernels", 0)
    ranges = {}
    for n in nodes:
        start = g.nodes[n]["kernel"]
        end = max(_reader_kernels(g, n, outputs, last), default=start)
        ranges[n] = (start, end)
    return ranges


def buffer_bytes(g, n) -> int:
    if isinstance(g.nodes[n]["dtype"], tuple):  # a control node: results, state, bodies' space
        from ..ops.control import control_layout

        return control_layout(g, n)["total"]
    return nbytes(g.nodes[n])


def _aligned(size) -> int:
    return (max(size, 1) + ALIGN - 1) // ALIGN * ALIGN


def plan(g, *, reuse: bool):
    g = copy_graph(g)
    nodes = materialized_intermediates(g)
    ranges = live_ranges(g, nodes)
    needed = {n: buffer_bytes(g, n) for n in nodes}
    if any(isinstance(b, Sym) for b in needed.values()):
        # Symbolic sizes (one compilation for all sizes): each region reserves ALIGN bytes
        # more than it needs, so code can round its start up to ALIGN at run time.
        sizes = {n: b + ALIGN for n, b in needed.items()}
        top, offsets = _place_same_size(nodes, ranges, sizes, reuse)
    else:
        sizes = {n: _aligned(b) for n, b in needed.items()}
        top, offsets = _place_best_fit(nodes, ranges, sizes, reuse)
    buffers = {}  # offset -> buffer number, for reporting
    for n in nodes:
        g.nodes[n]["offset"] = offsets[n]
        g.nodes[n]["buffer"] = buffers.setdefault(offsets[n], len(buffers))
    no_reuse = sum(sizes.values(), 0)
    g.graph["workspace_bytes"] = top
    g.graph["memory_plan"] = {"peak_bytes": top, "no_reuse_bytes": no_reuse,
                              "num_buffers": len(buffers), "intermediates": len(nodes)}
    return g, {"bytes_saved": no_reuse - top, "buffers": len(buffers)}


def _place_best_fit(nodes, ranges, sizes, reuse):
    """(workspace size, {node: offset}): freed space is taken again, best fit first."""
    # free: [(offset, size)]; active: a heap of (last reader, offset, size), so each kernel
    # releases what died before it without rescanning everything still live.
    free, active, top, offsets = [], [], 0, {}
    for n in nodes:
        start, end = ranges[n]
        size = sizes[n]
        if reuse:
            # Space whose last reader ran before this kernel can be taken again.
            while active and active[0][0] < start:
                _, offset, length = heapq.heappop(active)
                free.append((offset, length))
            if free:
                free = _coalesce(free)
        slot = None
        if reuse:
            fits = [f for f in free if f[1] >= size]
            if fits:
                slot = min(fits, key=lambda f: (f[1], f[0]))
                free.remove(slot)
                if slot[1] > size:
                    free.append((slot[0] + size, slot[1] - size))
                slot = (slot[0], size)
        if slot is None:
            slot = (top, size)
            top += size
        heapq.heappush(active, (end, slot[0], slot[1]))
        offsets[n] = slot[0]
    return top, offsets


def _place_same_size(nodes, ranges, sizes, reuse):
    """(workspace size, {node: offset}) when sizes are polynomials in the size symbols:
    a dead region is reused only by a buffer of the very same size (sizes whose order
    depends on the symbols cannot be compared)."""
    free, active, top, offsets = {}, [], 0, {}
    for seq, n in enumerate(nodes):
        start, end = ranges[n]
        size = sizes[n]
        if reuse:
            while active and active[0][0] < start:
                _, _, offset, length = heapq.heappop(active)
                free.setdefault(length, []).append(offset)
        slots = free.get(size) if reuse else None
        if slots:
            offset = slots.pop()
        else:
            offset, top = top, top + size
        heapq.heappush(active, (end, seq, offset, size))
        offsets[n] = offset
    return top, offsets


def _coalesce(free):
    merged = []
    for off, size in sorted(free):
        if merged and merged[-1][0] + merged[-1][1] == off:
            merged[-1] = (merged[-1][0], merged[-1][1] + size)
        else:
            merged.append((off, size))
    return merged


def memory(g):
    """Assign workspace offsets with liveness-based reuse."""
    return plan(g, reuse=True)


def allocate(g):
    """Give every intermediate its own workspace region (no reuse: the baseline)."""
    return plan(g, reuse=False)
