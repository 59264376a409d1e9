"""The NVPTX target: the scheduled, memory-planned graph as PTX kernels plus a launch plan.

Each kernel of the CPU schedule becomes one or two `ptx_kernel` functions; the scalar
computation of every op comes from the CPU lowering (`_KernelBody.value` and the Emitter),
so op semantics live in one place. This module only decides the GPU index space:

- elementwise, movement and gather roots: one thread per output element in a grid-stride
  loop (flat index, or a multi-index recovered from it);
- reductions: a block per output element (or per slice of one, for large reductions
  into few outputs), a tree reduction in shared memory, and a second kernel that
  combines the per-block partials in a fixed order (no atomics: results are repeatable);
- matmul: 16x16 output tiles staged through shared memory;
- concat and argmax/argmin: a grid-stride loop over the output.

The LLVM NVPTX backend aborts the process on calls it cannot select (libm, llvm.exp...):
`check_module` rejects any such call with a SymgraphError before the backend sees it.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir

from ..errors import CompileError
from ..infer import compute_dtype, node_typing
from ..ops import get_op
from .emit import I32, I64, PTR, declare, memory_type, register_type
from ..shapes import evaluate as evaluate_size
from .kernel import GraphLowering, _Flat, _KernelBody, _typical, broadcast_index
from .loops import bind_sizes, emit_loop, size_value

TRIPLE = "nvptx64-nvidia-cuda"
DEFAULT_ARCH = "sm_80"
MIN_ARCH = 75  # the CUDA 13 assembler rejects sm_70 and older
BLOCK = 256  # threads per block for every kernel (a power of two: the tree reduction halves it)
TILE = 16  # matmul tiles are TILE x TILE, one thread per output element
MAX_GRID = 65535
# A large reduction into few outputs is split into blocks of at least this many elements each.
ELEMENTS_PER_BLOCK = BLOCK * 16
MAX_PARTS = 1024

# Declarations the NVPTX backend lowers inline; any other external call would abort it.
_SAFE_INTRINSICS = ("llvm.nvvm.", "llvm.fabs.", "llvm.sqrt.", "llvm.floor.", "llvm.ceil.",
                    "llvm.trunc.", "llvm.rint.", "llvm.copysign.", "llvm.fma.", "llvm.fmuladd.",
                    "llvm.minnum.", "llvm.maxnum.", "llvm.memcpy.", "llvm.memset.",
                    "llvm.smax.", "llvm.smin.", "llvm.umax.", "llvm.umin.", "llvm.abs.",
                    "llvm.lifetime.", "llvm.assume", "llvm.is.fpclass.", "llvm.ctlz.", "llvm.cttz.",
                    "llvm.fshl.", "llvm.fshr.", "llvm.bswap.", "llvm.ctpop.")

_init_lock = threading.Lock()
_initialized = False


def size_for(size, values) -> int:
    """A plan quantity for one call: an int, a Sym in the size symbols, or a function of
    their {name: value} (for what Sym cannot express, like a ceiling division)."""
    if callable(size):
        return int(size(values))
    return evaluate_size(size, values)


@dataclass
class Launch:
    """One kernel launch: its symbol, the work its grid covers (in units of `per_block`
    per block), its block size and the buffers it takes. `work` may depend on the size
    symbols of shape-generic code (see size_for); no block is launched for no work.

    A buffer is a graph node key, "status" (one int32 error word), "sizes" (the size
    symbols' values, int64) or ("scratch", name)."""

    kernel: str
    work: object
    per_block: int
    block: int
    params: tuple

    def grid_for(self, values=None) -> int:
        """Blocks to launch for these size values (0: skip the launch)."""
        work = size_for(self.work, values or {})
        return 0 if work <= 0 else min(MAX_GRID, -(-work // self.per_block))


@dataclass
class Copy:
    """An output no kernel writes (an input, a constant or a repeated output): copied."""

    source: int
    output: int
    nbytes: object  # int, or a Sym in the size symbols


@dataclass
class GpuProgram:
    """PTX for one specialization and the host-side plan that runs it."""

    ptx: str
    llvm_ir: str
    arch: str
    steps: list  # Launch and Copy, in order
    scratch: dict = field(default_factory=dict)  # name -> bytes (reduction partials; may be Sym)
    symbols: tuple = ()  # the size symbols kernels read from "sizes", in order


def normalize_arch(arch) -> str:
    """'sm_80' from 'sm_80', '80', 80, '8.0' or (8, 0); sm_75 is the oldest accepted."""
    if isinstance(arch, tuple):
        number = arch[0] * 10 + arch[1]
    else:
        text = str(arch).strip().lower().removeprefix("sm_").removeprefix("compute_")
        try:
            number = int(float(text) * 10) if "." in text else int(text.rstrip("a"))
        except ValueError:
            raise CompileError(f"unknown CUDA architecture {arch!r}",
                               hint="use a name like 'sm_80'") from None
    if number < MIN_ARCH:
        raise CompileError(f"CUDA architecture sm_{number} is too old: sm_{MIN_ARCH} and newer "
                           "are supported (the CUDA 13 assembler dropped sm_70)")
    return f"sm_{number}"


def initialize() -> None:
    global _initialized
    with _init_lock:
        if not _initialized:
            llvm.initialize_all_targets()
            llvm.initialize_all_asmprinters()
            # No mul+add contraction: results round like the CPU code, and the math library's
            # error-free transformations stay exact (PTX then carries explicit .rn).
            llvm.set_option("", "--nvptx-fma-level=0")
            _initialized = True


def target_machine(arch: str):
    initialize()
    return llvm.Target.from_triple(TRIPLE).create_target_machine(cpu=arch, features="", opt=3)


# --- the kernels ------------------------------------------------------------------------------

def _safe_math(builder, name, *args):
    from .mathlib import MATH_FUNCTIONS, emit_math

    if name not in MATH_FUNCTIONS:
        raise CompileError(f"{name} cannot be lowered for target='cuda': the math library has "
                           "no implementation of it and the GPU has no C math library")
    return emit_math(builder, name, *args)


# Math functions the CUDA toolkit's libdevice provides as __nv_NAME (double) and __nv_NAMEf.
LIBDEVICE_FUNCTIONS = frozenset({"exp", "exp2", "expm1", "log", "log2", "log10", "log1p",
                                 "sin", "cos", "tan", "tanh", "sinh", "cosh", "atan", "asin",
                                 "acos", "pow"})


def _libdevice_math(builder, name, *args):
    """A call to libdevice's version of `name` (linked in by lower_graph_ptx), or the math
    library's for the functions libdevice lacks."""
    if name not in LIBDEVICE_FUNCTIONS:
        return _safe_math(builder, name, *args)
    ty = args[0].type
    symbol = f"__nv_{name}" + ("f" if isinstance(ty, ir.FloatType) else "")
    return builder.call(declare(builder.module, symbol, ty, [ty] * len(args)), list(args))


def find_libdevice(path=None) -> str:
    """The libdevice bitcode: `path` when given, else the newest libdevice*.bc under
    $CUDA_HOME, $CUDA_PATH or /usr/local/cuda*; CompileError when there is none."""
    import glob
    import os

    if path not in (None, True):
        if not os.path.isfile(str(path)):
            raise CompileError(f"libdevice: no file at {path}")
        return str(path)
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    roots += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for root in filter(None, roots):
        found = sorted(glob.glob(os.path.join(root, "nvvm", "libdevice", "libdevice*.bc")))
        if found:
            return found[-1]
    raise CompileError("libdevice=True, but no CUDA toolkit libdevice*.bc was found",
                       hint="set CUDA_HOME, pass libdevice='/path/to/libdevice.10.bc', or leave "
                            "libdevice off (the built-in math library needs no toolkit)")


def _link_libdevice(mod, path: str) -> None:
    """Link libdevice into `mod` and make its functions internal, so the optimizer inlines
    the ones used and drops the rest. Its __nvvm_reflect queries stay declarations: LLVM's
    NVVMReflect pass answers them (no flushing of subnormals to zero, as numpy; the
    target's architecture)."""
    with open(path, "rb") as fh:
        lib = llvm.parse_bitcode(fh.read())
    lib.triple, lib.data_layout = mod.triple, mod.data_layout
    mod.link_in(lib)
    for fn in mod.functions:
        if not fn.is_declaration and fn.name.startswith("__nv"):
            fn.linkage = "internal"


class _Sreg:
    """Thread and block coordinates (x only) as i64 values."""

    def __init__(self, b):
        def read(reg):
            fn = b.module.declare_intrinsic(f"llvm.nvvm.read.ptx.sreg.{reg}", (),
                                            ir.FunctionType(I32, []))
            return b.zext(b.call(fn, []), I64)

        self.tid, self.ctaid = read("tid.x"), read("ctaid.x")
        self.ntid, self.nctaid = read("ntid.x"), read("nctaid.x")


def _static_size(size):
    """The size if it is a number, else None (an open size)."""
    return size if isinstance(size, int) else None


def _ceil_div(b, size, d):
    return b.udiv(b.add(size_value(b, size), ir.Constant(I64, d - 1)), ir.Constant(I64, d))


def _stride_loop(b, start, step, end, body, name):
    """``for i in range(start, end, step): body(i)`` with i64 values (end: int, Sym or i64)."""
    end = size_value(b, end)
    pre = b.block
    loop_bb = b.append_basic_block(f"{name}.loop")
    exit_bb = b.append_basic_block(f"{name}.exit")
    b.cbranch(b.icmp_signed("<", start, end), loop_bb, exit_bb)
    b.position_at_end(loop_bb)
    i = b.phi(I64, name=name)
    i.add_incoming(start, pre)
    body(i)
    nxt = b.add(i, step, name=f"{name}.next")
    i.add_incoming(nxt, b.block)
    b.cbranch(b.icmp_signed("<", nxt, end), loop_bb, exit_bb)
    b.position_at_end(exit_bb)


def _barrier(b):
    fn = b.module.declare_intrinsic("llvm.nvvm.barrier0", (), ir.FunctionType(ir.VoidType(), []))
    b.call(fn, [])


class NvptxLowering:
    """PTX kernels for the kernels of one typed, scheduled and planned graph."""

    def __init__(self, g, name: str, libdevice: bool = False):
        self.g = g
        self.name = name
        self.module = ir.Module(name=name)
        self.module.triple = TRIPLE
        self.cpu = GraphLowering(g, name, _libdevice_math if libdevice else _safe_math,
                                 module=self.module)
        self.steps = []
        self.scratch = {}
        self.symbols = tuple(g.graph.get("symbols", ()))

    def lower(self):
        g = self.g
        for k in sorted(self.cpu.kernel_members):
            members = self.cpu.kernel_members[k]
            root = members[-1]
            kind = get_op(g.nodes[root]["op"]).kind
            if kind in ("control", "conv", "pool") or g.nodes[root]["op"] == "item":
                raise CompileError(f"{g.nodes[root]['op']} is not supported on target='cuda' yet",
                                   locs=g.nodes[root].get("loc", ()),
                                   hint="compile this graph for the CPU")
            if _static_size(math.prod(g.nodes[root]["shape"])) == 0:
                continue  # (an open size that turns out 0 skips the launch at run time)
            lower = {"reduce": self._reduce, "matmul": self._matmul, "concat": self._concat,
                     "argreduce": self._argreduce}.get(kind, self._elementwise)
            try:
                lower(k, root, set(members))
            except NotImplementedError as exc:
                ops = sorted({g.nodes[n]["op"] for n in members})
                raise CompileError(f"cannot lower {', '.join(ops)} for target='cuda': {exc}",
                                   locs=g.nodes[root].get("loc", ())) from None
        written = set()
        for j, o in enumerate(g.graph["outputs"]):
            d = g.nodes[o]
            if d.get("kernel") is not None and o not in written:
                written.add(o)
                continue
            self.steps.append(Copy(o, j, math.prod(d["shape"]) * np.dtype(d["dtype"]).itemsize))
        return self.module

    # --- helpers ---------------------------------------------------------------------------
    def _sized(self, fn, b, refs):
        """With size symbols, a kernel's last parameter is their values: bind them first."""
        if self.symbols:
            bind_sizes(b, fn.args[-1], self.symbols)
            return tuple(refs) + ("sizes",)
        return tuple(refs)

    def _function(self, name, n_params):
        sized = bool(self.symbols)
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR] * (n_params + sized)),
                         name)
        fn.calling_convention = "ptx_kernel"
        return fn, ir.IRBuilder(fn.append_basic_block("entry"))

    def _kernel(self, k, root, members, suffix="", extra=()):
        """A kernel function taking (root, reads..., status, extra..., [sizes]) and its body
        emitter."""
        g = self.g
        reads = []
        for n in sorted(members, key=self.cpu.order.index):
            for a in g.nodes[n]["args"]:
                if a not in members and a not in reads:
                    reads.append(a)
        params = [root] + reads
        name = f"{self.name}_k{k}_{g.nodes[root]['op']}{suffix}"
        fn, b = self._function(name, len(params) + 1 + len(extra))
        refs = self._sized(fn, b, tuple(params) + ("status",) + tuple(extra))
        body = _KernelBody(self.cpu, b, members, {p: fn.args[i] for i, p in enumerate(params)},
                           fn.args[len(params)])
        return fn, b, body, refs

    def _shared(self, fn, dtype, size=BLOCK):
        ty = ir.ArrayType(memory_type(dtype), size)
        gv = ir.GlobalVariable(self.module, ty, name=f"{fn.name}.shared{len(self.module.globals)}",
                               addrspace=3)
        gv.linkage = "internal"
        gv.initializer = ir.Constant(ty, ir.Undefined)
        gv.type = ir.PointerType(addrspace=3)  # an opaque pointer, like every other address
        return gv

    def _finish(self, b):
        b.ret_void()

    # --- elementwise, movement, gather -----------------------------------------------------
    def _elementwise(self, k, root, members):
        fn, b, body, refs = self._kernel(k, root, members)
        d = self.g.nodes[root]
        total = math.prod(d["shape"])
        flat = body._flat_ok(root)
        s = _Sreg(b)
        em = body.em

        def element(i):
            body.memo.clear()
            idx = _Flat(i) if flat else em.delinearize(i, d["shape"])
            em.store(d["dtype"], body.value(root, idx), body.pointers[root], i)

        _stride_loop(b, b.add(b.mul(s.ctaid, s.ntid), s.tid), b.mul(s.ntid, s.nctaid), total,
                     element, "i")
        self._finish(b)
        self.steps.append(Launch(fn.name, total, BLOCK, BLOCK, refs))

    # --- reductions ------------------------------------------------------------------------
    def _block_combine(self, b, em, op, dtype, shared, tid, value):
        """Every thread's `value` combined in a fixed tree; the result is read by all threads."""
        em.store(dtype, value, shared, tid)
        _barrier(b)
        half = BLOCK // 2
        while half:
            with b.if_then(b.icmp_unsigned("<", tid, ir.Constant(I64, half))):
                mine = em.load(dtype, shared, tid)
                other = em.load(dtype, shared, b.add(tid, ir.Constant(I64, half)))
                em.store(dtype, op.lower(em, dtype, mine, other), shared, tid)
            _barrier(b)
            half //= 2
        result = em.load(dtype, shared, ir.Constant(I64, 0))
        _barrier(b)  # nobody overwrites the slots before everyone has read the result
        return result

    def _reduce(self, k, root, members):
        g = self.g
        d = g.nodes[root]
        op = get_op(d["op"])
        (src,) = d["args"]
        in_shape = g.nodes[src]["shape"]
        axes = tuple(d["attrs"]["axes"])
        kept_axes = [i for i in range(len(in_shape)) if i not in axes]
        kept_shape = [in_shape[i] for i in kept_axes]
        red_shape = [in_shape[i] for i in axes]
        outputs, count = math.prod(kept_shape), math.prod(red_shape)
        acc_dtype = np.dtype(compute_dtype(node_typing(g, root)))
        # (Open sizes choose as for typical sizes: any `parts` gives the same results.)
        typical_outputs, typical_count = _typical(outputs), _typical(count)
        parts = 1
        if typical_outputs < 2048 and typical_count > ELEMENTS_PER_BLOCK:
            parts = min(MAX_PARTS, -(-typical_count // ELEMENTS_PER_BLOCK),
                        max(1, 2048 // max(typical_outputs, 1)))
        scratch = ("scratch", f"k{k}")
        fn, b, body, refs = self._kernel(k, root, members, extra=(scratch,) if parts > 1 else ())
        partials_arg = fn.args[len(refs) - 1 - bool(self.symbols)] if parts > 1 else None
        em = body.em
        s = _Sreg(b)
        shared = self._shared(fn, acc_dtype)
        flat = not kept_shape and body._flat_ok(src, over=in_shape)
        acc_ty = register_type(acc_dtype)
        acc_slot = b.alloca(acc_ty, name="acc")
        src_dtype = g.nodes[src]["dtype"]

        def finish(acc, out_index):
            if op.finalize is not None:
                acc = op.finalize(em, acc_dtype, acc, count)
            em.store(d["dtype"], em.cast(acc_dtype, d["dtype"], acc), body.pointers[root], out_index)

        def per_block(blk):
            if parts > 1:
                o = b.udiv(blk, ir.Constant(I64, parts))
                part = b.urem(blk, ir.Constant(I64, parts))
            else:
                o, part = blk, ir.Constant(I64, 0)
            kept_idx = em.delinearize(o, kept_shape)
            b.store(em.const(acc_dtype, op.identity(acc_dtype)), acc_slot)

            def element(r):
                body.memo.clear()
                if flat:
                    idx = _Flat(r)
                else:
                    red_idx = em.delinearize(r, red_shape)
                    idx = [None] * len(in_shape)
                    for a, v in zip(kept_axes, kept_idx):
                        idx[a] = v
                    for a, v in zip(axes, red_idx):
                        idx[a] = v
                x = em.cast(src_dtype, acc_dtype, body.value(src, idx))
                b.store(op.lower(em, acc_dtype, b.load(acc_slot, typ=acc_ty), x), acc_slot)

            start = b.add(b.mul(part, ir.Constant(I64, BLOCK)), s.tid)
            _stride_loop(b, start, ir.Constant(I64, BLOCK * parts), count, element, "r")
            total = self._block_combine(b, em, op, acc_dtype, shared, s.tid,
                                        b.load(acc_slot, typ=acc_ty))
            with b.if_then(b.icmp_unsigned("==", s.tid, ir.Constant(I64, 0))):
                if parts > 1:
                    em.store(acc_dtype, total, partials_arg, blk)
                else:
                    finish(total, o)

        _stride_loop(b, s.ctaid, s.nctaid, outputs * parts, per_block, "blk")
        self._finish(b)
        self.steps.append(Launch(fn.name, outputs * parts, 1, BLOCK, refs))
        if parts == 1:
            return
        # Second pass: one block per output combines its `parts` partials in a fixed order.
        self.scratch[scratch[1]] = outputs * parts * acc_dtype.itemsize
        fn2, b = self._function(f"{fn.name}_combine", 3)
        refs2 = self._sized(fn2, b, (root, scratch, "status"))
        body = _KernelBody(self.cpu, b, set(), {root: fn2.args[0]}, fn2.args[2])
        em = body.em
        s = _Sreg(b)
        shared = self._shared(fn2, acc_dtype)
        partials = fn2.args[1]
        acc_slot = b.alloca(acc_ty, name="acc")

        def per_output(o):
            b.store(em.const(acc_dtype, op.identity(acc_dtype)), acc_slot)

            def element(t):
                x = em.load(acc_dtype, partials, b.add(b.mul(o, ir.Constant(I64, parts)), t))
                b.store(op.lower(em, acc_dtype, b.load(acc_slot, typ=acc_ty), x), acc_slot)

            _stride_loop(b, s.tid, ir.Constant(I64, BLOCK), parts, element, "t")
            total = self._block_combine(b, em, op, acc_dtype, shared, s.tid,
                                        b.load(acc_slot, typ=acc_ty))
            with b.if_then(b.icmp_unsigned("==", s.tid, ir.Constant(I64, 0))):
                finish(total, o)

        _stride_loop(b, s.ctaid, s.nctaid, outputs, per_output, "o")
        self._finish(b)
        self.steps.append(Launch(fn2.name, outputs, 1, BLOCK, refs2))

    def _argreduce(self, k, root, members):
        """argmax/argmin: one thread per output scans its axis (first best index wins)."""
        fn, b, body, refs = self._kernel(k, root, members)
        g, em = self.g, body.em
        d = g.nodes[root]
        (src,) = d["args"]
        in_shape = g.nodes[src]["shape"]
        axis = d["attrs"]["axis"]
        dtype = np.dtype(g.nodes[src]["dtype"])
        out_shape = in_shape[:axis] + in_shape[axis + 1:]
        total = math.prod(out_shape)
        s = _Sreg(b)
        best = b.alloca(register_type(dtype), name="best")
        best_at = b.alloca(I64, name="best_at")

        def per_output(o):
            outer = em.delinearize(o, out_shape)

            emit_loop(b, in_shape[axis], lambda i: body.arg_step(root, outer, i, best, best_at),
                      "arg")
            em.store(d["dtype"], b.load(best_at, typ=I64), body.pointers[root], o)

        _stride_loop(b, b.add(b.mul(s.ctaid, s.ntid), s.tid), b.mul(s.ntid, s.nctaid), total,
                     per_output, "o")
        self._finish(b)
        self.steps.append(Launch(fn.name, total, BLOCK, BLOCK, refs))

    # --- matmul ----------------------------------------------------------------------------
    def _matmul(self, k, root, members):
        g = self.g
        d = g.nodes[root]
        a, bb = d["args"]
        if a in members or bb in members:
            raise NotImplementedError("matmul operands are materialized by the scheduler")
        fn, b, body, refs = self._kernel(k, root, members)
        em = body.em
        a_shape, b_shape = g.nodes[a]["shape"], g.nodes[bb]["shape"]
        a2 = (1,) + a_shape if len(a_shape) == 1 else a_shape
        b2 = b_shape + (1,) if len(b_shape) == 1 else b_shape
        dtype = np.dtype(d["dtype"])
        m, kk, n = a2[-2], a2[-1], b2[-1]
        batch = d["shape"][: len(d["shape"]) - (len(a_shape) > 1) - (len(b_shape) > 1)]
        out2 = batch + (m, n)
        tiles_n = _ceil_div(b, n, TILE)
        tile_grid = b.mul(_ceil_div(b, m, TILE), tiles_n)  # tiles per matrix of the batch
        k_tiles = _ceil_div(b, kk, TILE)
        m_v, n_v, kk_v = size_value(b, m), size_value(b, n), size_value(b, kk)
        s = _Sreg(b)
        ty_, tx_ = b.udiv(s.tid, ir.Constant(I64, TILE)), b.urem(s.tid, ir.Constant(I64, TILE))
        a_tile, b_tile = self._shared(fn, dtype, TILE * TILE), self._shared(fn, dtype, TILE * TILE)
        acc_ty = register_type(dtype)
        acc_slot = b.alloca(acc_ty, name="acc")
        zero = em.const(dtype, 0)
        c = lambda v: ir.Constant(I64, v)  # noqa: E731

        def load(node, shape2, index, ok):
            safe = [b.select(ok, i, c(0)) for i in index]
            full = broadcast_index(safe, out2[:-2] + shape2[-2:], shape2, em)
            x = em.load(g.nodes[node]["dtype"], body.pointers[node], em.linearize(full, shape2))
            return b.select(ok, em.cast(g.nodes[node]["dtype"], dtype, x), zero)

        def per_tile(t):
            bi = b.udiv(t, tile_grid)
            rest = b.urem(t, tile_grid)
            row = b.add(b.mul(b.udiv(rest, tiles_n), c(TILE)), ty_)
            col = b.add(b.mul(b.urem(rest, tiles_n), c(TILE)), tx_)
            bidx = em.delinearize(bi, batch)
            row_ok = b.icmp_unsigned("<", row, m_v)
            col_ok = b.icmp_unsigned("<", col, n_v)
            b.store(zero, acc_slot)
            slot = b.add(b.mul(ty_, c(TILE)), tx_)

            def over_tiles(kt):
                ka = b.add(b.mul(kt, c(TILE)), tx_)
                kb = b.add(b.mul(kt, c(TILE)), ty_)
                em.store(dtype, load(a, a2, bidx + [row, ka], b.and_(row_ok, b.icmp_unsigned("<", ka, kk_v))),
                         a_tile, slot)
                em.store(dtype, load(bb, b2, bidx + [kb, col], b.and_(col_ok, b.icmp_unsigned("<", kb, kk_v))),
                         b_tile, slot)
                _barrier(b)

                def inner(j):
                    av = em.load(dtype, a_tile, b.add(b.mul(ty_, c(TILE)), j))
                    bv = em.load(dtype, b_tile, b.add(b.mul(j, c(TILE)), tx_))
                    acc = b.load(acc_slot, typ=acc_ty)
                    if dtype.kind == "b":
                        total = em.or_(acc, em.and_(av, bv))
                    else:
                        total = em.add(dtype, acc, em.mul(dtype, av, bv))
                    b.store(total, acc_slot)

                # Tiles past k hold zeros, which leave the sum unchanged; only the last tile
                # is partial, so the loop over it stops at k to keep the CPU's rounding.
                last_tile = b.sub(k_tiles, c(1))
                last = b.sub(kk_v, b.mul(last_tile, c(TILE)))
                width = b.select(b.icmp_unsigned("==", kt, last_tile), last, c(TILE))
                emit_loop(b, width, inner, "j")
                _barrier(b)

            emit_loop(b, k_tiles, over_tiles, "kt")
            with b.if_then(b.and_(row_ok, col_ok)):
                em.store(dtype, b.load(acc_slot, typ=acc_ty), body.pointers[root],
                         em.linearize(bidx + [row, col], out2))

        _stride_loop(b, s.ctaid, s.nctaid, b.mul(size_value(b, math.prod(batch)), tile_grid),
                     per_tile, "tile")
        self._finish(b)

        def tiles(values):
            at = lambda size: size_for(size, values)  # noqa: E731
            return (math.prod(at(x) for x in batch) * -(-at(m) // TILE) * -(-at(n) // TILE))

        work = tiles({}) if not self.symbols else tiles
        self.steps.append(Launch(fn.name, work, 1, TILE * TILE, refs))

    # --- concat ----------------------------------------------------------------------------
    def _concat(self, k, root, members):
        fn, b, body, refs = self._kernel(k, root, members)
        g, em = self.g, body.em
        d = g.nodes[root]
        axis = d["attrs"]["axis"]
        s = _Sreg(b)
        start, sizes = 0, []
        for a in d["args"]:
            shape = g.nodes[a]["shape"]
            size = math.prod(shape)
            sizes.append(size)

            def element(i, a=a, shape=shape, start=start):
                body.memo.clear()
                idx = em.delinearize(i, shape)
                x = em.cast(g.nodes[a]["dtype"], d["dtype"], body.value(a, idx))
                out_idx = list(idx)
                out_idx[axis] = em.index_affine(idx[axis], 1, start)
                em.store(d["dtype"], x, body.pointers[root], em.linearize(out_idx, d["shape"]))

            if _static_size(size) != 0:
                _stride_loop(b, b.add(b.mul(s.ctaid, s.ntid), s.tid), b.mul(s.ntid, s.nctaid),
                             size, element, f"c{len(sizes)}_")
            start += shape[axis]
        self._finish(b)
        # The grid covers the largest part (the whole output, with open sizes).
        work = max(sizes) if all(isinstance(x, int) for x in sizes) else math.prod(d["shape"])
        self.steps.append(Launch(fn.name, work, BLOCK, BLOCK, refs))


# --- checking and emission -------------------------------------------------------------------

def check_module(module: ir.Module, g=None, allowed=()) -> None:
    """Raise CompileError for any call the NVPTX backend cannot lower (it would abort);
    `allowed` prefixes name functions that will be linked in (libdevice's)."""
    for fn in module.functions:
        if not fn.is_declaration or fn.name.startswith(_SAFE_INTRINSICS + tuple(allowed)):
            continue
        users = sorted({get_op(g.nodes[n]["op"]).name for n in g.nodes} & _op_names_for(fn.name)) \
            if g is not None else []
        what = f" (needed by {', '.join(users)})" if users else ""
        raise CompileError(f"target='cuda' cannot call {fn.name!r}{what}: the GPU has no C math "
                           "library and LLVM's NVPTX backend cannot lower that call",
                           hint="the op needs an implementation in symgraph/codegen/mathlib.py")


def _op_names_for(symbol: str) -> set:
    base = symbol.removeprefix("llvm.").split(".")[0]
    return {base, base.removesuffix("f")}


def lower_graph_ptx(g, name: str, arch: str = DEFAULT_ARCH, libdevice: str | None = None
                    ) -> GpuProgram:
    """PTX and launch plan for a typed, scheduled and planned graph; with `libdevice` (the
    bitcode's path) math functions come from the CUDA toolkit's libdevice."""
    import sys

    from .cpu import optimize

    arch = normalize_arch(arch)
    needed = 1000 + 8 * g.number_of_nodes()
    old = sys.getrecursionlimit()
    if needed > old:
        sys.setrecursionlimit(needed)
    try:
        lowering = NvptxLowering(g, name, libdevice=bool(libdevice))
        module = lowering.lower()
    finally:
        if needed > old:
            sys.setrecursionlimit(old)
    check_module(module, g, allowed=("__nv_",) if libdevice else ())
    tm = target_machine(arch)
    module.data_layout = str(tm.target_data)
    text = str(module)
    try:
        mod = llvm.parse_assembly(text)
        mod.verify()
    except RuntimeError as exc:
        raise CompileError(f"LLVM rejected the generated NVPTX module: {exc}") from None
    if libdevice:
        _link_libdevice(mod, libdevice)
    optimize(mod, tm, text, speed_level=3)
    _check_optimized(mod)
    ptx = tm.emit_assembly(mod)
    return GpuProgram(ptx, text, arch, lowering.steps, lowering.scratch, lowering.symbols)


def _check_optimized(mod) -> None:
    """The optimizer must not have introduced calls the backend cannot lower either."""
    for fn in mod.functions:
        if fn.is_declaration and not fn.name.startswith(_SAFE_INTRINSICS):
            raise CompileError(f"LLVM's optimizer introduced a call to {fn.name!r}, which the "
                               "NVPTX backend cannot lower")


__all__ = ["GpuProgram", "Launch", "Copy", "lower_graph_ptx", "check_module", "normalize_arch",
           "DEFAULT_ARCH", "TRIPLE"]
