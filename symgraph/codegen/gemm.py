"""A generated, self-contained GEMM: C = A @ B for float32/float64, with no BLAS call.

The classic blocked structure: B is packed in KC x NC panels, A in MC x KC blocks, each cut
into slivers NR columns (or MR rows) wide and zero-padded at the edges, and a register-tiled
microkernel keeps an MR x NR tile of C in SIMD registers while it walks k. The SIMD width
comes from the host's features (AVX-512, AVX2 or 128-bit).

Summation order (fixed, documented, independent of blocking): every C element starts at 0
and adds its k products one at a time in ascending k (`acc = acc + a*b`), exactly as the
plain loop nest does, so both paths give bit-identical results. K blocks run in order and
carry the partial sum through C. Products and sums are separate fmul/fadd, as the project's
floating-point policy asks; `GEMM_USE_FMA = True` fuses them (faster, rounds differently).

Operands are read through `load_a(em, base, i, k)` / `load_b(em, base, k, j)` callbacks that
return a value already in the compute dtype: a dense matrix, or a convolution's implicit
im2col matrix, are just two ways to fill the packed panels.
"""
from __future__ import annotations

from dataclasses import dataclass

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir

from .emit import I1, I32, I64, PTR, Emitter, memory_type, register_type
from .loops import emit_loop, emit_nest, size_value

GEMM_USE_FMA = False
GEMM_HOISTED_A_BYTES = 1 << 20  # packed A up to this size is packed once for all of B
GEMM_MIN_WORK = 16 * 16 * 16  # m*n*k below which the loop nest is as fast; 0 forces the GEMM
GEMM_MIN_ROWS = 2  # products with fewer rows of A stay on the loop nest
GEMM_VECTOR_BYTES = None  # force a SIMD width in bytes (64, 32 or 16) instead of the host's
ERR_NO_MEMORY = 2  # the status code kernel.py uses too


def simd_bytes() -> int:
    """Widest vector the host runs natively: 64 (AVX-512), 32 (AVX2/AVX) or 16."""
    try:
        features = llvm.get_host_cpu_features()
    except RuntimeError:
        return 16
    if features.get("avx512f"):
        return 64
    if features.get("avx2") or features.get("avx"):
        return 32
    return 16


@dataclass(frozen=True)
class Blocking:
    w: int  # lanes per vector
    mr: int  # microkernel rows (one broadcast each)
    nv: int  # microkernel vectors per row: NR = nv * w
    kc: int
    mc: int
    nc: int

    @property
    def nr(self):
        return self.nv * self.w


def blocking(dtype, vector_bytes=None) -> Blocking:
    """Tile sizes: MR x NR accumulators fill most of the register file (32 zmm or 16 ymm/xmm);
    a KC x NR sliver of B stays in L1, an MC x KC block of A in L2, and the KC x NC panel of
    packed B (512 KiB in float32) in L2 too. A larger panel spills to L3: with few rows of A
    (a convolution's output channels) each panel is used once, and two threads streaming
    theirs from the shared L3 halved conv2d's two-thread speed."""
    vb = vector_bytes or GEMM_VECTOR_BYTES or simd_bytes()
    w = vb // np.dtype(dtype).itemsize
    # 8 rows on AVX-512 (16 accumulators): layer widths and channel counts are multiples of
    # 8, so no tile is padding; 14 rows measured the same on square GEMMs but padded
    # 64-channel convolutions and 256-row layers by up to 9%.
    mr = {64: 8, 32: 6, 16: 4}[vb]
    kc = 256 if np.dtype(dtype).itemsize == 4 else 192
    return Blocking(w=w, mr=mr, nv=2, kc=kc, mc=mr * (10 if vb == 64 else 16), nc=512)


def _const(v):
    return ir.Constant(I64, v)


def _ceil_div(b, x, d):
    return b.udiv(b.add(x, _const(d - 1)), _const(d))


def _min(b, x, y):
    return b.select(b.icmp_signed("<", x, y), x, y)


def align_pointer(b, raw, align=64):
    """`raw` rounded up to a multiple of `align` bytes."""
    addr = b.add(b.ptrtoint(raw, I64), _const(align - 1))
    return b.inttoptr(b.and_(addr, _const(-align)), PTR)


def gemm_function(module, name, dtype, load_a, load_b, vector_bytes=None, epilogue=None):
    """The internal function ``void NAME(ptr A, ptr B, ptr C, i64 M, i64 N, i64 K, ptr status)``
    computing C[M, N] (row-major, contiguous) = A @ B through the loaders; K must be > 0.
    Reused when the module already has it. A B loader may also pack a whole NR-column sliver
    itself: then it has ``setup(em, nr)`` (run in the entry block, for its scratch) and
    ``pack_sliver(em, base, dst, k0, kc, j0, n, nr)``.

    With ``epilogue(builder, env, status, i0, j0, rows, cols)`` the function takes one more
    argument, ``ptr env``, and calls the epilogue on each finished tile of C (rows x cols at
    row i0, column j0, after its last K block) while the tile is still in L1; rows and cols
    are Python ints for full tiles."""
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    dtype = np.dtype(dtype)
    blk = blocking(dtype, vector_bytes)
    ty = register_type(dtype)
    sz = dtype.itemsize
    params = [PTR, PTR, PTR, I64, I64, I64, PTR] + ([PTR] if epilogue else [])
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), params), name)
    fn.linkage = "internal"
    a_ptr, b_ptr, c_ptr, m, n, k, status = fn.args[:7]
    env = fn.args[7] if epilogue else None
    for arg in (a_ptr, b_ptr, c_ptr):
        arg.add_attribute("noalias")
    ukernel = microkernel(module, f"{name}.ukernel", dtype, blk)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    em = Emitter(b)
    mr, nr, kc_max, mc_max, nc_max = blk.mr, blk.nr, blk.kc, blk.mc, blk.nc

    malloc = module.globals.get("malloc") or ir.Function(
        module, ir.FunctionType(PTR, [I64]), "malloc")
    free = module.globals.get("free") or ir.Function(
        module, ir.FunctionType(ir.VoidType(), [PTR]), "free")
    nc_alloc = _min(b, b.mul(_ceil_div(b, n, nr), _const(nr)), _const(nc_max))
    b_bytes = b.mul(nc_alloc, _const(kc_max * sz))
    # K blocks of equal length (576 = 3 x 192, not 256 + 256 + 64): a short last block
    # would pay a whole pass of C tile loads and stores for a few k steps.
    k_blocks = _ceil_div(b, k, kc_max)
    kc_step = b.udiv(b.add(k, b.sub(k_blocks, _const(1))), k_blocks)
    # With a single block of rows (a convolution's output channels, a small layer), A is
    # packed once for every K block instead of again for each NC-column panel of B.
    a_block = b.mul(kc_step, _const(mc_max))  # elements of one K block's packed A
    a_all = b.mul(a_block, k_blocks)
    hoist_a = b.and_(b.icmp_signed("<=", m, _const(mc_max)),
                     b.icmp_signed("<=", a_all, _const(GEMM_HOISTED_A_BYTES // sz)))
    a_bytes = b.mul(b.select(hoist_a, a_all, _const(mc_max * kc_max)), _const(sz))
    raw = b.call(malloc, [b.add(b.add(b_bytes, a_bytes), _const(128))])
    fail = b.icmp_unsigned("==", raw, ir.Constant(PTR, None))
    with b.if_then(fail, likely=False):
        b.store(ir.Constant(I32, ERR_NO_MEMORY), status)
    body_bb = b.append_basic_block("gemm.body")
    exit_bb = b.append_basic_block("gemm.exit")
    b.cbranch(fail, exit_bb, body_bb)
    b.position_at_end(body_bb)
    pack_b = align_pointer(b, raw)
    pack_a = align_pointer(b, b.gep(pack_b, [b_bytes], source_etype=ir.IntType(8)))
    tile = b.alloca(ty, size=_const(mr * nr), name="edge_tile")
    if hasattr(load_b, "setup"):
        load_b.setup(em, nr)
    zero = ir.Constant(ty, 0.0)

    def at(base, offset):
        return b.gep(base, [offset], source_etype=ty, inbounds=True)

    def pack(dst, rows, width, limit, start, other, load):
        """dst[o*width + r] = load(start + r, other0 + o) for o < rows, zero past `limit`."""
        full = b.icmp_signed("<=", b.add(start, _const(width)), limit)
        last = b.sub(limit, _const(1))
        with b.if_else(full) as (then, otherwise):
            with then:
                emit_loop(b, rows, lambda o: emit_loop(b, width, lambda r: b.store(
                    load(b.add(start, r), b.add(other, o)),
                    at(dst, b.add(b.mul(o, _const(width)), r))), "pr"), "po")
            with otherwise:
                def edge(o, r):
                    idx = b.add(start, r)
                    ok = b.icmp_signed("<", idx, limit)
                    v = load(_min(b, idx, last), b.add(other, o))
                    b.store(b.select(ok, v, zero), at(dst, b.add(b.mul(o, _const(width)), r)))

                emit_loop(b, rows, lambda o: emit_loop(b, width, lambda r: edge(o, r), "er"), "eo")

    def pack_a_block(pc, kc, block, ic, mc):
        """Rows [ic, ic + mc) of A's K block at pc, packed in MR-row slivers at `block`."""
        def pack_a_sliver(i_s):
            i0 = b.add(ic, b.mul(i_s, _const(mr)))
            dst = at(block, b.mul(i_s, b.mul(kc, _const(mr))))
            pack(dst, kc, mr, m, i0, pc, lambda i, kk: load_a(em, a_ptr, i, kk))

        emit_loop(b, _ceil_div(b, mc, mr), pack_a_sliver, "is")

    def k_block(pt):
        """(start, length) of K block pt."""
        pc = b.mul(pt, kc_step)
        return pc, _min(b, b.sub(k, pc), kc_step)

    with b.if_then(hoist_a):
        emit_loop(b, k_blocks, lambda pt: pack_a_block(
            *k_block(pt), at(pack_a, b.mul(pt, a_block)), _const(0), m), "pa")

    def jc_loop(jt):
        jc = b.mul(jt, _const(nc_max))
        nc = _min(b, b.sub(n, jc), _const(nc_max))

        def pc_loop(pt):
            pc, kc = k_block(pt)
            first = b.icmp_signed("==", pt, _const(0))

            def pack_b_sliver(js):
                j0 = b.add(jc, b.mul(js, _const(nr)))
                dst = at(pack_b, b.mul(js, b.mul(kc, _const(nr))))
                if hasattr(load_b, "pack_sliver"):
                    load_b.pack_sliver(em, b_ptr, dst, pc, kc, j0, n, nr)
                else:
                    pack(dst, kc, nr, n, j0, pc, lambda j, kk: load_b(em, b_ptr, kk, j))

            emit_loop(b, _ceil_div(b, nc, nr), pack_b_sliver, "js")

            def ic_loop(it):
                ic = b.mul(it, _const(mc_max))
                mc = _min(b, b.sub(m, ic), _const(mc_max))
                with b.if_then(b.not_(hoist_a)):
                    pack_a_block(pc, kc, pack_a, ic, mc)
                a_here = at(pack_a, b.select(hoist_a, b.mul(pt, a_block), _const(0)))

                def jr_loop(js):
                    j0 = b.add(jc, b.mul(js, _const(nr)))
                    bp = at(pack_b, b.mul(js, b.mul(kc, _const(nr))))

                    def ir_loop(i_s):
                        i0 = b.add(ic, b.mul(i_s, _const(mr)))
                        ap = at(a_here, b.mul(i_s, b.mul(kc, _const(mr))))
                        rows = _min(b, b.sub(m, i0), _const(mr))
                        cols = _min(b, b.sub(n, j0), _const(nr))
                        full = b.and_(b.icmp_signed("==", rows, _const(mr)),
                                      b.icmp_signed("==", cols, _const(nr)))
                        cp = at(c_ptr, b.add(b.mul(i0, n), j0))
                        with b.if_else(full, likely=True) as (then, otherwise):
                            with then:
                                b.call(ukernel, [kc, ap, bp, cp, n, first])
                            with otherwise:
                                def copy(to_tile):
                                    def cell(r, c):
                                        t = at(tile, b.add(b.mul(r, _const(nr)), c))
                                        g = at(cp, b.add(b.mul(r, n), c))
                                        src, dst = (g, t) if to_tile else (t, g)
                                        b.store(b.load(src, typ=ty), dst)

                                    emit_loop(b, rows, lambda r: emit_loop(
                                        b, cols, lambda c: cell(r, c), "tc"), "tr")

                                with b.if_then(b.not_(first)):
                                    copy(True)
                                b.call(ukernel, [kc, ap, bp, tile, _const(nr), first])
                                copy(False)
                        if epilogue is not None:
                            with b.if_then(b.icmp_signed(">=", b.add(pc, kc), k)):
                                # A full tile gets constant bounds: straight-line SIMD code.
                                with b.if_else(full, likely=True) as (whole, edge):
                                    with whole:
                                        epilogue(b, env, status, i0, j0, mr, nr)
                                    with edge:
                                        epilogue(b, env, status, i0, j0, rows, cols)

                    emit_loop(b, _ceil_div(b, mc, mr), ir_loop, "ir")

                emit_loop(b, _ceil_div(b, nc, nr), jr_loop, "jr")

            emit_loop(b, _ceil_div(b, m, mc_max), ic_loop, "ic")

        emit_loop(b, k_blocks, pc_loop, "pc")

    emit_loop(b, _ceil_div(b, n, nc_max), jc_loop, "jc")
    b.call(free, [raw])
    b.branch(exit_bb)
    b.position_at_end(exit_bb)
    b.ret_void()
    return fn


def microkernel(module, name, dtype, blk, b_row_stride=False):
    """``void NAME(i64 kc, ptr Ap, ptr Bp, ptr C, i64 ldc, i1 first)``: the MR x NR tile of C
    (row stride ldc) gets sum_k Ap[k*MR + r] * Bp[k*NR + c], in ascending k; it starts from 0
    when `first`, else from C's current values. With `b_row_stride` it takes one more
    argument, ``i64 ldb``, and reads B's row k at Bp[k*ldb] instead: B used in place, for a
    caller that writes B rows contiguously itself (winograd.py)."""
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    ty = register_type(dtype)
    vty = ir.VectorType(ty, blk.w)
    params = [I64, PTR, PTR, PTR, I64, I1] + ([I64] if b_row_stride else [])
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), params), name)
    fn.linkage = "internal"
    kc, ap, bp, cp, ldc, first = fn.args[:6]
    b_step = fn.args[6] if b_row_stride else _const(blk.nr)
    for arg in (ap, bp, cp):
        arg.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    sz = np.dtype(dtype).itemsize
    mr, nv, w, nr = blk.mr, blk.nv, blk.w, blk.nr
    fma = None
    if GEMM_USE_FMA:
        fma_name = f"llvm.fma.v{blk.w}f{8 * np.dtype(dtype).itemsize}"
        fma = module.globals.get(fma_name) or ir.Function(
            module, ir.FunctionType(vty, [vty, vty, vty]), fma_name)

    def vptr(base, offset):
        return b.gep(base, [offset], source_etype=ty, inbounds=True)

    def c_at(r, v):
        return vptr(cp, b.add(b.mul(_const(r), ldc), _const(v * w)))

    zero = ir.Constant(vty, [0.0] * w)
    acc0 = [[b.select(first, zero, b.load(c_at(r, v), typ=vty, align=sz)) for v in range(nv)]
            for r in range(mr)]
    pre = b.block
    loop = b.append_basic_block("k.loop")
    done = b.append_basic_block("k.done")
    b.branch(loop)
    b.position_at_end(loop)
    kk = b.phi(I64, name="k")
    kk.add_incoming(_const(0), pre)
    phis = [[b.phi(vty, name=f"acc{r}_{v}") for v in range(nv)] for r in range(mr)]
    for r in range(mr):
        for v in range(nv):
            phis[r][v].add_incoming(acc0[r][v], pre)
    bvals = [b.load(vptr(bp, b.add(b.mul(kk, b_step), _const(v * w))), typ=vty, align=sz)
             for v in range(nv)]
    undef = ir.Constant(vty, ir.Undefined)
    splat_mask = ir.Constant(ir.VectorType(I32, w), [0] * w)
    new = []
    for r in range(mr):
        a = b.load(vptr(ap, b.add(b.mul(kk, _const(mr)), _const(r))), typ=ty)
        av = b.shuffle_vector(b.insert_element(undef, a, ir.Constant(I32, 0)), undef, splat_mask)
        row = []
        for v in range(nv):
            if fma is not None:
                row.append(b.call(fma, [av, bvals[v], phis[r][v]]))
            else:
                row.append(b.fadd(phis[r][v], b.fmul(av, bvals[v])))
        new.append(row)
    nxt = b.add(kk, _const(1), flags=["nsw"])
    kk.add_incoming(nxt, b.block)
    for r in range(mr):
        for v in range(nv):
            phis[r][v].add_incoming(new[r][v], b.block)
    b.cbranch(b.icmp_signed("<", nxt, kc), loop, done)
    b.position_at_end(done)
    for r in range(mr):
        for v in range(nv):
            b.store(new[r][v], c_at(r, v), align=sz)
    b.ret_void()
    return fn


def dense_loader(src_dtype, dtype, row_stride, col_stride=1):
    """Loader for a strided 2-d operand (element offset row*row_stride + col*col_stride),
    converting `src_dtype` to the compute `dtype`."""
    src_dtype, dtype = np.dtype(src_dtype), np.dtype(dtype)

    def load(em, base, row, col):
        b = em.b
        off = b.add(b.mul(row, _const(row_stride)), b.mul(col, _const(col_stride)))
        return em.cast(src_dtype, dtype, em.load(src_dtype, base, off))

    return load


def uses_gemm(dtype, m, n, k) -> bool:
    """Whether a float matmul of this size goes through the generated GEMM. A single row
    (m == 1) stays on the loop nest, whose inner loop over n vectorizes: packing B would
    cost as much as the product itself."""
    if np.dtype(dtype).kind != "f" or min(m, n, k) == 0:
        return False
    return m * n * k >= GEMM_MIN_WORK and (m >= GEMM_MIN_ROWS or GEMM_MIN_WORK == 0)


def folded_rows(batch, a2, b2):
    """The GEMM's row count when A's batch axes fold into M (B has none), else None."""
    a_batch, b_batch = tuple(a2[:-2]), tuple(b2[:-2])
    if a_batch == tuple(batch) and all(s == 1 for s in b_batch):
        return a2[-2] * int(np.prod(batch, dtype=np.int64))
    return None


def emit_matmul(em, a_ptr, b_ptr, c_ptr, batch, a2, b2, a_dtype, b_dtype, dtype, rows=None,
                epilogue=None):
    """Batched matmul of contiguous operands (1-d ones already promoted to 2-d shapes a2/b2)
    into contiguous C of shape batch + (m, n), one GEMM call per batch element. When only A
    has batch axes, they fold into M: one GEMM of (batch*m) x n. With `rows=(lo, hi)` (only
    then) this call computes just those rows of the folded product: one thread's share, in
    the same summation order as the whole."""
    b = em.b
    m, k, n = a2[-2], a2[-1], b2[-1]
    a_batch, b_batch = tuple(a2[:-2]), tuple(b2[:-2])
    folded = folded_rows(batch, a2, b2)
    if folded is not None:
        m, batch, a_batch, b_batch = folded, (), (), ()
    names = ".".join(np.dtype(t).name for t in (dtype, a_dtype, b_dtype))
    name = f"gemm.{names}.k{k}.n{n}"  # the loaders bake in the row strides k and n
    if epilogue is not None:  # (callable, env pointer): a GEMM of this kernel's own
        name = f"{b.function.name}.gemm"
    fn = gemm_function(b.module, name, dtype, dense_loader(a_dtype, dtype, k),
                       dense_loader(b_dtype, dtype, n),
                       epilogue=epilogue[0] if epilogue is not None else None)
    env_args = [epilogue[1]] if epilogue is not None else []

    def one(bidx):
        def offset(ptr, shape, mat, elem_dtype):
            lead = len(batch) - len(shape)  # numpy broadcasting: size-1 axes read index 0
            index = [_const(0) if s == 1 else bidx[lead + i] for i, s in enumerate(shape)]
            flat = em.linearize(index, shape)
            return b.gep(ptr, [b.mul(flat, size_value(b, mat))],
                         source_etype=memory_type(elem_dtype), inbounds=True)

        a_at = offset(a_ptr, a_batch, m * k, a_dtype)
        c_at = offset(c_ptr, tuple(batch), m * n, dtype)
        count = size_value(b, m)
        if rows is not None:
            lo, hi = rows
            a_at = b.gep(a_at, [b.mul(lo, _const(k))], source_etype=memory_type(a_dtype))
            c_at = b.gep(c_at, [b.mul(lo, _const(n))], source_etype=memory_type(dtype))
            count = b.sub(hi, lo)
        b.call(fn, [a_at, offset(b_ptr, b_batch, k * n, b_dtype), c_at, count, _const(n),
                    _const(k), em.status_ptr] + env_args)

    if rows is not None and batch:
        raise ValueError("a row range needs the batch folded into M")
    emit_nest(b, tuple(batch), one, "gb")


__all__ = ["GEMM_USE_FMA", "GEMM_MIN_WORK", "blocking", "dense_loader", "emit_matmul", "folded_rows",
           "gemm_function", "simd_bytes", "uses_gemm"]
