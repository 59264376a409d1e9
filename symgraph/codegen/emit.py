"""The emitter: the small typed vocabulary op lowerings are written in.

It wraps an llvmlite IRBuilder and knows how each numpy dtype lives in registers (bool is
i1) and in memory (bool is one byte). Ops never see llvmlite; they call these methods.
Floating-point instructions carry no fast-math flags: results must match numpy's.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir

from ..shapes import Sym
from .loops import size_value

I1, I8, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
F32, F64 = ir.FloatType(), ir.DoubleType()
PTR = ir.PointerType()

_REGISTER_TYPES = {"b": {1: I1}, "i": {4: I32, 8: I64}, "f": {4: F32, 8: F64}}


def register_type(dtype) -> ir.Type:
    dtype = np.dtype(dtype)
    return _REGISTER_TYPES[dtype.kind][dtype.itemsize]


def memory_type(dtype) -> ir.Type:
    dtype = np.dtype(dtype)
    return I8 if dtype.kind == "b" else register_type(dtype)


def declare(module: ir.Module, name: str, ret: ir.Type, args) -> ir.Function:
    """The module's function `name`, declared with this signature if it is not there yet
    (libc and runtime functions the generated code calls)."""
    found = module.globals.get(name)
    return found or ir.Function(module, ir.FunctionType(ret, list(args)), name)


def call_pointer(b: ir.IRBuilder, pointer, fnty: ir.FunctionType, args):
    """Call through a function pointer (a `ptr` value, or an integer address). The pointer
    is cast to a typed pointer only because llvmlite reads the signature from it; LLVM
    reads any pointer type as `ptr`."""
    address = pointer if isinstance(pointer.type, ir.IntType) else b.ptrtoint(pointer, I64)
    return b.call(b.inttoptr(address, fnty.as_pointer()), args)


class Emitter:
    """Typed instructions at the builder's insertion point; `status` receives error codes."""

    def __init__(self, builder: ir.IRBuilder, status_ptr=None, math_impl=None):
        self.b = builder
        self.status_ptr = status_ptr
        self.math_impl = math_impl  # callable(builder, name, *args) for transcendental math

    # --- constants and memory --------------------------------------------------------------
    def const(self, dtype, value):
        dtype = np.dtype(dtype)
        ty = register_type(dtype)
        if isinstance(value, Sym):  # a symbolic size (a mean's count): known at run time
            return self.cast(np.dtype(np.int64), dtype, size_value(self.b, value))
        if dtype.kind == "b":
            return ir.Constant(ty, int(bool(value)))
        if dtype.kind == "i":
            return ir.Constant(ty, int(value) & ((1 << ty.width) - 1))
        return ir.Constant(ty, float(value))

    def load(self, dtype, ptr, offset):
        mem = memory_type(dtype)
        value = self.b.load(self.b.gep(ptr, [offset], source_etype=mem, inbounds=True), typ=mem)
        return self.b.trunc(value, I1) if np.dtype(dtype).kind == "b" else value

    def store(self, dtype, value, ptr, offset, nontemporal=False):
        """ptr[offset] = value. `nontemporal` makes it a streaming store declared 64-byte
        aligned: only for loops whose vector stores start on a 64-byte boundary and step by
        whole vectors (LLVM vectorizes non-temporal stores only when so told; a scalar
        remainder store has no alignment requirement on x86)."""
        mem = memory_type(dtype)
        if np.dtype(dtype).kind == "b":
            value = self.b.zext(value, I8)
        store = self.b.store(value, self.b.gep(ptr, [offset], source_etype=mem, inbounds=True),
                             align=64 if nontemporal else None)
        if nontemporal:
            store.set_metadata("nontemporal",
                               self.b.module.add_metadata([ir.Constant(I32, 1)]))

    # --- arithmetic --------------------------------------------------------------------------
    def add(self, d, a, b):
        return self.b.fadd(a, b) if d.kind == "f" else self.b.add(a, b)

    def sub(self, d, a, b):
        return self.b.fsub(a, b) if d.kind == "f" else self.b.sub(a, b)

    def mul(self, d, a, b):
        return self.b.fmul(a, b) if d.kind == "f" else self.b.mul(a, b)

    def div(self, d, a, b):
        return self.b.fdiv(a, b)

    def neg(self, d, a):
        return self.b.fneg(a) if d.kind == "f" else self.b.sub(ir.Constant(a.type, 0), a)

    def abs(self, d, a):
        if d.kind == "f":
            return self._intrinsic("llvm.fabs", a)
        return self.b.select(self.b.icmp_signed("<", a, ir.Constant(a.type, 0)), self.neg(d, a), a)

    def sdiv(self, d, a, b):
        return self.b.sdiv(a, b)

    def srem(self, d, a, b):
        return self.b.srem(a, b)

    def fmod(self, d, a, b):
        return self.b.frem(a, b)

    def lshr(self, d, a, bits):
        return self.b.lshr(a, ir.Constant(a.type, bits))

    def floor(self, d, a):
        return self._intrinsic("llvm.floor", a)

    def sqrt(self, d, a):
        return self._intrinsic("llvm.sqrt", a)

    def copysign(self, d, a, b):
        return self._intrinsic("llvm.copysign", a, b)

    def math(self, name, d, *args):
        if self.math_impl is not None:
            return self.math_impl(self.b, name, *args)
        return _libm_call(self.b, name, *args)

    # --- comparison and logic ------------------------------------------------------------------
    def cmp(self, pred, d, a, b):
        if d.kind == "f":
            # numpy: every comparison with NaN is false, except != which is true.
            if pred == "!=":
                return self.b.fcmp_unordered("!=", a, b)
            return self.b.fcmp_ordered(pred, a, b)
        if d.kind == "b":
            return self.b.icmp_unsigned(pred, a, b)
        return self.b.icmp_signed(pred, a, b)

    def isnan(self, d, a):
        return self.b.fcmp_unordered("uno", a, a)

    def select(self, cond, a, b):
        return self.b.select(cond, a, b)

    def and_(self, a, b):
        return self.b.and_(a, b)

    def or_(self, a, b):
        return self.b.or_(a, b)

    def xor(self, a, b):
        return self.b.xor(a, b)

    def not_(self, a):
        return self.b.not_(a)

    # --- conversion --------------------------------------------------------------------------
    def cast(self, src, dst, x):
        """numpy's astype for one value (float to int out of range gives INT_MIN, like numpy on x86)."""
        src, dst = np.dtype(src), np.dtype(dst)
        if src == dst:
            return x
        to = register_type(dst)
        if dst.kind == "b":
            if src.kind == "f":
                return self.b.fcmp_unordered("!=", x, ir.Constant(x.type, 0.0))
            return self.b.icmp_unsigned("!=", x, ir.Constant(x.type, 0))
        if src.kind == "b":
            return self.b.zext(x, to) if dst.kind == "i" else self.b.uitofp(x, to)
        if src.kind == "i" and dst.kind == "i":
            return self.b.sext(x, to) if dst.itemsize > src.itemsize else self.b.trunc(x, to)
        if src.kind == "i":
            return self.b.sitofp(x, to)
        if dst.kind == "f":
            return self.b.fpext(x, to) if dst.itemsize > src.itemsize else self.b.fptrunc(x, to)
        bits = dst.itemsize * 8
        lo, hi = ir.Constant(x.type, -(2.0 ** (bits - 1))), ir.Constant(x.type, 2.0 ** (bits - 1))
        in_range = self.b.and_(self.b.fcmp_ordered(">=", x, lo), self.b.fcmp_ordered("<", x, hi))
        # fptosi of an out-of-range value is poison; select keeps it out of the result.
        return self.b.select(in_range, self.b.fptosi(x, to), ir.Constant(to, -(2 ** (bits - 1))))

    # --- index arithmetic (i64) --------------------------------------------------------------
    def index_const(self, value):
        return size_value(self.b, value)

    def index_affine(self, i, scale, offset):
        if scale != 1:
            i = self.b.mul(i, size_value(self.b, scale), flags=["nsw"])
        if offset != 0:
            i = self.b.add(i, size_value(self.b, offset), flags=["nsw"])
        return i

    def linearize(self, index, shape):
        """Row-major offset of a multi-index (size-1 axes contribute nothing)."""
        offset, stride = None, 1
        for i, size in reversed(list(zip(index, shape))):
            if size != 1:
                term = self.index_affine(i, stride, 0)
                offset = term if offset is None else self.b.add(offset, term, flags=["nsw"])
            stride *= size
        return offset if offset is not None else ir.Constant(I64, 0)

    def delinearize(self, linear, shape):
        out, stride = [], math.prod(shape)
        for size in shape:
            stride //= size if size != 0 else 1
            if size == 1:
                out.append(ir.Constant(I64, 0))
                continue
            q = self.b.udiv(linear, size_value(self.b, stride)) if stride != 1 else linear
            out.append(self.b.urem(q, size_value(self.b, size)) if out else q)
        return out

    # --- errors ------------------------------------------------------------------------------
    def raise_if(self, cond, code):
        """Record error `code` in the status word when `cond` holds (checked after the kernel)."""
        if self.status_ptr is None:
            return
        with self.b.if_then(cond, likely=False):
            self.b.store(ir.Constant(I32, code), self.status_ptr)

    def prefetch(self, ptr):
        """A read prefetch of `ptr`'s cache line into every level; it never faults, so it may
        point past the data."""
        fn = declare(self.b.module, "llvm.prefetch.p0", ir.VoidType(), [PTR, I32, I32, I32])
        self.b.call(fn, [ptr, ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)])

    def _intrinsic(self, name, *args):
        ty = args[0].type
        fnty = ir.FunctionType(ty, [ty] * len(args))
        fn = self.b.module.declare_intrinsic(name, [ty], fnty)
        return self.b.call(fn, args)


_LIBM_NAMES = {"exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sin", "cos", "tan",
               "sinh", "cosh", "tanh", "pow"}


def _libm_call(builder, name, *args):
    """Fallback: a scalar C math library call (correct, but stops vectorization)."""
    ty = args[0].type
    if name == "sigmoid":
        (x,) = args
        one = ir.Constant(ty, 1.0)
        return builder.fdiv(one, builder.fadd(one, _libm_call(builder, "exp", builder.fneg(x))))
    if name not in _LIBM_NAMES:
        raise NotImplementedError(name)
    symbol = name + ("f" if ty == F32 else "")
    module = builder.module
    fn = module.globals.get(symbol) or ir.Function(module, ir.FunctionType(ty, [ty] * len(args)), symbol)
    return builder.call(fn, args)
