"""The op registry: one declaration per op, holding every fact about it.

An `Op` carries its shape/dtype rule, its numpy reference (the interpreter and constant
folding run it), its lowering written against the emitter vocabulary (no llvmlite here),
its gradient rule and traits. Rules are built from small combinators in this module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .. import dtypes as dt
from ..errors import ArgumentError, DTypeError, ShapeError


@dataclass(frozen=True)
class Typing:
    """What a shape/dtype rule concludes: the output type, and the dtype each input is
    converted to before the op computes (None leaves that input as it is)."""

    shape: tuple
    dtype: np.dtype
    in_dtypes: tuple = ()
    attrs: dict | None = None  # canonical attributes, once input shapes are known


@dataclass(frozen=True, eq=False)
class Op:
    """Everything symgraph knows about one primitive operation."""

    name: str
    kind: str  # source | elementwise | reduce | movement | matmul | concat
    infer: Callable[..., Typing]  # (in_types, attrs) -> Typing; in_types are (shape, dtype|weak)
    reference: Callable[..., np.ndarray]  # numpy: (*arrays, **attrs) -> array
    lower: Callable | None = None  # elementwise: (em, dtype, *values) -> value
    index_map: Callable | None = None  # movement: (em, out_index, attrs, in_shape) -> in_index
    grad: Callable | None = None  # (g, out, *args, **attrs) -> one cotangent per arg (or None)
    identity: Callable | None = None  # reduce: dtype -> the combine's identity value
    finalize: Callable | None = None  # reduce: (em, dtype, acc, count) -> value (mean divides)
    arity: int | None = None  # None for variadic ops
    commutative: bool = False
    traits: frozenset = field(default_factory=frozenset)
    doc: str = ""


REGISTRY: dict[str, Op] = {}


def register(op: Op) -> Op:
    if op.name in REGISTRY:
        raise ValueError(f"op {op.name!r} registered twice")
    REGISTRY[op.name] = op
    return op


def get_op(name: str) -> Op:
    try:
        return REGISTRY[name]
    except KeyError:
        from ..errors import GraphError

        raise GraphError(f"unknown op {name!r}") from None


# ---------------------------------------------------------------------------------------
# Rule combinators


def broadcast_shapes(opname: str, shapes) -> tuple:
    """NumPy broadcasting, with an error that shows every operand's shape."""
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for axis in range(-ndim, 0):
        size = 1
        for shape in shapes:
            if len(shape) < -axis:
                continue
            d = shape[axis]
            if d == 1:
                continue
            if size != 1 and d != size:
                shown = " and ".join(str(tuple(s)) for s in shapes)
                raise ShapeError(
                    f"{opname} got shapes {shown}: axis {axis} has sizes {size} and {d}, "
                    "which do not broadcast",
                    hint="sizes must match or be 1; reshape or transpose one operand",
                )
            size = d
        out.append(size)
    return tuple(out)


def _dtype_name(d) -> str:
    return d.__name__ if isinstance(d, type) else str(d)


def resolve_ufunc(opname: str, ufunc: np.ufunc, in_dtypes) -> tuple:
    """NumPy's own loop resolution (NEP 50 aware), restricted to symgraph's dtypes."""
    if all(isinstance(d, type) for d in in_dtypes):
        in_dtypes = tuple(dt.default_dtype(d) for d in in_dtypes)
    # numpy's resolve_dtypes takes weak int and float but not bool: a Python bool is np.bool_.
    in_dtypes = tuple(np.dtype(bool) if d is bool else d for d in in_dtypes)
    try:
        resolved = ufunc.resolve_dtypes(tuple(in_dtypes) + (None,) * ufunc.nout)
    except TypeError as exc:
        shown = ", ".join(_dtype_name(d) for d in in_dtypes)
        raise DTypeError(f"{opname} does not support dtypes ({shown}): {exc}") from None
    for d in resolved:
        if d not in dt.SUPPORTED:
            shown = ", ".join(_dtype_name(x) for x in in_dtypes)
            raise DTypeError(
                f"{opname} of ({shown}) would compute in {d}, which symgraph does not support",
                hint="cast the operand with .astype('float32') or .astype('float64') first",
            )
    return resolved


def ufunc_rule(ufunc: np.ufunc, name: str):
    """Elementwise rule: broadcast the shapes, resolve dtypes the way the ufunc does."""

    def infer(in_types, attrs):
        shape = broadcast_shapes(name, [s for s, _ in in_types])
        resolved = resolve_ufunc(name, ufunc, [d for _, d in in_types])
        return Typing(shape, resolved[-1], tuple(resolved[: ufunc.nin]))

    return infer


def float_rule(name: str):
    """Unary float function (like exp) whose dtype resolution follows np.exp's."""
    return ufunc_rule(np.exp, name)


def normalize_axes(opname: str, axis, ndim: int) -> tuple:
    """Axis argument (None, int or tuple of ints, negatives allowed) as sorted positives."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        axes = (axis,)
    elif isinstance(axis, (tuple, list)):
        axes = tuple(axis)
    else:
        raise ShapeError(f"{opname}: axis must be an integer or a tuple of integers, got "
                         f"{str(repr(axis))[:60]}")
    out = []
    for a in axes:
        if not isinstance(a, (int, np.integer)) or isinstance(a, bool):
            raise ShapeError(f"{opname}: axis {a!r} is not an integer")
        if not -ndim <= a < ndim:
            raise ShapeError(f"{opname}: axis {a} is out of range for {ndim}-d input")
        out.append(int(a) % ndim if ndim else 0)
    if len(set(out)) != len(out):
        raise ShapeError(f"{opname}: repeated axis in {axis!r}")
    return tuple(sorted(out))


def keepdims_flag(opname: str, attrs) -> bool:
    """The keepdims attribute, which must be a bool (numpy's truth value of an array is an
    error, and a string would always be true)."""
    value = attrs.get("keepdims", False)
    if not isinstance(value, (bool, np.bool_, int)) or isinstance(value, np.ndarray):
        raise ArgumentError(f"{opname}: keepdims must be True or False, got {str(repr(value))[:60]}")
    return bool(value)


def attr_key(attrs: dict[str, Any]) -> tuple:
    """A hashable, order-independent form of an attribute dict (arrays by dtype and bytes)."""
    items = []
    for key in sorted(attrs):
        value = attrs[key]
        if isinstance(value, np.ndarray):
            value = ("ndarray", value.dtype.str, value.shape, value.tobytes())
        elif isinstance(value, np.dtype):
            value = ("dtype", value.str)
        elif isinstance(value, float):
            value = ("float", value.hex())
        items.append((key, value))
    return tuple(items)
