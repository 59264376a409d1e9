"""Epilogue fusion: the bias add and activation after a matmul or conv2d run on each finished
tile (or matrix-vector row) of the product, with results bit-identical to unfused code."""
from __future__ import annotations

import numpy as np
import pytest

import symgraph as sg
from symgraph.passes.fuse import fuse
from symgraph.infer import specialize
from symgraph.frontend import to_graph

RNG = np.random.default_rng(0)


def _kernels(f):
    return {d["kernel"] for _, d in f.graph.nodes(data=True) if d.get("kernel") is not None}


def _fused(exprs, variables, types):
    g = specialize(to_graph(exprs, variables), types)
    return fuse(g)


def _layer(m, k, n, dtype="float32"):
    x = sg.Variable("x", (m, k), dtype)
    w = sg.Variable("w", (k, n), dtype)
    b = sg.Variable("b", (n,), dtype)
    data = (RNG.standard_normal((m, k)).astype(dtype), RNG.standard_normal((k, n)).astype(dtype),
            RNG.standard_normal(n).astype(dtype))
    return x, w, b, data


@pytest.mark.parametrize("m,k,n", [(4, 8, 3), (1, 512, 256), (256, 512, 256), (37, 33, 70),
                                   (300, 64, 1), (5, 0, 7)])
@pytest.mark.parametrize("num_threads", [1, 2])
def test_dense_layer_is_one_kernel_and_bit_identical(m, k, n, num_threads):
    x, w, b, data = _layer(m, k, n)
    y = sg.tanh(sg.relu(x @ w + b) * 2 - 0.5)
    f = sg.compile(y, num_threads=num_threads)
    assert len(_kernels(f)) == 1
    assert f.memory_plan["intermediates"] == 0  # the product lives in the output buffer
    unfused = sg.compile(y, num_threads=num_threads, opt_level=0)
    assert f(*data).tobytes() == unfused(*data).tobytes()


def test_gemm_applies_the_epilogue_per_tile():
    x, w, b, _ = _layer(64, 64, 64)
    f = sg.compile(sg.relu(x @ w + b), num_threads=1)
    (header,) = [line for line in f.llvm_ir.splitlines() if line.startswith("define")
                 and line.split("(")[0].endswith('.gemm"')]
    # the kernel's own GEMM: A, B, C, M, N, K, status and the epilogue's environment
    assert header.count("ptr") == 5 and header.count("i64") == 3


def test_open_batch_with_epilogue():
    x = sg.Variable("x", (None, 64), "float32")
    w = sg.Constant(RNG.standard_normal((64, 32)).astype("float32"))
    b = sg.Constant(RNG.standard_normal(32).astype("float32"))
    y = sg.relu(x @ w + b)
    f = sg.compile(y)
    baseline = sg.compile(y, opt_level=0)
    for n in (1, 5, 300, 0):
        data = RNG.standard_normal((n, 64)).astype("float32")
        assert f(data).tobytes() == baseline(data).tobytes()
    assert f.shape_generic and f.cache_info().compilations == 1


@pytest.mark.parametrize("num_threads", [1, 2])
def test_conv_with_bias_and_relu(num_threads):
    x = sg.Variable("x", (2, 8, 10, 10), "float32")
    w = sg.Variable("w", (16, 8, 3, 3), "float32")
    b = sg.Variable("b", (16, 1, 1), "float32")
    y = sg.relu(sg.conv2d(x, w, padding=1) + b)
    data = (RNG.standard_normal((2, 8, 10, 10)).astype("float32"),
            RNG.standard_normal((16, 8, 3, 3)).astype("float32"),
            RNG.standard_normal((16, 1, 1)).astype("float32"))
    f = sg.compile(y, num_threads=num_threads)
    assert len(_kernels(f)) == 1
    assert ".epilogue" in f.llvm_ir  # applied per GEMM tile, not in a pass afterwards
    assert f(*data).tobytes() == sg.compile(y, opt_level=0)(*data).tobytes()


def test_what_stays_out_of_an_epilogue():
    x = sg.Variable("x", (4, 8), "float32")
    w = sg.Variable("w", (8, 3), "float32")
    types = {"x": ((4, 8), np.dtype("float32")), "w": ((8, 3), np.dtype("float32"))}
    product = x @ w
    cases = {
        "used twice": [sg.relu(product) + sg.sum(product)],
        "changes dtype": [product > 0],
        "product is an output": [product, sg.relu(product)],
        "reduces": [sg.sum(sg.relu(product), axis=1)],
    }
    for label, outs in cases.items():
        _, details = _fused(outs, [x, w], types)
        assert details["epilogues"] == 0, label
    _, details = _fused([sg.relu(product + 1.0)], [x, w], types)
    assert details["epilogues"] == 1
    batched = sg.Variable("a", (2, 4, 8), "float32")
    _, details = _fused([sg.relu(batched @ w)], [batched, w],
                        {"a": ((2, 4, 8), np.dtype("float32")), "w": types["w"]})
    assert details["epilogues"] == 0


def test_check_finite_still_names_the_epilogue_node():
    x, w, b, _ = _layer(3, 4, 2, "float64")
    y = sg.log(x @ w + b)
    f = sg.compile(y, check_finite=True)
    with pytest.raises(sg.NonFiniteError, match="log"):
        f(np.ones((3, 4)), -np.ones((4, 2)), np.zeros(2))


def test_the_cuda_target_keeps_products_apart():
    x, w, b, _ = _layer(4, 8, 3)
    g = sg.compile(sg.relu(x @ w + b), target="cuda", arch="sm_80")
    assert "epilogues" not in str(g.pass_log) or all(
        r.details.get("epilogues", 0) == 0 for r in g.pass_log)
