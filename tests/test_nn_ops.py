"""conv2d, pooling and the softmax family: compiled code and interpreter against numpy
references written independently of the registry's (sliding windows and einsum)."""
from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import symgraph as sg
from symgraph.codegen import gemm

from helpers import assert_same


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _window_view(x, kernel, stride, padding, dilation, fill):
    """(n, c, oh, ow, kh, kw) windows of the padded input."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(_pair, (kernel, stride, padding, dilation))
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    win = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    return win[:, :, ::sh, ::sw, ::dh, ::dw]


def np_conv2d(x, w, stride=1, padding=0, dilation=1, groups=1):
    """numpy conv2d (PyTorch semantics); TypeError unless the result is a float."""
    dtype = np.result_type(x, w)
    if dtype.kind != "f":
        raise TypeError(f"conv2d needs floats, got {dtype}")
    n, c = x.shape[:2]
    o, cg, kh, kw = w.shape
    win = _window_view(x.astype(dtype), (kh, kw), stride, padding, dilation, 0)
    oh, ow = win.shape[2:4]
    win = win.reshape(n, groups, cg, oh, ow, kh, kw)
    wg = w.astype(dtype).reshape(groups, o // groups, cg, kh, kw)
    out = np.einsum("ngchwij,gocij->ngohw", win.astype(np.float64), wg.astype(np.float64))
    return out.reshape(n, o, oh, ow).astype(dtype)


def np_pool2d(kind, x, kernel_size, stride=None, padding=0):
    """numpy max/avg pooling; avg counts padding as zeros. TypeError where symgraph rejects."""
    if x.dtype.kind == "b" or (kind == "avg" and x.dtype.kind != "f"):
        raise TypeError(f"{kind}_pool2d does not support {x.dtype}")
    lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    win = _window_view(x, kernel_size, stride or kernel_size, padding, 1,
                       lowest if kind == "max" else 0)
    if kind == "max":
        return win.max(axis=(-2, -1))
    kh, kw = _pair(kernel_size)
    return (win.astype(np.float64).sum(axis=(-2, -1)) / (kh * kw)).astype(x.dtype)


def _rand(rng, shape, dtype="float32"):
    return rng.standard_normal(shape).astype(dtype)


def _tol_check(got, want, terms):
    assert got.dtype == want.dtype and got.shape == want.shape
    eps = float(np.finfo(got.dtype).eps)
    np.testing.assert_allclose(got, want, rtol=8 * terms * eps, atol=8 * terms * eps)


CONV_CASES = [
    # x shape, w shape, attrs
    ((1, 1, 5, 5), (1, 1, 3, 3), {}),
    ((2, 3, 8, 9), (4, 3, 3, 3), {"padding": 1}),
    ((2, 3, 9, 7), (5, 3, 2, 3), {"stride": (2, 1), "padding": (1, 0)}),
    ((1, 4, 11, 10), (6, 2, 3, 3), {"groups": 2, "dilation": 2, "padding": 2}),
    ((2, 6, 7, 7), (6, 1, 3, 3), {"groups": 6, "padding": 1}),  # depthwise
    ((1, 3, 6, 6), (8, 3, 1, 1), {}),  # pointwise
    ((1, 2, 4, 4), (3, 2, 5, 5), {"padding": 1}),  # kernel larger than the input
    ((1, 16, 20, 20), (32, 16, 3, 3), {"stride": 2, "padding": 1}),
    ((0, 3, 5, 5), (2, 3, 3, 3), {}),  # empty batch
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("x_shape,w_shape,attrs", CONV_CASES)
def test_conv2d(x_shape, w_shape, attrs, dtype):
    rng = np.random.default_rng(len(str(attrs)) + x_shape[1])
    x, w = _rand(rng, x_shape, dtype), _rand(rng, w_shape, dtype)
    X, W = sg.Variable("x", x_shape, dtype), sg.Variable("w", w_shape, dtype)
    y = sg.conv2d(X, W, **attrs)
    want = np_conv2d(x, w, **attrs)
    terms = int(np.prod(w_shape[1:]))
    _tol_check(sg.evaluate(y, x=x, w=w), want, terms)
    for opt_level in (0, 2):
        _tol_check(sg.compile(y, opt_level=opt_level)(x=x, w=w), want, terms)


def test_conv2d_with_fused_neighbours_and_mixed_dtypes():
    """A transposed input and an elementwise consumer: the conv kernel reads materialized
    operands and its result feeds a fused relu; float32 weights promote to float64."""
    rng = np.random.default_rng(5)
    x, w, bias = _rand(rng, (2, 9, 8, 3), "float64"), _rand(rng, (4, 3, 3, 3)), _rand(rng, (4,))
    X, W, B = sg.Variable("x", x.shape, "float64"), sg.Variable("w", w.shape, "float32"), \
        sg.Variable("b", bias.shape, "float32")
    conv = sg.conv2d(sg.transpose(X, (0, 3, 1, 2)), W, padding=1)
    y = sg.relu(conv + sg.reshape(B, (1, 4, 1, 1)))
    want = np.maximum(np_conv2d(x.transpose(0, 3, 1, 2), w, padding=1)
                      + bias.reshape(1, 4, 1, 1), 0)
    _tol_check(sg.compile(y)(x=x, w=w, b=bias), want, 27)


def test_conv2d_specials_match_the_interpreter():
    """inf and NaN in the image and weights give numpy's specials (padding reads zeros)."""
    rng = np.random.default_rng(6)
    x, w = _rand(rng, (1, 2, 6, 6)), _rand(rng, (3, 2, 3, 3))
    x[0, 0, 2, 3], x[0, 1, 0, 0], w[1, 0, 1, 1] = np.inf, np.nan, -np.inf
    X, W = sg.Variable("x", x.shape, "float32"), sg.Variable("w", w.shape, "float32")
    y = sg.conv2d(X, W, padding=1)
    got, ref = sg.compile(y)(x=x, w=w), sg.evaluate(y, x=x, w=w)
    assert_same(got, ref, kind="reduce", terms=18, magnitude=10.0)


def test_conv2d_uses_the_gemm_and_the_fma_flag(monkeypatch):
    monkeypatch.setenv("SYMGRAPH_CACHE", "0")
    monkeypatch.setattr(gemm, "GEMM_USE_FMA", True)
    rng = np.random.default_rng(7)
    x, w = _rand(rng, (1, 5, 12, 12)), _rand(rng, (7, 5, 3, 3))
    X, W = sg.Variable("x", x.shape, "float32"), sg.Variable("w", w.shape, "float32")
    f = sg.compile(sg.conv2d(X, W, stride=2))
    assert ".gemm" in f.llvm_ir and "llvm.fma" in f.llvm_ir
    _tol_check(f(x=x, w=w), np_conv2d(x, w, stride=2), 45)


@pytest.mark.parametrize("bad", [
    dict(x=(1, 3, 5, 5), w=(2, 2, 3, 3), attrs={}),  # channel mismatch
    dict(x=(1, 4, 5, 5), w=(3, 2, 3, 3), attrs={"groups": 2}),  # out channels not divisible
    dict(x=(1, 3, 2, 2), w=(2, 3, 5, 5), attrs={}),  # kernel does not fit
    dict(x=(3, 5, 5), w=(2, 3, 3, 3), attrs={}),  # not 4-d
    dict(x=(1, 3, 5, 5), w=(2, 3, 3, 3), attrs={"stride": 0}),
])
def test_conv2d_shape_errors(bad):
    X, W = sg.Variable("x", bad["x"], "float32"), sg.Variable("w", bad["w"], "float32")
    with pytest.raises(sg.ShapeError):
        sg.conv2d(X, W, **bad["attrs"])


def test_conv2d_rejects_integers():
    X, W = sg.Variable("x", (1, 1, 3, 3), "int32"), sg.Variable("w", (1, 1, 2, 2), "int32")
    with pytest.raises(sg.DTypeError):
        sg.conv2d(X, W)


POOL_CASES = [
    ((1, 1, 4, 4), 2, {}),
    ((2, 3, 9, 8), 3, {"stride": 2, "padding": 1}),
    ((1, 2, 7, 10), (2, 3), {"stride": (1, 2)}),
    ((2, 4, 5, 5), 5, {}),  # global pooling
    ((1, 1, 6, 6), (3, 1), {"padding": (1, 0)}),
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32"])
@pytest.mark.parametrize("shape,kernel,attrs", POOL_CASES)
def test_pool2d(kind, dtype, shape, kernel, attrs):
    rng = np.random.default_rng(shape[1] * 7 + len(attrs))
    x = (rng.standard_normal(shape) * 10).astype(dtype)
    if dtype != "int32" and x.size > 3:
        x.flat[1], x.flat[2] = np.nan, -np.inf
    X = sg.Variable("x", shape, dtype)
    fn = sg.max_pool2d if kind == "max" else sg.avg_pool2d
    try:
        want = np_pool2d(kind, x, kernel, **attrs)
    except TypeError:
        with pytest.raises(sg.DTypeError):
            fn(X, kernel, **attrs)
        return
    y = fn(X, kernel, **attrs)
    for got in [sg.evaluate(y, x=x)] + [sg.compile(y, opt_level=lvl)(x=x) for lvl in (0, 2)]:
        if kind == "max":
            assert_same(got, want, rtol=0, atol=0)
        else:
            assert_same(got, want, kind="reduce", terms=int(np.prod(_pair(kernel))), magnitude=40)


def test_pool_padding_limits():
    X = sg.Variable("x", (1, 1, 6, 6), "float32")
    with pytest.raises(sg.ShapeError):
        sg.max_pool2d(X, 2, padding=2)


def _np_logsumexp(x, axis, keepdims=False):
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("axis", [-1, 0, (0, 2), None])
def test_softmax_family(dtype, axis):
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((3, 4, 5)) * 30).astype(dtype)
    x[0, 0, 0] = 1000.0  # overflows exp unless the max is subtracted
    x[1, 2] = -np.inf
    X = sg.Variable("x", x.shape, dtype)
    m = np.max(x, axis=axis, keepdims=True)
    with np.errstate(all="ignore"):  # the all -inf row: NaN softmax, -inf logsumexp
        e = np.exp(x - m)
        wants = {
            "softmax": e / e.sum(axis=axis, keepdims=True),
            "log_softmax": (x - m) - np.log(e.sum(axis=axis, keepdims=True)),
            "logsumexp": _np_logsumexp(x, axis),
            "logsumexp_keep": _np_logsumexp(x, axis, keepdims=True),
        }
    exprs = {
        "softmax": sg.softmax(X, axis=axis), "log_softmax": sg.log_softmax(X, axis=axis),
        "logsumexp": sg.logsumexp(X, axis=axis),
        "logsumexp_keep": sg.logsumexp(X, axis=axis, keepdims=True),
    }
    names = list(exprs)
    got = sg.compile([exprs[n] for n in names])(x=x)
    for name, value in zip(names, got):
        assert np.all(np.isfinite(value[np.isfinite(wants[name])]))
        assert_same(value, wants[name].astype(dtype), kind="transcendental",
                    context=f"{name} axis={axis}", rtol=1e-4 if dtype == "float32" else 1e-10,
                    atol=1e-5 if dtype == "float32" else 1e-12)


def test_logsumexp_of_all_minus_infinity_rows():
    x = np.array([[-np.inf, -np.inf], [np.inf, 1.0], [np.nan, 0.0]])
    X = sg.Variable("x", x.shape, "float64")
    with np.errstate(all="ignore"):
        want = _np_logsumexp(x, 1)
    assert_same(sg.compile(sg.logsumexp(X, axis=1))(x=x), want)


def _gemm_and_direct_conv_agree(monkeypatch, y, x, w):
    """Compile conv2d `y` through the GEMM and through the direct loop; both sum 0, then
    ascending (channel, ky, kx), so their results must be identical. Returns the GEMM's."""
    from symgraph.codegen import nn as nn_codegen

    results = []
    for limit in (0, 1 << 30):
        monkeypatch.setattr(nn_codegen, "DIRECT_MAX_GROUP_CHANNELS", limit)
        f = sg.compile(y)
        assert (".gemm" in f.llvm_ir) == (limit == 0)
        results.append(f(x=x, w=w))
    np.testing.assert_array_equal(results[0], results[1])
    return results[0]


def test_direct_and_gemm_conv_paths_agree_bit_for_bit(monkeypatch):
    monkeypatch.setenv("SYMGRAPH_CACHE", "0")
    rng = np.random.default_rng(9)
    x, w = _rand(rng, (2, 4, 9, 8)), _rand(rng, (6, 2, 3, 2))
    x[0, 1, 4, 4] = np.inf
    X, W = sg.Variable("x", x.shape, "float32"), sg.Variable("w", w.shape, "float32")
    y = sg.conv2d(X, W, groups=2, padding=(1, 2), stride=(1, 2), dilation=(2, 1))
    _gemm_and_direct_conv_agree(monkeypatch, y, x, w)


@pytest.mark.parametrize("channels,attrs", [
    (40, {"padding": 1}),  # K = 360: the second K block starts inside a channel
    (32, {"padding": 2, "dilation": 2}),  # K = 288, dilated, same width
    (30, {"padding": (1, 0), "stride": (1, 1)}),  # narrower output: row segments
    (24, {"padding": 1, "stride": 2}),  # strided: segments of every other element
    (16, {"padding": (0, 1), "stride": (2, 3)}),  # 13 columns a row: 4 segments a sliver
    (12, {"stride": 4}),  # 9 columns a row: too many segments, the element-wise packer
])
def test_packed_im2col_across_k_blocks_matches_the_direct_loop(monkeypatch, channels, attrs):
    """The GEMM packs im2col rows a channel at a time, in K blocks that need not start at a
    channel; it must still give the direct loop's bits, specials included."""
    monkeypatch.setenv("SYMGRAPH_CACHE", "0")
    rng = np.random.default_rng(channels)
    x, w = _rand(rng, (2, channels, 7, 37)), _rand(rng, (9, channels, 3, 3))
    x[1, 3, 0, 36], x[0, channels - 1, 6, 0] = np.inf, np.nan
    X, W = sg.Variable("x", x.shape, "float32"), sg.Variable("w", w.shape, "float32")
    y = sg.conv2d(X, W, **attrs)
    gemm_result = _gemm_and_direct_conv_agree(monkeypatch, y, x, w)
    _tol_check(gemm_result, np_conv2d(x, w, **attrs), channels * 9)
