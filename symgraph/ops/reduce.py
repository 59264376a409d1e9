"""Reductions over axes: sum, max, min (mean is derived in the frontend).

A reduction declares its combine step (written against the emitter, like an elementwise
lowering) and its identity; codegen owns the loop order, which is fixed and documented.
"""
from __future__ import annotations

import math

import numpy as np

from .. import dtypes as dt
from ..errors import ShapeError
from .elementwise import _lower_add, _lower_maximum, _lower_minimum
from .registry import Op, Typing, keepdims_flag, normalize_axes, register


def _fe():
    from .. import frontend  # late: gradient rules build expressions, and the frontend imports ops

    return frontend


def _ad():
    from .. import autodiff

    return autodiff


def _sum_grad(g, out, x, axes, keepdims=False):
    return (_ad().expand_reduced("sum", g, x, axes),)


def _mean_grad(g, out, x, axes, keepdims=False):
    ad = _ad()
    axes_, _ = ad.reduction_parts("mean", x, axes)
    count = math.prod(x.shape[a] for a in axes_)
    return (ad.expand_reduced("mean", g / max(count, 1), x, axes),)


def _extreme_grad(name):
    """Cotangent of max/min: to every position equal to the result, shared evenly by ties."""

    def rule(g, out, x, axes, keepdims=False):
        ad, fe = _ad(), _fe()
        axes_, kept = ad.reduction_parts(name, x, axes)
        hit = x == ad.reshaped(out, kept)
        hit = fe.astype(hit, x.dtype) if isinstance(x.dtype, np.dtype) else fe.where(hit, 1.0, 0.0)
        return (hit * (ad.reshaped(g, kept) / fe.sum(hit, axes_, keepdims=True)),)

    return rule


def reduced_shape(shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _reduce_rule(name, accumulate_dtype, needs_identity_free_empty):
    def infer(in_types, attrs):
        ((shape, dtype),) = in_types
        dtype = dt.default_dtype(dtype) if isinstance(dtype, type) else dtype
        axes = normalize_axes(name, attrs["axes"], len(shape))
        keepdims = keepdims_flag(name, attrs)
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
        grad=_mean_grad,
        arity=1,
        doc="Arithmetic mean: the sum (integers accumulate in float64) divided by the count.",
    )
)

for _name, _np, _combine, _identity, _acc, _strict, _grad in [
    ("sum", np.sum, _lower_add, _identity_sum, _sum_dtype, False, _sum_grad),
    ("max", np.max, _lower_maximum, _identity_max, lambda d: d, True, _extreme_grad("max")),
    ("min", np.min, _lower_minimum, _identity_min, lambda d: d, True, _extreme_grad("min")),
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
            grad=_grad,
            arity=1,
            doc=f"{_name} over `axes` (sorted, non-negative), optionally keeping them as size 1.",
        )
    )

