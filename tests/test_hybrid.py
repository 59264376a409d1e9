"""Hybrid programming and debugging: eager functions, @jit, intermediates, check_finite."""
import numpy as np
import pytest

import symgraph as sg


def model(x, w):
    h = sg.tanh(x @ w)
    return sg.relu(h - 0.1).sum(axis=-1)


def test_same_function_runs_eagerly_and_compiled():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((4, 3)), rng.standard_normal((3, 5))
    eager = model(x, w)
    assert isinstance(eager, np.ndarray)
    jitted = sg.jit(model)
    np.testing.assert_allclose(jitted(x, w), eager, rtol=1e-12)


def test_jit_caches_per_signature_and_counts():
    calls = []

    @sg.jit
    def f(x, y):
        calls.append(1)
        return sg.exp(x) * y

    a = np.zeros(3)
    f(a, a)
    f(a, a)
    f(np.zeros(4), np.zeros(4))
    info = f.cache_info()
    assert len(calls) == 2  # traced once per shape signature
    assert info.misses == 2 and info.compilations == 2 and info.hits >= 1


def test_jit_static_arguments():
    @sg.jit(static_argnames="n")
    def power(x, n):
        for _ in range(n):
            x = x * 2
        return x

    np.testing.assert_array_equal(power(np.ones(2), n=3), [8.0, 8.0])
    np.testing.assert_array_equal(power(np.ones(2), n=1), [2.0, 2.0])
    assert power.cache_info().misses == 2


def test_jit_trace_returns_the_graph_without_running():
    @sg.jit
    def f(x):
        return x * 2 + 1

    graph = f.trace(np.ones(3))
    assert {d["op"] for _, d in graph.nodes(data=True)} >= {"var", "mul", "add"}


def test_python_control_flow_on_traced_values_points_at_the_line():
    @sg.jit
    def f(x):
        if x.sum() > 0:  # the offending line
            return x
        return -x

    with pytest.raises(sg.TracerBoolError) as info:
        f(np.ones(3))
    line = f.fn.__code__.co_firstlineno + 2
    assert f"test_hybrid.py:{line}" in str(info.value)
    assert "where" in str(info.value) and "cond" in str(info.value)


def test_intermediates_and_debug_flag():
    x = sg.Variable("x")
    h1 = sg.tanh(x) * 2
    h1.name = "h1"
    y = (h1 + 1).sum()
    f = sg.compile(y)
    data = np.arange(3.0)
    out, named = f.intermediates(data)
    np.testing.assert_allclose(named["h1"], np.tanh(data) * 2)
    np.testing.assert_allclose(out, (np.tanh(data) * 2 + 1).sum())
    out2, named2 = f(data, debug=True)
    np.testing.assert_array_equal(named2["h1"], named["h1"])


def test_check_finite_names_the_first_bad_node():
    x, y = sg.Variable("x"), sg.Variable("y")
    a = sg.exp(x) * 2
    z = sg.log(a - y) + 1  # the log goes NaN when y > 2 * exp(x)
    f = sg.compile(z, check_finite=True)
    np.testing.assert_allclose(f(np.zeros(2), np.full(2, 0.5)), np.log(2 - 0.5) + 1)
    with pytest.raises(sg.NonFiniteError) as info:
        f(np.zeros(2), np.array([5.0, 0.5]))
    assert "log" in str(info.value) and "test_hybrid.py" in str(info.value)
    with pytest.raises(sg.NonFiniteError) as info:
        f(np.array([0.0, 1000.0]), np.full(2, 0.5))
    assert "exp" in str(info.value)
    # NaN that comes in through the inputs is not blamed on any node.
    out = f(np.array([np.nan, 0.0]), np.full(2, 0.5))
    assert np.isnan(out[0])


def test_check_finite_in_reductions():
    x = sg.Variable("x")
    f = sg.compile(sg.sum(x * 1e300), check_finite=True)
    with pytest.raises(sg.NonFiniteError, match="mul"):
        f(np.array([1e10, 1e10]))
    g = sg.compile(sg.sum(x), check_finite=True)
    with pytest.raises(sg.NonFiniteError, match="sum"):
        g(np.array([1e308, 1e308]))
    assert np.isinf(g(np.array([np.inf, 1.0])))
