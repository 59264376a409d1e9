"""Elementwise primitives: arithmetic, comparisons, logic, math functions, where, cast.

Each lowering receives the emitter `em`, the computation dtype (inputs are already
converted to it) and the operand values, and composes the emitter vocabulary.
"""
from __future__ import annotations

import math

import numpy as np

from .. import dtypes as dt
from ..errors import DTypeError
from .registry import Op, Typing, broadcast_shapes, float_rule, register, ufunc_rule

ERR_NEGATIVE_INT_POWER = 1  # status code native code returns for int ** negative int


def _ufunc_op(name, ufunc, lower, *, commutative=False, rule=None, reference=None, doc="",
              grad=None, traits=()):
    return register(
        Op(
            name=name,
            kind="elementwise",
            infer=rule or ufunc_rule(ufunc, name),
            reference=reference or ufunc,
            lower=lower,
            grad=grad,
            arity=ufunc.nin,
            commutative=commutative,
            traits=frozenset(traits),
            doc=doc,
        )
    )


def _fe():
    from .. import frontend  # late: gradient rules build expressions, and the frontend imports ops

    return frontend


def _ad():
    from .. import autodiff

    return autodiff


# --- arithmetic ------------------------------------------------------------------------


def _lower_add(em, d, a, b):
    return em.or_(a, b) if dt.is_bool(d) else em.add(d, a, b)


def _lower_mul(em, d, a, b):
    return em.and_(a, b) if dt.is_bool(d) else em.mul(d, a, b)


def _lower_floordiv(em, d, a, b):
    if dt.is_int(d):
        # numpy: x // 0 == 0 and INT_MIN // -1 wraps; native idiv would trap on both.
        zero, one, minus_one = em.const(d, 0), em.const(d, 1), em.const(d, -1)
        b_is_zero = em.cmp("==", d, b, zero)
        b_is_m1 = em.cmp("==", d, b, minus_one)
        safe_b = em.select(em.or_(b_is_zero, b_is_m1), one, b)
        q = em.sdiv(d, a, safe_b)
        r = em.srem(d, a, safe_b)
        # Truncated quotient rounds toward zero; floor needs one less when signs differ.
        needs_fix = em.and_(em.cmp("!=", d, r, zero), em.cmp("<", d, em.xor(r, safe_b), zero))
        q = em.select(needs_fix, em.sub(d, q, one), q)
        q = em.select(b_is_m1, em.neg(d, a), q)
        return em.select(b_is_zero, zero, q)
    div, _ = _float_divmod(em, d, a, b)
    return div


def _lower_mod(em, d, a, b):
    if dt.is_int(d):
        zero, one, minus_one = em.const(d, 0), em.const(d, 1), em.const(d, -1)
        b_is_zero = em.cmp("==", d, b, zero)
        b_bad = em.or_(b_is_zero, em.cmp("==", d, b, minus_one))
        safe_b = em.select(b_bad, one, b)
        r = em.srem(d, a, safe_b)
        needs_fix = em.and_(em.cmp("!=", d, r, zero), em.cmp("<", d, em.xor(r, safe_b), zero))
        r = em.select(needs_fix, em.add(d, r, safe_b), r)
        return em.select(b_bad, zero, r)
    _, mod = _float_divmod(em, d, a, b)
    return mod


def _float_divmod(em, d, a, b):
    """numpy's npy_divmod for floats, step by step, so results match bit for bit."""
    zero = em.const(d, 0.0)
    mod = em.fmod(d, a, b)
    b_is_zero = em.cmp("==", d, b, zero)
    div = em.div(d, em.sub(d, a, mod), b)
    mod_nonzero = em.cmp("!=", d, mod, zero)  # NaN counts as nonzero, as in C
    signs_differ = em.xor(em.cmp("<", d, b, zero), em.cmp("<", d, mod, zero))
    fix = em.and_(mod_nonzero, signs_differ)
    mod = em.select(fix, em.add(d, mod, b), em.select(mod_nonzero, mod, em.copysign(d, zero, b)))
    div = em.select(fix, em.sub(d, div, em.const(d, 1.0)), div)
    floor = em.floor(d, div)
    floor = em.select(
        em.cmp(">", d, em.sub(d, div, floor), em.const(d, 0.5)), em.add(d, floor, em.const(d, 1.0)), floor
    )
    quotient = em.div(d, a, b)
    floor = em.select(em.cmp("!=", d, div, zero), floor, em.copysign(d, zero, quotient))
    return em.select(b_is_zero, quotient, floor), em.select(b_is_zero, em.fmod(d, a, b), mod)


def _lower_pow(em, d, a, b, scalar_operands=(False, False)):
    if dt.is_float(d):
        result = em.math("pow", d, a, b)
        if scalar_operands[1]:
            # numpy's loop takes sqrt for a broadcast exponent of 0.5, which differs from pow
            # on -0.0 and -inf; match it so compiled code and numpy agree bit for bit.
            half = em.cmp("==", d, b, em.const(d, 0.5))
            result = em.select(half, em.sqrt(d, a), result)
        return result
    if dt.is_bool(d):  # numpy has no bool power loop; resolution never picks bool
        raise DTypeError("pow does not support bool operands")
    em.raise_if(em.cmp("<", d, b, em.const(d, 0)), ERR_NEGATIVE_INT_POWER)
    # Branch-free square-and-multiply over every exponent bit: wraps like numpy, vectorizes.
    result, base, one = em.const(d, 1), a, em.const(d, 1)
    for bit in range(d.itemsize * 8 - 1):
        take = em.cmp("!=", d, em.and_(em.lshr(d, b, bit), one), em.const(d, 0))
        result = em.select(take, em.mul(d, result, base), result)
        base = em.mul(d, base, base)
    return result


def _lower_maximum(em, d, a, b):
    if dt.is_bool(d):
        return em.or_(a, b)
    # numpy: (a > b || isnan(a)) ? a : b, so NaN propagates and ties return b.
    take_a = em.cmp(">", d, a, b)
    if dt.is_float(d):
        take_a = em.or_(take_a, em.isnan(d, a))
    return em.select(take_a, a, b)


def _lower_minimum(em, d, a, b):
    if dt.is_bool(d):
        return em.and_(a, b)
    take_a = em.cmp("<", d, a, b)
    if dt.is_float(d):
        take_a = em.or_(take_a, em.isnan(d, a))
    return em.select(take_a, a, b)


def _pow_reference(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if (a.dtype.kind in "iu" and b.dtype.kind in "iu" and np.broadcast(a, b).size
            and np.any(b < 0)):
        raise ValueError("Integers to negative integer powers are not allowed.")
    return np.power(a, b)


def _binary_grad(da, db):
    """A broadcasting binary rule from the cotangents before summing back to each shape."""

    def rule(g, out, a, b):
        ub = _ad().unbroadcast
        return ub(da(g, out, a, b), a), ub(db(g, out, a, b), b)

    return rule


def _pow_grad_base(g, out, a, b):
    # b * a**(b-1) is 0 * inf at a = b = 0; the derivative there is 0.
    return g * _fe().where(b == 0, 0, b * a ** (b - 1))


def _pow_grad_exponent(g, out, a, b):
    # d(a**b)/db = a**b log a, which tends to 0 at a = 0 (log(1) stands in for log(0)).
    return g * out * _fe().log(_fe().where(a == 0, 1, a))


def _picks_first(a, b, greater):
    """Where maximum/minimum return a: strictly better or NaN (ties return b, as numpy)."""
    return ((a > b) if greater else (a < b)) | (a != a)


def _extreme_grad(greater):
    def rule(g, out, a, b):
        where, ub = _fe().where, _ad().unbroadcast
        first = _picks_first(a, b, greater)
        return ub(where(first, g, 0), a), ub(where(first, 0, g), b)

    return rule


_ufunc_op("add", np.add, _lower_add, commutative=True,
          grad=_binary_grad(lambda g, o, a, b: g, lambda g, o, a, b: g))
_ufunc_op("sub", np.subtract, lambda em, d, a, b: em.sub(d, a, b),
          grad=_binary_grad(lambda g, o, a, b: g, lambda g, o, a, b: -g))
_ufunc_op("mul", np.multiply, _lower_mul, commutative=True,
          grad=_binary_grad(lambda g, o, a, b: g * b, lambda g, o, a, b: g * a))
_ufunc_op("div", np.true_divide, lambda em, d, a, b: em.div(d, a, b),
          grad=_binary_grad(lambda g, o, a, b: g / b, lambda g, o, a, b: -g * o / b))
_ufunc_op("floordiv", np.floor_divide, _lower_floordiv,
          grad=lambda g, out, a, b: (None, None))  # piecewise constant
_ufunc_op("mod", np.remainder, _lower_mod,
          grad=_binary_grad(lambda g, o, a, b: g, lambda g, o, a, b: -g * (a // b)))
_ufunc_op("pow", np.power, _lower_pow, reference=_pow_reference, traits={"scalar_operands"},
          grad=_binary_grad(_pow_grad_base, _pow_grad_exponent))
_ufunc_op("maximum", np.maximum, _lower_maximum, commutative=True, grad=_extreme_grad(True))
_ufunc_op("minimum", np.minimum, _lower_minimum, commutative=True, grad=_extreme_grad(False))
_ufunc_op("neg", np.negative, lambda em, d, a: em.neg(d, a), grad=lambda g, out, a: (-g,))
_ufunc_op("abs", np.absolute, lambda em, d, a: a if dt.is_bool(d) else em.abs(d, a),
          grad=lambda g, out, a: (_fe().where(a > 0, g, _fe().where(a < 0, -g, 0)),))

# --- comparisons and logic ---------------------------------------------------------------

for _name, _ufunc, _pred in [
    ("lt", np.less, "<"),
    ("le", np.less_equal, "<="),
    ("gt", np.greater, ">"),
    ("ge", np.greater_equal, ">="),
    ("eq", np.equal, "=="),
    ("ne", np.not_equal, "!="),
]:
    _ufunc_op(
        _name,
        _ufunc,
        (lambda pred: lambda em, d, a, b: em.cmp(pred, d, a, b))(_pred),
        commutative=_pred in ("==", "!="),
    )

_ufunc_op("and", np.bitwise_and, lambda em, d, a, b: em.and_(a, b), commutative=True)
_ufunc_op("or", np.bitwise_or, lambda em, d, a, b: em.or_(a, b), commutative=True)
_ufunc_op("xor", np.bitwise_xor, lambda em, d, a, b: em.xor(a, b), commutative=True)
_ufunc_op("invert", np.invert, lambda em, d, a: em.not_(a))

# --- math functions ------------------------------------------------------------------------

_LN2, _LN10 = math.log(2.0), math.log(10.0)

# Each derivative is (cotangent, output, input) -> cotangent of the input.
for _name, _ufunc, _derivative in [
    ("exp", np.exp, lambda g, y, x: g * y),
    ("exp2", np.exp2, lambda g, y, x: g * y * _LN2),
    ("expm1", np.expm1, lambda g, y, x: g * (y + 1)),
    ("log", np.log, lambda g, y, x: g / x),
    ("log2", np.log2, lambda g, y, x: g / (x * _LN2)),
    ("log10", np.log10, lambda g, y, x: g / (x * _LN10)),
    ("log1p", np.log1p, lambda g, y, x: g / (x + 1)),
    ("sin", np.sin, lambda g, y, x: g * _fe().cos(x)),
    ("cos", np.cos, lambda g, y, x: -g * _fe().sin(x)),
    ("tan", np.tan, lambda g, y, x: g * (y * y + 1)),
    ("sinh", np.sinh, lambda g, y, x: g * _fe().cosh(x)),
    ("cosh", np.cosh, lambda g, y, x: g * _fe().sinh(x)),
    ("tanh", np.tanh, lambda g, y, x: g * (1 - y * y)),
]:
    _ufunc_op(_name, _ufunc, (lambda n: lambda em, d, a: em.math(n, d, a))(_name),
              grad=(lambda f: lambda g, out, x: (f(g, out, x),))(_derivative))

_ufunc_op("sqrt", np.sqrt, lambda em, d, a: em.sqrt(d, a), grad=lambda g, out, x: (g / (out * 2),))
_ufunc_op("floor", np.floor, lambda em, d, a: em.floor(d, a) if dt.is_float(d) else a,
          grad=lambda g, out, x: (None,))  # piecewise constant


def _sigmoid_reference(x):
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    return np.exp(-np.logaddexp(0, -x))


register(
    Op(
        name="sigmoid",
        kind="elementwise",
        infer=float_rule("sigmoid"),
        reference=_sigmoid_reference,
        lower=lambda em, d, a: em.math("sigmoid", d, a),
        grad=lambda g, out, x: (g * out * (1 - out),),
        arity=1,
        doc="1 / (1 + exp(-x)), computed without overflow.",
    )
)

# --- where and cast ------------------------------------------------------------------------


def _where_infer(in_types, attrs):
    shape = broadcast_shapes("where", [s for s, _ in in_types])
    _, x, y = (d for _, d in in_types)
    if isinstance(x, type) and isinstance(y, type):
        out = np.result_type(dt.default_dtype(x), dt.default_dtype(y))
    else:
        out = np.result_type(*(d if not isinstance(d, type) else d(0) for d in (x, y)))
    out = dt.check_supported(np.dtype(out), what="where result dtype")
    return Typing(shape, out, (np.dtype(bool), out, out))


register(
    Op(
        name="where",
        kind="elementwise",
        infer=_where_infer,
        reference=lambda c, x, y: np.where(np.asarray(c).astype(bool), x, y),
        lower=lambda em, d, c, x, y: em.select(c, x, y),
        grad=lambda g, out, c, x, y: (None, _ad().unbroadcast(_fe().where(c, g, 0), x),
                                      _ad().unbroadcast(_fe().where(c, 0, g), y)),
        arity=3,
        doc="Elementwise select: x where cond is true, else y.",
    )
)


def _cast_infer(in_types, attrs):
    ((shape, src),) = in_types
    target = dt.as_dtype(attrs["dtype"], what="astype target")
    src = dt.default_dtype(src) if isinstance(src, type) else src
    del src  # converting the input to the target dtype is the whole op
    return Typing(tuple(shape), target, (target,))


def _cast_reference(x, dtype):
    with np.errstate(invalid="ignore", over="ignore"):
        return np.asarray(x).astype(dtype)


register(
    Op(
        name="cast",
        kind="elementwise",
        infer=_cast_infer,
        reference=_cast_reference,
        lower=lambda em, d, a: a,  # the kernel converts inputs to in_dtypes: that is the cast
        grad=lambda g, out, x, dtype: (g,),  # autodiff casts it back; ints carry no gradient
        arity=1,
        doc="Convert to another dtype with numpy's astype semantics.",
    )
)
