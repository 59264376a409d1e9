"""A native call entry: Python calls compiled code without ctypes or a Python frame.

For a small model a call's cost is mostly dispatch: binding arguments in Python, looking up
the specialization, and ctypes converting arguments (about 1 us of a 4 us MLP forward).
This module generates, next to each specialization's kernels, a CPython ``METH_FASTCALL |
METH_KEYWORDS`` function that does that work in native code for the common case: exactly the
declared inputs, positionally or by name, each a C-contiguous, aligned ``numpy.ndarray``
of the specialization's dtype and shape. It allocates the outputs through ``numpy.empty``
(or, for a single output, takes the caller's ``out=`` array when it has the output's exact
type, shape and C layout, is writeable and overlaps no input), releases the GIL around the
kernels and returns the outputs in the function's output structure (an array, or a tuple,
list or dict of them). Anything else (other shapes, an ``out=`` that needs checking or a
temporary, lists, a failing status) goes to the Python dispatcher unchanged, which checks,
reports errors and, for a failed status, runs the call again to raise the right error.

The code reads CPython and numpy object fields at offsets probed at import (`LAYOUT`);
when probing fails, or with ``SYMGRAPH_NATIVE_CALL=0``, the Python dispatcher serves all
calls. Process-specific addresses (type objects, functions, interned names) are not in the
code, which the disk cache stores: they are words of a context array passed as ``self``.
"""
from __future__ import annotations

import ctypes
import os
import sys
import sysconfig

import numpy as np
from llvmlite import ir

from ..codegen.emit import I32, I64, PTR, call_pointer
from ..shapes import contiguous_strides

METH_FASTCALL_KEYWORDS = 0x0080 | 0x0002
NPY_ARRAY_ALIGNED = 0x0100
NPY_ARRAY_WRITEABLE = 0x0400


def _probe_layout():
    """Field offsets in CPython tuples and numpy arrays, found on live objects; None when
    something does not look as expected (then no native entries are made)."""
    if (sys.implementation.name != "cpython" or ctypes.sizeof(ctypes.c_void_p) != 8
            or sysconfig.get_config_var("Py_GIL_DISABLED")):
        return None
    word = lambda address: ctypes.c_int64.from_address(address).value
    probe = np.zeros((3, 5, 7), np.float32)
    names = ("first_name", "second_name")
    layout = {"type": 8, "tuple_size": 16, "tuple_items": 24}
    if word(id(probe) + 8) != id(np.ndarray) or word(id(names) + 16) != 2 or \
            word(id(names) + 24) != id(names[0]) or word(id(names) + 32) != id(names[1]):
        return None
    for offset in range(16, 96, 8):
        value = word(id(probe) + offset)
        if value == probe.ctypes.data:
            layout.setdefault("data", offset)
        elif value & 0xFFFFFFFF == 3 and "nd" not in layout:
            layout["nd"] = offset
        elif value == id(probe.dtype):
            layout.setdefault("descr", offset)
        elif value & 0xFFFFFFFF == probe.flags.num and "descr" in layout:
            layout.setdefault("flags", offset)
        elif "nd" in layout and "dims" not in layout and value and \
                [word(value + 8 * i) for i in range(3)] == list(probe.shape):
            layout["dims"] = offset
        elif "dims" in layout and "strides" not in layout and value and \
                [word(value + 8 * i) for i in range(3)] == list(probe.strides):
            layout["strides"] = offset
    needed = ("data", "nd", "dims", "strides", "descr", "flags")
    return layout if all(k in layout for k in needed) else None


LAYOUT = _probe_layout()
ENABLED = LAYOUT is not None and os.environ.get("SYMGRAPH_NATIVE_CALL", "1") != "0"
LAYOUT_KEY = tuple(sorted(LAYOUT.items())) if ENABLED else None

# Words of the context array, then two per input (dtype, interned name) and three per
# output (shape tuple and dtype, the arguments of numpy.empty; its dict key, or 0).
(_FALLBACK, _NDARRAY, _VECTORCALL, _SAVE_THREAD, _RESTORE_THREAD, _DECREF, _HITS, _EMPTY,
 _COMPARE, _NEW, _SET_ITEM, _OUT_NAME, _NONE, _INCREF) = range(14)
_HEADER_WORDS = 14
# How outputs are returned: the C-API constructor and setter of each structure.
_PACKERS = {"tuple": ("PyTuple_New", "PyTuple_SetItem"), "list": ("PyList_New", "PyList_SetItem"),
            "dict": ("PyDict_New", "PyDict_SetItem")}


OUT_NAME = sys.intern("out")


def entry_name(name: str) -> str:
    return f"{name}.vectorcall"


def add_native_entry(module: ir.Module, name: str, in_types, out_types, kind: str = "single"
                     ) -> str | None:
    """Add the native call entry for inputs and outputs of the given C-contiguous
    [(shape, dtype)], the outputs returned as `kind` ("single", "tuple", "list" or "dict",
    as compile()'s output structures), around the kernel entry `name`; returns its symbol
    (None when off)."""
    n_out = len(out_types)
    if not ENABLED or (kind == "single") != (n_out == 1):
        return None
    inner = module.get_global(name)
    fn = ir.Function(module, ir.FunctionType(PTR, [PTR, PTR, I64, PTR]), entry_name(name))
    self_obj, args, nargs, kwnames = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    fallback_bb = fn.append_basic_block("fallback")
    c = lambda v: ir.Constant(I64, v)

    def field(obj, offset, ty=PTR):
        return b.load(b.gep(obj, [c(offset)], source_etype=ir.IntType(8)), typ=ty)

    def item(base, index, ty=PTR):
        return b.load(b.gep(base, [index if isinstance(index, ir.Value) else c(index)],
                            source_etype=ty), typ=ty)

    def require(ok):
        good = fn.append_basic_block("ok")
        b.cbranch(ok, good, fallback_bb)
        b.position_at_end(good)

    ctx = field(self_obj, LAYOUT["data"])
    n_in = len(in_types)
    takes_out = kind == "single"  # out= for one output: the caller's array, when it fits
    # Bind: positional arguments first, then keywords, matched to the interned names by
    # identity, else by text. A keyword `out` fills one more slot, after the inputs.
    require(b.icmp_signed("<=", nargs, c(n_in)))
    n_kw_slot = b.alloca(I64, name="n_kw")
    b.store(c(0), n_kw_slot)
    with b.if_then(b.icmp_unsigned("!=", kwnames, ir.Constant(PTR, None))):
        b.store(field(kwnames, LAYOUT["tuple_size"], I64), n_kw_slot)
    n_kw = b.load(n_kw_slot, typ=I64)
    require(b.icmp_signed("<=", b.add(nargs, n_kw), c(n_in + takes_out)))
    slots = []
    for i in range(n_in + takes_out):
        slot = b.alloca(PTR, name=f"arg{i}")
        positional = b.icmp_signed("<", c(i), nargs)
        b.store(b.select(positional, item(args, b.select(positional, c(i), c(0))),
                         ir.Constant(PTR, None)), slot)
        slots.append(slot)
    names = [_HEADER_WORDS + 2 * i + 1 for i in range(n_in)] + [_OUT_NAME] * takes_out
    if slots:
        kw_loop = fn.append_basic_block("keywords")
        kw_next = fn.append_basic_block("keywords.next")
        kw_done = fn.append_basic_block("keywords.done")
        pre = b.block
        b.cbranch(b.icmp_signed(">", n_kw, c(0)), kw_loop, kw_done)
        b.position_at_end(kw_loop)
        j = b.phi(I64, name="kw")
        j.add_incoming(c(0), pre)
        key_obj = field(b.gep(kwnames, [b.mul(j, c(8))], source_etype=ir.IntType(8)),
                        LAYOUT["tuple_items"])
        key = b.ptrtoint(key_obj, I64)
        value = item(args, b.add(nargs, j))

        def match(same):
            """Put `value` in the first empty slot whose name `same(i)` says is the key."""
            matched = ir.Constant(ir.IntType(1), 0)
            for i in range(len(slots)):
                current = b.load(slots[i], typ=PTR)
                take = b.and_(same(i), b.icmp_unsigned("==", current, ir.Constant(PTR, None)))
                b.store(b.select(take, value, current), slots[i])
                matched = b.or_(matched, take)
            return matched

        by_text = fn.append_basic_block("keywords.by_text")
        b.cbranch(match(lambda i: b.icmp_unsigned("==", key, item(ctx, names[i], I64))),
                  kw_next, by_text)
        # A name that is not the interned string (built at run time, say): compare text.
        b.position_at_end(by_text)
        compare_ty = ir.FunctionType(I32, [PTR, PTR])

        def same_text(i):
            name = b.inttoptr(item(ctx, names[i], I64), PTR)
            result = call_pointer(b, item(ctx, _COMPARE, I64), compare_ty, [key_obj, name])
            return b.icmp_signed("==", result, ir.Constant(I32, 0))

        b.cbranch(match(same_text), kw_next, fallback_bb)  # an unknown or repeated name
        b.position_at_end(kw_next)
        nxt = b.add(j, c(1))
        j.add_incoming(nxt, kw_next)
        b.cbranch(b.icmp_signed("<", nxt, n_kw), kw_loop, kw_done)
        b.position_at_end(kw_done)
    def check_array(a, shape, dtype, descr_word, flag_bits):
        """Fall back unless `a` is exactly an ndarray of this dtype (by descr identity),
        shape and C-contiguous strides, with every bit of `flag_bits` set; its data."""
        require(b.icmp_unsigned("==", field(a, LAYOUT["type"], I64), item(ctx, _NDARRAY, I64)))
        require(b.icmp_unsigned("==", field(a, LAYOUT["descr"], I64), item(ctx, descr_word, I64)))
        require(b.icmp_unsigned("==", field(a, LAYOUT["nd"], I32), ir.Constant(I32, len(shape))))
        flags = field(a, LAYOUT["flags"], I32)
        require(b.icmp_unsigned("==", b.and_(flags, ir.Constant(I32, flag_bits)),
                                ir.Constant(I32, flag_bits)))
        if shape:
            dims, strides = field(a, LAYOUT["dims"]), field(a, LAYOUT["strides"])
            expected = contiguous_strides(shape, np.dtype(dtype).itemsize)
            for d, (size, stride) in enumerate(zip(shape, expected)):
                require(b.icmp_unsigned("==", item(dims, d, I64), c(size)))
                require(b.icmp_unsigned("==", item(strides, d, I64), c(stride)))
        return field(a, LAYOUT["data"])

    # Check every input against the specialization: exact type, dtype, shape and strides.
    data = []
    for i, (shape, dtype) in enumerate(in_types):
        a = b.load(slots[i], typ=PTR)
        require(b.icmp_unsigned("!=", a, ir.Constant(PTR, None)))
        data.append(check_array(a, shape, dtype, _HEADER_WORDS + 2 * i, NPY_ARRAY_ALIGNED))
    # The outputs, from numpy.empty(shape, dtype) (a vectorcall on two context words each).
    vectorcall_ty = ir.FunctionType(PTR, [PTR, PTR, I64, PTR])
    void_of_ptr = ir.FunctionType(ir.VoidType(), [PTR])

    def release(objects):
        for obj in objects:
            call_pointer(b, item(ctx, _DECREF, I64), void_of_ptr, [obj])

    def run_kernels(targets, allocated, into_out=None):
        """Run the kernels (without the GIL, as a ctypes call would) into the output data
        pointers `targets`; on a failing status release `allocated` and fall back. With
        `into_out`, success returns that array (a new reference) at once."""
        state = call_pointer(b, item(ctx, _SAVE_THREAD, I64), ir.FunctionType(PTR, []), [])
        status = b.call(inner, data + targets + [ir.Constant(PTR, None)])
        call_pointer(b, item(ctx, _RESTORE_THREAD, I64), void_of_ptr, [state])
        ok = fn.append_basic_block("done")
        bad = fn.append_basic_block("failed")
        b.cbranch(b.icmp_unsigned("==", status, ir.Constant(I32, 0)), ok, bad)
        b.position_at_end(bad)  # the dispatcher runs the call again and raises its error
        release(allocated)
        b.branch(fallback_bb)
        b.position_at_end(ok)
        hits = b.gep(ctx, [c(_HITS)], source_etype=I64)
        b.store(b.add(b.load(hits, typ=I64), c(1)), hits)
        if into_out is not None:
            call_pointer(b, item(ctx, _INCREF, I64), void_of_ptr, [into_out])
            b.ret(into_out)

    if takes_out:
        given = b.load(slots[n_in], typ=PTR)
        absent = b.or_(b.icmp_unsigned("==", given, ir.Constant(PTR, None)),
                       b.icmp_unsigned("==", b.ptrtoint(given, I64), item(ctx, _NONE, I64)))
        into_out = fn.append_basic_block("into_out")
        fresh = fn.append_basic_block("fresh_output")
        b.cbranch(absent, fresh, into_out)
        b.position_at_end(into_out)
        out_shape, out_dtype = out_types[0]
        target = check_array(given, out_shape, out_dtype, _HEADER_WORDS + 2 * n_in + 1,
                             NPY_ARRAY_ALIGNED | NPY_ARRAY_WRITEABLE)
        out_bytes = int(np.prod(out_shape, dtype=np.int64)) * np.dtype(out_dtype).itemsize
        lo = b.ptrtoint(target, I64)
        for pointer, (shape, dtype) in zip(data, in_types):
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            if nbytes and out_bytes:  # an input sharing memory with out= needs a temporary
                start = b.ptrtoint(pointer, I64)
                require(b.or_(b.icmp_unsigned("<=", b.add(lo, c(out_bytes)), start),
                              b.icmp_unsigned("<=", b.add(start, c(nbytes)), lo)))
        run_kernels([target], [], into_out=given)
        b.position_at_end(fresh)
    outs = []
    for j in range(n_out):
        out_args = b.gep(ctx, [c(_HEADER_WORDS + 2 * n_in + 3 * j)], source_etype=I64)
        out = call_pointer(b, item(ctx, _VECTORCALL, I64), vectorcall_ty,
                           [b.inttoptr(item(ctx, _EMPTY, I64), PTR), out_args, c(2),
                            ir.Constant(PTR, None)])
        failed_alloc = fn.append_basic_block("no_output")
        allocated = fn.append_basic_block("output")
        b.cbranch(b.icmp_unsigned("==", out, ir.Constant(PTR, None)), failed_alloc, allocated)
        b.position_at_end(failed_alloc)
        release(outs)
        b.ret(ir.Constant(PTR, None))  # numpy set the exception (MemoryError)
        b.position_at_end(allocated)
        outs.append(out)
    run_kernels([field(o, LAYOUT["data"]) for o in outs], outs)
    if kind == "single":
        b.ret(outs[0])
    else:
        # tuple and list setters take over the reference; the dict one adds its own.
        packed = call_pointer(b, item(ctx, _NEW, I64), ir.FunctionType(PTR, [I64]),
                              [c(0 if kind == "dict" else n_out)])
        no_pack = fn.append_basic_block("no_container")
        packing = fn.append_basic_block("container")
        b.cbranch(b.icmp_unsigned("==", packed, ir.Constant(PTR, None)), no_pack, packing)
        b.position_at_end(no_pack)
        release(outs)
        b.ret(ir.Constant(PTR, None))
        b.position_at_end(packing)
        for j, out in enumerate(outs):
            if kind == "dict":
                key = b.inttoptr(item(ctx, _HEADER_WORDS + 2 * n_in + 3 * j + 2, I64), PTR)
                call_pointer(b, item(ctx, _SET_ITEM, I64), ir.FunctionType(I32, [PTR, PTR, PTR]),
                             [packed, key, out])
                release([out])
            else:
                call_pointer(b, item(ctx, _SET_ITEM, I64), ir.FunctionType(I32, [PTR, I64, PTR]),
                             [packed, c(j), out])
        b.ret(packed)
    # Anything unusual: the Python dispatcher, with the call exactly as it came.
    b.position_at_end(fallback_bb)
    b.ret(call_pointer(b, item(ctx, _VECTORCALL, I64), vectorcall_ty,
                       [b.inttoptr(item(ctx, _FALLBACK, I64), PTR), args, nargs, kwnames]))
    return fn.name


class _PyMethodDef(ctypes.Structure):
    _fields_ = [("ml_name", ctypes.c_char_p), ("ml_meth", ctypes.c_void_p),
                ("ml_flags", ctypes.c_int), ("ml_doc", ctypes.c_char_p)]


class _Context(np.ndarray):
    """The entry's context words; its attributes keep everything they point at alive."""


def _address(function_name):
    return ctypes.cast(getattr(ctypes.pythonapi, function_name), ctypes.c_void_p).value


_new_function = ctypes.pythonapi.PyCFunction_NewEx
_new_function.restype = ctypes.py_object
_new_function.argtypes = [ctypes.c_void_p, ctypes.py_object, ctypes.c_void_p]


class NativeCall:
    """The callable for one specialization's native entry, and its hit count."""

    def __init__(self, library, symbol, names, in_types, out_types, fallback, label,
                 kind="single", keys=None):
        descrs = [np.dtype(d) for _, d in in_types]
        interned = [sys.intern(n) for n in names]
        outs = [(tuple(int(n) for n in shape), np.dtype(dtype)) for shape, dtype in out_types]
        keys = list(keys) if keys is not None else [None] * len(outs)
        new, set_item = _PACKERS.get(kind, (None, None))
        words = [id(fallback), id(np.ndarray), _address("PyObject_Vectorcall"),
                 _address("PyEval_SaveThread"), _address("PyEval_RestoreThread"),
                 _address("Py_DecRef"), 0, id(np.empty), _address("PyUnicode_Compare"),
                 _address(new) if new else 0, _address(set_item) if set_item else 0,
                 id(OUT_NAME), id(None), _address("Py_IncRef")]
        for descr, name in zip(descrs, interned):
            words += [id(descr), id(name)]
        for (shape, dtype), key in zip(outs, keys):
            words += [id(shape), id(dtype), id(key) if key is not None else 0]
        context = np.array(words, dtype=np.int64).view(_Context)
        name = label.encode()
        method = _PyMethodDef(name, library.address(symbol), METH_FASTCALL_KEYWORDS, None)
        # Everything the code points at lives as long as the context, which the function
        # object holds as its `self`: the code, the fallback, the dtypes, names and shape.
        context.keep = (library, fallback, descrs, interned, outs, keys, name, method)
        self.context = context
        self.function = _new_function(ctypes.addressof(method), context, None)

    @property
    def hits(self) -> int:
        return int(self.context[_HITS])
