"""Streaming (non-temporal) stores for large flat loops (codegen/kernel.py, STREAM_MIN_BYTES):
the output is written in a plain prologue up to its first 64-byte boundary and with aligned
streaming stores after it, so results must equal the ordinary loop's bit for bit at every
output alignment, size remainder, dtype and thread split."""
import numpy as np
import pytest

import symgraph as sg
from symgraph import Variable, compile
from symgraph.codegen import cpu, kernel

SMALL = 1 << 12  # bytes: the threshold these tests use, so small arrays take the path

needs_x86 = pytest.mark.skipif(not cpu.host_is_x86(),
                               reason="streaming stores are emitted on x86 only")


@pytest.fixture(autouse=True)
def stream_small_outputs(monkeypatch):
    """Stream from a few KiB (and keep that code out of the disk cache, which does not know
    the threshold)."""
    monkeypatch.setattr(kernel, "STREAM_MIN_BYTES", SMALL)
    monkeypatch.setenv("SYMGRAPH_CACHE", "0")


def _expression(dtype):
    a, b = Variable("a"), Variable("b")
    if np.dtype(dtype).kind == "f":
        return sg.tanh(a * b) + b * 0.5
    return a * b + 3


@needs_x86
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
def test_streamed_loop_emits_non_temporal_stores(dtype):
    n = 4 * SMALL
    a, b = Variable("a", (n,), dtype), Variable("b", (n,), dtype)
    f = compile(a * b + 3)
    assert "vmovnt" in f.asm or "movnt" in f.asm
    small = compile(Variable("a", (8,), dtype) * 2)
    assert "movnt" not in small.asm


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
@pytest.mark.parametrize("n", [SMALL // 4, SMALL + 1, 3 * SMALL + 15, 50_001])
def test_streamed_results_match_plain_loop(monkeypatch, dtype, n):
    rng = np.random.default_rng(n)
    a = (rng.standard_normal(n) * 10).astype(dtype)
    b = (rng.standard_normal(n) * 10).astype(dtype)
    expr = _expression(dtype)
    streamed = compile(expr)(a, b)
    monkeypatch.setattr(kernel, "STREAM_MIN_BYTES", 1 << 62)
    plain = compile(expr)(a, b)
    np.testing.assert_array_equal(streamed, plain)
    if np.dtype(dtype).kind == "i":
        np.testing.assert_array_equal(streamed, a * b + 3)


@pytest.mark.parametrize("offset", range(0, 17))
def test_every_output_alignment(offset):
    """out= views starting at each element offset within a 64-byte line: the prologue's
    length changes, the values must not."""
    n = 3 * SMALL + 7
    rng = np.random.default_rng(offset)
    a, b = rng.standard_normal(n), rng.standard_normal(n)
    f = compile(Variable("a", (n,), "float64") * Variable("b", (n,), "float64") + 1)
    backing = np.full(n + 32, -7.0)
    out = backing[offset:offset + n]
    f(a, b, out=out)
    np.testing.assert_array_equal(out, a * b + 1)
    np.testing.assert_array_equal(backing[:offset], -7.0)  # nothing written outside
    np.testing.assert_array_equal(backing[offset + n:], -7.0)


def test_unaligned_output_is_correct():
    """An output that is not even element-aligned streams nothing and is still right."""
    n = 2 * SMALL
    a = np.arange(n, dtype=np.float32)
    raw = np.zeros(4 * n + 1, np.uint8)
    out = raw[1:].view(np.float32)
    f = compile(Variable("a", (n,), "float32") * 2)
    f(a, out=out)
    np.testing.assert_array_equal(out, a * 2)


@pytest.mark.parametrize("num_threads", [2, 3])
def test_streamed_chunks_on_threads(monkeypatch, num_threads):
    """Each thread's chunk has its own prologue; the chunks together cover every element."""
    monkeypatch.setattr(kernel, "PARALLEL_MIN_ELEMENTS", SMALL)
    n = 100_003
    x = Variable("x", (n,), "int64")
    f = compile(x * 3 + 1, num_threads=num_threads)
    data = np.arange(n, dtype=np.int64)
    for _ in range(3):
        np.testing.assert_array_equal(f(data), data * 3 + 1)


@needs_x86
def test_intermediates_are_not_streamed():
    """A large intermediate that the next kernel reads stays in the cache."""
    x, w = Variable("x", (64, 64), "float64"), Variable("w", (64, 8), "float64")
    f = compile((sg.exp(x) + 1) @ w)
    assert "movnt" not in f.asm
    xs, ws = np.linspace(-1, 1, 64 * 64).reshape(64, 64), np.linspace(0, 1, 64 * 8).reshape(64, 8)
    np.testing.assert_allclose(f(xs, ws), (np.exp(xs) + 1) @ ws, rtol=1e-12)
    g = compile(sg.exp(x) + 1)  # the same loop as a result does stream
    assert "movnt" in g.asm


def test_several_outputs_are_not_streamed():
    """Only single-output loops stream (one prologue aligns one pointer); two outputs fused
    into one loop keep plain stores and stay correct."""
    n = 4 * SMALL
    x = Variable("x", (n,), "float64")
    f = compile([x * 2, x + 1])
    data = np.linspace(0, 1, n)
    twice, plus = f(data)
    np.testing.assert_array_equal(twice, data * 2)
    np.testing.assert_array_equal(plus, data + 1)
