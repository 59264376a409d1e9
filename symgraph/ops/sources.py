"""Graph sources: named inputs, constants, and weak Python scalars before they are typed."""
from __future__ import annotations

import numpy as np

from .. import dtypes as dt
from .registry import Op, Typing, register


def _var_infer(in_types, attrs):
    return Typing(tuple(attrs["shape"]), attrs["dtype"])


def _const_infer(in_types, attrs):
    value = attrs["value"]
    return Typing(value.shape, value.dtype)


def _scalar_infer(in_types, attrs):
    kind = dt.weak_type(attrs["value"])
    return Typing((), dt.default_dtype(kind))


register(Op("var", "source", _var_infer, lambda **attrs: None, arity=0,
            doc="A named input, bound when the compiled function is called."))
register(Op("const", "source", _const_infer, lambda value: value, arity=0,
            doc="A constant array, embedded in the compiled code."))
register(Op("scalar", "source", _scalar_infer, lambda value: np.asarray(value), arity=0,
            doc="A weak Python scalar (NEP 50); typing turns it into a const of its user's dtype."))
