"""Control flow: cond and while, whose operands flow into traced bodies, and item.

A control node computes a tuple: its `shape` and `dtype` are tuples with one entry per
result, and `item` nodes pick results out. Before specialization the bodies are `Body`
objects (traced Exprs); specialization replaces them with typed graphs, so passes and
codegen see through control flow by recursing into `attrs["bodies"]`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import dtypes as dt
from ..errors import ExecutionError, ShapeError, SymgraphError
from ..shapes import Sym
from .registry import Op, Typing, register

ERR_MAX_ITERS = 3


@dataclass(eq=False)
class Body:
    """A traced function: parameter Variables, result Exprs, and where it was written."""

    params: list  # Exprs standing for the body's inputs: parameters, then captured values
    outputs: list
    names: list  # graph input names, one per param
    loc: object = None
    structure: str = "tuple"  # how the user's function returned its results: single|tuple|list


def _strong(d):
    return dt.default_dtype(d) if isinstance(d, type) else np.dtype(d)


def body_types(body_graph):
    return [(body_graph.nodes[o]["shape"], body_graph.nodes[o]["dtype"])
            for o in body_graph.graph["outputs"]]


def _specialize_body(body, types, what):
    from ..frontend import to_graph
    from ..infer import specialize

    if isinstance(body, Body):
        g = to_graph(body.outputs, body.params, names=body.names)
        g.graph["loc"] = body.loc
    else:
        g = body
    try:
        return specialize(g, dict(zip(g.graph["inputs"], types)))
    except SymgraphError as exc:
        raise exc.with_context(f"in the {what}").with_traceback(None) from None


def _loc_of(body):
    return body.loc if isinstance(body, Body) else body.graph.get("loc")


def _types_str(types):
    return ", ".join(f"{d}[{','.join(map(str, s))}]" for s, d in types)


def _cond_infer(in_types, attrs):
    (pred_shape, pred_dtype), *operands = in_types
    if tuple(pred_shape) != ():
        raise ShapeError(f"cond needs a 0-d predicate, got shape {tuple(pred_shape)}",
                         hint="reduce it first (for example with .any() logic via max) or use where")
    types = [(tuple(s), _strong(d)) for s, d in operands]
    true_body, false_body = attrs["bodies"]
    graphs = (_specialize_body(true_body, types, "true branch"),
              _specialize_body(false_body, types, "false branch"))
    t, f = body_types(graphs[0]), body_types(graphs[1])
    if t != f:
        raise ShapeError(
            f"cond branches return different types: true gives ({_types_str(t)}), false gives "
            f"({_types_str(f)})", locs=(_loc_of(true_body), _loc_of(false_body)),
            hint="both branches must return the same number of arrays with equal shapes and dtypes")
    canonical = dict(attrs, bodies=graphs)
    return Typing(tuple(s for s, _ in t), tuple(d for _, d in t),
                  (np.dtype(bool),) + tuple(d for _, d in types), canonical)


def _while_infer(in_types, attrs):
    types = [(tuple(s), _strong(d)) for s, d in in_types]
    n = attrs["num_carried"]
    carried = types[:n]
    cond_body, loop_body = attrs["bodies"]
    cond_g = _specialize_body(cond_body, types, "loop condition")
    body_g = _specialize_body(loop_body, types, "loop body")
    cond_out = body_types(cond_g)
    if len(cond_out) != 1 or tuple(cond_out[0][0]) != ():
        raise ShapeError(f"while_loop condition must return one 0-d value, got ({_types_str(cond_out)})",
                         locs=(_loc_of(cond_body),))
    out = body_types(body_g)
    if [(tuple(s), d) for s, d in out] != carried:
        raise ShapeError(
            f"while_loop body returns ({_types_str(out)}) but the loop variables are "
            f"({_types_str(carried)}): loop variables must keep their shapes and dtypes",
            locs=(_loc_of(loop_body), attrs.get("init_loc")),
            hint="cast the body's results with .astype, or start from values of the final type")
    canonical = dict(attrs, bodies=(cond_g, body_g))
    return Typing(tuple(s for s, _ in carried), tuple(d for _, d in carried),
                  tuple(d for _, d in types), canonical)


def _run_body(g, values):
    from ..interpret import run_graph

    return run_graph(g, dict(zip(g.graph["inputs"], values)))


def _cond_reference(pred, *operands, bodies, **attrs):
    return tuple(_run_body(bodies[0] if bool(pred) else bodies[1], operands))


def _while_reference(*operands, bodies, num_carried, max_iters=None, **attrs):
    carried, captured = list(operands[:num_carried]), list(operands[num_carried:])
    cond_g, body_g = bodies
    steps = 0
    while bool(_run_body(cond_g, carried + captured)[0]):
        if max_iters is not None and steps >= max_iters:
            raise ExecutionError(f"while_loop reached max_iters={max_iters}")
        carried = _run_body(body_g, carried + captured)
        steps += 1
    return tuple(np.array(c, copy=True) for c in carried)


def _scan_infer(in_types, attrs):
    types = [(tuple(s), _strong(d)) for s, d in in_types]
    n_carry, n_xs = attrs["num_carried"], attrs["num_xs"]
    carry, xs, captured = types[:n_carry], types[n_carry:n_carry + n_xs], types[n_carry + n_xs:]
    lengths = {s[0] if s else None for s, _ in xs}
    if None in lengths or len(lengths) != 1:
        shown = _types_str(xs)
        raise ShapeError(f"scan needs inputs with one common leading axis, got ({shown})",
                         locs=(attrs.get("init_loc"),))
    (length,) = lengths
    rows = [(s[1:], d) for s, d in xs]
    (body,) = attrs["bodies"]
    body_g = _specialize_body(body, carry + rows + captured, "scan body")
    out = body_types(body_g)
    got_carry = [(tuple(s), d) for s, d in out[:n_carry]]
    if got_carry != carry:
        raise ShapeError(
            f"scan body returns carry ({_types_str(got_carry)}) but the initial carry is "
            f"({_types_str(carry)}): the carry must keep its shapes and dtypes",
            locs=(_loc_of(body), attrs.get("init_loc")))
    ys = [((length,) + tuple(s), d) for s, d in out[n_carry:]]
    results = carry + ys
    return Typing(tuple(s for s, _ in results), tuple(d for _, d in results),
                  tuple(d for _, d in types), dict(attrs, bodies=(body_g,)))


def _scan_reference(*operands, bodies, num_carried, num_xs, **attrs):
    carry = list(operands[:num_carried])
    xs = operands[num_carried:num_carried + num_xs]
    captured = list(operands[num_carried + num_xs:])
    (body_g,) = bodies
    ys = []
    for i in range(len(xs[0])):
        out = _run_body(body_g, carry + [x[i] for x in xs] + captured)
        carry, y = out[:num_carried], out[num_carried:]
        ys.append(y)
    n_y = len(body_types(body_g)) - num_carried
    stacked = []
    for k in range(n_y):
        shape, dtype = body_types(body_g)[num_carried + k]
        stacked.append(np.stack([y[k] for y in ys]) if ys else np.empty((0,) + tuple(shape), dtype))
    return tuple(np.array(c, copy=True) for c in carry) + tuple(stacked)


def _item_infer(in_types, attrs):
    ((shapes, dtypes),) = in_types
    k = attrs["index"]
    return Typing(tuple(shapes[k]), np.dtype(dtypes[k]))


def _cond_grad(cts, out, *args, **attrs):
    from ..autodiff import cond_grad

    return cond_grad(cts, out, *args, **attrs)


register(Op("cond", "control", _cond_infer, _cond_reference, arity=None, grad=_cond_grad,
            doc="Run one of two bodies on the operands, chosen by a 0-d predicate."))
def _while_grad(cts, out, *args, **attrs):
    from ..autodiff import while_grad

    return while_grad(cts, out, *args, **attrs)


register(Op("while", "control", _while_infer, _while_reference, arity=None, grad=_while_grad,
            doc="Repeat the body on the carried values while the condition body returns true."))
def _scan_grad(cts, out, *args, **attrs):
    from ..autodiff import scan_grad

    return scan_grad(cts, out, *args, **attrs)


register(Op("scan", "control", _scan_infer, _scan_reference, arity=None, grad=_scan_grad,
            doc="Loop over the leading axis of xs with a carry, stacking the per-step results."))
register(Op("item", "item", _item_infer, lambda t, index: t[index], arity=1,
            doc="Result `index` of a control node."))


def _aligned(size, align=64):
    if isinstance(size, Sym):  # a symbolic size: reserve `align` spare bytes, and code
        return size + align    # rounds the region's start up at run time
    return (max(int(size), 1) + align - 1) // align * align


def control_layout(g, n) -> dict:
    """Where a control node keeps things in its workspace region: its results, (for loops)
    two sets of loop-state buffers and the condition's flag, then the bodies' workspace."""
    import math

    d = g.nodes[n]
    sizes = [_aligned(math.prod(s) * np.dtype(t).itemsize) for s, t in zip(d["shape"], d["dtype"])]
    offset, layout = 0, {}

    def take(count_sizes):
        nonlocal offset
        offsets = []
        for size in count_sizes:
            offsets.append(offset)
            offset += size
        return offsets

    layout["outputs"] = take(sizes)
    if d["op"] == "while":
        layout["state"] = (take(sizes), take(sizes))
        layout["flag"] = take([64])[0]
    elif d["op"] == "scan":
        carried = sizes[: d["attrs"]["num_carried"]]
        layout["state"] = (take(carried), take(carried))
    layout["workspace"] = offset
    spaces = [b.graph.get("workspace_bytes", 0) for b in d["attrs"]["bodies"]]
    if any(isinstance(space, Sym) for space in spaces):
        offset += sum(spaces, 0)  # symbolic sizes have no max: room for every body's
    else:
        offset += max(spaces, default=0)
    layout["total"] = _aligned(offset)
    return layout
