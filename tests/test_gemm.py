"""The generated GEMM: differential tests against numpy and against the plain loop nest.

The GEMM keeps the loop nest's summation order (k ascending from 0), so the two paths must
agree bit for bit; numpy's BLAS sums differently, so it is compared with a K-scaled bound.
"""
from __future__ import annotations

import numpy as np
import pytest

import symgraph as sg
from symgraph.codegen import gemm

from helpers import assert_same


@pytest.fixture
def force_gemm(monkeypatch):
    """Route every float matmul through the GEMM (and keep the disk cache out of it, since
    its key does not include these module settings)."""
    monkeypatch.setenv("SYMGRAPH_CACHE", "0")
    monkeypatch.setattr(gemm, "GEMM_MIN_WORK", 0)
    return monkeypatch


def _rand(rng, shape, dtype):
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(-5, 6, size=shape).astype(dtype)


def _check_vs_numpy(got, a, b):
    """|got - exact| within K * eps * (|a| @ |b|) elementwise (the standard GEMM bound)."""
    want = np.matmul(a, b)
    assert got.dtype == want.dtype and got.shape == want.shape
    exact = np.matmul(a.astype(np.float64), b.astype(np.float64))
    k = a.shape[-1]
    bound = np.matmul(np.abs(a).astype(np.float64), np.abs(b).astype(np.float64))
    eps = np.finfo(got.dtype).eps if got.dtype.kind == "f" else 0
    assert np.all(np.abs(got - exact) <= 2 * (k + 1) * eps * bound + 1e-300)


def _compile_matmul(a_shape, b_shape, a_dtype, b_dtype, transform=None):
    a = sg.Variable("a", a_shape, a_dtype)
    b = sg.Variable("b", b_shape, b_dtype)
    x, y = transform(a, b) if transform else (a, b)
    return sg.compile(x @ y)


SHAPES = [
    ((1, 1), (1, 1)),
    ((7, 13), (13, 5)),
    ((31, 37), (37, 41)),
    ((64, 64), (64, 64)),
    ((100, 3), (3, 250)),
    ((15, 600), (600, 33)),  # several K blocks
    ((300, 20), (20, 70)),  # several M blocks
    ((3, 20), (20, 4100)),  # several N blocks
    ((13,), (13, 9)),  # vector @ matrix
    ((9, 13), (13,)),  # matrix @ vector
    ((40,), (40,)),  # dot
    ((2, 3, 7, 5), (5, 4)),  # batch folded into M
    ((3, 1, 7, 5), (4, 5, 6)),  # broadcast batch axes on both sides
    ((7, 5), (2, 5, 6)),
    ((2, 1, 6, 8), (1, 3, 8, 10)),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("a_shape,b_shape", SHAPES)
def test_gemm_matches_numpy(force_gemm, a_shape, b_shape, dtype):
    rng = np.random.default_rng(abs(hash((a_shape, b_shape))) % 2**32)
    a, b = _rand(rng, a_shape, dtype), _rand(rng, b_shape, dtype)
    f = _compile_matmul(a_shape, b_shape, dtype, dtype)
    assert "gemm." in f.llvm_ir
    _check_vs_numpy(f(a=a, b=b), a, b)


@pytest.mark.parametrize("vector_bytes", [16, 32, 64])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gemm_bit_identical_to_loop_nest(monkeypatch, vector_bytes, dtype):
    """Every SIMD width and blocking gives exactly the loop nest's sums, specials included."""
    monkeypatch.setenv("SYMGRAPH_CACHE", "0")
    monkeypatch.setattr(gemm, "GEMM_VECTOR_BYTES", vector_bytes)
    rng = np.random.default_rng(vector_bytes)
    a, b = _rand(rng, (37, 300), dtype), _rand(rng, (300, 45), dtype)
    a[3, 5], a[10, 7], b[20, 2] = np.inf, np.nan, -np.inf
    b[7, 40] = -0.0
    monkeypatch.setattr(gemm, "GEMM_MIN_WORK", 0)
    fast = _compile_matmul(a.shape, b.shape, dtype, dtype)
    monkeypatch.setattr(gemm, "GEMM_MIN_WORK", 1 << 62)
    slow = _compile_matmul(a.shape, b.shape, dtype, dtype)
    assert "gemm." in fast.llvm_ir and "gemm." not in slow.llvm_ir
    got, want = fast(a=a, b=b), slow(a=a, b=b)
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want))


@pytest.mark.parametrize("a_shape,b_shape", [((0, 5), (5, 3)), ((4, 0), (0, 3)),
                                             ((4, 5), (5, 0)), ((2, 0, 3), (3, 4))])
@pytest.mark.parametrize("dtype", ["float32", "int32"])
def test_zero_size(force_gemm, a_shape, b_shape, dtype):
    rng = np.random.default_rng(0)
    a, b = _rand(rng, a_shape, dtype), _rand(rng, b_shape, dtype)
    got = _compile_matmul(a_shape, b_shape, dtype, dtype)(a=a, b=b)
    assert_same(got, np.matmul(a, b))


@pytest.mark.parametrize("a_dtype,b_dtype", [("float32", "float64"), ("int32", "float32"),
                                             ("bool", "float64"), ("int64", "int64")])
def test_mixed_and_integer_dtypes(force_gemm, a_dtype, b_dtype):
    rng = np.random.default_rng(1)
    a, b = _rand(rng, (11, 17), a_dtype), _rand(rng, (17, 19), b_dtype)
    got = _compile_matmul(a.shape, b.shape, a_dtype, b_dtype)(a=a, b=b)
    if got.dtype.kind == "f":
        _check_vs_numpy(got, a, b)
    else:
        assert_same(got, np.matmul(a, b))


@pytest.mark.parametrize("case", ["transposed", "sliced", "fused_producer"])
def test_operands_from_graph_views(force_gemm, case):
    """Transposes, strided slices and elementwise producers are materialized before the GEMM."""
    rng = np.random.default_rng(2)
    a, b = _rand(rng, (40, 30), "float32"), _rand(rng, (50, 40), "float32")
    transform = {
        "transposed": lambda x, y: (x.T, y.T),
        "sliced": lambda x, y: (x[::2, 1:], y[1:30:1, ::3][:29]),
        "fused_producer": lambda x, y: ((sg.relu(x) * 2.0).T, y.T + 1.0),
    }[case]
    f = _compile_matmul(a.shape, b.shape, "float32", "float32", transform)
    x, y = transform(a, b) if case != "fused_producer" else ((np.maximum(a, 0) * 2).T, b.T + 1)
    _check_vs_numpy(f(a=a, b=b), np.ascontiguousarray(x), np.ascontiguousarray(y))


def test_fma_flag_stays_accurate(force_gemm):
    force_gemm.setattr(gemm, "GEMM_USE_FMA", True)
    rng = np.random.default_rng(3)
    a, b = _rand(rng, (33, 257), "float32"), _rand(rng, (257, 65), "float32")
    f = _compile_matmul(a.shape, b.shape, "float32", "float32")
    assert "llvm.fma" in f.llvm_ir
    _check_vs_numpy(f(a=a, b=b), a, b)


def test_default_threshold_keeps_tiny_products_on_the_loop_nest(monkeypatch):
    monkeypatch.setenv("SYMGRAPH_CACHE", "0")
    small = _compile_matmul((2, 3), (3, 2), "float32", "float32")
    big = _compile_matmul((64, 64), (64, 64), "float32", "float32")
    assert "gemm." not in small.llvm_ir and "gemm." in big.llvm_ir


def test_blocking_follows_the_simd_width():
    for vb, dtype in [(64, "float32"), (32, "float32"), (16, "float64")]:
        blk = gemm.blocking(dtype, vb)
        assert blk.w * np.dtype(dtype).itemsize == vb
        assert blk.mc % blk.mr == 0 and blk.nr == blk.nv * blk.w
    assert gemm.simd_bytes() in (16, 32, 64)


@pytest.mark.parametrize("a_shape, b_shape", [
    ((7, 600), (600, 1100)),  # one block of rows: A packed once for 3 K blocks, 3 B panels
    ((80, 300), (300, 530)),  # exactly one block of rows, 2 K blocks
    ((81, 300), (300, 530)),  # two blocks of rows: A packed per panel as before
    ((5, 1), (1, 40)),
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_packing_a_once_gives_the_same_bits(force_gemm, a_shape, b_shape, dtype):
    """A single block of rows packs A once for all of B (GEMM_HOISTED_A_BYTES); packing it
    again for every panel of B must give the same bits."""
    rng = np.random.default_rng(a_shape[0])
    a, b = _rand(rng, a_shape, dtype), _rand(rng, b_shape, dtype)
    once = _compile_matmul(a_shape, b_shape, dtype, dtype)(a=a, b=b)
    force_gemm.setattr(gemm, "GEMM_HOISTED_A_BYTES", 0)
    per_panel = _compile_matmul(a_shape, b_shape, dtype, dtype)(a=a, b=b)
    assert once.tobytes() == per_panel.tobytes()
    _check_vs_numpy(once, a, b)
