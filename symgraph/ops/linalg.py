"""matmul and concatenate: ops with their own loop structure in codegen."""
from __future__ import annotations

import numpy as np

from .. import dtypes as dt
from ..errors import DTypeError, ShapeError
from .registry import Op, Typing, broadcast_shapes, register


def _strong(d):
    return dt.default_dtype(d) if isinstance(d, type) else d


def _matmul_infer(in_types, attrs):
    (a_shape, a_dtype), (b_shape, b_dtype) = in_types
    if len(a_shape) == 0 or len(b_shape) == 0:
        raise ShapeError(
            f"matmul needs at least 1-d operands, got shapes {tuple(a_shape)} and {tuple(b_shape)}",
            hint="use * for scalar multiplication",
        )
    a2 = (1,) + tuple(a_shape) if len(a_shape) == 1 else tuple(a_shape)
    b2 = tuple(b_shape) + (1,) if len(b_shape) == 1 else tuple(b_shape)
    if a2[-1] != b2[-2]:
        hint = None
        if len(b2) >= 2 and a2[-1] == b2[-1]:
            hint = "did you mean to transpose the right operand (w.T)?"
        raise ShapeError(
            f"matmul got shapes {tuple(a_shape)} and {tuple(b_shape)}: inner sizes "
            f"{a2[-1]} and {b2[-2]} differ",
            hint=hint,
        )
    batch = broadcast_shapes("matmul", [a2[:-2], b2[:-2]])
    shape = batch + (a2[-2], b2[-1])
    if len(a_shape) == 1:
        shape = shape[:-2] + shape[-1:]
    if len(b_shape) == 1:
        shape = shape[:-1]
    dtype = np.result_type(_strong(a_dtype), _strong(b_dtype))
    if dtype not in dt.SUPPORTED:
        raise DTypeError(f"matmul of {a_dtype} and {b_dtype} is not supported")
    return Typing(shape, dtype, (dtype, dtype))


def _fe():
    from .. import frontend  # late: gradient rules build expressions, and the frontend imports ops

    return frontend


def _ad():
    from .. import autodiff

    return autodiff


def _matmul_grad(g, out, a, b):
    """1-d operands act as a row (a) or a column (b); broadcast batch axes sum back."""
    ad, fe = _ad(), _fe()
    a_shape, b_shape = ad.shape_of(a, "matmul"), ad.shape_of(b, "matmul")
    a2 = ad.reshaped(a, (1,) + a_shape) if len(a_shape) == 1 else a
    b2 = ad.reshaped(b, b_shape + (1,)) if len(b_shape) == 1 else b
    batch = broadcast_shapes("matmul", [a2.shape[:-2], b2.shape[:-2]])
    g2 = ad.reshaped(g, batch + (a2.shape[-2], b2.shape[-1]))

    def swap(e):
        n = len(e.shape)
        return fe.transpose(e, tuple(range(n - 2)) + (n - 1, n - 2))

    ga = ad.reshaped(ad.sum_to(fe.matmul(g2, swap(b2)), a2.shape), a_shape)
    gb = ad.reshaped(ad.sum_to(fe.matmul(swap(a2), g2), b2.shape), b_shape)
    return ga, gb


register(Op("matmul", "matmul", _matmul_infer, np.matmul, grad=_matmul_grad, arity=2,
            doc="numpy matmul: 1-d operands promoted and squeezed, batch axes broadcast."))


def _concat_infer(in_types, attrs):
    if not in_types:
        raise ShapeError("concatenate needs at least one array")
    shapes = [tuple(s) for s, _ in in_types]
    ndim = len(shapes[0])
    if ndim == 0:
        raise ShapeError("concatenate cannot join 0-d arrays", hint="reshape them to (1,) first")
    axis = attrs["axis"]
    if not -ndim <= axis < ndim:
        raise ShapeError(f"concatenate: axis {axis} is out of range for {ndim}-d arrays")
    axis %= ndim
    for s in shapes:
        if len(s) != ndim or any(a != b for i, (a, b) in enumerate(zip(s, shapes[0])) if i != axis):
            shown = ", ".join(str(x) for x in shapes)
            raise ShapeError(f"concatenate along axis {axis} got shapes {shown}: other axes must match")
    dtype = np.result_type(*[_strong(d) for _, d in in_types])
    shape = list(shapes[0])
    shape[axis] = sum(s[axis] for s in shapes)
    return Typing(tuple(shape), dtype, (dtype,) * len(in_types), {"axis": axis})


def _concat_grad(g, out, *xs, axis):
    ad = _ad()
    shapes = [ad.shape_of(x, "concatenate") for x in xs]
    axis %= len(shapes[0])
    parts, start = [], 0
    for shape in shapes:
        parts.append(ad.axis_slice(g, axis, start, start + shape[axis]))
        start += shape[axis]
    return tuple(parts)


register(Op("concat", "concat", _concat_infer, lambda *xs, axis: np.concatenate(xs, axis=axis),
            grad=_concat_grad, arity=None, doc="Join arrays along an existing axis."))
