"""Bad inputs and bad graphs give the right SymgraphError subclass (also the matching builtin)
with a message that names the input and the user's line; nothing reaches native code."""
from __future__ import annotations

import inspect
import os

import numpy as np
import pytest

import symgraph as sg
from symgraph import Variable, compile

HERE = os.path.basename(__file__)


def _line_of(marker):
    """The line number in this file of the source line containing `marker`."""
    lines, start = inspect.getsourcelines(inspect.getmodule(_line_of))
    for i, text in enumerate(lines):
        if marker in text and "_line_of(" not in text:
            return start + i if start else i + 1
    raise LookupError(marker)


def _raises(exc_type, builtin, fn, *args, **kwargs):
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    err = info.value
    assert isinstance(err, sg.SymgraphError), type(err)
    assert isinstance(err, builtin), f"{type(err).__name__} is not a {builtin.__name__}"
    return err


@pytest.fixture
def f2():
    a, b = Variable("alpha"), Variable("beta")
    return compile(a * b + 1)


# --- binding ----------------------------------------------------------------------------------

def test_missing_input(f2):
    err = _raises(sg.ArgumentError, TypeError, f2, np.ones(3))
    assert "beta" in str(err)
    err = _raises(sg.ArgumentError, TypeError, f2, alpha=np.ones(3))
    assert "beta" in str(err)
    _raises(sg.ArgumentError, TypeError, f2)


def test_unknown_input(f2):
    err = _raises(sg.ArgumentError, TypeError, f2, np.ones(3), np.ones(3), gamma=np.ones(3))
    assert "gamma" in str(err)
    err = _raises(sg.ArgumentError, TypeError, f2, alpha=1, beta=2, gamma=3)
    assert "gamma" in str(err)


def test_too_many_positional(f2):
    _raises(sg.ArgumentError, TypeError, f2, 1, 2, 3)


def test_duplicated_input(f2):
    err = _raises(sg.ArgumentError, TypeError, f2, np.ones(3), np.ones(3), alpha=np.ones(3))
    assert "alpha" in str(err)


def test_evaluate_checks_inputs():
    a = Variable("a")
    err = _raises(sg.ArgumentError, TypeError, sg.evaluate, a + 1)
    assert "'a'" in str(err)
    _raises(sg.ArgumentError, TypeError, sg.evaluate, a + 1, a=1, b=2)


# --- input values -----------------------------------------------------------------------------

@pytest.mark.parametrize("value, exc, builtin", [
    (np.ones(3, np.float16), sg.DTypeError, TypeError),
    (np.ones(3, np.complex128), sg.SymgraphError, TypeError),
    (np.ones(3, np.uint8), sg.DTypeError, TypeError),
    (np.ones(3, np.uint64), sg.DTypeError, TypeError),
    (np.array([1, "a"], dtype=object), sg.SymgraphError, TypeError),
    (np.array(["a", "b"]), sg.SymgraphError, TypeError),
    (np.array([b"a"]), sg.SymgraphError, TypeError),
    (np.array([1, 2], dtype="datetime64[s]"), sg.SymgraphError, TypeError),
    ("text", sg.SymgraphError, TypeError),
    (object(), sg.ArgumentError, TypeError),
    ({"a": 1}, sg.ArgumentError, TypeError),
    (None, sg.ArgumentError, TypeError),
    ([[1, 2], [3]], sg.ArgumentError, TypeError),
    (1 + 2j, sg.SymgraphError, TypeError),
    (2**70, sg.SymgraphError, TypeError),
])
def test_unsupported_input_values(value, exc, builtin):
    a = Variable("my_input")
    f = compile(a + 1)
    err = _raises(exc, builtin, f, value)
    assert "my_input" in str(err)
    err = _raises(exc, builtin, f, my_input=value)
    assert "my_input" in str(err)


def test_symbolic_expression_as_input():
    a = Variable("a")
    f = compile(a + 1)
    err = _raises(sg.ArgumentError, TypeError, f, a)
    assert "'a'" in str(err)


def test_declared_shape_errors_name_input_and_line():
    weights = Variable("weights", shape=(3, None), dtype="float64")  # DECLARED-WEIGHTS
    f = compile(weights.sum(axis=0))
    line = _line_of("# DECLARED-WEIGHTS")
    for bad in [np.ones((4, 2)), np.ones(3), np.ones((3, 2, 1)), np.ones(())]:
        err = _raises(sg.ShapeError, ValueError, f, bad)
        text = str(err)
        assert "weights" in text
        assert f"{HERE}:{line}" in text, text
    err = _raises(sg.DTypeError, TypeError, f, np.ones((3, 2), np.float32))
    assert "weights" in str(err) and f"{HERE}:{line}" in str(err)
    err = _raises(sg.DTypeError, TypeError, f, np.ones((3, 2), np.int64))
    assert "weights" in str(err)


def test_declared_shape_errors_in_evaluate():
    v = Variable("v", shape=(2,))
    _raises(sg.ShapeError, ValueError, sg.evaluate, v * 2, v=np.ones(3))


def test_bad_variable_declarations():
    _raises(sg.GraphError, ValueError, Variable, "not a name")
    _raises(sg.GraphError, ValueError, Variable, "x", shape=(-1,))
    _raises(sg.DTypeError, TypeError, Variable, "x", dtype="float16")
    _raises(sg.DTypeError, TypeError, Variable, "x", dtype="complex64")


# --- build-time errors name the user's line ----------------------------------------------------

def test_matmul_inner_mismatch_names_the_line():
    a = Variable("a", shape=(3, 4), dtype="float32")
    b = Variable("b", shape=(5, 6), dtype="float32")
    with pytest.raises(sg.ShapeError) as info:
        a @ b  # MATMUL-LINE
    err = info.value
    assert isinstance(err, ValueError)
    assert f"{HERE}:{_line_of('# MATMUL-LINE')}" in str(err)
    assert "4" in str(err) and "5" in str(err)


def test_broadcast_mismatch_names_the_line():
    a = Variable("a", shape=(3, 4), dtype="int32")
    b = Variable("b", shape=(5,), dtype="float64")
    with pytest.raises(sg.ShapeError) as info:
        a + b  # BROADCAST-LINE
    assert isinstance(info.value, ValueError)
    assert f"{HERE}:{_line_of('# BROADCAST-LINE')}" in str(info.value)


def test_shape_error_found_at_call_time_names_the_line():
    a, b = Variable("a"), Variable("b")
    c = a + b  # DEFERRED-LINE
    f = compile(c * 2)
    err = _raises(sg.ShapeError, ValueError, f, np.ones(3), np.ones(4))
    assert f"{HERE}:{_line_of('# DEFERRED-LINE')}" in str(err)
    g = compile(a @ b)  # DEFERRED-MATMUL
    err = _raises(sg.ShapeError, ValueError, g, np.ones((2, 3)), np.ones((2, 3)))
    assert f"{HERE}:{_line_of('# DEFERRED-MATMUL')}" in str(err)


@pytest.mark.parametrize("build, exc, builtin", [
    (lambda x: x.reshape(4, 4), sg.ShapeError, ValueError),
    (lambda x: x.transpose(0, 0, 1), sg.ShapeError, ValueError),
    (lambda x: x[5], sg.IndexOutOfRange, IndexError),
    (lambda x: x[0, 0, 0, 0], sg.IndexOutOfRange, IndexError),
    (lambda x: x[::0], sg.ShapeError, ValueError),
    (lambda x: x.sum(axis=3), sg.ShapeError, ValueError),
    (lambda x: x.sum(axis=(0, 0)), sg.ShapeError, ValueError),
    (lambda x: sg.concatenate([x, x.T], axis=0), sg.ShapeError, ValueError),
    (lambda x: sg.broadcast_to(x, (3,)), sg.ShapeError, ValueError),
    (lambda x: x.astype("float16"), sg.DTypeError, TypeError),
    (lambda x: x.astype("complex128"), sg.DTypeError, TypeError),
    (lambda x: x & x, sg.DTypeError, TypeError),
    (lambda x: ~x, sg.DTypeError, TypeError),
    (lambda x: x[..., None], sg.SymgraphError, Exception),
    (lambda x: x[np.array([0])], sg.GraphError, ValueError),
    (lambda x: x + "s", sg.ArgumentError, TypeError),
    (lambda x: x.max(axis=0) if False else sg.max(x[:0], axis=0), sg.ShapeError, ValueError),
])
def test_build_time_errors(build, exc, builtin):
    x = Variable("x", shape=(2, 3, 4), dtype="float64")
    err = _raises(exc, builtin, build, x)
    assert HERE in str(err)


def test_deferred_build_errors_raise_at_call():
    x = Variable("x")
    for expr, exc, builtin in [(x.reshape(7), sg.ShapeError, ValueError),
                               (x[9], sg.IndexOutOfRange, IndexError),
                               (sg.max(x, axis=0), sg.ShapeError, ValueError),
                               (x & x, sg.DTypeError, TypeError)]:
        f = compile(expr)
        _raises(exc, builtin, f, np.ones((0, 3)))


def test_integer_negative_power_is_an_error_not_a_crash():
    x, y = Variable("x"), Variable("y")
    f = compile(x ** y)
    assert np.array_equal(f(np.array([2, 3]), np.array([3, 0])), [8, 1])
    with pytest.raises((sg.SymgraphError, ValueError)) as info:
        f(np.array([2, 3]), np.array([1, -1]))
    assert isinstance(info.value, sg.SymgraphError) and isinstance(info.value, ValueError)
    with pytest.raises(ValueError):
        sg.evaluate(x ** y, x=np.array([2]), y=np.array([-1]))


def test_bool_of_expression():
    x = Variable("x")
    err = _raises(sg.TracerBoolError, TypeError, bool, x > 1)
    assert "where" in str(err) or "cond" in str(err)
    _raises(sg.TracerBoolError, TypeError, lambda: x and 1)
    _raises(sg.TracerBoolError, TypeError, lambda: range(x))


def test_compile_argument_errors():
    x = Variable("x")
    _raises(sg.ArgumentError, TypeError, compile)
    _raises(sg.ArgumentError, TypeError, compile, np.ones(3))
    _raises(sg.ArgumentError, TypeError, compile, x, inputs=[x, x])
    _raises(sg.ArgumentError, TypeError, compile, x + Variable("y"), inputs=[x])
    _raises(sg.ArgumentError, TypeError, compile, x, opt_level=-1)
    _raises(sg.ArgumentError, TypeError, compile, x, opt_level=99)  # a file could not load it
    _raises(sg.ArgumentError, TypeError, compile, x, opt_level=True)
    _raises(sg.ArgumentError, TypeError, compile, x, inputs=["x"])


def test_out_argument_errors():
    x = Variable("x")
    f = compile(x + 1)
    try:
        f(np.ones(2), out=np.empty(2))
    except TypeError:
        pytest.skip("compiled functions take no out= argument")
    _raises(sg.ShapeError, ValueError, f, np.ones(2), out=np.empty(3))
    _raises(sg.DTypeError, TypeError, f, np.ones(2), out=np.empty(2, np.int64))
    _raises(sg.ArgumentError, TypeError, f, np.ones(2), out=[0.0, 0.0])
    ro = np.empty(2)
    ro.setflags(write=False)
    _raises(sg.ArgumentError, TypeError, f, np.ones(2), out=ro)


def test_errors_do_not_poison_later_calls():
    x = Variable("x", shape=(None,))
    f = compile(x * 2)
    for bad in [np.ones((2, 2)), "s", np.ones(2, np.float16)]:
        with pytest.raises(sg.SymgraphError):
            f(bad)
    assert np.array_equal(f(np.arange(3)), [0, 2, 4])
