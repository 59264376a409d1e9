"""The public API of issue 2: compile, calling conventions, output structures, declared
Variables, weak scalars, evaluate, the compiled graph, threads, out= and aliasing."""
from __future__ import annotations

import threading

import networkx as nx
import numpy as np
import pytest

import symgraph as sg
from symgraph import Constant, Variable, compile

from helpers import assert_same, random_array, run_in_threads


def test_issue_example():
    A = Variable("A")
    B = Variable("B")
    C = B * A
    D = C + Constant(1)
    f = compile(D)
    d = f(A=np.ones(10), B=np.ones(10) * 2)
    assert_same(d, np.full(10, 3.0))


@pytest.mark.parametrize("opt_level", [0, 1, 2])
def test_opt_levels_agree(opt_level):
    a, b = Variable("a"), Variable("b")
    expr = sg.exp(a) * b - sg.sum(a * b, axis=0) / 3 + sg.where(a > b, a, b)
    x = np.linspace(-2, 2, 12).reshape(3, 4)
    y = np.cos(x)
    assert_same(compile(expr, opt_level=opt_level)(x, y), sg.evaluate(expr, a=x, b=y))


# --- binding inputs ---------------------------------------------------------------------------

def test_positional_order_is_creation_order():
    a = Variable("a")
    b = Variable("b")
    f = compile(b - a)  # b appears first in the expression; a was created first
    assert f.inputs == ["a", "b"] or tuple(f.inputs) == ("a", "b")
    assert_same(f(np.array(1.0), np.array(5.0)), np.array(4.0))
    assert_same(f(b=np.array(5.0), a=np.array(1.0)), np.array(4.0))
    assert_same(f(np.array(1.0), b=np.array(5.0)), np.array(4.0))


def test_positional_order_from_inputs():
    a, b = Variable("a"), Variable("b")
    f = compile(a - b, inputs=[b, a])
    assert list(f.inputs) == ["b", "a"]
    assert_same(f(1.0, 5.0), np.array(4.0))


def test_unused_listed_input_is_accepted():
    a, b, unused = Variable("a"), Variable("b"), Variable("unused")
    f = compile(a + b, inputs=[a, unused, b])
    assert list(f.inputs) == ["a", "unused", "b"]
    assert_same(f(1, np.zeros((7, 7)), 2), np.array(3))


def test_two_variables_with_one_name_are_an_error():
    a1, a2 = Variable("a"), Variable("a")
    with pytest.raises(sg.SymgraphError) as info:
        compile(a1 + a2)
    assert isinstance(info.value, (TypeError, ValueError))
    assert "'a'" in str(info.value)
    with pytest.raises(sg.SymgraphError):
        compile(a1 * 2, inputs=[a1, a2])


def test_expression_is_callable_and_caches():
    a, b = Variable("a"), Variable("b")
    c = (a**2 + b**2) ** 0.5
    r = c(3, 4)
    assert isinstance(r, np.ndarray) and r.shape == () and r.dtype == np.float64
    assert float(r) == 5.0
    first = c._compiled
    assert_same(c(6, 8), np.array(10.0))
    assert c._compiled is first
    assert_same(c(np.array([3.0, 5.0]), np.array([4.0, 12.0])), np.array([5.0, 13.0]))


@pytest.mark.parametrize("value", [3, 2.5, True, [1, 2, 3], [[1.5], [2.5]], (1, 2), [[True, False]]])
def test_python_scalars_and_lists_convert_like_numpy(value):
    a = Variable("a")
    f = compile(a * 2)
    want = np.asarray(value) * 2
    assert_same(f(value), want)


# --- output structures -----------------------------------------------------------------------

def test_output_structures():
    x = Variable("x")
    p, q = x + 1, x * 2
    v = np.arange(4.0)
    t = compile(p, q)(v)
    assert isinstance(t, tuple) and len(t) == 2
    lst = compile([p, q])(v)
    assert isinstance(lst, list) and len(lst) == 2
    d = compile({"p": p, "q": q})(v)
    assert isinstance(d, dict) and set(d) == {"p", "q"}
    for got in (t, lst, [d["p"], d["q"]]):
        assert_same(got[0], v + 1)
        assert_same(got[1], v * 2)
    single = compile(p)(v)
    assert isinstance(single, np.ndarray)


def test_output_may_be_an_input_variable():
    x = Variable("x")
    v = np.arange(5, dtype=np.int32)
    for lvl in (0, 2):
        f = compile(x, x + 1, opt_level=lvl)
        same, plus = f(v)
        assert_same(same, v)
        assert same is not v and not np.shares_memory(same, v)
        v2 = v.copy()
        same2, _ = f(v2)
        v2[0] = 100
        assert same2[0] == 0


def test_repeated_outputs_do_not_alias():
    x = Variable("x")
    y = x * 3
    for lvl in (0, 2):
        r1, r2, r3 = compile(y, y, x, opt_level=lvl)(np.ones(4))
        assert not np.shares_memory(r1, r2)
        r1[0] = -1
        assert r2[0] == 3


def test_results_never_alias_inputs_and_later_calls_do_not_change_them():
    x = Variable("x")
    for expr in [x.reshape(2, 3), x.T, x[::-1], x + 0, sg.broadcast_to(x, (2, 2, 3)).sum(0) / 2]:
        for lvl in (0, 2):
            f = compile(expr, opt_level=lvl)
            v = np.arange(6.0).reshape(2, 3)
            first = f(v)
            keep = first.copy()
            assert not np.shares_memory(first, v)
            second = f(v * 10)
            assert not np.shares_memory(first, second)
            assert_same(first, keep)


# --- declared Variables and specialization -------------------------------------------------

def test_specializes_per_dtype_and_shape():
    x = Variable("x")
    f = compile(x * 2 + 1)
    for v in [np.arange(3, dtype=np.int32), np.arange(3.0, dtype=np.float32),
              np.ones((2, 2)), np.array(True), np.arange(3, dtype=np.int32)]:
        assert_same(f(v), v * 2 + 1)
    info = f.cache_info()
    assert info.hits >= 1
    assert info.misses == 4 or getattr(info, "compilations", 4) == 4


def test_declared_shape_and_dtype_are_checked():
    x = Variable("x", shape=(None, 3), dtype="float32")
    f = compile(x.sum(axis=1))
    assert_same(f(np.ones((5, 3), np.float32)), np.full(5, 3.0, np.float32))
    assert_same(f(np.ones((0, 3), np.float32)), np.zeros(0, np.float32))
    with pytest.raises(sg.ShapeError):
        f(np.ones((5, 4), np.float32))
    with pytest.raises(sg.ShapeError):
        f(np.ones(3, np.float32))
    with pytest.raises(sg.DTypeError):
        f(np.ones((5, 3)))


def test_declared_shapes_infer_at_build_time():
    x = Variable("x", shape=(2, 3), dtype="int32")
    y = (x.T @ x + 1.5).sum(axis=0, keepdims=True)
    assert y.shape == (1, 3) and y.dtype == np.float64
    assert compile(y)(np.ones((2, 3), np.int32)).shape == (1, 3)


def test_constant_is_int64_and_scalars_are_weak():
    assert Constant(1).dtype == np.int64 and Constant(1).shape == ()
    x = Variable("x")
    f32 = np.array([1.0, 2.0], np.float32)
    i32 = np.array([1, 2], np.int32)
    assert compile(x + 1.5)(f32).dtype == np.float32
    assert compile(x + 1)(i32).dtype == np.int32
    assert compile(x * True)(i32).dtype == np.int32
    assert compile(x + Constant(1))(i32).dtype == np.int64
    assert compile(x + 1.5)(i32).dtype == np.float64
    assert_same(compile(1.5 - x)(f32), np.float32(1.5) - f32)
    assert_same(compile(x // 2)(np.array([-3, 7], np.int32)), np.array([-2, 3], np.int32))


# --- evaluate and the compiled graph -----------------------------------------------------

def test_evaluate_runs_the_interpreter():
    a, b = Variable("a"), Variable("b")
    expr = sg.tanh(a) @ b
    x, y = np.ones((2, 3)), np.arange(6.0).reshape(3, 2)
    assert_same(sg.evaluate(expr, a=x, b=y), np.tanh(x) @ y)
    r = sg.evaluate({"s": a + 1, "t": a * b.T}, a=x, b=y)
    assert set(r) == {"s", "t"}


def test_graph_attribute():
    a = Variable("a")
    f = compile(sg.exp(a) + 1)
    f(np.ones(3))
    g = f.graph
    assert isinstance(g, nx.DiGraph)
    assert all(isinstance(n, int) for n in g.nodes)
    for _, data in g.nodes(data=True):
        for key in ("op", "attrs", "shape", "dtype", "loc"):
            assert key in data
    ops = {data["op"] for _, data in g.nodes(data=True)}
    assert "var" in ops and "exp" in ops


def test_bool_of_expression_raises_with_hint():
    a = Variable("a")
    with pytest.raises(sg.TracerBoolError) as info:
        if a > 0:
            pass
    assert isinstance(info.value, TypeError)
    assert "where" in str(info.value)


# --- threads ------------------------------------------------------------------------------

def test_threads_share_one_compiled_function():
    x, y = Variable("x"), Variable("y")
    f = compile(sg.sum(sg.sqrt(x * x + y * y), axis=1))
    rng = np.random.default_rng(0)
    data = [(rng.random((300, 500)), rng.random((300, 500))) for _ in range(4)]
    f(*data[0])  # compile before the threads start
    wants = [np.sqrt(a * a + b * b).sum(axis=1) for a, b in data]
    errors = []
    barrier = threading.Barrier(4)

    def work(k):
        barrier.wait()
        for _ in range(10):
            got = f(*data[k])
            if not np.allclose(got, wants[k], rtol=1e-10):
                errors.append(k)

    run_in_threads(work, 4)
    assert not errors


def test_threads_specializing_concurrently():
    x = Variable("x")
    f = compile(x * 2 - 1)
    dtypes = ["int32", "int64", "float32", "float64"] * 2
    results = [None] * len(dtypes)

    def work(k):
        v = np.arange(10).astype(dtypes[k])
        results[k] = (f(v), v * 2 - 1)

    run_in_threads(work, len(dtypes))
    for got, want in results:
        assert_same(got, want)


# --- out= -----------------------------------------------------------------------------------

def _supports_out():
    x = Variable("x")
    try:
        compile(x + 1)(np.ones(2), out=np.empty(2))
    except TypeError:
        return False
    return True


@pytest.mark.skipif(not _supports_out(), reason="compiled functions take no out= argument")
def test_out_writes_and_returns():
    x, y = Variable("x"), Variable("y")
    f = compile(x * y + 1)
    out = np.empty(4)
    r = f(np.arange(4.0), np.full(4, 2.0), out=out)
    assert r is out
    assert_same(out, np.arange(4.0) * 2 + 1)
    with pytest.raises(sg.DTypeError):
        f(np.arange(4.0), np.ones(4), out=np.empty(4, np.float32))
    with pytest.raises(sg.ShapeError):
        f(np.arange(4.0), np.ones(4), out=np.empty(5))
    g2 = compile(x + 1, x * 2)
    o1, o2 = np.empty(3), np.empty(3)
    r1, r2 = g2(np.arange(3.0), out=(o1, o2))
    assert r1 is o1 and r2 is o2
    assert_same(o2, np.arange(3.0) * 2)


@pytest.mark.skipif(not _supports_out(), reason="compiled functions take no out= argument")
@pytest.mark.parametrize("opt_level", [0, 2])
def test_out_overlapping_an_input_gives_numpy_result(opt_level):
    x = Variable("x")
    exprs = {
        "reverse": x[::-1] + 0,
        "transpose": x.T * 1,
        "matmul": x @ x,
        "shift": sg.concatenate([x[1:], x[:1]], axis=0),
    }
    for label, expr in exprs.items():
        f = compile(expr, opt_level=opt_level)
        v = np.arange(9.0).reshape(3, 3)
        want = sg.evaluate(expr, x=v)
        r = f(v, out=v)
        assert r is v, label
        assert_same(v, want, context=label)


# --- unusual but valid inputs ---------------------------------------------------------------

def _unusual_inputs():
    base = np.arange(24.0).reshape(4, 6)
    return {
        "non-contiguous": base[:, ::2],
        "negative-stride": base[::-1, ::-3],
        "fortran": np.asfortranarray(base),
        "empty": np.empty((0, 3)),
        "0-d": np.array(2.5),
        "big-endian-f8": base.astype(">f8"),
        "big-endian-i4": np.arange(6, dtype=">i4").reshape(2, 3),
        "list": [[1.0, 2.0], [3.0, 4.0]],
        "scalar": 7,
        "broadcast-view": np.broadcast_to(np.arange(3.0), (4, 3)),
        "unaligned": np.frombuffer(b"\0" + np.arange(5.0).tobytes(), dtype=np.float64, offset=1),
    }


@pytest.mark.parametrize("kind", list(_unusual_inputs()))
def test_unusual_inputs(kind):
    v = _unusual_inputs()[kind]
    x = Variable("x")
    exprs = [x * 2 + 1, sg.exp(x * 0.1)]
    if np.ndim(v):
        exprs += [sg.sum(x, axis=-1), x[::-1], x.T[::2]]
    want = sg.evaluate(exprs, x=np.array(v))
    for lvl in (0, 2):
        got = compile(exprs, opt_level=lvl)(v)
        for g, w in zip(got, want):
            assert_same(g, w, kind="transcendental", context=kind)
    native = np.asarray(v)
    assert_same(want[0], (native * 2 + 1).astype(native.dtype.newbyteorder("=")))


def test_readonly_input_and_dtypes_preserved():
    v = np.arange(6, dtype=np.int32)
    v.setflags(write=False)
    x = Variable("x")
    r = compile(x + 1)(v)
    assert r.flags.writeable and r.dtype == np.int32


# --- ops through the frontend -------------------------------------------------------------

def test_slicing_and_indexing_with_declared_rank():
    x = Variable("x", shape=(3, 4, 5))
    v = np.arange(60).reshape(3, 4, 5)
    keys = [(..., 1), (1, ..., slice(None, None, -1)), (-1,), (slice(None), 2), (slice(5, None),),
            (slice(None, None, -2), slice(-1, -5, -3), 4), (Ellipsis,)]
    exprs = [x[k] for k in keys]
    got = compile(exprs)(v)
    for k, g in zip(keys, got):
        assert_same(g, np.array(v[k]), context=str(k))


def test_integer_overflow_wraps():
    x = Variable("x")
    v = np.array([np.iinfo(np.int32).max, np.iinfo(np.int32).min], np.int32)
    got = compile([x + 1, x - 1, x * 3, -x, abs(x), x.sum()])(v)
    with np.errstate(all="ignore"):
        want = [v + 1, v - 1, v * 3, -v, np.abs(v), v.sum()]
    for g, w in zip(got, want):
        assert_same(g, w)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "bool"])
def test_reductions_over_axes_with_keepdims(dtype):
    x = Variable("x")
    rng = np.random.default_rng(3)
    v = random_array(rng, (3, 4, 5), dtype, edges=dtype[0] != "f")
    exprs, wants = [], []
    for axis in [None, 1, -1, (0, 2)]:
        for keepdims in (False, True):
            for fn, npfn in [(sg.sum, np.sum), (sg.mean, np.mean), (sg.max, np.max), (sg.min, np.min)]:
                exprs.append(fn(x, axis=axis, keepdims=keepdims))
                wants.append(np.asarray(npfn(v, axis=axis, keepdims=keepdims)))
    exprs.append(x.sum(1).mean(0) + x.max())
    wants.append(np.asarray(v.sum(1).mean(0) + v.max()))
    for lvl in (0, 2):
        got = compile(exprs, opt_level=lvl)(v)
        for g, w in zip(got, wants):
            assert_same(g, w, kind="reduce", terms=60, magnitude=float(np.abs(v).max()))


def test_logical_ops_on_booleans():
    a, b = Variable("a"), Variable("b")
    p = np.array([True, True, False, False])
    q = np.array([True, False, True, False])
    got = compile([a & b, a | b, ~a, a ^ b, ~(a & b) | (a == b)])(p, q)
    for g, w in zip(got, [p & q, p | q, ~p, p ^ q, ~(p & q) | (p == q)]):
        assert_same(g, w)


def test_astype_and_clip():
    x = Variable("x")
    v = np.array([-3.7, -0.5, 0.0, 0.5, 2.9, 100.25])
    exprs = [x.astype("int32"), x.astype(np.float32), (x > 0).astype("int64"),
             sg.clip(x, -1, 1), sg.clip(x.astype("int32"), 0, 5), sg.astype(x, "bool")]
    wants = [v.astype(np.int32), v.astype(np.float32), (v > 0).astype(np.int64),
             np.clip(v, -1, 1), np.clip(v.astype(np.int32), 0, 5), v.astype(bool)]
    for g, w in zip(compile(exprs)(v), wants):
        assert_same(g, w)


def test_large_arrays_split_across_threads():
    x, y = Variable("x"), Variable("y")
    rng = np.random.default_rng(1)
    v, w = rng.random((513, 1031)), rng.random(1031)
    exprs = [sg.exp(x) * y - 1, (x * y).sum(axis=1), (x @ w), x.T[::-1] + 1]
    wants = [np.exp(v) * w - 1, (v * w).sum(axis=1), v @ w, v.T[::-1] + 1]
    got = compile(exprs)(v, w)
    assert_same(got[0], wants[0], rtol=1e-12, atol=1e-14)  # exp(v) * w - 1 cancels
    assert_same(got[1], wants[1], kind="reduce", terms=1031)
    assert_same(got[2], wants[2], kind="reduce", terms=1031)
    assert_same(got[3], wants[3])


def test_out_into_a_fresh_array_takes_the_fast_path():
    a, b = sg.Variable("a", (10,), "float64"), sg.Variable("b", (10,), "float64")
    f = sg.compile(b * a + 1)
    x, y, o = np.arange(10.0), np.full(10, 2.0), np.empty(10)
    f(x, y, out=o)
    namespace = f._fast.__globals__
    general = namespace["call"]

    def refuse(*args):
        raise AssertionError("took the general path")

    namespace["call"] = refuse  # the dispatcher must not fall back for a plain out= array
    try:
        assert f(x, y, out=o) is o
    finally:
        namespace["call"] = general
    np.testing.assert_array_equal(o, y * x + 1)
    z = x.copy()  # out= overlapping an input: the general path computes it safely
    assert f(z, y, out=z) is z
    np.testing.assert_array_equal(z, y * x + 1)
