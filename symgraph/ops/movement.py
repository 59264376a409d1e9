"""Movement ops: reshape, transpose, slice, broadcast_to.

They move no data by themselves: each declares an index map from an output index to the
input index, so fusion turns them into address arithmetic inside a consumer's loop.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import IndexOutOfRange, ShapeError
from ..shapes import Sym
from .registry import Op, Typing, register


def _same_dtype(in_types):
    ((shape, dtype),) = in_types
    from .. import dtypes as dt

    return tuple(shape), (dt.default_dtype(dtype) if isinstance(dtype, type) else dtype)


def resolve_reshape(in_shape, new_shape) -> tuple:
    """numpy's reshape rule, with one -1 inferred. Sizes may be symbolic (shapes.Sym): a
    resolved target keeps them, and -1 becomes the exact quotient of the element counts."""
    new_shape = tuple(d if isinstance(d, Sym) else int(d) for d in new_shape)
    size = math.prod(in_shape)
    fixed = [d for d in new_shape if not isinstance(d, Sym)]
    if fixed.count(-1) > 1 or any(d < -1 for d in fixed):
        raise ShapeError(f"reshape: invalid target shape {new_shape}")
    if -1 in fixed:
        known = math.prod(d for d in new_shape if isinstance(d, Sym) or d != -1)
        if isinstance(known, int) and known == 0 or isinstance(size, int) and isinstance(
                known, int) and size % known:
            raise ShapeError(f"reshape cannot infer -1 in {new_shape} for {size} elements")
        inferred = size // known
        new_shape = tuple(inferred if not isinstance(d, Sym) and d == -1 else d
                          for d in new_shape)
    if math.prod(new_shape) != size:
        raise ShapeError(
            f"reshape of shape {tuple(in_shape)} ({size} elements) into {new_shape} "
            f"({math.prod(new_shape)} elements)"
        )
    return new_shape


def _reshape_infer(in_types, attrs):
    shape, dtype = _same_dtype(in_types)
    new_shape = resolve_reshape(shape, attrs["shape"])
    return Typing(new_shape, dtype, attrs={"shape": new_shape})


def _reshape_index(em, out_index, attrs, in_shape):
    out_shape = attrs["shape"]
    if tuple(d for d in out_shape if d != 1) == tuple(d for d in in_shape if d != 1):
        # Only size-1 axes come or go: the non-trivial indices carry over in order.
        kept = [i for i, d in zip(out_index, out_shape) if d != 1]
        it = iter(kept)
        return [em.index_const(0) if d == 1 else next(it) for d in in_shape]
    linear = em.linearize(out_index, out_shape)
    return em.delinearize(linear, in_shape)


def _transpose_infer(in_types, attrs):
    shape, dtype = _same_dtype(in_types)
    ndim = len(shape)
    perm = attrs.get("perm")
    perm = tuple(range(ndim))[::-1] if perm is None else tuple(int(p) for p in perm)
    if sorted(p % ndim if ndim and -ndim <= p < ndim else p for p in perm) != list(range(ndim)):
        raise ShapeError(f"transpose: axes {perm} are not a permutation for a {ndim}-d input")
    perm = tuple(p % ndim for p in perm)
    return Typing(tuple(shape[p] for p in perm), dtype, attrs={"perm": perm})


def _transpose_index(em, out_index, attrs, in_shape):
    in_index = [None] * len(in_shape)
    for out_axis, in_axis in enumerate(attrs["perm"]):
        in_index[in_axis] = out_index[out_axis]
    return in_index


def canonical_slice(shape, items) -> dict:
    """numpy basic indexing (ints and slices over leading axes) as per-axis start/step/count."""
    if len(items) > len(shape):
        raise IndexOutOfRange(f"too many indices ({len(items)}) for a {len(shape)}-d array")
    starts, steps, counts, drop = [], [], [], []
    for axis, size in enumerate(shape):
        item = items[axis] if axis < len(items) else ("slice", None, None, None)
        if item[0] == "int":
            index = item[1]
            if not -size <= index < size:
                raise IndexOutOfRange(f"index {index} is out of bounds for axis {axis} with size {size}")
            starts.append(index % size)
            steps.append(1)
            counts.append(1)
            drop.append(axis)
        else:
            _, start, stop, step = item
            if step == 0:
                raise ShapeError("slice step cannot be zero")
            start, stop, step = slice(start, stop, step).indices(size)
            starts.append(start)
            steps.append(step)
            counts.append(len(range(start, stop, step)))
    return {"starts": tuple(starts), "steps": tuple(steps), "counts": tuple(counts),
            "drop": tuple(drop)}


def _slice_infer(in_types, attrs):
    shape, dtype = _same_dtype(in_types)
    if "items" in attrs:
        attrs = canonical_slice(shape, attrs["items"])
    starts, steps, counts = attrs["starts"], attrs["steps"], attrs["counts"]
    drop = attrs.get("drop", ())
    if not len(starts) == len(steps) == len(counts) == len(shape):
        raise ShapeError(f"slice attributes do not match a {len(shape)}-d input")
    for axis, (start, step, count, size) in enumerate(zip(starts, steps, counts, shape)):
        if step == 0 or count < 0:
            raise ShapeError(f"slice: invalid step or count on axis {axis}")
        if count and not (0 <= start < size and 0 <= start + (count - 1) * step < size):
            raise ShapeError(f"slice: axis {axis} of size {size} has no elements {start}+{step}*k")
    out_shape = tuple(c for axis, c in enumerate(counts) if axis not in drop)
    return Typing(out_shape, dtype, attrs={"starts": tuple(starts), "steps": tuple(steps),
                                           "counts": tuple(counts), "drop": tuple(drop)})


def _slice_index(em, out_index, attrs, in_shape):
    kept = iter(out_index)
    return [
        em.index_const(start) if axis in attrs["drop"] else em.index_affine(next(kept), step, start)
        for axis, (start, step) in enumerate(zip(attrs["starts"], attrs["steps"]))
    ]


def _slice_reference(x, starts=None, steps=None, counts=None, drop=(), items=None):
    x = np.asarray(x)
    if items is not None:
        canon = canonical_slice(x.shape, items)
        starts, steps, counts, drop = canon["starts"], canon["steps"], canon["counts"], canon["drop"]
    index = tuple(
        start if axis in drop
        else slice(start, start + step * count if start + step * count >= 0 else None, step)
        if count else slice(0, 0)
        for axis, (start, step, count) in enumerate(zip(starts, steps, counts))
    )
    return np.array(x[index])


def _broadcast_infer(in_types, attrs):
    shape, dtype = _same_dtype(in_types)
    target = tuple(attrs["shape"])
    from .registry import broadcast_shapes

    if len(target) < len(shape) or broadcast_shapes("broadcast_to", [shape, target]) != target:
        raise ShapeError(f"cannot broadcast shape {shape} to {target}")
    return Typing(target, dtype)


def _broadcast_index(em, out_index, attrs, in_shape):
    offset = len(out_index) - len(in_shape)
    return [
        em.index_const(0) if d == 1 else out_index[offset + k] for k, d in enumerate(in_shape)
    ]


def _fe():
    from .. import frontend  # late: gradient rules build expressions, and the frontend imports ops

    return frontend


def _ad():
    from .. import autodiff

    return autodiff


def _reshape_grad(g, out, x, shape):
    return (_fe().reshape(g, _ad().shape_of(x, "reshape")),)


def _transpose_grad(g, out, x, perm):
    if perm is None:
        return (_fe().transpose(g),)  # reversing the axes is its own inverse
    return (_fe().transpose(g, tuple(int(i) for i in np.argsort([p % len(perm) for p in perm]))),)


def _slice_grad(g, out, x, items):
    """Scatter the cotangent back into zeros of x's shape, one axis at a time, from
    concatenations of zero blocks (reversed first for negative steps)."""
    ad, fe = _ad(), _fe()
    shape = ad.shape_of(x, "slice")
    c = canonical_slice(shape, items)
    counts = c["counts"]
    if 0 in counts:
        return (ad.zeros(shape, g.dtype),)
    g = ad.reshaped(g, counts)  # integer-indexed axes come back with size 1
    for axis, (start, step, count, size) in enumerate(zip(c["starts"], c["steps"], counts, shape)):
        if step < 0:
            g = ad.axis_slice(g, axis, None, None, -1)
            start, step = start + (count - 1) * step, -step
        if step > 1:  # step - 1 zeros after each element, then drop the trailing ones
            s = g.shape
            spread = fe.reshape(g, s[:axis + 1] + (1,) + s[axis + 1:])
            gaps = ad.zeros(s[:axis + 1] + (step - 1,) + s[axis + 1:], g.dtype)
            g = fe.reshape(fe.concatenate([spread, gaps], axis + 1),
                           s[:axis] + (count * step,) + s[axis + 1:])
            g = ad.axis_slice(g, axis, 0, (count - 1) * step + 1)
        g = ad.pad_axis(g, axis, start, size - start - g.shape[axis])
    return (g,)


register(Op("reshape", "movement", _reshape_infer, lambda x, shape: np.reshape(x, shape),
            index_map=_reshape_index, grad=_reshape_grad, arity=1, doc="Same elements in row-major order, new shape."))
register(Op("transpose", "movement", _transpose_infer, lambda x, perm: np.transpose(x, perm),
            index_map=_transpose_index, grad=_transpose_grad, arity=1, doc="Permute axes: output axis k is input axis perm[k]."))
register(Op("slice", "movement", _slice_infer, _slice_reference, index_map=_slice_index,
            grad=_slice_grad, arity=1, doc="Strided view per axis: element k of axis a is start[a] + k * step[a]."))
register(Op("broadcast_to", "movement", _broadcast_infer,
            lambda x, shape: np.broadcast_to(x, shape).copy(), index_map=_broadcast_index,
            grad=lambda g, out, x, shape: (_ad().unbroadcast(g, x),), arity=1, doc="Repeat size-1 and missing leading axes up to `shape`."))
