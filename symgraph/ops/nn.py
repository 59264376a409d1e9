"""Neural-network ops: 2-d convolution and pooling (NCHW), plus softmax-style functions.

conv2d and the two poolings are primitives with their own kernels (a convolution is an
implicit GEMM; pooling is a direct loop over each window). softmax, log_softmax and
logsumexp are derived here from max/exp/sum/log, subtracting the maximum for stability, so
they fuse and run through the ordinary kernels.
"""
from __future__ import annotations

import numpy as np

from .. import dtypes as dt
from ..errors import DTypeError, ShapeError
from .registry import Op, Typing, register


def _strong(d):
    return dt.default_dtype(d) if isinstance(d, type) else np.dtype(d)


def _pair(name, attr, value, minimum):
    """An int or a pair of ints (>= minimum) as a 2-tuple."""
    if isinstance(value, (int, np.integer)):
        pair = (value, value)
    elif isinstance(value, (tuple, list)):
        pair = tuple(value)
    else:
        pair = ()
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 for v in pair):
        raise ShapeError(f"{name}: {attr} must be an int or a pair of ints, got "
                         f"{str(repr(value))[:60]}")
    if any(v < minimum for v in pair):
        raise ShapeError(f"{name}: {attr} must be >= {minimum}, got {value!r}")
    return tuple(int(v) for v in pair)


def out_size(size, kernel, stride, pad, dilation=1) -> int:
    """Output length of a sliding window (floor mode), numpy/PyTorch convention."""
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def _windows(x, kernel, stride, padding, dilation, fill):
    """x[n, c, oy*s + a*d - p, ox*s + b*d - p] as an array (n, c, kh, kw, oh, ow); padding
    reads `fill`."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    oh = out_size(x.shape[2], kh, sh, ph, dh)
    ow = out_size(x.shape[3], kw, sw, pw, dw)
    iy = np.arange(kh)[:, None] * dh + np.arange(oh)[None, :] * sh
    ix = np.arange(kw)[:, None] * dw + np.arange(ow)[None, :] * sw
    return xp[:, :, iy[:, None, :, None], ix[None, :, None, :]]


# --- conv2d ----------------------------------------------------------------------------------

def _conv_infer(in_types, attrs):
    (x_shape, x_dtype), (w_shape, w_dtype) = in_types
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise ShapeError(f"conv2d needs a 4-d NCHW input and 4-d OIHW weights, got shapes "
                         f"{tuple(x_shape)} and {tuple(w_shape)}")
    stride = _pair("conv2d", "stride", attrs.get("stride", 1), 1)
    padding = _pair("conv2d", "padding", attrs.get("padding", 0), 0)
    dilation = _pair("conv2d", "dilation", attrs.get("dilation", 1), 1)
    groups = attrs.get("groups", 1)
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ShapeError(f"conv2d: groups must be a positive int, got {groups!r}")
    groups = int(groups)
    n, c, h, w = x_shape
    o, cg, kh, kw = w_shape
    if c != cg * groups or o % groups:
        raise ShapeError(
            f"conv2d got input {tuple(x_shape)} and weights {tuple(w_shape)} with groups={groups}: "
            f"input channels {c} must equal {cg} * groups and out channels {o} divide by groups",
            hint="weights are (out_channels, in_channels // groups, kh, kw)")
    oh = out_size(h, kh, stride[0], padding[0], dilation[0])
    ow = out_size(w, kw, stride[1], padding[1], dilation[1])
    if oh < 0 or ow < 0 or (kh == 0 or kw == 0):
        raise ShapeError(f"conv2d: a {kh}x{kw} kernel (dilation {dilation}) does not fit the "
                         f"padded {h}x{w} input")
    dtype = np.result_type(_strong(x_dtype), _strong(w_dtype))
    if dtype.kind != "f" or dtype not in dt.SUPPORTED:
        raise DTypeError(f"conv2d of {x_dtype} and {w_dtype} computes in {dtype}; it needs floats",
                         hint="cast the input or the weights with .astype('float32')")
    canonical = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    return Typing((n, o, oh, ow), dtype, (dtype, dtype), canonical)


def _conv_reference(x, w, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """im2col and a matmul per group."""
    n, o = x.shape[0], w.shape[0]
    cols = _windows(x, w.shape[2:], stride, padding, dilation, 0)  # n, c, kh, kw, oh, ow
    oh, ow = cols.shape[-2:]
    k = w.shape[1] * w.shape[2] * w.shape[3]
    cols = cols.reshape(n, groups, k, oh * ow)
    weights = w.reshape(groups, o // groups, k)
    return np.matmul(weights[None], cols).reshape(n, o, oh, ow).astype(x.dtype, copy=False)


# --- gradient rules: expressed with conv2d itself and movement ops ------------------------

def _ad():
    from .. import autodiff

    return autodiff


def _pad_or_crop(e, axis, before, after, value=None):
    """Pad `e` along `axis` (with zeros, or `value`), or crop where an amount is negative."""
    ad, fe = _ad(), _fe()
    n = e.shape[axis]
    if before < 0 or after < 0:
        e = ad.axis_slice(e, axis, max(0, -before), n - max(0, -after))
    before, after = max(0, before), max(0, after)
    if value is None:
        return ad.pad_axis(e, axis, before, after)
    parts = []
    for count in (before, None, after):
        if count is None:
            parts.append(e)
        elif count:
            shape = e.shape[:axis] + (count,) + e.shape[axis + 1:]
            parts.append(fe.broadcast_to(fe.Constant(value, dtype=e.dtype), shape))
    return parts[0] if len(parts) == 1 else fe.concatenate(parts, axis)


def _dilate(e, axis, step):
    """Insert step - 1 zeros between neighbours along `axis` (length n -> (n-1)*step + 1)."""
    if step == 1 or e.shape[axis] == 0:
        return e
    ad, fe = _ad(), _fe()
    n = e.shape[axis]
    spread = fe.reshape(e, e.shape[:axis + 1] + (1,) + e.shape[axis + 1:])
    spread = ad.pad_axis(spread, axis + 1, 0, step - 1)
    spread = fe.reshape(spread, e.shape[:axis] + (n * step,) + e.shape[axis + 1:])
    return ad.axis_slice(spread, axis, 0, (n - 1) * step + 1)


def _conv_input_grad(g, x_shape, w, stride, padding, dilation, groups):
    """d(conv2d)/dx: a stride-1 convolution of the stride-dilated, padded cotangent with the
    flipped weights, input and output channels swapped within each group."""
    fe = _fe()
    _, c, h, wd = x_shape
    o, cg, kh, kw = w.shape
    og = o // groups
    gd = _dilate(_dilate(g, 2, stride[0]), 3, stride[1])
    for axis, size, k, s, p, d in ((2, h, kh, stride[0], padding[0], dilation[0]),
                                   (3, wd, kw, stride[1], padding[1], dilation[1])):
        before = (k - 1) * d - p
        after = size + p - (g.shape[axis] - 1) * s - 1
        gd = _pad_or_crop(gd, axis, before, after)
    wt = fe.reshape(fe.transpose(fe.reshape(w, (groups, og, cg, kh, kw)), (0, 2, 1, 3, 4)),
                    (c, og, kh, kw))
    wt = wt[:, :, ::-1, ::-1]
    return conv2d(gd, wt, stride=1, padding=0, dilation=dilation, groups=groups)


def _conv_grad(g, out, x, w, stride=1, padding=0, dilation=1, groups=1):
    """Cotangents of conv2d's input and weights, both as convolutions."""
    ad, fe = _ad(), _fe()
    x_shape, w_shape = ad.shape_of(x, "conv2d"), ad.shape_of(w, "conv2d")
    stride = _pair("conv2d", "stride", stride, 1)
    padding = _pair("conv2d", "padding", padding, 0)
    dilation = _pair("conv2d", "dilation", dilation, 1)
    gx = _conv_input_grad(g, x_shape, w, stride, padding, dilation, groups)
    # dW: channels play the batch, the batch plays the channels; stride and dilation swap.
    o, cg, kh, kw = w_shape
    og = o // groups
    every = conv2d(fe.transpose(x, (1, 0, 2, 3)), fe.transpose(g, (1, 0, 2, 3)),
                      stride=dilation, padding=padding, dilation=stride)
    every = every[:, :, :kh, :kw]
    blocks = [fe.transpose(every[k * cg:(k + 1) * cg, k * og:(k + 1) * og], (1, 0, 2, 3))
              for k in range(groups)]
    gw = blocks[0] if groups == 1 else fe.concatenate(blocks, 0)
    return gx, gw


def _pool_attrs(name, attrs):
    kernel = _pair(name, "kernel_size", attrs["kernel_size"], 1)
    stride = attrs.get("stride")
    stride = _pair(name, "stride", kernel if stride is None else stride, 1)
    padding = _pair(name, "padding", attrs.get("padding", 0), 0)
    return kernel, stride, padding


def _avg_pool_grad(g, out, x, **attrs):
    """avg_pool2d is a depthwise convolution with 1/(kh*kw) weights: the same input rule."""
    ad, fe = _ad(), _fe()
    kernel, stride, padding = _pool_attrs("avg_pool2d", attrs)
    x_shape = ad.shape_of(x, "avg_pool2d")
    c = x_shape[1]
    dtype = out.dtype if isinstance(out.dtype, np.dtype) else np.dtype(np.float64)
    ones = fe.Constant(np.full((c, 1) + kernel, 1.0 / (kernel[0] * kernel[1]), dtype))
    return (_conv_input_grad(g, x_shape, ones, stride, padding, (1, 1), c),)


def _max_pool_grad(g, out, x, **attrs):
    """Each window's cotangent goes to its maximal elements, shared evenly between ties."""
    ad, fe = _ad(), _fe()
    (kh, kw), (sh, sw), (ph, pw) = _pool_attrs("max_pool2d", attrs)
    n, c, h, w = ad.shape_of(x, "max_pool2d")
    oh, ow = out.shape[2], out.shape[3]
    padded = _pad_or_crop(_pad_or_crop(x, 2, ph, ph, -np.inf), 3, pw, pw, -np.inf)
    hits = []
    for a in range(kh):
        for b in range(kw):
            window = padded[:, :, a:a + (oh - 1) * sh + 1:sh, b:b + (ow - 1) * sw + 1:sw]
            hits.append(((a, b), fe.astype(fe.apply("eq", window, out), g.dtype)))
    count = hits[0][1]
    for _, hit in hits[1:]:
        count = count + hit
    share = g / fe.maximum(count, 1)
    total = None
    for (a, b), hit in hits:
        placed = _dilate(_dilate(hit * share, 2, sh), 3, sw)
        placed = _pad_or_crop(placed, 2, a, h + 2 * ph - a - (oh - 1) * sh - 1)
        placed = _pad_or_crop(placed, 3, b, w + 2 * pw - b - (ow - 1) * sw - 1)
        total = placed if total is None else total + placed
    return (total[:, :, ph:ph + h, pw:pw + w],)


register(Op("conv2d", "conv", _conv_infer, _conv_reference, arity=2,
            grad=lambda g, out, x, w, **attrs: _conv_grad(g, out, x, w, **attrs),
            doc="2-d cross-correlation (PyTorch conv2d): NCHW input, OIHW weights."))


# --- pooling ---------------------------------------------------------------------------------

def _pool_rule(name):
    def infer(in_types, attrs):
        ((shape, dtype),) = in_types
        if len(shape) != 4:
            raise ShapeError(f"{name} needs a 4-d NCHW input, got shape {tuple(shape)}")
        kernel, stride, padding = _pool_attrs(name, attrs)
        if any(p > k // 2 for p, k in zip(padding, kernel)):
            raise ShapeError(f"{name}: padding {padding} must be at most half the kernel {kernel}")
        oh = out_size(shape[2], kernel[0], stride[0], padding[0])
        ow = out_size(shape[3], kernel[1], stride[1], padding[1])
        if oh < 0 or ow < 0:
            raise ShapeError(f"{name}: kernel {kernel} is larger than the padded input "
                             f"{tuple(shape)}")
        dtype = _strong(dtype)
        if name == "avg_pool2d" and dtype.kind != "f":
            raise DTypeError(f"avg_pool2d needs a float input, got {dtype}",
                             hint="cast with .astype('float32')")
        if dtype.kind == "b":
            raise DTypeError(f"{name} does not support bool inputs")
        canonical = {"kernel_size": kernel, "stride": stride, "padding": padding}
        return Typing((shape[0], shape[1], oh, ow), dtype, (dtype,), canonical)

    return infer


def _lowest(dtype):
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


def _max_pool_reference(x, kernel_size, stride, padding):
    win = _windows(x, kernel_size, stride, padding, (1, 1), _lowest(x.dtype))
    return win.max(axis=(2, 3))


def _avg_pool_reference(x, kernel_size, stride, padding):
    """Padding counts as zeros in the average (PyTorch's count_include_pad=True)."""
    win = _windows(x, kernel_size, stride, padding, (1, 1), 0)
    return (win.sum(axis=(2, 3)) / x.dtype.type(kernel_size[0] * kernel_size[1])).astype(x.dtype)


register(Op("max_pool2d", "pool", _pool_rule("max_pool2d"), _max_pool_reference, arity=1,
            grad=lambda g, out, x, **attrs: _max_pool_grad(g, out, x, **attrs),
            doc="Max over each window of an NCHW input; padding never wins; NaN propagates."))
register(Op("avg_pool2d", "pool", _pool_rule("avg_pool2d"), _avg_pool_reference, arity=1,
            grad=lambda g, out, x, **attrs: _avg_pool_grad(g, out, x, **attrs),
            doc="Mean over each window of an NCHW input, padding counted as zeros."))


# --- user functions --------------------------------------------------------------------------

def _fe():
    from .. import frontend  # late: the frontend imports ops

    return frontend


def conv2d(x, weight, stride=1, padding=0, dilation=1, groups=1):
    """PyTorch-style conv2d (cross-correlation): x (N, C, H, W), weight (O, C/groups, KH, KW)."""
    return _fe().apply("conv2d", x, weight, stride=stride, padding=padding, dilation=dilation,
                       groups=groups)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max pooling over NCHW windows (stride defaults to the kernel size)."""
    return _fe().apply("max_pool2d", x, kernel_size=kernel_size, stride=stride, padding=padding)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Average pooling over NCHW windows; padded cells count as zeros."""
    return _fe().apply("avg_pool2d", x, kernel_size=kernel_size, stride=stride, padding=padding)


def _stable_shift(x, axis):
    """max(x, axis) with keepdims, replaced by 0 where it is infinite so x - m stays defined."""
    fe = _fe()
    m = fe.max(x, axis=axis, keepdims=True)
    return fe.where(fe.absolute(m) < np.inf, m, 0.0)


# The composites below spell their arithmetic as ops (not Python operators), so that on
# plain numbers and arrays they evaluate eagerly with symgraph's type rules and errors,
# exactly as on expressions.

def logsumexp(x, axis=None, keepdims=False):
    """log(sum(exp(x))) without overflow: m + log(sum(exp(x - m))), m the maximum."""
    fe = _fe()
    m = _stable_shift(x, axis)
    shifted = fe.apply("sub", x, m)
    out = fe.apply("add", fe.log(fe.sum(fe.exp(shifted), axis=axis, keepdims=True)), m)
    # Dropping the kept size-1 axes with a one-element max is exact (NaN and -0.0 included).
    return out if keepdims else fe.max(out, axis=axis)


def softmax(x, axis=-1):
    """exp(x - max) / sum(exp(x - max)) along `axis`."""
    fe = _fe()
    e = fe.exp(fe.apply("sub", x, fe.max(x, axis=axis, keepdims=True)))
    return fe.apply("div", e, fe.sum(e, axis=axis, keepdims=True))


def log_softmax(x, axis=-1):
    """(x - max) - log(sum(exp(x - max))) along `axis`."""
    fe = _fe()
    s = fe.apply("sub", x, fe.max(x, axis=axis, keepdims=True))
    return fe.apply("sub", s, fe.log(fe.sum(fe.exp(s), axis=axis, keepdims=True)))


__all__ = ["avg_pool2d", "conv2d", "log_softmax", "logsumexp", "max_pool2d", "out_size",
           "softmax"]
