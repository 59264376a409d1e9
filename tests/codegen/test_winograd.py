"""conv2d by Winograd's F(2x2, 3x3) (codegen/winograd.py): against a float64 direct sum on
shapes that exercise every part (tile vectors with and without a partial last one, several
blocks of tile rows, K blocks, output channels that fill no whole MR sliver, padding 0-2,
batches split across threads), the fused epilogue, and the fallback to the implicit GEMM
for images and filters that hold inf or nan."""
from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

import symgraph as sg
from symgraph.codegen import winograd
from symgraph.interpret import evaluate

RNG = np.random.default_rng(7)


def direct_conv(x, w, padding):
    """The cross-correlation summed in float64."""
    p = padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    n, _, h, width = xp.shape
    oh, ow = h - 2, width - 2
    out = np.zeros((n, w.shape[0], oh, ow))
    for ky in range(3):
        for kx in range(3):
            out += np.einsum("nchw,oc->nohw", xp[:, :, ky:ky + oh, kx:kx + ow],
                             w[:, :, ky, kx].astype(np.float64))
    return out


def _compile(padding, num_threads=1):
    return sg.compile(sg.conv2d(sg.Variable("x"), sg.Variable("w"), padding=padding),
                      num_threads=num_threads)


def _data(n, c, h, width, o, dtype):
    x = RNG.standard_normal((n, c, h, width)).astype(dtype)
    w = (RNG.standard_normal((o, c, 3, 3)) / np.sqrt(9 * c)).astype(dtype)
    return x, w


def _assert_close(got, want, dtype):
    scale = max(np.abs(want).max(), 1.0)
    tolerance = 2e-6 if np.dtype(dtype) == np.float32 else 1e-14
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= tolerance * scale


CASES = [  # n, c, h, w, o, padding, dtype
    (1, 16, 2, 2, 16, 1, "float32"),     # one tile
    (2, 16, 6, 40, 16, 1, "float32"),    # 20 tiles across: one whole vector and a partial one
    (1, 16, 34, 34, 16, 1, "float32"),   # 17 tiles across, 17 rows of them
    (3, 24, 10, 14, 20, 0, "float32"),   # no padding; 20 output channels
    (1, 16, 8, 10, 32, 2, "float32"),    # padding 2
    (1, 300, 6, 6, 16, 1, "float32"),    # K in two blocks
    (2, 64, 56, 56, 64, 1, "float32"),   # the benchmark's layer, several blocks
    (1, 16, 12, 10, 24, 1, "float64"),
    (1, 200, 4, 4, 16, 1, "float64"),    # K in two blocks of float64
]


@pytest.mark.parametrize("n,c,h,width,o,padding,dtype", CASES)
def test_matches_the_direct_sum(n, c, h, width, o, padding, dtype):
    x, w = _data(n, c, h, width, o, dtype)
    f = _compile(padding)
    got = f(x, w)
    assert "wino_products" in f.llvm_ir
    assert got.dtype == np.dtype(dtype)
    _assert_close(got, direct_conv(x, w, padding), dtype)


def test_threads_split_the_images_with_the_same_bits():
    x, w = _data(5, 32, 18, 18, 32, "float32")
    one = _compile(1)(x, w)
    for threads in (2, 3):
        np.testing.assert_array_equal(_compile(1, threads)(x, w), one)


@pytest.mark.parametrize("shape", [(2, 16, 8, 12, 24), (1, 16, 40, 40, 16)])
def test_epilogue_runs_on_the_transformed_output(shape):
    """On each block of output rows (the second shape has three blocks)."""
    n, c, h, width, o = shape
    x, w = _data(n, c, h, width, o, "float32")
    bias = RNG.standard_normal(o).astype(np.float32)
    X, W, B = sg.Variable("x"), sg.Variable("w"), sg.Variable("b")
    f = sg.compile(sg.relu(sg.conv2d(X, W, padding=1) + B))
    got = f(x, w, bias[:, None, None])
    assert "wino_products" in f.llvm_ir and ".epilogue" in f.llvm_ir
    assert len({d["kernel"] for _, d in f.graph.nodes(data=True)
                if d.get("kernel") is not None}) == 1  # bias and relu fused into the conv
    _assert_close(got, np.maximum(direct_conv(x, w, 1) + bias[None, :, None, None], 0),
                  "float32")
    np.testing.assert_array_equal(got, np.maximum(_compile(1)(x, w) + bias[:, None, None], 0))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_values_take_the_exact_path(bad):
    """An inf would turn into nan in the transforms' differences; such images (and every
    image, for such filters) are computed by the implicit GEMM, like numpy's direct sum."""
    x, w = _data(3, 16, 6, 6, 16, "float32")
    x[1, 3, 2, 4] = bad
    f = _compile(1)
    got = f(x, w)
    with np.errstate(invalid="ignore"):
        want = direct_conv(x, w, 1)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    assert np.abs(got[finite] - want[finite]).max() <= 2e-6 * np.abs(want[finite]).max()
    # The other images still take the fast path: their bits match an all-finite batch's.
    clean = x.copy()
    clean[1] = 0
    np.testing.assert_array_equal(f(clean, w)[[0, 2]], got[[0, 2]])

    w_bad = w.copy()
    w_bad[5, 2, 1, 1] = bad
    got = f(np.ones_like(x), w_bad)
    with np.errstate(invalid="ignore"):
        want = direct_conv(np.ones_like(x), w_bad, 1)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))


@pytest.mark.parametrize("change", [
    {"stride": 2}, {"dilation": 2}, {"groups": 2}, {"kernel": 5}, {"odd": True},
    {"channels": winograd.MIN_CHANNELS - 1}, {"mixed": True}])
def test_other_convolutions_take_the_implicit_gemm(change):
    c = change.get("channels", 16)
    k = change.get("kernel", 3)
    h = 9 if change.get("odd") else 8
    x = RNG.integers(-3, 4, (1, c, h, h)).astype(np.float32)
    w = RNG.integers(-3, 4, (16, c // change.get("groups", 1), k, k)).astype(
        np.float64 if change.get("mixed") else np.float32)
    attrs = {key: change[key] for key in ("stride", "dilation", "groups") if key in change}
    f = sg.compile(sg.conv2d(sg.Variable("x"), sg.Variable("w"), padding=1, **attrs))
    got = f(x, w)
    assert "wino_products" not in f.llvm_ir
    want = evaluate(sg.conv2d(sg.Variable("x"), sg.Variable("w"), padding=1, **attrs), x=x, w=w)
    np.testing.assert_array_equal(got, want)  # small integers: every path sums them exactly


CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
needs_cc = pytest.mark.skipif(CC is None, reason="no system C compiler to link the library")


def _export(tmp_path, n=2, c=16, h=6, width=20, o=20):
    x, w = _data(n, c, h, width, o, "float32")
    X, W = sg.Variable("x", x.shape, "float32"), sg.Variable("w", w.shape, "float32")
    f = sg.compile(sg.conv2d(X, W, padding=1), name="wconv", num_threads=1)
    lib, header = f.export(tmp_path / "out", name="wconv")
    return f, lib, x, w


@needs_cc
def test_exported_library_matches_the_direct_sum(tmp_path):
    f, lib, x, w = _export(tmp_path)
    out = np.empty((x.shape[0], w.shape[0], x.shape[2], x.shape[3]), np.float32)
    run = ctypes.CDLL(str(lib)).wconv_run
    run.restype = ctypes.c_int
    pointer = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    size = ctypes.c_int64
    status = run(pointer(x), size(x.size), pointer(w), size(w.size), pointer(out), size(out.size))
    assert status == 0
    _assert_close(out, direct_conv(x, w, 1), "float32")
    assert b"wino_products" in lib.read_bytes() if hasattr(lib, "read_bytes") else open(lib, "rb").read()


@needs_cc
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_exported_library_is_clean_under_valgrind(tmp_path):
    """No read of memory nothing wrote (the transforms read whole vectors past rows' ends)."""
    f, lib, x, w = _export(tmp_path)
    main = tmp_path / "main.c"
    main.write_text(f"""
#include <stdio.h>
#include <stdlib.h>
#include "wconv.h"
int main(void) {{
    long nx = {x.size}, nw = {w.size}, no = {x.shape[0] * w.shape[0] * x.shape[2] * x.shape[3]};
    float *x = malloc(nx * sizeof(float)), *w = malloc(nw * sizeof(float));
    float *out = malloc(no * sizeof(float));
    for (long i = 0; i < nx; i++) x[i] = (float)(i % 13) - 6.0f;
    for (long i = 0; i < nw; i++) w[i] = (float)(i % 5) * 0.25f;
    int status = wconv_run(x, nx, w, nw, out, no);
    double sum = 0;
    for (long i = 0; i < no; i++) sum += out[i] > 0 ? out[i] : -out[i];
    printf("%d %.17g\\n", status, sum);
    free(x); free(w); free(out);
    return status;
}}
""")
    exe = tmp_path / "main"
    built = subprocess.run([CC, "-std=c11", "-o", str(exe), str(main), f"-I{tmp_path / 'out'}",
                            f"-L{tmp_path / 'out'}", "-lwconv", f"-Wl,-rpath,{tmp_path / 'out'}"],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    done = subprocess.run(["valgrind", "--error-exitcode=1", "--leak-check=full",
                           "--errors-for-leak-kinds=all", "--quiet", str(exe)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    status, total = done.stdout.split()
    xs = (np.arange(x.size) % 13 - 6.0).astype(np.float32).reshape(x.shape)
    ws = ((np.arange(w.size) % 5) * 0.25).astype(np.float32).reshape(w.shape)
    assert status == "0"
    assert float(total) == pytest.approx(np.abs(direct_conv(xs, ws, 1)).sum(), rel=1e-6)


def test_an_open_batch_size():
    x, w = _data(3, 16, 6, 8, 16, "float32")
    f = sg.compile(sg.conv2d(sg.Variable("x", (None, 16, 6, 8), "float32"),
                             sg.Variable("w", (16, 16, 3, 3), "float32"), padding=1))
    for n in (1, 3):
        got = f(x[:n], w)
        _assert_close(got, direct_conv(x[:n], w, 1), "float32")
    assert "wino_products" in f.llvm_ir
    opened = sg.compile(sg.conv2d(sg.Variable("x", (1, 16, None, None), "float32"),
                                  sg.Variable("w", (16, 16, 3, 3), "float32"), padding=1))
    _assert_close(opened(x[:1], w), direct_conv(x[:1], w, 1), "float32")


def test_compiling_prints_nothing(capfd, monkeypatch):
    """LLVM reports a loop it was told to vectorize and could not on stderr: none here."""
    monkeypatch.setenv("SYMGRAPH_CACHE", "0")
    for c, o, h, width, padding, dtype in ((16, 20, 4, 34, 0, "float32"),
                                           (24, 16, 18, 6, 1, "float64")):
        x, w = _data(2, c, h, width, o, dtype)
        f = _compile(padding)
        f(x, w)
        assert "wino_products" in f.llvm_ir
    out, err = capfd.readouterr()
    assert err == ""
