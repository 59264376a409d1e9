"""Ops that compute or use indices: argmax, argmin and take (gather along an axis)."""
from __future__ import annotations

import numpy as np

from .. import dtypes as dt
from ..errors import IndexOutOfRange, ShapeError
from .registry import Op, Typing, keepdims_flag, register

ERR_INDEX_OUT_OF_RANGE = 4


def _strong(d):
    return dt.default_dtype(d) if isinstance(d, type) else np.dtype(d)


def _arg_rule(name):
    def infer(in_types, attrs):
        ((shape, dtype),) = in_types
        shape = tuple(shape)
        axis = attrs.get("axis")
        if axis is None:
            raise ShapeError(f"{name}: the frontend flattens for axis=None; the op needs an axis")
        if not -len(shape) <= axis < len(shape) or not shape:
            raise ShapeError(f"{name}: axis {axis} is out of range for shape {shape}")
        axis %= len(shape)
        if shape[axis] == 0:
            raise ShapeError(f"attempt to get {name} of an empty sequence (shape {shape})")
        keepdims = keepdims_flag(name, attrs)
        out = tuple(1 if i == axis else d for i, d in enumerate(shape)) if keepdims else \
            shape[:axis] + shape[axis + 1:]
        return Typing(out, np.dtype(np.int64), (_strong(dtype),), {"axis": axis, "keepdims": keepdims})

    return infer


def _better_max(em, d, x, best):
    """numpy's argmax: a strictly greater value wins (first occurrence), and NaN beats all."""
    better = em.cmp(">", d, x, best)
    if d.kind == "f":
        better = em.or_(better, em.and_(em.isnan(d, x), em.not_(em.isnan(d, best))))
    return better


def _better_min(em, d, x, best):
    better = em.cmp("<", d, x, best)
    if d.kind == "f":
        better = em.or_(better, em.and_(em.isnan(d, x), em.not_(em.isnan(d, best))))
    return better


register(Op("argmax", "argreduce", _arg_rule("argmax"),
            lambda x, axis, keepdims: np.argmax(x, axis=axis, keepdims=keepdims),
            lower=_better_max, arity=1, doc="Index of the first maximum along `axis` (NaN wins)."))
register(Op("argmin", "argreduce", _arg_rule("argmin"),
            lambda x, axis, keepdims: np.argmin(x, axis=axis, keepdims=keepdims),
            lower=_better_min, arity=1, doc="Index of the first minimum along `axis` (NaN wins)."))


def _take_infer(in_types, attrs):
    (x_shape, x_dtype), (i_shape, i_dtype) = in_types
    x_shape, i_shape = tuple(x_shape), tuple(i_shape)
    i_dtype = _strong(i_dtype)
    if i_dtype.kind not in "i":
        raise ShapeError(f"take needs integer indices, got {i_dtype}", hint="cast with .astype('int64')")
    axis = attrs["axis"]
    if not x_shape or not -len(x_shape) <= axis < len(x_shape):
        raise ShapeError(f"take: axis {axis} is out of range for shape {x_shape}")
    axis %= len(x_shape)
    out = x_shape[:axis] + i_shape + x_shape[axis + 1:]
    return Typing(out, _strong(x_dtype), (None, np.dtype(np.int64)), {"axis": axis})


def _take_reference(x, indices, axis):
    size = np.shape(x)[axis]
    if np.any((indices < -size) | (indices >= size)):
        raise IndexOutOfRange(f"take: index out of range for axis {axis} with size {size}")
    return np.take(x, indices, axis=axis)


def _take_grad(g, out, x, indices, axis):
    """Scatter-add back: move `axis` first, and one_hot(indices)^T @ g sums the cotangent rows
    into the rows they were taken from (repeated indices accumulate)."""
    from .. import autodiff as ad
    from .. import frontend as fe

    x_shape = ad.shape_of(x, "take")
    i_shape = ad.shape_of(indices, "take")
    axis %= len(x_shape)
    k = len(i_shape)
    n = x_shape[axis]
    rest = x_shape[:axis] + x_shape[axis + 1:]
    # g has shape x[:axis] + i_shape + x[axis+1:]; bring the index axes to the front.
    g_perm = tuple(range(axis, axis + k)) + tuple(range(axis)) + tuple(
        range(axis + k, len(x_shape) - 1 + k))
    g_front = ad.reshaped(fe.transpose(g, g_perm), (-1, max(1, int(np.prod(rest)))))
    flat = ad.reshaped(indices, (-1,))
    flat = fe.where(flat < 0, flat + n, flat)
    hot = fe.one_hot(flat, n, dtype=out.dtype)
    gx_front = ad.reshaped(fe.matmul(fe.transpose(hot), g_front), (n,) + rest)
    inverse = tuple(range(1, axis + 1)) + (0,) + tuple(range(axis + 1, len(x_shape)))
    return fe.transpose(gx_front, inverse), None


register(Op("take", "gather", _take_infer, _take_reference, grad=_take_grad, arity=2,
            doc="Gather along `axis` with integer indices (negative ones count from the end)."))
