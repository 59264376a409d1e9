"""Kernels for the NN ops: conv2d as an implicit GEMM, pooling as a direct window loop.

conv2d never materializes an im2col matrix: the GEMM's B-panel packer reads the input
image through the im2col index map (zero outside the padded border), so the only scratch
is the GEMM's own packing buffer. Per image and group, C[Og, OH*OW] = W[Og, K] @ col[K, OH*OW]
with K = (C/groups)*KH*KW, summed in ascending (channel, ky, kx) order.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir

from ..ops import get_op
from .emit import I32, I64, PTR, declare, memory_type
from .gemm import dense_loader, gemm_function
from . import winograd
from .loops import emit_loop, emit_nest

MAX_SEGMENTS = 4  # strided slivers touching more output rows than this pack element-wise
MAX_SEGMENT_STRIDE = 4
DIRECT_MAX_GROUP_CHANNELS = 4  # fewer output channels per group use the direct loop


def _c(v):
    return ir.Constant(I64, v)


class Im2colLoader:
    """The implicit im2col matrix of one image's channel group: row kk is (channel, ky, kx),
    column j is (oy, ox); reads outside the image are zero. It packs whole NR-column slivers
    for the GEMM, from a table of the columns' window origins, in the cheapest of three ways:
    one masked vector load a row when the columns sit at consecutive input addresses
    (stride-1 "same" convolutions); a masked load and a shuffle per output row the sliver
    touches when they are strided or narrowed; element by element otherwise (mixed dtypes,
    outputs so narrow that a sliver spans many rows)."""

    def __init__(self, x_dtype, dtype, h, w, kh, kw, stride, padding, dilation, ow):
        self.x_dtype, self.dtype = np.dtype(x_dtype), np.dtype(dtype)
        self.h, self.w, self.kh, self.kw, self.ow = h, w, kh, kw, ow
        self.stride, self.padding, self.dilation = stride, padding, dilation

    def _tap(self, b, kk):
        """(channel offset, ky*dh, kx*dw) of im2col row kk."""
        kh, kw = self.kh, self.kw
        ch, r = b.udiv(kk, _c(kh * kw)), b.urem(kk, _c(kh * kw))
        ky, kx = b.udiv(r, _c(kw)), b.urem(r, _c(kw))
        return (b.mul(ch, _c(self.h * self.w)), b.mul(ky, _c(self.dilation[0])),
                b.mul(kx, _c(self.dilation[1])))

    def _origin(self, b, j):
        """(oy*sh - ph, ox*sw - pw) of im2col column j."""
        oy, ox = b.udiv(j, _c(self.ow)), b.urem(j, _c(self.ow))
        return (b.sub(b.mul(oy, _c(self.stride[0])), _c(self.padding[0])),
                b.sub(b.mul(ox, _c(self.stride[1])), _c(self.padding[1])))

    def _read(self, em, base, chan, iy, ix):
        b = em.b
        # One unsigned compare checks 0 <= i < size.
        ok = b.and_(b.icmp_unsigned("<", iy, _c(self.h)), b.icmp_unsigned("<", ix, _c(self.w)))
        off = b.add(chan, b.select(ok, b.add(b.mul(iy, _c(self.w)), ix), _c(0)))
        v = em.cast(self.x_dtype, self.dtype, em.load(self.x_dtype, base, off))
        return b.select(ok, v, em.const(self.dtype, 0))

    def setup(self, em, nr):
        self.table = em.b.alloca(I64, size=_c(2 * nr), name="im2col_origins")
        self.lanes = em.b.alloca(I32, size=_c(3 * nr), name="im2col_lanes")

    def pack_sliver(self, em, base, dst, k0, kc, j0, n, nr):
        b = em.b
        table, lanes = self.table, self.lanes
        mem = memory_type(self.dtype)
        far = _c(-(1 << 40))  # columns past n read nothing: every tap stays out of bounds

        def slot(i):
            return b.gep(table, [i], source_etype=I64, inbounds=True)

        def lane(i):
            return b.gep(lanes, [i], source_etype=I32, inbounds=True)

        # Column origins; and whether the sliver's columns sit at consecutive input
        # addresses (true across output rows for stride-1 "same" convolutions), which makes
        # every tap row one masked vector load.
        y_first, x_first = self._origin(b, j0)
        first = b.add(b.mul(y_first, _c(self.w)), x_first)
        contiguous = b.alloca(ir.IntType(1), name="contiguous")
        b.store(ir.Constant(ir.IntType(1), 1), contiguous)

        def column(r):
            j = b.add(j0, r)
            valid = b.icmp_signed("<", j, n)
            y0, x0 = self._origin(b, b.select(valid, j, _c(0)))
            b.store(b.select(valid, y0, far), slot(r))
            b.store(x0, slot(b.add(r, _c(nr))))
            b.store(b.trunc(b.select(valid, y0, _c(-(1 << 30))), I32), lane(r))
            b.store(b.trunc(x0, I32), lane(b.add(r, _c(nr))))
            # the output row of column r, counted from the sliver's first (lanes past n: -1)
            row = b.sub(b.udiv(b.select(valid, j, j0), _c(self.ow)), b.udiv(j0, _c(self.ow)))
            b.store(b.trunc(b.select(valid, row, _c(-1)), I32), lane(b.add(r, _c(2 * nr))))
            follows = b.icmp_signed("==", b.add(b.mul(y0, _c(self.w)), x0), b.add(first, r))
            ok = b.or_(b.not_(valid), follows)
            b.store(b.and_(b.load(contiguous, typ=ir.IntType(1)), ok), contiguous)

        emit_loop(b, nr, column, "col")
        vector_ok = self.x_dtype == self.dtype and self.h * self.w < (1 << 30)

        def scalar_rows():
            def row(o):
                chan, dy, dx = self._tap(b, b.add(k0, o))

                def cell(r):
                    iy = b.add(b.load(slot(r), typ=I64), dy)
                    ix = b.add(b.load(slot(b.add(r, _c(nr))), typ=I64), dx)
                    v = self._read(em, base, chan, iy, ix)
                    dst_at = b.gep(dst, [b.add(b.mul(o, _c(nr)), r)], source_etype=mem,
                                   inbounds=True)
                    b.store(v, dst_at)

                emit_loop(b, nr, cell, "cell")

            emit_loop(b, kc, row, "row")

        if not vector_ok:
            scalar_rows()
            return
        ty = memory_type(self.dtype)
        vty, ity = ir.VectorType(ty, nr), ir.VectorType(I32, nr)
        mty = ir.VectorType(ir.IntType(1), nr)
        suffix = f"v{nr}f{8 * self.dtype.itemsize}"
        masked_load = declare(b.module, f"llvm.masked.load.{suffix}.p0", vty, [PTR, I32, mty, vty])
        ys = b.load(lanes, typ=ity, align=4)
        xs = b.load(b.gep(lanes, [_c(nr)], source_etype=I32), typ=ity, align=4)

        def splat(value):
            return ir.Constant(ity, [value] * nr) if isinstance(value, int) else b.shuffle_vector(
                b.insert_element(ir.Constant(ity, ir.Undefined), value, ir.Constant(I32, 0)),
                ir.Constant(ity, ir.Undefined), ir.Constant(ity, [0] * nr))

        taps = [(ky, kx) for ky in range(self.kh) for kx in range(self.kw)]
        tap_offsets = [ky * self.dilation[0] * self.w + kx * self.dilation[1] for ky, kx in taps]
        masks = []
        for ky, kx in taps:
            iy = b.add(ys, splat(ky * self.dilation[0]))
            ix = b.add(xs, splat(kx * self.dilation[1]))
            masks.append(b.and_(b.icmp_unsigned("<", iy, splat(self.h)),
                                b.icmp_unsigned("<", ix, splat(self.w))))
        zero = ir.Constant(vty, [0.0] * nr)
        align = ir.Constant(I32, self.dtype.itemsize)

        def vector_rows(row_values, prefetch=False):
            # Channel by channel, with the KH*KW taps unrolled: each tap's lane masks and
            # offsets are the same for every channel, so they are computed once per sliver,
            # and a row costs a few masked vector loads and one store. Rows outside
            # [k0, k0 + kc) (a K block can start or end inside a channel) are skipped.
            per = len(taps)
            c_lo = b.udiv(k0, _c(per))
            c_hi = b.udiv(b.add(k0, b.sub(kc, _c(1))), _c(per))
            # The next sliver's input lines, fetched while this one is packed and its tiles
            # computed: a K block reads C/groups x KH rows of input at once, more streams
            # than the hardware prefetchers follow (one thread's conv2d ran ~7% faster).
            line = 64 // self.dtype.itemsize
            span = range(0, nr + (self.kw - 1) * self.dilation[1], line)

            def channel(ci):
                c = b.add(c_lo, ci)
                plane = b.add(b.mul(c, _c(self.h * self.w)), first)
                row0 = b.sub(b.mul(c, _c(per)), k0)
                for ky in range(self.kh if prefetch else 0):
                    ahead = b.add(plane, _c(ky * self.dilation[0] * self.w + nr))
                    for offset in span:
                        em.prefetch(b.gep(base, [b.add(ahead, _c(offset))], source_etype=ty))
                for t in range(per):
                    o = b.add(row0, _c(t))
                    with b.if_then(b.icmp_unsigned("<", o, kc)):
                        b.store(row_values(plane, t), b.gep(dst, [b.mul(o, _c(nr))],
                                                            source_etype=ty, inbounds=True),
                                align=self.dtype.itemsize)

            emit_loop(b, b.add(b.sub(c_hi, c_lo), _c(1)), channel, "vchan")

        def contiguous_row(plane, t):
            src = b.gep(base, [b.add(plane, _c(tap_offsets[t]))], source_etype=ty)
            return b.call(masked_load, [src, align, masks[t], zero])  # lanes outside: unread

        sh, sw = self.stride
        segments = (nr - 1) // self.ow + 2  # output rows that nr consecutive columns touch

        def segmented_rows():
            # Strided or narrowed columns: the lanes of one output row read every sw-th
            # element from a row base that moves by (sh*W - OW*sw) per output row, so a
            # sliver is a few segments, each one masked load of sw*NR elements and a shuffle
            # picking every sw-th element.
            wide = sw * nr
            wty, wmty = ir.VectorType(ty, wide), ir.VectorType(ir.IntType(1), wide)
            wide_load = declare(b.module, f"llvm.masked.load.v{wide}f{8 * self.dtype.itemsize}.p0",
                                wty, [PTR, I32, wmty, wty])
            wide_zero = ir.Constant(wty, [0.0] * wide)
            segment = b.load(b.gep(lanes, [_c(2 * nr)], source_etype=I32), typ=ity, align=4)
            jump = sh * self.w - self.ow * sw
            every = ir.Constant(ir.VectorType(I32, wide), [e // sw for e in range(wide)])
            on_stride = ir.Constant(wmty, [e % sw == 0 for e in range(wide)])
            pick = ir.Constant(ity, [r * sw for r in range(nr)])
            lane_masks = [[b.and_(b.icmp_signed("==", segment, splat(q)), mask) for mask in masks]
                          for q in range(segments)]
            wide_masks = [[b.and_(b.shuffle_vector(m, m, every), on_stride) for m in row]
                          for row in lane_masks]

            def segmented_row(plane, t):
                acc = zero
                for q in range(segments):
                    src = b.gep(base, [b.add(plane, _c(q * jump + tap_offsets[t]))],
                                source_etype=ty)
                    block = b.call(wide_load, [src, align, wide_masks[q][t], wide_zero])
                    picked = block if sw == 1 else b.shuffle_vector(block, block, pick)
                    acc = b.select(lane_masks[q][t], picked, acc)
                return acc

            vector_rows(segmented_row)

        few_segments = segments <= MAX_SEGMENTS and sw <= MAX_SEGMENT_STRIDE
        with b.if_else(b.load(contiguous, typ=ir.IntType(1))) as (fast, other):
            with fast:
                vector_rows(contiguous_row, prefetch=True)
            with other:
                if few_segments:
                    segmented_rows()
                else:
                    scalar_rows()


def uses_winograd(g, node) -> bool:
    """Whether conv2d `node` is computed by Winograd's F(2x2, 3x3) (codegen/winograd.py)."""
    d = g.nodes[node]
    x, wt = d["args"]
    return (g.nodes[wt]["shape"][0] // d["attrs"]["groups"] >= DIRECT_MAX_GROUP_CHANNELS
            and winograd.applies(g.nodes[x]["shape"], g.nodes[wt]["shape"], d["shape"],
                                 d["attrs"], (g.nodes[x]["dtype"], g.nodes[wt]["dtype"],
                                              d["dtype"])))


def lower_conv(kernel, root):
    """Kernel body of a conv2d node: one implicit GEMM per (image, group)."""
    g, em, b = kernel.g, kernel.em, kernel.b
    d = g.nodes[root]
    x, wt = d["args"]
    n, c, h, w = g.nodes[x]["shape"]
    o, cg, kh, kw = g.nodes[wt]["shape"]
    attrs = d["attrs"]
    groups = attrs["groups"]
    _, _, oh, ow = d["shape"]
    dtype = np.dtype(d["dtype"])
    x_dtype, w_dtype = g.nodes[x]["dtype"], g.nodes[wt]["dtype"]
    out = kernel.pointers[root]
    p, k, og = oh * ow, cg * kh * kw, o // groups
    if n * o * p == 0:
        return
    if k == 0:
        emit_loop(b, math.prod(d["shape"]), lambda i: em.store(dtype, em.const(dtype, 0), out, i))
        return
    if og < DIRECT_MAX_GROUP_CHANNELS:
        _direct_conv(kernel, root)
        return
    epilogue = None
    if kernel.epilogue_root is not None and groups == 1:
        # The elementwise ops after the convolution run on each finished GEMM tile: C's
        # row is the output channel, its column the output pixel (oy, ox) of image `word`.
        epilogue = kernel._tile_epilogue(kernel.epilogue_root, lambda rb, word, row, col: [
            word, row, rb.udiv(col, _c(ow)), rb.urem(col, _c(ow))])
        kernel.epilogue_done = True
    fn = gemm_function(
        b.module, f"{b.function.name}.gemm", dtype, dense_loader(w_dtype, dtype, k),
        Im2colLoader(x_dtype, dtype, h, w, kh, kw, attrs["stride"], attrs["padding"],
                     attrs["dilation"], ow), epilogue=epilogue[0] if epilogue else None)

    def at(ptr, elem_dtype, offset):
        return b.gep(ptr, [offset], source_etype=memory_type(elem_dtype), inbounds=True)

    def one(idx):
        ni, gi = idx
        a_ptr = at(kernel.pointers[wt], w_dtype, b.mul(gi, _c(og * k)))
        x_off = b.mul(b.add(b.mul(ni, _c(c)), b.mul(gi, _c(cg))), _c(h * w))
        c_off = b.mul(b.add(b.mul(ni, _c(o)), b.mul(gi, _c(og))), _c(p))
        extra = []
        if epilogue is not None:
            b.store(ni, epilogue[2])  # the image this GEMM computes, for the epilogue
            extra = [epilogue[1]]
        b.call(fn, [a_ptr, at(kernel.pointers[x], x_dtype, x_off), at(out, dtype, c_off),
                    _c(og), _c(p), _c(k), em.status_ptr] + extra)

    if uses_winograd(g, root):
        # Images (or filters) holding inf or nan take the implicit GEMM: the transforms'
        # differences would turn an inf into nan where the direct sum keeps it.
        winograd.lower(kernel, root, epilogue, fallback=lambda ni: one([ni, _c(0)]))
        return
    emit_nest(b, (n, groups), one, "conv", outer=kernel.outer)  # threads split the images


def _direct_conv(kernel, root):
    """conv2d as a loop over outputs and their windows: for few output channels per group
    (depthwise convolutions) the GEMM's MR-row tiles would be mostly padding. Same summation
    order as the GEMM path: 0, then ascending (channel, ky, kx)."""
    g, em, b = kernel.g, kernel.em, kernel.b
    d = g.nodes[root]
    x, wt = d["args"]
    _, c, h, w = g.nodes[x]["shape"]
    o, cg, kh, kw = g.nodes[wt]["shape"]
    attrs = d["attrs"]
    (sh, sw), (ph, pw), (dh, dw) = attrs["stride"], attrs["padding"], attrs["dilation"]
    og = o // attrs["groups"]
    dtype = np.dtype(d["dtype"])
    x_dtype, w_dtype = g.nodes[x]["dtype"], g.nodes[wt]["dtype"]
    xs, ws, out = kernel.pointers[x], kernel.pointers[wt], kernel.pointers[root]
    zero = em.const(dtype, 0)
    acc_slot = b.alloca(zero.type, name="conv_acc")

    def body(idx):
        ni, oi, oy, ox = idx
        gi = b.udiv(oi, _c(og))
        b.store(zero, acc_slot)

        def tap(ci, ky, kx):
            iy = b.sub(b.add(b.mul(oy, _c(sh)), b.mul(ky, _c(dh))), _c(ph))
            ix = b.sub(b.add(b.mul(ox, _c(sw)), b.mul(kx, _c(dw))), _c(pw))
            ok_y, ok_x = b.icmp_unsigned("<", iy, _c(h)), b.icmp_unsigned("<", ix, _c(w))
            chan = b.add(b.mul(ni, _c(c)), b.add(b.mul(gi, _c(cg)), ci))
            off = b.add(b.mul(chan, _c(h * w)), b.add(b.mul(b.select(ok_y, iy, _c(0)), _c(w)),
                                                       b.select(ok_x, ix, _c(0))))
            xv = em.cast(x_dtype, dtype, em.load(x_dtype, xs, off))
            xv = b.select(b.and_(ok_y, ok_x), xv, zero)
            wv = em.cast(w_dtype, dtype, em.load(w_dtype, ws, em.linearize([oi, ci, ky, kx],
                                                                           (o, cg, kh, kw))))
            b.store(em.add(dtype, b.load(acc_slot, typ=zero.type), em.mul(dtype, xv, wv)),
                    acc_slot)

        emit_nest(b, (cg, kh, kw), lambda t: tap(*t), "tap")
        em.store(dtype, b.load(acc_slot, typ=zero.type), out, em.linearize(idx, d["shape"]))

    emit_nest(b, d["shape"], body, "conv", outer=kernel.outer)


def lower_pool(kernel, root):
    """Kernel body of max_pool2d / avg_pool2d: a loop over each output's window."""
    g, em, b = kernel.g, kernel.em, kernel.b
    d = g.nodes[root]
    (x,) = d["args"]
    _, _, h, w = g.nodes[x]["shape"]
    dtype = np.dtype(d["dtype"])
    attrs = d["attrs"]
    (kh, kw), (sh, sw), (ph, pw) = attrs["kernel_size"], attrs["stride"], attrs["padding"]
    is_max = d["op"] == "max_pool2d"
    maximum = get_op("maximum").lower
    src, out = kernel.pointers[x], kernel.pointers[root]
    ty = em.const(dtype, 0).type
    lowest = -np.inf if dtype.kind == "f" else np.iinfo(dtype).min
    acc_slot = b.alloca(ty, name="pool_acc")

    def body(idx):
        ni, ci, oy, ox = idx
        base = b.mul(b.add(b.mul(ni, _c(d["shape"][1])), ci), _c(h * w))
        b.store(em.const(dtype, lowest if is_max else 0), acc_slot)

        def cell(ky, kx):
            iy = b.sub(b.add(b.mul(oy, _c(sh)), ky), _c(ph))
            ix = b.sub(b.add(b.mul(ox, _c(sw)), kx), _c(pw))
            ok_y, ok_x = b.icmp_unsigned("<", iy, _c(h)), b.icmp_unsigned("<", ix, _c(w))
            ok = b.and_(ok_y, ok_x)
            off = b.add(base, b.add(b.mul(b.select(ok_y, iy, _c(0)), _c(w)),
                                    b.select(ok_x, ix, _c(0))))
            v = em.load(dtype, src, off)
            acc = b.load(acc_slot, typ=ty)
            if is_max:
                new = b.select(ok, maximum(em, dtype, acc, v), acc)
            else:
                new = em.add(dtype, acc, b.select(ok, v, em.const(dtype, 0)))
            b.store(new, acc_slot)

        emit_loop(b, kh, lambda ky: emit_loop(b, kw, lambda kx: cell(ky, kx), "kx"), "ky")
        result = b.load(acc_slot, typ=ty)
        if not is_max:
            result = em.div(dtype, result, em.const(dtype, kh * kw))
        em.store(dtype, result, out, em.linearize(idx, d["shape"]))

    emit_nest(b, d["shape"], body, "pool", outer=kernel.outer)
