"""dce: nodes no output depends on go; inputs stay (they are the call signature)."""
import numpy as np

from symgraph import Variable
from symgraph.frontend import to_graph
from symgraph.graph import add_node
from symgraph.infer import specialize

from pass_helpers import assert_same_results, ops, run_pass, typed


def test_dead_nodes_are_removed_and_counted():
    x, y = Variable("x"), Variable("y")
    g = specialize(to_graph([x + 1.0], [x, y]), {"x": ((3,), np.float64), "y": ((3,), np.float64)})
    inputs = {"x": np.arange(3.0), "y": np.ones(3)}
    dead = add_node(g, "neg", (0,), {}, (3,), np.dtype("float64"))
    add_node(g, "mul", (dead, dead), {}, (3,), np.dtype("float64"))
    h, details = run_pass("dce", g)
    assert details == {"removed": 2}
    assert ops(h) == {"var": 2, "const": 1, "add": 1}  # the unused input y stays
    assert_same_results(g, h, inputs)


def test_nothing_to_remove():
    x = Variable("x")
    g, inputs = typed([x * 2.0, x * 2.0], x=np.arange(3.0))
    h, details = run_pass("dce", g)
    assert details == {"removed": 0} and h.number_of_nodes() == g.number_of_nodes()


def test_after_simplify_the_bypassed_nodes_go():
    x = Variable("x")
    g, inputs = typed(-(-(x * 1)), x=np.arange(3.0))
    h, _ = run_pass("simplify", g)
    h, details = run_pass("dce", h)
    assert details == {"removed": 4}  # two negs, the mul and its constant
    assert ops(h) == {"var": 1}
    assert_same_results(g, h, inputs)
