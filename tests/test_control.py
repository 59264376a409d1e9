"""Control flow: cond, while_loop, fori_loop and scan, compiled vs the interpreter."""
import numpy as np
import pytest

import symgraph as sg
from symgraph import Variable, compile, evaluate


def both(outputs, opt_levels=(0, 2), **inputs):
    """Compiled results at each opt level, checked against the interpreter; returns them."""
    want = evaluate(outputs, **inputs)
    for level in opt_levels:
        got = compile(outputs, opt_level=level)(**inputs)
        flat_got = got if isinstance(got, list) else [got]
        flat_want = want if isinstance(want, list) else [want]
        for g, w in zip(flat_got, flat_want):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_array_equal(g, w)
    return want


def test_while_loop_example_from_the_docs():
    a, b = Variable("a"), Variable("b")
    result = sg.while_loop(lambda a, b: a < b, lambda a, b: (a + 2, b + 1), (a, b))
    assert [int(v) for v in both(list(result), a=0, b=10)] == [20, 20]


def test_while_loop_on_plain_values_runs_eagerly():
    assert sg.while_loop(lambda a, b: a < b, lambda a, b: (a + 2, b + 1), (0, 10)) == (20, 20)


@pytest.mark.parametrize("values", [np.array([1.0, 2.0]), np.array([-1.0, -2.0]), np.zeros(0)])
def test_cond_takes_one_branch(values):
    x = Variable("x")
    y = sg.cond(x.sum() > 0, lambda v: v * 2, lambda v: v - 1, x)
    out = both(y, x=values)
    expected = values * 2 if values.sum() > 0 else values - 1
    np.testing.assert_array_equal(out, expected)


def test_cond_runs_only_the_taken_branch():
    x = Variable("x", (3,), "int64")
    # The untaken branch would fail at run time (integer power with a negative exponent).
    y = sg.cond(x.sum() >= 0, lambda v: v + 1, lambda v: v ** -1, x)
    np.testing.assert_array_equal(compile(y)(np.arange(3)), np.arange(3) + 1)
    with pytest.raises(sg.ExecutionError):
        compile(y)(-np.arange(1, 4))


def test_cond_with_captured_values_and_several_results():
    x, w = Variable("x"), Variable("w")
    s, p = sg.cond(x.max() > w, lambda v: (v + w, v * w), lambda v: (v - w, v / w), x)
    both([s, p], x=np.array([1.0, 5.0]), w=2.0)
    both([s, p], x=np.array([1.0, 1.5]), w=2.0)


def test_cond_branch_mismatch_names_both_lines():
    x = Variable("x", (3,), "float32")

    def true_branch(v):
        return v * 2

    def false_branch(v):
        return v.astype("float64")

    with pytest.raises(sg.ShapeError) as info:
        sg.cond(x.sum() > 0, true_branch, false_branch, x)
    text = str(info.value)
    lines = {true_branch.__code__.co_firstlineno, false_branch.__code__.co_firstlineno}
    for line in lines:
        assert f"test_control.py:{line}" in text
    assert "float32" in text and "float64" in text


def test_while_loop_must_keep_types():
    x = Variable("x", (3,), "int32")
    with pytest.raises(sg.ShapeError, match="loop variables must keep"):
        sg.while_loop(lambda v: v.sum() < 10, lambda v: v * 2.5, x)


def test_while_loop_with_zero_iterations_returns_the_initial_values():
    x = Variable("x")
    (out,) = sg.while_loop(lambda v: v.sum() > 100, lambda v: v * 2, x)
    np.testing.assert_array_equal(both(out, x=np.array([1.0, 2.0])), [1.0, 2.0])


def test_while_loop_max_iters():
    x = Variable("x")
    (out,) = sg.while_loop(lambda v: v.sum() < 100, lambda v: v * 2, x, max_iters=3)
    f = compile(out)
    with pytest.raises(sg.ExecutionError, match="max_iters"):
        f(np.array([1.0, 2.0]))
    with pytest.raises(sg.ExecutionError, match="max_iters"):
        evaluate(out, x=np.array([1.0, 2.0]))
    np.testing.assert_array_equal(f(np.array([30.0, 30.0])), [60.0, 60.0])


def test_fori_loop_and_nesting():
    x = Variable("x")
    z = sg.fori_loop(0, 5, lambda i, v: v * 2 + i, x)
    both(z, x=np.array([1.0, 2.0]))

    def alternate(i, u):
        return sg.cond(i % 2 == 0, lambda q: q + 1, lambda q: q * 3, u)

    nested = sg.fori_loop(0, 4, alternate, x) + 1
    np.testing.assert_array_equal(both(nested, x=np.array([1.0, 2.0])), [22.0, 31.0])


def test_fori_loop_eager_matches_python():
    assert sg.fori_loop(0, 4, lambda i, v: v + i, 10) == 16


def test_scan_carry_and_stacked_outputs():
    xs = Variable("xs")
    carry, ys = sg.scan(lambda c, x: (c + x, c * x), sg.Constant(0.0), xs)
    out = both([carry, ys], xs=np.arange(5.0))
    np.testing.assert_array_equal(out[1], [0.0, 0.0, 2.0, 9.0, 24.0])


def test_scan_with_tuples_and_empty_input():
    x, xs = Variable("x"), Variable("xs")
    c, (doubled, seen) = sg.scan(lambda c, r: (c + r.sum(), (r * 2, c)), x, xs)
    both([c, doubled, seen], x=np.ones(2), xs=np.arange(6.0).reshape(3, 2))
    both([c, doubled, seen], x=np.ones(2), xs=np.zeros((0, 2)))


def test_scan_eager_matches_compiled():
    xs = np.arange(4.0)
    carry, ys = sg.scan(lambda c, x: (c + x, c * x), 0.0, xs)
    assert carry == 6.0
    np.testing.assert_array_equal(ys, [0.0, 0.0, 2.0, 9.0])


def test_passes_run_inside_bodies():
    x = Variable("x", (4,), "float64")
    y = sg.cond(x.sum() > 0, lambda v: v * 1 + (2.0 + 3.0), lambda v: v - 0, x)
    f = compile(y)
    bodies = [d["attrs"]["bodies"] for _, d in f.graph.nodes(data=True) if d["op"] == "cond"][0]
    for body in bodies:
        assert all(d.get("kernel") is not None or d["op"] in ("var", "const")
                   for _, d in body.nodes(data=True))
    np.testing.assert_array_equal(f(np.arange(4.0)), evaluate(y, x=np.arange(4.0)))


def test_control_flow_under_threads():
    x = Variable("x")
    out = sg.fori_loop(0, 3, lambda i, v: sg.tanh(v) + i, x)
    f = compile(out, num_threads=2)
    data = np.linspace(-3, 3, 300_000)
    np.testing.assert_allclose(f(data), evaluate(out, x=data), rtol=1e-12)


def test_constants_fold_into_branches_and_loops():
    x = Variable("x", (3,), "float64")
    k = sg.Constant(2.0) + sg.Constant(1.0)  # folds to 3.0 outside, then flows into the bodies
    y = sg.cond(x.sum() > 0, lambda v, c: v * c, lambda v, c: v - c, x, k)
    (z,) = sg.while_loop(lambda v: v.sum() < 100, lambda v: v * (k + k), y)
    f = compile(z)
    control = [d for _, d in f.graph.nodes(data=True) if d["op"] in ("cond", "while")]
    for d in control:
        for body in d["attrs"]["bodies"]:
            ops = {bd["op"] for _, bd in body.nodes(data=True)}
            assert "add" not in ops  # k + k became a constant inside the loop body
    consts = [bd["attrs"]["value"] for d in control for body in d["attrs"]["bodies"]
              for _, bd in body.nodes(data=True) if bd["op"] == "const"]
    assert any(np.array_equal(c, 3.0) for c in consts) and any(np.array_equal(c, 6.0) for c in consts)
    np.testing.assert_array_equal(f(np.ones(3)), evaluate(z, x=np.ones(3)))


@pytest.mark.parametrize("call, message", [
    (lambda: sg.cond(True, 5, lambda: 1), "true_fn must be a function"),
    (lambda: sg.cond(np.array([True, False]), lambda: 1, lambda: 2), "one boolean"),
    (lambda: sg.cond("yes", lambda: 1, lambda: 2), "one boolean"),
    (lambda: sg.while_loop(lambda a: a < 3, None, (0,)), "body_fn must be a function"),
    (lambda: sg.while_loop(lambda a: np.zeros(2), lambda a: a + 1, (0,)), "one boolean"),
    (lambda: sg.fori_loop(0, 2.5, lambda i, x: x, 1), "upper must be an integer"),
    (lambda: sg.fori_loop(True, 3, lambda i, x: x, 1), "lower must be an integer"),
    (lambda: sg.scan(lambda c, x: c + x, 0, np.arange(3)), "must return a pair"),
    (lambda: sg.scan(lambda c, x: (c, x), 0, np.float64(2.0)), "leading axis"),
    (lambda: sg.scan(lambda c, x: (c, x), 0, []), "at least one array"),
    (lambda: sg.scan(lambda c, x: c, Variable("c"), Variable("xs", shape=(3,))),
     "must return a pair"),
    (lambda: sg.jit(5), "needs a function"),
    (lambda: sg.jit(static_argnums=0)(5), "needs a function"),
    (lambda: sg.grad(Variable("x") * 2, "x"), "list"),
])
def test_control_flow_arguments_are_checked(call, message):
    """Misused control-flow, jit and grad arguments raise SymgraphError, not Python's."""
    with pytest.raises(sg.SymgraphError, match=message):
        call()


def test_concrete_predicates_accept_numpy_scalars():
    assert sg.cond(np.bool_(False), lambda: 1, lambda: 2) == 2
    assert sg.cond(np.array([1.0]), lambda: 1, lambda: 2) == 1
    assert sg.fori_loop(np.int64(0), np.int32(4), lambda i, x: x + i, 0) == 6
