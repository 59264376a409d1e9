"""conv2d with 3x3 filters at stride 1 by Winograd's minimal filtering, F(2x2, 3x3).

A 2x2 block of outputs needs 36 multiply-adds per channel pair done directly, 16 this way:
with Lavin and Gray's matrices, for a filter g (3x3) and an input tile d (4x4, the padded
input under the block's windows),

    U = G g G^T,   V = B^T d B,   Y = A^T (sum over channels of U * V) A

where the transforms are adds and halvings, and the sum over channels of the elementwise
products is 16 GEMMs, one per position k of the 4x4 tile: M_k[O, tiles] = U_k[O, C] @
V_k[C, tiles], run on gemm.py's microkernel with nothing packed per call (the filter
transform writes U in the microkernel's A layout, and B rows are read from V in place).
Per image: the input is copied into a zero-bordered plane (so tile reads need no bounds
checks), then blocks of tile rows go through input transform, products and output transform
while their V and M stay in cache. The filters are transformed once per thread: such a
conv2d runs one chunk of images per thread.

For (8, 64, 56, 56) with 64 filters this does 2.25x fewer multiply-adds than the implicit
GEMM and runs about 1.45x faster. The result differs from the direct sum by rounding only
(the transforms' adds and halvings), about 1e-7 of the output's magnitude in float32; an
inf or nan in an image or filter would become nan in the transforms' differences, so such
images take the implicit GEMM.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir

from .emit import I1, I32, I64, PTR, Emitter, declare, register_type
from .gemm import ERR_NO_MEMORY, align_pointer, blocking, microkernel
from .loops import emit_loop, emit_nest

MIN_CHANNELS = 16  # fewer input or output channels make the 16 GEMMs too thin to pay
BLOCK_BYTES = 1 << 22  # V and M of one block of tile rows, at most (one row at least)
TILE = 16  # positions in a 4x4 transformed tile


def applies(x_shape, w_shape, out_shape, attrs, dtypes) -> bool:
    """Whether a conv2d node takes this path: 3x3 filters, stride and dilation 1, one group,
    an even output size (whole 2x2 blocks), at least MIN_CHANNELS channels each way, and
    one floating dtype for input, filters and output."""
    _, c, h, w = x_shape
    o, _, kh, kw = w_shape
    _, _, oh, ow = out_shape
    if not all(isinstance(size, int) for size in (c, h, w, o, oh, ow)):
        return False  # open sizes other than the batch
    return ((kh, kw) == (3, 3) and tuple(attrs["stride"]) == (1, 1)
            and tuple(attrs["dilation"]) == (1, 1) and attrs["groups"] == 1
            and oh % 2 == 0 and ow % 2 == 0 and oh > 0 and ow > 0
            and c >= MIN_CHANNELS and o >= MIN_CHANNELS
            and len({np.dtype(t) for t in dtypes}) == 1
            and np.dtype(dtypes[0]) in (np.dtype("float32"), np.dtype("float64")))


def _c(v):
    return ir.Constant(I64, v)


def _input_1d(b, d):
    """B^T d for a column of four values."""
    return [b.fsub(d[0], d[2]), b.fadd(d[1], d[2]), b.fsub(d[2], d[1]), b.fsub(d[1], d[3])]


def _filter_1d(b, g, half):
    """G g for a column of three values."""
    return [g[0], b.fmul(b.fadd(b.fadd(g[0], g[1]), g[2]), half),
            b.fmul(b.fadd(b.fsub(g[0], g[1]), g[2]), half), g[2]]


def _output_1d(b, m):
    """A^T m for a column of four values."""
    return [b.fadd(b.fadd(m[0], m[1]), m[2]), b.fsub(b.fsub(m[1], m[2]), m[3])]


def _two_d(b, one_d, tile):
    """one_d applied to every column of `tile` (a list of rows), then to every row."""
    columns = [one_d(b, [row[j] for row in tile]) for j in range(len(tile[0]))]
    rows = [[column[i] for column in columns] for i in range(len(columns[0]))]
    return [one_d(b, row) for row in rows]


def _function(module, name, n_pointers, n_sizes):
    """An internal void function of noalias pointers then i64s (noalias: its loops vectorize
    without run-time overlap checks)."""
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR] * n_pointers + [I64] * n_sizes),
                     name)
    fn.linkage = "internal"
    for arg in fn.args[:n_pointers]:
        arg.add_attribute("noalias")
    return fn, ir.IRBuilder(fn.append_basic_block("entry"))


class _Shapes:
    def __init__(self, x_shape, w_shape, out_shape, padding, dtype):
        _, self.c, self.h, self.w = x_shape
        self.o = w_shape[0]
        _, _, oh, ow = out_shape
        self.ph, self.pw = padding
        self.th, self.tw = oh // 2, ow // 2  # tiles down and across
        self.oh, self.ow = oh, ow
        self.rows, self.cols = oh + 2, ow + 2  # the zero-bordered plane
        self.dtype = np.dtype(dtype)
        self.blk = blocking(self.dtype)
        self.lanes = self.blk.w  # the transforms' loops over tiles: one tile per lane
        mr, nr = self.blk.mr, self.blk.nr
        self.o_pad = -(-self.o // mr) * mr  # U and M rows: whole MR-row slivers
        sz = self.dtype.itemsize

        def row_length(rows):  # V and M rows: the tiles, a vector of slack, whole slivers
            return -(-(rows * self.tw + self.lanes) // nr) * nr

        def waste(rows):  # columns the products compute per tile of the block
            return -(-rows * self.tw // nr) * nr / (rows * self.tw)

        fitting = [rows for rows in range(1, self.th + 1)
                   if TILE * (self.c + self.o_pad) * row_length(rows) * sz <= BLOCK_BYTES]
        self.block_rows = min(fitting or [1], key=lambda rows: (round(waste(rows), 3), rows))
        self.blocks = -(-self.th // self.block_rows)
        self.ld = row_length(self.block_rows)
        self.k_blocks = -(-self.c // self.blk.kc)
        self.kc = -(-self.c // self.k_blocks)  # equal K blocks

    def workspace_elements(self):
        """(plane, packed U, V, M) element counts."""
        slack = 2 * self.lanes + 2  # a row's last vectors read past the last plane row
        return (self.c * self.rows * self.cols + slack, TILE * self.o_pad * self.c,
                TILE * self.c * self.ld, TILE * self.o_pad * self.ld)


def _finite_tracker(b, dtype):
    """(note(value), finite()) : note folds a value's magnitude bits into a running maximum
    (an integer reduction, so the loop around it still vectorizes); finite() says whether
    every value noted was finite."""
    bits = ir.IntType(8 * dtype.itemsize)
    umax = declare(b.module, f"llvm.umax.i{bits.width}", bits, [bits, bits])
    magnitude = ir.Constant(bits, (1 << (bits.width - 1)) - 1)
    inf_bits = int(np.array(np.inf, dtype).view(f"u{dtype.itemsize}"))
    with b.goto_entry_block():
        slot = b.alloca(bits, name="max_magnitude")
    b.store(ir.Constant(bits, 0), slot)

    def note(value):
        m = b.and_(b.bitcast(value, bits), magnitude)
        b.store(b.call(umax, [b.load(slot, typ=bits), m]), slot)

    def finite():
        return b.icmp_unsigned("<", b.load(slot, typ=bits), ir.Constant(bits, inf_bits))

    return note, finite


def _function(module, name, n_pointers, n_sizes, returns=ir.VoidType()):
    """An internal function of noalias pointers then i64s (noalias: its loops vectorize
    without run-time overlap checks)."""
    fn = ir.Function(module, ir.FunctionType(returns, [PTR] * n_pointers + [I64] * n_sizes),
                     name)
    fn.linkage = "internal"
    for arg in fn.args[:n_pointers]:
        arg.add_attribute("noalias")
    return fn, ir.IRBuilder(fn.append_basic_block("entry"))


def _filter_transform(module, name, s: _Shapes):
    """``fn(w, Up)``: U_k[o][c] = (G w[o][c] G^T)[k], packed as the microkernel's A operand:
    for each k, MR-row slivers of (channel, row) pairs. The last sliver's rows past O are
    left as they are: they only make M rows past O, which nothing reads."""
    fn, b = _function(module, name, 2, 0)
    w, u = fn.args
    em = Emitter(b)
    half = em.const(s.dtype, 0.5)
    mr = s.blk.mr

    def pair(sliver, c, lane):
        o = b.add(b.mul(sliver, _c(mr)), lane)
        base = b.mul(b.add(b.mul(o, _c(s.c)), c), _c(9))
        g = [[em.load(s.dtype, w, b.add(base, _c(3 * i + j))) for j in range(3)]
             for i in range(3)]
        tile = _two_d(b, lambda bb, col: _filter_1d(bb, col, half), g)
        at = b.add(b.mul(sliver, _c(s.c * mr)), b.add(b.mul(c, _c(mr)), lane))
        for k in range(TILE):
            em.store(s.dtype, tile[k // 4][k % 4], u, b.add(at, _c(k * s.o_pad * s.c)))

    # The rows of a sliver (MR output channels) are one vector: gathered filter taps,
    # contiguous stores.
    whole, rest = divmod(s.o, mr)
    emit_loop(b, whole, lambda sliver: emit_loop(b, _c(s.c), lambda c: emit_loop(
        b, mr, lambda lane: pair(sliver, c, lane), "wl", vector_width=mr), "wc"), "ws")
    if rest:
        emit_loop(b, _c(s.c), lambda c: emit_loop(
            b, rest, lambda lane: pair(_c(whole), c, lane), "wr"), "wp")
    b.ret_void()
    return fn


def _all_finite(module, name, dtype, count):
    """``finite = fn(x)``: whether the `count` values at x are all finite."""
    fn, b = _function(module, name, 1, 0, I1)
    em = Emitter(b)
    note, finite = _finite_tracker(b, dtype)
    emit_loop(b, count, lambda i: note(em.load(dtype, fn.args[0], i)), "fin")
    b.ret(finite())
    return fn


def _pad(module, name, s: _Shapes):
    """``finite = fn(x, plane)``: one image's channels copied into zero-bordered planes;
    false when the image holds inf or nan."""
    fn, b = _function(module, name, 2, 0, I1)
    x, plane = fn.args
    em = Emitter(b)
    zero = em.const(s.dtype, 0)
    note, finite = _finite_tracker(b, s.dtype)

    def copy(src, dst, j):
        value = em.load(s.dtype, x, b.add(src, j))
        note(value)
        em.store(s.dtype, value, plane, b.add(dst, b.add(j, _c(s.pw))))

    def row(idx):
        c, r = idx
        dst = b.mul(b.add(b.mul(c, _c(s.rows)), r), _c(s.cols))
        src_row = b.sub(r, _c(s.ph))
        inside = b.and_(b.icmp_signed(">=", src_row, _c(0)), b.icmp_signed("<", src_row, _c(s.h)))
        with b.if_else(inside) as (data, blank):
            with data:
                src = b.mul(b.add(b.mul(c, _c(s.h)), src_row), _c(s.w))
                emit_loop(b, s.pw, lambda j: em.store(s.dtype, zero, plane, b.add(dst, j)), "pl")
                emit_loop(b, s.w, lambda j: copy(src, dst, j), "pc")
                emit_loop(b, s.cols - s.pw - s.w, lambda j: em.store(
                    s.dtype, zero, plane, b.add(dst, b.add(j, _c(s.pw + s.w)))), "pr")
            with blank:
                emit_loop(b, s.cols, lambda j: em.store(s.dtype, zero, plane, b.add(dst, j)),
                          "pz")

    emit_nest(b, (s.c, s.rows), row, "pad")
    b.ret(finite())
    return fn


def _vector_io(b, s: _Shapes):
    """(load(ptr, offset), store(value, ptr, offset)) of s.lanes-element vectors, unaligned."""
    ty = register_type(s.dtype)
    vty = ir.VectorType(ty, s.lanes)
    sz = s.dtype.itemsize

    def at(ptr, offset):
        return b.gep(ptr, [offset], source_etype=ty, inbounds=True)

    def load(ptr, offset):
        return b.load(at(ptr, offset), typ=vty, align=sz)

    def store(value, ptr, offset):
        b.store(value, at(ptr, offset), align=sz)

    return load, store


def _lanes(indices):
    return ir.Constant(ir.VectorType(I32, len(indices)), list(indices))


def _input_transform(module, name, s: _Shapes):
    """``fn(plane, V, first_tile_row, tile_rows)``: V_k[c][t] = (B^T d B)[k] for the tiles of
    `tile_rows` rows from `first_tile_row` (t counted from the block's first tile; rows of
    length s.ld, the GEMM's B operand in place). One vector of tiles at a time: a plane row
    read as two pairs of vectors (from the group's first column, and two columns on) gives
    the tiles' four columns as their even and odd elements. A row's last vector may run past
    the row: its extra tiles land in the next row's slots, written after it, or in V's
    slack columns, and its reads stay inside the plane's slack."""
    fn, b = _function(module, name, 2, 2)
    plane, v, first, count = fn.args
    load, store = _vector_io(b, s)
    w = s.lanes
    even, odd = _lanes(range(0, 2 * w, 2)), _lanes(range(1, 2 * w, 2))

    def channel_row(c, r):
        top = b.mul(b.add(b.mul(c, _c(s.rows)), b.mul(b.add(first, r), _c(2))), _c(s.cols))
        out = b.add(b.mul(c, _c(s.ld)), b.mul(r, _c(s.tw)))

        def group(gi):
            tx = b.mul(gi, _c(w))
            d = []
            for i in range(4):
                row = b.add(top, b.add(b.mul(tx, _c(2)), _c(i * s.cols)))
                lo, hi = load(plane, row), load(plane, b.add(row, _c(w)))
                lo2, hi2 = load(plane, b.add(row, _c(2))), load(plane, b.add(row, _c(w + 2)))
                d.append([b.shuffle_vector(lo, hi, even), b.shuffle_vector(lo, hi, odd),
                          b.shuffle_vector(lo2, hi2, even), b.shuffle_vector(lo2, hi2, odd)])
            t = _two_d(b, _input_1d, d)
            at = b.add(out, tx)
            for k in range(TILE):
                store(t[k // 4][k % 4], v, b.add(at, _c(k * s.c * s.ld)))

        emit_loop(b, -(-s.tw // w), group, "it")

    emit_loop(b, _c(s.c), lambda c: emit_loop(b, count, lambda r: channel_row(c, r), "ir"), "ic")
    b.ret_void()
    return fn


def _output_transform(module, name, s: _Shapes):
    """``fn(M, out, first_tile_row, tile_rows)``: each 2x2 output block = A^T m A, m the 16
    GEMM results of its tile (M_k[o][t], rows of length s.ld). One vector of tiles at a
    time; each output row's pair of vectors is interleaved into 2 x lanes pixels, and the
    row's last, partial vector is stored under a mask (other rows may belong to another
    thread's image)."""
    fn, b = _function(module, name, 2, 2)
    m, out, first, count = fn.args
    load, store = _vector_io(b, s)
    w = s.lanes
    ty = register_type(s.dtype)
    vty = ir.VectorType(ty, w)
    interleave = [_lanes([j // 2 + (j % 2) * w for j in range(h * w, (h + 1) * w)])
                  for h in range(2)]  # first and second half of (y0[0], y1[0], y0[1], ...)
    full, tail = divmod(s.tw, w)
    masked = declare(module, f"llvm.masked.store.v{w}{'f32' if s.dtype.itemsize == 4 else 'f64'}.p0",
                     ir.VoidType(), [vty, PTR, I32, ir.VectorType(I1, w)])
    masks = [ir.Constant(ir.VectorType(I1, w), [h * w + j < 2 * tail for j in range(w)])
             for h in range(2)]

    def channel_row(o, r):
        src = b.add(b.mul(o, _c(s.ld)), b.mul(r, _c(s.tw)))
        top = b.mul(b.add(b.mul(o, _c(s.oh)), b.mul(b.add(first, r), _c(2))), _c(s.ow))

        def group(gi, partial=False):
            tx = b.mul(gi, _c(w))
            at = b.add(src, tx)
            vals = [load(m, b.add(at, _c(k * s.o_pad * s.ld))) for k in range(TILE)]
            y = _two_d(b, _output_1d, [vals[4 * i:4 * i + 4] for i in range(4)])
            corner = b.add(top, b.mul(tx, _c(2)))
            for i in range(2):
                pair = [b.shuffle_vector(y[i][0], y[i][1], lanes) for lanes in interleave]
                for h in range(2):
                    offset = b.add(corner, _c(i * s.ow + h * w))
                    if not partial:
                        store(pair[h], out, offset)
                    elif any(masks[h].constant):
                        ptr = b.gep(out, [offset], source_etype=ty, inbounds=True)
                        b.call(masked, [pair[h], ptr, ir.Constant(I32, s.dtype.itemsize),
                                        masks[h]])

        emit_loop(b, full, group, "ot")
        if tail:
            group(_c(full), partial=True)

    emit_loop(b, _c(s.o), lambda o: emit_loop(b, count, lambda r: channel_row(o, r), "or"), "oc")
    b.ret_void()
    return fn


def _products(module, name, s: _Shapes):
    """``fn(Up, V, M, tiles)``: M_k = U_k @ V_k for the 16 positions k, straight on the
    microkernel: U was packed by the filter transform and V's rows are read in place, so
    nothing is packed per block. For each k and NR-tile column sliver (held in L1), every
    MR-row sliver of U_k; K in equal blocks of at most KC channels."""
    fn, b = _function(module, name, 3, 1)
    u, v, m, tiles = fn.args
    blk = s.blk
    ty = register_type(s.dtype)
    kernel = microkernel(module, f"{name}.ukernel", s.dtype, blk, b_row_stride=True)

    def at(base, offset):
        return b.gep(base, [offset], source_etype=ty, inbounds=True)

    def position(k):
        uk = at(u, b.mul(k, _c(s.o_pad * s.c)))
        vk = at(v, b.mul(k, _c(s.c * s.ld)))
        mk = at(m, b.mul(k, _c(s.o_pad * s.ld)))

        def column(js):
            j0 = b.mul(js, _c(blk.nr))

            def row(i_s):
                a = at(uk, b.mul(i_s, _c(s.c * blk.mr)))
                c = at(mk, b.add(b.mul(i_s, _c(blk.mr * s.ld)), j0))
                for pt in range(s.k_blocks):
                    pc = pt * s.kc
                    kc = min(s.kc, s.c - pc)
                    b.call(kernel, [_c(kc), at(a, _c(pc * blk.mr)), at(vk, b.add(j0, _c(pc * s.ld))),
                                    c, _c(s.ld), ir.Constant(I1, pt == 0), _c(s.ld)])

            emit_loop(b, s.o_pad // blk.mr, row, "pi")

        emit_loop(b, b.udiv(b.add(tiles, _c(blk.nr - 1)), _c(blk.nr)), column, "pj")

    emit_loop(b, TILE, position, "pk")
    b.ret_void()
    return fn


def lower(kernel, root, epilogue, fallback):
    """Kernel body of a conv2d node that `applies`: the filters transformed once per thread
    chunk, then per image the plane and the blocks of tile rows (input transform, products,
    output transform, and the fused epilogue, if any, on the block's output rows). An image or filter
    holding inf or nan goes to `fallback(image index)` (the implicit GEMM) instead."""
    g, em, b = kernel.g, kernel.em, kernel.b
    d = g.nodes[root]
    x, wt = d["args"]
    s = _Shapes(g.nodes[x]["shape"], g.nodes[wt]["shape"], d["shape"], d["attrs"]["padding"],
                d["dtype"])
    module, prefix = b.module, b.function.name
    ty, sz = register_type(s.dtype), s.dtype.itemsize
    filters = _filter_transform(module, f"{prefix}.wino_filters", s)
    finite_weights = _all_finite(module, f"{prefix}.wino_finite", s.dtype, s.o * s.c * 9)
    pad = _pad(module, f"{prefix}.wino_pad", s)
    forward = _input_transform(module, f"{prefix}.wino_input", s)
    products = _products(module, f"{prefix}.wino_products", s)
    backward = _output_transform(module, f"{prefix}.wino_output", s)

    counts = s.workspace_elements()
    padded = [-(-n * sz // 64) * 64 for n in counts]  # bytes, each part 64-byte aligned
    malloc = declare(module, "malloc", PTR, [I64])
    free = declare(module, "free", ir.VoidType(), [PTR])
    memset = declare(module, "llvm.memset.p0.i64", ir.VoidType(), [PTR, ir.IntType(8), I64, I1])
    raw = b.call(malloc, [_c(sum(padded) + 64)])
    failed = b.icmp_unsigned("==", raw, ir.Constant(PTR, None))
    with b.if_else(failed, likely=False) as (fail, work):
        with fail:
            b.store(ir.Constant(I32, ERR_NO_MEMORY), em.status_ptr)
        with work:
            parts, at = [], align_pointer(b, raw)
            for size in padded:
                parts.append(at)
                at = b.gep(at, [_c(size)], source_etype=ir.IntType(8))
            plane, u, v, m = parts
            # Zero where nothing is written but something is read: V's and M's columns past
            # a block's last tile (whole slivers and vectors are read), and the plane's
            # slack.
            slack = _c(counts[0] * sz - s.c * s.rows * s.cols * sz)
            b.call(memset, [b.gep(plane, [_c(s.c * s.rows * s.cols)], source_etype=ty),
                            ir.Constant(ir.IntType(8), 0), slack, ir.Constant(I1, 0)])
            b.call(memset, [v, ir.Constant(ir.IntType(8), 0), _c(sum(padded[2:])),
                            ir.Constant(I1, 0)])
            b.call(filters, [kernel.pointers[wt], u])
            finite_filters = b.call(finite_weights, [kernel.pointers[wt]])
            out = kernel.pointers[root]

            def image(idx):
                (ni,) = idx
                x_img = b.gep(kernel.pointers[x], [b.mul(ni, _c(s.c * s.h * s.w))],
                              source_etype=ty, inbounds=True)
                out_img = b.gep(out, [b.mul(ni, _c(s.o * s.oh * s.ow))], source_etype=ty,
                                inbounds=True)
                finite = b.and_(b.call(pad, [x_img, plane]), finite_filters)
                with b.if_else(finite, likely=True) as (fast, exact):
                    with fast:
                        def block(bi):
                            first = b.mul(bi, _c(s.block_rows))
                            rows = b.sub(_c(s.th), first)
                            rows = b.select(b.icmp_signed("<", rows, _c(s.block_rows)), rows,
                                            _c(s.block_rows))
                            b.call(forward, [plane, v, first, rows])
                            b.call(products, [u, v, m, b.mul(rows, _c(s.tw))])
                            b.call(backward, [m, out_img, first, rows])
                            if epilogue is not None:
                                # The block's output rows, still in cache: pixels
                                # [2 * first * OW, 2 * (first + rows) * OW) of each channel.
                                pixels = _c(2 * s.ow)
                                epilogue[0](b, epilogue[1], em.status_ptr, _c(0),
                                            b.mul(first, pixels), s.o, b.mul(rows, pixels))

                        if epilogue is not None:
                            b.store(ni, epilogue[2])  # the image, for the epilogue's index map
                        emit_loop(b, s.blocks, block, "wb")
                    with exact:
                        fallback(ni)

            emit_nest(b, (d["shape"][0],), image, "wi", outer=kernel.outer)
            b.call(free, [raw])
