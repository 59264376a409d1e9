"""Every registered op, every dtype, the shape groups that stress codegen: compiled code
(opt_level=0 and the default pipeline) against the reference interpreter and against numpy
called directly. The table below says how to build each op from the frontend; a test fails
as soon as an op is registered without an entry here."""
from __future__ import annotations

import os
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

import symgraph as sg
from symgraph.ops import REGISTRY

from helpers import DTYPES, assert_same, random_array, tolerance
from test_nn_ops import np_conv2d, np_pool2d

MATHLIB = os.path.exists(os.path.join(os.path.dirname(sg.__file__), "codegen", "mathlib.py"))


@dataclass(frozen=True)
class Case:
    """How to build one op: `build(*exprs, **attrs)` in the frontend and `numpy(*arrays,
    **attrs)` directly, over groups of (input shapes, attrs). `args` gives each operand's
    values: "x" the dtype under test, "bool" always bool, "pos" positive values of the
    dtype, "mild" no huge finite values (their sums depend on summation order)."""

    build: Callable
    numpy: Callable
    groups: tuple
    args: tuple = ("x",)
    kind: str = "elementwise"  # or transcendental | reduce | matmul | exact
    dtypes: tuple = tuple(str(d) for d in DTYPES)
    note: str = ""
    extra: dict = field(default_factory=dict)


UNARY = tuple(((s,), {}) for s in [(), (0,), (1,), (3, 4)])
BINARY = tuple((s, {}) for s in [((), ()), ((0,), (0,)), ((1,), (1,)), ((3, 1), (1, 4)),
                                 ((2, 3), (3,))])
TERNARY = tuple((s, {}) for s in [((), (), ()), ((0,), (0,), (0,)), ((1,), (1,), (1,)),
                                  ((3, 1), (1, 4), (4,)), ((2, 3), (3,), ())])
REDUCE = tuple([
    (((3, 4),), {"axis": None, "keepdims": False}),
    (((3, 4),), {"axis": 1, "keepdims": True}),
    (((2, 3, 4),), {"axis": (0, 2), "keepdims": False}),
    (((2, 3, 4),), {"axis": -1, "keepdims": False}),
    (((0, 4),), {"axis": 1, "keepdims": False}),
    (((1,),), {"axis": 0, "keepdims": False}),
    (((),), {"axis": None, "keepdims": True}),
    (((5, 37),), {"axis": 0, "keepdims": False}),
])
ARG_REDUCE = tuple([
    (((3, 4),), {"axis": None, "keepdims": False}),
    (((3, 4),), {"axis": 1, "keepdims": True}),
    (((2, 3, 4),), {"axis": 0, "keepdims": False}),
    (((0, 4),), {"axis": 1, "keepdims": False}),
    (((1,),), {"axis": -1, "keepdims": False}),
    (((5, 37),), {"axis": 1, "keepdims": False}),
])
REDUCE_EMPTY_OK = REDUCE + ((((0, 4),), {"axis": 0, "keepdims": False}),)


def _binop(name):
    import operator

    return {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
            "div": operator.truediv, "floordiv": operator.floordiv, "mod": operator.mod,
            "pow": operator.pow, "lt": operator.lt, "le": operator.le, "gt": operator.gt,
            "ge": operator.ge, "eq": operator.eq, "ne": operator.ne, "and": operator.and_,
            "or": operator.or_, "xor": operator.xor}[name]


def _binary(name, ufunc, args=("x", "x")):
    op = _binop(name)
    return Case(lambda a, b: op(a, b), lambda a, b: ufunc(a, b), BINARY, args)


def _reduction(fn, npfn, groups):
    return Case(lambda x, axis, keepdims: fn(x, axis, keepdims),
                lambda x, axis, keepdims: np.asarray(npfn(x, axis=axis, keepdims=keepdims)),
                groups, ("mild",), kind="reduce")


def _sigmoid_numpy(x):
    x = np.asarray(x)
    x = x.astype(np.float64) if x.dtype.kind == "i" else x  # negating INT_MIN would wrap
    return np.asarray(np.exp(-np.logaddexp(0, -x)))


def _cast_case(target):
    return Case(lambda x: x.astype(target), lambda x: x.astype(target), UNARY, ("finite",),
                kind="exact")


def _cond_build(p, x):
    return sg.cond(p, lambda v: v + v, lambda v: v * v, x)


def _cond_numpy(p, x):
    return np.asarray(x + x if bool(p) else x * x)


def _while_build(x):
    (i, v) = sg.while_loop(lambda i, v: i < 3, lambda i, v: (i + 1, v + v), (sg.Constant(0), x))
    return v


def _scan_build(x):
    carry, ys = sg.scan(lambda c, row: (c + row, c * row), x[0] - x[0], x)
    return ys


def _scan_numpy(x):
    c = x[0] - x[0]
    ys = []
    for row in x:
        ys.append(c * row)
        c = c + row
    return np.stack(ys) if ys else np.empty_like(x)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _conv_numpy(x, w, stride=1, padding=0, dilation=1, groups=1):
    """Cross-correlation over NCHW with OIHW weights, one kernel tap at a time."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    dtype = np.result_type(x, w)
    if dtype == np.bool_:
        raise TypeError("conv2d of booleans")
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))).astype(dtype)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (wd - dw * (kw - 1) - 1) // sw + 1
    og = o // groups
    out = np.zeros((n, o, oh, ow), dtype)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
            for g in range(groups):
                out[:, g * og:(g + 1) * og] += np.einsum(
                    "nchw,oc->nohw", patch[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og, :, i, j].astype(dtype))
    return out


def _pool_numpy(kind):
    def pool(x, kernel_size, stride=None, padding=0):
        if x.dtype == np.bool_ or (kind == "avg" and x.dtype.kind != "f"):
            raise TypeError(f"{kind}_pool2d of {x.dtype}")
        (kh, kw), (ph, pw) = _pair(kernel_size), _pair(padding)
        sh, sw = _pair(stride) if stride is not None else (kh, kw)
        fill = 0 if kind == "avg" else (-np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min)
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
        oh, ow = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
        taps = [x[:, :, i: i + sh * (oh - 1) + 1: sh, j: j + sw * (ow - 1) + 1: sw]
                for i in range(kh) for j in range(kw)]
        if kind == "max":
            return np.max(np.stack(taps), axis=0)
        return (np.sum(np.stack(taps), axis=0) / x.dtype.type(kh * kw)).astype(x.dtype)

    return pool


CASES: dict[str, Case] = {
    **{n: _binary(n, u) for n, u in [
        ("add", np.add), ("sub", np.subtract), ("mul", np.multiply), ("div", np.true_divide),
        ("floordiv", np.floor_divide), ("mod", np.remainder), ("lt", np.less),
        ("le", np.less_equal), ("gt", np.greater), ("ge", np.greater_equal), ("eq", np.equal),
        ("ne", np.not_equal), ("and", np.bitwise_and), ("or", np.bitwise_or),
        ("xor", np.bitwise_xor)]},
    "pow": _binary("pow", np.power, ("x", "pos")),
    "maximum": Case(sg.maximum, np.maximum, BINARY, ("x", "x")),
    "minimum": Case(sg.minimum, np.minimum, BINARY, ("x", "x")),
    "neg": Case(lambda x: -x, np.negative, UNARY),
    "abs": Case(abs, np.absolute, UNARY),
    "invert": Case(lambda x: ~x, np.invert, UNARY),
    **{n: Case(getattr(sg, n), getattr(np, n), UNARY, kind="transcendental")
       for n in ["exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sinh", "cosh", "tanh"]},
    # Huge trig arguments (argument reduction) have their own test below.
    **{n: Case(getattr(sg, n), getattr(np, n), UNARY, ("moderate",), kind="transcendental")
       for n in ["sin", "cos", "tan"]},
    "sqrt": Case(sg.sqrt, np.sqrt, UNARY),
    "floor": Case(sg.floor, np.floor, UNARY),
    "sigmoid": Case(sg.sigmoid, _sigmoid_numpy, UNARY, kind="transcendental"),
    "where": Case(sg.where, np.where, TERNARY, ("bool", "x", "x")),
    "cast": _cast_case("float32"),
    "matmul": Case(lambda a, b: a @ b, np.matmul, tuple((s, {}) for s in [
        ((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4, 2)),
        ((1, 3, 4), (5, 4, 2)), ((3, 0), (0, 2)), ((0, 4), (4, 2)), ((17, 33), (33, 9))]),
        ("mild", "mild"), kind="matmul"),
    "concat": Case(lambda *xs, axis: sg.concatenate(xs, axis),
                   lambda *xs, axis: np.concatenate(xs, axis), (
                       (((2, 3), (4, 3)), {"axis": 0}), (((2, 3), (2, 0)), {"axis": -1}),
                       (((1,), (1,), (1,)), {"axis": 0}), (((0, 2), (0, 2)), {"axis": 1})),
                   ("x", "x", "x"), kind="exact"),
    "reshape": Case(lambda x, shape: sg.reshape(x, shape), lambda x, shape: np.reshape(x, shape), (
        (((3, 4),), {"shape": (4, 3)}), (((2, 3, 4),), {"shape": (6, -1)}),
        (((),), {"shape": (1, 1)}), (((0, 3),), {"shape": (3, 0)}), (((1,),), {"shape": ()}),
        (((2, 1, 3),), {"shape": (3, 2)})), kind="exact"),
    "transpose": Case(lambda x, axes: sg.transpose(x, axes), lambda x, axes: np.transpose(x, axes), (
        (((2, 3, 4),), {"axes": (1, 2, 0)}), (((3, 4),), {"axes": None}),
        (((),), {"axes": None}), (((0, 2),), {"axes": (1, 0)}), (((1, 3),), {"axes": (-1, 0)})),
        kind="exact"),
    "slice": Case(lambda x, key: x[key], lambda x, key: np.array(x[key]), (
        (((5,),), {"key": slice(None, None, -1)}), (((3, 4),), {"key": (1, slice(None, None, 2))}),
        (((3, 4),), {"key": (slice(-1, 0, -2), -1)}), (((5,),), {"key": slice(3, 1)}),
        (((),), {"key": ()}), (((0, 3),), {"key": (slice(None), slice(1, None))}),
        (((4, 5, 6),), {"key": (slice(None, None, -2), 2, slice(5, None, -3))}),
        (((1,),), {"key": -1})), kind="exact"),
    "broadcast_to": Case(lambda x, shape: sg.broadcast_to(x, shape),
                         lambda x, shape: np.broadcast_to(x, shape).copy(), (
                             (((3, 1),), {"shape": (2, 3, 4)}), (((),), {"shape": (2,)}),
                             (((1,),), {"shape": (0,)}), (((4,),), {"shape": (3, 4)})),
                         kind="exact"),
    "sum": _reduction(sg.sum, np.sum, REDUCE_EMPTY_OK),
    "mean": _reduction(sg.mean, np.mean, REDUCE_EMPTY_OK),
    "max": _reduction(sg.max, np.max, REDUCE),
    "min": _reduction(sg.min, np.min, REDUCE),
    "cond": Case(_cond_build, _cond_numpy, (
        (((), (3,)), {}), (((), (2, 2)), {}), (((), ()), {})), ("bool", "x"), kind="exact"),
    "while": Case(_while_build, lambda x: np.asarray(x + x + x + x + x + x + x + x), UNARY),
    "scan": Case(_scan_build, _scan_numpy, ((((3, 2),), {}), (((1,),), {}), (((4,),), {})),
                 kind="exact"),
    "argmax": Case(lambda x, axis, keepdims: sg.argmax(x, axis, keepdims),
                   lambda x, axis, keepdims: np.asarray(np.argmax(x, axis=axis, keepdims=keepdims)),
                   ARG_REDUCE, kind="exact"),
    "argmin": Case(lambda x, axis, keepdims: sg.argmin(x, axis, keepdims),
                   lambda x, axis, keepdims: np.asarray(np.argmin(x, axis=axis, keepdims=keepdims)),
                   ARG_REDUCE, kind="exact"),
    "take": Case(lambda x, i, axis: sg.take(x, i, axis), lambda x, i, axis: np.take(x, i, axis), (
        (((3, 4), (5,)), {"axis": 0}), (((2, 3), (2, 2)), {"axis": 1}),
        (((3,), ()), {"axis": None}), (((3, 0), (0,)), {"axis": 0}),
        (((2, 3, 1), (4,)), {"axis": -2})), ("x", "index"), kind="exact"),
    "conv2d": Case(lambda x, w, **kw: sg.conv2d(x, w, **kw), _conv_numpy, (
        (((1, 2, 5, 5), (3, 2, 3, 3)), {}),
        (((2, 4, 6, 5), (4, 2, 2, 3)), {"stride": 2, "padding": 1, "groups": 2}),
        (((1, 1, 7, 7), (1, 1, 3, 3)), {"dilation": 2, "padding": (1, 2)}),
        (((0, 1, 3, 3), (2, 1, 1, 1)), {})), ("mild", "mild"), kind="matmul"),
    "max_pool2d": Case(lambda x, **kw: sg.max_pool2d(x, **kw), _pool_numpy("max"), (
        (((1, 2, 4, 4),), {"kernel_size": 2}),
        (((2, 1, 5, 6),), {"kernel_size": 3, "stride": 2, "padding": 1}),
        (((1, 1, 1, 1),), {"kernel_size": 1})), kind="exact"),
    "avg_pool2d": Case(lambda x, **kw: sg.avg_pool2d(x, **kw), _pool_numpy("avg"), (
        (((1, 2, 4, 4),), {"kernel_size": 2}),
        (((2, 1, 5, 6),), {"kernel_size": 3, "stride": 2, "padding": 1}),
        (((1, 1, 1, 1),), {"kernel_size": 1})), ("mild",), kind="reduce"),
    # Frontend-derived functions (not primitives), covered the same way.
    "relu": Case(sg.relu, lambda x: np.maximum(x, 0), UNARY),
    "clip": Case(lambda x: sg.clip(x, -1, 2), lambda x: np.clip(x, -1, 2), UNARY),
    "rsub_scalar": Case(lambda x: 3 - x, lambda x: 3 - x, UNARY),
    "mul_scalar_float": Case(lambda x: x * 1.5, lambda x: x * 1.5, UNARY),
    **{f"cast_{t}": _cast_case(t) for t in ["bool", "int32", "int64", "float64"]},
}
# Ops made only by other ops' frontends: "item" picks one result of a control node.
CASES["item"] = CASES["cond"]
CASES["conv2d"] = Case(lambda x, w, **a: sg.conv2d(x, w, **a), np_conv2d, (
    (((2, 3, 6, 5), (4, 3, 3, 3)), {"padding": 1}),
    (((1, 4, 7, 7), (6, 2, 3, 2)), {"stride": 2, "dilation": (2, 1), "groups": 2}),
    (((0, 2, 3, 3), (1, 2, 1, 1)), {})), ("mild", "mild"), kind="matmul")
CASES["max_pool2d"] = Case(lambda x, **a: sg.max_pool2d(x, **a), lambda x, **a: np_pool2d("max", x, **a),
                           ((((2, 3, 5, 6),), {"kernel_size": 3, "stride": 2, "padding": 1}),
                            (((1, 1, 2, 2),), {"kernel_size": 2})), kind="exact")
CASES["avg_pool2d"] = Case(lambda x, **a: sg.avg_pool2d(x, **a), lambda x, **a: np_pool2d("avg", x, **a),
                           ((((2, 3, 5, 6),), {"kernel_size": (2, 3), "padding": 1}),
                            (((1, 1, 2, 2),), {"kernel_size": 2})), ("mild",), kind="reduce")
SOURCES = {name for name, op in REGISTRY.items() if op.kind == "source"}
OPS = sorted(CASES)


def test_every_registered_op_has_a_case():
    missing = sorted(set(REGISTRY) - SOURCES - set(CASES))
    assert not missing, f"ops without a test case in tests/test_ops.py: {missing}"


def _inputs(case, shapes, dtype, rng):
    arrays = []
    for kind, shape in zip(case.args * len(shapes), shapes):
        if kind == "bool":
            arrays.append(random_array(rng, shape, "bool"))
        elif kind == "pos":
            arrays.append(random_array(rng, shape, dtype, edges=False, low=0, high=4)
                          if np.dtype(dtype).kind == "i" else random_array(rng, shape, dtype))
        elif kind == "index":  # in range for an axis of size 3, negatives included
            arrays.append(rng.integers(-3, 3, size=shape).astype(np.int64))
        elif kind == "moderate":
            x = random_array(rng, shape, dtype)
            if x.dtype != np.bool_:
                x[np.abs(x.astype(np.float64)) > 1e4] = 7
            arrays.append(x)
        elif kind == "mild":
            arrays.append(random_array(rng, shape, dtype, edges=np.dtype(dtype).kind != "f"))
        elif kind == "finite":
            arrays.append(random_array(rng, shape, dtype, edges=np.dtype(dtype).kind != "f",
                                       low=-300, high=300))
        else:
            arrays.append(random_array(rng, shape, dtype))
    return arrays


def _numpy(case, arrays, attrs):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of an empty slice is NaN
        return np.asarray(case.numpy(*arrays, **attrs))


def _compare(got, want, case, arrays, context):
    terms, magnitude = 1, 1.0
    if case.kind in ("reduce", "matmul"):
        terms = max((a.size for a in arrays), default=1)
        finite = [np.abs(a[np.isfinite(a)]).max(initial=0) for a in arrays if a.dtype.kind == "f"]
        magnitude = float(max(finite, default=1.0)) ** (2 if case.kind == "matmul" else 1)
        kind = "reduce"
    elif case.kind == "transcendental":
        kind = "transcendental"
    else:
        kind = "elementwise"
    if case.kind == "exact":
        assert_same(got, want, rtol=0, atol=0, context=context)
    else:
        assert_same(got, want, kind=kind, terms=terms, magnitude=magnitude, context=context)


@pytest.mark.parametrize("dtype", [str(d) for d in DTYPES])
@pytest.mark.parametrize("name", OPS)
def test_op(name, dtype):
    """One graph holds every shape group of the op, so each opt level compiles once."""
    case = CASES[name]
    rng = np.random.default_rng(zlib.crc32(f"{name}/{dtype}".encode()))
    groups, outputs, inputs, wants = [], [], {}, []
    for gi, (shapes, attrs) in enumerate(case.groups):
        arrays = _inputs(case, shapes, dtype, rng)
        try:
            want = _numpy(case, arrays, attrs)
        except (TypeError, ValueError) as exc:
            want = exc
        if not isinstance(want, Exception) and want.dtype not in DTYPES:
            want = TypeError(f"numpy computes in {want.dtype}, which symgraph does not support")
        names = [f"g{gi}_{k}" for k in range(len(shapes))]
        variables = [sg.Variable(n) for n in names]
        groups.append((gi, shapes, attrs, arrays))
        wants.append(want)
        inputs.update(zip(names, arrays))
        try:
            outputs.append(case.build(*variables, **attrs))
        except sg.SymgraphError as exc:
            pytest.fail(f"{name} group {shapes} {attrs}: building raised {exc}")
    failures = [w for w in wants if isinstance(w, Exception)]
    if failures:
        # numpy rejects this dtype for the op: symgraph must reject it with the builtin
        # numpy raised (wrapped in a SymgraphError), never compute something.
        assert len(failures) == len(wants), f"numpy failed only on some groups: {failures}"
        builtin = type(failures[0]).__mro__[1] if type(failures[0]).__name__ == "UFuncTypeError" \
            else type(failures[0])
        for opt_level in (0, 2):
            with pytest.raises(sg.SymgraphError) as info:
                sg.compile(outputs, opt_level=opt_level)(**inputs)
            assert isinstance(info.value, (TypeError, ValueError)), repr(info.value)
            assert isinstance(info.value, builtin) or builtin is TypeError, (
                f"numpy raised {builtin.__name__}, symgraph {type(info.value).__name__}")
        with pytest.raises(sg.SymgraphError):
            sg.evaluate(outputs, **inputs)
        return
    interpreted = sg.evaluate(outputs, **inputs)
    results = {lvl: sg.compile(outputs, opt_level=lvl)(**inputs) for lvl in (0, 2)}
    for (gi, shapes, attrs, arrays), want, ref in zip(groups, wants, interpreted):
        context = f"{name}[{dtype}] group {gi}: shapes {shapes} attrs {attrs}"
        _compare(ref, want, case, arrays, context + " (interpreter vs numpy)")
        for lvl, got in results.items():
            _compare(got[gi], want, case, arrays, context + f" (compiled opt_level={lvl} vs numpy)")
            _compare(got[gi], ref, case, arrays, context + f" (compiled opt_level={lvl} vs interpreter)")


PROMOTION_OPS = ["add", "mul", "div", "floordiv", "maximum", "lt", "pow", "where"]


@pytest.mark.parametrize("name", PROMOTION_OPS)
def test_promotion_between_dtypes(name):
    """All 25 dtype pairs in one graph: result dtypes and values follow NumPy 2."""
    case = CASES[name]
    rng = np.random.default_rng(7)
    outputs, inputs, wants = [], {}, []
    for i, da in enumerate(DTYPES):
        for j, db in enumerate(DTYPES):
            a = random_array(rng, (3,), da)
            b = random_array(rng, (3,), db, edges=False, low=0, high=3)
            va, vb = sg.Variable(f"a{i}{j}"), sg.Variable(f"b{i}{j}")
            if name == "where":
                c = random_array(rng, (3,), "bool")
                vc = sg.Variable(f"c{i}{j}")
                arrays, vs = (c, a, b), (vc, va, vb)
            else:
                arrays, vs = (a, b), (va, vb)
            try:
                want = _numpy(case, arrays, {})
            except TypeError:
                continue
            if want.dtype not in DTYPES:  # bool // bool computes in int8: test_op covers it
                continue
            inputs.update({v.name: x for v, x in zip(vs, arrays)})
            outputs.append(case.build(*vs))
            wants.append((want, f"{name}({da}, {db})", arrays))
    got_all = sg.compile(outputs)(**inputs)
    ref_all = sg.evaluate(outputs, **inputs)
    for got, ref, (want, context, arrays) in zip(got_all, ref_all, wants):
        _compare(got, want, case, arrays, context)
        _compare(ref, want, case, arrays, context + " (interpreter)")


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_division_edges_never_trap(dtype):
    """x // 0, x % 0 and INT_MIN // -1 give numpy's results (no SIGFPE)."""
    info = np.iinfo(dtype)
    a = np.array([info.min, info.min, 7, -7, 0, info.max, 5, -5], dtype=dtype)
    b = np.array([-1, 0, 0, 0, 0, -1, -2, 2], dtype=dtype)
    x, y = sg.Variable("x"), sg.Variable("y")
    with np.errstate(all="ignore"):
        want = [a // b, a % b, np.power(a, np.abs(b)), a * b, a - b]
    for lvl in (0, 2):
        got = sg.compile([x // y, x % y, x ** abs(y), x * y, x - y], opt_level=lvl)(a, b)
        for g, w in zip(got, want):
            assert_same(g, w)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_maximum_minimum_propagate_nan(dtype):
    a = np.array([np.nan, 1.0, np.nan, -0.0, 0.0, np.inf], dtype=dtype)
    b = np.array([1.0, np.nan, np.nan, 0.0, -0.0, np.nan], dtype=dtype)
    x, y = sg.Variable("x"), sg.Variable("y")
    got = sg.compile([sg.maximum(x, y), sg.minimum(x, y), sg.relu(x), sg.max(x), sg.min(y)])(a, b)
    want = [np.maximum(a, b), np.minimum(a, b), np.maximum(a, 0), np.max(a), np.min(b)]
    for g, w in zip(got, want):
        assert_same(g, w)
        assert np.array_equal(np.signbit(g), np.signbit(w))


@pytest.mark.skipif(not MATHLIB, reason="symgraph/codegen/mathlib.py is not present")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_math_functions_dense_range(dtype):
    """A dense sweep of each math function's domain: the vectorized library stays within a
    few ULPs of numpy's."""
    x = np.concatenate([np.linspace(-20, 20, 2001), np.geomspace(1e-6, 80, 500)]).astype(dtype)
    v = sg.Variable("v")
    names = ["exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sin", "cos", "tan",
             "sinh", "cosh", "tanh", "sigmoid"]
    got = sg.compile([getattr(sg, n)(v) for n in names])(x)
    for n, g in zip(names, got):
        want = _numpy(CASES[n], [x], {})
        assert_same(g, want, kind="transcendental", context=n)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
def test_trig_large_arguments(dtype):
    """sin/cos/tan of large arguments follow numpy (full argument reduction), not a
    reduction that only works near zero."""
    if dtype == "int64":
        x = np.array([2**31, 10**12, 2**62, np.iinfo(np.int64).max], np.int64)
    else:
        info = np.finfo(dtype)
        x = np.array([1e5, 123456.7, 2.0**31 + 0.5, 1e10, 1e15, 1e22, float(info.max) / 3], dtype)
    v = sg.Variable("v")
    got = sg.compile([sg.sin(v), sg.cos(v), sg.tan(v)])(x)
    for name, g in zip(["sin", "cos", "tan"], got):
        with np.errstate(all="ignore"):
            want = getattr(np, name)(x)
        assert_same(g, want, kind="transcendental", context=f"{name}({x})")
