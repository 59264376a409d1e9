"""fuse and memory: kernel grouping and buffer planning, checked on graphs and by results."""
import numpy as np

import symgraph as sg
from symgraph.infer import specialize
from symgraph.interpret import run_graph
from symgraph.passes.fuse import MAX_KERNEL_WEIGHT, fuse, schedule
from symgraph.passes.memory import memory

F8 = np.dtype("float64")


def typed(outputs, **shapes):
    outputs = outputs if isinstance(outputs, list) else [outputs]
    variables = sg.frontend.find_variables(outputs)
    g = sg.frontend.to_graph(outputs, variables)
    return specialize(g, {v.attrs["name"]: (shapes[v.attrs["name"]], F8) for v in variables})


def kernels(g):
    return {d["kernel"] for _, d in g.nodes(data=True) if d.get("kernel") is not None}


def test_elementwise_chain_is_one_kernel():
    x, y = sg.Variable("x"), sg.Variable("y")
    g, details = fuse(typed(sg.tanh(x * y + 1) * sg.exp(-x) - 0.5 * y, x=(8,), y=(8,)))
    assert len(kernels(g)) == 1 and details["kernels"] == 1


def test_producers_fuse_into_the_reduction_and_nothing_is_stored():
    a, b = sg.Variable("a"), sg.Variable("b")
    g, _ = memory(fuse(typed(sg.sum((a - b) ** 2), a=(100,), b=(100,)))[0])
    assert len(kernels(g)) == 1
    assert g.graph["workspace_bytes"] == 0


def test_siblings_share_one_loop_storing_both_results():
    x = sg.Variable("x")
    shared = sg.exp(x) * 2
    g, details = fuse(typed([shared + 1, shared * 3], x=(16,)))
    assert len(kernels(g)) == 1 and details["kernels_merged"] >= 1
    f = sg.compile([shared + 1, shared * 3])
    data = np.linspace(-1, 1, 16)
    for got, want in zip(f(data), sg.evaluate([shared + 1, shared * 3], x=data)):
        np.testing.assert_allclose(got, want, rtol=1e-14)  # exp within an ulp of numpy's


def test_a_smaller_operand_under_broadcasting_is_not_recomputed_per_element():
    row, mat = sg.Variable("row"), sg.Variable("mat")
    expensive = sg.exp(sg.sin(row))  # shape (4,): inlining it into (1000, 4) would redo it
    g, _ = fuse(typed(mat * expensive, row=(4,), mat=(1000, 4)))
    kernel_of = {d["op"]: d["kernel"] for _, d in g.nodes(data=True) if d.get("kernel") is not None}
    assert kernel_of["exp"] != kernel_of["mul"]


def test_kernel_size_is_capped():
    x = sg.Variable("x")
    e = x
    for _ in range(MAX_KERNEL_WEIGHT // 8):
        e = sg.tanh(e) + 1.0  # 16 + 1 weight per step
    g, _ = fuse(typed(e, x=(8,)))
    assert len(kernels(g)) >= 2
    data = np.linspace(-1, 1, 8)
    np.testing.assert_allclose(sg.compile(e)(data), sg.evaluate(e, x=data), rtol=1e-12)


def test_schedule_gives_every_op_its_own_kernel():
    x = sg.Variable("x")
    g, _ = schedule(typed(sg.exp(x) * 2 + 1, x=(4,)))
    ops = [n for n, d in g.nodes(data=True) if d.get("kernel") is not None]
    assert len(kernels(g)) == len(ops)


def test_memory_plan_never_overlaps_live_buffers():
    x, w = sg.Variable("x"), sg.Variable("w")
    e = x
    for _ in range(6):
        e = sg.tanh(e @ w)  # matmul operands are materialized: a chain of buffers
    g = typed(e, x=(8, 8), w=(8, 8))
    planned, _ = memory(fuse(g)[0])
    spans = {}
    for n, d in planned.nodes(data=True):
        if "offset" in d:
            users = [planned.nodes[u]["kernel"] for u in planned.successors(n)]
            spans[n] = (d["offset"], d["offset"] + 8 * 8 * 8, d["kernel"], max(users, default=d["kernel"]))
    for a, (lo1, hi1, s1, e1) in spans.items():
        for b, (lo2, hi2, s2, e2) in spans.items():
            if a < b and lo1 < hi2 and lo2 < hi1:  # same bytes: lifetimes must not meet
                assert e1 < s2 or e2 < s1
    values = {"x": np.eye(8) * 0.5, "w": np.full((8, 8), 0.1)}
    np.testing.assert_array_equal(run_graph(planned, values)[0], run_graph(g, values)[0])


def test_threads_do_not_change_results():
    a, b = sg.Variable("a"), sg.Variable("b")
    exprs = [sg.tanh(a * b) + 1, sg.sum(a * b), sg.max(a - b, axis=1), a @ b.T]
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((600, 400)), rng.standard_normal((600, 400))
    one = sg.compile(exprs, num_threads=1)(x, y)
    two = sg.compile(exprs, num_threads=2)
    for _ in range(3):  # the same split every call: bit-identical, never timing-dependent
        for got, want in zip(two(x, y), one):
            if got.ndim == 0:  # a full reduction's partials depend on the (fixed) split
                np.testing.assert_allclose(got, want, rtol=1e-12)
            else:
                np.testing.assert_array_equal(got, want)
    first = two(x, y)[1]
    assert all(two(x, y)[1] == first for _ in range(3))
