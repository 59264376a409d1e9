"""The loops codegen emits are vectorized for the host CPU (checked in the assembly)."""
import re

import llvmlite.binding as llvm
import numpy as np
import pytest

import symgraph as sg

HOST_FEATURES = llvm.get_host_cpu_features()
pytestmark = pytest.mark.skipif(not HOST_FEATURES.get("avx2"), reason="host CPU has no AVX2")
WIDE = re.compile(r"\bv(mul|add|sub|max|min|div|sqrt)p[sd]\s+%[yz]mm")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_elementwise_loop_uses_packed_simd(dtype):
    a, b = sg.Variable("a", (1000,), dtype), sg.Variable("b", (1000,), dtype)
    f = sg.compile(b * a + 1, num_threads=1)
    assert WIDE.search(f.asm), "expected packed ymm/zmm arithmetic in the kernel"
    x = np.arange(1000, dtype=dtype)
    np.testing.assert_array_equal(f(x, x), x * x + 1)


def test_fused_reduction_uses_packed_simd():
    a, b = sg.Variable("a", (4096,), "float64"), sg.Variable("b", (4096,), "float64")
    f = sg.compile(sg.sum((a - b) ** 2), num_threads=1)
    assert WIDE.search(f.asm)


def test_transcendental_loop_has_no_libm_calls():
    a = sg.Variable("a", (1000,), "float32")
    f = sg.compile(sg.tanh(a) * sg.exp(-a), num_threads=1)
    assert WIDE.search(f.asm)
    assert not re.search(r"call\s+\S*(tanhf|expf)\b", f.asm)


def _math_heavy(dtype, n_terms):
    """A sum of n_terms transcendental terms over two inputs, sin and cos among them."""
    a, b = sg.Variable("a", (257,), dtype), sg.Variable("b", (257,), dtype)
    funcs = (sg.sin, sg.tanh, sg.sigmoid, sg.cos, sg.log1p, sg.exp)
    total = a * 0
    for k in range(n_terms):
        total = total + funcs[k % len(funcs)](a * (1.0 + k / 64) - b)
    return total, a, b


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_math_heavy_kernels_call_shared_simd_math(dtype):
    """Past OUTLINE_MATH_CALLS, math is one function per module with SIMD variants the
    vectorizer calls; sin/cos fix far arguments lane by lane, so no exact kernel copy."""
    from symgraph.codegen.kernel import OUTLINE_MATH_CALLS

    expr, a, b = _math_heavy(dtype, OUTLINE_MATH_CALLS + 8)
    f = sg.compile(expr, num_threads=1)
    assert "vector-function-abi-variant" in f.llvm_ir
    assert ".exact" not in f.llvm_ir
    width = 16 if dtype == "float32" else 8
    assert re.search(rf"call\w*\s+\S*symgraph_(sin|tanh|exp)_f(32|64)_v{width}", f.asm)
    rng = np.random.default_rng(3)
    x = rng.uniform(0.1, 0.9, 257).astype(dtype)
    y = rng.uniform(-0.5, 0.5, 257).astype(dtype)
    x[::17] = 3e19 if dtype == "float32" else 3e150  # past the trig range (exp goes to inf)
    want = sg.evaluate(expr, a=x, b=y)
    got = f(x, y)
    np.testing.assert_allclose(got, want, rtol=2e-4 if dtype == "float32" else 1e-12,
                               atol=1e-5 if dtype == "float32" else 1e-12)


def test_small_graphs_keep_math_inlined():
    expr, a, b = _math_heavy("float64", 6)
    f = sg.compile(expr, num_threads=1)
    assert "vector-function-abi-variant" not in f.llvm_ir


def test_large_graphs_fix_the_vector_width():
    """Past FIXED_WIDTH_MIN_NODES, flat loops carry a vectorize.width hint (the host's lanes
    for the widest dtype) so LLVM skips its search over widths; results are unchanged."""
    from symgraph.codegen.cpu import host_vector_bytes
    from symgraph.codegen.kernel import FIXED_WIDTH_MIN_NODES

    a = sg.Variable("a", (100,), "float64")
    x = a
    for k in range(FIXED_WIDTH_MIN_NODES // 2 + 10):
        x = x * 0.5 + a if k % 2 else sg.maximum(x, a) - 1.0
    f = sg.compile(x, num_threads=1)
    lanes = host_vector_bytes() // 8
    assert f'!"llvm.loop.vectorize.width", i32 {lanes}' in f.llvm_ir
    data = np.linspace(-3, 3, 100)
    np.testing.assert_array_equal(f(data), sg.evaluate(x, a=data))
    small = sg.compile(a * 2 + 1, num_threads=1)
    assert "llvm.loop.vectorize.width" not in small.llvm_ir


def test_small_integer_kernels_are_not_miscompiled():
    """Found by the long reliability tier: with LLVM 22's SLP vectorizer on, this floor
    division of a bool array by a broadcast int32 vector gave 0 instead of -1 in one lane
    (compiled next to two unrelated kernels). symgraph keeps SLP vectorization off."""
    x0 = sg.Variable("x0", (2, 3), "bool")
    x1 = sg.Variable("x1", (2, 3), "int32")
    x2 = sg.Variable("x2", (1, 3), "int64")
    x6 = sg.Variable("x6", (3,), "int32")
    pooled = sg.avg_pool2d(sg.reshape(x2.astype("float64"), (1, 1, 3, 1)), (2, 1))
    outs = [pooled, x0 <= x1, x0 // x6]
    inputs = {"x0": np.array([[True, True, True], [False, True, True]]),
              "x1": np.zeros((2, 3), np.int32), "x2": np.array([[1, 2, 3]]),
              "x6": np.array([-3, 16, -3], np.int32)}
    for opt_level in (0, 2):
        got = sg.compile(outs, opt_level=opt_level)(**inputs)
        for g, w in zip(got, sg.evaluate(outs, **inputs)):
            np.testing.assert_array_equal(g, w)
