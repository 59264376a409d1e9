"""Reverse-mode automatic differentiation over frontend expressions.

Gradients are ordinary expressions built from each op's `grad` rule (declared next to
the op in `symgraph/ops/`), so they compile, fuse, evaluate and differentiate again like
anything else. Rules that move or reduce data need the operands' shapes when the
gradient is built, so differentiated paths need declared Variable shapes.
"""
from __future__ import annotations

import math

import numpy as np

from . import frontend as fe
from .errors import ArgumentError, ShapeError, SymgraphError, user_loc
from .frontend import Expr
from .ops import REGISTRY, get_op
from .ops.registry import broadcast_shapes, normalize_axes

# Ops whose outputs carry no derivative: graph leaves, and integer or boolean results.
NON_DIFFERENTIABLE = frozenset({
    "var", "const", "scalar",
    "lt", "le", "gt", "ge", "eq", "ne", "and", "or", "xor", "invert", "argmax", "argmin",
})
# Ops that exist but have no rule yet: grad names them when they are on a differentiated path.
# Ops the backward pass itself handles: an item routes its cotangent to its control node.
STRUCTURAL = frozenset({"item"})
NOT_YET_DIFFERENTIABLE = frozenset()


def grad(y, wrt):
    """Gradient of the scalar expression `y` with respect to `wrt`: one expression for a
    single Expr, a list for a list. Results are graph expressions of `wrt`'s shapes::

        >>> import numpy as np, symgraph as sg
        >>> x = sg.Variable("x", shape=(3,), dtype="float64")
        >>> dx = sg.grad(sg.sum(x * x), x)
        >>> sg.evaluate(dx, x=np.array([1.0, 2.0, 3.0]))
        array([2., 4., 6.])
    """
    y = fe.as_expr(y)
    if y.shape is None:
        raise ShapeError("grad needs the shape of its output when the gradient is built",
                         locs=(user_loc(), y.loc), hint=_DECLARE_HINT)
    if math.prod(y.shape) != 1:
        raise ShapeError(f"grad needs a scalar output, got shape {y.shape}",
                         locs=(user_loc(), y.loc),
                         hint="use symgraph.vjp(y, wrt, cotangent) for non-scalar outputs, "
                              "or reduce y first (y.sum())")
    if isinstance(y.dtype, np.dtype):
        seed = fe.Constant(np.ones(y.shape, y.dtype))
    else:
        seed = fe.Constant(np.ones(y.shape, np.float64))
    return vjp(y, wrt, seed)


def vjp(y, wrt, cotangent):
    """Vector-Jacobian product: sum over y's elements of cotangent * d y / d wrt, for
    `cotangent` of y's shape; structured like `wrt` (one Expr or a list)."""
    y = fe.as_expr(y)
    cotangent = fe.as_expr(cotangent)
    if y.shape is not None and cotangent.shape is not None and cotangent.shape != y.shape:
        if broadcast_shapes("vjp", [cotangent.shape, y.shape]) != y.shape:
            raise ShapeError(f"vjp cotangent of shape {cotangent.shape} does not match the "
                             f"output's shape {y.shape}", locs=(user_loc(), y.loc))
        cotangent = fe.broadcast_to(cotangent, y.shape)
    single = isinstance(wrt, Expr)
    if not single and not isinstance(wrt, (list, tuple)):
        raise ArgumentError(f"grad/vjp differentiate with respect to an expression or a list "
                            f"of them, got {type(wrt).__name__}", locs=(user_loc(),))
    targets = [wrt] if single else list(wrt)
    for t in targets:
        if not isinstance(t, Expr):
            raise ArgumentError(f"grad/vjp differentiate with respect to expressions, got "
                                f"{type(t).__name__}", locs=(user_loc(),))
    grads = _backward(y, cotangent, targets)
    return grads[0] if single else grads


def _differentiable(e) -> bool:
    """Whether values of `e` carry derivatives (floats; an unknown dtype counts as float;
    a control node's when any of its results is a float)."""
    if isinstance(e.dtype, tuple):
        return any(np.dtype(d).kind == "f" for d in e.dtype)
    return e.dtype is None or (isinstance(e.dtype, np.dtype) and e.dtype.kind == "f")


def _backward(y, seed, targets):
    order = fe.collect([y])
    target_ids = {id(t) for t in targets}
    live = set()  # expressions that depend differentiably on a target
    for e in order:
        depends = id(e) in target_ids or any(id(a) in live for a in e.args)
        if depends and e.op in NOT_YET_DIFFERENTIABLE and id(e) not in target_ids:
            raise SymgraphError(f"grad does not differentiate through {e.op} yet",
                                locs=(user_loc(), e.loc),
                                hint="differentiate the branches or body separately")
        if depends and _differentiable(e):
            live.add(id(e))
    cotangents = {id(y): seed} if id(y) in live else {}
    for e in reversed(order):
        g = cotangents.get(id(e))
        if g is None or not e.args or not any(id(a) in live for a in e.args):
            continue
        if e.op == "item":  # a control node's result: collect cotangents per result index
            per_result = cotangents.setdefault(id(e.args[0]), {})
            k = e.attrs["index"]
            per_result[k] = g if k not in per_result else per_result[k] + g
            continue
        op = get_op(e.op)
        if op.grad is None:
            if e.op in NON_DIFFERENTIABLE:
                continue
            raise SymgraphError(f"{e.op} has no gradient rule", locs=(user_loc(), e.loc),
                                hint="grad supports the ops listed in docs/autodiff.md")
        contributions = op.grad(g, e, *e.args, **e.attrs)
        for a, c in zip(e.args, contributions):
            if c is None or id(a) not in live:
                continue
            c = _like(c, a)
            previous = cotangents.get(id(a))
            cotangents[id(a)] = c if previous is None else previous + c
    return [cotangents[id(t)] if id(t) in cotangents else zeros_like(t) for t in targets]


def cond_grad(cts, out, pred, *args, bodies, num_operands, **attrs):
    """A cond's cotangents flow through the branch that ran: a new cond whose branches are
    the VJPs of the original branches (the same predicate picks one)."""
    true_body, false_body = bodies
    results = [(out.shape[k], out.dtype[k]) for k in range(len(out.shape))] \
        if isinstance(out.shape, tuple) and out.shape and isinstance(out.shape[0], tuple) else None
    if results is None:
        raise ShapeError("grad through cond needs the branch results' shapes: declare the "
                         "operands' shapes", locs=(user_loc(), out.loc), hint=_DECLARE_HINT)
    filled = [cts.get(k) if cts.get(k) is not None else fe.broadcast_to(
        fe.Constant(0, dtype=results[k][1]), results[k][0]) for k in range(len(results))]
    n_args = len(args)

    def branch_vjp(body):
        def vjp_fn(*params):
            values, cotans = params[:n_args], params[n_args:]
            outputs = _substitute(body.outputs, body.params, values)
            total = None
            for o, c in zip(outputs, cotans):
                if _differentiable(o):
                    term = fe.sum(o * c)
                    total = term if total is None else total + term
            if total is None:
                return tuple(zeros_like(v) for v in values)
            return tuple(vjp(total, list(values), fe.Constant(np.ones((), total.dtype))))
        return vjp_fn

    from .control import cond

    grads = cond(pred, branch_vjp(true_body), branch_vjp(false_body), *args, *filled)
    grads = grads if isinstance(grads, tuple) else (grads,)
    return (None,) + tuple(g if _differentiable(a) else None for g, a in zip(grads, args))


def scan_grad(cts, out, *args, bodies, num_carried, num_xs, **attrs):
    """Reverse mode through scan: recompute the forward scan keeping each step's carry, then
    scan backwards over the steps, each step taking the VJP of the body at that step's
    carry and row. Captured values' cotangents accumulate in the backward carry."""
    from .control import scan

    (body,) = bodies
    n_c, n_x = num_carried, num_xs
    carry0, xs, caps = list(args[:n_c]), list(args[n_c:n_c + n_x]), list(args[n_c + n_x:])
    shapes, dtypes = out.shape, out.dtype
    if not isinstance(shapes, tuple) or any(s is None for s in shapes):
        raise ShapeError("grad through scan needs the shapes of its results: declare the "
                         "operands' shapes", locs=(user_loc(), out.loc), hint=_DECLARE_HINT)
    n_y = len(shapes) - n_c

    def zeros(k):
        return fe.broadcast_to(fe.Constant(0, dtype=dtypes[k]), shapes[k])

    def run_body(carry, rows):
        return _substitute(body.outputs, body.params, list(carry) + list(rows) + caps)

    def forward(carry, rows):
        outs = run_body(carry, rows)
        return tuple(outs[:n_c]), tuple(carry)  # keep each step's incoming carry

    _, carries = scan(forward, tuple(carry0), tuple(xs))
    carries = list(carries)
    ct_ys = [cts.get(n_c + j) if cts.get(n_c + j) is not None else zeros(n_c + j)
             for j in range(n_y)]
    ct_final = [cts.get(k) if cts.get(k) is not None else zeros(k) for k in range(n_c)]

    def reverse(e):
        return e[::-1]

    def backward(state, rows):
        ct_c, acc = list(state[:n_c]), list(state[n_c:])
        x_row, c_row, cty_row = rows[:n_x], rows[n_x:n_x + n_c], rows[n_x + n_c:]
        outs = run_body(c_row, x_row)
        total = None
        for o, c in zip(outs, ct_c + list(cty_row)):
            if _differentiable(o):
                term = fe.sum(o * c)
                total = term if total is None else total + term
        wrt = list(c_row) + list(x_row) + caps
        if total is None:
            grads = [zeros_like(w) for w in wrt]
        else:
            grads = vjp(total, wrt, fe.Constant(np.ones((), total.dtype)))
        new_ct_c = grads[:n_c]
        ct_x = grads[n_c:n_c + n_x]
        new_acc = [a + g for a, g in zip(acc, grads[n_c + n_x:])]
        return (*new_ct_c, *new_acc), tuple(ct_x)

    init = tuple(ct_final) + tuple(zeros_like(c) for c in caps)
    rows = tuple(reverse(x) for x in xs) + tuple(reverse(c) for c in carries) + tuple(
        reverse(c) for c in ct_ys)
    final, ct_xs_rev = scan(backward, init, rows)
    ct_carry0 = list(final[:n_c])
    ct_caps = list(final[n_c:])
    ct_xs = [reverse(c) for c in ct_xs_rev]
    grads = ct_carry0 + ct_xs + ct_caps
    return tuple(g if _differentiable(a) else None for g, a in zip(grads, args))


def while_grad(cts, out, *args, bodies, num_carried, max_iters=None, **attrs):
    """Reverse mode through while_loop, which needs `max_iters`: the loop is rewritten as a
    scan of max_iters steps that stop changing the carry once the condition fails (a where
    on an `active` flag), and that scan is differentiated. The forward values stay the
    while loop's own."""
    from .control import scan

    if max_iters is None:
        raise SymgraphError("grad through while_loop needs max_iters=N: reverse mode must "
                            "bound the number of steps it records",
                            locs=(user_loc(), out.loc), hint="pass while_loop(..., max_iters=N)")
    cond_body, loop_body = bodies
    n = num_carried
    carry0, caps = list(args[:n]), list(args[n:])

    def step(state, _i):
        carry, active = list(state[:n]), state[n]
        go = _substitute(cond_body.outputs, cond_body.params, carry + caps)[0]
        go = fe.apply("and", fe.astype(go, "bool"), active)
        new = _substitute(loop_body.outputs, loop_body.params, carry + caps)
        return (*[fe.where(go, nw, c) for nw, c in zip(new, carry)], go), ()

    indices = fe.Constant(np.arange(max_iters, dtype=np.int64))
    final, _ = scan(step, (*carry0, fe.Constant(True)), indices)
    node = final[0].args[0]  # the scan node behind the items
    # Differentiate the scan node itself: its rule treats cotangents as constants.
    grads = scan_grad({k: c for k, c in cts.items() if k < n}, node, *node.args, **node.attrs)
    by_operand = {}
    for a, g in zip(node.args, grads):  # a value both carried and captured gets both parts
        if g is not None:
            by_operand[id(a)] = g if id(a) not in by_operand else by_operand[id(a)] + g
    return tuple(by_operand.get(id(a)) if _differentiable(a) else None for a in args)


def _substitute(outputs, params, values):
    """Copies of the expressions `outputs` with `params` replaced by `values`."""
    new = {id(p): v for p, v in zip(params, values)}
    for e in fe.collect(outputs, stop=params):
        if id(e) in new:
            continue
        if not e.args:
            new[id(e)] = e
            continue
        new[id(e)] = fe.apply(e.op, *[new[id(a)] for a in e.args], **e.attrs)
    return [new[id(o)] for o in outputs]


def _like(c, a):
    """A cotangent in its operand's dtype (an op may compute in a wider one)."""
    if isinstance(a.dtype, np.dtype) and isinstance(c.dtype, np.dtype) and c.dtype != a.dtype:
        return fe.astype(c, a.dtype)
    return c


def zeros_like(x):
    """Exact zeros of x's shape and dtype (never x * 0, which is NaN for inf and NaN)."""
    if x.shape is not None and isinstance(x.dtype, np.dtype):
        return fe.broadcast_to(fe.Constant(0, dtype=x.dtype), x.shape)
    return fe.where(True, 0, x)  # weak 0 takes x's dtype, the condition picks it everywhere


# --- helpers for the rules in symgraph/ops ----------------------------------------------------

_DECLARE_HINT = ("declare the shapes of the Variables being differentiated, "
                 "e.g. Variable('x', shape=(3,), dtype='float64')")


def shape_of(e, why: str) -> tuple:
    """The shape of `e`, which a gradient rule needs; an error when it is not yet known."""
    if e.shape is None:
        raise ShapeError(f"the gradient of {why} needs operand shapes when it is built",
                         locs=(user_loc(), e.loc), hint=_DECLARE_HINT)
    return e.shape


def sum_to(g, shape):
    """Sum the cotangent `g` back to `shape`, undoing numpy broadcasting."""
    g_shape = shape_of(g, "a broadcasting op")
    shape = tuple(shape)
    if g_shape == shape:
        return g
    lead = len(g_shape) - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(shape) if d == 1 and g_shape[lead + i] != 1)
    if axes:
        g = fe.sum(g, axes)
    return g if g.shape == shape else fe.reshape(g, shape)


def unbroadcast(g, x):
    """Sum the cotangent `g` back to operand x's shape (None stays None)."""
    if g is None:
        return None
    return sum_to(g, shape_of(x, "a broadcasting op"))


def reduction_parts(opname, x, axes):
    """(sorted axes, keepdims shape) of a reduction of x."""
    shape = shape_of(x, opname)
    axes = normalize_axes(opname, axes, len(shape))
    kept = tuple(1 if i in axes else d for i, d in enumerate(shape))
    return axes, kept


def reshaped(e, shape):
    """`e` in `shape` (no node when it already has it)."""
    shape = tuple(shape)
    return e if e.shape == shape else fe.reshape(e, shape)


def expand_reduced(opname, g, x, axes):
    """The cotangent of a reduction of x, repeated back over the reduced axes."""
    _, kept = reduction_parts(opname, x, axes)
    g = reshaped(g, kept)
    return g if kept == x.shape else fe.broadcast_to(g, x.shape)


def zeros(shape, dtype):
    """A zero block for scattering cotangents (float64 when the dtype is unknown)."""
    dtype = dtype if isinstance(dtype, np.dtype) else np.dtype(np.float64)
    return fe.broadcast_to(fe.Constant(0, dtype=dtype), shape)


def pad_axis(g, axis, before, after):
    """`g` with `before` and `after` zeros along `axis`."""
    shape = g.shape
    parts = []
    if before:
        parts.append(zeros(shape[:axis] + (before,) + shape[axis + 1:], g.dtype))
    parts.append(g)
    if after:
        parts.append(zeros(shape[:axis] + (after,) + shape[axis + 1:], g.dtype))
    return parts[0] if len(parts) == 1 else fe.concatenate(parts, axis)


def axis_slice(g, axis, start, stop, step=1):
    """g[..., start:stop:step, ...] along one axis."""
    items = (("slice", None, None, None),) * axis + (("slice", start, stop, step),)
    return fe.apply("slice", g, items=items)


def differentiable_ops() -> list:
    """Registered ops that declare a gradient rule."""
    return sorted(name for name, op in REGISTRY.items() if op.grad is not None)


__all__ = ["grad", "vjp", "zeros_like", "NON_DIFFERENTIABLE", "NOT_YET_DIFFERENTIABLE"]
