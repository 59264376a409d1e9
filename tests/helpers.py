"""Shared test oracles: per-dtype tolerances, a strict array comparison, edge-value inputs.

Tolerances are stated once here. Integers and booleans compare exactly. Floats get a
relative tolerance per dtype; reductions and matmul get one scaled by the number of
terms summed, since their summation order differs from numpy's pairwise sums and BLAS.
"""
from __future__ import annotations

import math

import numpy as np

DTYPES = tuple(np.dtype(t) for t in ("bool", "int32", "int64", "float32", "float64"))
INT_DTYPES = tuple(d for d in DTYPES if d.kind == "i")
FLOAT_DTYPES = tuple(d for d in DTYPES if d.kind == "f")

# (rtol, atol) for one correctly rounded-ish elementwise operation.
ELEMENTWISE_TOL = {
    np.dtype("float32"): (2e-6, 1e-30),
    np.dtype("float64"): (1e-12, 1e-300),
}
# Transcendental functions: a few ULPs from a vectorized math library.
TRANSCENDENTAL_TOL = {
    np.dtype("float32"): (1e-5, 1e-30),
    np.dtype("float64"): (1e-12, 1e-300),
}


def reduction_tol(dtype, terms: int, magnitude: float = 1.0):
    """(rtol, atol) for a sum of `terms` values: rounding error grows with the term count
    and with cancellation, so atol is scaled by the magnitude of the summed values."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        return 0.0, 0.0
    eps = float(np.finfo(dtype).eps)
    scale = eps * max(terms, 1) * 4
    return scale, scale * max(magnitude, 1e-30)


def tolerance(dtype, kind: str = "elementwise", terms: int = 1, magnitude: float = 1.0):
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        return 0.0, 0.0
    if kind == "reduce":
        return reduction_tol(dtype, terms, magnitude)
    table = TRANSCENDENTAL_TOL if kind == "transcendental" else ELEMENTWISE_TOL
    return table[dtype]


def assert_same(got, want, *, rtol=None, atol=None, kind="elementwise", terms=1, magnitude=1.0,
                check_dtype=True, context=""):
    """`got` matches `want`: same type (ndarray), dtype, shape, NaN positions, infinities
    with their signs, finite values within the dtype's tolerance (exact for ints/bools)."""
    msg = f"{context}\n" if context else ""
    assert isinstance(got, np.ndarray), f"{msg}expected an ndarray, got {type(got).__name__}"
    want = np.asarray(want)
    if check_dtype:
        assert got.dtype == want.dtype, f"{msg}dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{msg}shape {got.shape} != {want.shape}"
    if got.dtype.kind != "f" and want.dtype.kind != "f":
        mismatch = got != want
        assert not np.any(mismatch), (
            f"{msg}values differ at {np.argwhere(mismatch)[:5].tolist()}: "
            f"got {got[mismatch][:5]}, want {want[mismatch][:5]}")
        return
    if rtol is None or atol is None:
        r, a = tolerance(want.dtype if want.dtype.kind == "f" else got.dtype, kind, terms, magnitude)
        rtol = r if rtol is None else rtol
        atol = a if atol is None else atol
    g64 = got.astype(np.float64)
    w64 = want.astype(np.float64)
    gnan, wnan = np.isnan(g64), np.isnan(w64)
    assert np.array_equal(gnan, wnan), (
        f"{msg}NaN positions differ: got NaN at {np.argwhere(gnan).tolist()[:5]}, "
        f"want NaN at {np.argwhere(wnan).tolist()[:5]}\ngot={got!r}\nwant={want!r}")
    ginf, winf = np.isinf(g64), np.isinf(w64)
    if np.any(winf) or np.any(ginf):
        assert np.array_equal(g64[winf], w64[winf]) and np.array_equal(ginf, winf), (
            f"{msg}infinities differ\ngot={got!r}\nwant={want!r}")
    finite = ~(wnan | winf)
    close = np.isclose(g64[finite], w64[finite], rtol=rtol, atol=atol)
    if not np.all(close):
        bad = np.argwhere(finite)[~close][:5].tolist()
        raise AssertionError(
            f"{msg}values differ beyond rtol={rtol:g}, atol={atol:g} at {bad}: "
            f"got {g64[finite][~close][:5]}, want {w64[finite][~close][:5]}")


def assert_bitwise(got, want, context=""):
    """Exact equality including dtype, NaN positions and the sign of zero."""
    assert_same(got, want, rtol=0.0, atol=0.0, context=context)
    if want.dtype.kind == "f":
        assert np.array_equal(np.signbit(got), np.signbit(want)), f"{context}: signs of zero differ"


# --- input generators ------------------------------------------------------------------------

def float_edges(dtype):
    dtype = np.dtype(dtype)
    info = np.finfo(dtype)
    tiny_sub = info.smallest_subnormal
    return np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 3.0,
                     tiny_sub, -tiny_sub, info.tiny, info.max, -info.max, 1e-3, 100.0],
                    dtype=dtype)


def int_edges(dtype):
    dtype = np.dtype(dtype)
    info = np.iinfo(dtype)
    return np.array([0, 1, -1, 2, -2, 3, -7, 7, 100, -100, info.max, info.min, info.min + 1,
                     info.max - 1], dtype=dtype)


def edge_values(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return np.array([True, False])
    if dtype.kind == "i":
        return int_edges(dtype)
    return float_edges(dtype)


def random_array(rng, shape, dtype, *, edges=True, low=-5, high=5, positive=False):
    """Values of `dtype` in `shape`, with edge values mixed in when `edges` is set."""
    dtype = np.dtype(dtype)
    shape = tuple(shape)
    size = math.prod(shape)
    if dtype.kind == "b":
        data = rng.random(size) < 0.5
    elif dtype.kind == "i":
        data = rng.integers(1 if positive else low, high, size=size).astype(dtype)
    else:
        data = rng.uniform(0.1 if positive else low, high, size=size).astype(dtype)
    if edges and size and dtype.kind != "b":
        pool = edge_values(dtype)
        if positive:
            pool = pool[~(pool <= 0)] if dtype.kind == "f" else pool[pool > 0]
        picks = rng.random(size) < 0.3
        data[picks] = rng.choice(pool, size=int(picks.sum()))
    return data.reshape(shape)


def run_in_threads(target, count: int) -> None:
    """Run target(0) ... target(count - 1), each on its own thread, and wait for all."""
    import threading

    threads = [threading.Thread(target=target, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
