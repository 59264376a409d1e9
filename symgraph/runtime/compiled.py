"""compile() and the compiled function: specialization cache and the per-call path.

A call first reaches a native entry (runtime/native_call.py) that serves the common case,
the declared inputs as C-contiguous arrays of one specialization's types, entirely in
native code. Every other call takes the Python dispatcher: bind arguments, check each
array (dtype, contiguity) in a few attribute reads, look the signature up, allocate
outputs with numpy, and call native code through ctypes with the arrays themselves as
arguments (a generated wrapper reads each array's data pointer). Both release the GIL for
the kernels, so threads run one compiled function in parallel; intermediates live in a
workspace the native code allocates per call.
"""
from __future__ import annotations

import collections
import contextlib
import ctypes
import gc
import inspect
import keyword
import math
import operator
import os
import threading

import numpy as np
from llvmlite import ir

from .. import dtypes as dt
from ..codegen.cpu import host_is_x86, host_vector_bytes, ir_size
from ..codegen.split import split_module
from ..codegen.emit import I32, I64, PTR
from ..codegen.kernel import ERR_NO_MEMORY, ERR_NONFINITE_BASE, lower_graph
from ..errors import (
    ArgumentError,
    DTypeError,
    ExecutionError,
    IndexOutOfRange,
    NonFiniteError,
    OutOfMemory,
    ShapeError,
    SymgraphError,
)
from ..frontend import Constant, Expr, find_variables, to_graph
from ..graph import to_text
from ..infer import check_input, specialize, specialize_generic
from ..shapes import NotGeneric, Sym, contiguous_strides, derived_sizes
from ..shapes import evaluate as evaluate_size
from ..shapes import from_json as size_from_json
from ..shapes import to_json as size_to_json
from ..ops.control import ERR_MAX_ITERS
from ..ops.indexing import ERR_INDEX_OUT_OF_RANGE
from ..ops.elementwise import ERR_NEGATIVE_INT_POWER
from ..passes import VERIFY_DEFAULT, pipeline, run_passes
from . import cache as persistent_cache
from . import worker
from . import native_call
from .native_call import NativeCall, add_native_entry

CacheInfo = collections.namedtuple("CacheInfo", ["hits", "misses", "compilations"])

_SUPPORTED = frozenset(dt.SUPPORTED)
DUMP_DIR = os.environ.get("SYMGRAPH_DUMP_DIR") or None


def _array_data_offset() -> int:
    """Byte offset of the data pointer inside a numpy array object (found, not assumed)."""
    probe = np.arange(3.0)
    want = probe.ctypes.data
    for offset in range(8, 128, 8):
        if ctypes.c_void_p.from_address(id(probe) + offset).value == want:
            return offset
    raise ImportError("symgraph cannot locate the data pointer in numpy arrays")


DATA_OFFSET = _array_data_offset()


def _math_impl():
    try:
        from ..codegen.mathlib import emit_math
    except ImportError:
        return None
    return emit_math


# --- output structure ------------------------------------------------------------------------

class OutputStructure:
    """How compile()'s outputs were given (one, tuple, list or dict) and how to repack them."""

    def __init__(self, kind, exprs, keys=None):
        self.kind, self.exprs, self.keys = kind, list(exprs), keys

    @classmethod
    def of(cls, outputs):
        if len(outputs) == 1:
            (only,) = outputs
            if isinstance(only, dict):
                return cls("dict", [_as_output(v) for v in only.values()], list(only))
            if isinstance(only, (list, tuple)):
                return cls(type(only).__name__, [_as_output(v) for v in only])
            return cls("single", [_as_output(only)])
        if not outputs:
            raise ArgumentError("compile() needs at least one output expression")
        return cls("tuple", [_as_output(v) for v in outputs])

    def pack(self, values):
        if self.kind == "single":
            return values[0]
        if self.kind == "dict":
            return dict(zip(self.keys, values))
        return tuple(values) if self.kind == "tuple" else list(values)

    def unpack(self, out):
        """The flat list of out= arrays, in output order."""
        if self.kind == "single":
            return [out]
        if self.kind == "dict":
            if not isinstance(out, dict) or set(out) != set(self.keys):
                raise ArgumentError(f"out= must be a dict with keys {self.keys}")
            return [out[k] for k in self.keys]
        if not isinstance(out, (list, tuple)) or len(out) != len(self.exprs):
            raise ArgumentError(f"out= must be a sequence of {len(self.exprs)} arrays")
        return list(out)


def _as_output(value):
    if isinstance(value, Expr):
        if value.op == "scalar":
            # A weak Python number standing alone (an operand taken out of an expression,
            # or a loaded file's output): the 0-d array numpy makes of it.
            return Constant(np.asarray(value.attrs["value"]))
        return value
    raise ArgumentError(f"compile() outputs must be expressions, got {type(value).__name__}")


# --- input checking ----------------------------------------------------------------------------

def bind_signature(names, unknown, missing):
    if unknown:
        raise ArgumentError(f"unknown input(s) {', '.join(map(repr, unknown))}; "
                            f"inputs are {', '.join(names) or '(none)'}")
    if missing:
        raise ArgumentError(f"missing input(s) {', '.join(map(repr, missing))}; "
                            f"inputs are {', '.join(names)}")


def bind_arguments(fn_name, inputs, args, kwargs) -> list:
    """Positional and named arguments as one value per input, in input order; missing,
    unknown, repeated and surplus arguments are errors naming the inputs."""
    n = len(inputs)
    if len(args) > n:
        raise ArgumentError(f"{fn_name} takes {n} input(s) ({', '.join(inputs)}), "
                            f"got {len(args)} positional")
    values = dict(zip(inputs, args))
    for key, value in kwargs.items():
        if key not in inputs:
            bind_signature(inputs, [key], [])
        if key in values:
            raise ArgumentError(f"input {key!r} given twice (by position and by name)")
        values[key] = value
    bind_signature(inputs, [], [name for name in inputs if name not in values])
    return [values[name] for name in inputs]


def prepare_input(name, value, loc=None, declared=None) -> np.ndarray:
    """An aligned, C-contiguous, native-order array of a supported dtype, or a clear error.

    `declared` is the Variable's (shape, dtype) declaration: checked before any copy, so a
    wrong (perhaps enormous, strided) input is an error rather than a huge allocation."""
    if type(value) is not np.ndarray:
        if isinstance(value, Expr):
            raise ArgumentError(f"input {name!r} is a symbolic expression, not an array",
                                locs=(loc,), hint="call with numpy arrays or Python scalars")
        try:
            value = np.asarray(value)
        except Exception as exc:  # noqa: BLE001  (any failure of __array__ & co.)
            raise ArgumentError(f"input {name!r} is not array-like: {exc}", locs=(loc,)) from None
        if value.dtype.kind in "OUSVMmc" or value.dtype.kind not in "bif":
            raise ArgumentError(f"input {name!r} is not a numeric array (got {value.dtype} "
                                f"from {type(value).__name__})", locs=(loc,))
    dtype = value.dtype
    if dtype not in _SUPPORTED:
        if dtype.byteorder not in "=|" and dtype.newbyteorder("=") in _SUPPORTED:
            value = value.astype(dtype.newbyteorder("="))
        else:
            dt.check_supported(dtype, what=f"input {name!r}: dtype",
                               hint="convert it with .astype('float64') or another supported dtype")
    flags = value.flags
    if not (flags.c_contiguous and flags.aligned):
        if declared is not None:
            check_input(name, declared[0], declared[1], value.shape,
                        value.dtype.newbyteorder("="), loc)
        value = np.array(value, order="C", copy=True)
    return value


# --- executables ------------------------------------------------------------------------------

class _Stages(dict):
    """Stage name -> graph text, rendered when first read (passes never mutate their input,
    so keeping the graphs is safe; rendering every stage would dominate cached compiles)."""

    def __getitem__(self, key):
        value = super().__getitem__(key)
        if not isinstance(value, str):
            value = to_text(value)
            self[key] = value
        return value

    def get(self, key, default=None):
        return self[key] if key in self else default

    def values(self):
        return [self[k] for k in self]

    def items(self):
        return [(k, self[k]) for k in self]


class Executable:
    """Native code for one input signature, with the typed graph and its stages."""

    extra = ()  # arguments after the workspace: the size values, for shape-generic code

    def __init__(self, g, pass_log, library, cfunc, out_types, stages):
        # The workspace comes from numpy's allocator (huge pages for big buffers), per call.
        self.workspace_bytes = g.graph.get("workspace_bytes", 0)
        self.graph = g
        self.pass_log = pass_log
        self.library = library
        self.cfunc = cfunc
        self.out_types = out_types
        self.stages = stages
        self.hits = 0
        self.check_sites = []  # with check_finite: (graph, node) per number native code reports

    @property
    def memory_plan(self):
        plan = dict(self.graph.graph.get("memory_plan", {}))
        plan["buffers"] = {n: self.graph.nodes[n]["buffer"] for n in self.graph.nodes
                           if "buffer" in self.graph.nodes[n]}
        return plan



class GenericExecutable:
    """Native code for every size of the open (None or named) axes: the sizes are passed at
    run time. `input_shapes` holds each input's shape with a Sym per open axis (after the
    rules identified axes that must agree); a call binds the symbols from its arrays."""

    MAX_BOUND = 4096  # distinct shapes whose bindings are kept for the fast path

    def __init__(self, exe, input_shapes, symbols, layout):
        self.exe = exe
        self.input_shapes = input_shapes
        self.symbols = symbols
        self.out_types = layout["out_types"]
        self.workspace = layout["workspace"]
        self.derived = layout["derived"]

    @staticmethod
    def layout(g):
        """What a call needs besides the code: output types and workspace size (in the size
        symbols), and the derived sizes (shapes.derived_sizes) that some inputs would make
        negative: such calls get concrete code, and its error."""
        return {"out_types": [(g.nodes[o]["shape"], g.nodes[o]["dtype"])
                              for o in g.graph["outputs"]],
                "workspace": g.graph.get("workspace_bytes", 0),
                "derived": derived_sizes(g)}

    @staticmethod
    def layout_to_json(layout):
        return {"out_types": [[[size_to_json(d) for d in shape], dtype.str]
                              for shape, dtype in layout["out_types"]],
                "workspace": size_to_json(layout["workspace"]),
                "derived": [size_to_json(d) for d in layout["derived"]]}

    @staticmethod
    def layout_from_json(meta):
        return {"out_types": [(tuple(size_from_json(d) for d in shape), np.dtype(dtype))
                              for shape, dtype in meta["out_types"]],
                "workspace": size_from_json(meta["workspace"]),
                "derived": [size_from_json(d) for d in meta["derived"]]}

    def bind(self, arrays):
        """{symbol: size} for these arrays, or None when they break a constraint (an axis
        the rules identified with another, or with a fixed size, differs)."""
        values = {}
        for array, shape in zip(arrays, self.input_shapes):
            if array.ndim != len(shape):
                return None
            for want, got in zip(shape, array.shape):
                if isinstance(want, Sym):
                    if values.setdefault(want.name, got) != got:
                        return None
                elif want != got:
                    return None
        if any(d.evaluate(values) < 0 for d in self.derived):
            return None
        return values

    def bound(self, values):
        """An executable-like object for one binding, as the dispatcher calls it."""
        return _BoundShape(self, values)


class _BoundShape:
    """Generic code with its size values fixed: what the dispatcher finds for one shape."""

    def __init__(self, generic, values):
        self.generic = generic
        self.executable = generic.exe
        self.check_sites = generic.exe.check_sites
        self.out_types = [(tuple(evaluate_size(d, values) for d in shape), dtype)
                          for shape, dtype in generic.out_types]
        _check_output_memory(self.out_types)
        self.workspace_bytes = evaluate_size(generic.workspace, values)
        self.cfunc = generic.exe.cfunc
        self.values = values
        self.extra = (np.array([values[s] for s in generic.symbols], dtype=np.int64),)
        self.hits = 0

    @property
    def graph(self):
        return self.executable.graph


class _CachedExecutable(Executable):
    """Native code loaded from the persistent cache: the graph stages are rebuilt lazily."""

    def __init__(self, optimize, library, cfunc, out_types, workspace_bytes):
        self._optimize, self._optimized = optimize, None
        self.library, self.cfunc, self.out_types = library, cfunc, out_types
        self.workspace_bytes = workspace_bytes
        self.hits = 0
        self.check_sites = []

    def _result(self):
        if self._optimized is None:
            self._optimized = self._optimize()
        return self._optimized

    graph = property(lambda self: self._result()[0])
    pass_log = property(lambda self: self._result()[1])
    stages = property(lambda self: self._result()[2])

MAX_THREADS = 1024  # num_threads above this is a mistake, not a machine


def check_num_threads(num_threads, where=""):
    """An ArgumentError unless `num_threads` is an int from 1 to MAX_THREADS (not a bool)."""
    if not isinstance(num_threads, int) or isinstance(num_threads, bool) or \
            not 1 <= num_threads <= MAX_THREADS:
        raise ArgumentError(f"{where}num_threads must be an integer from 1 to {MAX_THREADS}, "
                            f"got {num_threads!r}")

# Modules this large are split and their parts compiled in parallel (runtime/worker.py).
SPLIT_MIN_INSTRUCTIONS = 4_000
# Graphs this large start compile workers before their passes run, so that the workers are
# ready when the module's parts are.
PRESTART_MIN_NODES = 800


def _prestart_workers(g):
    if g.number_of_nodes() >= PRESTART_MIN_NODES and worker.parallel_parts() > 1:
        worker.prestart(worker.usable_cores() - 1)


def _code_library(module, name, key=None, meta=None):
    """Machine code for a module, loaded here. A large module is split and its parts are
    compiled in parallel; with a cache `key`, the object files are stored under it too."""
    text = str(module)
    size = ir_size(text)
    parts = worker.parallel_parts() if size >= SPLIT_MIN_INSTRUCTIONS else 1
    texts = split_module(text, parts) if parts > 1 else [text]
    objects = worker.compile_parts(texts, size)
    library = persistent_cache.ObjectLibrary(objects, text, name)
    if key is not None:
        persistent_cache.write(key, objects, text, meta)
    return library


def _add_python_entry(module: ir.Module, name: str, workspace_at: int | None = None) -> str:
    """A wrapper taking numpy array objects (the inputs, the outputs, a workspace placeholder
    at `workspace_at`, and for shape-generic code the size values): it reads their data
    pointers, so Python never extracts a pointer itself."""
    inner = module.get_global(name)
    wrapper = ir.Function(module, ir.FunctionType(I32, [PTR] * len(inner.args)), f"{name}.py")
    b = ir.IRBuilder(wrapper.append_basic_block("entry"))
    pointers = []
    for arg in wrapper.args:
        field = b.gep(arg, [ir.Constant(I64, DATA_OFFSET)], source_etype=ir.IntType(8))
        pointers.append(b.load(field, typ=PTR))
    if workspace_at is not None:
        # The workspace is allocated by the code itself (a NULL workspace argument): cheaper
        # than numpy allocating one per call, and private to the call.
        pointers[workspace_at] = ir.Constant(PTR, None)
    b.ret(b.call(inner, pointers))
    return wrapper.name


_NO_WORKSPACE = np.empty(0, np.uint8)  # the placeholder calls pass: the code allocates its own


_STATUS_MESSAGES = {
    ERR_NEGATIVE_INT_POWER: "pow: integers to negative integer powers are not allowed",
    ERR_NO_MEMORY: "out of memory allocating the workspace for intermediates",
    ERR_MAX_ITERS: "while_loop reached max_iters before its condition became false",
}


def _call_signature(names):
    """What inspect.signature(f) shows: the inputs by position or name, then out=."""
    P = inspect.Parameter
    if not all(n.isidentifier() and not keyword.iskeyword(n) and n != "out" for n in names):
        return inspect.Signature([P("args", P.VAR_POSITIONAL), P("kwargs", P.VAR_KEYWORD)])
    return inspect.Signature([P(n, P.POSITIONAL_OR_KEYWORD) for n in names]
                             + [P("out", P.KEYWORD_ONLY, default=None)])


def _contiguous_key(types):
    """The specialization key of C-contiguous arrays of the given shapes and dtypes."""
    key = []
    for shape, dtype in types:
        dtype = np.dtype(dtype)
        key += (dtype, tuple(shape), contiguous_strides(shape, dtype.itemsize))
    return tuple(key)


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 48


def _check_call_memory(g):
    """Refuse, before any allocation, a call whose outputs alone exceed physical memory."""
    _check_output_memory([(g.nodes[o]["shape"], g.nodes[o]["dtype"]) for o in g.graph["outputs"]
                          if not isinstance(g.nodes[o]["dtype"], tuple)])


def _check_output_memory(out_types):
    need = sum(math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in out_types)
    if need > _physical_memory():
        shapes = ", ".join(str(shape) for shape, _ in out_types)
        raise OutOfMemory(f"the outputs of this call need {need / 2**30:.1f} GiB (shapes "
                          f"{shapes}), more than this machine's memory",
                          hint="check the input shapes: broadcasting may have made them huge")


def _fail(status, exe=None, arrays=()):
    if exe is not None and status >= ERR_NONFINITE_BASE and exe.check_sites:
        raise _nonfinite_error(exe, status - ERR_NONFINITE_BASE, arrays)
    if status == ERR_INDEX_OUT_OF_RANGE:
        raise IndexOutOfRange("take: an index is out of range for its axis")
    raise ExecutionError(_STATUS_MESSAGES.get(status, f"native code failed with status {status}"))


def _summary(value) -> str:
    value = np.asarray(value)
    if value.size == 0:
        return f"{value.dtype}{list(value.shape)} (empty)"
    if value.dtype.kind != "f":
        return f"{value.dtype}{list(value.shape)} in [{value.min()}, {value.max()}]"
    finite = value[np.isfinite(value)]
    span = f"finite values in [{finite.min():.6g}, {finite.max():.6g}]" if finite.size else "no finite values"
    return (f"{value.dtype}{list(value.shape)}: {span}, {int(np.isnan(value).sum())} NaN, "
            f"{int(np.isinf(value).sum())} inf")


def _nonfinite_error(exe, site, arrays):
    """Name the node check_finite caught, with its line and a summary of the values involved."""
    from ..interpret import run_graph

    graph, node = exe.check_sites[site]
    d = graph.nodes[node]
    details = ""
    if graph is exe.graph and arrays:
        try:
            values = run_graph(graph, dict(zip(graph.graph["inputs"], arrays)), keep=True)
            lines = [f"  operand {i}: {_summary(values[a])}" for i, a in enumerate(d["args"])]
            lines.append(f"  result: {_summary(values[node])}")
            details = "\n".join(lines)
        except SymgraphError:
            details = ""
    else:
        details = "  (inside a control-flow body)"
    label = f" ({d['name']!r})" if d.get("name") else ""
    return NonFiniteError(f"check_finite: {d['op']}{label} turned finite inputs into NaN or inf",
                          locs=d["loc"], details=details,
                          hint="lanes that a later where() discards are checked too: "
                               "guard the operand instead (for example log(where(x > 0, x, 1)))")


compile_source = compile  # the builtin, before this module defines symgraph's compile()


@contextlib.contextmanager
def _gc_paused():
    """Pause Python's cyclic garbage collector while compiling: a large graph allocates
    millions of short-lived objects, and the full collections they trigger cost up to a
    third of compile time. The collector is re-enabled only if it was on before."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class CompiledFunction:
    """The callable compile() returns. Call with arrays by name or position::

        >>> import numpy as np
        >>> from symgraph import Variable, compile
        >>> A, B = Variable("A"), Variable("B")
        >>> f = compile(B * A + 1)
        >>> f(A=np.ones(3), B=np.full(3, 2.0))
        array([3., 3., 3.])
    """

    SHAPE_GENERIC = True  # whether open axes get code for all sizes (the CPU target does)
    EPILOGUES = True  # whether matmul/conv kernels take their elementwise epilogue along

    def __init__(self, structure, variables, *, opt_level=2, disable=(), name="symgraph_main",
                 verify=None, num_threads=None, check_finite=False):
        self.structure = structure
        self.variables = variables
        self.inputs = [v.attrs["name"] for v in variables]
        self._index = {n: i for i, n in enumerate(self.inputs)}
        self._locs = [v.loc for v in variables]
        self._declared = [(v.attrs.get("shape"), v.attrs.get("dtype")) for v in variables]
        self.opt_level = opt_level
        self.disable = tuple(disable)
        self.num_threads = num_threads or os.cpu_count() or 1
        self.check_finite = bool(check_finite)
        self.name = name
        self.verify = VERIFY_DEFAULT if verify is None else verify
        self.passes = pipeline(opt_level, self.disable)
        self._template = to_graph(structure.exprs, variables)
        self._template.graph["epilogues"] = self.EPILOGUES
        self._specializations = {}
        self._debug = None
        self._latest = None
        self._lock = threading.Lock()
        self._misses = self._compilations = self._disk_hits = 0
        # Shape-generic code per input dtypes, when every input declares its rank and some
        # axis is open (None or named): one compilation serves every size of those axes.
        self._generics = {}
        self._polymorphic = self.SHAPE_GENERIC and all(
            v.attrs.get("shape") is not None for v in variables) and any(
            d is None or isinstance(d, str) for v in variables for d in v.attrs["shape"])
        self._fast = self._generate_fast_path()
        # What a call runs: the Python dispatcher, until a specialization's native entry
        # (runtime/native_call.py) takes over the calls it can serve.
        self._entry = self._dispatch
        self._native = None
        self.__signature__ = _call_signature(self.inputs)
        declared = [v.attrs.get("shape") is not None and all(isinstance(d, int) for d in v.attrs["shape"])
                    and v.attrs.get("dtype") is not None for v in variables]
        if all(declared):
            # Generate code now; the key is what a C-contiguous call of that type will look up.
            types = [(tuple(v.attrs["shape"]), v.attrs["dtype"]) for v in variables]
            self._specialize(types, _contiguous_key(types))
        elif self._polymorphic and all(v.attrs.get("dtype") is not None for v in variables):
            self._generic_code(tuple(v.attrs["dtype"] for v in variables))

    # --- introspection ------------------------------------------------------------------
    @property
    def graph(self):
        """The networkx DiGraph compiled for the latest specialization."""
        return self._require_latest().graph

    @property
    def pass_log(self):
        return self._require_latest().pass_log

    @property
    def memory_plan(self):
        return self._require_latest().memory_plan

    @property
    def llvm_ir(self):
        return self._require_latest().library.llvm_ir

    @property
    def asm(self):
        return self._require_latest().library.asm

    def as_text(self, stage="final"):
        """Text of a compilation stage: 'input', a pass name, 'final', 'llvm' or 'asm'."""
        exe = self._require_latest()
        if stage == "llvm":
            return exe.library.llvm_ir
        if stage == "asm":
            return exe.library.asm
        if stage not in exe.stages:
            raise ArgumentError(f"unknown stage {stage!r}; stages: {list(exe.stages) + ['llvm', 'asm']}")
        return exe.stages[stage]

    def intermediates(self, *args, **kwargs):
        """Run on the inputs and return ``(outputs, {name: value})`` for every named
        intermediate (``expr.name = "h1"``), computed by a compiled variant of this graph."""
        if self._debug is None:
            from ..frontend import collect

            named = {}
            for e in collect(self.structure.exprs):
                if e.name and e.op != "var":
                    key, k = e.name, 2
                    while key in named:
                        key, k = f"{e.name}#{k}", k + 1
                    named[key] = e
            variant = compile([*self.structure.exprs, *named.values()], inputs=self.variables,
                              opt_level=self.opt_level, disable=self.disable,
                              num_threads=self.num_threads, name=f"{self.name}_debug")
            self._debug = (variant, list(named))
        variant, names = self._debug
        values = variant(*args, **kwargs)
        n = len(self.structure.exprs)
        return self.structure.pack(values[:n]), dict(zip(names, values[n:]))

    def cache_info(self):
        """Calls served by existing code (hits; code loaded from the disk cache counts as
        one), calls that needed new code (misses), and compilations done."""
        unique = {id(exe): exe for exe in list(self._specializations.values())}
        hits = sum(exe.hits for exe in unique.values())
        if self._native is not None:
            hits += self._native.hits
        return CacheInfo(hits + self._disk_hits, self._misses, self._compilations)

    def _require_latest(self):
        if self._latest is None:
            raise ArgumentError("this function has not been specialized yet: call it once, or "
                                "declare every Variable's shape and dtype")
        return self._latest

    def __repr__(self):
        return f"<CompiledFunction {self.name}({', '.join(self.inputs)})>"

    # --- deployment ---------------------------------------------------------------------
    def save(self, path):
        """Write this function to one file; ``symgraph.load(path)`` gives it back."""
        from ..serialize import save

        save(self, path)

    def export(self, directory, name=None, cpu=None, num_threads=1):
        """Write ``libNAME.so`` and ``NAME.h`` callable from C (see docs/deployment.md)."""
        from .export import export

        return export(self, directory, name=name, cpu=cpu, num_threads=num_threads)

    def __reduce__(self):
        # Pickles hold the saved-file bytes; unpickling recompiles (through the disk cache).
        from ..serialize import dumps, loads

        return loads, (dumps(self),)

    # --- calling --------------------------------------------------------------------------
    def _bind(self, args, kwargs):
        values = bind_arguments(self.name, self.inputs, args, kwargs)
        return [prepare_input(name, v, loc, declared)
                for name, v, loc, declared in zip(self.inputs, values, self._locs, self._declared)]

    @staticmethod
    def _key(arrays):
        key = []
        for a in arrays:
            key += (a.dtype, a.shape, a.strides)
        return tuple(key)

    # A property, so that f(...) reaches the native entry without a Python frame.
    __call__ = property(operator.attrgetter("_entry"),
                        doc="Call with arrays by name or position (see the class docstring).")

    def _dispatch(self, *args, **kwargs):
        try:
            return self._fast(*args, **kwargs)
        except TypeError as exc:
            if isinstance(exc, SymgraphError):
                raise
            # Python's own binding failed (missing, unknown or repeated input): the general
            # path reports it as a SymgraphError, naming the inputs.
            return self._call(args, kwargs)

    def _call(self, args, kwargs, out=None):
        if kwargs.pop("debug", False):
            return self.intermediates(*args, **kwargs)
        out = kwargs.pop("out", out)
        arrays = self._bind(args, kwargs)
        key = self._key(arrays)
        exe = self._specializations.get(key)
        if exe is None:
            exe = self._generic_for(arrays, key)
        if exe is None:
            # Contiguous arrays may show unusual strides (size-0 or size-1 axes): file the code
            # under the canonical key, and this call's key too so the fast path finds it.
            exe = self._specialize(arrays, _contiguous_key((a.shape, a.dtype) for a in arrays))
            self._specializations.setdefault(key, exe)
        else:
            exe.hits += 1
        if out is None:
            outs = [np.empty(shape, dtype) for shape, dtype in exe.out_types]
            self._run(exe, arrays, outs)
            return self.structure.pack(outs)
        given = self.structure.unpack(out)
        targets = self._check_out(exe, given, arrays)
        self._run(exe, arrays, targets)
        for target, dest in zip(targets, given):
            if target is not dest:
                np.copyto(dest, target)
        return self.structure.pack(given)

    def _generate_fast_path(self):
        """A dispatcher with one parameter per input: Python binds the arguments, one tuple
        of (dtype, shape, strides) finds the specialization, and anything unusual (lists,
        other strides, an out= that needs checking or copying, a new signature) takes the
        general path."""
        names = self.inputs
        if any(keyword.iskeyword(n) or n in ("out", "self") for n in names) or len(names) > 200:
            return lambda *args, out=None, **kwargs: self._call(args, kwargs, out)
        params = ", ".join(names)
        checks = " and ".join(f"type({n}) is ndarray" for n in names) or "True"
        key = "".join(f"{n}.dtype, {n}.shape, {n}.strides, " for n in names)
        n_out = len(self.structure.exprs)
        outs = [f"o{j}" for j in range(n_out)]
        allocs = "\n".join(f"                o{j} = empty(*types[{j}])" for j in range(n_out))
        kind = self.structure.kind
        if kind == "single":
            packed = "o0"
        elif kind == "dict":
            packed = "{" + ", ".join(f"{k!r}: o{j}" for j, k in enumerate(self.structure.keys)) + "}"
        elif kind == "list":
            packed = "[" + ", ".join(outs) + "]"
        else:
            packed = "(" + ", ".join(outs) + ",)"
        arrays = f"({params}{',' if len(names) == 1 else ''})"
        # A single output may also go straight into the caller's out= array when it is a
        # fresh, writable C-contiguous array of the right type overlapping no input.
        overlap = " or ".join(f"share(out, {n})" for n in names) or "False"
        into_out = "" if kind != "single" else f"""
            if (type(out) is ndarray and out.dtype == exe.out_types[0][1]
                    and out.shape == exe.out_types[0][0] and out.flags.c_contiguous
                    and out.flags.writeable and out.flags.aligned and not ({overlap})):
                exe.hits += 1
                status = exe.cfunc({params}{', ' if params else ''}out, no_workspace, *exe.extra)
                if status:
                    fail(status, exe, {arrays})
                return out"""
        source = f"""
def fast({params}{', ' if params else ''}*, out=None):
    if {checks}:
        exe = get(({key}))
        if exe is not None:
            if out is None:
                exe.hits += 1
                types = exe.out_types
{allocs}
                status = exe.cfunc({params}{', ' if params else ''}{', '.join(outs)}, no_workspace,
                                   *exe.extra)
                if status:
                    fail(status, exe, {arrays})
                return {packed}{into_out}
    return call({arrays}, {{}}, out)
"""
        namespace = {"ndarray": np.ndarray, "empty": np.empty,
                     "no_workspace": _NO_WORKSPACE, "get": self._specializations.get,
                     "fail": _fail, "call": self._call, "share": np.may_share_memory}
        exec(compile_source(source, f"<symgraph dispatcher {self.name}>", "exec"), namespace)
        return namespace["fast"]

    def _run(self, exe, arrays, outs):
        status = exe.cfunc(*arrays, *outs, _NO_WORKSPACE, *exe.extra)
        if status:
            _fail(status, exe, arrays)

    def _check_out(self, exe, given, arrays):
        """Validated out= arrays; ones that overlap an input or each other get a temporary."""
        targets = []
        for j, (o, (shape, dtype)) in enumerate(zip(given, exe.out_types)):
            label = f"out[{j}]" if len(given) > 1 else "out"
            if type(o) is not np.ndarray:
                raise ArgumentError(f"{label} must be a numpy array, got {type(o).__name__}")
            if o.dtype != dtype:
                raise DTypeError(f"{label} has dtype {o.dtype}, but the output is {dtype}")
            if o.shape != shape:
                raise ShapeError(f"{label} has shape {o.shape}, but the output is {shape}")
            if not o.flags.writeable:
                raise ArgumentError(f"{label} is read-only")
            clash = any(np.may_share_memory(o, a) for a in arrays) or any(
                np.may_share_memory(o, other) for other in given[:j])
            if clash or not (o.flags.c_contiguous and o.flags.aligned):
                o = np.empty(shape, dtype)
            targets.append(o)
        return targets

    # --- shape-generic code ------------------------------------------------------------------
    @property
    def shape_generic(self):
        """Whether calls are served by code compiled once for all sizes of the open axes
        (None when no call or declaration has asked yet); see ``generic_status``."""
        if not self._generics:
            return None
        return any(isinstance(g, GenericExecutable) for g in self._generics.values())

    @property
    def generic_status(self):
        """{input dtypes: 'generic' or the reason the graph needs concrete sizes}."""
        return {key: "generic" if isinstance(g, GenericExecutable) else str(g)
                for key, g in self._generics.items()}

    def _generic_code(self, dtypes):
        """The GenericExecutable for these input dtypes (built on first need), or the
        NotGeneric saying why there is none."""
        found = self._generics.get(dtypes)
        if found is not None:
            return found
        with self._lock:
            found = self._generics.get(dtypes)
            if found is None:
                try:
                    with _gc_paused():
                        found = self._build_generic(dtypes)
                    self._count_build(found.exe)
                    self._latest = found.exe
                except NotGeneric as exc:
                    found = exc
                self._generics[dtypes] = found
            return found

    def _generic_for(self, arrays, key):
        """What serves these arrays through generic code (filed under `key` for the fast
        path), or None when the graph or this call's shapes need their own code."""
        if not self._polymorphic:
            return None
        generic = self._generic_code(tuple(a.dtype for a in arrays))
        if not isinstance(generic, GenericExecutable):
            return None
        values = generic.bind(arrays)
        if values is None:
            return None
        bound = generic.bound(values)
        if len(self._specializations) < GenericExecutable.MAX_BOUND:
            self._specializations[key] = bound
        return bound

    def _generic_graph(self, dtypes):
        """(graph, input shapes, size symbols) with every open axis a symbol, for these
        input dtypes; NotGeneric when there is nothing open or the graph needs sizes."""
        declared = {name: (v.attrs["shape"], np.dtype(dtype))
                    for name, v, dtype in zip(self.inputs, self.variables, dtypes)}
        g, input_shapes = specialize_generic(self._template, declared)
        symbols = g.graph["symbols"]
        if not symbols:
            raise NotGeneric("every axis has a fixed size")
        return g, [input_shapes[name] for name in self.inputs], symbols

    def _build_generic(self, dtypes):
        g, shapes, symbols = self._generic_graph(dtypes)
        n_args = len(self.inputs) + len(g.graph["outputs"]) + 2
        signature = ctypes.CFUNCTYPE(ctypes.c_int32, *([ctypes.py_object] * n_args))
        options = (self.opt_level, self.disable, tuple(self.passes), self.num_threads)
        key = None if self.check_finite or DUMP_DIR else persistent_cache.key_for(
            g, self.name, options)
        if key is not None:
            found = persistent_cache.lookup(key, self.name)
            if found is not None and "generic" in found[1]:
                library, meta = found
                layout = GenericExecutable.layout_from_json(meta["generic"])
                cfunc = signature(library.address(f"{self.name}.py"))
                exe = _CachedExecutable(lambda: self._optimize(g), library, cfunc,
                                        layout["out_types"], layout["workspace"])
                return GenericExecutable(exe, shapes, symbols, layout)
        _prestart_workers(g)
        g, log, stages = self._optimize(g)
        module, wrapper, check_sites = self._lower(g)
        layout = GenericExecutable.layout(g)
        meta = {"generic": GenericExecutable.layout_to_json(layout)}
        library = _code_library(module, self.name, key, meta)
        cfunc = signature(library.address(wrapper))
        exe = Executable(g, log, library, cfunc, layout["out_types"], stages)
        exe.check_sites = check_sites
        return GenericExecutable(exe, shapes, symbols, layout)

    def _count_build(self, exe):
        """Code loaded from the disk cache is a hit; code generated is a miss and a
        compilation."""
        if isinstance(exe, _CachedExecutable):
            self._disk_hits += 1
        else:
            self._misses += 1
            self._compilations += 1

    # --- specialization --------------------------------------------------------------------
    def _specialize(self, types, key):
        """Code for inputs of the given [(shape, dtype)] (arrays work too), cached by key."""
        types = [(a.shape, a.dtype) if isinstance(a, np.ndarray) else a for a in types]
        with self._lock:
            exe = self._specializations.get(key)
            if exe is not None:
                exe.hits += 1
                return exe
            with _gc_paused():
                exe = self._build(types)
            self._count_build(exe)
            self._specializations[key] = exe
            self._latest = exe
            symbol = getattr(exe, "native_symbol", None)
            if symbol and native_call.ENABLED and self._native is None and \
                    key == _contiguous_key(types):
                self._native = NativeCall(exe.library, symbol, self.inputs, types,
                                          exe.out_types, self._dispatch, self.name,
                                          self.structure.kind, self.structure.keys)
                self._entry = self._native.function
            return exe

    def _build(self, types):
        signature = dict(zip(self.inputs, types))
        g = specialize(self._template, signature)
        _check_call_memory(g)
        n_args = len(self.inputs) + len(g.graph["outputs"])
        # The native entry's code reads object fields at probed offsets and packs the
        # outputs as the structure says: both are part of the key.
        options = (self.opt_level, self.disable, tuple(self.passes), self.num_threads,
                   native_call.LAYOUT_KEY, self.structure.kind)
        # check_finite code reports node numbers assigned while lowering: always lower it.
        key = None if self.check_finite or DUMP_DIR else persistent_cache.key_for(
            g, self.name, options)
        if key is not None:
            found = persistent_cache.lookup(key, self.name)
            if found is not None:
                return self._cached_executable(g, n_args, *found)
        _prestart_workers(g)
        g, log, stages = self._optimize(g)
        module, wrapper, check_sites = self._lower(g)
        out_types = [(g.nodes[o]["shape"], g.nodes[o]["dtype"]) for o in g.graph["outputs"]]
        native = None
        if not self.check_finite:
            native = add_native_entry(module, self.name, types, out_types,
                                      self.structure.kind)
        meta = {"workspace_bytes": int(g.graph.get("workspace_bytes", 0)),
                "out_types": [[list(s), d.str] for s, d in out_types], "native": native}
        library = _code_library(module, self.name, key, meta)
        if DUMP_DIR:
            from ..inspect import dump_compilation

            dump_compilation(DUMP_DIR, self.name, stages, library)
        signature = ctypes.CFUNCTYPE(ctypes.c_int32, *([ctypes.py_object] * (n_args + 1)))
        cfunc = signature(library.address(wrapper))
        exe = Executable(g, log, library, cfunc, out_types, stages)
        exe.check_sites = check_sites
        exe.native_symbol = native
        return exe

    def _lower(self, g):
        """(LLVM module, name of its Python entry, check_finite sites) of a final graph."""
        check_sites = []
        module = lower_graph(g, self.name, _math_impl(), num_threads=self.num_threads,
                             check_finite=self.check_finite, check_sites=check_sites,
                             vector_bytes=host_vector_bytes(), streaming_stores=host_is_x86())
        workspace_at = len(g.graph["inputs"]) + len(g.graph["outputs"])
        return module, _add_python_entry(module, self.name, workspace_at), check_sites

    def _optimize(self, g):
        """(final graph, pass log, stages) of a specialized graph."""
        stages = _Stages(input=g)

        def on_stage(name, graph):
            stages[name] = graph

        g, log = run_passes(g, self.passes, verify=self.verify, on_stage=on_stage)
        stages["final"] = g
        return g, log, stages

    def _cached_executable(self, g, n_args, library, meta):
        """An Executable for code from the persistent cache; the optimized graph, pass log
        and stages are recomputed only if someone asks for them."""
        signature = ctypes.CFUNCTYPE(ctypes.c_int32, *([ctypes.py_object] * (n_args + 1)))
        cfunc = signature(library.address(f"{self.name}.py"))
        out_types = [(tuple(s), np.dtype(d)) for s, d in meta["out_types"]]
        exe = _CachedExecutable(lambda: self._optimize(g), library, cfunc, out_types,
                                meta["workspace_bytes"])
        exe.native_symbol = meta.get("native")
        return exe


def compile(*outputs, inputs=None, opt_level=2, disable=(), name="symgraph_main", verify=None,
            num_threads=None, check_finite=False, target="cpu", arch=None, libdevice=None):
    """Compile expression(s) to native code.

    ``compile(y)`` returns a function giving one array; ``compile(x, y)`` a tuple,
    ``compile([x, y])`` a list and ``compile({'x': x})`` a dict. ``inputs`` fixes the
    positional order (default: Variables in creation order); ``opt_level=0`` runs no
    optimization, ``disable=['cse']`` switches single passes off. Large loops split across
    ``num_threads`` native threads (default: every core), in a fixed, deterministic way.
    ``check_finite=True`` raises NonFiniteError naming the first node that turns finite
    inputs into NaN or inf (checked inside the fused native code, on one thread).
    ``target="cuda"`` compiles PTX (``arch="sm_80"``; ``libdevice=True`` or a path takes
    math functions from the CUDA toolkit's libdevice instead of symgraph's math library).
    """
    structure = OutputStructure.of(outputs)
    found = find_variables(structure.exprs)
    if inputs is None:
        variables = found
    else:
        if not isinstance(inputs, (list, tuple)):
            raise ArgumentError(f"inputs= must be a list of Variables, got {inputs!r}"[:200])
        variables = []
        for v in inputs:
            if not isinstance(v, Expr) or v.op != "var":
                raise ArgumentError(f"inputs= must list Variables, got {v!r}")
            variables.append(v)
        names = [v.attrs["name"] for v in variables]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ArgumentError(f"inputs= lists {dupes} more than once")
        missing = [v.attrs["name"] for v in found if v.attrs["name"] not in names]
        if missing:
            raise ArgumentError(f"inputs= leaves out Variable(s) {missing} the outputs use")
        by_name = {v.attrs["name"]: v for v in variables}
        for v in found:
            if by_name[v.attrs["name"]] is not v:
                raise ArgumentError(f"two different Variables are named {v.attrs['name']!r}",
                                    locs=(v.loc, by_name[v.attrs['name']].loc))
    if not isinstance(opt_level, int) or isinstance(opt_level, bool) or not 0 <= opt_level <= 3:
        # (a saved file records it, and the loader accepts 0-3)
        raise ArgumentError(f"opt_level must be 0, 1, 2 or 3, got {opt_level!r}")
    if num_threads is not None:
        check_num_threads(num_threads)
    # A saved file or an exported library carries the name: the loader accepts identifiers.
    if not isinstance(name, str) or not name.isidentifier() or len(name) > 200:
        raise ArgumentError(f"name must be a Python identifier of at most 200 characters, "
                            f"got {name!r}"[:300])
    if not isinstance(disable, (list, tuple, set, frozenset)) or not all(
            isinstance(d, str) for d in disable):
        raise ArgumentError(f"disable= must be a list of pass names, got {disable!r}"[:200])
    if target == "cuda":  # PTX through LLVM's NVPTX backend; see docs/cuda.md
        from .cuda import CudaFunction

        return CudaFunction(structure, variables, arch=arch, libdevice=libdevice,
                            opt_level=opt_level, disable=disable, name=name, verify=verify,
                            check_finite=check_finite)
    if target != "cpu":
        raise ArgumentError(f"unknown target {target!r}; targets: 'cpu', 'cuda'")
    if libdevice not in (None, False):
        raise ArgumentError("libdevice= is an option of target='cuda'")
    with _gc_paused():
        return CompiledFunction(structure, variables, opt_level=opt_level, disable=disable,
                                name=name, verify=verify, num_threads=num_threads,
                                check_finite=check_finite)
