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
