"""simplify: exact algebraic rewrites only; each keeps dtype, shape and every bit."""
import numpy as np
import pytest

import symgraph as sg
from symgraph import Constant, Variable

from pass_helpers import (FLOAT_EDGES, INT32_EDGES, assert_same_results, ops, output_node,
                          run_pass, typed)

F = {"x": FLOAT_EDGES}
I = {"x": INT32_EDGES}
F32 = {"x": np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0, -1.5, 1e-45, 3e38], np.float32)}


def simplified(expr, inputs):
    g, arrays = typed(expr, **inputs)
    h, details = run_pass("simplify", g)
    h, _ = run_pass("dce", h)
    assert_same_results(g, h, arrays)
    return h, details["rewrites"]


def is_input(h, i=0):
    return output_node(h, i)["op"] == "var"


@pytest.mark.parametrize("build, inputs, rule", [
    (lambda x: x * 1, F, "mul_one"),
    (lambda x: 1 * x, I, "mul_one"),
    (lambda x: x * Constant(np.float32(1)), F32, "mul_one"),
    (lambda x: x + Constant(-0.0), F, "add_zero"),
    (lambda x: Constant(np.float32(-0.0)) + x, F32, "add_zero"),
    (lambda x: x + 0, I, "add_zero"),
    (lambda x: x - 0.0, F, "sub_zero"),
    (lambda x: x - 0, I, "sub_zero"),
    (lambda x: -(-x), F, "neg_neg"),
    (lambda x: -(-x), I, "neg_neg"),
    (lambda x: x / 1, F, "div_one"),
    (lambda x: x ** 1, F, "pow_small"),
    (lambda x: x ** 1, I, "pow_small"),
    (lambda x: x.astype("float64"), F, "cast_same"),
    (lambda x: x.astype("int32"), I, "cast_same"),
])
def test_identity_rewrites(build, inputs, rule):
    h, rewrites = simplified(build(Variable("x")), inputs)
    assert rewrites == {rule: 1}
    assert is_input(h) and list(ops(h).elements()) == ["var"]


def test_bool_identities():
    x = Variable("x")
    h, rewrites = simplified([x * Constant(True), x + Constant(False)], {"x": np.array([True, False])})
    assert rewrites == {"mul_one": 1, "add_zero": 1}
    assert is_input(h, 0) and is_input(h, 1)


@pytest.mark.parametrize("build, inputs", [
    (lambda x: x * 0.0, F),                          # NaN, inf and -0.0 times 0
    (lambda x: x * 0, F),
    (lambda x: x + 0.0, F),                          # -0.0 + 0.0 is 0.0
    (lambda x: x + 0, F32),
    (lambda x: x - Constant(-0.0), F),               # x - (-0.0) is x + 0.0
    (lambda x: x * 1.0, I),                          # int32 * float -> float64
    (lambda x: x * Constant(np.ones(3)), {"x": np.float64(2.0)}),  # broadcasting grows x
    (lambda x: x * Constant(np.ones((2, 3))), {"x": np.arange(3.0)}),
    (lambda x: x + Constant(np.int64(0)), I),        # int32 + int64 -> int64
    (lambda x: x / 1, I),                            # true division of ints is float
    (lambda x: x ** 0.5, F),                         # pow and sqrt disagree on -0.0, -inf
    (lambda x: x ** 0.5, F32),
    (lambda x: x.astype("float32"), F),
])
def test_inexact_or_type_changing_rewrites_are_not_done(build, inputs):
    expr = build(Variable("x"))
    g, _ = typed(expr, **inputs)
    h, rewrites = simplified(expr, inputs)
    assert rewrites == {}
    assert output_node(h)["op"] == output_node(g)["op"]


@pytest.mark.parametrize("inputs", [F, F32, I, {"x": np.float64(3.0)}])
def test_square_becomes_multiply(inputs):
    h, rewrites = simplified(Variable("x") ** 2, inputs)
    assert rewrites == {"pow_small": 1}
    out = output_node(h)
    assert out["op"] == "mul" and out["args"][0] == out["args"][1]
    assert h.nodes[out["args"][0]]["op"] == "var"


def test_square_of_smaller_operand_is_kept():
    x = Variable("x")
    h, rewrites = simplified(x ** Constant(np.full(3, 2.0)), {"x": np.float64(3.0)})
    assert rewrites == {} and output_node(h)["op"] == "pow"


def test_pow_half_results_match_interpreter():
    # Whatever simplify does with x ** 0.5, results must equal the interpreter's exactly.
    for inputs in (F, F32, {"x": np.array([-0.0])}, {"x": np.float64(-np.inf)}):
        simplified(Variable("x") ** 0.5, inputs)


def test_transposes_compose():
    x = Variable("x")
    data = {"x": np.arange(24.0).reshape(2, 3, 4)}
    h, rewrites = simplified(sg.transpose(sg.transpose(x, (1, 2, 0)), (2, 0, 1)), data)
    assert rewrites == {"transpose_transpose": 1} and is_input(h)
    h, rewrites = simplified(sg.transpose(sg.transpose(x, (1, 2, 0)), (1, 0, 2)), data)
    out = output_node(h)
    assert rewrites == {"transpose_transpose": 1}
    assert out["op"] == "transpose" and h.nodes[out["args"][0]]["op"] == "var"
    assert tuple(out["attrs"]["perm"]) == (2, 1, 0)
    h, rewrites = simplified(x.T.T, data)
    assert is_input(h)


def test_reshapes_compose():
    x = Variable("x")
    data = {"x": np.arange(24.0).reshape(2, 3, 4)}
    h, rewrites = simplified(x.reshape(6, 4).reshape(4, 6), data)
    out = output_node(h)
    assert rewrites == {"reshape_reshape": 1}
    assert out["op"] == "reshape" and h.nodes[out["args"][0]]["op"] == "var"
    assert tuple(out["shape"]) == (4, 6)
    h, rewrites = simplified(x.reshape(-1).reshape(2, 3, 4), data)
    assert is_input(h)


def test_rewrites_chain_bottom_up():
    x = Variable("x")
    h, rewrites = simplified(-(-(x * 1 - 0.0)) / 1, F)
    assert rewrites == {"mul_one": 1, "sub_zero": 1, "neg_neg": 1, "div_one": 1}
    assert is_input(h)


def test_shared_and_output_nodes_stay_valid():
    x = Variable("x")
    y = x * 1
    h, rewrites = simplified([y, y + 2.0, y], F)
    outs = h.graph["outputs"]
    assert outs[0] == outs[2] and h.nodes[outs[0]]["op"] == "var"
