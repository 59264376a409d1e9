"""Open axes (None or named sizes) compile once for all sizes: cache_info proves no
recompilation, the reference interpreter checks every result, and graphs or calls that
need concrete sizes fall back to per-shape code with the same results."""
from __future__ import annotations


import numpy as np
import pytest

import symgraph as sg
from symgraph.shapes import NotGeneric, Sym, Unify, unifying

from helpers import assert_same, run_in_threads

SIZES = (1, 7, 1000, 0, 2, 33)


@pytest.fixture(autouse=True)
def no_disk_cache(monkeypatch):
    """Exact compilation counts: nothing comes from the disk cache (tested in test_cache)."""
    monkeypatch.setenv("SYMGRAPH_CACHE", "0")


def _mlp(batch_axis=None):
    rng = np.random.default_rng(0)
    x = sg.Variable("x", (batch_axis, 64), "float32")
    h = x
    for i, (k, n) in enumerate(((64, 32), (32, 16), (16, 2))):
        h = h @ sg.Constant(rng.standard_normal((k, n)).astype("float32") * 0.2)
        h = h + sg.Constant(rng.standard_normal(n).astype("float32"))
        if i < 2:
            h = sg.maximum(h, 0.0)
    return x, h


@pytest.mark.parametrize("num_threads", [1, 2])
def test_batch_sizes_share_one_compilation(num_threads):
    x, logits = _mlp()
    probs = sg.softmax(logits, axis=-1)
    loss = sg.mean(sg.logsumexp(logits, axis=-1))
    f = sg.compile(probs, loss, num_threads=num_threads)
    assert f.shape_generic
    assert f.cache_info().compilations == 1
    rng = np.random.default_rng(1)
    for n in SIZES:
        data = rng.standard_normal((n, 64)).astype("float32")
        got = f(data)
        want = sg.evaluate([probs, loss], x=data)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype
            assert_same(g, w, rtol=1e-5, atol=1e-6, context=f"batch {n}")
    info = f.cache_info()
    assert info.compilations == 1 and info.misses == 1
    assert info.hits == len(SIZES)


def test_large_batches_take_the_threaded_gemm_and_agree_with_small_ones():
    x, logits = _mlp()
    f = sg.compile(logits, num_threads=2)
    rng = np.random.default_rng(2)
    data = rng.standard_normal((4096, 64)).astype("float32")
    whole = f(data)
    assert_same(whole, sg.evaluate(logits, x=data), rtol=1e-5, atol=1e-5)
    # Row i does not depend on how many rows share the call (same summation order).
    np.testing.assert_array_equal(f(data[:1]), whole[:1])
    np.testing.assert_array_equal(f(data[:5]), whole[:5])
    assert f.cache_info().compilations == 1


def test_named_sizes_tie_axes_together():
    x = sg.Variable("x", ("batch", 3), "float64")
    y = sg.Variable("y", ("batch",), "int64")
    out = sg.sum(x, axis=1) * y + sg.max(x, axis=1)
    f = sg.compile(out)
    assert f.shape_generic
    for n in (0, 1, 5, 200):
        a = np.arange(3.0 * n).reshape(n, 3)
        b = np.arange(n)
        np.testing.assert_array_equal(f(a, b), sg.evaluate(out, x=a, y=b))
    assert f.cache_info().compilations == 1


def test_a_call_that_breaks_an_identified_size_gets_its_own_code():
    """x + y identified the two None axes; numpy still broadcasts a size-1 one."""
    x = sg.Variable("x", (None, 3), "float64")
    y = sg.Variable("y", (None, 3), "float64")
    f = sg.compile(x * 2 + y)
    a, b = np.ones((4, 3)), np.arange(12.0).reshape(4, 3)
    np.testing.assert_array_equal(f(a, b), a * 2 + b)
    assert f.cache_info().compilations == 1
    row = np.arange(3.0).reshape(1, 3)
    np.testing.assert_array_equal(f(a, row), a * 2 + row)  # broadcasting: concrete code
    assert f.cache_info().compilations == 2
    with pytest.raises(sg.ShapeError):
        f(np.ones((4, 3)), np.ones((2, 3)))


def test_reductions_over_the_open_axis():
    x = sg.Variable("x", (None, None), "float64")
    outs = [sg.sum(x), sg.mean(x, axis=0), sg.max(x, axis=1), sg.min(x + 1, axis=0),
            sg.argmax(x, axis=1)]
    f = sg.compile(outs, num_threads=2)
    assert f.shape_generic
    rng = np.random.default_rng(3)
    for shape in ((0, 3), (1, 1), (3, 0), (5, 7), (700, 400)):
        data = rng.uniform(-1, 1, shape)
        if 0 in shape:
            continue  # max/argmax of an empty axis is an error in numpy too
        got = f(data)
        want = sg.evaluate(outs, x=data)
        for g, w in zip(got, want):
            assert_same(g, w, kind="reduction", terms=max(shape[0], 1) * max(shape[1], 1))
    assert f.cache_info().compilations == 1


def test_movement_and_elementwise_with_open_axes():
    x = sg.Variable("x", (None, 4), "float32")
    y = sg.transpose(sg.exp(x) - 1.0)[::-1] * sg.Constant(np.arange(1, 5, dtype="float32").reshape(4, 1))
    out = sg.concatenate([y, y * 2], axis=0)
    f = sg.compile(out)
    rng = np.random.default_rng(4)
    for n in (1, 3, 50):
        data = rng.standard_normal((n, 4)).astype("float32")
        assert_same(f(data), sg.evaluate(out, x=data), rtol=1e-6, atol=1e-6)
    assert f.cache_info().compilations == 1 if f.shape_generic else True


def test_convolutions_over_an_open_batch_compile_once():
    rng = np.random.default_rng(8)
    x = sg.Variable("x", (None, 3, 8, 8), "float32")
    w = sg.Constant(rng.standard_normal((16, 3, 3, 3)).astype("float32"))
    depthwise = sg.Constant(rng.standard_normal((3, 1, 3, 3)).astype("float32"))
    outs = [sg.max_pool2d(sg.relu(sg.conv2d(x, w, padding=1)), 2),
            sg.avg_pool2d(sg.conv2d(x, depthwise, padding=1, groups=3), 2)]
    f = sg.compile(outs, num_threads=2)
    assert f.shape_generic
    for n in (1, 4, 0, 9):
        data = rng.standard_normal((n, 3, 8, 8)).astype("float32")
        for got, want in zip(f(data), sg.evaluate(outs, x=data)):
            assert_same(got, want, rtol=1e-5, atol=1e-5, context=f"batch {n}")
    assert f.cache_info().compilations == 1


def test_graphs_that_need_concrete_sizes_fall_back_per_shape():
    """An open spatial axis makes conv2d's output size a floor division: per-shape code."""
    x = sg.Variable("x", (1, 1, None, 5), "float32")
    w = sg.Constant(np.ones((2, 1, 3, 3), "float32"))
    out = sg.conv2d(x, w, padding=1, stride=2)
    f = sg.compile(out)
    assert f.shape_generic is False
    (reason,) = f.generic_status.values()
    assert "concrete" in reason and "x.2" in reason
    for h in (5, 6, 5):
        data = np.ones((1, 1, h, 5), "float32")
        assert_same(f(data), sg.evaluate(out, x=data), rtol=1e-6, atol=1e-6)
    assert f.cache_info().compilations == 2  # height 5 and height 6, each once


def test_out_and_debug_and_check_finite_work_with_open_axes():
    x = sg.Variable("x", (None,), "float64")
    h = sg.log(x)
    h.name = "h"
    f = sg.compile(h * 2, check_finite=True)
    assert f.shape_generic
    data = np.array([1.0, 2.0, 4.0])
    out = np.empty(3)
    assert f(data, out=out) is out
    np.testing.assert_allclose(out, 2 * np.log(data))
    outputs, named = f(data, debug=True)
    np.testing.assert_allclose(named["h"], np.log(data))
    with pytest.raises(sg.NonFiniteError, match="log"):
        f(np.array([1.0, -1.0]))
    with pytest.raises(sg.ShapeError):
        f(data, out=np.empty(4))


def test_concurrent_calls_with_different_sizes():
    x, logits = _mlp()
    f = sg.compile(logits)
    rng = np.random.default_rng(5)
    batches = [rng.standard_normal((n, 64)).astype("float32") for n in (1, 3, 17, 64, 5, 300)]
    want = [f(b) for b in batches]
    errors = []

    def worker(k):
        for i in range(200):
            j = (i + k) % len(batches)
            if not np.array_equal(f(batches[j]), want[j]):
                errors.append((k, i))

    run_in_threads(worker, 4)
    assert not errors
    assert f.cache_info().compilations == 1


def test_jit_with_declared_shapes_traces_and_compiles_once():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((8, 3))

    @sg.jit(shapes={"x": (None, 8)})
    def model(x, w):
        return sg.tanh(x @ w) + 1

    for n in (1, 7, 1000):
        data = rng.standard_normal((n, 8))
        assert_same(model(data, w), np.tanh(data @ w) + 1, rtol=1e-12, atol=1e-12)
    info = model.cache_info()
    assert info.misses == 1 and info.compilations == 1 and info.hits == 3
    with pytest.raises(sg.ShapeError, match="declares"):
        model(np.ones((2, 9)), w)


def test_variable_rejects_bad_size_names():
    with pytest.raises(sg.GraphError):
        sg.Variable("x", ("not a name", 3))
    with pytest.raises(sg.GraphError):
        sg.Variable("x", (2.5j, 3))


def test_generic_functions_save_and_load(tmp_path):
    x, logits = _mlp("batch")
    f = sg.compile(logits)
    path = tmp_path / "mlp.sg"
    f.save(path)
    g = sg.load(path)
    data = np.random.default_rng(7).standard_normal((9, 64)).astype("float32")
    np.testing.assert_array_equal(g(data), f(data))
    assert g.shape_generic


# --- the symbolic sizes themselves ------------------------------------------------------------

def test_sym_arithmetic_and_questions():
    n, m = Sym.symbol("n"), Sym.symbol("m")
    assert (n * 3 + n) * 2 == 8 * n
    assert n * m == m * n and hash(n * m) == hash(m * n)
    assert (n * 12) // 4 == 3 * n and (n * m * 6) // (2 * n) == 3 * m
    assert n - n == 0 and isinstance(n - n, int)
    assert (2 * n + 3).evaluate({"n": 5}) == 13
    assert not n == 1 and not n == 0 and n != 2 and n != m
    with pytest.raises(NotGeneric):
        bool(n < 4)
    with pytest.raises(NotGeneric):
        int(n)
    with pytest.raises(NotGeneric):
        (n + 1) // 2
    with unifying():
        with pytest.raises(Unify):
            n == m  # noqa: B015
        with pytest.raises(Unify):
            n == 5  # noqa: B015
        assert not n == 1


def test_control_flow_over_open_sizes_compiles_once():
    """cond, while_loop and scan with an open batch (and an open time axis for scan)."""
    rng = np.random.default_rng(9)
    x = sg.Variable("x", (None, 4), "float64")
    w = sg.Variable("w", (4, 4), "float64")
    seq = sg.Variable("seq", (None, "batch", 4), "float64")
    h0 = sg.Variable("h0", ("batch", 4), "float64")
    branch = sg.cond(sg.sum(x) > 0, lambda a: a * 2, lambda a: sg.tanh(a), x)
    looped = sg.while_loop(lambda i, v: i < 3, lambda i, v: (i + 1, sg.tanh(v @ w) + x),
                           (0, x), max_iters=10)[1]
    last, per_step = sg.scan(lambda h, xt: (sg.tanh(h @ w + xt), sg.sum(h, axis=1)), h0, seq)
    f = sg.compile([branch, looped], num_threads=2)
    g = sg.compile([last, per_step])
    assert f.shape_generic and g.shape_generic
    weights = rng.standard_normal((4, 4)) * 0.3
    for n in (1, 5, 300, 0):
        data = rng.standard_normal((n, 4))
        for sign in (1, -1):  # both branches
            for got, want in zip(f(sign * data, weights),
                                 sg.evaluate([branch, looped], x=sign * data, w=weights)):
                assert_same(got, want, rtol=1e-12, atol=1e-12)
    for steps, batch in ((3, 2), (1, 7), (10, 1), (0, 3)):
        inputs = {"seq": rng.standard_normal((steps, batch, 4)),
                  "h0": rng.standard_normal((batch, 4)), "w": weights}
        for got, want in zip(g(**inputs), sg.evaluate([last, per_step], **inputs)):
            assert_same(got, want, rtol=1e-12, atol=1e-12)
    assert f.cache_info().compilations == 1 and g.cache_info().compilations == 1


def test_reshape_one_hot_and_cross_entropy_over_an_open_batch():
    rng = np.random.default_rng(10)
    x = sg.Variable("x", ("batch", 4), "float32")
    y = sg.Variable("y", ("batch",), "int64")
    w = sg.Variable("w", (4, 3), "float32")
    flat = sg.reshape(x, (-1,)) * 2
    pairs = sg.max_pool2d(sg.reshape(x, (-1, 1, 2, 2)), 2)
    loss = sg.cross_entropy(x @ w, y, num_classes=3)
    hot = sg.one_hot(y, 3, dtype="int32")
    f = sg.compile([flat, pairs, loss, hot])
    assert f.shape_generic
    for n in (1, 5, 64, 0):
        inputs = {"x": rng.standard_normal((n, 4)).astype("float32"),
                  "y": rng.integers(0, 3, n), "w": rng.standard_normal((4, 3)).astype("float32")}
        for got, want in zip(f(**inputs), sg.evaluate([flat, pairs, loss, hot], **inputs)):
            assert got.dtype == want.dtype and got.shape == want.shape
            assert_same(got, want, rtol=1e-5, atol=1e-6)
    assert f.cache_info().compilations == 1
    with pytest.raises(sg.GraphError, match="num_classes"):
        sg.cross_entropy(x @ w, y)


def test_named_sizes_that_disagree_are_an_error_naming_both_inputs():
    x = sg.Variable("x", ("batch", 3), "float64")
    y = sg.Variable("y", ("batch",), "float64")
    f = sg.compile(sg.sum(x, axis=1) + y)
    with pytest.raises(sg.ShapeError, match="'batch' is 4 in input 'x' but 1 in input 'y'") as info:
        f(np.ones((4, 3)), np.ones(1))
    assert "test_shape_generic.py" in str(info.value)
