"""cse: structurally equal nodes merge; values that differ in any bit never do."""
import numpy as np

import symgraph as sg
from symgraph import Constant, Variable

from pass_helpers import FLOAT_EDGES, assert_same_results, ops, output_node, run_pass, typed


def test_commutative_operands_merge():
    x, y = Variable("x"), Variable("y")
    g, inputs = typed([x * y, y * x, x + y, y + x], x=FLOAT_EDGES, y=np.roll(FLOAT_EDGES, 2))
    h, details = run_pass("cse", g)
    assert details == {"merged": 2}
    assert ops(h) == {"var": 2, "mul": 1, "add": 1}
    outs = h.graph["outputs"]
    assert outs[0] == outs[1] and outs[2] == outs[3]
    assert_same_results(g, h, inputs)


def test_non_commutative_operands_stay_apart():
    x, y = Variable("x"), Variable("y")
    g, inputs = typed([x - y, y - x, x / y, y / x], x=FLOAT_EDGES, y=np.roll(FLOAT_EDGES, 2))
    h, details = run_pass("cse", g)
    assert details == {"merged": 0}


def test_maximum_ties_keep_operand_order():
    # maximum(0.0, -0.0) is 0.0 but maximum(-0.0, 0.0) is -0.0: swapping is not exact.
    x, y = Variable("x"), Variable("y")
    g, inputs = typed([sg.maximum(x, y), sg.maximum(y, x)], x=np.array([0.0]), y=np.array([-0.0]))
    h, details = run_pass("cse", g)
    assert details == {"merged": 0}
    assert_same_results(g, h, inputs)


def test_merges_cascade_and_keep_every_location():
    x, y = Variable("x"), Variable("y")
    first = (x + y) * 2.0
    second = (y + x) * 2.0
    g, inputs = typed([first, second], x=np.arange(3.0), y=np.ones(3))
    h, details = run_pass("cse", g)
    assert details == {"merged": 3}  # the add, the constant 2.0, the mul
    out = output_node(h)
    assert [loc.line for loc in out["loc"]] == [first.loc.line, second.loc.line]
    assert h.graph["outputs"][0] == h.graph["outputs"][1]
    assert_same_results(g, h, inputs)


def test_locations_are_deduplicated():
    x = Variable("x")
    exprs = [x * 3.0 for _ in range(3)]  # one source line, three nodes
    g, inputs = typed(exprs, x=np.arange(3.0))
    h, details = run_pass("cse", g)
    assert details == {"merged": 4}
    assert len(output_node(h)["loc"]) == 1


def test_name_survives_merge():
    x = Variable("x")
    g, inputs = typed([x * Constant(2.0), x * Constant(2.0, name="two")], x=np.arange(3.0))
    h, _ = run_pass("cse", g)
    consts = [d for _, d in h.nodes(data=True) if d["op"] == "const"]
    assert len(consts) == 1 and consts[0]["name"] == "two"


def test_constants_merge_only_when_bytes_dtype_and_shape_agree():
    x = Variable("x")
    same = [x + Constant(1.5), x + Constant(1.5)]
    zeros = [x * Constant(0.0), x * Constant(-0.0)]
    widths = [x + Constant(np.float32(0.5)), x + Constant(np.float64(0.5))]
    shapes = [x + Constant(1.0), x + Constant([1.0, 1.0, 1.0])]
    nans = [x + Constant(np.nan), x + Constant(np.nan)]
    g, inputs = typed(same + zeros + widths + shapes + nans, x=FLOAT_EDGES[:3])
    h, details = run_pass("cse", g)
    outs = h.graph["outputs"]
    assert outs[0] == outs[1] and outs[8] == outs[9]
    assert len(set(outs[2:8])) == 6
    assert details == {"merged": 4}  # two constants and two adds
    assert_same_results(g, h, inputs)


def test_attributes_distinguish_nodes():
    x = Variable("x")
    g, inputs = typed([x.sum(axis=0), x.sum(axis=1), x.sum(axis=0), x.sum(axis=-2)],
                      x=np.arange(6.0).reshape(2, 3))
    h, details = run_pass("cse", g)
    outs = h.graph["outputs"]
    assert details == {"merged": 2} and outs[0] == outs[2] == outs[3] != outs[1]
    assert_same_results(g, h, inputs)


def test_dtype_distinguishes_casts():
    x = Variable("x")
    g, inputs = typed([x.astype("float32"), x.astype("float64"), x.astype("float32")],
                      x=np.arange(3))
    h, details = run_pass("cse", g)
    assert details == {"merged": 1}
    assert_same_results(g, h, inputs)


def test_long_chain_is_hash_based():
    x = Variable("x")
    a = b = x
    for i in range(300):
        a = a * 1.5 + float(i)
        b = b * 1.5 + float(i)
    g, inputs = typed([a, b], x=np.arange(4.0))
    h, details = run_pass("cse", g)
    # 600 ops of the second chain, 599 copies of 1.5, the second copy of each float(i)
    assert details["merged"] == 600 + 599 + 300
    assert h.graph["outputs"][0] == h.graph["outputs"][1]
    assert_same_results(g, h, inputs)
