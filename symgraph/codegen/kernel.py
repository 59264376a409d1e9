"""Lower a scheduled, memory-planned graph to one LLVM module.

The module holds one internal function per kernel and an entry point::

    i32 NAME(ptr in_0, ..., ptr out_0, ..., ptr workspace)

returning 0 or an error status. Each kernel is a loop nest over its domain that computes
its inlined ops in registers (`value` walks them, memoized per loop point) and stores the
root. Kernel pointer parameters are `noalias`: the memory plan never lets a kernel write
a buffer that anything it reads lives in.
"""
from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from ..graph import topo_order
from ..infer import compute_dtype, node_typing
from ..ops import get_op
from ..ops.control import ERR_MAX_ITERS, control_layout
from ..ops.indexing import ERR_INDEX_OUT_OF_RANGE
from .emit import I8, I32, I64, PTR, Emitter, declare, memory_type, register_type
from .gemm import GEMM_MIN_ROWS, GEMM_MIN_WORK, align_pointer, emit_matmul, folded_rows, uses_gemm
from ..shapes import NotGeneric, Sym
from .loops import bind_sizes, emit_loop, emit_nest, size_value
from .nn import lower_conv, lower_pool, uses_winograd
from .mathlib import MATH_FUNCTIONS
from .threadpool import declare_pool_run

ERR_NO_MEMORY = 2
ERR_NONFINITE_BASE = 16  # status 16 + k: check site k went non-finite (check_finite)
NO_CHECK_FAILED = (1 << 62)
# Elements below which a loop of float32 adds and multiplies stays on one thread: waking a
# worker and moving its share of the data between cores cost 10-40 us on a 2-core VM, and
# on it such loops gained from a second thread only from about a million elements, 4 MiB
# an array (they are memory-bound). Wider elements move more bytes each: the threshold
# scales by 4 / the widest itemsize (float64 loops split from 512 Ki elements, where two
# threads measured 1.3x). Each math function in the loop (exp, tanh, ...) divides it by
# 1 + MATH_WEIGHT more.
PARALLEL_MIN_ELEMENTS = 1 << 20
MATH_WEIGHT = 2
# Chunks per thread of a parallel loop, claimed in turn: with several each, a core that
# other work slows down runs fewer of them instead of holding every other core up.
CHUNKS_PER_THREAD = 4
MATMUL_CHUNK_ROWS = 16  # matmul chunks start on whole register tiles of rows
# Each matmul chunk packs its own copy of B: more chunks measured slower (B packed again).
MATMUL_CHUNKS_PER_THREAD = 1
_TRIG = frozenset({"sin", "cos", "tan"})
# Multiply-adds below which a matmul stays on one thread: starting a thread (tens of us in a
# VM) and each thread packing B again cost more than half the product saves.
PARALLEL_MIN_FLOPS = 1 << 24
INLINE_MAX_KERNELS = 8  # more kernels than this stay separate functions
# Past this many math calls in a module, each math function is one out-of-line copy with
# SIMD variants rather than inlined at every use: LLVM's time follows code size, and inlined
# math is most of a transcendental-heavy graph's code. Small graphs keep inlining, which
# saves the call and the register spills around it.
OUTLINE_MATH_CALLS = 32
# Flat loops writing one graph result at least this large store it with non-temporal
# stores, which skip the read of each output line before it is written: a quarter less
# memory traffic for an out-of-cache `a*b + c` into an existing array (-20% time). A fresh
# output gains nothing (its pages are zeroed into the cache as they are first touched) and
# measured ~2% slower.
STREAM_MIN_BYTES = 1 << 24
FIXED_WIDTH_MIN_NODES = 2_000  # graphs this large fix their loops' SIMD width (see vector_width)
PARTIAL_SUM_BYTES = 256  # reduction lanes: four 512-bit registers of independent partial sums


class _Flat:
    """The single index of a kernel that loops over all its elements as one flat range."""

    __slots__ = ("i",)

    def __init__(self, i):
        self.i = i


def broadcast_index(idx, out_shape, in_shape, em):
    """The operand's index for output index `idx` under numpy broadcasting."""
    if isinstance(idx, _Flat):
        return _Flat(em.index_const(0)) if math.prod(in_shape) == 1 else idx
    offset = len(out_shape) - len(in_shape)
    return [em.index_const(0) if d == 1 else idx[offset + k] for k, d in enumerate(in_shape)]


@dataclass(frozen=True)
class MatmulGeometry:
    """A matmul's operands with 1-d ones promoted to 2-d (a2, b2), its m, k, n and batch."""

    a: int
    b: int
    a2: tuple
    b2: tuple
    m: object
    k: object
    n: object
    batch: tuple

    @classmethod
    def of(cls, g, node):
        d = g.nodes[node]
        a, bb = d["args"]
        a_shape, b_shape = g.nodes[a]["shape"], g.nodes[bb]["shape"]
        a2 = (1,) + a_shape if len(a_shape) == 1 else a_shape
        b2 = b_shape + (1,) if len(b_shape) == 1 else b_shape
        batch = d["shape"][: len(d["shape"]) - (len(a_shape) > 1) - (len(b_shape) > 1)]
        return cls(a, bb, a2, b2, a2[-2], a2[-1], b2[-1], tuple(batch))


class GraphLowering:
    """Builds the LLVM module for one typed, scheduled and planned graph."""

    def __init__(self, g, name: str, math_impl=None, triple: str = "", module=None,
                 num_threads: int = 1, check_finite: bool = False, check_sites=None,
                 outline_math: bool = False, vector_bytes: int | None = None,
                 streaming_stores: bool = False):
        self.g = g
        self.vector_bytes = vector_bytes
        self.streaming_stores = streaming_stores
        # Outlined math (see OUTLINE_MATH_CALLS) handles far trig arguments inside sin/cos/tan
        # lane by lane; inlined math needs the exact copy of the kernel instead.
        self.outline_math = outline_math and math_impl is not None
        self.plain_math_impl = math_impl
        if self.outline_math:
            math_impl = functools.partial(math_impl, outlined=True)
        self.check_finite = check_finite
        # With check_finite, each checked node gets a number; native code reports the first.
        self.check_sites = [] if check_sites is None else check_sites
        self.num_threads = 1 if check_finite else max(1, int(num_threads))
        self.name = name
        self.math_impl = math_impl
        self.module = module if module is not None else ir.Module(name=name)
        if triple and module is None:
            self.module.triple = triple
        self.order = topo_order(g)
        self.outputs = list(g.graph["outputs"])
        # Size symbols of a shape-generic graph: their values arrive in an i64 array that
        # the entry and every kernel take as an extra argument.
        self.symbols = tuple(g.graph.get("symbols", ()))
        self.kernel_members = {}
        for n in self.order:
            k = g.nodes[n].get("kernel")
            if k is not None:
                self.kernel_members.setdefault(k, []).append(n)

    # --- the entry function ----------------------------------------------------------------
    def lower(self) -> ir.Module:
        g = self.g
        inputs = g.graph["inputs"]
        n_in, n_out = len(inputs), len(self.outputs)
        fnty = ir.FunctionType(I32, [PTR] * (n_in + n_out + 1 + bool(self.symbols)))
        entry = ir.Function(self.module, fnty, self.name)
        b = ir.IRBuilder(entry.append_basic_block("entry"))
        if self.symbols:
            bind_sizes(b, entry.args[-1], self.symbols)
        status = b.alloca(I32, name="status")
        b.store(ir.Constant(I32, 0), status)

        var_nodes = {g.nodes[n]["attrs"]["name"]: n for n in g.nodes if g.nodes[n]["op"] == "var"}
        self.buffers = {}
        for i, name in enumerate(inputs):
            if name in var_nodes:
                self.buffers[var_nodes[name]] = entry.args[i]
        out_args = entry.args[n_in:n_in + n_out]
        first_position = {}
        for j, o in enumerate(self.outputs):
            first_position.setdefault(o, j)
        for o, j in first_position.items():
            if g.nodes[o].get("kernel") is not None:
                self.buffers[o] = out_args[j]
        for n in self.order:
            if g.nodes[n]["op"] == "const":
                self.buffers[n] = self._global_constant(n)

        workspace_bytes = g.graph.get("workspace_bytes", 0)
        cleanup = self.workspace = None
        if workspace_bytes != 0:
            ws_arg = entry.args[n_in + n_out]
            is_null = b.icmp_unsigned("==", ws_arg, ir.Constant(PTR, None))
            malloc = self._libc("malloc", PTR, [I64])
            with b.if_else(is_null) as (then, otherwise):
                with then:
                    # malloc aligns to 16 bytes, and the planner places buffers at 64-byte
                    # offsets: aligning the base keeps their vectors within cache lines.
                    owned_raw = b.call(malloc, [b.add(size_value(b, workspace_bytes),
                                                      ir.Constant(I64, 63))])
                    owned_ws = align_pointer(b, owned_raw)  # null stays null
                    then_bb = b.block
                with otherwise:
                    else_bb = b.block
            ws = b.phi(PTR, name="workspace")
            ws.add_incoming(owned_ws, then_bb)
            ws.add_incoming(ws_arg, else_bb)
            raw = b.phi(PTR, name="workspace_raw")
            raw.add_incoming(owned_raw, then_bb)
            raw.add_incoming(ws_arg, else_bb)
            fail_bb = entry.append_basic_block("no_memory")
            ok_bb = entry.append_basic_block("have_memory")
            b.cbranch(b.icmp_unsigned("==", ws, ir.Constant(PTR, None)), fail_bb, ok_bb)
            b.position_at_end(fail_bb)
            b.ret(ir.Constant(I32, ERR_NO_MEMORY))
            b.position_at_end(ok_bb)
            # Workspace pointers are computed where they are used: thousands of them made
            # up front would all stay live across the whole entry function.
            self.workspace = ws
            cleanup = (is_null, raw)

        done_bb = entry.append_basic_block("done")
        for k in sorted(self.kernel_members):
            root = self.kernel_members[k][-1]
            if get_op(g.nodes[root]["op"]).kind == "control":
                self._lower_control(b, root, status)
            else:
                fn, params = self._lower_kernel(k)
                b.call(fn, [self.buffer(b, p) for p in params] + [status] + self._dims_arg(entry))
            failed = b.icmp_unsigned("!=", b.load(status, typ=I32), ir.Constant(I32, 0))
            next_bb = entry.append_basic_block(f"after.k{k}")
            b.cbranch(failed, done_bb, next_bb)
            b.position_at_end(next_bb)
        # Outputs that no kernel wrote (inputs, constants, repeats) are copies.
        for j, o in enumerate(self.outputs):
            if first_position[o] == j and g.nodes[o].get("kernel") is not None:
                continue
            self._emit_copy(b, o, out_args[j])
        b.branch(done_bb)
        b.position_at_end(done_bb)
        if cleanup is not None:
            is_null, ws = cleanup
            free = self._libc("free", ir.VoidType(), [PTR])
            with b.if_then(is_null):
                b.call(free, [ws])
        b.ret(b.load(status, typ=I32))
        return self.module

    def widest_itemsize(self, members, default):
        """Bytes of the widest element among `members` (tuple-typed nodes do not count)."""
        return max((np.dtype(self.g.nodes[n]["dtype"]).itemsize for n in members
                    if not isinstance(self.g.nodes[n]["dtype"], tuple)), default=default)

    def vector_width(self, members):
        """SIMD lanes to fix for a flat loop over `members` (None: LLVM's cost model picks).
        Fixed only in large modules, where trying every width costs LLVM real time: the
        host's vector register holds this many of the widest element."""
        if not self.vector_bytes:
            return None
        lanes = self.vector_bytes // self.widest_itemsize(members, default=8)
        return lanes if lanes >= 2 else None

    def buffer(self, b, n):
        """Pointer to node n's memory: an argument, a constant, or a workspace slice."""
        found = self.buffers.get(n)
        if found is not None:
            return found
        d = self.g.nodes[n]
        if d["op"] == "item":
            (control,) = d["args"]
            offset = control_layout(self.g, control)["outputs"][d["attrs"]["index"]]
            base = self.buffer(b, control)
        else:
            offset, base = d["offset"], self.workspace
        return self._aligned_if_symbolic(
            b, b.gep(base, [size_value(b, offset)], source_etype=I8, inbounds=True))

    def _dims_arg(self, fn):
        """The size-symbol array a kernel call passes on (nothing for static shapes)."""
        return [fn.args[-1]] if self.symbols else []

    def check_site(self, node) -> int:
        """The number native code reports when `node` is the first to go non-finite."""
        key = (self.g, node)
        for i, site in enumerate(self.check_sites):
            if site[0] is self.g and site[1] == node:
                return i
        self.check_sites.append(key)
        return len(self.check_sites) - 1

    # --- control flow ------------------------------------------------------------------------
    def _lower_body(self, root, i):
        body = self.g.nodes[root]["attrs"]["bodies"][i]
        lowering = GraphLowering(body, f"{self.name}.n{root}.b{i}", self.plain_math_impl,
                                 module=self.module, num_threads=self.num_threads,
                                 check_finite=self.check_finite, check_sites=self.check_sites,
                                 outline_math=self.outline_math, vector_bytes=self.vector_bytes)
        lowering.symbols = self.symbols  # a body's sizes are written in the graph's symbols
        lowering.lower()
        fn = self.module.get_global(lowering.name)
        fn.linkage = "internal"
        return fn

    def _region(self, b, root, offsets):
        base = self.buffer(b, root)
        return [self._aligned_if_symbolic(
            b, b.gep(base, [size_value(b, o)], source_etype=I8, inbounds=True)) for o in offsets]

    def _aligned_if_symbolic(self, b, pointer):
        """With symbolic sizes every region reserves ALIGN spare bytes: round its start up."""
        return align_pointer(b, pointer) if self.symbols else pointer

    def _call_body(self, b, fn, args, status, fail_bb):
        code = b.call(fn, args + self._dims_arg(b.function))
        b.store(code, status)
        ok_bb = b.append_basic_block("body.ok")
        b.cbranch(b.icmp_unsigned("!=", code, ir.Constant(I32, 0)), fail_bb, ok_bb)
        b.position_at_end(ok_bb)

    def _memcpy(self, b, dst, src, nbytes):
        if nbytes != 0:
            fn = self.module.declare_intrinsic("llvm.memcpy", [PTR, PTR, I64])
            b.call(fn, [dst, src, size_value(b, nbytes), ir.Constant(ir.IntType(1), 0)])

    def _lower_control(self, b, root, status):
        """Run a cond's taken branch, or a while loop, by calling its bodies' functions."""
        g = self.g
        d = g.nodes[root]
        layout = control_layout(g, root)
        outs = self._region(b, root, layout["outputs"])
        (ws,) = self._region(b, root, [layout["workspace"]])
        args = [self.buffer(b, a) for a in d["args"]]
        done_bb = b.append_basic_block(f"control.{root}.end")
        if d["op"] == "cond":
            true_fn, false_fn = self._lower_body(root, 0), self._lower_body(root, 1)
            pred = Emitter(b).load(np.dtype(bool), args[0], ir.Constant(I64, 0))
            then_bb = b.append_basic_block("cond.true")
            else_bb = b.append_basic_block("cond.false")
            b.cbranch(pred, then_bb, else_bb)
            for block, fn in ((then_bb, true_fn), (else_bb, false_fn)):
                b.position_at_end(block)
                self._call_body(b, fn, args[1:] + outs + [ws], status, done_bb)
                b.branch(done_bb)
            b.position_at_end(done_bb)
            return
        if d["op"] == "scan":
            self._lower_scan(b, root, layout, outs, ws, args, status, done_bb)
            return
        cond_fn, body_fn = self._lower_body(root, 0), self._lower_body(root, 1)
        n = d["attrs"]["num_carried"]
        carried, captured = args[:n], args[n:]
        sizes = [math.prod(s) * np.dtype(t).itemsize for s, t in zip(d["shape"], d["dtype"])]
        state0 = self._region(b, root, layout["state"][0])
        state1 = self._region(b, root, layout["state"][1])
        (flag,) = self._region(b, root, [layout["flag"]])
        for dst, src, size in zip(state0, carried, sizes):
            self._memcpy(b, dst, src, size)
        entry_bb = b.block
        head_bb = b.append_basic_block(f"while.{root}.head")
        exit_bb = b.append_basic_block(f"while.{root}.exit")
        b.branch(head_bb)
        b.position_at_end(head_bb)
        flip = b.phi(ir.IntType(1), name="flip")
        steps = b.phi(I64, name="steps")
        flip.add_incoming(ir.Constant(ir.IntType(1), 0), entry_bb)
        steps.add_incoming(ir.Constant(I64, 0), entry_bb)
        current = [b.select(flip, s1, s0) for s0, s1 in zip(state0, state1)]
        following = [b.select(flip, s0, s1) for s0, s1 in zip(state0, state1)]
        self._call_body(b, cond_fn, current + captured + [flag, ws], status, done_bb)
        go = Emitter(b).load(np.dtype(bool), flag, ir.Constant(I64, 0))
        run_bb = b.append_basic_block(f"while.{root}.run")
        b.cbranch(go, run_bb, exit_bb)
        b.position_at_end(run_bb)
        max_iters = d["attrs"].get("max_iters")
        if max_iters is not None:
            over_bb = b.append_basic_block(f"while.{root}.max_iters")
            body_bb = b.append_basic_block(f"while.{root}.body")
            b.cbranch(b.icmp_unsigned(">=", steps, ir.Constant(I64, max_iters)), over_bb, body_bb)
            b.position_at_end(over_bb)
            b.store(ir.Constant(I32, ERR_MAX_ITERS), status)
            b.branch(done_bb)
            b.position_at_end(body_bb)
        self._call_body(b, body_fn, current + captured + following + [ws], status, done_bb)
        flip.add_incoming(b.not_(flip), b.block)
        steps.add_incoming(b.add(steps, ir.Constant(I64, 1)), b.block)
        b.branch(head_bb)
        b.position_at_end(exit_bb)
        for dst, src, size in zip(outs, current, sizes):
            self._memcpy(b, dst, src, size)
        b.branch(done_bb)
        b.position_at_end(done_bb)

    def _lower_scan(self, b, root, layout, outs, ws, args, status, done_bb):
        """Step the body over rows of xs: it reads row i in place and writes ys row i in place;
        the carry alternates between two state buffers."""
        d = self.g.nodes[root]
        body_fn = self._lower_body(root, 0)
        n_c, n_x = d["attrs"]["num_carried"], d["attrs"]["num_xs"]
        carried, xs, captured = args[:n_c], args[n_c:n_c + n_x], args[n_c + n_x:]
        shapes, dtypes = d["shape"], d["dtype"]
        carry_sizes = [math.prod(s) * np.dtype(t).itemsize for s, t in zip(shapes[:n_c], dtypes[:n_c])]
        x_nodes = d["args"][n_c:n_c + n_x]
        x_rows = [math.prod(self.g.nodes[x]["shape"][1:]) * self.g.nodes[x]["dtype"].itemsize
                  for x in x_nodes]
        y_rows = [math.prod(s[1:]) * np.dtype(t).itemsize for s, t in zip(shapes[n_c:], dtypes[n_c:])]
        length = shapes[n_c][0] if len(shapes) > n_c else self.g.nodes[x_nodes[0]]["shape"][0]
        state0 = self._region(b, root, layout["state"][0])
        state1 = self._region(b, root, layout["state"][1])
        for dst, src, size in zip(state0, carried, carry_sizes):
            self._memcpy(b, dst, src, size)
        flip = b.alloca(ir.IntType(1), name="flip")
        b.store(ir.Constant(ir.IntType(1), 0), flip)
        fail_bb = done_bb

        def step(i):
            f = b.load(flip, typ=ir.IntType(1))
            current = [b.select(f, s1, s0) for s0, s1 in zip(state0, state1)]
            following = [b.select(f, s0, s1) for s0, s1 in zip(state0, state1)]
            rows = [b.gep(x, [b.mul(i, size_value(b, r))], source_etype=I8) for x, r in zip(xs, x_rows)]
            ys = [b.gep(y, [b.mul(i, size_value(b, r))], source_etype=I8)
                  for y, r in zip(outs[n_c:], y_rows)]
            self._call_body(b, body_fn, current + rows + captured + following + ys + [ws], status,
                            fail_bb)
            b.store(b.not_(f), flip)

        emit_loop(b, length, step, f"scan{root}")
        f = b.load(flip, typ=ir.IntType(1))
        for dst, s0, s1, size in zip(outs[:n_c], state0, state1, carry_sizes):
            self._memcpy(b, dst, b.select(f, s1, s0), size)
        b.branch(done_bb)
        b.position_at_end(done_bb)

    def _libc(self, name, ret, args):
        return declare(self.module, name, ret, args)

    def _global_constant(self, n):
        value = self.g.nodes[n]["attrs"]["value"]
        data = np.ascontiguousarray(value)
        if data.dtype.kind == "b":
            data = data.astype(np.uint8)
        raw = bytearray(data.tobytes())
        ty = ir.ArrayType(I8, len(raw))
        gv = ir.GlobalVariable(self.module, ty, name=f"{self.name}.const.{n}")
        gv.global_constant = True
        gv.linkage = "private"
        gv.unnamed_addr = True
        gv.align = 64
        gv.initializer = ir.Constant(ty, raw)
        return gv

    def _emit_copy(self, b, src, dst_ptr):
        d = self.g.nodes[src]
        em = Emitter(b)
        size = math.prod(d["shape"])
        src_ptr = self.buffer(b, src)

        def body(i):
            em.store(d["dtype"], em.load(d["dtype"], src_ptr, i), dst_ptr, i)

        emit_loop(b, size, body, "copy")

    # --- kernels -------------------------------------------------------------------------------
    def _lower_kernel(self, k):
        g = self.g
        members = self.kernel_members[k]
        root = members[-1]  # topological order: the last result comes last in its kernel
        member_set = set(members)
        outputs = set(self.outputs)
        # Several results when sibling kernels were merged: each one stored by the loop.
        roots = [n for n in members if n == root or n in outputs
                 or any(g.nodes[u].get("kernel") != k for u in g.successors(n))]
        reads = []
        for n in members:
            for a in g.nodes[n]["args"]:
                if a not in member_set and a not in reads:
                    reads.append(a)
        params = roots + reads
        name = f"{self.name}.k{k}.{g.nodes[root]['op']}"
        # A matmul or conv with an elementwise epilogue (see passes/fuse.py): the product
        # decides the loops and the thread split.
        product = next((n for n in members if n != root
                        and get_op(g.nodes[n]["op"]).kind in ("matmul", "conv")), None)
        plan = (self._parallel_plan(product or root, {product} if product else member_set)
                if self.num_threads > 1 else None)
        extra = [I64, I64] + ([PTR] if plan and plan[1] == "partials" else []) if plan else []
        n_fixed = len(params) + 1 + bool(self.symbols)  # buffers, status, [sizes]
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR] * n_fixed + extra),
                         name + (".range" if plan else ""))
        fn.linkage = "internal"
        if len(self.kernel_members) > INLINE_MAX_KERNELS:
            # Inlining every kernel into the entry makes one huge function, and LLVM's
            # optimization time grows faster than linearly with function size.
            fn.attributes.add("noinline")
        for arg in fn.args[:len(params)]:
            arg.add_attribute("noalias")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        if self.symbols:
            bind_sizes(b, fn.args[len(params) + 1], self.symbols)
        kernel = _KernelBody(self, b, member_set, {p: fn.args[i] for i, p in enumerate(params)},
                             fn.args[len(params)])
        if plan:
            kernel.outer = (fn.args[n_fixed], fn.args[n_fixed + 1])
            if plan[1] == "partials":
                kernel.partial_out = fn.args[n_fixed + 2]
        if self.check_finite:
            kernel.start_checks()
        kernel.roots = roots
        kernel.product = product
        if (self.math_impl is not None and not self.outline_math
                and any(g.nodes[n]["op"] in _TRIG for n in members)):
            self._with_exact_trig_fallback(kernel, kernel.emit, root)
        else:
            kernel.emit(root)
        if self.check_finite:
            kernel.report_checks()
        b.ret_void()
        if plan:
            fn = self._parallel_dispatcher(name, fn, n_fixed, root, plan)
        return fn, params

    def _with_exact_trig_fallback(self, kernel, emit_body, root):
        """The vectorized sin/cos/tan reduce arguments exactly only up to mathlib.TRIG_RANGE.
        Run the fast loop while noting whether any argument went past it; if one did, call a
        copy of the kernel built on the C library's exact functions (kernels are pure: it
        rewrites the same results from the same inputs). The copy is marked optnone, so it
        costs LLVM next to no compile time; it only runs for such rare arguments."""
        from .mathlib import TRIG_RANGE

        b, em = kernel.b, kernel.em
        fn = b.function
        exact = ir.Function(self.module, fn.function_type, f"{fn.name}.exact")
        exact.linkage = "internal"
        exact.attributes.add("noinline")
        exact.attributes.add("optnone")
        eb = ir.IRBuilder(exact.append_basic_block("entry"))
        if self.symbols:
            n_buffers = len(kernel.pointers)
            bind_sizes(eb, exact.args[n_buffers + 1], self.symbols)
        copy = _KernelBody(self, eb, kernel.members, {p: exact.args[i] for i, p in enumerate(
            kernel.pointers)}, exact.args[list(fn.args).index(kernel.em.status_ptr)])
        copy.roots, copy.em.math_impl = kernel.roots, None
        copy.product = kernel.product
        if kernel.outer is not None:
            copy.outer = tuple(exact.args[list(fn.args).index(v)] for v in kernel.outer)
        if kernel.partial_out is not None:
            copy.partial_out = exact.args[list(fn.args).index(kernel.partial_out)]
        copy.emit(root)
        eb.ret_void()

        beyond = b.alloca(ir.IntType(1), name="trig_beyond_range")
        b.store(ir.Constant(ir.IntType(1), 0), beyond)
        fast = self.math_impl

        def watched(builder, name, *args):
            if name in _TRIG:
                x = args[0]
                limit = TRIG_RANGE[32 if x.type == ir.FloatType() else 64]
                magnitude = em._intrinsic("llvm.fabs", x)
                far = builder.fcmp_ordered(">", magnitude, ir.Constant(x.type, limit))
                builder.store(builder.or_(builder.load(beyond, typ=ir.IntType(1)), far), beyond)
            return fast(builder, name, *args)

        em.math_impl = watched
        emit_body(root)
        em.math_impl = fast
        with b.if_then(b.load(beyond, typ=ir.IntType(1)), likely=False):
            b.call(exact, list(fn.args))

    def _parallel_plan(self, root, members):
        """(extent, mode, guards, align, chunks per thread) when the kernel's outermost loop
        is worth splitting across threads (chunk bounds are multiples of `align`). With
        symbolic sizes the choice is made for a large size (TYPICAL_SIZE), and `guards`,
        pairs (size, minimum), let the code run the chunks on one thread when a call's sizes
        are too small to pay for threads."""
        g = self.g
        d = g.nodes[root]
        kind = get_op(d["op"]).kind
        probe = _KernelBody(self, None, members, {}, None)
        chunks_per_thread = CHUNKS_PER_THREAD
        if kind == "elementwise" or kind == "movement":
            work = math.prod(d["shape"])
            extent = work if probe._flat_ok(root) else (d["shape"][0] if d["shape"] else 1)
            mode = "outer"
        elif kind == "reduce":
            in_shape = g.nodes[d["args"][0]]["shape"]
            axes = d["attrs"]["axes"]
            ndim = len(in_shape)
            if tuple(axes) != tuple(range(ndim - len(axes), ndim)):
                return None  # reductions into the output would race across threads
            work = math.prod(in_shape)
            kept = in_shape[: ndim - len(axes)]
            if kept:
                extent, mode = kept[0], "outer"
            elif probe._flat_ok(d["args"][0], over=in_shape):
                extent, mode = work, "partials"
            else:
                return None
        elif kind in ("conv", "pool"):
            # Threads split the images of the batch (NCHW: the outermost axis).
            extent, mode = d["shape"][0], "outer"
            work = math.prod(d["shape"]) * (math.prod(g.nodes[d["args"][1]]["shape"][1:])
                                            if kind == "conv" else 1)
            if kind == "conv" and uses_winograd(g, root):
                chunks_per_thread = 1  # each chunk transforms all the filters first
        elif kind == "matmul":
            mm = MatmulGeometry.of(g, root)
            rows = folded_rows(mm.batch, mm.a2, mm.b2)
            if rows is None or not uses_gemm(d["dtype"], _typical(mm.m), mm.n, mm.k):
                return None
            # Threads split the rows; each packs its own copy of B, so chunks must be tall.
            flops = rows * mm.k * mm.n
            if _typical(rows) < 32 or _typical(flops) < PARALLEL_MIN_FLOPS:
                return None
            guards = [(rows, 32), (flops, PARALLEL_MIN_FLOPS)] if isinstance(rows, Sym) else []
            return rows, "outer", guards, MATMUL_CHUNK_ROWS, MATMUL_CHUNKS_PER_THREAD
        else:
            return None
        # Math functions cost several times an add per element: such loops pay for a
        # second thread at fewer elements.
        math_ops = sum(g.nodes[n]["op"] in MATH_FUNCTIONS for n in members)
        widest = self.widest_itemsize(members, default=4)
        minimum = -(-PARALLEL_MIN_ELEMENTS * 4 // (widest * (1 + MATH_WEIGHT * math_ops)))
        if _typical(work) < minimum or _typical(extent) < 2:
            return None
        guards = [(work, minimum)] if isinstance(work, Sym) else []
        return extent, mode, guards, 1, chunks_per_thread

    def _parallel_dispatcher(self, name, range_fn, n_fixed, root, plan):
        """The kernel as the entry calls it: [0, extent) in the plan's fixed number of chunks
        per thread (CHUNKS_PER_THREAD for most loops), which this thread and the pool's workers (codegen/threadpool.py) claim in
        turn from a shared counter until none is left. A chunk's bounds depend only on
        the extent and the thread count, and full reductions keep one partial per chunk,
        combined in chunk order: results never depend on timing or on which thread ran
        which chunk, while a core slowed by other work simply ends up running fewer chunks.
        A busy pool or a worker that cannot be started leaves more chunks to the others, and
        when a guard finds the sizes too small this thread runs every chunk: the same
        chunks, the same results."""
        extent, mode, guards, align, per_thread = plan
        symbolic = isinstance(extent, Sym)
        threads = self.num_threads if symbolic else min(self.num_threads, extent)
        chunks = threads * per_thread
        chunks = chunks if symbolic else min(chunks, extent)
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR] * n_fixed), name)
        fn.linkage = "internal"
        acc_type = None
        if mode == "partials":
            acc_dtype = np.dtype(compute_dtype(node_typing(self.g, root)))
            acc_type = register_type(acc_dtype)
        claim = self._chunk_claimer(name, range_fn, n_fixed, chunks, acc_type, align)
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        if self.symbols:
            bind_sizes(b, fn.args[-1], self.symbols)
        status_arg = fn.args[n_fixed - 1 - bool(self.symbols)]
        # The job every thread reads: the kernel's arguments, the extent, the next chunk
        # to claim, and where chunk partials go.
        job = b.alloca(I64, size=ir.Constant(I64, n_fixed + 3), name="job")

        def word(i):
            return b.gep(job, [ir.Constant(I64, i)], source_etype=I64)

        for i, arg in enumerate(fn.args):
            b.store(b.ptrtoint(arg, I64), word(i))
        b.store(size_value(b, extent) if symbolic else ir.Constant(I64, extent), word(n_fixed))
        b.store(ir.Constant(I64, 0), word(n_fixed + 1))
        partials = None
        if mode == "partials":
            partials = b.alloca(acc_type, size=ir.Constant(I64, chunks), name="chunk_partials")
            b.store(b.ptrtoint(partials, I64), word(n_fixed + 2))
        participants = ir.Constant(I64, threads)
        if guards:  # sizes too small for threads: the pool runs every chunk on this one
            small = ir.Constant(ir.IntType(1), 0)
            for size, minimum in guards:
                small = b.or_(small, b.icmp_signed("<", size_value(b, size), ir.Constant(I64, minimum)))
            participants = b.select(small, ir.Constant(I64, 1), participants)
        b.call(declare_pool_run(self.module), [claim, job, participants])
        if mode == "partials":
            kernel = _KernelBody(self, b, set(), {root: fn.args[0]}, status_arg)
            kernel.finish_partials(root, [
                b.load(b.gep(partials, [ir.Constant(I64, c)], source_etype=acc_type), typ=acc_type)
                for c in range(chunks)])
        b.ret_void()
        return fn

    def _chunk_claimer(self, name, range_fn, n_fixed, chunks, acc_type, align):
        """``claim(job)``: take the next unclaimed chunk (an atomic add on the job's counter)
        and run it, until none is left. Chunk c covers [bound(c), bound(c + 1)) with
        bound(c) = extent * c // chunks rounded down to `align` (the last bound is the
        extent), so each chunk's rows are the same whoever runs it."""
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR]), f"{name}.claim")
        fn.linkage = "internal"
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        job = fn.args[0]

        def word(i):
            return b.load(b.gep(job, [ir.Constant(I64, i)], source_etype=I64), typ=I64)

        fixed = [b.inttoptr(word(i), PTR) for i in range(n_fixed)]
        extent = word(n_fixed)
        counter = b.gep(job, [ir.Constant(I64, n_fixed + 1)], source_etype=I64)
        partials = b.inttoptr(word(n_fixed + 2), PTR) if acc_type is not None else None
        total = ir.Constant(I64, chunks)

        def bound(c):
            at = b.sdiv(b.mul(extent, c), total)
            if align > 1:
                at = b.mul(b.sdiv(at, ir.Constant(I64, align)), ir.Constant(I64, align))
            return b.select(b.icmp_signed(">=", c, total), extent, at)

        loop = fn.append_basic_block("claim")
        run = fn.append_basic_block("run")
        done = fn.append_basic_block("done")
        b.branch(loop)
        b.position_at_end(loop)
        c = b.atomic_rmw("add", counter, ir.Constant(I64, 1), "monotonic")
        b.cbranch(b.icmp_signed("<", c, total), run, done)
        b.position_at_end(run)
        args = fixed + [bound(c), bound(b.add(c, ir.Constant(I64, 1)))]
        if partials is not None:
            args.append(b.gep(partials, [c], source_etype=acc_type))
        b.call(range_fn, args)
        b.branch(loop)
        b.position_at_end(done)
        b.ret_void()
        return fn


TYPICAL_SIZE = 1024  # what a size symbol stands for when deciding how to split work


def _typical(size):
    """A size with every symbol at TYPICAL_SIZE: for choices made once for all sizes."""
    if isinstance(size, Sym):
        return size.evaluate({name: TYPICAL_SIZE for name in size.symbols()})
    return size


class _KernelBody:
    """Emission state for one kernel: its members, buffer pointers and value memo."""

    def __init__(self, lowering, b, members, pointers, status_ptr):
        self.g = lowering.g
        self.b = b
        self.members = members
        self.pointers = pointers
        self.em = Emitter(b, status_ptr, lowering.math_impl) if b is not None else None
        self.memo = {}
        self.lowering = lowering
        self.roots = None  # the results this kernel stores (several after sibling merging)
        self.check_slot = None  # with check_finite: the lowest failing check site so far
        self.nonfinite_input = None  # with check_finite: a reduction's input had NaN or inf
        self.outer = None  # (lo, hi): this thread's slice of the outermost loop
        self.partial_out = None  # where a thread leaves its partial reduction
        self.product = None  # a matmul/conv member whose elementwise epilogue is the root
        self.epilogue_root = None  # while lowering that product: the root to apply per tile
        self.epilogue_done = False  # whether the product's lowering applied the epilogue

    def emit(self, root):
        """The kernel's loops: by the kind of its root, or a product and its epilogue."""
        if self.product is not None:
            self._product_with_epilogue(self.product, root)
            return
        kind = get_op(self.g.nodes[root]["op"]).kind
        {"reduce": self.reduce, "matmul": self.matmul, "concat": self.concat,
         "conv": lambda r: lower_conv(self, r), "pool": lambda r: lower_pool(self, r),
         "argreduce": self.argreduce}.get(kind, self.elementwise)(root)

    def _product_with_epilogue(self, product, root):
        """The product computed into the root's buffer; its epilogue applied to each tile or
        row as it is finished where the product's code allows (GEMM tiles, matrix-vector
        rows), else in one pass over the output right after."""
        self.pointers[product] = self.pointers[root]
        self.members = self.members - {product}  # the epilogue reads the product's buffer
        trig = any(self.g.nodes[n]["op"] in _TRIG for n in self.members)
        inline_ok = self.check_slot is None and (self.em.math_impl is None or not trig
                                                 or self.lowering.outline_math)
        self.epilogue_root = root if inline_ok else None
        self.epilogue_done = False
        if get_op(self.g.nodes[product]["op"]).kind == "matmul":
            self.matmul(product)
        else:
            lower_conv(self, product)
        self.epilogue_root = None
        if not self.epilogue_done:
            self._epilogue_pass(root)

    def _epilogue_pass(self, root):
        emit_nest(self.b, self.g.nodes[root]["shape"],
                  lambda idx: self._epilogue_values(root, idx), "ep", outer=self.outer)

    def _epilogue_values(self, root, idx):
        """Store the root's value at output index idx (the product read from the buffer)."""
        d = self.g.nodes[root]
        self.memo.clear()
        self.em.store(d["dtype"], self.value(root, idx), self.pointers[root],
                      self.em.linearize(idx, d["shape"]))

    def _tile_epilogue(self, root, index=None):
        """(callable, env, word) for gemm_function. The env holds this kernel's buffer
        pointers and one i64 `word` (slot pointer returned: the product's first row, or for
        a convolution the image being computed); the callable calls a row function (noalias
        buffers, so its loop is vectorized) on each row of a finished tile. `index(builder,
        word, row, col)` maps a C element to the root's index (default: [word + row, col])."""
        b = self.b
        unique = []  # one parameter per distinct buffer (the product shares the root's)
        for node, pointer in self.pointers.items():
            if not any(pointer is p for _, p in unique):
                unique.append((node, pointer))
        param_of = {node: next(i for i, (_, p) in enumerate(unique) if p is pointer)
                    for node, pointer in self.pointers.items()}
        env = b.alloca(I64, size=ir.Constant(I64, len(unique) + 1), name="epilogue_env")
        for i, (_, pointer) in enumerate(unique):
            b.store(b.ptrtoint(pointer, I64), b.gep(env, [ir.Constant(I64, i)], source_etype=I64))
        word_slot = b.gep(env, [ir.Constant(I64, len(unique))], source_etype=I64)
        b.store(self.outer[0] if self.outer is not None else ir.Constant(I64, 0), word_slot)
        if index is None:
            index = lambda rb, word, row, col: [rb.add(word, row), col]  # noqa: E731

        module = b.module
        row_fn = ir.Function(module, ir.FunctionType(
            ir.VoidType(), [PTR] * len(unique) + [I64, I64, I64, I64, PTR]),
            f"{b.function.name}.epilogue")
        row_fn.linkage = "internal"
        for arg in row_fn.args[:len(unique)]:
            arg.add_attribute("noalias")
        *buffers, word, row, j0, count, status = row_fn.args
        rb = ir.IRBuilder(row_fn.append_basic_block("entry"))
        body = _KernelBody(self.lowering, rb, self.members,
                           {node: buffers[param_of[node]] for node in self.pointers}, status)
        body.roots = [root]
        emit_loop(rb, count, lambda c: body._epilogue_values(
            root, index(rb, word, row, rb.add(j0, c))), "ej")
        rb.ret_void()

        def apply(gb, env_arg, status_arg, i0, tile_j0, rows, cols):
            words = [gb.load(gb.gep(env_arg, [ir.Constant(I64, i)], source_etype=I64), typ=I64)
                     for i in range(len(unique) + 1)]
            pointers = [gb.inttoptr(w, PTR) for w in words[:-1]]
            width = ir.Constant(I64, cols) if isinstance(cols, int) else cols
            emit_loop(gb, rows, lambda r: gb.call(
                row_fn, pointers + [words[-1], gb.add(i0, r), tile_j0, width, status_arg]), "er")

        return apply, env, word_slot

    # value of `node` at index `idx` (a list in node's shape, or a _Flat)
    def value(self, node, idx):
        key = (node, id(idx.i) if isinstance(idx, _Flat) else tuple(map(id, idx)))
        hit = self.memo.get(key)
        if hit is not None:
            return hit[0]
        d = self.g.nodes[node]
        em = self.em
        if node not in self.members:
            if isinstance(idx, _Flat):
                offset = idx.i
            else:
                offset = em.linearize(idx, d["shape"])
            v = em.load(d["dtype"], self.pointers[node], offset)
        else:
            op = get_op(d["op"])
            if op.kind == "movement":
                (a,) = d["args"]
                v = self.value(a, op.index_map(em, idx, d["attrs"], self.g.nodes[a]["shape"]))
            elif op.kind == "gather":
                v = self._gather(node, idx)
            else:
                typing = node_typing(self.g, node)
                operands = []
                for a, want in zip(d["args"], typing.in_dtypes or [None] * len(d["args"])):
                    ad = self.g.nodes[a]
                    x = self.value(a, broadcast_index(idx, d["shape"], ad["shape"], em))
                    operands.append(x if want is None else em.cast(ad["dtype"], want, x))
                extra = {}
                if "scalar_operands" in op.traits:  # the lowering needs to know broadcasts
                    extra["scalar_operands"] = tuple(
                        math.prod(self.g.nodes[a]["shape"]) == 1 for a in d["args"])
                v = op.lower(em, np.dtype(compute_dtype(typing)), *operands, **extra)
                if self.check_slot is not None and np.dtype(d["dtype"]).kind == "f":
                    inputs_finite = [self._finite(self.g.nodes[a]["dtype"], x)
                                     for a, x in zip(d["args"], operands)
                                     if np.dtype(self.g.nodes[a]["dtype"]).kind == "f"]
                    self._check(node, v, inputs_finite)
        self.memo[key] = (v, idx)
        return v

    def _gather(self, node, idx):
        """take: the operand's element at the index the indices operand holds at this point."""
        g, em, b = self.g, self.em, self.b
        d = g.nodes[node]
        x, indices = d["args"]
        axis = d["attrs"]["axis"]
        x_shape, i_shape = g.nodes[x]["shape"], g.nodes[indices]["shape"]
        if isinstance(idx, _Flat):
            idx = em.delinearize(idx.i, d["shape"])
        k = len(i_shape)
        j = em.cast(g.nodes[indices]["dtype"], np.dtype(np.int64),
                    self.value(indices, list(idx[axis:axis + k])))
        size = size_value(b, x_shape[axis])
        j = b.select(b.icmp_signed("<", j, ir.Constant(I64, 0)), b.add(j, size), j)
        bad = b.or_(b.icmp_signed("<", j, ir.Constant(I64, 0)), b.icmp_signed(">=", j, size))
        em.raise_if(bad, ERR_INDEX_OUT_OF_RANGE)
        j = b.select(bad, ir.Constant(I64, 0), j)  # never load out of bounds
        return self.value(x, list(idx[:axis]) + [j] + list(idx[axis + k:]))

    def arg_step(self, root, outer, i, best, best_at):
        """One step of argmax/argmin along the axis: element i replaces the best so far when
        the op says it is better (the first element always does)."""
        b, em = self.b, self.em
        d = self.g.nodes[root]
        (src,) = d["args"]
        axis = d["attrs"]["axis"]
        dtype = np.dtype(self.g.nodes[src]["dtype"])
        self.memo.clear()
        x = self.value(src, outer[:axis] + [i] + outer[axis:])
        current = b.load(best, typ=register_type(dtype))
        first = b.icmp_unsigned("==", i, ir.Constant(I64, 0))
        take = b.or_(first, get_op(d["op"]).lower(em, dtype, x, current))
        b.store(b.select(take, x, current), best)
        b.store(b.select(take, i, b.load(best_at, typ=I64)), best_at)

    def argreduce(self, root):
        """argmax/argmin: a running best value and its index along one axis."""
        g, em, b = self.g, self.em, self.b
        d = g.nodes[root]
        (src,) = d["args"]
        in_shape = g.nodes[src]["shape"]
        axis = d["attrs"]["axis"]
        dtype = np.dtype(g.nodes[src]["dtype"])
        out_shape = in_shape[:axis] + in_shape[axis + 1:]
        ptr = self.pointers[root]
        best = b.alloca(register_type(dtype), name="best")
        best_at = b.alloca(I64, name="best_at")

        def per_output(outer):
            emit_loop(b, in_shape[axis], lambda i: self.arg_step(root, outer, i, best, best_at), "arg")
            em.store(d["dtype"], b.load(best_at, typ=I64), ptr, em.linearize(outer, out_shape))

        emit_nest(b, out_shape, per_output, "o")

    # --- check_finite ------------------------------------------------------------------------
    def start_checks(self):
        self.check_slot = self.b.alloca(I64, name="first_nonfinite")
        self.b.store(ir.Constant(I64, NO_CHECK_FAILED), self.check_slot)
        self.nonfinite_input = self.b.alloca(ir.IntType(1), name="nonfinite_input")
        self.b.store(ir.Constant(ir.IntType(1), 0), self.nonfinite_input)

    def report_checks(self):
        b = self.b
        first = b.load(self.check_slot, typ=I64)
        with b.if_then(b.icmp_unsigned("!=", first, ir.Constant(I64, NO_CHECK_FAILED)), likely=False):
            b.store(b.trunc(b.add(first, ir.Constant(I64, ERR_NONFINITE_BASE)), I32), self.em.status_ptr)

    def _finite(self, dtype, x):
        if np.dtype(dtype).kind != "f":
            return ir.Constant(ir.IntType(1), 1)
        magnitude = self.em._intrinsic("llvm.fabs", x)
        return self.b.fcmp_ordered("!=", magnitude, ir.Constant(x.type, float("inf")))

    def _check(self, node, value, inputs_finite):
        """Record `node` if it made a non-finite value from finite inputs (lowest site wins)."""
        b = self.b
        bad = b.not_(self._finite(np.dtype("f8") if value.type == ir.DoubleType() else np.dtype("f4"),
                                  value))
        for ok in inputs_finite:
            bad = b.and_(bad, ok)
        site = ir.Constant(I64, self.lowering.check_site(node))
        current = b.load(self.check_slot, typ=I64)
        earlier = b.icmp_unsigned("<", site, current)
        b.store(b.select(b.and_(bad, earlier), site, current), self.check_slot)

    def _flat_ok(self, root, over=None):
        """Whether every op is elementwise over the root's shape (or size 1): one flat loop."""
        shape = self.g.nodes[root]["shape"] if over is None else over
        for n in self.members:
            if over is not None and get_op(self.g.nodes[n]["op"]).kind == "reduce":
                continue
            if get_op(self.g.nodes[n]["op"]).kind != "elementwise":
                return False
            for a in self.g.nodes[n]["args"] + (n,):
                s = self.g.nodes[a]["shape"]
                if s != shape and math.prod(s) != 1:
                    return False
        return True

    def _streams(self, roots, total):
        """Whether this flat loop's output goes out with streaming stores: on x86, one plain
        numeric result of the graph (an intermediate stays cached for the kernel that reads
        it next) of at least STREAM_MIN_BYTES, a size known when compiling."""
        if not self.lowering.streaming_stores or len(roots) != 1 or not isinstance(total, int):
            return False
        if roots[0] not in self.lowering.outputs:
            return False
        dtype = self.g.nodes[roots[0]]["dtype"]
        if isinstance(dtype, tuple) or np.dtype(dtype).kind not in "iuf":
            return False
        return total * np.dtype(dtype).itemsize >= STREAM_MIN_BYTES

    def _streamed_loop(self, root, lo, hi, body, width):
        """Elements [lo, hi) in two loops: plain stores up to the output's first 64-byte
        boundary (all of them when the array is not element-aligned), then streaming stores
        from there, so every vector store is aligned; a store fence makes them visible to
        the threads that read the result next."""
        b = self.b
        size = np.dtype(self.g.nodes[root]["dtype"]).itemsize

        def c(v):
            return ir.Constant(I64, v)

        address = b.add(b.ptrtoint(self.pointers[root], I64), b.mul(lo, c(size)))
        count = b.sub(hi, lo)
        to_boundary = b.udiv(b.and_(b.sub(c(0), address), c(63)), c(size))
        misaligned = b.icmp_unsigned("!=", b.and_(address, c(size - 1)), c(0))
        peel = b.select(b.or_(misaligned, b.icmp_signed("<", count, to_boundary)), count,
                        to_boundary)
        emit_loop(b, peel, body, start=lo, vector_width=width)
        start = b.add(lo, peel)
        # No forced width here: where LLVM cannot vectorize the body, one prints a remark.
        emit_loop(b, b.sub(hi, start), lambda i: body(i, streamed=True), start=start,
                  vector_width=width)
        b.call(declare(b.module, "llvm.x86.sse.sfence", ir.VoidType(), []), [])

    def elementwise(self, root):
        d = self.g.nodes[root]
        em = self.em
        roots = self.roots or [root]
        if self._flat_ok(root):
            def body(i, streamed=False):
                self.memo.clear()
                for r in roots:
                    em.store(self.g.nodes[r]["dtype"], self.value(r, _Flat(i)), self.pointers[r],
                             i, nontemporal=streamed)

            width = self.lowering.vector_width(self.members)
            total = math.prod(d["shape"])
            if self._streams(roots, total):
                lo, hi = self.outer or (ir.Constant(I64, 0), ir.Constant(I64, total))
                self._streamed_loop(roots[0], lo, hi, body, width)
            elif self.outer is not None:
                lo, hi = self.outer
                emit_loop(self.b, self.b.sub(hi, lo), body, start=lo, vector_width=width)
            else:
                emit_loop(self.b, total, body, vector_width=width)
            return

        def nest_body(idx):
            self.memo.clear()
            offset = em.linearize(idx, d["shape"])
            for r in roots:
                em.store(self.g.nodes[r]["dtype"], self.value(r, idx), self.pointers[r], offset)

        emit_nest(self.b, d["shape"], nest_body, outer=self.outer)

    def reduce(self, root):
        g, em, b = self.g, self.em, self.b
        d = g.nodes[root]
        op = get_op(d["op"])
        (src,) = d["args"]
        in_shape = g.nodes[src]["shape"]
        axes = d["attrs"]["axes"]
        acc_dtype = np.dtype(compute_dtype(node_typing(g, root)))
        out_dtype = d["dtype"]
        ptr = self.pointers[root]
        keep_shape = tuple(1 if i in axes else s for i, s in enumerate(in_shape))
        count = math.prod(in_shape[a] for a in axes)
        identity = em.const(acc_dtype, op.identity(acc_dtype))

        checking = self.check_slot is not None and np.dtype(out_dtype).kind == "f"

        def element(idx):
            x = self.value(src, idx)
            if checking:
                seen = b.load(self.nonfinite_input, typ=ir.IntType(1))
                bad_in = b.not_(self._finite(g.nodes[src]["dtype"], x))
                b.store(b.or_(seen, bad_in), self.nonfinite_input)
            return em.cast(g.nodes[src]["dtype"], acc_dtype, x)

        def finish(acc):
            if op.finalize is not None:
                acc = op.finalize(em, acc_dtype, acc, count)
            result = em.cast(acc_dtype, out_dtype, acc)
            if checking:
                inputs_ok = b.not_(b.load(self.nonfinite_input, typ=ir.IntType(1)))
                self._check(root, result, [inputs_ok])
                b.store(ir.Constant(ir.IntType(1), 0), self.nonfinite_input)
            return result

        ndim = len(in_shape)
        if tuple(axes) == tuple(range(ndim - len(axes), ndim)):
            # Reduced axes are innermost: accumulate in a register per output element.
            kept = in_shape[: ndim - len(axes)]
            inner = in_shape[ndim - len(axes):]
            flat_inner = self._flat_ok(src, over=in_shape) and not kept
            if len(inner) == 1 or flat_inner:
                size = math.prod(inner)

                if self.partial_out is not None:  # this thread's share of a full reduction
                    lo, hi = self.outer
                    result = self._partial_sums(op, acc_dtype, identity, b.sub(hi, lo),
                                                lambda r: element(_Flat(b.add(lo, r))))
                    b.store(result, self.partial_out)
                    return

                def outer_partials(prefix):
                    def at(r):
                        return _Flat(r) if flat_inner else prefix + [r]

                    result = self._partial_sums(op, acc_dtype, identity, size, lambda r: element(at(r)))
                    em.store(out_dtype, finish(result), ptr, em.linearize(prefix, kept))

                emit_nest(b, kept, outer_partials, "o", outer=self.outer)
                return
            acc_slot = b.alloca(register_type(acc_dtype), name="acc")

            def outer(prefix):
                b.store(identity, acc_slot)

                def inner_body(suffix):
                    self.memo.clear()
                    acc = b.load(acc_slot, typ=register_type(acc_dtype))
                    b.store(op.lower(em, acc_dtype, acc, element(prefix + suffix)), acc_slot)

                emit_nest(b, inner, inner_body, "r")
                result = finish(b.load(acc_slot, typ=register_type(acc_dtype)))
                em.store(out_dtype, result, ptr, em.linearize(prefix, kept))

            emit_nest(b, kept, outer, "o", outer=self.outer)
            return
        # Otherwise walk the input in row-major order, accumulating into the output: every
        # reduction's rule makes its output dtype the accumulator's, so the output can hold it.
        out_size = math.prod(d["shape"])
        emit_loop(b, out_size, lambda i: em.store(acc_dtype, identity, ptr, i), "init")

        def body(idx):
            self.memo.clear()
            offset = em.linearize(idx, keep_shape)
            acc = em.load(acc_dtype, ptr, offset)
            em.store(acc_dtype, op.lower(em, acc_dtype, acc, element(idx)), ptr, offset)

        emit_nest(b, in_shape, body)
        if op.finalize is not None:
            def fin(i):
                em.store(out_dtype, finish(em.load(acc_dtype, ptr, i)), ptr, i)

            emit_loop(b, out_size, fin, "fin")

    def _partial_sums(self, op, dtype, identity, size, element):
        """Combine `size` elements in a fixed order that vectorizes without reassociation:
        lane j accumulates elements j, j+W, j+2W, ... (W lanes fill a few SIMD registers),
        then the lanes combine in a fixed pairwise tree."""
        b, em = self.b, self.em
        size = size_value(b, size) if isinstance(size, Sym) else size
        dynamic = not isinstance(size, int)
        lanes = PARTIAL_SUM_BYTES // dtype.itemsize
        lanes = lanes if dynamic else max(1, min(lanes, size))
        ty = register_type(dtype)
        partials = b.alloca(ty, size=ir.Constant(I64, lanes), name="partials")

        def slot(j):
            return b.gep(partials, [j], source_etype=ty, inbounds=True)

        for j in range(lanes):
            b.store(identity, slot(ir.Constant(I64, j)))
        if dynamic:
            blocks = b.udiv(size, ir.Constant(I64, lanes))
            rest = b.urem(size, ir.Constant(I64, lanes))
        else:
            blocks, rest = divmod(size, lanes)

        def accumulate(base):
            def lane(j):
                self.memo.clear()
                index = b.add(base, j, flags=["nuw", "nsw"]) if base is not None else j
                b.store(op.lower(em, dtype, b.load(slot(j), typ=ty), element(index)), slot(j))
            return lane

        emit_loop(b, blocks, lambda blk: emit_loop(
            b, lanes, accumulate(b.mul(blk, ir.Constant(I64, lanes), flags=["nuw", "nsw"])), "lane"),
            "block")
        if dynamic:
            emit_loop(b, rest, accumulate(b.mul(blocks, ir.Constant(I64, lanes))), "rest")
        elif rest:
            emit_loop(b, rest, accumulate(ir.Constant(I64, blocks * lanes)), "rest")
        values = [b.load(slot(ir.Constant(I64, j)), typ=ty) for j in range(lanes)]
        while len(values) > 1:
            pairs = [op.lower(em, dtype, values[i], values[i + 1]) for i in range(0, len(values) - 1, 2)]
            values = pairs + ([values[-1]] if len(values) % 2 else [])
        return values[0]

    def finish_partials(self, root, partials):
        """Combine the threads' partial reductions in thread order, finalize and store."""
        g, em = self.g, self.em
        d = g.nodes[root]
        op = get_op(d["op"])
        acc_dtype = np.dtype(compute_dtype(node_typing(g, root)))
        acc = partials[0]
        for p in partials[1:]:
            acc = op.lower(em, acc_dtype, acc, p)
        if op.finalize is not None:
            in_shape = g.nodes[d["args"][0]]["shape"]
            acc = op.finalize(em, acc_dtype, acc, math.prod(in_shape[a] for a in d["attrs"]["axes"]))
        em.store(d["dtype"], em.cast(acc_dtype, d["dtype"], acc), self.pointers[root],
                 ir.Constant(I64, 0))

    def matmul(self, root):
        g, em, b = self.g, self.em, self.b
        mm = MatmulGeometry.of(g, root)
        a, bb, a2, b2, m, k, n, batch = (mm.a, mm.b, mm.a2, mm.b2, mm.m, mm.k, mm.n, mm.batch)
        dtype = np.dtype(g.nodes[root]["dtype"])
        ptr = self.pointers[root]
        a_dtype, b_dtype = g.nodes[a]["dtype"], g.nodes[bb]["dtype"]
        operands_ready = a not in self.members and bb not in self.members
        tile_epilogue = (self._tile_epilogue(self.epilogue_root)[:2]
                         if self.epilogue_root is not None and not batch else None)
        if self.epilogue_root is not None:
            self.epilogue_done = not batch  # both paths below apply it, tile or row
        if isinstance(m, Sym) and operands_ready and uses_gemm(dtype, _typical(m), n, k):
            # One compilation for all row counts: the GEMM for enough rows, else the loop
            # nest (both add in the same order, so results agree bit for bit).
            rows = self.outer[1] if self.outer else size_value(b, m * math.prod(batch))
            if self.outer:
                rows = b.sub(rows, self.outer[0])
            enough = b.and_(b.icmp_signed(">=", rows, ir.Constant(I64, GEMM_MIN_ROWS)),
                            b.icmp_signed(">=", b.mul(rows, ir.Constant(I64, n * k)),
                                          ir.Constant(I64, GEMM_MIN_WORK)))
            with b.if_else(enough) as (gemm, nest):
                with gemm:
                    emit_matmul(em, self.pointers[a], self.pointers[bb], ptr, batch, a2, b2,
                                a_dtype, b_dtype, dtype, rows=self.outer,
                                epilogue=tile_epilogue)
                with nest:
                    self._matmul_nest(root)
            return
        if not isinstance(m, Sym) and uses_gemm(dtype, m, n, k) and operands_ready:
            emit_matmul(em, self.pointers[a], self.pointers[bb], ptr, batch, a2, b2,
                        a_dtype, b_dtype, dtype, rows=self.outer, epilogue=tile_epilogue)
            return
        self._matmul_nest(root)

    def _matmul_nest(self, root):
        """Matmul as a loop nest: C[i, j] = sum over k in ascending order."""
        g, em, b = self.g, self.em, self.b
        mm = MatmulGeometry.of(g, root)
        a, bb, a2, b2, m, k, n, batch = (mm.a, mm.b, mm.a2, mm.b2, mm.m, mm.k, mm.n, mm.batch)
        dtype = np.dtype(g.nodes[root]["dtype"])
        out2 = batch + (m, n)
        ptr = self.pointers[root]
        a_dtype, b_dtype = g.nodes[a]["dtype"], g.nodes[bb]["dtype"]

        def load(node, node_dtype, shape2, index):
            self.memo.clear()
            full = broadcast_index(index, out2[:-2] + shape2[-2:], shape2, em)
            return em.cast(node_dtype, dtype, self.value_promoted(node, full, shape2))

        def per_row(bidx):
            def row(i):
                base = bidx + [i]

                def zero(j):
                    em.store(dtype, em.const(dtype, 0), ptr, em.linearize(base + [j], out2))

                emit_loop(b, n, zero, "z")

                def over_k(kk):
                    av = load(a, a_dtype, a2, bidx + [i, kk])

                    def over_j(j):
                        offset = em.linearize(base + [j], out2)
                        bv = load(bb, b_dtype, b2, bidx + [kk, j])
                        acc = em.load(dtype, ptr, offset)
                        prod = em.and_(av, bv) if dtype.kind == "b" else em.mul(dtype, av, bv)
                        total = em.or_(acc, prod) if dtype.kind == "b" else em.add(dtype, acc, prod)
                        em.store(dtype, total, ptr, offset)

                    emit_loop(b, n, over_j, "j")

                emit_loop(b, k, over_k, "k")
                if self.epilogue_root is not None and not bidx:  # the finished row, in L1
                    epilogue_root = self.epilogue_root
                    emit_loop(b, n, lambda j: self._epilogue_values(epilogue_root, [i, j]),
                              "ej")

            if self.outer is not None:  # this thread's rows (of an unbatched product)
                if batch:
                    raise NotGeneric("a threaded batched matmul needs concrete sizes")
                lo, hi = self.outer
                emit_loop(b, b.sub(hi, lo), row, "m", start=lo)
            else:
                emit_loop(b, m, row, "m")

        emit_nest(b, batch, per_row, "batch")

    def value_promoted(self, node, index, shape2):
        """Load an operand by its 1-d-promoted index (same row-major offsets as its own shape)."""
        d = self.g.nodes[node]
        if node in self.members:
            raise NotImplementedError("matmul operands are materialized by the scheduler")
        return self.em.load(d["dtype"], self.pointers[node], self.em.linearize(index, shape2))

    def concat(self, root):
        g, em = self.g, self.em
        d = g.nodes[root]
        axis = d["attrs"]["axis"]
        ptr = self.pointers[root]
        start = 0
        for a in d["args"]:
            shape = g.nodes[a]["shape"]

            def body(idx, a=a, start=start):
                self.memo.clear()
                x = em.cast(g.nodes[a]["dtype"], d["dtype"], self.value(a, idx))
                out_idx = list(idx)
                out_idx[axis] = em.index_affine(idx[axis], 1, start)
                em.store(d["dtype"], x, ptr, em.linearize(out_idx, d["shape"]))

            emit_nest(self.b, shape, body, f"c{start}_")
            start += shape[axis]


def lower_graph(g, name="symgraph_main", math_impl=None, triple="", num_threads=1,
                check_finite=False, check_sites=None, vector_bytes=None,
                streaming_stores=False) -> ir.Module:
    """The LLVM module for a typed, scheduled and planned graph. `vector_bytes`, the
    target's SIMD register size, lets large graphs fix their loops' vector width;
    `streaming_stores` (x86 targets) lets large flat loops bypass the cache (see
    STREAM_MIN_BYTES)."""
    total = _total_nodes(g)
    if total < FIXED_WIDTH_MIN_NODES:
        vector_bytes = None
    # `value` recurses once per fused op: a long fused chain needs a deep Python stack.
    needed = 1000 + 8 * total
    old = sys.getrecursionlimit()
    if needed > old:
        sys.setrecursionlimit(needed)
    try:
        return GraphLowering(g, name, math_impl, triple, num_threads=num_threads,
                             check_finite=check_finite, check_sites=check_sites,
                             outline_math=_math_calls(g) > OUTLINE_MATH_CALLS,
                             vector_bytes=vector_bytes,
                             streaming_stores=streaming_stores).lower()
    finally:
        if needed > old:
            sys.setrecursionlimit(old)


def _math_calls(g) -> int:
    """Transcendental ops (exp, tanh, pow, ...) in the graph and its bodies."""
    from .mathlib import MATH_FUNCTIONS

    total = 0
    for _, d in g.nodes(data=True):
        total += d["op"] in MATH_FUNCTIONS
        for body in d["attrs"].get("bodies", ()) if isinstance(d.get("attrs"), dict) else ():
            if hasattr(body, "number_of_nodes"):
                total += _math_calls(body)
    return total


def _total_nodes(g) -> int:
    total = g.number_of_nodes()
    for _, d in g.nodes(data=True):
        for body in d["attrs"].get("bodies", ()) if isinstance(d.get("attrs"), dict) else ():
            if hasattr(body, "number_of_nodes"):
                total += _total_nodes(body)
    return total


__all__ = ["lower_graph", "memory_type", "I64"]
