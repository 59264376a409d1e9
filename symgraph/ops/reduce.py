"""Reductions over axes: sum, max, min (mean is derived in the frontend).

A reduction declares its combine step (written against the emitter, like an elementwise
lowering) and its identity; codegen owns the loop order, which is fixed and documented.
"""
from __future__ import annotations

import numpy as np

from .. import dtypes as dt
from ..errors import ShapeError
from .elementwise import _lower_add, _lower_maximum, _lower_minimum
from .registry import Op, Typing, normalize_axes, register


def reduced_shape(shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _reduce_rule(name, accumulate_dtype, needs_identity_free_empty):
    def infer(in_types, attrs):
        ((shape, dtype),) = in_types
        dtype = dt.default_dtype(dtype) if isinstance(dtype, type) else dtype
        axes = normalize_axes(name, attrs["axes"], len(shape))
        keepdims = bool(attrs.get("keepdims", False))
        if needs_identity_free_empty and any(shape[a] == 0 for a in axes):
            raise ShapeError(
                f"{name} over a zero-size axis has no identity (input shape {tuple(shape)})",
                hint="numpy raises here too; use sum, or guard against empty inputs",
            )
        out = accumulate_dtype(dtype)
        canonical = {"axes": axes, "keepdims": keepdims}
        return Typing(reduced_shape(shape, axes, keepdims), out, (out,), canonical)

    return infer


def _sum_dtype(dtype):
    return np.dtype(np.int64) if dtype.kind in "bi" else dtype


def _identity_sum(dtype):
    return False if dt.is_bool(dtype) else 0


def _identity_max(dtype):
    if dt.is_float(dtype):
        return -np.inf
    return False if dt.is_bool(dtype) else int(np.iinfo(dtype).min)


def _identity_min(dtype):
    if dt.is_float(dtype):
        return np.inf
    return True if dt.is_bool(dtype) else int(np.iinfo(dtype).max)


def _mean_dtype(dtype):
    return np.dtype(np.float64) if dtype.kind in "bi" else dtype


register(
    Op(
        name="mean",
        kind="reduce",
        infer=_reduce_rule("mean", _mean_dtype, False),
        reference=lambda x, axes, keepdims: np.asarray(
            np.mean(x, axis=tuple(axes), keepdims=keepdims)),
        lower=_lower_add,
        identity=_identity_sum,
        finalize=lambda em, d, acc, count: em.div(d, acc, em.const(d, count)),
        arity=1,
        doc="Arithmetic mean: the sum (integers accumulate in float64) divided by the count.",
    )
)

for _name, _np, _combine, _identity, _acc, _strict in [
    ("sum", np.sum, _lower_add, _identity_sum, _sum_dtype, False),
    ("max", np.max, _lower_maximum, _identity_max, lambda d: d, True),
    ("min", np.min, _lower_minimum, _identity_min, lambda d: d, True),
]:
    register(
        Op(
            name=_name,
            kind="reduce",
            infer=_reduce_rule(_name, _acc, _strict),
            reference=(lambda f: lambda x, axes, keepdims: np.asarray(
                f(x, axis=tuple(axes), keepdims=keepdims)))(_np),
            lower=_combine,
            identity=_identity,
            arity=1,
            doc=f"{_name} over `axes` (sorted, non-negative), optionally keeping them as size 1.",
        )
    )

