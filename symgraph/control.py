"""Control flow inside graphs: cond, while_loop, fori_loop.

The user's functions are traced once with placeholder Variables; values they use from
outside (closures) become extra operands. Only the taken branch runs, and loops run in
native code. On plain numpy values every function here runs eagerly, in Python.
"""
from __future__ import annotations

import numpy as np

from .errors import ArgumentError, ShapeError, user_loc
from .frontend import Expr, Variable, _ids, apply, as_expr
from .ops.control import Body

_trace_ids = iter(range(1 << 62))


def _placeholder(like: Expr, index: int) -> Variable:
    dtype = like.dtype if not isinstance(like.dtype, type) else None
    if isinstance(like.dtype, type):  # a weak Python scalar: NumPy's default dtype
        from .dtypes import default_dtype

        dtype = default_dtype(like.dtype)
    shape = like.shape
    return Variable(f"_p{next(_trace_ids)}_{index}", shape=shape, dtype=dtype)


def _trace(fn, operands, what):
    """Call `fn` on placeholders; returns (params, outputs, structure, captured outer Exprs)."""
    first_id = next(_ids) + 1  # Exprs with smaller ids existed before tracing: outer values
    params = [_placeholder(o, i) for i, o in enumerate(operands)]
    result = fn(*params)
    if isinstance(result, (tuple, list)):
        structure, outputs = type(result).__name__, list(result)
    else:
        structure, outputs = "single", [result]
    if not outputs:
        raise ArgumentError(f"the {what} returned no values", locs=(user_loc(),))
    outputs = [as_expr(o) for o in outputs]
    param_ids = {id(p) for p in params}
    captured, seen, stack = [], set(), list(reversed(outputs))
    while stack:
        e = stack.pop()
        if id(e) in seen or id(e) in param_ids:
            continue
        seen.add(id(e))
        if e.id < first_id:  # made outside the body: its value comes in as an operand
            captured.append(e)
            continue
        if e.op == "var":
            raise ArgumentError(f"the {what} uses Variable {e.attrs['name']!r} created inside it",
                                locs=(e.loc,), hint="create Variables outside control flow")
        stack.extend(reversed(e.args))
    return params, outputs, structure, captured


def _body(params, outputs, captured, structure):
    names = [p.attrs["name"] for p in params] + [f"_c{i}" for i in range(len(captured))]
    return Body(params + captured, outputs, names, user_loc(), structure)


def _unique(exprs):
    seen, out = set(), []
    for e in exprs:
        if id(e) not in seen:
            seen.add(id(e))
            out.append(e)
    return out


def _results(node, count, structure):
    items = [apply("item", node, index=k) for k in range(count)]
    if structure == "single":
        return items[0]
    return list(items) if structure == "list" else tuple(items)


def _require_callable(api, what, fn):
    if not callable(fn):
        raise ArgumentError(f"{api}: {what} must be a function, got {type(fn).__name__}",
                            locs=(user_loc(),))


def _concrete_truth(api, what, value):
    """bool() of a concrete predicate, which must hold one element (numpy's rule)."""
    try:
        array = np.asarray(value)
    except Exception:  # an object numpy cannot read
        array = None
    if array is None or array.size != 1 or array.dtype.kind not in "biuf":
        raise ShapeError(f"{api}: {what} must be one boolean or number, got "
                         f"{str(repr(value))[:60]}", locs=(user_loc(),))
    return bool(array.reshape(()))


def cond(pred, true_fn, false_fn, *operands):
    """Run ``true_fn(*operands)`` if the 0-d `pred` holds, else ``false_fn(*operands)``.

    Only the taken branch runs. Both must return the same structure, shapes and dtypes.
    """
    _require_callable("cond", "true_fn", true_fn)
    _require_callable("cond", "false_fn", false_fn)
    if not any(isinstance(v, Expr) for v in (pred, *operands)):
        return (true_fn(*operands) if _concrete_truth("cond", "the predicate", pred)
                else false_fn(*operands))
    exprs = [as_expr(o) for o in operands]
    t_params, t_out, t_struct, t_cap = _trace(true_fn, exprs, "true branch")
    t_loc = user_loc()
    f_params, f_out, f_struct, f_cap = _trace(false_fn, exprs, "false branch")
    captured = _unique(t_cap + f_cap)
    true_body = _body(t_params, t_out, captured, t_struct)
    false_body = _body(f_params, f_out, captured, f_struct)
    true_body.loc = _fn_loc(true_fn) or t_loc
    false_body.loc = _fn_loc(false_fn) or t_loc
    node = apply("cond", pred, *exprs, *captured, bodies=(true_body, false_body),
                 num_operands=len(exprs))
    return _results(node, len(t_out), t_struct)


def while_loop(cond_fn, body_fn, loop_vars, max_iters=None):
    """Repeat ``loop_vars = body_fn(*loop_vars)`` while ``cond_fn(*loop_vars)``; returns a tuple.

    Loop variables keep their shapes and dtypes. With `max_iters`, reaching it is an error.
    """
    _require_callable("while_loop", "cond_fn", cond_fn)
    _require_callable("while_loop", "body_fn", body_fn)
    values = list(loop_vars) if isinstance(loop_vars, (tuple, list)) else [loop_vars]
    if max_iters is not None and (not isinstance(max_iters, int) or max_iters < 0):
        raise ArgumentError(f"max_iters must be a non-negative int, got {max_iters!r}")
    if not any(isinstance(v, Expr) for v in values):
        steps = 0
        while _concrete_truth("while_loop", "cond_fn's result", cond_fn(*values)):
            if max_iters is not None and steps >= max_iters:
                from .errors import ExecutionError

                raise ExecutionError(f"while_loop reached max_iters={max_iters}")
            result = body_fn(*values)
            values = list(result) if isinstance(result, (tuple, list)) else [result]
            steps += 1
        return tuple(values)
    exprs = [as_expr(v) for v in values]
    c_params, c_out, _, c_cap = _trace(cond_fn, exprs, "loop condition")
    b_params, b_out, _, b_cap = _trace(body_fn, exprs, "loop body")
    if len(b_out) != len(exprs):
        raise ArgumentError(f"while_loop body returns {len(b_out)} values for {len(exprs)} loop "
                            "variables", locs=(_fn_loc(body_fn), user_loc()))
    captured = _unique(c_cap + b_cap)
    cond_body = _body(c_params, c_out, captured, "single")
    loop_body = _body(b_params, b_out, captured, "tuple")
    cond_body.loc = _fn_loc(cond_fn) or cond_body.loc
    loop_body.loc = _fn_loc(body_fn) or loop_body.loc
    node = apply("while", *exprs, *captured, bodies=(cond_body, loop_body), num_carried=len(exprs),
                 max_iters=max_iters, init_loc=user_loc())
    return _results(node, len(exprs), "tuple")


def fori_loop(lower, upper, body_fn, init):
    """``for i in range(lower, upper): val = body_fn(i, val)``; returns the final val.

    With Python int bounds it is a scan over the indices (so grad differentiates it);
    with symbolic bounds, a while_loop.
    """
    _require_callable("fori_loop", "body_fn", body_fn)
    for what, bound in (("lower", lower), ("upper", upper)):
        if not isinstance(bound, Expr) and (isinstance(bound, bool)
                                            or not isinstance(bound, (int, np.integer))):
            raise ArgumentError(f"fori_loop: {what} must be an integer or an expression, got "
                                f"{str(repr(bound))[:60]}", locs=(user_loc(),))
    lower = int(lower) if isinstance(lower, np.integer) else lower
    upper = int(upper) if isinstance(upper, np.integer) else upper
    single = not isinstance(init, (tuple, list))
    values = [init] if single else list(init)

    def step(i, vals):
        result = body_fn(i, vals[0] if single else tuple(vals))
        return [result] if single else list(result)

    symbolic = any(isinstance(v, Expr) for v in (lower, upper, *values))
    if symbolic and isinstance(lower, int) and isinstance(upper, int):
        from .frontend import Constant

        indices = Constant(np.arange(lower, max(lower, upper), dtype=np.int64))
        final, _ = scan(lambda carry, i: (tuple(step(i, list(carry))), ()), tuple(values),
                        indices)
        return final[0] if single else tuple(final)
    max_iters = max(0, upper - lower) if isinstance(lower, int) and isinstance(upper, int) else None
    final = while_loop(lambda i, *vals: i < upper, lambda i, *vals: (i + 1, *step(i, vals)),
                       (lower, *values), max_iters=max_iters)
    return final[1] if single else tuple(final[1:])


def _fn_loc(fn):
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    from .errors import Loc

    return Loc(code.co_filename, code.co_firstlineno, code.co_name)


def _carry_and_y(result, fn):
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise ArgumentError(f"scan: fn must return a pair (carry, y), got "
                            f"{str(repr(result))[:60]}", locs=(_fn_loc(fn), user_loc()))
    return result


def scan(fn, init, xs):
    """``carry, y = fn(carry, x)`` for each x along the leading axis of `xs`; returns
    ``(carry, ys)`` with the ys stacked, as ``jax.lax.scan``. `init` and `xs` may be single
    arrays or tuples of them, and `fn` receives and returns the same structure."""
    carry_single = not isinstance(init, (tuple, list))
    xs_single = not isinstance(xs, (tuple, list))
    carry = [init] if carry_single else list(init)
    xs_list = [xs] if xs_single else list(xs)
    _require_callable("scan", "fn", fn)
    if not xs_list:
        raise ArgumentError("scan needs at least one array in xs", locs=(user_loc(),))
    if not any(isinstance(v, Expr) for v in (*carry, *xs_list)):
        arrays = [np.asarray(x) for x in xs_list]
        if any(a.ndim == 0 for a in arrays) or len({len(a) for a in arrays}) != 1 or \
                not len(arrays[0]):
            raise ShapeError("scan: concrete xs need one leading axis of the same nonzero "
                             f"length, got shapes {[a.shape for a in arrays]}",
                             locs=(user_loc(),))
        ys = []
        for i in range(len(arrays[0])):
            row = [a[i] for a in arrays]
            c, y = _carry_and_y(fn(carry[0] if carry_single else tuple(carry),
                                   row[0] if xs_single else tuple(row)), fn)
            carry = [c] if carry_single else list(c)
            ys.append(y)
        stacked = (np.stack([np.asarray(y) for y in ys]) if not isinstance(ys[0], (tuple, list))
                   else tuple(np.stack([np.asarray(y[k]) for y in ys]) for k in range(len(ys[0]))))
        return (carry[0] if carry_single else tuple(carry)), stacked
    carry_exprs = [as_expr(c) for c in carry]
    xs_exprs = [as_expr(x) for x in xs_list]
    rows = [_row_like(x) for x in xs_exprs]
    n_carry = len(carry_exprs)
    y_structure = []

    def flat_fn(*args):
        c = args[:n_carry]
        r = args[n_carry:]
        new_carry, y = _carry_and_y(fn(c[0] if carry_single else tuple(c),
                                       r[0] if xs_single else tuple(r)), fn)
        new_carry = [new_carry] if carry_single else list(new_carry)
        if len(new_carry) != n_carry:
            raise ArgumentError(f"scan body returned {len(new_carry)} carry values for {n_carry}")
        y_list = list(y) if isinstance(y, (tuple, list)) else [y]
        y_structure.append(isinstance(y, (tuple, list)))
        return (*new_carry, *y_list)

    params, outputs, _, captured = _trace(flat_fn, carry_exprs + rows, "scan body")
    body = _body(params, outputs, captured, "tuple")
    body.loc = _fn_loc(fn) or body.loc
    node = apply("scan", *carry_exprs, *xs_exprs, *captured, bodies=(body,), num_carried=n_carry,
                 num_xs=len(xs_exprs), init_loc=user_loc())
    results = _results(node, len(outputs), "tuple")
    final, ys = results[:n_carry], results[n_carry:]
    final = final[0] if carry_single else tuple(final)
    ys = tuple(ys) if y_structure and y_structure[0] else ys[0]
    return final, ys


def _row_like(x: Expr) -> Expr:
    """A stand-in carrying the type of one row of `x`: the scan body's placeholder copies it."""
    return Expr("var", (), {"name": "_row", "shape": None, "dtype": None},
                shape=None if x.shape is None else tuple(x.shape[1:]), dtype=x.dtype)
