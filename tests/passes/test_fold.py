"""fold: constant subgraphs become one constant, with results exactly the interpreter's."""
import numpy as np
import pytest

import symgraph as sg
from symgraph import Constant, Variable
from symgraph.frontend import apply
from symgraph.interpret import run_graph
from symgraph.ops import REGISTRY
from symgraph.passes.fold import MAX_FOLD_BYTES

from pass_helpers import FLOAT_EDGES, INT32_EDGES, assert_same_results, ops, output_node, run_pass, typed


def add(a, b):
    return a + b


def test_nested_constants_fold_to_one():
    g, _ = typed(add(add(Constant(1), Constant(2)), add(Constant(3), Constant(4))))
    h, details = run_pass("fold", g)
    assert details == {"folded": 3}
    h, removed = run_pass("dce", h)
    assert removed == {"removed": 6}
    assert list(ops(h).elements()) == ["const"]
    value = output_node(h)["attrs"]["value"]
    assert value.dtype == np.int64 and value == 10 and not value.flags.writeable


def test_compiled_graph_is_the_constant():
    f = sg.compile(add(add(Constant(1), Constant(2)), add(Constant(3), Constant(4))), verify=True)
    assert f() == 10
    assert [d["op"] for _, d in f.graph.nodes(data=True)] == ["const"]
    assert f.pass_log[0].name == "fold" and f.pass_log[0].details == {"folded": 3}


def test_dtype_is_kept():
    g, _ = typed(Constant(np.float32(1.5)) * Constant(np.float32(3)) + 1)
    h, _ = run_pass("fold", g)
    out = output_node(h)
    assert out["op"] == "const" and out["attrs"]["value"].dtype == np.float32
    assert_same_results(g, h, {})


@pytest.mark.parametrize("expr, check", [
    (lambda: Constant(np.inf) - Constant(np.inf), np.isnan),
    (lambda: Constant(-0.0) * Constant(1.0), np.signbit),
    (lambda: Constant(1.0) / Constant(-0.0), lambda v: v == -np.inf),
    (lambda: Constant(np.nan) * Constant(0.0), np.isnan),
])
def test_nan_inf_negative_zero_survive(expr, check):
    g, _ = typed(expr())
    h, details = run_pass("fold", g)
    assert details["folded"] == 1
    assert check(output_node(h)["attrs"]["value"])
    assert_same_results(g, h, {})


def test_int_overflow_wraps():
    g, _ = typed(Constant(np.int32(2**31 - 1)) + Constant(np.int32(1)))
    h, _ = run_pass("fold", g)
    value = output_node(h)["attrs"]["value"]
    assert value.dtype == np.int32 and value == -(2**31)
    assert_same_results(g, h, {})


def test_integer_division_by_zero_as_numpy():
    g, _ = typed([Constant(np.int64(7)) // Constant(np.int64(0)),
                  Constant(np.int64(7)) % Constant(np.int64(0)),
                  Constant(np.int64(7)) / Constant(np.int64(0))])
    h, details = run_pass("fold", g)
    assert details["folded"] == 3
    assert_same_results(g, h, {})


def test_raising_reference_is_left_for_run_time():
    g, _ = typed(Constant(2) ** Constant(-1))
    h, details = run_pass("fold", g)
    assert details == {"folded": 0} and output_node(h)["op"] == "pow"
    with pytest.raises(sg.ExecutionError):
        sg.compile(Constant(2) ** Constant(-1))()


def test_variables_are_never_folded():
    x = Variable("x")
    g, inputs = typed((Constant(2.0) * Constant(3.0)) + x, x=np.arange(3.0))
    h, details = run_pass("fold", g)
    assert details == {"folded": 1}
    assert ops(h)["var"] == 1 and output_node(h)["op"] == "add"
    assert_same_results(g, h, inputs)


def test_size_limit():
    side = int(np.sqrt(MAX_FOLD_BYTES // 8))
    small = sg.broadcast_to(Constant(1.0), (side, side))  # exactly the limit
    big = sg.broadcast_to(Constant(1.0), (side, 2 * side))
    g, _ = typed([small, big])
    h, details = run_pass("fold", g)
    assert details == {"folded": 1}
    assert output_node(h, 0)["op"] == "const" and output_node(h, 1)["op"] == "broadcast_to"


def test_movement_reduce_and_matmul_fold():
    a = Constant(np.arange(6.0).reshape(2, 3))
    g, _ = typed([(a.T @ a).sum(axis=0), sg.concatenate([a, a], axis=1)[1:, ::2]])
    h, details = run_pass("fold", g)
    assert details["folded"] == 5  # transpose, matmul, sum, concat, slice
    assert all(output_node(h, i)["op"] == "const" for i in range(2))
    assert_same_results(g, h, {})


BINARY = sorted(n for n, op in REGISTRY.items() if op.kind == "elementwise" and op.arity == 2)
UNARY = sorted(n for n, op in REGISTRY.items() if op.kind == "elementwise" and op.arity == 1
               and n != "cast")


@pytest.mark.parametrize("opname", BINARY)
@pytest.mark.parametrize("values", [FLOAT_EDGES, INT32_EDGES], ids=["float64", "int32"])
def test_every_binary_op_folds_bit_exactly(opname, values):
    a, b = Constant(values), Constant(np.roll(values, 3))
    try:
        expr = apply(opname, a, b)
        g, _ = typed(expr)
        run_graph(g, {})  # the reference must accept these operands
    except (sg.SymgraphError, ValueError):
        pytest.skip(f"{opname} does not take these operands")
    h, details = run_pass("fold", g)
    assert details == {"folded": 1}
    assert_same_results(g, h, {})


@pytest.mark.parametrize("opname", UNARY)
def test_every_unary_op_folds_bit_exactly(opname):
    try:
        g, _ = typed(apply(opname, Constant(FLOAT_EDGES)))
    except sg.SymgraphError:
        pytest.skip(f"{opname} does not take float64")
    h, details = run_pass("fold", g)
    assert details == {"folded": 1}
    assert_same_results(g, h, {})
